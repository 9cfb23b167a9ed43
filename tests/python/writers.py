"""Writes small random-weight Llama models in every checkpoint format kvscope loads.

One base model (float32, Hugging Face layout: q_proj/k_proj rows in rotate-half order) is
drawn from a fixed seed per configuration, then written as

  * llama2.c .bin (+ tok<vocab>.bin)           Q/K rows permuted -> interleaved RoPE
  * Hugging Face folders: F32 / F16 / BF16 safetensors, single file or sharded with
    model.safetensors.index.json, tied or untied, + tokenizer.json (byte-level BPE)
  * GGUF (gguf.GGUFWriter): F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors, tokenizer "gpt2" or
    "llama", Q/K rows permuted the way llama.cpp's convert_hf_to_gguf does

Because every interleaved format gets the permuted rows, all variants of one base model
compute the same function (up to the rounding of their storage type): the tests use that
for cross-format checks. The reference logits of a variant are always computed from the
weights as read back from the written file (refmodel.read_model), so rounding to
F16/BF16/quantized types is accounted for.

Run as a script to write every variant into a folder:  python writers.py OUT_DIR
"""
from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refmodel import Config, permute_for_interleaved

# --------------------------------------------------------------------------------------
# Configurations and random weights
# --------------------------------------------------------------------------------------

VOCAB = 300
BOS, EOS, UNK = 1, 2, 0

# A: llama2.c defaults (theta 1e4, eps 1e-5): shared by llama2.c, HF and GGUF variants.
CFG_A = Config(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=VOCAB,
               max_seq_len=64, rope_theta=10000.0, norm_eps=1e-5)
# B: other theta / eps so that the metadata plumbing of those keys is exercised.
CFG_B = Config(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=VOCAB,
               max_seq_len=64, rope_theta=100000.0, norm_eps=1e-6)
# W: head_dim (32) != dim / n_heads, so q_dim (128) != dim (64); group of 2; 3 layers.
CFG_W = Config(dim=64, hidden_dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, vocab_size=VOCAB,
               max_seq_len=64, rope_theta=500000.0, norm_eps=1e-6)


def random_weights(cfg: Config, seed: int) -> dict:
    """float32 weights in Hugging Face naming (includes lm_head.weight; tied writers skip it)."""
    rng = np.random.default_rng(seed)
    d, hid, V = cfg.dim, cfg.hidden_dim, cfg.vocab_size

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": (0.5 * rng.standard_normal((V, d))).astype(np.float32)}
    for l in range(cfg.n_layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "self_attn.q_proj.weight"] = mat(cfg.q_dim, d, 1.5)
        w[p + "self_attn.k_proj.weight"] = mat(cfg.kv_dim, d, 1.5)
        w[p + "self_attn.v_proj.weight"] = mat(cfg.kv_dim, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, cfg.q_dim)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        w[p + "mlp.gate_proj.weight"] = mat(hid, d)
        w[p + "mlp.up_proj.weight"] = mat(hid, d)
        w[p + "mlp.down_proj.weight"] = mat(d, hid)
    w["model.norm.weight"] = norm(d)
    w["lm_head.weight"] = mat(V, d, 4.0)
    return w


def interleaved_qk(w: dict, cfg: Config, l: int):
    p = f"model.layers.{l}.self_attn."
    return (permute_for_interleaved(w[p + "q_proj.weight"], cfg.n_heads),
            permute_for_interleaved(w[p + "k_proj.weight"], cfg.n_kv_heads))


# --------------------------------------------------------------------------------------
# Vocabularies (ids 0 unk, 1 BOS, 2 EOS, 3..258 bytes, rest merges; 300 in all)
# --------------------------------------------------------------------------------------

