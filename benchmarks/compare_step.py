#!/usr/bin/python3
"""ptrain's CPU training step against PyTorch's, measured side by side in one run.

    compare_step.py [--threads N] [--config configs/tiny.yaml] [--steps K] [--rounds R]
                    [--warmup W] [--set key.path=value ...] [--ptrain BIN] [--json-out F]
                    [--allow-reference-blas] [--keep-tmp]

(benchmarks/cpu_step.sh is the front door; it runs this file with Debian's /usr/bin/python3.)

What it does, in order:
 1. BLAS: resolves the library ptrain's `cblas_sgemm` comes from (ldd) and the one torch's
    `sgemm_` comes from (benchmarks/torch_step.py reports it). Refuses to compare (exit 3) when
    torch is not on OpenBLAS: on Debian's reference BLAS the same torch is ~12x slower and the
    ratio would measure the BLAS, not the framework.
 2. Correctness before timing: one init file (tests/reference/torch_reference.py --write-init)
    and one token file; 2 steps of ptrain (train.init_from) and 2 of the reference on them.
    Losses must agree to 1e-4 relative, pre-clip gradient norms to 1e-3, and the first loss
    must be within 0.25 of ln(vocab) (a random init predicts ~uniformly).
 3. Timing, alternated R times: ptrain K steps (median tokens_per_s of metrics.jsonl after
    W warm-up steps; its first loss is checked against ln(vocab) again), then torch_step.py
    with W warm-up and K-W timed steps. Same config, same shapes, same thread count
    (OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N for both, plus train.threads=N / torch.set_num_threads).
 4. A GEMM floor: the step's linear-layer GEMMs (forward, dX, dW for every projection and
    the LM head, all micro-batches) timed alone through the same OpenBLAS (numpy, N threads);
    the time no framework can go below without a better GEMM.
 5. Prints a table and ONE JSON line (prefixed "RESULT ") with tokens/s, model GFLOP/s,
    best-of and median-of-rounds ratio ptrain / pytorch, the BLAS of each side, load averages.

Model FLOPs per token (reported GFLOP/s = FLOPs/token * tokens/s):
    6 * (matmul weights: q,k,v,o,gate,up,down per layer + LM head)          (fwd 2, bwd 4)
  + 6 * layers * heads * head_dim * (T + 1)   (causal QK^T and PV: 2 GEMMs x 2 FLOP x (T+1)/2
                                               keys on average, fwd + 2x bwd)
Norms, RoPE, softmax, SwiGLU, cross-entropy and AdamW are not counted (memory-bound, < 2%).

Invariants: every measurement uses a fresh temp dir; nothing is written outside it except
--json-out; exit 0 only when the correctness check passed (2 = usage error, 3 = BLAS refused,
4 = correctness failure, 5 = a run failed).
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REF = os.path.join(ROOT, "tests", "reference", "torch_reference.py")
TORCH_STEP = os.path.join(HERE, "torch_step.py")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


class BenchError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="ptrain vs PyTorch CPU training-step benchmark")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"))
    ap.add_argument("--steps", type=int, default=30, help="steps per measurement (warm-up included)")
    ap.add_argument("--warmup", type=int, default=5, help="leading steps left out of the median")
    ap.add_argument("--rounds", type=int, default=3, help="alternated (ptrain, pytorch) pairs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="config override for both sides (repeatable)")
    ap.add_argument("--ptrain", default=os.environ.get("PTRAIN_BIN", os.path.join(ROOT, "build", "ptrain")))
    ap.add_argument("--json-out", help="also write the result JSON here")
    ap.add_argument("--allow-reference-blas", action="store_true",
                    help="time even when torch is not on OpenBLAS (the ratio is then meaningless)")
    ap.add_argument("--no-gemm-floor", action="store_true", help="skip the GEMM floor measurement")
    ap.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                    help="before each measurement wait up to S seconds for `threads` idle cores (0: don't)")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--_gemm-floor", dest="gemm_floor_json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads < 1 or a.rounds < 1 or a.warmup < 0 or a.steps < a.warmup + 3:
        ap.error("need --threads >= 1, --rounds >= 1, --warmup >= 0 and --steps >= warmup + 3")
    return a


# ---------------------------------------------------------------------------------- helpers

def thread_env(n):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(n)
    env["OPENBLAS_NUM_THREADS"] = str(n)
    return env


def run(cmd, env, what):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise BenchError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n"
                         f"{r.stderr[-3000:]}", 5)
    return r


def load_cfg(path, sets):
    sys.path.insert(0, os.path.dirname(REF))
    import torch_reference as ref  # noqa: E402  (imports torch; only config helpers are used here)
    cfg = ref.load_config(path, sets)
    spec = ref.ModelSpec(cfg)
    T, mb, G = ref.batch_settings(cfg)
    return cfg, spec, T, mb, G


def flops_per_token(spec, T):
    C, L, Hq, Hkv, F, V = spec.hidden, spec.layers, spec.heads, spec.kv_heads, spec.ffn_hidden, spec.vocab_size
    D = C // Hq
    if spec.arch == "llama":
        per_layer = C * Hq * D + 2 * C * Hkv * D + Hq * D * C + 3 * C * F
    else:  # gpt2: c_attn, c_proj, c_fc, mlp.c_proj
        per_layer = 3 * C * C + C * C + 2 * C * F
    n_mm = L * per_layer + V * C
    attn = 6 * L * Hq * D * (T + 1)
    return 6 * n_mm + attn, n_mm


def linear_shapes(spec, rows):
    """(M, N, K) of y[M,N] = x[M,K] W[N,K]^T for every projection of one micro-batch."""
    C, L, Hq, Hkv, F, V = spec.hidden, spec.layers, spec.heads, spec.kv_heads, spec.ffn_hidden, spec.vocab_size
    D = C // Hq
    if spec.arch == "llama":
        layer = [(rows, Hq * D, C), (rows, Hkv * D, C), (rows, Hkv * D, C), (rows, C, Hq * D),
                 (rows, F, C), (rows, F, C), (rows, C, F)]
    else:
        layer = [(rows, 3 * C, C), (rows, C, C), (rows, F, C), (rows, C, F)]
    return layer * L + [(rows, V, C)]


def gemm_floor_child(spec_json):
    """Runs in a subprocess with the thread env set: times the step's linear GEMMs via numpy."""
    import numpy as np
    s = json.loads(spec_json)
    shapes, accum, reps = s["shapes"], s["accum"], s["reps"]
    rng = np.random.default_rng(0)
    mats = []
    for M, N, K in shapes:
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32)
        dy = rng.standard_normal((M, N), dtype=np.float32)
        mats.append((x, w, dy, np.empty((M, N), np.float32), np.empty((M, K), np.float32),
                     np.empty((N, K), np.float32)))

    def once():
        for x, w, dy, y, dx, dw in mats:
            np.matmul(x, w.T, out=y)      # forward   y  = x W^T
            np.matmul(dy, w, out=dx)      # backward  dx = dy W
            np.matmul(dy.T, x, out=dw)    # backward  dW = dy^T x
    once()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    flops = sum(3 * 2 * M * N * K for M, N, K in shapes)
    best = min(times)
    cfg = ""
    try:
        import ctypes
        lib = ctypes.CDLL("libopenblas.so.0", mode=os.RTLD_NOLOAD)
        lib.openblas_get_config.restype = ctypes.c_char_p
        cfg = lib.openblas_get_config().decode()
    except (OSError, AttributeError):
        pass
    print(json.dumps({"step_s": best * accum, "gflops": flops / best / 1e9, "openblas": cfg}))


