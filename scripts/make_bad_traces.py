#!/usr/bin/env python3
"""Writes tests/data/bad-traces/: hand-made damaged .kvt traces, each derived from one small
valid trace, with MANIFEST.json (the error `kvscope trace-info` must report for each) and
README.md. tests/python/test_bad_traces.py runs trace-info on every file listed.

The valid trace is captured with `kvscope trace` on stories260K (llama2.c), so this needs
the kvscope binary ($KVSCOPE_BIN, else build/cli/kvscope) and the model ($KVSCOPE_MODELS,
else ../shared/models). Every defect is planted by editing bytes per docs/trace-format.md
(this script reads the container with its own parser and CRC-32C); checksums are
recomputed wherever the point is that only one field is wrong.

    python3 scripts/make_bad_traces.py                 # writes tests/data/bad-traces/
    python3 scripts/make_bad_traces.py --out DIR
    python3 scripts/make_bad_traces.py --fuzz-seeds tests/fuzz/corpus/trace

--fuzz-seeds writes the seed corpus of tests/fuzz/fuzz_trace.cpp instead: two tiny valid
traces and one "raw frames" variant (file header flag bit 0 set, frames stored
decompressed: the fuzz target compresses them and rebuilds the index). That one needs the
`zstandard` module (the project's .venv has it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FILE_HEADER = 32
CHUNK_HEADER = 48
FRAME_ENTRY = 24
INDEX_ENTRY = 24
TRAILER = 32

# ---------------------------------------------------------------------------------------
# CRC-32C (Castagnoli, reflected 0x82F63B78)
# ---------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283

# ---------------------------------------------------------------------------------------
# Container parser (enough to locate every field)
# ---------------------------------------------------------------------------------------


@dataclass
class Chunk:
    offset: int
    index: int
    first_step: int
    n_steps: int
    n_frames: int
    frames_bytes: int
    table_offset: int
    frames_offset: int
    frames: list = field(default_factory=list)  # [(offset, compressed_size, raw_size, crc)]

    @property
    def end(self) -> int:
        return self.frames_offset + self.frames_bytes


@dataclass
class Trace:
    data: bytes
    json_len: int
    header: dict
    chunks: list
    index_offset: int
    index_len: int
    n_steps: int

    @property
    def data_start(self) -> int:
        return FILE_HEADER + self.json_len

    @property
    def trailer_offset(self) -> int:
        return len(self.data) - TRAILER


def parse(data: bytes) -> Trace:
    assert data[:8] == b"KVSTRACE", "not a trace"
    version, flags, json_len, json_crc = struct.unpack_from("<IIQI", data, 8)
    assert version == 1 and crc32c(data[FILE_HEADER:FILE_HEADER + json_len]) == json_crc
    header = json.loads(data[FILE_HEADER:FILE_HEADER + json_len])
    assert data[-TRAILER:-TRAILER + 8] == b"KVSTEND\0", "the base trace must be complete"
    index_offset, index_len, index_crc, n_steps = struct.unpack_from("<QQII", data, len(data) - TRAILER + 8)
    assert crc32c(data[index_offset:index_offset + index_len]) == index_crc
    chunks = []
    off = FILE_HEADER + json_len
    while off < index_offset:
        assert data[off:off + 4] == b"CHNK"
        idx, first, n, nf, _r, fbytes = struct.unpack_from("<IIIIIQ", data, off + 4)
        c = Chunk(off, idx, first, n, nf, fbytes, off + CHUNK_HEADER, off + CHUNK_HEADER + nf * FRAME_ENTRY)
        fo = c.frames_offset
        for i in range(nf):
            cs, rs, crc = struct.unpack_from("<QQI", data, c.table_offset + i * FRAME_ENTRY)
            c.frames.append((fo, cs, rs, crc))
            fo += cs
        assert fo == c.end
        chunks.append(c)
        off = c.end
    assert off == index_offset
    return Trace(data, json_len, header, chunks, index_offset, index_len, n_steps)


# ---------------------------------------------------------------------------------------
# Byte edits
# ---------------------------------------------------------------------------------------


def put(b: bytearray, off: int, fmt: str, v) -> None:
    struct.pack_into("<" + fmt, b, off, v)


def fix_chunk_header_crc(b: bytearray, chunk_off: int) -> None:
    put(b, chunk_off + 44, "I", crc32c(bytes(b[chunk_off:chunk_off + 44])))


def fix_table_crc(b: bytearray, c: Chunk) -> None:
    put(b, c.offset + 40, "I", crc32c(bytes(b[c.table_offset:c.frames_offset])))
    fix_chunk_header_crc(b, c.offset)


def fix_index_crc(b: bytearray, t: Trace) -> None:
    put(b, len(b) - TRAILER + 24, "I", crc32c(bytes(b[t.index_offset:t.index_offset + t.index_len])))


def replace_header_json(t: Trace, text: bytes) -> bytearray:
    """Same-length replacement of the header JSON with its CRC fixed (offsets unchanged)."""
    assert len(text) == t.json_len, (len(text), t.json_len)
    b = bytearray(t.data)
    b[FILE_HEADER:FILE_HEADER + t.json_len] = text
    put(b, 24, "I", crc32c(text))
    return b


@dataclass
class Case:
    name: str
    what: str
    data: bytes
    expect: list  # substrings of the one stderr line (besides "kvscope: error:", the path, "offset")
    bug: str = ""  # a known reader bug that makes this case fail (reported; remove once fixed)


def make_cases(t: Trace) -> list[Case]:
    d = t.data
    c0, c1, c2 = t.chunks[0], t.chunks[1], t.chunks[2]
    L = len(c0.frames)
    cases = []

    cases.append(Case("truncated_file_header.kvt", "the first 20 bytes only: shorter than the 32-byte file header",
                      d[:20], ["offset 0: file too short for a trace header (20 bytes)"]))
    cut = FILE_HEADER + t.json_len // 2
    cases.append(Case("truncated_in_header.kvt", f"cut at byte {cut}, in the middle of the header JSON",
                      d[:cut], [f"offset 16: header JSON length {t.json_len} exceeds the file"]))
    fo, cs, _, _ = c2.frames[L // 2]
    cut = fo + cs // 2
    cases.append(Case("truncated_mid_chunk.kvt",
                      f"cut at byte {cut}, inside chunk 2's frames (a capture killed while writing it); "
                      "chunks 0-1 stay readable",
                      d[:cut], [f"offset {c2.frames_offset}: truncated chunk (needs {c2.frames_bytes} bytes of frames, "
                                f"{cut - c2.frames_offset} left)"]))
    cases.append(Case("no_index.kvt",
                      f"cut at byte {c2.end}, exactly after chunk 2: every chunk complete, no index and no trailer",
                      d[:c2.end], [f"offset {c2.end}: no index (capture cut short); "
                                   f"{c0.n_steps + c1.n_steps + c2.n_steps} complete steps readable"]))

    b = bytearray(d)
    b[7] ^= 0x20  # 'E' -> 'e'
    cases.append(Case("bad_magic.kvt", "file magic KVSTRACe", bytes(b), ["offset 0: not a kvscope trace (bad magic)"]))

    b = bytearray(d)
    put(b, 8, "I", 2)
    cases.append(Case("version_2.kvt", "file header version 2", bytes(b),
                      ["offset 8: unsupported trace version 2 (this build reads version 1)"]))

    text = d[FILE_HEADER:FILE_HEADER + t.json_len]
    pos = text.index(b'"version":1') + len(b'"version":')
    cases.append(Case("header_json_version_2.kvt", 'header JSON "version": 2 (file header says 1), JSON CRC fixed',
                      bytes(replace_header_json(t, text[:pos] + b"2" + text[pos + 1:])),
                      [f"offset {FILE_HEADER}: header: version: does not match the file header's version"]))
    pos = text.index(b'"model"')
    cases.append(Case("header_json_unparseable.kvt", 'header JSON with a "#" in place of a quote, JSON CRC fixed',
                      bytes(replace_header_json(t, text[:pos] + b"#" + text[pos + 1:])),
                      ["header JSON does not parse"]))

    pos = text.index(b'"rope_theta":') + len(b'"rope_theta":')
    end = pos + min(i for i in (text.find(b",", pos), text.find(b"}", pos)) if i >= 0) - pos
    huge = b"1e999".ljust(end - pos)
    cases.append(Case("header_json_number_overflow.kvt",
                      '"rope_theta": 1e999 (valid JSON grammar, too large for a double), JSON CRC fixed',
                      bytes(replace_header_json(t, text[:pos] + huge + text[end:])),
                      [f"offset {FILE_HEADER}: header JSON does not parse"]))
    pos = text.index(b'"synthetic":false') + len(b'"synthetic":')
    cases.append(Case("header_json_wrong_type.kvt", '"synthetic": 0 (a number where a boolean belongs), JSON CRC fixed',
                      bytes(replace_header_json(t, text[:pos] + b"0    " + text[pos + 5:])),
                      [f"offset {FILE_HEADER}: header: synthetic"]))

    b = bytearray(d)
    fo, cs, _, _ = c1.frames[2]
    b[fo + cs // 2] ^= 0x10
    cases.append(Case("bitflip_in_frame.kvt", "one bit flipped in the middle of chunk 1's layer-2 frame",
                      bytes(b), [f"offset {fo}: chunk 1, layer 2: frame checksum mismatch"]))

    b = bytearray(d)
    b[c1.offset + 8] ^= 0x01  # first_step, header CRC left stale
    cases.append(Case("chunk_header_crc.kvt", "one bit flipped in chunk 1's first_step (header CRC not fixed)",
                      bytes(b), [f"offset {c1.offset}: chunk header checksum mismatch"]))

    b = bytearray(d)
    b[c1.table_offset + 3] ^= 0x01  # a compressed size, table CRC left stale
    cases.append(Case("frame_table_crc.kvt", "one bit flipped in chunk 1's frame table (table CRC not fixed)",
                      bytes(b), [f"offset {c1.table_offset}: frame table checksum mismatch"]))

    b = bytearray(d)
    put(b, c0.offset + 16, "I", L + 1)
    fix_chunk_header_crc(b, c0.offset)
    cases.append(Case("n_frames_mismatch.kvt", f"chunk 0 header says {L + 1} frames for {L} layers, header CRC fixed",
                      bytes(b), [f"offset {c0.offset}: chunk has {L + 1} frames, expected one per layer"]))

    b = bytearray(d)
    _, _, rs, _ = c1.frames[1]
    put(b, c1.table_offset + FRAME_ENTRY + 8, "Q", rs + 1)
    fix_table_crc(b, c1)
    cases.append(Case("frame_raw_size.kvt", "chunk 1's table gives layer 1 a raw size one byte too large, CRCs fixed",
                      bytes(b), [f"offset {c1.frames[1][0]}: chunk 1, layer 1: frame size disagrees with the frame table"]))

    b = bytearray(d)
    entry_at = t.index_offset + 16 + 1 * INDEX_ENTRY
    put(b, entry_at, "Q", len(d) + 4096)
    fix_index_crc(b, t)
    cases.append(Case("index_entry_outside.kvt",
                      "index entry 1 points 4096 bytes past the end of the file, index CRC fixed "
                      "(the reader falls back to scanning and still reads every chunk)",
                      bytes(b), [f"offset {entry_at}: index entry 1 points to offset {len(d) + 4096}"]))

    b = bytearray(d)
    b[t.index_offset + 16 + 12] ^= 0x01  # entry 0's n_steps, index CRC left stale
    cases.append(Case("index_crc.kvt", "one bit flipped in index entry 0 (index CRC not fixed)",
                      bytes(b), [f"offset {t.index_offset}: index checksum mismatch"]))

    b = bytearray(d)
    put(b, len(b) - TRAILER + 28, "I", t.n_steps + 1)
    cases.append(Case("trailer_step_count.kvt", f"trailer says {t.n_steps + 1} steps, the index holds {t.n_steps}",
                      bytes(b), [f"offset {len(d) - TRAILER + 28}: trailer step count disagrees with the index"]))
    return cases


# ---------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------


def kvscope_bin() -> str:
    b = os.environ.get("KVSCOPE_BIN") or str(ROOT / "build" / "cli" / "kvscope")
    if not os.path.exists(b):
        sys.exit(f"kvscope binary not found at {b} (build it, or set KVSCOPE_BIN)")
    return b


def stories_model() -> Path:
    base = Path(os.environ["KVSCOPE_MODELS"]) if os.environ.get("KVSCOPE_MODELS") else ROOT.parent / "shared" / "models"
    m = base / "stories260K" / "stories260K.bin"
    if not m.exists():
        sys.exit(f"stories260K not found at {m} (set KVSCOPE_MODELS)")
    return m


def capture(out: Path, n: int, spc: int, extra: list[str]) -> bytes:
    cmd = [kvscope_bin(), "trace", "--model", str(stories_model()), "--prompt", "Once upon a time", "-n", str(n),
           "--steps-per-chunk", str(spc), "--threads", "1", "-q", "--out", str(out)] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out.read_bytes()


def raw_frames_variant(t: Trace) -> bytes:
    """Frames stored decompressed, flag bit 0 set (see tests/fuzz/fuzz_trace.cpp)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    out = bytearray(t.data[:t.data_start])
    put(out, 12, "I", 1)
    for c in t.chunks:
        raws = [dctx.decompress(t.data[fo:fo + cs], max_output_size=rs) for fo, cs, rs, _ in c.frames]
        head = bytearray(t.data[c.offset:c.offset + CHUNK_HEADER])
        table = bytearray()
        for r in raws:
            table += struct.pack("<QQII", len(r), len(r), crc32c(r), 0)
        put(head, 24, "Q", sum(len(r) for r in raws))
        put(head, 40, "I", crc32c(bytes(table)))
        put(head, 44, "I", crc32c(bytes(head[:44])))
        out += head + table + b"".join(raws)
    return bytes(out)  # no index: the fuzz target rebuilds it


