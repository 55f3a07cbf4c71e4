#!/usr/bin/python3
"""ptrain's CPU training step against PyTorch's, measured side by side in one run.

    compare_step.py [--threads 1,2,all] [--preset a4] [--config configs/tiny.yaml] [--steps K]
                    [--rounds R] [--warmup W] [--set key.path=value ...] [--ptrain BIN]
                    [--baseline OLD_BIN] [--mpi NP] [--json-out F] [--allow-reference-blas] [--keep-tmp]

(benchmarks/cpu_step.sh is the front door; it runs this file with Debian's /usr/bin/python3.)

What it does, in order:
 1. `ptrain info`: the OpenBLAS build and core ptrain runs on, its usable cores ('all').
 2. Correctness before timing: one init file (tests/reference/torch_reference.py --write-init)
    and one token file; 2 steps of ptrain (train.init_from) and 2 of the reference on them.
    Losses must agree to 1e-4 relative, pre-clip gradient norms to 1e-3, and the first loss
    must be within 0.25 of ln(vocab) (a random init predicts ~uniformly).
 3. For each thread count, R alternated rounds of: ptrain K steps with NO threading variable in
    its environment (OMP_*, OPENBLAS_*, GOMP_*, KMP_* removed; train.threads = the count, 0 for
    'all': what a user gets by default), the --baseline binary the same way, then
    benchmarks/torch_step.py under each OpenBLAS build torch can load (Debian's libblas.so.3
    alternative, and the OpenMP build via LD_LIBRARY_PATH), OMP_NUM_THREADS = OPENBLAS_NUM_THREADS
    = the count and OPENBLAS_CORETYPE = ptrain's core, so both sides run the same GEMM kernels.
    The peer is the faster build (per round). Refuses (exit 3) when torch is not on OpenBLAS.
 4. A GEMM floor per thread count: the step's linear-layer GEMMs (forward, dX, dW for every
    projection and the LM head, all micro-batches) timed alone through the same OpenBLAS
    builds and core (numpy), the faster kept: the time no framework goes below without a better GEMM.
 5. --mpi NP: `mpirun -np NP ptrain` (train.threads 0), tokens/s per rank against the 1-thread row.
 6. Prints a Markdown table and ONE JSON line (prefixed "RESULT ").

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
    ap.add_argument("--threads", default="1,2,all",
                    help="comma-separated thread counts; 'all' = ptrain's default (train.threads 0, every usable core)")
    ap.add_argument("--preset", choices=["a4"], help="a4: llama d256, L4, H8/KV4, F704, T256, B8 on tiny.yaml")
    ap.add_argument("--baseline", metavar="BIN", help="also time this other ptrain binary (e.g. an older build)")
    ap.add_argument("--mpi", type=int, default=0, metavar="NP",
                    help="also time `mpirun -np NP ptrain` (train.threads 0) and report tokens/s per rank")
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
    if a.rounds < 1 or a.warmup < 0 or a.steps < a.warmup + 3:
        ap.error("need --rounds >= 1, --warmup >= 0 and --steps >= warmup + 3")
    if a.preset == "a4":
        a.set = PRESET_A4 + a.set
    return a


# The A4 shapes of the threading issue: llama d256, L4, H8 (4 KV heads), F704, T256, B8.
PRESET_A4 = ["model.hidden=256", "model.heads=8", "model.kv_heads=4", "model.ffn_hidden=704",
             "train.seq_len=256", "train.micro_batch=8", "train.global_batch=8"]


# ---------------------------------------------------------------------------------- helpers

def clean_env():
    """The environment of a user who set no threading variable: ptrain must choose by itself."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("OMP_", "OPENBLAS_", "GOMP_", "KMP_", "MKL_", "PTRAIN_BLAS"))}


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

