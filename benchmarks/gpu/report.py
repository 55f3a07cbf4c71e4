#!/usr/bin/env python3
"""Markdown for benchmarks/gpu/verify.sh's stages curve and bench, from ptrain's metrics.jsonl
(one JSON object per step, DESIGN.md "Steps and metrics") and torch_llama.py's RESULT lines.
Standard library only.

  report.py curve --run LABEL=RUN_DIR ... [--every 10]
      LABEL is one of cpu-fp32, cuda-fp32, cuda-bf16, cpu-bf16 (missing ones are left out).
      Per step: the losses, and the relative differences |a-b|/|b| of cuda-fp32 vs cpu-fp32
      (the device against the CPU reference), cuda-bf16 vs cuda-fp32 (what bf16 costs) and
      cuda-bf16 vs cpu-bf16 (the same rounding points on both); a table of every EVERY-th step
      (and the first and last), then the largest difference of each pair over all steps against
      an indicative bound.
  report.py bench --run RUN_DIR --log PTRAIN_LOG --warmup W [--torch RESULTS.jsonl]
      ptrain: median tokens/s, step time and MFU of the steps after the first W, the largest
      mem_peak_bytes / mem_reserved_bytes; the model's FLOPs per token 6N + 12*layers*hidden*seq_len
      (N from the checkpoint's resolved config, counted as ptrain counts it: every weight once,
      vocabulary unpadded), the peak ptrain divides by (its banner in PTRAIN_LOG); each PyTorch
      result beside it with the ratio ptrain / PyTorch.
Exit status 0 with a report, 1 when nothing could be read (the reason is printed).
"""

import argparse
import glob
import json
import math
import os
import re
import statistics
import sys

PAIRS = [  # (a, b, what, indicative bound on max |a-b|/|b|)
    ("cuda-fp32", "cpu-fp32", "device fp32 vs CPU fp32", 1e-3),
    ("cuda-bf16", "cuda-fp32", "device bf16 vs device fp32", 5e-2),
    ("cuda-bf16", "cpu-bf16", "device bf16 vs CPU bf16", 1e-2),
]
LABELS = ["cpu-fp32", "cuda-fp32", "cuda-bf16", "cpu-bf16"]


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed run
            if isinstance(r, dict) and "step" in r:
                rows[int(r["step"])] = r
    return rows


def rel(a, b):
    if a is None or b is None:
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def fmt_rel(x):
    return "—" if x is None else ("inf" if math.isinf(x) else f"{x:.1e}")


def curve(a):
    runs = {}
    for item in a.run:
        label, _, d = item.partition("=")
        if label not in LABELS:
            sys.exit(f"report.py: --run {item}: label must be one of {', '.join(LABELS)}")
        runs[label] = read_metrics(d)
    have = [l for l in LABELS if runs.get(l)]
    if not have:
        print("no metrics.jsonl with any step was found")
        return 1
    steps = sorted(set().union(*[set(runs[l]) for l in have]))
    loss = {l: {s: runs[l][s].get("loss") for s in runs[l]} for l in have}
    pairs = [p for p in PAIRS if p[0] in have and p[1] in have]
    last = steps[-1]
    shown = [s for s in steps if s == 1 or s % a.every == 0 or s == last]
    cols = ["step"] + [f"loss {l}" for l in have] + [f"rel {p[0]} vs {p[1]}" for p in pairs]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * (1 + len(have) + len(pairs)))
    for s in shown:
        cells = [str(s)]
        for l in have:
            v = loss[l].get(s)
            cells.append("—" if v is None else f"{v:.6f}")
        for p in pairs:
            cells.append(fmt_rel(rel(loss[p[0]].get(s), loss[p[1]].get(s))))
        print("| " + " | ".join(cells) + " |")
    print()
    for l in have:
        r = runs[l]
        n = len(r)
        times = [r[s].get("step_time_s") for s in sorted(r) if s > 2 and r[s].get("step_time_s")]
        t = f", median step {statistics.median(times) * 1e3:.1f} ms" if times else ""
        print(f"* {l}: {n} steps, loss {r[min(r)]['loss']:.4f} -> {r[max(r)]['loss']:.4f}{t}")
    verdict_bad = False
    for p in pairs:
        diffs = [(rel(loss[p[0]].get(s), loss[p[1]].get(s)), s) for s in steps
                 if loss[p[0]].get(s) is not None and loss[p[1]].get(s) is not None]
        if not diffs:
            continue
        worst, at = max(diffs)
        first = diffs[0][0]
        ok = worst <= p[3]
        verdict_bad |= not ok
        print(f"* {p[2]} ({p[0]} vs {p[1]}, {len(diffs)} steps): max relative loss difference "
              f"{fmt_rel(worst)} (step {at}), step 1: {fmt_rel(first)}, last: {fmt_rel(diffs[-1][0])}; "
              f"{'within' if ok else 'ABOVE'} the indicative bound {p[3]:.0e}")
    missing = [l for l in LABELS if l not in have]
    if missing:
        print(f"* not compared (no metrics): {', '.join(missing)}")
    print()
    if not pairs:
        print("Result: nothing compared (a pair needs both runs' metrics; see the runs above)")
        return 1
    print("Result: " + ("curves agree within the indicative bounds" if not verdict_bad else
                        "a difference is ABOVE its indicative bound: look at the table"))
    return 0