def readme(cases: list[Case], base_desc: str, base_size: int) -> str:
    lines = [
        "# Bad traces",
        "",
        "Hand-made damaged `.kvt` traces (docs/trace-format.md), each derived from `valid.kvt`",
        f"({base_desc}, {base_size} bytes). Written by `scripts/make_bad_traces.py`; do not edit by hand.",
        "",
        "`tests/python/test_bad_traces.py` runs `kvscope trace-info FILE` on each. Contract: exit",
        "status 1 (not a signal), exactly one stderr line, starting `kvscope: error:`, naming the file",
        "and a byte offset, and containing the expected text below (also in `MANIFEST.json`).",
        "`valid.kvt` is the control: exit status 0, nothing on stderr.",
        "",
        "| file | what is wrong | expected error (after `kvscope: error: <file>: `) |",
        "|---|---|---|",
    ]
    for c in cases:
        lines.append(f"| `{c.name}` | {c.what} | `{'` … `'.join(c.expect)}`{' (*)' if c.bug else ''} |")
    bugs = [c for c in cases if c.bug]
    if bugs:
        lines += ["", "(*) Known reader bug, reported; the case fails until it is fixed:", ""]
        lines += [f"- `{c.name}`: {c.bug}." for c in bugs]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "bad-traces")
    ap.add_argument("--fuzz-seeds", type=Path, help="write the fuzz_trace seed corpus to this folder instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kvscope_bad_traces_"))
    try:
        if args.fuzz_seeds:
            args.fuzz_seeds.mkdir(parents=True, exist_ok=True)
            dense = capture(tmp / "d.kvt", 3, 1, ["--prefill-window", "2"])
            topk = capture(tmp / "t.kvt", 2, 1, ["--topk", "3", "--with-qkv", "--prefill-window", "2"])
            seeds = {"dense_n3_spc1.kvt": dense, "topk3_qkv_n2_spc1.kvt": topk,
                     "dense_n3_raw_frames.kvt": raw_frames_variant(parse(dense))}
            for name, data in seeds.items():
                (args.fuzz_seeds / name).write_bytes(data)
                print(f"{args.fuzz_seeds / name}: {len(data)} bytes")
            return 0
        base_desc = "stories260K, prompt \"Once upon a time\", `-n 4 --steps-per-chunk 1`, dense"
        base = capture(tmp / "valid.kvt", 4, 1, [])
        t = parse(base)
        assert len(t.chunks) == 4 and len(base) < 64 * 1024
        cases = make_cases(t)
        args.out.mkdir(parents=True, exist_ok=True)
        for old in args.out.glob("*.kvt"):
            old.unlink()
        (args.out / "valid.kvt").write_bytes(base)
        manifest = {"valid": "valid.kvt", "cases": []}
        for c in cases:
            assert len(c.data) < 64 * 1024
            (args.out / c.name).write_bytes(c.data)
            entry = {"file": c.name, "what": c.what, "expect": c.expect}
            if c.bug:
                entry["known_bug"] = c.bug
            manifest["cases"].append(entry)
        (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (args.out / "README.md").write_text(readme(cases, base_desc, len(base)))
        print(f"wrote {len(cases)} bad traces + valid.kvt to {args.out}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