SPM_CHARS = [" ", "e", "t", "a", "o", "h", "n", "s", "i", "r", "d", "l", "u"]
# (left, right) pairs, each side already a piece; used by both vocab kinds.
COMMON_MERGES = [(" ", "t"), ("h", "e"), (" t", "he"), (" ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), (" ", "s"),
                 ("a", "n"), ("r", "e"), ("e", "d"), ("n", "d"), ("a", "t"), ("e", "n"), ("o", "r"), ("o", "u"),
                 (" ", "h"), ("i", "s"), ("i", "t"), ("e", "s"), ("l", "l"), ("a", "r"), ("l", "e"), ("s", "t"),
                 (" ", "o"), ("h", "a"), (" a", "nd"), ("t", "o")]
BPE_EXTRA_MERGES = [(" ", "w"), ("c", "e"), ("y", "o"), ("o", "m"), (" ", "b"), ("i", "ng"), ("n", "g"), (" ", "c"),
                    ("a", "s"), (" ", "f"), ("w", "a"), ("l", "y"), ("v", "e")]


def spm_pieces():
    """SentencePiece-style pieces 259..299: single characters, then merges (best first)."""
    pieces = list(SPM_CHARS) + [a + b for a, b in COMMON_MERGES]
    assert len(pieces) == VOCAB - 259, len(pieces)
    scores = [-100.0 - i for i in range(len(SPM_CHARS))] + [-float(i) for i in range(len(COMMON_MERGES))]
    return pieces, scores


def bpe_merges():
    m = COMMON_MERGES[:]
    # ("n","g") must precede ("i","ng"): reorder so every merge uses existing tokens.
    extra = [x for x in BPE_EXTRA_MERGES if x != ("i", "ng")] + [("i", "ng")]
    m += extra
    assert len(m) == VOCAB - 259, len(m)
    return m


def bytes_to_unicode() -> dict:
    """GPT-2 byte -> printable character map (bytes that print keep their code point)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def bl(s: str) -> str:
    """Byte-level encoding of a text piece."""
    m = bytes_to_unicode()
    return "".join(m[b] for b in s.encode("utf-8"))


def bpe_vocab():
    """(tokens, merges as 'left right' byte-level strings, token types)."""
    m = bytes_to_unicode()
    tokens = ["<unk>", "<s>", "</s>"] + [m[b] for b in range(256)]
    merges = []
    for a, b in bpe_merges():
        merges.append(f"{bl(a)} {bl(b)}")
        tokens.append(bl(a + b))
    assert len(tokens) == VOCAB and len(set(tokens)) == VOCAB
    types = [3, 3, 3] + [1] * (VOCAB - 3)
    return tokens, merges, types


def spm_vocab_gguf():
    """GGUF 'llama' tokenizer arrays: tokens with U+2581 for space, scores, types."""
    pieces, scores = spm_pieces()
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [p.replace(" ", "\u2581") for p in pieces]
    sc = [0.0, 0.0, 0.0] + [0.0] * 256 + scores
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    assert len(tokens) == VOCAB and len(set(tokens)) == VOCAB
    return tokens, sc, types


def write_llama2c_tokenizer(path):
    """llama2.c tokenizer.bin: int32 max_token_length, then per id: f32 score, i32 len, bytes."""
    pieces, scores = spm_pieces()
    entries = [("<unk>", 0.0), ("\n<s>\n", 0.0), ("\n</s>\n", 0.0)]
    entries += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    entries += list(zip(pieces, scores))
    assert len(entries) == VOCAB
    blobs = [(s.encode("utf-8"), sc) for s, sc in entries]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(b) for b, _ in blobs)))
        for b, sc in blobs:
            f.write(struct.pack("<fi", sc, len(b)))
            f.write(b)


def tokenizer_json() -> dict:
    tokens, merges, _ = bpe_vocab()
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in range(3)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


# --------------------------------------------------------------------------------------
# llama2.c
# --------------------------------------------------------------------------------------


def write_llama2c(path, w: dict, cfg: Config, tied: bool):
    """Legacy version-0 llama2.c checkpoint, plus tok<vocab>.bin beside it."""
    assert cfg.head_dim * cfg.n_heads == cfg.dim and cfg.rope_theta == 10000.0 and cfg.norm_eps == 1e-5
    path = Path(path)
    L = cfg.n_layers
    hd = cfg.head_dim
    qk = [interleaved_qk(w, cfg, l) for l in range(L)]
    lay = lambda s: [w[f"model.layers.{l}.{s}"] for l in range(L)]  # noqa: E731
    arrays = [w["model.embed_tokens.weight"], *lay("input_layernorm.weight"), *[q for q, _ in qk],
              *[k for _, k in qk], *lay("self_attn.v_proj.weight"), *lay("self_attn.o_proj.weight"),
              *lay("post_attention_layernorm.weight"), *lay("mlp.gate_proj.weight"), *lay("mlp.down_proj.weight"),
              *lay("mlp.up_proj.weight"), w["model.norm.weight"]]
    pos = np.arange(cfg.max_seq_len)[:, None] * (10000.0 ** (-np.arange(0, hd, 2) / hd))[None, :]
    arrays += [np.cos(pos).astype(np.float32), np.sin(pos).astype(np.float32)]  # legacy freq_cis
    if not tied:
        arrays.append(w["lm_head.weight"])
    vocab = cfg.vocab_size if tied else -cfg.vocab_size
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", cfg.dim, cfg.hidden_dim, L, cfg.n_heads, cfg.n_kv_heads, vocab, cfg.max_seq_len))
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    write_llama2c_tokenizer(path.parent / f"tok{cfg.vocab_size}.bin")


# --------------------------------------------------------------------------------------
# Hugging Face safetensors
# --------------------------------------------------------------------------------------


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (no NaNs in our data)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors_raw(path, tensors: dict, metadata=None):
    """tensors: name -> (dtype string, shape, raw little-endian bytes). Header padded to 8."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def hf_config(cfg: Config, tied: bool, dtype: str) -> dict:
    c = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": tied, "hidden_act": "silu", "bos_token_id": BOS, "eos_token_id": EOS,
        "attention_bias": False, "rope_scaling": None,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
    }
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        c["head_dim"] = cfg.head_dim
    return c


