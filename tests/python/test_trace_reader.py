"""traces/kvtrace.py (pure-numpy reader) vs the C++ reader (kvscope trace-info / trace-dump).

Captures small traces of stories260K in several settings (dense / top-k, with / without
Q/K/V, prefill windows 0, 3, 8, 32, small --steps-per-chunk so there are many chunks) and:

  1. CRC-32C: the known vector, the vectorised path vs the byte loop on odd sizes;
  2. trace-info --json vs the Python reader: steps, bytes, chunks, complete, prompt length,
     header objects, attention entries and the per-layer entropy / sink-mass statistics
     (recomputed in Python from every stored row: a whole-file comparison);
  3. trace-dump --json vs the Python reader, exactly (floats compare bit for bit), for a
     sample of (step, layer, head): step 0 with --all-rows, chunk boundaries, the last step;
  4. damaged copies, read by both readers:
       cut in the middle of the last chunk / right after the header / inside the trailer:
         readable up to the last complete chunk, same step count, damage at the same offset,
         trace-info exits 1 with one "kvscope: error:" line naming the file and the offset;
       a byte flipped inside a frame (complete file, and with the index cut off): rejected
         at that frame's offset, other frames still readable;
       a flipped index byte: both fall back to scanning all chunks;
       version 2 at byte 8, a bad magic, a flipped header-JSON byte: rejected at open;
  5. frames whose checksums are valid but whose contents are not (step number, kind,
     counts, section sizes, raw size, top-k keys / counts, left-over bytes): both readers
     refuse that frame at its offset, the Python reader again on a second try;
  6. 80 randomly mutated copies (seeded): both readers agree on refusing / the readable
     steps / the first error offset, and the Python reader raises only TraceError.

The traces committed under traces/*.kvt get checks 2 and 3 as well (without the model).
Skips (77) without the kvscope binary, or without both the model and committed traces.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SKIP = 77
SRC = Path(os.environ.get("KVSCOPE_SOURCE_DIR") or Path(__file__).resolve().parents[2])
sys.path.insert(0, str(SRC / "traces"))
import kvtrace  # noqa: E402

failures: list = []
n_checks = 0
_crafted = iter(range(1 << 30))


def check(ok, msg: str) -> bool:
    global n_checks
    n_checks += 1
    if not ok:
        failures.append(msg)
        print("FAIL:", msg)
    return bool(ok)


def kvscope_bin() -> str:
    return os.environ.get("KVSCOPE_BIN") or str(SRC / "build" / "cli" / "kvscope")


def model_path() -> Path:
    m = os.environ.get("KVSCOPE_MODELS")
    return (Path(m) if m else SRC.parent / "shared" / "models") / "stories260K" / "stories260K.bin"


def run(args, expect_ok=True):
    cmd = [kvscope_bin()] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if expect_ok and p.returncode != 0:
        raise AssertionError(f"command failed (rc {p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    if "Sanitizer" in p.stderr or "runtime error:" in p.stderr:
        raise AssertionError(f"sanitizer report from {' '.join(cmd)}:\n{p.stderr[:2000]}")
    return p


def trace_info(path):
    p = run(["trace-info", path, "--json"], expect_ok=False)
    j = json.loads(p.stdout) if p.stdout.strip() else None
    return p, j


def trace_dump(path, step, layer, head, all_rows=False, expect_ok=True):
    args = ["trace-dump", path, "--step", step, "--layer", layer, "--head", head, "--json"]
    if all_rows:
        args.append("--all-rows")
    p = run(args, expect_ok=expect_ok)
    return p, (json.loads(p.stdout) if p.returncode == 0 else None)


def error_line(p, what: str):
    """The one 'kvscope: error:' line of a failed command, or None (after recording a failure)."""
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    check(p.returncode == 1, f"{what}: exit status {p.returncode}, expected 1")
    if not check(len(lines) == 1 and lines[0].startswith("kvscope: error: "),
                 f"{what}: stderr is not exactly one 'kvscope: error:' line: {p.stderr.strip()!r}"):
        return None
    return lines[0]


def offset_in(msg: str):
    m = re.search(r": offset (\d+): ", msg or "")
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def same(a, b) -> bool:
    a, b = f64(a), f64(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def compare_dump(t: "kvtrace.Trace", j: dict, step, layer, head, all_rows, tag) -> None:
    sl = t.step_layer(step, layer)
    w = f"{tag}: step {step} layer {layer} head {head}{' all-rows' if all_rows else ''}"
    check(j["step"] == sl.step and j["layer"] == layer and j["head"] == head, f"{w}: step/layer/head echo")
    check(j["kind"] == sl.kind, f"{w}: kind {j['kind']} vs {sl.kind}")
    check(j["token"] == sl.token, f"{w}: token {j['token']} vs {sl.token}")
    check(j["n_queries"] == sl.n_queries and j["first_pos"] == sl.first_pos, f"{w}: n_queries/first_pos")
    check(j["kv_head"] == head // t.info.group, f"{w}: kv_head")
    r0 = 0 if all_rows else max(sl.n_rows - 1, 0)
    rows = [sl.row(r, head) for r in range(r0, sl.n_rows)]
    if not check(len(j["rows"]) == len(rows), f"{w}: {len(j['rows'])} rows vs {len(rows)}"):
        return
    for ri, (jr, row) in enumerate(zip(j["rows"], rows)):
        rw = f"{w} row {r0 + ri}"
        check(jr["qpos"] == row.qpos, f"{rw}: qpos {jr['qpos']} vs {row.qpos}")
        check(jr["lse"] == row.lse, f"{rw}: lse {jr['lse']!r} vs {row.lse!r}")
        check(jr["keys"] == row.keys.tolist(), f"{rw}: keys differ")
        check(same(jr["probs"], row.probs), f"{rw}: probs differ")
        if t.info.mode == "topk":
            check(jr.get("residual") == row.residual, f"{rw}: residual {jr.get('residual')!r} vs {row.residual!r}")
        else:
            check("residual" not in jr, f"{rw}: dense row has a residual")
        if t.info.with_qkv:
            check("q" in jr and same(jr["q"], sl.q[r0 + ri, head]), f"{rw}: q differs")
        else:
            check("q" not in jr, f"{rw}: q without --with-qkv")
    if sl.colsum is not None:
        check("colsum" in j and same(j["colsum"], sl.colsum[head]), f"{w}: colsum differs")
    else:
        check("colsum" not in j, f"{w}: colsum on a decode step")
    if t.info.with_qkv:
        kvh = head // t.info.group
        check("k" in j and same(j["k"], sl.k[:, kvh, :]), f"{w}: k differs")
        check("v" in j and same(j["v"], sl.v[:, kvh, :]), f"{w}: v differs")
    else:
        check("k" not in j and "v" not in j, f"{w}: k/v without --with-qkv")


def layer_stats(t: "kvtrace.Trace"):
    """What trace-info computes: per layer, mean entropy (nats) and sink mass (keys 0..3)
    over every stored row (top-k: residual spread over the keys not kept); entries."""
    out, entries = [], 0.0
    for layer in range(t.info.n_layers):
        h_sum = sink_sum = rows = 0.0
        for sl in t.iter_layer(layer):
            for row in sl.rows:
                p = row.probs.astype(np.float32).astype(np.float64)
                pos = p[p > 0]
                h = float(-(pos * np.log(pos)).sum())
                sink = float(p[row.keys < 4].sum())
                rest = row.qpos + 1 - row.n
                if t.info.mode == "topk" and row.residual > 0 and rest > 0:
                    r = float(np.float32(row.residual))
                    h -= r * np.log(r / rest)
                h_sum += h
                sink_sum += sink
                rows += 1
                entries += row.qpos + 1
        out.append({"layer": layer, "mean_entropy_nats": h_sum / rows if rows else 0.0,
                    "sink_mass": sink_sum / rows if rows else 0.0, "rows": rows})
    return out, entries


def close(a, b, rel=1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def compare_info(t, j, tag, expect_complete=True) -> None:
    check(j is not None, f"{tag}: trace-info printed no JSON")
    if j is None:
        return
    check(j["steps"] == t.n_steps, f"{tag}: steps {j['steps']} vs {t.n_steps}")
    check(j["bytes"] == t.file_size, f"{tag}: bytes {j['bytes']} vs {t.file_size}")
    check(j["chunks"] == len(t.chunks), f"{tag}: chunks {j['chunks']} vs {len(t.chunks)}")
    complete_py = t.complete and t.verify() is None
    check(j["complete"] == complete_py, f"{tag}: complete {j['complete']} vs {complete_py}")
    check(j["complete"] == expect_complete, f"{tag}: complete is {j['complete']}, expected {expect_complete}")
    check(j["prompt_tokens"] == t.info.prompt_len, f"{tag}: prompt_tokens")
    check((j["layers"], j["q_heads"], j["kv_heads"]) == (t.info.n_layers, t.info.n_heads, t.info.n_kv_heads),
          f"{tag}: layer / head counts")
    check(j["capture"] == t.header["capture"] and j["model"] == t.header["model"], f"{tag}: header objects differ")
    stats, entries = layer_stats(t)
    check(j["attention_entries"] == entries, f"{tag}: attention_entries {j['attention_entries']} vs {entries}")
    for a, b in zip(j["per_layer"], stats):
        check(a["rows"] == b["rows"] and close(a["mean_entropy_nats"], b["mean_entropy_nats"])
              and close(a["sink_mass"], b["sink_mass"]), f"{tag}: layer {b['layer']} stats {a} vs {b}")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

PROMPT_A = "Once upon a time, there was a little girl named Lily. She"
PROMPT_B = "Tom had a red ball. He liked to play with it in the park every day with his dog"

# name, extra capture flags, prompt, -n
CAPTURES = [
    ("dense_qkv_w8", ["--dense", "--with-qkv", "--prefill-window", 8, "--steps-per-chunk", 7], PROMPT_A, 60),
    ("topk8_w32", ["--topk", 8, "--prefill-window", 32, "--steps-per-chunk", 5, "--ignore-eos"], PROMPT_B, 90),
    ("topk3_qkv_w0", ["--topk", 3, "--with-qkv", "--prefill-window", 0, "--steps-per-chunk", 1], PROMPT_A, 20),
    ("topk64_qkv_w5", ["--topk", 64, "--with-qkv", "--prefill-window", 5, "--steps-per-chunk", 3], PROMPT_B, 30),
    ("dense_w3", ["--prefill-window", 3], PROMPT_A, 40),
]


def check_crc() -> None:
    check(kvtrace.crc32c(b"123456789") == 0xE3069283, "crc32c('123456789') != 0xE3069283")
    check(kvtrace.crc32c(b"") == 0, "crc32c('') != 0")
    rng = np.random.default_rng(7)
    for n in (1, 3, 8191, 8192, 8193, 65535, 65536 + 17, 300001):
        d = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        want = (~kvtrace._raw_scalar(0xFFFFFFFF, d)) & 0xFFFFFFFF
        check(kvtrace.crc32c(d) == want, f"crc32c: vectorised != byte loop for {n} bytes")
        k = n // 3  # continuation, as crc32c(data, crc) in C++
        check(kvtrace.crc32c(d[k:], kvtrace.crc32c(d[:k])) == want, f"crc32c: continuation for {n} bytes")


def sample_points(t, rng):
    """(step, layer, head, all_rows) for trace-dump: step 0 with --all-rows (every layer),
    the first and last step of every chunk, the last step, random ones."""
    H, L = t.info.n_heads, t.info.n_layers
    pts = [(0, l, int(rng.integers(H)), True) for l in range(L)]
    pts.append((0, 0, H - 1, False))
    for c in t.chunks:
        for s in {c.first_step, c.first_step + c.n_steps - 1}:
            pts.append((s, int(rng.integers(L)), int(rng.integers(H)), False))
    pts += [(int(rng.integers(t.n_steps)), int(rng.integers(L)), int(rng.integers(H)), False) for _ in range(4)]
    pts.append((t.n_steps - 1, L - 1, H - 1, False))
    return sorted(set(pts))


def check_dumps(t, path, pts, tag) -> None:
    for (s, l, h, all_rows) in pts:
        _, j = trace_dump(path, s, l, h, all_rows)
        compare_dump(t, j, s, l, h, all_rows, tag)


def expect_open_error(path, offset, what, tag) -> None:
    """Both readers refuse the file at open, naming it and `offset`."""
    try:
        kvtrace.Trace(path)
        check(False, f"{tag}: Python reader opened it")
    except kvtrace.TraceError as e:
        check(e.offset == offset and str(path) in str(e) and what in str(e),
              f"{tag}: Python error {str(e)!r}, expected offset {offset} and {what!r}")
        print(f"  {tag}: python: {e}")
    for args in (["trace-info", path, "--json"], ["trace-dump", path, "--step", 0, "--layer", 0, "--head", 0]):
        p = run(args, expect_ok=False)
        line = error_line(p, f"{tag}: kvscope {args[0]}")
        if line:
            check(str(path) in line and offset_in(line) == offset and what in line,
                  f"{tag}: kvscope {args[0]}: {line!r}, expected offset {offset} and {what!r}")
        check(p.stdout.strip() == "", f"{tag}: kvscope {args[0]} printed to stdout")
        if args[0] == "trace-info" and line:
            print(f"  {tag}: kvscope: {line}")


def expect_damaged(path, steps, offset, tag, what=None) -> "kvtrace.Trace":
    """Both readers open it, keep `steps` steps, report damage at `offset`."""
    t = kvtrace.Trace(path)
    check(t.n_steps == steps, f"{tag}: Python reader keeps {t.n_steps} steps, expected {steps}")
    check(not t.complete, f"{tag}: Python reader says complete")
    check(t.damage is not None and str(path) in t.damage and t.damage_offset == offset,
          f"{tag}: Python damage {t.damage!r}, expected offset {offset}")
    if what:
        check(what in (t.damage or ""), f"{tag}: Python damage {t.damage!r} lacks {what!r}")
    check(offset_in(t.damage) == t.damage_offset, f"{tag}: damage message and damage_offset disagree")
    p, j = trace_info(path)
    line = error_line(p, f"{tag}: trace-info")
    if line:
        check(str(path) in line and offset_in(line) == offset,
              f"{tag}: trace-info error {line!r}, expected offset {offset}")
    if j is not None:
        check(j["steps"] == steps and j["complete"] is False and offset_in(j.get("damage")) == offset,
              f"{tag}: trace-info JSON steps {j['steps']} complete {j['complete']} damage {j.get('damage')!r}")
        compare_info(t, j, tag, expect_complete=False)
    else:
        check(False, f"{tag}: trace-info printed no JSON")
    print(f"  {tag}: python: {t.damage}\n  {tag}: kvscope: {line}")
    return t


def rewrite_frame(t, data: bytes, ci: int, layer: int, transform, raw_size_delta: int = 0) -> bytes:
    """A copy without index/trailer in which frame (ci, layer) is decompressed, edited by
    transform(bytearray) and recompressed, with the frame table, chunk header and their
    CRCs rewritten: every checksum is valid, only the frame's contents are wrong."""
    import struct
    import zstandard

    c = t.chunks[ci]
    end = t.chunks[-1].offset + t.chunks[-1].bytes
    frames = []
    for l, fe in enumerate(c.frames):
        fo = c.frame_offset(l)
        z, rs = data[fo:fo + fe.compressed_size], fe.raw_size
        if l == layer:
            raw = bytes(transform(bytearray(zstandard.ZstdDecompressor().decompress(z))))
            z = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
            rs = len(raw) + raw_size_delta
        frames.append((z, rs))
    table = b"".join(struct.pack("<QQII", len(z), rs, kvtrace.crc32c(z), 0) for z, rs in frames)
    hdr = bytearray(data[c.offset:c.offset + 48])
    struct.pack_into("<Q", hdr, 24, sum(len(z) for z, _ in frames))
    struct.pack_into("<I", hdr, 40, kvtrace.crc32c(table))
    struct.pack_into("<I", hdr, 44, kvtrace.crc32c(bytes(hdr[:44])))
    return data[:c.offset] + bytes(hdr) + table + b"".join(z for z, _ in frames) + data[c.offset + c.bytes:end]