def llama_params(m):
    """Weights counted once, as ptrain counts them (launch/trainer.cpp: num_params_)."""
    V, H, L, F = m["vocab_size"], m["hidden"], m["layers"], m["ffn_hidden"]
    heads = m["heads"]
    kv = m.get("kv_heads") or heads
    hd = H // heads
    tie = bool(m.get("tie_embeddings"))
    block = H * hd * heads + 2 * H * hd * kv + hd * heads * H + 3 * H * F + 2 * H
    return V * H * (1 if tie else 2) + L * block + H


def newest_meta(run_dir):
    metas = sorted(glob.glob(os.path.join(run_dir, "step_*", "meta.json")))
    for p in reversed(metas):
        try:
            with open(p) as f:
                return json.load(f)
        except (OSError, ValueError):
            continue
    return None


def gib(x):
    return "—" if x is None else f"{x / 2**30:.2f}"


def bench(a):
    rows = read_metrics(a.run)
    torch_res = []
    if a.torch and os.path.exists(a.torch):
        with open(a.torch) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        torch_res.append(json.loads(line))
                    except ValueError:
                        pass
    peak = None
    banner = ""
    if a.log and os.path.exists(a.log):
        with open(a.log, errors="replace") as f:
            text = f.read()
        mt = re.search(r"against a peak of ([0-9.]+) TFLOP/s", text)
        if mt:
            peak = float(mt.group(1)) * 1e12
        mb = re.search(r"^ptrain: (llama|gpt2) .*$", text, re.M)
        banner = mb.group(0) if mb else ""
    meta = newest_meta(a.run)
    shapes = None
    if meta and "config" in meta:
        c = meta["config"]
        shapes = dict(c["model"], seq_len=c["train"]["seq_len"], micro_batch=c["train"]["micro_batch"],
                      global_batch=c["train"]["global_batch"], precision=c["train"]["precision"])
        src = "ptrain's checkpoint (resolved config)"
    elif torch_res:
        shapes = dict(torch_res[0]["shapes"])
        src = "torch_llama.py (ptrain wrote no checkpoint)"
    if shapes is None:
        print("not run: no ptrain checkpoint and no PyTorch result to take the shapes from")
        return 1
    N = llama_params(shapes)
    fpt = 6.0 * N + 12.0 * shapes["layers"] * shapes["hidden"] * shapes["seq_len"]
    tokens_per_step = shapes["global_batch"] * shapes["seq_len"]
    print(f"Shapes ({src}): vocab {shapes['vocab_size']}, hidden {shapes['hidden']}, layers {shapes['layers']}, "
          f"heads {shapes['heads']}/{shapes.get('kv_heads') or shapes['heads']} (q/kv), ffn {shapes['ffn_hidden']}, "
          f"seq_len {shapes['seq_len']}, micro-batch {shapes['micro_batch']}, global batch {shapes['global_batch']} "
          f"({tokens_per_step} tokens/step), precision {shapes.get('precision')}.")
    print(f"N = {N:,} parameters (every weight once, vocabulary unpadded); model FLOPs per token "
          f"6N + 12·layers·hidden·seq_len = {fpt:.4e}.")
    if peak:
        print(f"Peak: {peak / 1e12:.1f} TFLOP/s (ptrain's table, launch/metrics.cpp gpu_peak_flops, for this GPU "
              f"and precision); MFU = tokens/s × FLOPs per token / peak.")
    else:
        print("Peak: unknown for this device (ptrain reports mfu null); MFU not stated.")
    for r in torch_res:
        if r.get("params") is not None and r["params"] != N:
            print(f"WARNING: PyTorch's model ({r['attn']}) has {r['params']:,} parameters, ptrain's count is {N:,}")
    print()
    timed = [rows[s] for s in sorted(rows) if s > a.warmup]
    out = []
    ours = None
    if timed:
        tps = statistics.median(r["tokens_per_s"] for r in timed)
        st = statistics.median(r["step_time_s"] for r in timed)
        mfus = [r.get("mfu") for r in timed if r.get("mfu") is not None]
        mfu = statistics.median(mfus) if mfus else (tps * fpt / peak if peak else None)
        mem = max((r.get("mem_peak_bytes") or 0) for r in rows.values()) or None
        res = max((r.get("mem_reserved_bytes") or 0) for r in rows.values()) or None
        ours = tps
        loss = f"{rows[min(rows)]['loss']:.3f} → {rows[max(rows)]['loss']:.3f}"
        out.append(("ptrain", "naive (batched GEMMs + fused causal softmax)", f"bf16 weights + fp32 master"
                    if shapes.get("precision") == "bf16" else str(shapes.get("precision")),
                    tps, st, mfu, mem, res, loss, len(timed), "1.00"))
    else:
        print(f"ptrain: no timed steps in {a.run}/metrics.jsonl (steps after the first {a.warmup}); see its log")
    for r in torch_res:
        tps = r["tokens_per_s"]
        mfu = tps * fpt / peak if peak else None
        w = ("fp32 weights + autocast bf16" if r.get("autocast") else f"{r['weights']} weights")
        ratio = f"{ours / tps:.2f}" if ours else "—"
        out.append((f"PyTorch {r['torch']}" + (f", transformers {r['transformers']}" if r.get("transformers") else ""),
                    r.get("attn_used") or r["attn"], w, tps, r["step_s_median"], mfu, r.get("max_memory_allocated"),
                    r.get("max_memory_reserved"), f"{r['loss_first']:.3f} → {r['loss_last']:.3f}",
                    len(r.get("step_s") or []), ratio))
    if not out:
        return 1
    print("| implementation | attention | precision | tokens/s (median) | step ms | MFU | peak allocated GiB | "
          "reserved GiB | loss first → last | timed steps | ptrain / this |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (impl, attn, prec, tps, st, mfu, mem, res, loss, n, ratio) in out:
        m = "—" if mfu is None else f"{mfu * 100:.1f}%"
        print(f"| {impl} | {attn} | {prec} | {tps:,.0f} | {st * 1e3:.1f} | {m} | {gib(mem)} | {gib(res)} | {loss} | "
              f"{n} | {ratio} |")
    print()
    if ours is not None:
        m = out[0][5]
        parts = [f"ptrain {ours:,.0f} tokens/s" + (f", MFU {m * 100:.1f}%" if m is not None else "")]
        for row in out[1:]:
            parts.append(f"{row[10]}× PyTorch {row[1]}")
        print("Result: " + "; ".join(parts) + ".")
        print()
    if banner:
        print(f"ptrain's banner: `{banner}`")
    print("Memory: ptrain's mem_peak_bytes (its caching allocator's peak allocated; reserved = held from the "
          "driver); PyTorch's torch.cuda.max_memory_allocated / max_memory_reserved. Step times: medians after "
          f"{a.warmup} warm-up steps, torch.cuda.synchronize() closing each PyTorch step.")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve")
    c.add_argument("--run", action="append", default=[], metavar="LABEL=RUN_DIR")
    c.add_argument("--every", type=int, default=10)
    b = sub.add_parser("bench")
    b.add_argument("--run", required=True, help="ptrain's run directory (checkpoint.dir)")
    b.add_argument("--log", help="ptrain's console output (for the peak FLOP/s of its banner)")
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--torch", help="torch_llama.py's --json-out file")
    a = ap.parse_args(argv)
    return curve(a) if a.cmd == "curve" else bench(a)


if __name__ == "__main__":
    sys.exit(main())