def write_hf(folder, w: dict, cfg: Config, dtype: str = "F32", tied: bool = True, shards: int = 1):
    """HF folder. dtype F32/F16 via safetensors.numpy; BF16 written byte by byte."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in w if not (tied and n == "lm_head.weight")]
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    files = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                                                      for i in range(shards)]
    weight_map, total = {}, 0
    for fname, group in zip(files, groups):
        if dtype == "BF16":
            t = {n: ("BF16", w[n].shape, to_bf16_bits(w[n]).astype("<u2").tobytes()) for n in group}
            write_safetensors_raw(folder / fname, t, {"format": "pt"})
            total += sum(len(v[2]) for v in t.values())
        else:
            npdt = {"F32": np.float32, "F16": np.float16}[dtype]
            t = {n: np.ascontiguousarray(w[n].astype(npdt)) for n in group}
            save_file(t, str(folder / fname), metadata={"format": "pt"})
            total += sum(v.nbytes for v in t.values())
        for n in group:
            weight_map[n] = fname
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(hf_config(cfg, tied, dtype), indent=1))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(), ensure_ascii=False, indent=1))


# --------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------


def write_gguf(path, w: dict, cfg: Config, qtype: str = "F32", tied: bool = True, tokenizer: str = "gpt2",
               embd_qtype: str | None = None, output_qtype: str | None = None):
    """GGUF llama model. Matrices use `qtype`; the token embedding `embd_qtype` (default qtype),
    the untied classifier `output_qtype` (default qtype); norms stay F32 as in llama.cpp."""
    import gguf
    from gguf.quants import quantize

    GT = gguf.GGMLQuantizationType
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name(Path(path).stem)
    wr.add_context_length(cfg.max_seq_len)
    wr.add_embedding_length(cfg.dim)
    wr.add_block_count(cfg.n_layers)
    wr.add_feed_forward_length(cfg.hidden_dim)
    wr.add_head_count(cfg.n_heads)
    wr.add_head_count_kv(cfg.n_kv_heads)
    wr.add_rope_freq_base(cfg.rope_theta)
    wr.add_layer_norm_rms_eps(cfg.norm_eps)
    wr.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        wr.add_key_length(cfg.head_dim)
        wr.add_value_length(cfg.head_dim)
    wr.add_vocab_size(cfg.vocab_size)
    wr.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}[qtype])
    if tokenizer == "gpt2":
        tokens, merges, types = bpe_vocab()
        wr.add_tokenizer_model("gpt2")
        wr.add_tokenizer_pre("gpt2")
        wr.add_token_list(tokens)
        wr.add_token_types(types)
        wr.add_token_merges(merges)
        wr.add_add_bos_token(False)
    else:
        tokens, scores, types = spm_vocab_gguf()
        wr.add_tokenizer_model("llama")
        wr.add_token_list(tokens)
        wr.add_token_scores(scores)
        wr.add_token_types(types)
        wr.add_unk_token_id(UNK)
        wr.add_add_bos_token(True)
        wr.add_add_space_prefix(True)
    wr.add_bos_token_id(BOS)
    wr.add_eos_token_id(EOS)

    def put(name, a, qt):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if qt == "F32" or a.ndim == 1:
            wr.add_tensor(name, a)
        elif qt == "F16":
            wr.add_tensor(name, a.astype(np.float16))
        else:
            t = getattr(GT, qt)
            wr.add_tensor(name, quantize(a, t), raw_dtype=t)

    put("token_embd.weight", w["model.embed_tokens.weight"], embd_qtype or qtype)
    for l in range(cfg.n_layers):
        p, hp = f"blk.{l}.", f"model.layers.{l}."
        q, k = interleaved_qk(w, cfg, l)
        put(p + "attn_norm.weight", w[hp + "input_layernorm.weight"], "F32")
        put(p + "attn_q.weight", q, qtype)
        put(p + "attn_k.weight", k, qtype)
        put(p + "attn_v.weight", w[hp + "self_attn.v_proj.weight"], qtype)
        put(p + "attn_output.weight", w[hp + "self_attn.o_proj.weight"], qtype)
        put(p + "ffn_norm.weight", w[hp + "post_attention_layernorm.weight"], "F32")
        put(p + "ffn_gate.weight", w[hp + "mlp.gate_proj.weight"], qtype)
        put(p + "ffn_up.weight", w[hp + "mlp.up_proj.weight"], qtype)
        put(p + "ffn_down.weight", w[hp + "mlp.down_proj.weight"], qtype)
    put("output_norm.weight", w["model.norm.weight"], "F32")
    if not tied:
        put("output.weight", w["lm_head.weight"], output_qtype or qtype)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


# --------------------------------------------------------------------------------------
# The variant set used by test_runtime_random.py
# --------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    path: Path
    fmt: str  # llama2c / hf / gguf
    base: str  # which base model (A, A_untied, ...): variants with the same base compute the same function
    dtype: str
    tied: bool
    note: str = ""
    extra: dict = field(default_factory=dict)


SEEDS = {"A": 1234, "B": 5678, "W": 9012}
CFGS = {"A": CFG_A, "B": CFG_B, "W": CFG_W}


def base_weights(key: str) -> dict:
    return random_weights(CFGS[key], SEEDS[key])


def write_all(root) -> list:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    W = {k: base_weights(k) for k in CFGS}
    V = []

    def l2c(name, tied):
        d = root / name
        d.mkdir(exist_ok=True)
        write_llama2c(d / "model.bin", W["A"], CFG_A, tied)
        V.append(Variant(name, d / "model.bin", "llama2c", "A" if tied else "A_untied", "F32", tied))

    def hf(name, key, dtype, tied, shards=1):
        write_hf(root / name, W[key], CFGS[key], dtype, tied, shards)
        V.append(Variant(name, root / name, "hf", key + ("" if tied else "_untied"), dtype, tied,
                         f"{shards} shard(s)" if shards > 1 else "single file"))

    def gg(name, key, qtype, tied, tok, **kw):
        p = root / f"{name}.gguf"
        write_gguf(p, W[key], CFGS[key], qtype, tied, tok, **kw)
        V.append(Variant(name, p, "gguf", key + ("" if tied else "_untied"), qtype, tied, f"tokenizer {tok}", kw))

    l2c("l2c_tied", True)
    l2c("l2c_untied", False)
    hf("hf_f32_tied", "A", "F32", True)
    hf("hf_f32_untied_3shards", "A", "F32", False, shards=3)
    hf("hf_f16_untied", "B", "F16", False)
    hf("hf_bf16_tied_2shards", "B", "BF16", True, shards=2)
    hf("hf_f32_wide_heads", "W", "F32", True)
    gg("gguf_f32_tied", "A", "F32", True, "gpt2")
    gg("gguf_q8_0_untied", "A", "Q8_0", False, "llama")
    gg("gguf_f16_untied", "B", "F16", False, "llama", output_qtype="F32")
    gg("gguf_bf16_tied", "B", "BF16", True, "gpt2")
    gg("gguf_q4_0_tied", "B", "Q4_0", True, "gpt2")
    gg("gguf_q4_1_tied", "B", "Q4_1", True, "llama", embd_qtype="Q8_0")
    gg("gguf_q4_1_untied", "B", "Q4_1", False, "gpt2", embd_qtype="Q8_0", output_qtype="Q8_0")
    gg("gguf_f32_wide_heads", "W", "F32", True, "gpt2")
    return V


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "random_models")
    for v in write_all(out):
        print(f"{v.name:24s} {v.fmt:8s} {v.dtype:5s} tied={v.tied!s:5s} {v.path}")
