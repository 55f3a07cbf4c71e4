#!/usr/bin/env python3
"""PyTorch peer of ptrain's GPU training benchmark (benchmarks/gpu/verify.sh, stage bench).

    torch_llama.py --config configs/125m.yaml [--set key.path=value ...] [--attn eager,sdpa]
                   [--weights fp32|bf16] [--optim foreach|fused] [--steps 30] [--warmup 5]
                   [--device cuda|cpu] [--impl hf|ref] [--json-out FILE]

Builds the model of a ptrain config (the same file and --set overrides given to ptrain, so the
shapes cannot drift): Hugging Face transformers' LlamaForCausalLM with hidden, layers, heads,
kv_heads, ffn_hidden, vocab_size, max_seq_len, norm_eps, rope_theta and tie_embeddings taken
from it, and times full training steps of train.global_batch sequences of train.seq_len tokens:
global_batch / micro_batch micro-batches of train.micro_batch sequences (forward, mean token
cross-entropy over the T targets of each sequence, backward), global gradient-norm clipping at
optim.grad_clip, torch.optim.AdamW (foreach: the multi-tensor implementation, the counterpart of
ptrain's fused multi-tensor AdamW; or fused) with weight decay on 2-D parameters only, and
zero_grad(set_to_none=True); torch.cuda.synchronize() closes each timed step.

Precision (train.precision bf16):
  --weights fp32 (default): fp32 parameters, gradients and Adam state, the forward and backward
      under torch.autocast(bfloat16): PyTorch's usual mixed precision, and the counterpart of
      ptrain's bf16 (fp32 master weights, bf16 compute, fp32 gradients). PyTorch keeps no bf16
      copy of the weights (autocast casts them per micro-batch), ptrain does.
  --weights bf16: the model itself in bf16 (weights, gradients and Adam state bf16), no autocast.
train.precision fp32 runs in fp32 (TF32 matmuls when train.tf32 is true).

Attention: --attn eager (HF's matmul + softmax + matmul: materialises the T x T scores, like
ptrain's non-flash attention), sdpa (torch's scaled_dot_product_attention: flash/memory-efficient
kernels where available); a comma list runs each in turn in this process (peak memory reset in
between). --impl ref uses the repository's own PyTorch llama (tests/reference/torch_reference.py;
needs h5py and yaml) instead of transformers: for trying this script without transformers (its
attention is always the eager kind).

Data: random token ids (torch generator, train.seed), drawn on the device before timing.

Output: one line per attention kind on stdout, `RESULT {json}`:
  {"impl", "attn", "attn_used", "weights", "optim", "torch", "transformers", "device",
   "device_name", "params", "shapes": {...}, "tokens_per_step", "warmup", "steps",
   "step_s": [...], "step_s_median", "tokens_per_s" (tokens_per_step / median of the timed steps),
   "max_memory_allocated", "max_memory_reserved", "loss_first", "loss_last"}
or, when it cannot run, `NOT RUN: why` and exit status 3 (torch, transformers or CUDA missing).
"""

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def not_run(why):
    print(f"NOT RUN: {why}", flush=True)
    sys.exit(3)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="PyTorch (transformers LlamaForCausalLM) peer of ptrain's GPU benchmark")
    ap.add_argument("--config", required=True, help="ptrain YAML config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a config key, value parsed as YAML, as ptrain's --set (repeatable)")
    ap.add_argument("--attn", default="eager", help="eager, sdpa, or a comma list (default eager)")
    ap.add_argument("--weights", choices=["fp32", "bf16"], default="fp32",
                    help="fp32: fp32 parameters + bf16 autocast (default); bf16: bf16 parameters")
    ap.add_argument("--optim", choices=["foreach", "fused"], default="foreach")
    ap.add_argument("--steps", type=int, default=30, help="steps in all, warm-up included (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps (default 5)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try the script)")
    ap.add_argument("--impl", choices=["hf", "ref"], default="hf")
    ap.add_argument("--json-out", help="also append the RESULT objects to this file (JSON lines)")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.warmup >= a.steps:
        ap.error("need --steps >= 1 and 0 <= --warmup < --steps")
    a.attn = [x.strip() for x in a.attn.split(",") if x.strip()]
    for x in a.attn:
        if x not in ("eager", "sdpa"):
            ap.error(f"--attn {x}: accepted eager, sdpa")
    if a.impl == "ref":
        a.attn = ["eager"]  # the reference model has one attention
        if a.weights == "bf16":
            ap.error("--impl ref: fp32 weights only (--weights fp32, autocast for bf16)")
    return a