def sections(raw):
    import struct
    return struct.unpack_from("<QQQ", raw, 0)


def patch_u32(off, value=None, add=None):
    import struct

    def f(raw):
        v = struct.unpack_from("<I", raw, off)[0]
        struct.pack_into("<I", raw, off, value if value is not None else (v + add) & 0xFFFFFFFF)
        return raw
    return f


def bump_meta_bytes(raw):
    import struct
    struct.pack_into("<Q", raw, 0, sections(raw)[0] + 4)
    return raw


def extra_index_value(raw):
    import struct
    struct.pack_into("<Q", raw, 16, sections(raw)[2] + 1)
    return raw + b"\0\0\0\0"


def repeat_second_key(raw):  # the second index delta -> 0: a key repeated
    import struct
    meta, halves, _ = sections(raw)
    struct.pack_into("<I", raw, 24 + meta + 2 * halves + 4, 0)
    return raw


def check_crafted(t, data, tmp, name, ci, transform, what, raw_size_delta=0) -> None:
    """Frame (ci, layer 0) has valid CRCs but bad contents: both readers scan the file (no
    index), keep every chunk, and refuse that frame at its offset with `what`."""
    tag = f"{name} crafted: {what}"
    p = tmp / f"{name}_crafted_{next(_crafted)}.kvt"
    p.write_bytes(rewrite_frame(t, data, ci, 0, transform, raw_size_delta))
    c = t.chunks[ci]
    foff = c.frames_offset
    d = kvtrace.Trace(p)
    check(d.n_steps == t.n_steps and not d.complete and "no index" in (d.damage or ""),
          f"{tag}: Python scan: {d.n_steps} steps, damage {d.damage!r}")
    py_msg = None
    for attempt in range(2):  # a failed read must not leave a half-decoded frame behind
        try:
            d.step_layer(c.first_step, 0)
            check(False, f"{tag}: Python reader accepted the frame (attempt {attempt})")
        except kvtrace.TraceError as e:
            py_msg = str(e)
            check(e.offset == foff and what in py_msg, f"{tag}: Python error {py_msg!r}, expected offset {foff}")
    check_dumps(d, p, [(c.first_step, 1, 2, False)], tag)  # the other layers of that chunk read fine
    q, _ = trace_dump(p, c.first_step, 0, 1, expect_ok=False)
    line = error_line(q, f"{tag}: trace-dump")
    if line:
        check(offset_in(line) == foff and what in line and str(p) in line, f"{tag}: trace-dump: {line!r}")
        if py_msg and line != "kvscope: error: " + py_msg:
            print(f"  note: messages differ:\n    python:  {py_msg}\n    kvscope: {line}")
    q, j = trace_info(p)
    line = error_line(q, f"{tag}: trace-info")
    check(line is not None and offset_in(line) == foff, f"{tag}: trace-info error {line!r}, expected offset {foff}")
    print(f"  {tag}: kvscope: {line}")