def ptrain_blas(binary):
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = [l.split("=>")[1].split("(")[0].strip() for l in r.stdout.splitlines()
            if "=>" in l and re.search(r"blas", l)]
    real = [os.path.realpath(p) for p in libs if p and p != "not found"]
    return real


def cpu_busy_s():
    """Seconds of CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Foreign:
    """Cores' worth of CPU used by OTHER processes while a measurement ran (0 on a quiet machine):
    machine busy time minus our children's CPU time, over the wall time."""

    def __enter__(self):
        self.t0, self.b0, self.c0 = time.perf_counter(), cpu_busy_s(), children_cpu_s()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        self.cores = max(0.0, (cpu_busy_s() - self.b0) - (children_cpu_s() - self.c0)) / max(wall, 1e-9)
        return False


def wait_quiet(threads, max_wait, log):
    """Waits (up to max_wait s) until at least `threads` cores were idle over a 1 s sample."""
    ncpu = os.cpu_count() or 1
    t_end = time.time() + max_wait
    while True:
        t0, b0 = time.perf_counter(), cpu_busy_s()
        time.sleep(1.0)
        idle = ncpu - (cpu_busy_s() - b0) / (time.perf_counter() - t0)
        if idle >= threads - 0.15 or time.time() >= t_end:
            if idle < threads - 0.15:
                log(f"  (machine still busy after {max_wait:.0f} s: {idle:.2f} idle cores; measuring anyway)")
            return idle