# ----------------------------------------------------------------------------------------------
# The config: ptrain's YAML with --set applied, nulls resolved as ptrain resolves them
# ----------------------------------------------------------------------------------------------

MODEL_DEFAULTS = {"arch": "llama", "vocab_size": 32000, "hidden": 4096, "layers": 32, "heads": 32,
                  "kv_heads": None, "ffn_hidden": 11008, "max_seq_len": 2048, "norm_eps": 1.0e-5,
                  "rope_theta": 10000.0, "tie_embeddings": None}
TRAIN_DEFAULTS = {"seq_len": 2048, "micro_batch": 1, "global_batch": 64, "seed": 1234,
                  "precision": "bf16", "tf32": False}
OPTIM_DEFAULTS = {"lr": 3.0e-4, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.1, "grad_clip": 1.0}


def load_config(path, sets):
    try:
        import yaml
    except ImportError:
        not_run("PyYAML is missing (python3 -m pip install pyyaml; transformers depends on it)")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    for item in sets:
        if "=" not in item:
            sys.exit(f"torch_llama.py: --set {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        node = cfg
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        value = yaml.safe_load(text) if text.strip() else None
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)  # a mapping merges into a section, as in ptrain
        else:
            node[parts[-1]] = value
    m = dict(MODEL_DEFAULTS, **(cfg.get("model") or {}))
    t = dict(TRAIN_DEFAULTS, **(cfg.get("train") or {}))
    o = dict(OPTIM_DEFAULTS, **(cfg.get("optim") or {}))
    if m["arch"] != "llama":
        sys.exit(f"torch_llama.py: model.arch {m['arch']!r}: only llama is benchmarked here")
    if m["kv_heads"] is None:
        m["kv_heads"] = m["heads"]
    if m["tie_embeddings"] is None:
        m["tie_embeddings"] = False  # llama's default
    for k in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "ffn_hidden", "max_seq_len"):
        m[k] = int(m[k])
    m["norm_eps"], m["rope_theta"] = float(m["norm_eps"]), float(m["rope_theta"])
    for k in ("seq_len", "micro_batch", "global_batch", "seed"):
        t[k] = int(t[k])
    if t["global_batch"] % t["micro_batch"]:
        sys.exit("torch_llama.py: train.global_batch must be a multiple of train.micro_batch (one rank)")
    o["lr"], o["eps"], o["weight_decay"] = float(o["lr"]), float(o["eps"]), float(o["weight_decay"])
    o["grad_clip"] = float(o["grad_clip"])
    o["betas"] = [float(b) for b in o["betas"]]
    if str(t["precision"]) not in ("bf16", "fp32"):
        sys.exit(f"torch_llama.py: train.precision {t['precision']}: bf16 or fp32 only (fp16 would need a loss scaler)")
    return m, t, o


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def build_hf(m, attn):
    import inspect

    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=m["vocab_size"], hidden_size=m["hidden"], intermediate_size=m["ffn_hidden"],
              num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["kv_heads"],
              max_position_embeddings=m["max_seq_len"], rms_norm_eps=m["norm_eps"],
              tie_word_embeddings=m["tie_embeddings"], hidden_act="silu", attention_bias=False,
              attention_dropout=0.0, use_cache=False)
    try:
        fields = set(inspect.signature(LlamaConfig.__init__).parameters)
    except (TypeError, ValueError):
        fields = set()
    fields |= set(getattr(LlamaConfig, "__dataclass_fields__", {}) or {})
    if "rope_parameters" in fields:  # transformers 5
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": m["rope_theta"]}
    else:
        kw["rope_theta"] = m["rope_theta"]
    if "mlp_bias" in fields:
        kw["mlp_bias"] = False
    config = LlamaConfig(**kw)
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn)
    used = getattr(model.config, "_attn_implementation", None) or attn
    theta = getattr(model.config, "rope_theta", None)
    if theta is None:
        theta = (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta")
    if theta is not None and abs(float(theta) - m["rope_theta"]) > 1e-6 * m["rope_theta"]:
        sys.exit(f"torch_llama.py: the model's rope_theta is {theta}, the config's {m['rope_theta']}")

    def logits(model, idx):
        return model(input_ids=idx, use_cache=False).logits

    return model, logits, used, transformers.__version__


def build_ref(m, attn):
    sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
    try:
        import torch_reference as R
    except ImportError as e:
        not_run(f"--impl ref: {e}")
    cfg = {"model": dict(m, ffn_hidden=m["ffn_hidden"])}
    spec = R.ModelSpec(cfg)
    model = R.build_model(spec)
    R.init_random(model, 1234)
    return model, (lambda model, idx: model(idx)), "eager (ref)", None


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

def run_one(a, torch, m, t, o, attn):
    F = torch.nn.functional
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    low = str(t["precision"]) == "bf16"
    half = torch.bfloat16
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(t["seed"])
    if a.impl == "hf":
        model, logits_of, used, tf_version = build_hf(m, attn)
    else:
        model, logits_of, used, tf_version = build_ref(m, attn)
    model.to(device=dev, dtype=torch.float32)  # fp32 whatever transformers' default dtype is
    if low and a.weights == "bf16":
        model.to(half)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    decay = [p for p in params if p.dim() == 2]
    no_decay = [p for p in params if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    okw = dict(lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
    if a.optim == "fused":
        okw["fused"] = True
    else:
        okw["foreach"] = True
    opt = torch.optim.AdamW(groups, **okw)

    T, mb, G = t["seq_len"], t["micro_batch"], t["global_batch"]
    accum = G // mb
    gen = torch.Generator(device="cpu").manual_seed(t["seed"])
    pool = 2  # a couple of distinct batches, drawn before timing
    tokens = torch.randint(0, m["vocab_size"], (pool, accum, mb, T + 1), generator=gen).to(dev)
    use_autocast = low and a.weights == "fp32"

    def step(i):
        batch = tokens[i % pool]
        total = 0.0
        for k in range(accum):
            inp, tgt = batch[k, :, :T], batch[k, :, 1:]
            with (torch.autocast(device_type=dev.type, dtype=half) if use_autocast else contextlib.nullcontext()):
                logits = logits_of(model, inp)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tgt.reshape(-1)) / accum
            loss.backward()
            total += loss.detach()
        if o["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, o["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    times, losses = [], []
    for i in range(a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step(i)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if i >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    res = {
        "impl": "transformers LlamaForCausalLM" if a.impl == "hf" else "tests/reference/torch_reference.py",
        "attn": attn, "attn_used": used, "weights": a.weights if low else "fp32",
        "autocast": str(half).replace("torch.", "") if use_autocast else None,
        "optim": f"torch.optim.AdamW({a.optim}=True)", "torch": torch.__version__, "transformers": tf_version,
        "device": a.device, "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "params": n_params,
        "shapes": {"vocab_size": m["vocab_size"], "hidden": m["hidden"], "layers": m["layers"], "heads": m["heads"],
                   "kv_heads": m["kv_heads"], "ffn_hidden": m["ffn_hidden"], "seq_len": T, "micro_batch": mb,
                   "global_batch": G, "tie_embeddings": m["tie_embeddings"], "precision": str(t["precision"]),
                   "tf32": bool(t["tf32"])},
        "tokens_per_step": G * T, "warmup": a.warmup, "steps": a.steps,
        "step_s": [round(x, 6) for x in times], "step_s_median": med, "tokens_per_s": G * T / med,
        "max_memory_allocated": torch.cuda.max_memory_allocated(dev) if cuda else None,
        "max_memory_reserved": torch.cuda.max_memory_reserved(dev) if cuda else None,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    if not all(math.isfinite(x) for x in losses):
        res["warning"] = "non-finite loss"
    del opt, model, params, decay, no_decay, groups, tokens
    return res


def main(argv=None):
    a = parse_args(argv)
    try:
        import torch
    except ImportError:
        not_run("PyTorch is not installed for this python3")
    if a.impl == "hf":
        try:
            import transformers  # noqa: F401
        except ImportError:
            not_run("transformers is not installed for this python3")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        not_run(f"torch {torch.__version__} sees no CUDA device")
    m, t, o = load_config(a.config, a.set)
    tf32 = bool(t["tf32"])
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    for attn in a.attn:
        res = run_one(a, torch, m, t, o, attn)
        line = json.dumps(res)
        print("RESULT " + line, flush=True)
        if a.json_out:
            with open(a.json_out, "a") as f:
                f.write(line + "\n")
        print(f"torch_llama.py: {res['impl']}, attention {res['attn_used']}, weights {res['weights']}: "
              f"{res['tokens_per_s']:.0f} tokens/s, median step {res['step_s_median'] * 1e3:.1f} ms, "
              f"max allocated {(res['max_memory_allocated'] or 0) / 2**30:.2f} GiB, loss {res['loss_first']:.3f} -> "
              f"{res['loss_last']:.3f}", file=sys.stderr, flush=True)
        if a.device.startswith("cuda"):
            import gc
            gc.collect()
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
