#!/usr/bin/python3
"""Independent PyTorch implementation of ptrain's training contract (DESIGN.md, "Contracts").

Written from the contract and from Hugging Face's model semantics only, sharing no code with
ptrain, so that agreement between the two is evidence and not an echo. Used by
  * the loss-curve test: ptrain and this script start from the same INIT.h5, read the same data
    file and config, and must report the same per-step loss, grad_norm and lr;
  * benchmarks/torch_step.py, which imports the model and step code from here.

Modes (run with Debian's /usr/bin/python3: torch 1.13 CPU, numpy, h5py, yaml):
  train:       torch_reference.py --config CFG.yaml [--set a.b=v ...] [--init INIT.h5]
                                  --steps N --out OUT.json [--threads 1]
  write init:  torch_reference.py --config CFG.yaml [--set ...] --write-init OUT.h5
                                  [--seed S] [--init-dtype fp32|bf16]
  write data:  torch_reference.py --write-data OUT.h5 --tokens N --vocab V [--seed S]

Invariants:
  * fp32 everywhere; single process (dp = 1), accumulation steps = global_batch / micro_batch;
    data.shuffle must be false; no dropout.
  * Parameter names are the full dotted Hugging Face names (LlamaForCausalLM, GPT2LMHeadModel),
    with HF's shapes ([out, in] Linear, [in, out] GPT-2 Conv1D). A tied head is the embedding
    Parameter itself (no lm_head.weight), so it is counted, clipped and updated once.
  * Step s (0-based) takes window positions s*G + j (j = 0..G-1) of the order 0,1,..,W-1,0,..;
    micro-batch m takes rows m*mb .. (m+1)*mb-1 of them.
  * loss = mean token cross-entropy over the global batch (summed in double); grad_norm = pre-clip
    global L2 norm, sum of squares in double; lr = the schedule value (double) used by that update.
"""

import argparse
import json
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml


