#!/usr/bin/python3
"""PyTorch peer of ptrain's CPU training-step benchmark.

    torch_step.py --config CFG.yaml [--set key.path=value ...] --threads N [--warmup 3] [--iters 10]

Builds the model of CFG (code imported from tests/reference/torch_reference.py, fp32), random
init (torch's generator, train.seed), and times full training steps on random tokens of the
configured shapes: forward + backward over global_batch/micro_batch micro-batches, global-norm
clip, AdamW at the constant rate optim.lr. `warmup` untimed steps, then `iters` timed steps. Prints ONE JSON line on stdout:
  {"impl": "pytorch", "torch": ..., "threads": N, "blas": ..., "blas_threads": ...,
   "arch": ..., "params": ..., "tokens_per_step": G*T, "warmup": ..., "iters": ...,
   "step_s": [...], "step_s_median": ..., "tokens_per_s": G*T / median}
Diagnostics (which BLAS library torch's sgemm resolves to) go to stderr; a loud warning when it is
not OpenBLAS, since the comparison with ptrain (OpenBLAS) would then measure the BLAS instead.

Invariants: thread counts are pinned before torch is imported (OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS) and again at run time; the tokens are drawn before timing starts.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="PyTorch CPU training-step benchmark (peer of ptrain's)")
    ap.add_argument("--config", required=True, help="ptrain YAML config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a config key; value parsed as YAML (repeatable)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.warmup < 0 or args.iters < 1:
        ap.error("--threads and --iters must be >= 1, --warmup >= 0")
    return args


def sgemm_provider():
    """Real path of the library that defines the Fortran `sgemm_` torch calls (BLAS_INFO=generic
    links libblas.so.3, which Debian's alternatives point at OpenBLAS or at the reference BLAS)."""
    import ctypes

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]
    try:
        fn = ctypes.CDLL("libblas.so.3", mode=os.RTLD_NOLOAD).sgemm_
    except (OSError, AttributeError):
        return None
    info = DlInfo()
    if not ctypes.CDLL("libc.so.6").dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return os.path.realpath(info.dli_fname.decode())


def blas_in_use():
    """(summary, is_openblas, openblas threads) for the BLAS this process's sgemm_ comes from."""
    import ctypes
    import torch
    a = torch.randn(64, 64)
    (a @ a).sum().item()                               # make sure the BLAS is loaded and used
    provider = sgemm_provider()
    config, blas_threads = "", None
    try:
        lib = ctypes.CDLL("libopenblas.so.0", mode=os.RTLD_NOLOAD)
        lib.openblas_get_config.restype = ctypes.c_char_p
        config = lib.openblas_get_config().decode()
        blas_threads = lib.openblas_get_num_threads()
    except (OSError, AttributeError):
        pass
    info = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    is_openblas = provider is not None and "openblas" in provider
    summary = "; ".join(filter(None, [
        f"sgemm_ from {provider or 'unknown (not found via libblas.so.3)'}",
        config if is_openblas else "",
        f"torch BLAS_INFO={info.group(1)}" if info else ""]))
    return summary, is_openblas, blas_threads if is_openblas else None


def main():
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests", "reference"))
    import torch
    import torch_reference as ref

    try:
        cfg = ref.load_config(args.config, args.set)
        spec = ref.ModelSpec(cfg)
        T, mb, G = ref.batch_settings(cfg)
        o = ref.optim_settings(cfg)
        if spec.arch == "gpt2" and T > spec.max_seq_len:
            raise ref.RefError(f"train.seq_len = {T} exceeds model.max_seq_len = {spec.max_seq_len}")
    except ref.RefError as e:
        print(f"torch_step: error: {e}", file=sys.stderr)
        return 2

    ref.set_threads(args.threads)
    blas, is_openblas, blas_threads = blas_in_use()
    print(f"torch_step: BLAS in use: {blas}", file=sys.stderr)
    if not is_openblas:
        bar = "!" * 78
        alt = subprocess.run(["update-alternatives", "--display", "libblas.so.3-x86_64-linux-gnu"],
                             capture_output=True, text=True).stdout
        print(f"{bar}\ntorch_step: WARNING: torch is NOT using OpenBLAS; the comparison with ptrain "
              f"measures the BLAS, not the framework.\n{alt}{bar}", file=sys.stderr)

    seed = ref.get_int(cfg, "train.seed")
    model = ref.build_model(spec)
    ref.init_random(model, seed)
    opt = ref.make_optimizer(model, o)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(seed + 1)
    steps = args.warmup + args.iters
    batches = [torch.randint(0, spec.vocab_size, (G, T + 1), generator=g) for _ in range(steps)]

    times = []
    for s in range(steps):
        tok = batches[s]
        x, y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()
        t0 = time.perf_counter()
        ref.train_step(model, opt, x, y, mb, o["lr"], o["grad_clip"])
        dt = time.perf_counter() - t0
        if s >= args.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "threads": args.threads, "blas": blas,
        "blas_threads": blas_threads, "arch": spec.arch, "params": n_params,
        "tokens_per_step": G * T, "warmup": args.warmup, "iters": args.iters, "step_s": times,
        "step_s_median": med, "tokens_per_s": G * T / med,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
