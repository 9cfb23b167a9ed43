"""Independent numpy reference for kvscope's CPU model runtime.

Nothing here uses kvscope's C++ code: the checkpoint readers parse the files with
numpy / json / the `gguf` package, and the forward pass is a straightforward float64
implementation of a Llama decoder:

    x = embedding[tok]
    for each layer:
        h = rmsnorm(x) ; q, k, v = Wq h, Wk h, Wv h ; RoPE(q, k) at the token's position
        attention over all cached positions <= the query position (GQA: query head h
        reads KV head h // (n_heads / n_kv_heads)), softmax(q.k / sqrt(head_dim)) . v
        x += Wo attn
        h = rmsnorm(x) ; x += W_down (silu(W_gate h) * W_up h)
    logits = classifier . rmsnorm(x)          (classifier = embedding when tied)

RoPE rotates pairs of one head's dimensions by angle pos * theta^(-2i/head_dim):
    "interleaved": pairs (2i, 2i+1)            (llama2.c; GGUF, whose Q/K rows are permuted)
    "halves":      pairs (i, i + head_dim/2)   (Hugging Face rotate_half)

Weights are held as float64 copies of the float32 (or dequantized) values stored in the
files, so the reference is the exact-arithmetic answer for those weights up to float64
rounding; the C++ runtime computes in float32.

The bottom of the file has small helpers the test scripts share: running the kvscope
binary, reading its logits, and the error metric.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

# --------------------------------------------------------------------------------------
# Model structure
# --------------------------------------------------------------------------------------


@dataclass
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    rope: str = "interleaved"  # or "halves"

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass
class Layer:
    attn_norm: np.ndarray  # [dim]
    wq: np.ndarray  # [q_dim, dim]
    wk: np.ndarray  # [kv_dim, dim]
    wv: np.ndarray  # [kv_dim, dim]
    wo: np.ndarray  # [dim, q_dim]
    ffn_norm: np.ndarray  # [dim]
    w_gate: np.ndarray  # [hidden, dim]
    w_up: np.ndarray  # [hidden, dim]
    w_down: np.ndarray  # [dim, hidden]


@dataclass
class Model:
    config: Config
    tok_embedding: np.ndarray  # [vocab, dim]
    layers: list
    final_norm: np.ndarray  # [dim]
    output: Optional[np.ndarray] = None  # [vocab, dim]; None when tied to the embedding
    meta: dict = field(default_factory=dict)

    @property
    def tied(self) -> bool:
        return self.output is None

    def classifier(self) -> np.ndarray:
        return self.tok_embedding if self.output is None else self.output

    def check_shapes(self) -> None:
        c = self.config
        want = {
            "attn_norm": (c.dim,), "wq": (c.q_dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim),
            "wo": (c.dim, c.q_dim), "ffn_norm": (c.dim,), "w_gate": (c.hidden_dim, c.dim),
            "w_up": (c.hidden_dim, c.dim), "w_down": (c.dim, c.hidden_dim),
        }
        assert self.tok_embedding.shape == (c.vocab_size, c.dim), self.tok_embedding.shape
        assert self.final_norm.shape == (c.dim,)
        if self.output is not None:
            assert self.output.shape == (c.vocab_size, c.dim)
        assert len(self.layers) == c.n_layers
        for i, lw in enumerate(self.layers):
            for k, shp in want.items():
                got = getattr(lw, k).shape
                assert got == shp, f"layer {i} {k}: shape {got}, expected {shp}"
        assert c.n_heads % c.n_kv_heads == 0 and c.head_dim % 2 == 0
        assert c.rope in ("interleaved", "halves")


def f64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32), dtype=np.float64)


# --------------------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------------------


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_angles(positions: np.ndarray, head_dim: int, theta: float):
    """cos, sin of pos * theta^(-2i/head_dim) for i < head_dim/2: [T, head_dim/2] each."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    freq = np.power(float(theta), -2.0 * i / head_dim)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * freq[None, :]
    return np.cos(ang), np.sin(ang)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """x: [T, H, head_dim]; cos/sin: [T, head_dim/2]. Returns the rotated copy."""
    c = cos[:, None, :]
    s = sin[:, None, :]
    out = np.empty_like(x)
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    elif layout == "halves":
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * c - b * s
        out[..., half:] = a * s + b * c
    else:
        raise ValueError(f"unknown RoPE layout {layout!r}")
    return out


class KVCache:
    """Per-layer K/V of every position so far (RoPE already applied to K)."""

    def __init__(self, config: Config, capacity: int):
        c = config
        self.capacity = capacity
        self.k = [np.zeros((c.n_kv_heads, capacity, c.head_dim)) for _ in range(c.n_layers)]
        self.v = [np.zeros((c.n_kv_heads, capacity, c.head_dim)) for _ in range(c.n_layers)]
        self.pos = 0