def median_tps(metrics_path, warmup):
    rows = [json.loads(l) for l in open(metrics_path) if l.strip()]
    timed = [r for r in rows if r["step"] > warmup]
    return (statistics.median(r["tokens_per_s"] for r in timed),
            statistics.median(r["step_time_s"] for r in timed), rows)


# ---------------------------------------------------------------------------------- phases

def correctness(a, tmp, spec, env):
    d = os.path.join(tmp, "check")
    os.makedirs(d)
    data, init, run_dir = os.path.join(d, "data.h5"), os.path.join(d, "init.h5"), os.path.join(d, "run")
    run([PY, REF, "--write-data", data, "--tokens", "20000", "--vocab", str(spec.vocab_size), "--seed", "3"],
        env, "writing the check token file")
    sets = a.set + [f"data.path={data}", "data.shuffle=false", "train.steps=2", "optim.warmup_steps=1", "train.eval_every=0",
                    f"train.threads={a.threads}", "train.precision=fp32"]
    run([PY, REF, "--config", a.config, *sum((["--set", s] for s in sets), []), "--write-init", init],
        env, "writing the check init file")
    run([a.ptrain, "--cfg", a.config, *sum((["--set", s] for s in sets), []), "--set", f"checkpoint.dir={run_dir}",
         "--set", "checkpoint.every=0", "--set", f"train.init_from={init}", "--quiet"], env, "ptrain (check)")
    ref_out = os.path.join(d, "ref.json")
    run([PY, REF, "--config", a.config, *sum((["--set", s] for s in sets), []), "--init", init, "--steps", "2",
         "--out", ref_out, "--threads", str(a.threads)], env, "torch_reference (check)")
    ref = json.load(open(ref_out))
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    ours_loss, ours_norm = [r["loss"] for r in rows], [r["grad_norm"] for r in rows]
    if len(ours_loss) != 2:
        raise BenchError(f"correctness: ptrain wrote {len(ours_loss)} metric rows, expected 2", 4)
    rel = lambda x, y: abs(x - y) / max(abs(y), 1e-12)  # noqa: E731
    dl = max(rel(x, y) for x, y in zip(ours_loss, ref["loss"]))
    dn = max(rel(x, y) for x, y in zip(ours_norm, ref["grad_norm"]))
    lnv = math.log(spec.vocab_size)
    ok = dl <= 1e-4 and dn <= 1e-3 and abs(ours_loss[0] - lnv) < 0.25
    res = {"ok": ok, "ptrain_loss": ours_loss, "torch_loss": ref["loss"], "ln_vocab": lnv,
           "max_rel_loss": dl, "max_rel_grad_norm": dn}
    if not ok:
        raise BenchError(f"correctness check FAILED (nothing timed): {json.dumps(res)}", 4)
    return res


def time_ptrain(a, tmp, k, data, env, cfg):
    warm = min(int(cfg["optim"]["warmup_steps"]), a.steps)  # ptrain refuses warmup_steps > train.steps
    run_dir = os.path.join(tmp, f"ptrain_run{k}")
    cmd = [a.ptrain, "--cfg", a.config, *sum((["--set", s] for s in a.set), []),
           "--set", f"data.path={data}", "--set", f"checkpoint.dir={run_dir}", "--set", "checkpoint.every=0",
           "--set", "train.eval_every=0", "--set", f"train.threads={a.threads}", "--set", "data.shuffle=false",
           "--set", f"train.steps={a.steps}", "--set", f"optim.warmup_steps={warm}", "--quiet"]
    run(cmd, env, "ptrain (timing)")
    tps, st, rows = median_tps(os.path.join(run_dir, "metrics.jsonl"), a.warmup)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"tokens_per_s": tps, "step_s_median": st, "first_loss": rows[0]["loss"],
            "step_s": [r["step_time_s"] for r in rows]}