class RefError(Exception):
    """A user-facing error: printed as one message, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

# Defaults of the keys this script reads (DESIGN.md, "The config, in outline"). Tests should set
# every key they rely on explicitly, so a default here can never hide a disagreement with ptrain.
DEFAULTS = {
    "model": {"arch": "llama", "kv_heads": None, "ffn_hidden": None, "norm_eps": 1.0e-5,
              "rope_theta": 10000.0, "tie_embeddings": None, "max_seq_len": 2048},
    "train": {"seq_len": 2048, "micro_batch": 1, "global_batch": 64, "steps": 1000,
              "seed": 1234, "precision": "fp32"},
    "optim": {"name": "adamw", "lr": 3.0e-4, "min_lr": 3.0e-5, "warmup_steps": 100,
              "schedule": "cosine", "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.1,
              "grad_clip": 1.0},
    "data": {"path": None, "shuffle": True},
    "parallel": {"dp": 1, "tp": 1, "pp": 1},
}


def apply_set(cfg, item):
    """`--set a.b.c=value`: value parsed as YAML, as ptrain does (`optim.betas=[0.9,0.95]`)."""
    if "=" not in item:
        raise RefError(f"--set {item!r}: expected key.path=value. HINT: --set optim.lr=1e-3")
    key, text = item.split("=", 1)
    path = key.strip().split(".")
    value = yaml.safe_load(text) if text.strip() else None
    node = cfg
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def load_config(path, sets):
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise RefError(f"{path}: the top level must be a mapping")
    for item in sets or []:
        apply_set(cfg, item)
    for section, defaults in DEFAULTS.items():
        sec = cfg.setdefault(section, {})
        if sec is None:
            sec = cfg[section] = {}
        for k, v in defaults.items():
            sec.setdefault(k, v)
    return cfg


def get_float(cfg, path):
    """A number at `path` ("optim.lr"). PyYAML reads `1e-5` (no dot) as a string, yaml-cpp as a
    number, so numeric strings are accepted."""
    v = _lookup(cfg, path)
    if isinstance(v, bool) or v is None:
        raise RefError(f"{path}: expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise RefError(f"{path}: expected a number, got {v!r}") from None


def get_int(cfg, path, allow_none=False):
    v = _lookup(cfg, path)
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RefError(f"{path}: expected an integer, got {v!r}")
    return v


def _lookup(cfg, path):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RefError(f"{path}: missing from the config")
        node = node[part]
    return node


class ModelSpec:
    """Resolved model shape: the fields of `model:` with nulls filled in, checked."""

    def __init__(self, cfg):
        m = cfg["model"]
        self.arch = m["arch"]
        if self.arch not in ("llama", "gpt2"):
            raise RefError(f"model.arch: {self.arch!r} is not supported here; accepted: llama, gpt2")
        self.vocab_size = get_int(cfg, "model.vocab_size")
        self.hidden = get_int(cfg, "model.hidden")
        self.layers = get_int(cfg, "model.layers")
        self.heads = get_int(cfg, "model.heads")
        kv = get_int(cfg, "model.kv_heads", allow_none=True)
        self.kv_heads = self.heads if kv is None else kv
        ffn = get_int(cfg, "model.ffn_hidden", allow_none=True)
        if ffn is None:
            if self.arch != "gpt2":
                raise RefError("model.ffn_hidden: required for llama")
            ffn = 4 * self.hidden
        self.ffn_hidden = ffn
        self.norm_eps = get_float(cfg, "model.norm_eps")
        self.rope_theta = get_float(cfg, "model.rope_theta")
        self.max_seq_len = get_int(cfg, "model.max_seq_len")
        tie = m["tie_embeddings"]
        self.tie = (self.arch == "gpt2") if tie is None else bool(tie)
        if self.hidden % self.heads:
            raise RefError(f"model.heads = {self.heads} does not divide model.hidden = {self.hidden}")
        if self.heads % self.kv_heads:
            raise RefError(f"model.kv_heads = {self.kv_heads} does not divide model.heads = {self.heads}")
        if self.arch == "gpt2" and self.kv_heads != self.heads:
            raise RefError("model.kv_heads: gpt2 has no grouped-query attention; leave it null")
        self.head_dim = self.hidden // self.heads
        if self.arch == "llama" and self.head_dim % 2:
            raise RefError(f"head dim {self.head_dim} must be even for RoPE")


# ----------------------------------------------------------------------------------------------
# Models (Hugging Face semantics, written out by hand)
# ----------------------------------------------------------------------------------------------

def _param(*shape):
    return nn.Parameter(torch.empty(*shape, dtype=torch.float32))


class Linear(nn.Module):
    """HF nn.Linear without bias: weight [out, in], y = x @ W^T."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = _param(n_out, n_in)

    def forward(self, x):
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    def __init__(self, n, dim):
        super().__init__()
        self.weight = _param(n, dim)

    def forward(self, idx):
        return F.embedding(idx, self.weight)


class RMSNorm(nn.Module):
    """LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2, -1) + eps))."""

    def __init__(self, n, eps):
        super().__init__()
        self.weight = _param(n)
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


class LayerNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = _param(n)
        self.bias = _param(n)
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.eps)


