"""Malformed model files: kvscope must refuse them cleanly.

Each case writes one bad checkpoint (llama2.c .bin, Hugging Face folder, safetensors, GGUF)
into a temp dir, derived from a small VALID model of the same format (which must load:
the control cases), and runs `kvscope model-info --model X`. Contract for every bad case:

  * exit status 1 (not a signal, not an abort);
  * stdout empty, stderr exactly one line, starting with "kvscope: error:";
  * that line names the offending file (its path) and the field / tensor / offset
    (the `expect` substrings of the case);
  * no sanitizer report (when kvscope is built with -DKVSCOPE_SANITIZE=ON).

tests/data/bad/ holds a small corpus of such files (MANIFEST.json: what each must report);
the test runs it too. Regenerate it with:  python test_bad_inputs.py --write-corpus
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refmodel as R  # noqa: E402
import writers as W  # noqa: E402

CORPUS = R.source_dir() / "tests" / "data" / "bad"

# --------------------------------------------------------------------------------------
# A hand-rolled GGUF writer: every byte under our control, so that defects can be planted.
# --------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
           I64: "<q", F64: "<d"}
GGML_F32, GGML_F16, GGML_Q4_K = 0, 1, 12


def g_str(s) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def g_val(t, v) -> bytes:
    if t == STR:
        return g_str(v)
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(g_val(et, x) for x in items)
    return struct.pack(_SCALAR[t], v)


@dataclass
class GTensor:
    name: str
    dims: list  # innermost first
    type: int
    data: bytes
    offset: int | None = None  # relative to the data section; None: next aligned position


@dataclass
class GGUFSpec:
    meta: list  # [(key, type, value)]
    tensors: list  # [GTensor]
    version: int = 3
    magic: bytes = b"GGUF"
    alignment: int = 32
    n_tensors: int | None = None  # override the header counts
    n_kv: int | None = None
    info_offsets: dict = field(default_factory=dict)  # filled by build(): tensor name -> info record offset

    def build(self) -> bytes:
        out = bytearray(self.magic + struct.pack("<I", self.version))
        out += struct.pack("<QQ", len(self.tensors) if self.n_tensors is None else self.n_tensors,
                           len(self.meta) if self.n_kv is None else self.n_kv)
        for k, t, v in self.meta:
            out += g_str(k) + struct.pack("<I", t) + g_val(t, v)
        off = 0
        offs = []
        for t in self.tensors:  # planted offsets do not move the others; their data is not written
            if t.offset is not None:
                offs.append(t.offset)
                continue
            offs.append(off)
            off += len(t.data)
            off += -off % self.alignment
        for t, o in zip(self.tensors, offs):
            self.info_offsets[t.name] = len(out)
            out += g_str(t.name) + struct.pack("<I", len(t.dims)) + b"".join(struct.pack("<Q", d) for d in t.dims)
            out += struct.pack("<IQ", t.type, o)
        out += b"\0" * (-len(out) % self.alignment)
        base = len(out)
        for t, o in zip(self.tensors, offs):
            if t.offset is not None:
                continue
            out += b"\0" * (base + o - len(out))
            out += t.data
        return bytes(out)


# Tiny configuration shared by the bad files (kept small: corpus files stay < 20 KB).
TINY = dict(dim=32, hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, vocab=40, ctx=32)


def tiny_spm_vocab():
    pieces = ["\u2581"] + [chr(ord("a") + i) for i in range(26)] + ["\u2581" + chr(ord("a") + i) for i in range(10)]
    tokens = ["<unk>", "<s>", "</s>"] + pieces
    assert len(tokens) == TINY["vocab"]
    scores = [0.0, 0.0, 0.0] + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [1] * len(pieces)
    return tokens, scores, types


def tiny_gguf(arch="llama") -> GGUFSpec:
    T = TINY
    rng = np.random.default_rng(7)
    tokens, scores, types = tiny_spm_vocab()
    meta = [("general.architecture", STR, arch), ("general.name", STR, "tiny-bad-base"),
            ("llama.context_length", U32, T["ctx"]), ("llama.embedding_length", U32, T["dim"]),
            ("llama.block_count", U32, T["layers"]), ("llama.feed_forward_length", U32, T["hidden"]),
            ("llama.attention.head_count", U32, T["heads"]), ("llama.attention.head_count_kv", U32, T["kv_heads"]),
            ("llama.rope.freq_base", F32, 10000.0), ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
            ("llama.rope.dimension_count", U32, T["head_dim"]), ("tokenizer.ggml.model", STR, "llama"),
            ("tokenizer.ggml.tokens", ARR, (STR, tokens)), ("tokenizer.ggml.scores", ARR, (F32, scores)),
            ("tokenizer.ggml.token_type", ARR, (I32, types)), ("tokenizer.ggml.bos_token_id", U32, 1),
            ("tokenizer.ggml.eos_token_id", U32, 2), ("tokenizer.ggml.unknown_token_id", U32, 0)]
    d, h, q, kv = T["dim"], T["hidden"], T["heads"] * T["head_dim"], T["kv_heads"] * T["head_dim"]

    def mat(rows, cols):  # F16, dims innermost first
        return GTensor("", [cols, rows], GGML_F16, (rng.standard_normal((rows, cols)) * 0.2).astype("<f2").tobytes())

    def vec(n):
        return GTensor("", [n], GGML_F32, (1 + 0.1 * rng.standard_normal(n)).astype("<f4").tobytes())

    items = [("token_embd.weight", mat(T["vocab"], d)), ("blk.0.attn_norm.weight", vec(d)),
             ("blk.0.attn_q.weight", mat(q, d)), ("blk.0.attn_k.weight", mat(kv, d)),
             ("blk.0.attn_v.weight", mat(kv, d)), ("blk.0.attn_output.weight", mat(d, q)),
             ("blk.0.ffn_norm.weight", vec(d)), ("blk.0.ffn_gate.weight", mat(h, d)),
             ("blk.0.ffn_up.weight", mat(h, d)), ("blk.0.ffn_down.weight", mat(d, h)),
             ("output_norm.weight", vec(d))]
    tensors = []
    for name, t in items:
        t.name = name
        tensors.append(t)
    return GGUFSpec(meta, tensors)


def set_meta(spec: GGUFSpec, key, t, v) -> GGUFSpec:
    spec.meta = [(k, t, v) if k == key else (k, tt, vv) for k, tt, vv in spec.meta]
    return spec


def drop_meta(spec: GGUFSpec, key) -> GGUFSpec:
    spec.meta = [m for m in spec.meta if m[0] != key]
    return spec


def add_meta(spec: GGUFSpec, key, t, v) -> GGUFSpec:
    spec.meta = spec.meta + [(key, t, v)]
    return spec


def tensor(spec: GGUFSpec, name) -> GTensor:
    return next(t for t in spec.tensors if t.name == name)


# --------------------------------------------------------------------------------------
# Tiny llama2.c and Hugging Face models
# --------------------------------------------------------------------------------------

TINY_HF = R.Config(dim=16, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, vocab_size=W.VOCAB,
                   max_seq_len=32, rope_theta=10000.0, norm_eps=1e-5)


def tiny_llama2c_bytes() -> bytes:
    T = TINY
    d, h, L, H, KV, V, S, hd = T["dim"], T["hidden"], T["layers"], T["heads"], T["kv_heads"], T["vocab"], T["ctx"], T["head_dim"]
    n = V * d + L * (d + d * d + 2 * KV * hd * d + d * d + d + 3 * h * d) + d + S * hd
    body = (np.random.default_rng(3).standard_normal(n) * 0.1).astype("<f4").tobytes()
    return struct.pack("<7i", d, h, L, H, KV, V, S) + body


def write_llama2c_tokenizer_tiny(path):
    tokens, scores, _ = tiny_spm_vocab()
    entries = [("<unk>", 0.0), ("\n<s>\n", 0.0), ("\n</s>\n", 0.0)] + [(t.replace("\u2581", " "), s)
                                                                         for t, s in zip(tokens[3:], scores[3:])]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(e.encode()) for e, _ in entries)))
        for e, s in entries:
            b = e.encode()
            f.write(struct.pack("<fi", s, len(b)) + b)


def tiny_hf_tensors() -> dict:
    w = W.random_weights(TINY_HF, 11)
    del w["lm_head.weight"]
    return {k: v.astype(np.float16) for k, v in w.items()}


def st_bytes(tensors: dict, header_patch=None, raw_header: bytes | None = None, length_override=None) -> bytes:
    """safetensors bytes from name -> (dtype string, shape, raw bytes); optional header edits."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if header_patch:
        header_patch(header)
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    n = len(h) if length_override is None else length_override
    return struct.pack("<Q", n) + h + b"".join(blobs)