def correctness(a, tmp, spec, env, threads):
    d = os.path.join(tmp, "check")
    os.makedirs(d)
    data, init, run_dir = os.path.join(d, "data.h5"), os.path.join(d, "init.h5"), os.path.join(d, "run")
    run([PY, REF, "--write-data", data, "--tokens", "20000", "--vocab", str(spec.vocab_size), "--seed", "3"],
        thread_env(1), "writing the check token file")
    sets = a.set + [f"data.path={data}", "data.shuffle=false", "train.steps=2", "optim.warmup_steps=1", "train.eval_every=0",
                    f"train.threads={threads}", "train.precision=fp32"]
    run([PY, REF, "--config", a.config, *sum((["--set", s] for s in sets), []), "--write-init", init],
        thread_env(1), "writing the check init file")
    run([a.ptrain, "--cfg", a.config, *sum((["--set", s] for s in sets), []), "--set", f"checkpoint.dir={run_dir}",
         "--set", "checkpoint.every=0", "--set", f"train.init_from={init}", "--quiet"], env, "ptrain (check)")
    ref_out = os.path.join(d, "ref.json")
    run([PY, REF, "--config", a.config, *sum((["--set", s] for s in sets), []), "--init", init, "--steps", "2",
         "--out", ref_out, "--threads", str(threads)], thread_env(threads), "torch_reference (check)")
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


def ptrain_args(a, data, run_dir, cfg, train_threads):
    warm = min(int(cfg["optim"]["warmup_steps"]), a.steps)  # ptrain refuses warmup_steps > train.steps
    return ["--cfg", a.config, *sum((["--set", s] for s in a.set), []),
            "--set", f"data.path={data}", "--set", f"checkpoint.dir={run_dir}", "--set", "checkpoint.every=0",
            "--set", "train.eval_every=0", "--set", f"train.threads={train_threads}", "--set", "data.shuffle=false",
            "--set", f"train.steps={a.steps}", "--set", f"optim.warmup_steps={warm}", "--quiet"]


def time_ptrain(a, binary, tmp, k, data, env, cfg, train_threads):
    run_dir = os.path.join(tmp, f"ptrain_run{k}")
    run([binary] + ptrain_args(a, data, run_dir, cfg, train_threads), env, "ptrain (timing)")
    tps, st, rows = median_tps(os.path.join(run_dir, "metrics.jsonl"), a.warmup)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"tokens_per_s": tps, "step_s_median": st, "first_loss": rows[0]["loss"],
            "step_s": [r["step_time_s"] for r in rows]}


def time_torch(a, env, threads):
    cmd = [PY, TORCH_STEP, "--config", a.config, *sum((["--set", s] for s in a.set), []),
           "--threads", str(threads), "--warmup", str(a.warmup), "--iters", str(a.steps - a.warmup)]
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


OPENMP_BLAS_DIR = "/usr/lib/x86_64-linux-gnu/openblas-openmp"


def ptrain_info(binary):
    """`ptrain info` (the BLAS build and core ptrain runs on, its usable cores); None for a binary
    that predates the subcommand."""
    r = subprocess.run([binary, "info"], capture_output=True, text=True, env=clean_env())
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def peer_envs(core, threads):
    """The PyTorch (and GEMM-floor numpy) environments to try: Debian's libblas.so.3 alternative
    and OpenBLAS's OpenMP build, both on the OpenBLAS core ptrain runs on."""
    out = {}
    base = thread_env(threads)
    for k in ("OPENBLAS_CORETYPE", "LD_LIBRARY_PATH"):
        base.pop(k, None)
    if core:
        base["OPENBLAS_CORETYPE"] = core
    out["pthread"] = dict(base)
    if os.path.isdir(OPENMP_BLAS_DIR):
        e = dict(base)
        e["LD_LIBRARY_PATH"] = OPENMP_BLAS_DIR
        out["openmp"] = e
    return out