class Conv1D(nn.Module):
    """HF GPT-2 Conv1D: weight [in, out], bias [out], y = x @ W + b."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = _param(n_in, n_out)
        self.bias = _param(n_out)

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.size(1),)
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(shape)


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D), causal) v.   q, k, v: [B, H, T, D] -> [B, H, T, D]."""
    T, D = q.size(-2), q.size(-1)
    att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)          # [B, H, T, T]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)                   # j > i is masked
    att = att.masked_fill(mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return torch.matmul(att, v)


def rope_cos_sin(T, D, theta):
    """HF LlamaRotaryEmbedding: cos, sin of cat(freqs, freqs), each [T, D]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))    # [D/2]
    t = torch.arange(T, dtype=inv_freq.dtype)                           # positions 0..T-1
    freqs = torch.outer(t, inv_freq)                                    # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)                             # [T, D]
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, s):
        super().__init__()
        D = s.head_dim
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, D
        self.q_proj = Linear(s.hidden, s.heads * D)
        self.k_proj = Linear(s.hidden, s.kv_heads * D)
        self.v_proj = Linear(s.hidden, s.kv_heads * D)
        self.o_proj = Linear(s.heads * D, s.hidden)

    def forward(self, x, cos, sin):                                     # x [B, T, C]
        B, T, _ = x.shape
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)             # [B, H, T, D]
        k = self.k_proj(x).view(B, T, KV, D).transpose(1, 2)            # [B, KV, T, D]
        v = self.v_proj(x).view(B, T, KV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV                                                   # q head h uses kv h // rep
        if rep > 1:
            k = k[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
            v = v[:, :, None].expand(B, KV, rep, T, D).reshape(B, H, T, D)
        y = causal_attention(q, k, v)                                   # [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.gate_proj = Linear(s.hidden, s.ffn_hidden)
        self.up_proj = Linear(s.hidden, s.ffn_hidden)
        self.down_proj = Linear(s.ffn_hidden, s.hidden)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.self_attn = LlamaAttention(s)
        self.mlp = LlamaMLP(s)
        self.input_layernorm = RMSNorm(s.hidden, s.norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.embed_tokens = Embedding(s.vocab_size, s.hidden)
        self.layers = nn.ModuleList([LlamaDecoderLayer(s) for _ in range(s.layers)])
        self.norm = RMSNorm(s.hidden, s.norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.spec = s
        self.model = LlamaModel(s)
        if not s.tie:
            self.lm_head = Linear(s.hidden, s.vocab_size)

    def forward(self, idx):                                             # idx [B, T] -> [B, T, V]
        s = self.spec
        cos, sin = rope_cos_sin(idx.size(1), s.head_dim, s.rope_theta)
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if s.tie else self.lm_head.weight
        return F.linear(x, head)


class GPT2Attention(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.heads, self.head_dim, self.hidden = s.heads, s.head_dim, s.hidden
        self.c_attn = Conv1D(s.hidden, 3 * s.hidden)
        self.c_proj = Conv1D(s.hidden, s.hidden)

    def forward(self, x):                                               # x [B, T, C]
        B, T, C = x.shape
        H, D = self.heads, self.head_dim
        q, k, v = self.c_attn(x).split(C, dim=2)                        # 3 x [B, T, C]
        q = q.view(B, T, H, D).transpose(1, 2)                          # [B, H, T, D]
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.c_fc = Conv1D(s.hidden, s.ffn_hidden)
        self.c_proj = Conv1D(s.ffn_hidden, s.hidden)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.ln_1 = LayerNorm(s.hidden, s.norm_eps)
        self.attn = GPT2Attention(s)
        self.ln_2 = LayerNorm(s.hidden, s.norm_eps)
        self.mlp = GPT2MLP(s)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.wte = Embedding(s.vocab_size, s.hidden)
        self.wpe = Embedding(s.max_seq_len, s.hidden)
        self.h = nn.ModuleList([GPT2Block(s) for _ in range(s.layers)])
        self.ln_f = LayerNorm(s.hidden, s.norm_eps)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.spec = s
        self.transformer = GPT2Model(s)
        if not s.tie:
            self.lm_head = Linear(s.hidden, s.vocab_size)

    def forward(self, idx):                                             # idx [B, T] -> [B, T, V]
        t = self.transformer
        pos = torch.arange(idx.size(1))
        x = t.wte(idx) + t.wpe(pos)
        for block in t.h:
            x = block(x)
        x = t.ln_f(x)
        head = t.wte.weight if self.spec.tie else self.lm_head.weight
        return F.linear(x, head)


def build_model(spec):
    return LlamaForCausalLM(spec) if spec.arch == "llama" else GPT2LMHeadModel(spec)


OUT_PROJECTIONS = (".self_attn.o_proj.weight", ".mlp.down_proj.weight",
                   ".attn.c_proj.weight", ".mlp.c_proj.weight")


def init_random(model, seed):
    """Contract distribution, torch's generator (not ptrain's Philox): Normal(0, 0.02), block
    output projections Normal(0, 0.02/sqrt(2*layers)), norm weights 1, biases 0."""
    g = torch.Generator().manual_seed(int(seed))
    out_std = 0.02 / math.sqrt(2 * model.spec.layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                std = out_std if name.endswith(OUT_PROJECTIONS) else 0.02
                p.normal_(0.0, std, generator=g)


# ----------------------------------------------------------------------------------------------
# Weights in and out (one dataset per tensor at the file root, HF names and shapes)
# ----------------------------------------------------------------------------------------------

def bf16_h5_type():
    """An HDF5 float type of size 2 with bf16's bit layout (sign 15, exponent 7..14, mantissa 0..6)."""
    t = h5py.h5t.IEEE_F32LE.copy()
    t.set_fields(15, 7, 8, 0, 7)
    t.set_offset(0)
    t.set_precision(16)
    t.set_size(2)
    t.set_ebias(127)
    return t