def differential_mutations(t, data: bytes, tmp: Path, name: str, n: int, seed: int) -> None:
    """n mutated copies (random bytes inside a re-checksummed frame, truncations, bit flips):
    both readers must agree -- refused at open at the same offset, or the same number of
    readable steps and the same first error offset (damage, else the first bad frame);
    the Python reader raises nothing but TraceError."""
    import random

    rnd = random.Random(seed)
    for i in range(n):
        r = rnd.random()
        ci, layer = rnd.randrange(len(t.chunks)), rnd.randrange(t.info.n_layers)
        if r < 0.5:
            near = r < 0.25  # within the first 200 bytes: section sizes and the first records

            def edit(raw):
                for _ in range(rnd.randint(1, 3)):
                    raw[rnd.randrange(min(len(raw), 200) if near else len(raw))] = rnd.randrange(256)
                return raw
            out = rewrite_frame(t, data, ci, layer, edit)
        elif r < 0.7:
            out = data[:rnd.randrange(len(data))]
        else:
            b = bytearray(data)
            for _ in range(rnd.randint(1, 2)):
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            out = bytes(b)
        p = tmp / f"{name}_mut{i}.kvt"
        p.write_bytes(out)
        tag = f"{name} mutation {i} (seed {seed})"
        try:
            d = kvtrace.Trace(p)
            v = d.verify()
            py = ("read", d.n_steps, offset_in(v) if v else d.damage_offset)
            d.close()
        except kvtrace.TraceError as e:
            py = ("refused", e.offset)
        except Exception as e:  # noqa: BLE001 - any other exception is a reader bug
            check(False, f"{tag}: Python reader raised {type(e).__name__}: {e}")
            continue
        q, j = trace_info(p)
        check(q.returncode in (0, 1), f"{tag}: trace-info exit status {q.returncode}")
        lines = [l for l in q.stderr.splitlines() if l.startswith("kvscope: error: ")]
        off = offset_in(lines[0]) if lines else None
        cpp = ("refused", off) if j is None else ("read", j["steps"], off)
        check(py == cpp, f"{tag}: Python {py} vs kvscope {cpp} ({lines[0] if lines else 'no error'})")
        p.unlink()