def forward(model: Model, tokens: Iterable[int], cache: Optional[KVCache] = None) -> np.ndarray:
    """Runs tokens at positions cache.pos.. (0 without a cache); returns logits [T, vocab]."""
    c = model.config
    toks = np.asarray(list(tokens), dtype=np.int64)
    T = len(toks)
    if cache is None:
        cache = KVCache(c, T)
    p0 = cache.pos
    if p0 + T > cache.capacity:
        raise ValueError("KV cache capacity exceeded")
    if T == 0 or toks.min() < 0 or toks.max() >= c.vocab_size:
        raise ValueError("token ids outside the vocabulary")
    H, KV, hd = c.n_heads, c.n_kv_heads, c.head_dim
    G = H // KV
    S = p0 + T
    cos, sin = rope_angles(np.arange(p0, S), hd, c.rope_theta)
    # Causal mask of the chunk's queries over all S keys: key j visible to query t iff j <= p0 + t.
    visible = np.arange(S)[None, :] <= (p0 + np.arange(T))[:, None]  # [T, S]
    scale = 1.0 / np.sqrt(hd)

    x = model.tok_embedding[toks].astype(np.float64)  # [T, dim]
    for li, lw in enumerate(model.layers):
        h = rmsnorm(x, lw.attn_norm, c.norm_eps)
        q = (h @ lw.wq.T).reshape(T, H, hd)
        k = (h @ lw.wk.T).reshape(T, KV, hd)
        v = (h @ lw.wv.T).reshape(T, KV, hd)
        q = apply_rope(q, cos, sin, c.rope)
        k = apply_rope(k, cos, sin, c.rope)
        cache.k[li][:, p0:S] = k.transpose(1, 0, 2)
        cache.v[li][:, p0:S] = v.transpose(1, 0, 2)
        K = cache.k[li][:, :S]  # [KV, S, hd]
        V = cache.v[li][:, :S]
        qg = q.transpose(1, 0, 2).reshape(KV, G, T, hd)  # query head h = kv*G + g
        scores = np.einsum("kgtd,ksd->kgts", qg, K) * scale
        scores = np.where(visible[None, None], scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        att = np.einsum("kgts,ksd->kgtd", p, V)  # [KV, G, T, hd]
        att = att.reshape(H, T, hd).transpose(1, 0, 2).reshape(T, H * hd)
        x = x + att @ lw.wo.T
        h = rmsnorm(x, lw.ffn_norm, c.norm_eps)
        x = x + (silu(h @ lw.w_gate.T) * (h @ lw.w_up.T)) @ lw.w_down.T
    cache.pos = S
    return rmsnorm(x, model.final_norm, c.norm_eps) @ model.classifier().T


def greedy_decode(model: Model, prompt_ids, max_new: int, stop_ids=(), context: Optional[int] = None):
    """KV-cached greedy decoding with kvscope's stopping rule (stop on a stop id, or when the
    sequence fills the context). Returns (generated ids, per-step top-1 minus top-2 logit gap,
    per-step max |logit|)."""
    prompt = list(prompt_ids)
    ctx = context or model.config.max_seq_len
    limit = min(ctx, len(prompt) + max_new)
    cache = KVCache(model.config, limit)
    logits = forward(model, prompt, cache)[-1]
    out, gaps, scales = [], [], []
    while len(prompt) + len(out) < limit and len(out) < max_new:
        order = np.argsort(-logits, kind="stable")
        nxt = int(np.argmax(logits))
        gaps.append(float(logits[order[0]] - logits[order[1]]))
        scales.append(float(np.max(np.abs(logits))))
        if nxt in stop_ids:
            break
        out.append(nxt)
        if len(prompt) + len(out) >= limit:
            break
        logits = forward(model, [nxt], cache)[-1]
    return out, gaps, scales


# --------------------------------------------------------------------------------------
# Checkpoint readers (independent of kvscope's C++ loaders)
# --------------------------------------------------------------------------------------


def read_llama2c(path) -> Model:
    """llama2.c legacy (version 0) checkpoint: int32[7] header + float32 arrays."""
    raw = np.fromfile(path, dtype=np.uint8)
    dim, hidden, L, H, KV, vocab, seq = struct.unpack("<7i", raw[:28].tobytes())
    tied = vocab > 0
    V = abs(vocab)
    hd = dim // H
    cfg = Config(dim=dim, hidden_dim=hidden, n_layers=L, n_heads=H, n_kv_heads=KV, head_dim=hd, vocab_size=V,
                 max_seq_len=seq, rope_theta=10000.0, norm_eps=1e-5, rope="interleaved")
    body = raw[28:].view("<f4")
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        if off + n > body.size:
            raise ValueError(f"{path}: truncated")
        a = body[off:off + n].reshape(shape)
        off += n
        return f64(a)

    emb = take(V, dim)
    rms_att = take(L, dim)
    wq = take(L, cfg.q_dim, dim)
    wk = take(L, cfg.kv_dim, dim)
    wv = take(L, cfg.kv_dim, dim)
    wo = take(L, dim, cfg.q_dim)
    rms_ffn = take(L, dim)
    w1 = take(L, hidden, dim)
    w2 = take(L, dim, hidden)
    w3 = take(L, hidden, dim)
    rms_final = take(dim)
    take(seq, hd // 2)  # freq_cis_real (legacy, unused)
    take(seq, hd // 2)  # freq_cis_imag
    wcls = None if tied else take(V, dim)
    if off != body.size:
        raise ValueError(f"{path}: {body.size - off} trailing floats")
    layers = [Layer(rms_att[l], wq[l], wk[l], wv[l], wo[l], rms_ffn[l], w1[l], w3[l], w2[l]) for l in range(L)]
    m = Model(cfg, emb, layers, rms_final, wcls, meta={"format": "llama2c"})
    m.check_shapes()
    return m


def read_gguf(path) -> Model:
    """GGUF llama model via the `gguf` package (GGUFReader + gguf.quants.dequantize)."""
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(str(path))

    def meta(key, default=None):
        f = r.fields.get(key)
        if f is None:
            if default is None:
                raise KeyError(f"{path}: metadata key {key} missing")
            return default
        return f.contents()

    arch = meta("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}")
    tensors = {t.name: t for t in r.tensors}
    dim = int(meta("llama.embedding_length"))
    H = int(meta("llama.attention.head_count"))
    KV = int(meta("llama.attention.head_count_kv", H))
    hd = int(meta("llama.attention.key_length", dim // H))
    emb_t = tensors["token_embd.weight"]
    V = int(meta("llama.vocab_size", int(emb_t.shape[1])))
    cfg = Config(dim=dim, hidden_dim=int(meta("llama.feed_forward_length")), n_layers=int(meta("llama.block_count")),
                 n_heads=H, n_kv_heads=KV, head_dim=hd, vocab_size=V,
                 max_seq_len=int(meta("llama.context_length", 2048)),
                 rope_theta=float(meta("llama.rope.freq_base", 10000.0)),
                 norm_eps=float(meta("llama.attention.layer_norm_rms_epsilon")), rope="interleaved")
    types = set()

    def load(name):
        t = tensors[name]
        # GGUFReader's t.shape lists GGUF dims innermost first; numpy order is the reverse.
        np_shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        a = dequantize(t.data, t.tensor_type)
        types.add(t.tensor_type.name)
        return f64(np.asarray(a).reshape(np_shape))

    layers = []
    for l in range(cfg.n_layers):
        p = f"blk.{l}."
        layers.append(Layer(load(p + "attn_norm.weight"), load(p + "attn_q.weight"), load(p + "attn_k.weight"),
                            load(p + "attn_v.weight"), load(p + "attn_output.weight"), load(p + "ffn_norm.weight"),
                            load(p + "ffn_gate.weight"), load(p + "ffn_up.weight"), load(p + "ffn_down.weight")))
    out = load("output.weight") if "output.weight" in tensors else None
    m = Model(cfg, load("token_embd.weight"), layers, load("output_norm.weight"), out,
              meta={"format": "gguf", "types": sorted(types)})
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if key in r.fields:
            m.meta[key.split(".")[-1]] = int(r.fields[key].contents())
    m.check_shapes()
    return m


_ST_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}


def read_safetensors(path) -> dict:
    """Minimal safetensors parser: u64 header length, JSON header, raw little-endian data.
    Returns name -> float32 array (F32, F16, BF16)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, size = _ST_DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        assert e - b == size * int(np.prod(shape, dtype=np.int64)), name
        a = np.frombuffer(raw, dtype=dt, count=(e - b) // size, offset=base + b)
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float32).reshape(shape)
    return out


def read_hf(folder) -> Model:
    """Hugging Face Llama folder: config.json + model.safetensors (or shards + index)."""
    folder = Path(folder)
    cfgj = json.loads((folder / "config.json").read_text())
    H = cfgj["num_attention_heads"]
    cfg = Config(dim=cfgj["hidden_size"], hidden_dim=cfgj["intermediate_size"], n_layers=cfgj["num_hidden_layers"],
                 n_heads=H, n_kv_heads=cfgj.get("num_key_value_heads", H),
                 head_dim=cfgj.get("head_dim") or cfgj["hidden_size"] // H, vocab_size=cfgj["vocab_size"],
                 max_seq_len=cfgj.get("max_position_embeddings", 2048), rope_theta=cfgj.get("rope_theta", 10000.0),
                 norm_eps=cfgj.get("rms_norm_eps", 1e-6), rope="halves")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    t = {}
    for f in files:
        t.update(read_safetensors(folder / f))
    layers = []
    for l in range(cfg.n_layers):
        p = f"model.layers.{l}."
        g = lambda s: f64(t[p + s])  # noqa: E731
        layers.append(Layer(g("input_layernorm.weight"), g("self_attn.q_proj.weight"), g("self_attn.k_proj.weight"),
                            g("self_attn.v_proj.weight"), g("self_attn.o_proj.weight"),
                            g("post_attention_layernorm.weight"), g("mlp.gate_proj.weight"), g("mlp.up_proj.weight"),
                            g("mlp.down_proj.weight")))
    tied = bool(cfgj.get("tie_word_embeddings", False))
    out = None if tied else f64(t["lm_head.weight"])
    m = Model(cfg, f64(t["model.embed_tokens.weight"]), layers, f64(t["model.norm.weight"]), out,
              meta={"format": "hf", "files": files})
    m.check_shapes()
    return m


def read_model(path) -> Model:
    p = Path(path)
    if p.is_dir():
        return read_hf(p)
    if p.suffix == ".gguf":
        return read_gguf(p)
    return read_llama2c(p)


def permute_for_interleaved(w: np.ndarray, n_head: int) -> np.ndarray:
    """Row permutation llama.cpp's convert_hf_to_gguf (and llama2.c's export) apply to HF
    q_proj / k_proj weights: within each head, row i of the first half and row i of the
    second half become rows 2i and 2i+1, so interleaved RoPE on the result equals
    rotate-half RoPE on the original."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


# --------------------------------------------------------------------------------------
# Harness helpers shared by the test scripts
# --------------------------------------------------------------------------------------

SKIP = 77


def kvscope_bin() -> str:
    b = os.environ.get("KVSCOPE_BIN")
    if not b:
        src = source_dir()
        b = str(src / "build" / "cli" / "kvscope")
    if not os.path.exists(b):
        print(f"SKIP: kvscope binary not found at {b} (set KVSCOPE_BIN)")
        sys.exit(SKIP)
    return b


def source_dir() -> Path:
    s = os.environ.get("KVSCOPE_SOURCE_DIR")
    return Path(s) if s else Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    m = os.environ.get("KVSCOPE_MODELS")
    return Path(m) if m else source_dir().parent / "shared" / "models"


def scratch_dir(prefix: str) -> Path:
    """A temp folder removed at exit (kept when KVSCOPE_KEEP_TMP=1, for debugging)."""
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("KVSCOPE_KEEP_TMP") != "1":
        atexit.register(shutil.rmtree, d, True)
    return d


def run_kvscope(args, check=True, timeout=600) -> subprocess.CompletedProcess:
    cmd = [kvscope_bin()] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed (rc {p.returncode}): {' '.join(cmd)}\nstderr: {p.stderr.strip()}")
    if check and ("Sanitizer" in p.stderr or "runtime error:" in p.stderr):
        raise AssertionError(f"sanitizer report from: {' '.join(cmd)}\nstderr: {p.stderr.strip()[:2000]}")
    return p


def kvscope_logits(model_path, tokens, mode="prefill", chunk=None, out_dir=None, extra=()) -> np.ndarray:
    """Runs `kvscope logits` and returns float32 [T, vocab] (float64 copy)."""
    out_dir = out_dir or scratch_dir("kvscope_logits_")
    out = Path(out_dir) / f"logits_{mode}_{chunk or 0}.f32"
    args = ["logits", "--model", model_path, "--tokens", ",".join(str(int(t)) for t in tokens), "--mode", mode,
            "--out", out]
    if chunk:
        args += ["--chunk", chunk]
    p = run_kvscope(list(args) + list(extra))
    info = json.loads(p.stdout.strip().splitlines()[-1])
    V = int(info["vocab_size"])
    assert [int(t) for t in info["tokens"]] == [int(t) for t in tokens], "kvscope echoed different tokens"
    a = np.fromfile(out, dtype="<f4")
    assert a.size == len(tokens) * V, f"logits file has {a.size} floats, expected {len(tokens)} x {V}"
    return a.reshape(len(tokens), V).astype(np.float64)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """Max over rows of max_j |a - ref| / max_j |ref| (the row's own logit scale)."""
    a = np.atleast_2d(a)
    ref = np.atleast_2d(ref)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    num = np.max(np.abs(a - ref), axis=1)
    den = np.maximum(np.max(np.abs(ref), axis=1), 1e-30)
    return float(np.max(num / den))


def abs_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(ref))))