def load_init(model, path):
    params = dict(model.named_parameters())
    with h5py.File(path, "r") as f:
        for name, p in params.items():
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise RefError(f"{path}: tensor {name} is missing (expected shape {list(p.shape)}). "
                               "HINT: the file needs one root dataset per tensor, named by its full "
                               "Hugging Face name")
            ds = f[name]
            if tuple(ds.shape) != tuple(p.shape):
                raise RefError(f"{path}: tensor {name} has shape {list(ds.shape)}, "
                               f"the model needs {list(p.shape)}")
            if ds.dtype.kind != "f":
                raise RefError(f"{path}: tensor {name} has type {ds.dtype}, expected a float type")
            # HDF5 converts any stored float type (fp32, fp16, bf16 as a 2-byte custom float)
            # to native fp32; bf16 -> fp32 is exact.
            data = ds.astype("float32")[()]
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.ascontiguousarray(data)))
        extra = sorted(k for k in f.keys() if k not in params)
    if extra:
        print(f"warning: {path}: datasets not used by the model: {', '.join(extra)}", file=sys.stderr)


def write_init(model, path, dtype):
    with h5py.File(path, "w") as f:
        for name, p in model.named_parameters():
            t = p.detach()
            if dtype == "fp32":
                f.create_dataset(name, data=t.numpy())
            else:                                                       # bf16, round to nearest even
                bits = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
                tid = bf16_h5_type()
                space = h5py.h5s.create_simple(bits.shape)
                dsid = h5py.h5d.create(f.id, name.encode(), tid, space)
                dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(bits), mtype=tid)


def write_data(path, n_tokens, vocab, seed):
    """A learnable token stream: a sparse random Markov chain (each token has 4 likely
    successors) with 10% uniform noise. uint16 /tokens (uint32 if vocab > 65536)."""
    if n_tokens < 2 or vocab < 2:
        raise RefError("--tokens must be >= 2 and --vocab >= 2")
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, size=(vocab, 4))
    choice = rng.integers(0, 4, size=n_tokens)
    noise = rng.random(n_tokens) < 0.1
    rand = rng.integers(0, vocab, size=n_tokens)
    toks = np.empty(n_tokens, dtype=np.int64)
    toks[0] = rng.integers(0, vocab)
    for i in range(1, n_tokens):
        toks[i] = rand[i] if noise[i] else succ[toks[i - 1], choice[i]]
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=toks.astype(dtype))
        f.attrs["tokenizer"] = "byte"
        f.attrs["vocab_size"] = np.int64(vocab)


# ----------------------------------------------------------------------------------------------
# Data, schedule, step
# ----------------------------------------------------------------------------------------------

class WindowData:
    """Windows of T+1 tokens; order 0, 1, ..., W-1, 0, 1, ... (shuffle off)."""

    def __init__(self, path, T, vocab_size):
        with h5py.File(path, "r") as f:
            if "tokens" not in f or not isinstance(f["tokens"], h5py.Dataset):
                raise RefError(f"{path}: no dataset /tokens")
            ds = f["tokens"]
            if ds.ndim != 1 or ds.dtype.kind not in "iu":
                raise RefError(f"{path}: /tokens must be a 1-D integer dataset, got {ds.dtype} {ds.shape}")
            self.tokens = ds[()].astype(np.int64)
        if self.tokens.size and (self.tokens.min() < 0 or self.tokens.max() >= vocab_size):
            bad = int(self.tokens.max()) if self.tokens.max() >= vocab_size else int(self.tokens.min())
            raise RefError(f"{path}: token id {bad} is out of range for model.vocab_size = {vocab_size}")
        self.T = T
        self.W = (self.tokens.size - 1) // T
        if self.W < 1:
            raise RefError(f"{path}: {self.tokens.size} tokens make no window of seq_len {T} + 1")

    def batch(self, step, G):
        """Rows of step `step`: inputs, targets as int64 [G, T]."""
        rows = []
        for j in range(G):
            w = (step * G + j) % self.W
            rows.append(self.tokens[w * self.T: w * self.T + self.T + 1])
        a = torch.from_numpy(np.stack(rows))                             # [G, T+1]
        return a[:, :-1].contiguous(), a[:, 1:].contiguous()