def main() -> int:
    t_start = time.time()
    if not os.path.exists(kvscope_bin()):
        print(f"SKIP: kvscope binary not found at {kvscope_bin()} (set KVSCOPE_BIN)")
        return SKIP
    check_crc()
    print(f"crc32c: {n_checks} checks")
    committed = check_committed()
    mp = model_path()
    if not mp.exists():
        print(f"stories260K not found at {mp} (set KVSCOPE_MODELS): capture and damage checks skipped")
        if not committed:
            print("SKIP: nothing to compare")
            return SKIP
        print(f"{n_checks} checks, {len(failures)} failed, {time.time() - t_start:.1f} s")
        return 1 if failures else 0
    tmp = Path(tempfile.mkdtemp(prefix="kvscope_trace_reader_"))
    try:
        return run_all(mp, tmp, t_start)
    finally:
        if os.environ.get("KVSCOPE_KEEP_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


def check_committed() -> int:
    """The traces committed under traces/ (made at a higher zstd level): whole-file
    statistics and a few dumps, both readers. Returns how many were checked."""
    rng = np.random.default_rng(11)
    n = 0
    for path in sorted((SRC / "traces").glob("*.kvt")):
        t = kvtrace.Trace(path)
        _, j = trace_info(path)
        compare_info(t, j, path.name)
        pts = [(0, 0, 0, True), (t.n_steps - 1, t.info.n_layers - 1, t.info.n_heads - 1, False)]
        pts += [(int(rng.integers(t.n_steps)), int(rng.integers(t.info.n_layers)), int(rng.integers(t.info.n_heads)),
                 False) for _ in range(3)]
        check_dumps(t, path, pts, path.name)
        print(f"{path.name}: {t.n_steps} steps, {len(t.chunks)} chunks, {t.file_size} bytes; info and "
              f"{len(pts)} dumps compared")
        t.close()
        n += 1
    return n


def run_all(mp: Path, tmp: Path, t_start: float) -> int:
    rng = np.random.default_rng(2024)
    traces = {}
    for name, flags, prompt, n in CAPTURES:
        out = tmp / f"{name}.kvt"
        run(["trace", "--model", mp, "--prompt", prompt, "-n", n, "-q", "--threads", 1, "--out", out] + flags)
        t = kvtrace.Trace(out)
        traces[name] = (t, out)
        check(t.complete and t.damage is None, f"{name}: not complete: {t.damage}")
        check(t.verify() is None, f"{name}: verify: {t.verify()}")
        # File layout: header + chunks + index + trailer, nothing else.
        idx_bytes = 16 + 24 * len(t.chunks)
        check(t.data_start + sum(c.bytes for c in t.chunks) + idx_bytes + 32 == t.file_size, f"{name}: layout sizes")
        toks = t.tokens()
        check(len(toks) == t.info.prompt_len + t.n_steps - 1, f"{name}: token count")
        _, j = trace_info(out)
        compare_info(t, j, name)
        pts = sample_points(t, rng)
        check_dumps(t, out, pts, name)
        # A step past the end: both refuse.
        p, _ = trace_dump(out, t.n_steps, 0, 0, expect_ok=False)
        error_line(p, f"{name}: trace-dump past the end")
        try:
            t.step_layer(t.n_steps, 0)
            check(False, f"{name}: Python step_layer past the end did not raise")
        except kvtrace.TraceError:
            pass
        print(f"{name}: {t.n_steps} steps, {len(t.chunks)} chunks, {t.file_size} bytes, mode {t.info.mode}"
              f"{' k=%d' % t.info.topk if t.info.mode == 'topk' else ''}, qkv {t.info.with_qkv}, "
              f"window {t.info.prefill_window}, P {t.info.prompt_len}; {len(pts)} dumps compared")

    # ---- damaged copies -------------------------------------------------------------
    for name in ("dense_qkv_w8", "topk8_w32"):
        t, src = traces[name]
        data = src.read_bytes()
        check(len(t.chunks) >= 4, f"{name}: want >= 4 chunks for the damage cases, have {len(t.chunks)}")
        last = t.chunks[-1]

        # Cut in the middle of the last chunk: the chunks before it stay readable.
        cut = last.offset + last.bytes // 2
        p = tmp / f"{name}_cut_last.kvt"
        p.write_bytes(data[:cut])
        expected_off = last.frames_offset if cut > last.frames_offset else last.offset
        d = expect_damaged(p, last.first_step, expected_off, f"{name} cut mid last chunk", "truncated")
        check_dumps(d, p, [(0, 1, 2, True), (last.first_step - 1, 2, 5, False), (1, 4, 0, False)], f"{name} cut")
        q, _ = trace_dump(p, last.first_step, 0, 0, expect_ok=False)
        error_line(q, f"{name} cut: trace-dump of a lost step")

        # Cut inside the chunk header of the last chunk (fewer than 48 bytes of it).
        p = tmp / f"{name}_cut_hdr.kvt"
        p.write_bytes(data[:last.offset + 20])
        expect_damaged(p, last.first_step, last.offset, f"{name} cut in a chunk header", "truncated chunk header")

        # Cut right after the header JSON: no chunk at all.
        p = tmp / f"{name}_header_only.kvt"
        p.write_bytes(data[:t.data_start])
        d = expect_damaged(p, 0, t.data_start, f"{name} header only", "no index")
        q, _ = trace_dump(p, 0, 0, 0, expect_ok=False)
        error_line(q, f"{name} header only: trace-dump step 0")
        try:
            d.step_layer(0, 0)
            check(False, f"{name} header only: Python step_layer(0, 0) did not raise")
        except kvtrace.TraceError:
            pass

        # Cut inside the trailer: every chunk is there, the index is found by the scan.
        idx_off = t.data_start + sum(c.bytes for c in t.chunks)
        p = tmp / f"{name}_cut_trailer.kvt"
        p.write_bytes(data[:-10])
        d = expect_damaged(p, t.n_steps, idx_off, f"{name} cut in the trailer", "index present")
        check_dumps(d, p, [(t.n_steps - 1, 3, 1, False)], f"{name} cut trailer")

        # A flipped index byte: index checksum fails, the scan keeps every chunk.
        b = bytearray(data)
        b[idx_off + 16 + 5] ^= 0x01
        p = tmp / f"{name}_bad_index.kvt"
        p.write_bytes(bytes(b))
        expect_damaged(p, t.n_steps, idx_off, f"{name} flipped index byte", "index checksum")

        # A byte flipped inside a frame of a middle chunk (complete file): that frame is
        # refused with its offset; the other frames read normally.
        ci, layer = len(t.chunks) // 2, 2
        c = t.chunks[ci]
        foff = c.frame_offset(layer)
        b = bytearray(data)
        b[foff + c.frames[layer].compressed_size // 2] ^= 0x40
        p = tmp / f"{name}_bitflip.kvt"
        p.write_bytes(bytes(b))
        tag = f"{name} frame bit flip"
        d = kvtrace.Trace(p)
        check(d.complete and d.n_steps == t.n_steps and d.damage is None, f"{tag}: index should still be valid")
        try:
            d.step_layer(c.first_step, layer)
            check(False, f"{tag}: Python read the damaged frame")
        except kvtrace.TraceError as e:
            check(e.offset == foff and "checksum" in str(e) and str(p) in str(e), f"{tag}: Python error {e}")
            print(f"  {tag}: python: {e}")
        v = d.verify()
        check(offset_in(v) == foff, f"{tag}: Python verify() {v!r}, expected offset {foff}")
        q, _ = trace_dump(p, c.first_step, layer, 0, expect_ok=False)
        line = error_line(q, f"{tag}: trace-dump")
        if line:
            check(offset_in(line) == foff and str(p) in line and "checksum" in line, f"{tag}: trace-dump: {line}")
            print(f"  {tag}: kvscope: {line}")
        q, j = trace_info(p)
        line = error_line(q, f"{tag}: trace-info")
        check(line is not None and offset_in(line) == foff, f"{tag}: trace-info error {line!r}, expected offset {foff}")
        check(j is not None and j["complete"] is False and j["steps"] == t.n_steps, f"{tag}: trace-info JSON")
        check_dumps(d, p, [(c.first_step, layer - 1, 3, False), (c.first_step - 1, layer, 3, False)], tag)

        # The same flip in a copy without index and trailer: the scan stops at that chunk.
        p = tmp / f"{name}_bitflip_noindex.kvt"
        p.write_bytes(bytes(b[:idx_off]))
        d = expect_damaged(p, c.first_step, foff, f"{name} frame bit flip, no index", "frame checksum mismatch")
        check_dumps(d, p, [(c.first_step - 1, layer, 6, False)], f"{name} flip no index")

    # ---- frames with valid checksums but bad contents ----------------------------------
    t, src = traces["dense_qkv_w8"]
    data = src.read_bytes()
    check_crafted(t, data, tmp, "dense_qkv_w8", 1, patch_u32(24, value=999), "step 999 where 7 was expected")
    check_crafted(t, data, tmp, "dense_qkv_w8", 2, patch_u32(28, value=7), "unknown step kind 7")
    check_crafted(t, data, tmp, "dense_qkv_w8", 0, patch_u32(28, value=1), "only step 0 is a prefill")
    check_crafted(t, data, tmp, "dense_qkv_w8", 1, patch_u32(36, add=1), "inconsistent query counts")
    check_crafted(t, data, tmp, "dense_qkv_w8", 1, bump_meta_bytes, "section sizes disagree")
    check_crafted(t, data, tmp, "dense_qkv_w8", 1, lambda r: r, "frame size disagrees", raw_size_delta=1)
    check_crafted(t, data, tmp, "dense_qkv_w8", 3, extra_index_value, "unused bytes after the last step record")
    t, src = traces["topk8_w32"]
    data = src.read_bytes()
    # chunk 1 holds decode steps: record = 24-byte step header, then per head (lse, residual, k')
    check_crafted(t, data, tmp, "topk8_w32", 1, repeat_second_key, "top-k key positions not ascending")
    check_crafted(t, data, tmp, "topk8_w32", 1, patch_u32(24 + 24 + 8, value=9), "top-k count out of range")

    for name, seed in (("dense_qkv_w8", 1), ("topk64_qkv_w5", 2)):
        t, src = traces[name]
        differential_mutations(t, src.read_bytes(), tmp, name, 40, seed)
    print("differential mutations: 80 copies, both readers agree" if not failures else "")

    # ---- refused at open ---------------------------------------------------------------
    t, src = traces["topk3_qkv_w0"]
    data = src.read_bytes()
    b = bytearray(data)
    b[8:12] = (2).to_bytes(4, "little")
    p = tmp / "version2.kvt"
    p.write_bytes(bytes(b))
    expect_open_error(p, 8, "version 2", "version 2")
    b = bytearray(data)
    b[0] ^= 0x20
    p = tmp / "badmagic.kvt"
    p.write_bytes(bytes(b))
    expect_open_error(p, 0, "magic", "bad magic")
    b = bytearray(data)
    b[32 + 10] ^= 0x02
    p = tmp / "badjson.kvt"
    p.write_bytes(bytes(b))
    expect_open_error(p, 32, "checksum", "header JSON byte flipped")
    p = tmp / "short.kvt"
    p.write_bytes(data[:20])
    expect_open_error(p, 0, "too short", "20-byte file")

    dt = time.time() - t_start
    print(f"{n_checks} checks, {len(failures)} failed, {dt:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