def thread_counts(spec_list, cores):
    """'1,2,all' -> [(label, n, train.threads)]. 'all' runs ptrain's default (train.threads 0, every
    usable core); when 'all' equals a listed count, that one entry runs the default."""
    out = []
    for tok in (t.strip() for t in spec_list.split(",")):
        if tok == "all":
            n = cores
        elif tok.isdigit() and int(tok) >= 1:
            n = int(tok)
        else:
            raise BenchError(f"--threads: '{tok}' is not a thread count (an integer >= 1 or 'all')", 2)
        same = [i for i, (_, m, _) in enumerate(out) if m == n]
        if same and tok == "all":
            out[same[0]] = (f"{n} (all)", n, 0)
        elif not same:
            out.append((f"{n} (all)", n, 0) if tok == "all" else (str(n), n, n))
    return out


def bench(a):
    if not (os.path.isfile(a.ptrain) and os.access(a.ptrain, os.X_OK)):
        raise BenchError(f"no ptrain binary at {a.ptrain}. HINT: build it (cmake -S . -B build -G Ninja "
                         "-DPTRAIN_CUDA=OFF && ninja -C build ptrain) or set PTRAIN_BIN / --ptrain", 2)
    a.ptrain = os.path.abspath(a.ptrain)
    a.config = os.path.abspath(a.config)
    if a.baseline:
        a.baseline = os.path.abspath(a.baseline)
        if not os.access(a.baseline, os.X_OK):
            raise BenchError(f"--baseline {a.baseline} is not an executable", 2)
    try:
        cfg, spec, T, mb, G = load_cfg(a.config, a.set)
    except Exception as e:  # RefError or a YAML error: a usage problem
        raise BenchError(f"config {a.config}: {e}", 2)
    info = ptrain_info(a.ptrain) or {}
    blas_p = info.get("blas", {})
    cores = int(info.get("usable_cores") or os.cpu_count() or 1)
    counts = thread_counts(a.threads, cores)
    core = blas_p.get("core")
    fpt, n_mm = flops_per_token(spec, T)
    tokens_per_step = G * T
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.*)", lscpu)
    alt = subprocess.run(["update-alternatives", "--display", "libblas.so.3-x86_64-linux-gnu"],
                         capture_output=True, text=True).stdout
    alt_now = re.search(r"points to (\S+)", alt)
    load_before = os.getloadavg()
    log = lambda m: print(m, flush=True)  # noqa: E731
    log(f"ptrain: {a.ptrain}: BLAS {blas_p.get('build', '?')} build, core {core or '?'} "
        f"({blas_p.get('core_source', '?')}); {cores} usable cores; thread counts "
        f"{', '.join(l for l, _, _ in counts)}; peer: PyTorch {'on core ' + core if core else ''}, the faster "
        f"of its BLAS builds ({', '.join(peer_envs(core, 1))})")

    tmp = tempfile.mkdtemp(prefix="ptrain_cpu_step_")
    rows = []
    try:
        check = correctness(a, tmp, spec, clean_env(), counts[0][1])
        log(f"correctness: first losses ptrain {check['ptrain_loss'][0]:.6f} torch {check['torch_loss'][0]:.6f} "
            f"(ln V = {check['ln_vocab']:.4f}); max rel diff loss {check['max_rel_loss']:.1e}, "
            f"grad norm {check['max_rel_grad_norm']:.1e}: OK")
        data = os.path.join(tmp, "data.h5")
        run([PY, REF, "--write-data", data, "--tokens", str((a.steps * G + 1) * T + 2), "--vocab",
             str(spec.vocab_size), "--seed", "1"], thread_env(1), "writing the token file")

        for label, n, tt in counts:
            envs = peer_envs(core, n)
            rounds = []
            for k in range(a.rounds):
                r = {}
                if a.wait_quiet > 0:
                    wait_quiet(n, a.wait_quiet, log)
                with Foreign() as fp:
                    p = time_ptrain(a, a.ptrain, tmp, k, data, clean_env(), cfg, tt)
                if abs(p["first_loss"] - math.log(spec.vocab_size)) > 0.25:
                    raise BenchError(f"ptrain's first loss {p['first_loss']} is not near ln(V) = "
                                     f"{math.log(spec.vocab_size):.4f}: wrong model or init", 4)
                r["ptrain"], r["foreign_cores"] = p["tokens_per_s"], fp.cores
                if a.baseline:
                    r["baseline"] = time_ptrain(a, a.baseline, tmp, k, data, clean_env(), cfg, tt)["tokens_per_s"]
                for build, env in envs.items():
                    if a.wait_quiet > 0:
                        wait_quiet(n, a.wait_quiet, log)
                    with Foreign() as ft:
                        t = time_torch(a, env, n)
                    if "openblas" not in (t.get("blas") or "").lower() and not a.allow_reference_blas:
                        raise BenchError(f"torch ({build}) is not on OpenBLAS ({t.get('blas')}); the ratio would "
                                         f"measure the BLAS.\n{alt}HINT: sudo update-alternatives --set "
                                         "libblas.so.3-x86_64-linux-gnu "
                                         "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3", 3)
                    r[f"torch_{build}"] = t["tokens_per_s"]
                    r["torch_blas_" + build] = t.get("blas")
                    r["foreign_cores"] = max(r["foreign_cores"], ft.cores)
                r["pytorch"] = max(r[f"torch_{b}"] for b in envs)
                r["ratio"] = r["ptrain"] / r["pytorch"]
                rounds.append(r)
                log(f"threads {label}, round {k + 1}/{a.rounds}: ptrain {r['ptrain']:8.0f} tok/s"
                    + (f"   baseline {r['baseline']:8.0f}" if a.baseline else "")
                    + "".join(f"   torch/{b} {r['torch_' + b]:8.0f}" for b in envs)
                    + f"   ratio {r['ratio']:.3f}   (others used {r['foreign_cores']:.2f} cores)")
            floor = None
            if not a.no_gemm_floor:
                child = json.dumps({"shapes": linear_shapes(spec, mb * T), "accum": G // mb, "reps": 20})
                best = None
                for build, env in envs.items():
                    f = json.loads(run([PY, os.path.abspath(__file__), "--_gemm-floor", child], env,
                                       "GEMM floor").stdout.strip().splitlines()[-1])
                    f["build"] = build
                    if best is None or f["step_s"] < best["step_s"]:
                        best = f
                floor = best
                floor["tokens_per_s_bound"] = tokens_per_step / floor["step_s"]
            med = lambda key: statistics.median(x[key] for x in rounds)  # noqa: E731
            best = lambda key: max(x[key] for x in rounds)  # noqa: E731
            row = {"threads": label, "n": n, "train_threads": tt, "rounds_detail": rounds,
                   "ptrain_best": best("ptrain"), "ptrain_median": med("ptrain"),
                   "pytorch_best": best("pytorch"), "pytorch_median": med("pytorch"),
                   "ratio_best": best("ptrain") / best("pytorch"), "ratio_median": med("ptrain") / med("pytorch"),
                   "ratio_per_round_median": med("ratio"), "gemm_floor": floor}
            for b in envs:
                row[f"torch_{b}_best"] = best(f"torch_{b}")
            if a.baseline:
                row["baseline_best"], row["baseline_median"] = best("baseline"), med("baseline")
            rows.append(row)

        mpi = None
        if a.mpi:
            mpi = time_mpi(a, tmp, data, cfg)
    finally:
        if a.keep_tmp:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    res = {
        "bench": "cpu_step", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": model.group(1) if model else "?",
        "config": os.path.relpath(a.config, ROOT), "sets": a.set, "steps": a.steps, "warmup": a.warmup,
        "rounds": a.rounds, "tokens_per_step": tokens_per_step, "model_flops_per_token": fpt,
        "matmul_params": n_mm, "ptrain_binary": a.ptrain, "ptrain_info": info, "baseline_binary": a.baseline,
        "rows": rows, "mpi": mpi, "correctness": check, "libblas_alternative": alt_now.group(1) if alt_now else None,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    step_ms = lambda tps: 1e3 * tokens_per_step / tps  # noqa: E731
    print()
    print(f"CPU training step, {res['config']} {' '.join(a.set)}: {tokens_per_step} tokens/step, "
          f"{fpt / 1e6:.2f} MFLOP/token; {a.rounds} alternated rounds of {a.steps} steps each (median after "
          f"{a.warmup} warm-up); tokens/s best of rounds; ptrain with no threading variable in its environment "
          f"(train.threads = the count, 0 for 'all'); PyTorch the faster of its BLAS builds, on core {core}")
    builds = list(peer_envs(core, 1))
    head = ["threads", "ptrain tok/s", "ms/step"] + (["baseline tok/s", "ptrain/baseline"] if a.baseline else []) \
        + [f"torch ({b})" for b in builds] + ["ptrain/pytorch (best)", "(median)", "GEMM floor tok/s",
                                               "ptrain's share in GEMM"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        f = r["gemm_floor"]
        cells = [r["threads"], f"{r['ptrain_best']:.0f}", f"{step_ms(r['ptrain_best']):.1f}"]
        if a.baseline:
            cells += [f"{r['baseline_best']:.0f}", f"{r['ptrain_best'] / r['baseline_best']:.2f}x"]
        cells += [f"{r['torch_' + b + '_best']:.0f}" for b in builds]
        cells += [f"{r['ratio_best']:.2f}x", f"{r['ratio_median']:.2f}x",
                  f"{f['tokens_per_s_bound']:.0f} ({f['gflops']:.0f} GFLOP/s, {f['build']})" if f else "-",
                  f"{100 * f['step_s'] / (tokens_per_step / r['ptrain_best']):.0f}%" if f else "-"]
        print("| " + " | ".join(cells) + " |")
    one = next((r for r in rows if r["n"] == 1), None)
    for r in rows:
        if one and r is not one:
            print(f"ptrain at {r['threads']} threads: {r['ptrain_best'] / one['ptrain_best']:.2f}x its 1-thread "
                  "tokens/s")
    if mpi:
        print(f"mpirun -np {mpi['np']} (train.threads {mpi['train_threads']}): {mpi['tokens_per_s']:.0f} tok/s in "
              f"all = {mpi['per_rank']:.0f} per rank"
              + (f", {mpi['per_rank'] / one['ptrain_best']:.2f}x the single-rank 1-thread figure" if one else ""))
    worst = max(x["foreign_cores"] for r in rows for x in r["rounds_detail"])
    print(f"load average before/after: {load_before[0]:.2f} / {res['loadavg_after'][0]:.2f}; other processes "
          f"used up to {worst:.2f} of {os.cpu_count()} cores during a measurement")
    print("RESULT " + json.dumps(res))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def time_mpi(a, tmp, data, cfg):
    """`mpirun -np NP ptrain` (1 thread each: cores / ranks on a 2-core machine): global tokens/s
    over the ranks, median of the best round."""
    mpirun = shutil.which("mpirun")
    if not mpirun:
        raise BenchError("--mpi: no mpirun on PATH", 2)
    best = None
    for k in range(a.rounds):
        run_dir = os.path.join(tmp, f"mpi_run{k}")
        cmd = [mpirun, "-np", str(a.mpi), "--oversubscribe", "--bind-to", "none"] \
            + (["--allow-run-as-root"] if os.geteuid() == 0 else []) + [a.ptrain] \
            + ptrain_args(a, data, run_dir, cfg, 0)
        run(cmd, clean_env(), "mpirun ptrain (timing)")
        tps, _, _ = median_tps(os.path.join(run_dir, "metrics.jsonl"), a.warmup)
        shutil.rmtree(run_dir, ignore_errors=True)
        best = tps if best is None else max(best, tps)
    return {"np": a.mpi, "train_threads": 0, "tokens_per_s": best, "per_rank": best / a.mpi}


if __name__ == "__main__":
    sys.exit(main())