def lr_at(s, o):
    """Learning rate of update s (0-based), in double."""
    if s < o["warmup"]:
        return o["lr"] * (s + 1) / o["warmup"]
    if o["schedule"] == "constant":
        return o["lr"]
    span = o["steps_total"] - o["warmup"]
    return o["min_lr"] + (o["lr"] - o["min_lr"]) * (1.0 + math.cos(math.pi * (s - o["warmup"]) / span)) / 2.0


def optim_settings(cfg):
    betas = cfg["optim"]["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise RefError(f"optim.betas: expected [beta1, beta2], got {betas!r}")
    o = {
        "lr": get_float(cfg, "optim.lr"), "min_lr": get_float(cfg, "optim.min_lr"),
        "warmup": get_int(cfg, "optim.warmup_steps"), "schedule": cfg["optim"]["schedule"],
        "betas": (float(betas[0]), float(betas[1])), "eps": get_float(cfg, "optim.eps"),
        "weight_decay": get_float(cfg, "optim.weight_decay"),
        "grad_clip": get_float(cfg, "optim.grad_clip"), "steps_total": get_int(cfg, "train.steps"),
    }
    if cfg["optim"]["name"] != "adamw":
        raise RefError(f"optim.name: {cfg['optim']['name']!r}; only adamw is implemented here")
    if o["schedule"] not in ("cosine", "constant"):
        raise RefError(f"optim.schedule: {o['schedule']!r}; accepted: cosine, constant")
    return o


def make_optimizer(model, o):
    """AdamW (PyTorch semantics, foreach=False); decay on 2-D parameters only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=o["lr"], betas=o["betas"], eps=o["eps"], foreach=False)


def train_step(model, opt, inputs, targets, micro_batch, lr, grad_clip):
    """One update over a global batch. inputs, targets: int64 [G, T]. Returns (loss, grad_norm),
    both Python floats: mean token cross-entropy (summed in double) and pre-clip global norm."""
    G = inputs.size(0)
    accum = G // micro_batch
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    n_tokens = 0
    for m in range(accum):
        x = inputs[m * micro_batch:(m + 1) * micro_batch]               # [mb, T]
        y = targets[m * micro_batch:(m + 1) * micro_batch]
        logits = model(x)                                               # [mb, T, V]
        per_tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        loss_sum += per_tok.detach().double().sum().item()
        n_tokens += per_tok.numel()
        (per_tok.mean() / accum).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    sq = 0.0
    for p in params:
        sq += p.grad.double().pow(2).sum().item()
    grad_norm = math.sqrt(sq)
    if grad_clip > 0:
        coef = min(1.0, grad_clip / (grad_norm + 1e-6))
        if coef < 1.0:
            c = torch.tensor(coef, dtype=torch.float32)
            for p in params:
                p.grad.mul_(c)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss_sum / n_tokens, grad_norm


def set_threads(n):
    """torch's intra-op threads and, when it is OpenBLAS, the BLAS pool."""
    torch.set_num_threads(n)
    try:
        import ctypes
        # RTLD_NOLOAD: only if torch already loaded OpenBLAS; never load it ourselves.
        ctypes.CDLL("libopenblas.so.0", mode=os.RTLD_NOLOAD).openblas_set_num_threads(int(n))
    except (OSError, AttributeError):
        pass


def batch_settings(cfg):
    T = get_int(cfg, "train.seq_len")
    mb = get_int(cfg, "train.micro_batch")
    G = get_int(cfg, "train.global_batch")
    if mb < 1 or G < 1 or G % mb:
        raise RefError(f"train.global_batch = {G} must be a positive multiple of train.micro_batch = {mb} "
                       "(single process, dp = 1)")
    dp = cfg["parallel"].get("dp", 1)
    if dp not in (1, "auto", None):
        raise RefError(f"parallel.dp = {dp}: the reference is single-process. HINT: --set parallel.dp=1")
    return T, mb, G


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def run_training(args):
    cfg = load_config(args.config, args.set)
    spec = ModelSpec(cfg)
    T, mb, G = batch_settings(cfg)
    if spec.arch == "gpt2" and T > spec.max_seq_len:
        raise RefError(f"train.seq_len = {T} exceeds model.max_seq_len = {spec.max_seq_len}")
    if cfg["data"]["shuffle"] is not False:
        raise RefError("data.shuffle: only false is implemented by the reference. HINT: --set data.shuffle=false")
    if cfg["train"]["precision"] != "fp32":
        print(f"note: train.precision = {cfg['train']['precision']}; the reference computes in fp32",
              file=sys.stderr)
    o = optim_settings(cfg)
    if args.steps > o["steps_total"]:
        raise RefError(f"--steps {args.steps} exceeds train.steps = {o['steps_total']} (the schedule length). "
                       f"HINT: --set train.steps={args.steps}")
    if cfg["data"]["path"] is None:
        raise RefError("data.path: missing")
    data = WindowData(cfg["data"]["path"], T, spec.vocab_size)

    set_threads(args.threads)
    model = build_model(spec)
    if args.init:
        load_init(model, args.init)
    else:
        init_random(model, get_int(cfg, "train.seed"))
    opt = make_optimizer(model, o)

    out = {"loss": [], "grad_norm": [], "lr": []}
    for s in range(args.steps):
        lr = lr_at(s, o)
        x, y = data.batch(s, G)
        loss, gnorm = train_step(model, opt, x, y, mb, lr, o["grad_clip"])
        out["loss"].append(loss)
        out["grad_norm"].append(gnorm)
        out["lr"].append(lr)
        print(f"step {s + 1}/{args.steps} loss {loss:.9g} grad_norm {gnorm:.9g} lr {lr:.9g}", flush=True)
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise RefError(f"step {s + 1}: loss {loss} / grad_norm {gnorm} is not finite")
    with open(args.out, "w") as f:
        json.dump(out, f)
        f.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="ptrain YAML config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a config key; value parsed as YAML (repeatable)")
    ap.add_argument("--init", help="HDF5 initial weights (HF names); omitted: random (torch generator)")
    ap.add_argument("--steps", type=int, help="number of updates to run (<= train.steps)")
    ap.add_argument("--out", help="output JSON {loss, grad_norm, lr}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-init", metavar="OUT.h5", help="write random initial weights and exit")
    ap.add_argument("--init-dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--seed", type=int, help="seed for --write-init (default train.seed) / --write-data (default 0)")
    ap.add_argument("--write-data", metavar="OUT.h5", help="write a token file and exit")
    ap.add_argument("--tokens", type=int, help="--write-data: number of tokens")
    ap.add_argument("--vocab", type=int, help="--write-data: vocab_size")
    args = ap.parse_args(argv)
    try:
        if args.write_data:
            if args.tokens is None or args.vocab is None:
                raise RefError("--write-data needs --tokens N and --vocab V")
            write_data(args.write_data, args.tokens, args.vocab, 0 if args.seed is None else args.seed)
            return 0
        if not args.config:
            raise RefError("--config is required")
        if args.write_init:
            cfg = load_config(args.config, args.set)
            model = build_model(ModelSpec(cfg))
            init_random(model, get_int(cfg, "train.seed") if args.seed is None else args.seed)
            write_init(model, args.write_init, args.init_dtype)
            return 0
        if args.steps is None or args.out is None:
            raise RefError("training needs --steps N and --out OUT.json")
        if args.steps < 0 or args.threads < 1:
            raise RefError("--steps must be >= 0 and --threads >= 1")
        run_training(args)
        return 0
    except RefError as e:
        print(f"torch_reference: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