def time_torch(a, env):
    cmd = [PY, TORCH_STEP, "--config", a.config, *sum((["--set", s] for s in a.set), []),
           "--threads", str(a.threads), "--warmup", str(a.warmup), "--iters", str(a.steps - a.warmup)]
    r = run(cmd, env, "torch_step.py")
    line = [l for l in r.stdout.splitlines() if l.startswith("{")][-1]
    res = json.loads(line)
    res["stderr"] = r.stderr
    return res


def main():
    a = parse_args()
    if a.gemm_floor_json:
        gemm_floor_child(a.gemm_floor_json)
        return 0
    try:
        return bench(a)
    except BenchError as e:
        print(f"compare_step: error: {e}", file=sys.stderr)
        return e.code


def bench(a):
    if not (os.path.isfile(a.ptrain) and os.access(a.ptrain, os.X_OK)):
        raise BenchError(f"no ptrain binary at {a.ptrain}. HINT: build it (cmake -S . -B build -G Ninja "
                         "-DPTRAIN_CUDA=OFF && ninja -C build ptrain) or set PTRAIN_BIN / --ptrain", 2)
    a.ptrain = os.path.abspath(a.ptrain)
    a.config = os.path.abspath(a.config)
    try:
        cfg, spec, T, mb, G = load_cfg(a.config, a.set)
    except Exception as e:  # RefError or a YAML error: a usage problem
        raise BenchError(f"config {a.config}: {e}", 2)
    env = thread_env(a.threads)
    fpt, n_mm = flops_per_token(spec, T)
    tokens_per_step = G * T
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.*)", lscpu)
    alt = subprocess.run(["update-alternatives", "--display", "libblas.so.3-x86_64-linux-gnu"],
                         capture_output=True, text=True).stdout
    alt_now = re.search(r"points to (\S+)", alt)
    blas_ptrain = ptrain_blas(a.ptrain)
    load_before = os.getloadavg()

    tmp = tempfile.mkdtemp(prefix="ptrain_cpu_step_")
    try:
        check = correctness(a, tmp, spec, env)
        print(f"correctness: first losses ptrain {check['ptrain_loss'][0]:.6f} torch {check['torch_loss'][0]:.6f} "
              f"(ln V = {check['ln_vocab']:.4f}); max rel diff loss {check['max_rel_loss']:.1e}, "
              f"grad norm {check['max_rel_grad_norm']:.1e}: OK", flush=True)
        data = os.path.join(tmp, "data.h5")
        run([PY, REF, "--write-data", data, "--tokens", str((a.steps * G + 1) * T + 2), "--vocab",
             str(spec.vocab_size), "--seed", "1"], env, "writing the token file")

        rounds = []
        log = lambda m: print(m, flush=True)  # noqa: E731
        for k in range(a.rounds):
            if a.wait_quiet > 0:
                wait_quiet(a.threads, a.wait_quiet, log)
            with Foreign() as fp:
                p = time_ptrain(a, tmp, k, data, env, cfg)
            if abs(p["first_loss"] - math.log(spec.vocab_size)) > 0.25:
                raise BenchError(f"ptrain's first loss {p['first_loss']} is not near ln(V) = "
                                 f"{math.log(spec.vocab_size):.4f}: wrong model or init", 4)
            if a.wait_quiet > 0:
                wait_quiet(a.threads, a.wait_quiet, log)
            with Foreign() as ft:
                t = time_torch(a, env)
            if k == 0 and "openblas" not in (t.get("blas") or "").lower() and not a.allow_reference_blas:
                raise BenchError(f"torch is not on OpenBLAS ({t.get('blas')}); the ratio would measure the BLAS.\n"
                                 f"{alt}HINT: sudo update-alternatives --set libblas.so.3-x86_64-linux-gnu "
                                 "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3", 3)
            rounds.append({"ptrain": p["tokens_per_s"], "pytorch": t["tokens_per_s"],
                           "ratio": p["tokens_per_s"] / t["tokens_per_s"],
                           "foreign_cores_ptrain": fp.cores, "foreign_cores_pytorch": ft.cores})
            print(f"round {k + 1}/{a.rounds}: ptrain {p['tokens_per_s']:9.0f} tok/s   pytorch "
                  f"{t['tokens_per_s']:9.0f} tok/s   ratio {rounds[-1]['ratio']:.3f}   (other processes used "
                  f"{fp.cores:.2f} / {ft.cores:.2f} cores meanwhile)", flush=True)
            torch_info = t

        floor = None
        if not a.no_gemm_floor:
            child = json.dumps({"shapes": linear_shapes(spec, mb * T), "accum": G // mb, "reps": 20})
            r = run([PY, os.path.abspath(__file__), "--_gemm-floor", child], env, "GEMM floor")
            floor = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if a.keep_tmp:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    best_p, best_t = max(r["ptrain"] for r in rounds), max(r["pytorch"] for r in rounds)
    med_p, med_t = statistics.median(r["ptrain"] for r in rounds), statistics.median(r["pytorch"] for r in rounds)
    res = {
        "bench": "cpu_step", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": model.group(1) if model else "?",
        "config": os.path.relpath(a.config, ROOT), "sets": a.set, "threads": a.threads, "steps": a.steps,
        "warmup": a.warmup, "rounds": a.rounds, "tokens_per_step": tokens_per_step,
        "model_flops_per_token": fpt, "matmul_params": n_mm,
        "ptrain": {"tokens_per_s_best": best_p, "tokens_per_s_median": med_p, "gflops_best": best_p * fpt / 1e9,
                   "blas": blas_ptrain, "binary": a.ptrain},
        "pytorch": {"tokens_per_s_best": best_t, "tokens_per_s_median": med_t, "gflops_best": best_t * fpt / 1e9,
                    "blas": torch_info.get("blas"), "torch": torch_info.get("torch")},
        "ratio_best": best_p / best_t, "ratio_median": med_p / med_t,
        "ratio_per_round_median": statistics.median(r["ratio"] for r in rounds),
        "rounds_detail": rounds, "correctness": check,
        "libblas_alternative": alt_now.group(1) if alt_now else None,
        "gemm_floor": floor, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if floor:
        res["gemm_floor"]["tokens_per_s_bound"] = tokens_per_step / floor["step_s"]

    step_ms = lambda tps: 1e3 * tokens_per_step / tps  # noqa: E731
    print()
    print(f"CPU training step, {res['config']} {' '.join(a.set)}: {tokens_per_step} tokens/step, "
          f"{fpt / 1e6:.2f} MFLOP/token, {a.threads} thread(s), {a.rounds} alternated rounds of "
          f"{a.steps} steps (median after {a.warmup} warm-up)")
    print(f"{'':10s} {'tok/s best':>11s} {'tok/s med':>11s} {'ms/step':>8s} {'GFLOP/s':>8s}  BLAS")
    print(f"{'ptrain':10s} {best_p:11.0f} {med_p:11.0f} {step_ms(best_p):8.1f} {best_p * fpt / 1e9:8.1f}  "
          f"{', '.join(blas_ptrain) or 'not found by ldd'}")
    print(f"{'pytorch':10s} {best_t:11.0f} {med_t:11.0f} {step_ms(best_t):8.1f} {best_t * fpt / 1e9:8.1f}  "
          f"{(torch_info.get('blas') or '?').split(';')[0]}")
    print(f"{'ratio':10s} {best_p / best_t:11.3f} {med_p / med_t:11.3f}   (ptrain / pytorch; per-round median "
          f"{res['ratio_per_round_median']:.3f})")
    if floor:
        print(f"GEMM floor: the step's linear GEMMs alone take {1e3 * floor['step_s']:.1f} ms "
              f"({floor['gflops']:.1f} GFLOP/s through OpenBLAS) -> at most "
              f"{res['gemm_floor']['tokens_per_s_bound']:.0f} tok/s; ptrain spends "
              f"{100 * floor['step_s'] / (tokens_per_step / best_p):.0f}% of its step there, pytorch "
              f"{100 * floor['step_s'] / (tokens_per_step / best_t):.0f}%")
    worst = max(max(r["foreign_cores_ptrain"], r["foreign_cores_pytorch"]) for r in rounds)
    print(f"load average before/after: {load_before[0]:.2f} / {res['loadavg_after'][0]:.2f}; other processes "
          f"used up to {worst:.2f} of {os.cpu_count()} cores during a measurement"
          + ("  ** CONTENDED: trust the per-round ratios, not the absolute figures **"
             if worst + a.threads > (os.cpu_count() or 1) + 0.25 else ""))
    print("RESULT " + json.dumps(res))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