def hf_raw(tensors: dict) -> dict:
    return {k: ("F16", v.shape, v.astype("<f2").tobytes()) for k, v in tensors.items()}


def write_hf_folder(folder: Path, config_text: str | None = None, st: bytes | None = None, tokenizer=True,
                    config_patch=None):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = W.hf_config(TINY_HF, True, "F16")
    if config_patch:
        config_patch(cfg)
    (folder / "config.json").write_text(config_text if config_text is not None else json.dumps(cfg, indent=1))
    (folder / "model.safetensors").write_bytes(st if st is not None else st_bytes(hf_raw(tiny_hf_tensors())))
    if tokenizer:
        (folder / "tokenizer.json").write_text(json.dumps(W.tokenizer_json()))


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    model: Path  # what --model gets
    names: Path  # the file the message must name
    expect: list  # further substrings (field / tensor / offset)
    corpus: bool = False  # also saved under tests/data/bad/
    bug: str = ""  # a known C++ defect this case exposes (printed when it fails)


def make_cases(root: Path):
    """Returns (controls that must load, bad cases)."""
    cases, controls = [], []

    def add(name, model, expect, names=None, corpus=False, bug=""):
        cases.append(Case(name, model, names or model, expect, corpus, bug))

    # ---- llama2.c ----
    good = tiny_llama2c_bytes()
    d = root / "l2c"
    d.mkdir()
    write_llama2c_tokenizer_tiny(d / f"tok{TINY['vocab']}.bin")
    (d / "good.bin").write_bytes(good)
    controls.append(d / "good.bin")

    def l2c(name, data, expect, corpus=False, bug=""):
        p = d / f"{name}.bin"
        p.write_bytes(data)
        add(name, p, expect, corpus=corpus, bug=bug)

    hdr = list(struct.unpack("<7i", good[:28]))

    def with_hdr(**kw):
        h = hdr[:]
        for k, v in kw.items():
            h[["dim", "hidden", "layers", "heads", "kv", "vocab", "seq"].index(k)] = v
        return struct.pack("<7i", *h) + good[28:]

    add("missing_file", d / "does_not_exist.bin", ["no such file"])
    l2c("l2c_empty", b"", ["offset 0", "header", "truncated"])
    l2c("l2c_truncated_header", good[:10], ["offset 8", "header", "truncated"], corpus=True)
    l2c("l2c_truncated_body", good[:-4], ["file size", "header"])
    l2c("l2c_header_size_mismatch", good[:28 + 400], ["file size", "header"], corpus=True)
    l2c("l2c_trailing_bytes", good + b"\0" * 8, ["file size", "header"])
    l2c("l2c_zero_heads", with_hdr(heads=0), ["n_heads"])
    l2c("l2c_dim_not_multiple_of_heads", with_hdr(heads=3), ["dim", "n_heads"])
    l2c("l2c_kv_heads_not_divisor", with_hdr(kv=3), ["n_kv_heads"])
    l2c("l2c_negative_layers", with_hdr(layers=-1), ["n_layers"])
    l2c("l2c_vocab_int_min", with_hdr(vocab=-2 ** 31), ["vocab_size"],
        bug="llama2c.cpp: `-h[5]` negates INT_MIN (signed overflow, UB; UBSan aborts)")
    l2c("l2c_huge_layers", with_hdr(layers=100000), ["n_layers"],
        bug="model.cpp ModelConfig::validate: 'model dimensions are implausibly large' names no field")
    l2c("l2c_huge_seq", with_hdr(seq=2 ** 31 - 1), ["max_seq_len", "header"])
    nt = root / "l2c_no_tok"
    nt.mkdir()
    (nt / "model.bin").write_bytes(good)
    add("l2c_no_tokenizer", nt / "model.bin", ["tokenizer"])

    # ---- Hugging Face folder / safetensors ----
    hf_good = root / "hf_good"
    write_hf_folder(hf_good)
    controls.append(hf_good)
    raw = hf_raw(tiny_hf_tensors())
    q = "model.layers.0.self_attn.q_proj.weight"

    def hf(name, expect, inner="model.safetensors", corpus=False, bug="", **kw):
        f = root / name
        write_hf_folder(f, **kw)
        add(name, f, expect, names=f / inner, corpus=corpus, bug=bug)

    def patched(fn):
        h = {k: list(v) for k, v in raw.items()}
        fn(h)
        return st_bytes({k: tuple(v) for k, v in h.items()})

    good_st = st_bytes(raw)
    hf("st_bad_header_length", ["offset 0", "header length"], st=struct.pack("<Q", 10 ** 12) + good_st[8:],
       corpus=True)
    hf("st_header_length_past_end", ["offset 0", "header length"],
       st=struct.pack("<Q", len(good_st)) + good_st[8:])
    hf("st_shorter_than_8_bytes", ["offset 0", "header length"], st=b"\x01\x02\x03")
    hf("st_malformed_json", ["header", "JSON"], st=st_bytes(raw, raw_header=b'{"a": [1, 2,, }'), corpus=True)
    hf("st_header_not_object", ["header", "object"], st=st_bytes(raw, raw_header=b"[1, 2, 3]"))
    hf("st_wrong_shape", [q, "shape"], st=patched(lambda h: h[q].__setitem__(1, (8, 32))), corpus=True)
    hf("st_unsupported_dtype_i32", [q, "I32"],
       st=patched(lambda h: h.__setitem__(q, ["I32", h[q][1], np.arange(16 * 16, dtype="<i4").tobytes()])),
       corpus=True)
    hf("st_unknown_dtype", [q, "dtype"], st=patched(lambda h: h[q].__setitem__(0, "Q9_X")))
    hf("st_offsets_outside_file", [q, "data_offsets"],
       st=st_bytes(raw, header_patch=lambda h: h[q].__setitem__("data_offsets", [10 ** 6, 10 ** 6 + 512])),
       corpus=True)
    hf("st_offsets_span_mismatch", [q, "data_offsets"],
       st=st_bytes(raw, header_patch=lambda h: h[q].__setitem__("data_offsets",
                                                              [h[q]["data_offsets"][0], h[q]["data_offsets"][0] + 2])))
    hf("st_offsets_reversed", [q, "data_offsets"],
       st=st_bytes(raw, header_patch=lambda h: h[q].__setitem__("data_offsets", h[q]["data_offsets"][::-1])))
    hf("st_shape_negative", [q, "shape"], st=st_bytes(raw, header_patch=lambda h: h[q].__setitem__("shape", [-16, 16])))
    hf("st_missing_tensor", ["model.layers.0.mlp.up_proj.weight", "missing"], inner="",
       st=st_bytes({k: v for k, v in raw.items() if k != "model.layers.0.mlp.up_proj.weight"}))
    hf("st_truncated_data", ["data_offsets"], st=good_st[:-100])
    hf("cfg_malformed_json", ["offset", "JSON"], inner="config.json", config_text='{"model_type": "llama",,}',
       corpus=True)
    hf("cfg_not_object", ["object"], inner="config.json", config_text="[]")
    hf("cfg_model_type_gpt2", ["model_type", "gpt2"], inner="config.json",
       config_patch=lambda c: c.update(model_type="gpt2", architectures=["GPT2LMHeadModel"]), corpus=True)
    hf("cfg_missing_hidden_size", ["hidden_size"], inner="config.json", config_patch=lambda c: c.pop("hidden_size"),
       corpus=True)
    hf("cfg_hidden_size_string", ["hidden_size"], inner="config.json", config_patch=lambda c: c.update(hidden_size="16"))
    hf("cfg_hidden_size_2pow32", ["hidden_size"], inner="config.json",
       config_patch=lambda c: c.update(hidden_size=2 ** 32 + 16),
       bug="hf.cpp read_config: static_cast<int32_t>(cfg_int(...)) truncates 2^32+16 to 16 and the model loads")
    hf("cfg_kv_heads_not_divisor", ["n_kv_heads"], inner="config.json",
       config_patch=lambda c: c.update(num_key_value_heads=3))
    hf("cfg_rope_scaling", ["rope_scaling"], inner="config.json",
       config_patch=lambda c: c.update(rope_scaling={"type": "linear", "factor": 2.0}))
    hf("cfg_tie_embeddings_string", ["tie_word_embeddings"], inner="config.json",
       config_patch=lambda c: c.update(tie_word_embeddings="yes"),
       bug="hf.cpp read_config: j.value(key, default) throws nlohmann type_error, message names neither file nor key")
    hf("cfg_model_type_number", ["model_type"], inner="config.json",
       config_patch=lambda c: c.update(model_type=7, architectures=[]),
       bug="hf.cpp read_config: j.value(key, default) throws nlohmann type_error, message names neither file nor key")
    hf("cfg_attention_bias_string", ["attention_bias"], inner="config.json",
       config_patch=lambda c: c.update(attention_bias="false"),
       bug="hf.cpp read_config: j.value(key, default) throws nlohmann type_error, message names neither file nor key")
    hf("cfg_untied_no_lm_head", ["lm_head.weight"], inner="", config_patch=lambda c: c.update(tie_word_embeddings=False))
    # Sharded: index naming a shard outside the folder, or a missing shard.
    for name, shard, expect in (("index_shard_path_escape", "../evil.safetensors", ["weight_map", "plain file name"]),
                                ("index_missing_shard", "model-00009-of-00009.safetensors", ["cannot open"])):
        f = root / name
        write_hf_folder(f)
        wm = {k: "model.safetensors" for k in raw}
        wm[q] = shard
        (f / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        add(name, f, expect, names=f / ("model.safetensors.index.json" if "escape" in name else shard))
    f = root / "index_malformed"
    write_hf_folder(f)
    (f / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    add("index_malformed", f, ["weight_map"], names=f / "model.safetensors.index.json")
    f = root / "hf_no_config"
    f.mkdir()
    add("dir_without_config", f, ["config.json"])

    # ---- GGUF ----
    gd = root / "gguf"
    gd.mkdir()
    base = tiny_gguf()
    good_g = base.build()
    (gd / "good.gguf").write_bytes(good_g)
    controls.append(gd / "good.gguf")

    def gg(name, spec_or_bytes, expect, corpus=False, bug=""):
        p = gd / f"{name}.gguf"
        p.write_bytes(spec_or_bytes if isinstance(spec_or_bytes, bytes) else spec_or_bytes.build())
        add(name, p, expect, corpus=corpus, bug=bug)

    meta_end = 24 + sum(len(g_str(k)) + 4 + len(g_val(t, v)) for k, t, v in base.meta)
    gg("gguf_empty", b"", ["offset 0", "magic"])
    gg("gguf_bad_magic", b"GGML" + good_g[4:], ["offset 0", "magic"], corpus=True)
    gg("gguf_version_1", good_g[:4] + struct.pack("<I", 1) + good_g[8:], ["offset 4", "version"])
    gg("gguf_truncated_metadata", good_g[:meta_end // 2], ["offset", "tokenizer.ggml.tokens", ["truncated", "exceeds"]],
       corpus=True)
    gg("gguf_truncated_tensor_infos", good_g[:meta_end + 40], ["offset", "truncated"])
    s = tiny_gguf()
    s.n_tensors = 10 ** 15
    gg("gguf_huge_tensor_count", s, ["offset 8", "tensor count"])
    s = tiny_gguf()
    s.n_kv = 10 ** 15
    gg("gguf_huge_kv_count", s, ["offset 16", "metadata count"])
    s = tiny_gguf()
    t = tensor(s, "blk.0.attn_q.weight")
    t.type, t.data = GGML_Q4_K, bytes(144 * 4)  # [32 x 32] = 4 Q4_K blocks of 256
    s.build()
    gg("gguf_unsupported_q4_k", s, ["blk.0.attn_q.weight", "Q4_K", f"offset {s.info_offsets['blk.0.attn_q.weight']}"],
       corpus=True)
    s = tiny_gguf()
    tensor(s, "output_norm.weight").offset = 1 << 20
    s.build()
    gg("gguf_tensor_outside_file", s, ["output_norm.weight", "outside the file",
                                       f"offset {s.info_offsets['output_norm.weight']}"], corpus=True)
    s = tiny_gguf()
    tensor(s, "blk.0.ffn_down.weight").offset = 2 ** 64 - 32
    gg("gguf_tensor_offset_wraps", s, ["blk.0.ffn_down.weight", "outside the file"])
    s = tiny_gguf()
    tensor(s, "blk.0.attn_norm.weight").offset = 4100
    gg("gguf_tensor_misaligned", s, ["blk.0.attn_norm.weight", "aligned"])
    s = tiny_gguf()
    tensor(s, "blk.0.attn_k.weight").dims = [32, 32]
    tensor(s, "blk.0.attn_k.weight").data = bytes(2048)
    gg("gguf_wrong_dims", s, ["blk.0.attn_k.weight", "dims"])
    s = tiny_gguf()
    tensor(s, "blk.0.attn_k.weight").dims = [16, 2, 16, 1, 1]
    gg("gguf_five_dims", s, ["blk.0.attn_k.weight", "n_dims"])
    s = tiny_gguf()
    s.tensors = [t for t in s.tensors if t.name != "blk.0.ffn_up.weight"]
    gg("gguf_missing_tensor", s, ["blk.0.ffn_up.weight", "missing"])
    gg("gguf_wrong_architecture", set_meta(tiny_gguf(), "general.architecture", STR, "gpt2"),
       ["general.architecture", "gpt2"], corpus=True)
    gg("gguf_missing_embedding_length", drop_meta(tiny_gguf(), "llama.embedding_length"), ["llama.embedding_length"])
    gg("gguf_block_count_string", set_meta(tiny_gguf(), "llama.block_count", STR, "1"), ["llama.block_count"])
    gg("gguf_block_count_zero", set_meta(tiny_gguf(), "llama.block_count", U32, 0), [["n_layers", "block_count"]])
    trunc = "gguf_model.cpp load_gguf: static_cast<int32_t>(gguf::get_int(...)) truncates the 64-bit value; the model loads"
    gg("gguf_embedding_length_2pow32", set_meta(tiny_gguf(), "llama.embedding_length", U64, 2 ** 32 + 32),
       ["embedding_length"], bug=trunc)
    gg("gguf_head_count_kv_2pow32", set_meta(tiny_gguf(), "llama.attention.head_count_kv", U64, 2 ** 32 + 1),
       ["head_count_kv"], bug=trunc)
    gg("gguf_huge_block_count", set_meta(tiny_gguf(), "llama.block_count", U32, 100000), [["block_count", "n_layers"]],
       bug="model.cpp ModelConfig::validate: 'model dimensions are implausibly large' names no field")
    gg("gguf_rope_scaling", add_meta(tiny_gguf(), "llama.rope.scaling.type", STR, "yarn"), ["rope.scaling.type"])
    gg("gguf_bad_alignment", add_meta(tiny_gguf(), "general.alignment", U32, 24), ["general.alignment"])
    toks, scores, types = tiny_spm_vocab()
    s = set_meta(tiny_gguf(), "tokenizer.ggml.tokens", ARR, (STR, toks[:-1]))
    s = set_meta(s, "tokenizer.ggml.scores", ARR, (F32, scores[:-1]))
    gg("gguf_vocab_mismatch", set_meta(s, "tokenizer.ggml.token_type", ARR, (I32, types[:-1])),
       ["tokenizer.ggml.tokens", "vocab_size"])
    gg("gguf_token_type_count", set_meta(tiny_gguf(), "tokenizer.ggml.token_type", ARR, (I32, types[:-1])),
       ["tokenizer.ggml.token_type"])
    gg("gguf_duplicate_key", add_meta(tiny_gguf(), "llama.block_count", U32, 1), ["llama.block_count", "duplicate"])
    big = bytearray(good_g)
    big[24:32] = struct.pack("<Q", 2 ** 62)  # the first key's string length
    gg("gguf_huge_key_length", bytes(big), ["offset", "metadata key", "exceeds"])
    s = add_meta(tiny_gguf(), "x.bad_array", ARR, (U32, [1, 2, 3]))
    b = s.build()
    idx = b.index(g_str("x.bad_array"))
    arr_len_at = idx + len(g_str("x.bad_array")) + 4 + 4
    b = b[:arr_len_at] + struct.pack("<Q", 2 ** 60) + b[arr_len_at + 8:]
    gg("gguf_huge_array_length", b, ["x.bad_array", "array length"])
    b = bytearray(add_meta(tiny_gguf(), "x.bad_bool", BOOL, True).build())
    bi = bytes(b).index(g_str("x.bad_bool")) + len(g_str("x.bad_bool")) + 4
    b[bi] = 2
    gg("gguf_bad_bool", bytes(b), ["x.bad_bool", "bool"])
    return controls, cases


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def run_case(model: Path, names: str, expect: list, args=None):
    """Runs model-info (or `args`); returns (problems, the stderr line). An `expect` item that
    is a list is satisfied by any of its alternatives."""
    p = R.run_kvscope(args or ["model-info", "--model", model], check=False, timeout=120)
    problems = []
    err = p.stderr
    lines = err.rstrip("\n").split("\n") if err.strip() else []
    if p.returncode < 0:
        problems.append(f"killed by signal {-p.returncode}")
    elif p.returncode != 1:
        problems.append(f"exit status {p.returncode}, expected 1")
    if "Sanitizer" in err or "runtime error:" in err:
        problems.append("sanitizer report")
    if p.stdout.strip():
        problems.append(f"stdout not empty: {p.stdout.strip()[:80]!r}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1")
    first = lines[0] if lines else ""
    if not first.startswith("kvscope: error:"):
        problems.append("stderr does not start with 'kvscope: error:'")
    if names and names not in first:
        problems.append(f"does not name the file {names!r}")
    # The expected words must appear in the message proper, not just inside the path.
    msg = first
    for pth in sorted({str(model or ""), names or ""}, key=len, reverse=True):
        if pth:
            msg = msg.replace(pth, "<path>")
    for e in expect:
        alts = e if isinstance(e, (list, tuple)) else [e]
        if not any(a.lower() in msg.lower() for a in alts):
            problems.append(f"does not mention {' or '.join(map(repr, alts))}")
    return problems, first


def corpus_entries():
    man = CORPUS / "MANIFEST.json"
    if not man.exists():
        return []
    return json.loads(man.read_text())["cases"]


def write_corpus(cases, root: Path):
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    CORPUS.mkdir(parents=True)
    entries = []
    for c in cases:
        if not c.corpus:
            continue
        src = c.model
        dst = CORPUS / (c.name + (src.suffix if src.is_file() else ""))
        if src.is_dir():
            # The loader stops at the defect: config.json problems need only config.json,
            # safetensors problems need no tokenizer.json.
            dst.mkdir()
            keep = ["config.json"] if c.names.name == "config.json" else [p.name for p in src.iterdir()
                                                                        if p.name != "tokenizer.json"]
            for k in keep:
                shutil.copyfile(src / k, dst / k)
            model = dst.name
        else:
            shutil.copyfile(src, dst)
            model = dst.name
        inner = str(c.names.relative_to(c.model)) if c.names != c.model else ""
        entries.append({"model": model, "names": inner, "expect": c.expect})
    for f in CORPUS.rglob("*"):
        if f.is_file():
            assert f.stat().st_size < 20_000, f"corpus file {f} is {f.stat().st_size} bytes"
    (CORPUS / "MANIFEST.json").write_text(json.dumps({
        "about": "Malformed model files for kvscope's loaders (written by tests/python/test_bad_inputs.py "
                 "--write-corpus). `kvscope model-info --model <model>` must exit 1 with one stderr line "
                 "'kvscope: error: ...' naming <model>[/<names>] and each `expect` substring.",
        "cases": entries}, indent=1) + "\n")
    print(f"wrote {len(entries)} corpus entries to {CORPUS}")


def main() -> int:
    root = R.scratch_dir("kvscope_bad_")
    controls, cases = make_cases(root)
    if "--write-corpus" in sys.argv:
        write_corpus(cases, root)
        return 0
    R.kvscope_bin()
    failures = []
    for c in controls:
        p = R.run_kvscope(["model-info", "--model", c], check=False)
        if p.returncode != 0:
            failures.append(f"control {c} (valid) failed to load: {p.stderr.strip()}")
    for c in cases:
        problems, first = run_case(c.model, str(c.names), c.expect)
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {c.name:34s} {first[:160]}")
        if problems:
            bug = f"\n      KNOWN C++ BUG: {c.bug}" if c.bug else ""
            failures.append(f"{c.name}: {'; '.join(problems)}\n      stderr: {first[:300]}{bug}")
    # The same contract for the other model commands, and for bad token input.
    good_gguf = controls[2]
    q4k = next(c.model for c in cases if c.name == "gguf_unsupported_q4_k")
    missing = root / "nope.gguf"
    out = root / "out.f32"
    lg = lambda m, toks: ["logits", "--model", m, "--tokens", toks, "--out", out]  # noqa: E731
    other = [("generate: missing model", missing, ["generate", "--model", missing, "--prompt", "x"], ["no such file"]),
             ("logits: missing model", missing, lg(missing, "1"), ["no such file"]),
             ("logits: unsupported tensor type", q4k, lg(q4k, "1"), ["Q4_K", "blk.0.attn_q.weight"]),
             ("generate: unsupported tensor type", q4k, ["generate", "--model", q4k, "--prompt", "a"], ["Q4_K"]),
             ("logits: token id = vocab size", "", lg(good_gguf, "1,40"), ["token", "40"]),
             ("logits: negative token id", "", lg(good_gguf, "1,-3"), ["token", "-3"]),
             ("logits: non-integer token", "", lg(good_gguf, "1,x"), ["--tokens", "x"]),
             ("logits: more tokens than the context", "", lg(good_gguf, ",".join(["5"] * (TINY["ctx"] + 1))),
              ["context"])]
    for name, names, args, expect in other:
        problems, first = run_case(None, str(names), expect, args=args)
        print(f"{'ok  ' if not problems else 'FAIL'} {name:34s} {first[:160]}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}\n      stderr: {first[:300]}")

    n_corpus = 0
    for e in corpus_entries():
        model = CORPUS / e["model"]
        names = str(model / e["names"]) if e["names"] else str(model)
        problems, first = run_case(model, names, e["expect"])
        n_corpus += 1
        if problems:
            failures.append(f"corpus {e['model']}: {'; '.join(problems)}\n      stderr: {first[:300]}")
    print(f"\n{len(cases)} generated bad inputs, {len(other)} bad command lines, {n_corpus} corpus files, "
          f"{len(controls)} valid controls")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print("  -", f)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
