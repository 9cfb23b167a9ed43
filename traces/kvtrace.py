"""kvtrace: a pure-numpy reader for kvscope attention traces (.kvt, docs/trace-format.md).

Only numpy and the `zstandard` module are needed; nothing of kvscope's C++ code is used,
so this reader is also an independent check of the C++ one (traces/reader.cpp).

    import sys; sys.path.insert(0, "<repo>/traces"); import kvtrace
    t = kvtrace.Trace("run.kvt")
    t.info.n_layers, t.n_steps, t.complete, t.damage
    sl = t.step_layer(5, 2)               # step 5, layer 2
    sl.row(0, 3).probs                    # head 3's probabilities (np.float16)
    t.dense_row(5, 2, 3)                  # float32 over keys 0..qpos (top-k: zeros elsewhere)
    for sl in t.iter_layer(2): ...        # every step of layer 2, one frame decode per chunk

Reading rules are those of the C++ reader:

* Opening checks the file header and the header JSON (CRC, format, version, the fields the
  reader needs). A bad header raises TraceError.
* A file with a valid trailer and index is `complete`; its chunk headers and frame tables
  are checked (CRCs, sizes, sequence) at open, the frames' own CRCs when they are read.
* Without a valid trailer/index (a capture that was killed, or damage there) the chunks
  are scanned from the end of the header JSON; the scan stops at the first chunk that is
  incomplete or fails a check -- header, table or any frame CRC -- and keeps the chunks
  before it. `damage` then says "<file>: offset N: what" (`damage_offset` is N).
* Reading a frame always checks its CRC, its decompressed size and its section layout
  and raises TraceError("<file>: offset N: chunk c, layer l: ...") when one is wrong.

CRC-32C choice: frames are checked only when they are read (plus every frame while
scanning, as above); `verify()` reads them all. The CRC itself is vectorised with numpy:
the bytes are cut into many 64-byte lanes whose CRC registers advance together two bytes
per numpy step (a 65536-entry table built from the usual 256-entry one), then the lane
results are folded pairwise with precomputed "append 2^i zero bytes" operators (a CRC
register is GF(2)-linear in its input). About 100-250 MB/s on one core; inputs under
8 KiB use the plain byte-at-a-time table loop.
"""
from __future__ import annotations

import bisect
import json
import mmap
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import numpy as np

try:  # Debian's python3-zstandard, or the PyPI package of the same name
    import zstandard as _zstd
except ImportError:  # pragma: no cover - reported when a frame is first read
    _zstd = None

__all__ = ["Trace", "TraceError", "TraceInfo", "ChunkInfo", "FrameEntry", "Frame", "StepLayer", "Row", "crc32c",
           "VERSION"]

VERSION = 1
FILE_MAGIC = b"KVSTRACE"
CHUNK_MAGIC = b"CHNK"
INDEX_MAGIC = b"KVSINDEX"
END_MAGIC = b"KVSTEND\0"
FILE_HEADER_BYTES = 32
CHUNK_HEADER_BYTES = 48
FRAME_ENTRY_BYTES = 24
INDEX_ENTRY_BYTES = 24
TRAILER_BYTES = 32
PREFILL, DECODE = 0, 1
_MAX_RAW = 1 << 34  # same cap on a frame's decompressed size as the C++ reader

# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class TraceError(Exception):
    """A bad or damaged trace. str() is "<file>: offset N: what" (or "<file>: what")."""

    def __init__(self, path: str, offset: Optional[int], what: str):
        self.path = path
        self.offset = offset
        self.what = what
        super().__init__(f"{path}: offset {offset}: {what}" if offset is not None else f"{path}: {what}")


# --------------------------------------------------------------------------------------
# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and xor-out 0xFFFFFFFF)
# --------------------------------------------------------------------------------------


def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> np.uint32(1)) ^ np.uint32(0x82F63B78), t >> np.uint32(1)).astype(np.uint32)
    return t


_TABLE = _make_table()
_TABLE_LIST = [int(x) for x in _TABLE]
_BYTE_VALUES = np.arange(256, dtype=np.uint32)
_M8 = np.uint32(0xFF)
_S8, _S16, _S24 = np.uint32(8), np.uint32(16), np.uint32(24)


def _raw_scalar(reg: int, data) -> int:
    """CRC register after feeding `data` (no init / xor-out), one table lookup per byte."""
    tab = _TABLE_LIST
    for b in bytes(data):
        reg = tab[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _op_tables(cols: np.ndarray) -> np.ndarray:
    """A GF(2)-linear map of 32-bit registers, given by the images of its 32 unit vectors,
    as 4 byte-indexed tables: f(x) = T0[x0] ^ T1[x1] ^ T2[x2] ^ T3[x3]."""
    tabs = np.zeros((4, 256), dtype=np.uint32)
    for byte in range(4):
        for bit in range(8):
            sel = ((_BYTE_VALUES >> np.uint32(bit)) & np.uint32(1)).astype(bool)
            tabs[byte][sel] ^= cols[8 * byte + bit]
    return tabs


def _apply(tabs: np.ndarray, x: np.ndarray) -> np.ndarray:
    return tabs[0][x & _M8] ^ tabs[1][(x >> _S8) & _M8] ^ tabs[2][(x >> _S16) & _M8] ^ tabs[3][x >> _S24]


# _ZERO_OPS[i]: the register map of feeding 2^i zero bytes (built on demand by squaring).
_unit = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32)).astype(np.uint32)
_ZERO_COLS = [(_TABLE[_unit & _M8] ^ (_unit >> _S8)).astype(np.uint32)]
_ZERO_OPS = [_op_tables(_ZERO_COLS[0])]


def _zero_op(i: int) -> np.ndarray:
    while len(_ZERO_OPS) <= i:
        cols = _apply(_ZERO_OPS[-1], _ZERO_COLS[-1])  # square the operator: f(f(e_k))
        _ZERO_COLS.append(cols)
        _ZERO_OPS.append(_op_tables(cols))
    return _ZERO_OPS[i]


def _shift(reg: int, n: int) -> int:
    """Register after feeding n zero bytes."""
    x = np.array([reg], dtype=np.uint32)
    i = 0
    while n:
        if n & 1:
            x = _apply(_zero_op(i), x)
        n >>= 1
        i += 1
    return int(x[0])


# Two bytes per step: T16[x] is the register contribution of the 16 bits x (register low
# half xor the next two data bytes, little-endian), so reg' = T16[(reg ^ w) & 0xFFFF] ^ (reg >> 16).
_T1 = ((_TABLE >> _S8) ^ _TABLE[_TABLE & _M8]).astype(np.uint32)
_x16 = np.arange(65536, dtype=np.uint32)
_T16 = (_T1[_x16 & _M8] ^ _TABLE[_x16 >> _S8]).astype(np.uint32)
del _x16


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of a bytes-like object (continuing from `crc`, like the C++ crc32c())."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    n = buf.size
    reg = (~crc) & 0xFFFFFFFF
    if n < 8192:
        return (~_raw_scalar(reg, buf.tobytes())) & 0xFFFFFFFF
    lane = 64  # bytes per lane: a power of two
    m = 1 << (-(-n // lane) - 1).bit_length()  # lanes: a power of two >= n / lane
    # Zero bytes in front do not move a zero register, so pad at the front and start every
    # lane at 0; the initial register is added back at the end: R(reg, d) = Z^n(reg) ^ R(0, d).
    padded = np.zeros(m * lane, dtype=np.uint8)
    padded[m * lane - n:] = buf
    words = np.ascontiguousarray(padded.view("<u2").reshape(m, lane // 2).T)  # [lane/2][m]
    del padded
    c = np.zeros(m, dtype=np.uint32)
    idx = np.empty(m, dtype=np.uint32)
    tmp = np.empty(m, dtype=np.uint32)
    m16, s16 = np.uint32(0xFFFF), np.uint32(16)
    for j in range(lane // 2):
        np.bitwise_xor(c, words[j], out=idx)
        np.bitwise_and(idx, m16, out=idx)
        _T16.take(idx, out=tmp)
        np.right_shift(c, s16, out=c)
        np.bitwise_xor(c, tmp, out=c)
    level = lane.bit_length() - 1
    while c.size > 1:  # fold neighbours: R(0, A||B) = Z^len(B)(R(0, A)) ^ R(0, B)
        c = _apply(_zero_op(level), c[0::2]) ^ c[1::2]
        level += 1
    raw = int(c[0]) ^ _shift(reg, n)
    return (~raw) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceInfo:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    group: int
    mode: str  # "dense" | "topk"
    topk: int
    prefill_window: int
    with_qkv: bool
    prompt_len: int
    synthetic: bool


@dataclass(frozen=True)
class FrameEntry:
    compressed_size: int
    raw_size: int
    crc: int


@dataclass
class ChunkInfo:
    offset: int  # file offset of the chunk header
    bytes: int  # header + table + frames
    frames_offset: int  # file offset of frame 0
    index: int
    first_step: int
    n_steps: int
    frames: List[FrameEntry] = field(default_factory=list)

    def frame_offset(self, layer: int) -> int:
        return self.frames_offset + sum(f.compressed_size for f in self.frames[:layer])


class Row:
    """One query head's stored attention row. Dense: probs[j] is key j's probability
    (j <= qpos). Top-k: probs[i] belongs to key keys[i] (ascending); residual = mass not kept."""

    __slots__ = ("qpos", "lse", "residual", "probs", "_keys", "head")

    def __init__(self, qpos, lse, residual, probs, keys, head):
        self.qpos = qpos
        self.lse = lse
        self.residual = residual
        self.probs = probs
        self._keys = keys
        self.head = head

    @property
    def n(self) -> int:
        return int(self.probs.size)

    @property
    def keys(self) -> np.ndarray:
        if self._keys is None:
            return np.arange(self.probs.size, dtype=np.uint32)
        return self._keys

    def dense(self) -> np.ndarray:
        """float32 over keys 0..qpos (top-k: zeros except the kept keys)."""
        out = np.zeros(self.qpos + 1, dtype=np.float32)
        out[self.keys] = self.probs.astype(np.float32)
        return out

    def __repr__(self):
        return f"Row(head={self.head}, qpos={self.qpos}, lse={self.lse:.6g}, n={self.n}, residual={self.residual:.6g})"


class StepLayer:
    """One layer of one step. rows: n_rows x n_heads Row objects, row-major (row(r, h));
    colsum: prefill only, float32 [n_heads, n_queries]; q: float16 [n_rows, H, head_dim],
    k / v: float16 [n_queries, H_kv, head_dim] (with_qkv only, else None)."""

    __slots__ = ("step", "layer", "kind_code", "n_queries", "first_pos", "n_rows", "token", "colsum", "lse",
                 "residual", "counts", "rows", "q", "k", "v", "n_heads")

    @property
    def kind(self) -> str:
        return "prefill" if self.kind_code == PREFILL else "decode"

    @property
    def first_row_pos(self) -> int:
        return self.first_pos + self.n_queries - self.n_rows

    def row(self, r: int, h: int) -> Row:
        if not (0 <= r < self.n_rows and 0 <= h < self.n_heads):
            raise IndexError(f"step {self.step}: row {r}, head {h} out of range ({self.n_rows} rows, {self.n_heads} heads)")
        return self.rows[r * self.n_heads + h]

    def __repr__(self):
        return (f"StepLayer(step={self.step}, layer={self.layer}, kind={self.kind}, n_queries={self.n_queries}, "
                f"first_pos={self.first_pos}, n_rows={self.n_rows}, token={self.token})")


@dataclass
class Frame:
    """A decoded frame: one layer across the steps of one chunk."""
    chunk: int
    layer: int
    steps: List[StepLayer]
    halves: np.ndarray  # float16, all of the frame's f16 values in stored order
    index: np.ndarray  # uint32, restored top-k key positions


# --------------------------------------------------------------------------------------
# Header JSON helpers
# --------------------------------------------------------------------------------------


def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _u32_field(path: str, header: dict, obj: str, key: str) -> int:
    o = header.get(obj)
    if not isinstance(o, dict) or not _is_uint(o.get(key)):
        raise TraceError(path, None, f"header: {obj}.{key}: missing or not a non-negative integer")
    if o[key] > (1 << 24):
        raise TraceError(path, None, f"header: {obj}.{key}: value out of range")
    return int(o[key])


# --------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------


class Trace:
    """A .kvt trace, memory-mapped. Use as a context manager or call close()."""

    def __init__(self, path, cache_frames: int = 8):
        self.path = os.fspath(path)
        self._cache: "OrderedDict[tuple, Frame]" = OrderedDict()
        self._cache_frames = max(0, int(cache_frames))
        self._mm = None
        try:
            fh = open(self.path, "rb")
        except OSError as e:
            raise TraceError(self.path, None, f"cannot open: {e.strerror}") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size > 0:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._mm) if self._mm is not None else memoryview(b"")
        self.file_size = size
        self.chunks: List[ChunkInfo] = []
        self.n_steps = 0
        self.complete = False
        self.damage: Optional[str] = None
        self.damage_offset: Optional[int] = None
        try:
            self._read_header()
            if not self._load_index():
                self._scan_chunks()
        except Exception:
            self.close()
            raise
        self._first_steps = [c.first_step for c in self.chunks]

    # -- context / lifetime -----------------------------------------------------------
    def close(self) -> None:
        self._cache.clear()
        if self._mm is not None:
            try:
                self._buf.release()
                self._mm.close()
            except BufferError:  # a caller still holds a view; the map goes with it
                pass
            self._mm = None
            self._buf = memoryview(b"")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        i = self.info
        return (f"Trace({self.path!r}: {i.n_layers} layers, {i.n_heads}/{i.n_kv_heads} heads, {i.mode}"
                f"{' k=%d' % i.topk if i.mode == 'topk' else ''}{', qkv' if i.with_qkv else ''}, "
                f"{self.n_steps} steps in {len(self.chunks)} chunks, {'complete' if self.complete else 'INCOMPLETE'})")

    # -- low-level access -------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return struct.unpack_from("<I", self._buf, off)[0]

    def _u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self._buf, off)[0]

    def _crc(self, off: int, n: int) -> int:
        return crc32c(self._buf[off:off + n])

    def _err(self, offset: Optional[int], what: str) -> TraceError:
        return TraceError(self.path, offset, what)

    def _set_damage(self, offset: int, what: str) -> None:
        if self.damage is None:
            self.damage = f"{self.path}: offset {offset}: {what}"
            self.damage_offset = offset

    # -- header ---------------------------------------------------------------------
    def _read_header(self) -> None:
        size, b = self.file_size, self._buf
        if size < FILE_HEADER_BYTES:
            raise self._err(0, f"file too short for a trace header ({size} bytes)")
        if bytes(b[0:8]) != FILE_MAGIC:
            raise self._err(0, "not a kvscope trace (bad magic)")
        version = self._u32(8)
        if version != VERSION:
            raise self._err(8, f"unsupported trace version {version} (this reader reads version {VERSION})")
        json_len = self._u64(16)
        if json_len > size - FILE_HEADER_BYTES:
            raise self._err(16, f"header JSON length {json_len} exceeds the file")
        if self._crc(FILE_HEADER_BYTES, json_len) != self._u32(24):
            raise self._err(FILE_HEADER_BYTES, "header JSON checksum mismatch")
        raw = bytes(b[FILE_HEADER_BYTES:FILE_HEADER_BYTES + json_len])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._err(FILE_HEADER_BYTES + e.start, f"header JSON is not UTF-8: {e.reason}") from None
        try:
            header = json.loads(text)
        except json.JSONDecodeError as e:
            at = FILE_HEADER_BYTES + len(text[:e.pos].encode("utf-8"))
            raise self._err(at, f"header JSON does not parse: {e.msg}") from None
        if not isinstance(header, dict) or header.get("format") != "kvscope-trace":
            raise self._err(FILE_HEADER_BYTES, 'header: format: expected "kvscope-trace"')
        v = header.get("version")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != VERSION:
            raise self._err(FILE_HEADER_BYTES, "header: version: does not match the file header's version")
        p = self.path
        n_layers = _u32_field(p, header, "model", "n_layers")
        n_heads = _u32_field(p, header, "model", "n_heads")
        n_kv = _u32_field(p, header, "model", "n_kv_heads")
        hd = _u32_field(p, header, "model", "head_dim")
        if n_layers == 0 or n_heads == 0 or n_kv == 0 or n_heads % n_kv != 0 or hd == 0:
            raise self._err(None, "header: model: inconsistent layer/head counts")
        cap = header.get("capture")
        if not isinstance(cap, dict):
            raise self._err(None, "header: capture: missing")
        mode = cap.get("mode", "")
        if mode not in ("dense", "topk"):
            raise self._err(None, f"header: capture.mode: '{mode}' is not dense or topk")
        topk = _u32_field(p, header, "capture", "topk")
        window = _u32_field(p, header, "capture", "prefill_window")
        if not isinstance(cap.get("with_qkv"), bool):
            raise self._err(None, "header: capture.with_qkv: missing or not a boolean")
        ids = header.get("prompt_ids")
        if not isinstance(ids, list):
            raise self._err(None, "header: prompt_ids: missing")
        self.header = header
        self.info = TraceInfo(n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=hd, group=n_heads // n_kv,
                              mode=mode, topk=topk, prefill_window=window, with_qkv=cap["with_qkv"],
                              prompt_len=len(ids), synthetic=bool(header.get("synthetic", False)))
        self.prompt_ids = [int(x) for x in ids]
        self.data_start = FILE_HEADER_BYTES + json_len

    # -- chunks ---------------------------------------------------------------------
    def _parse_chunk_at(self, off: int):
        """(ChunkInfo, None, None) or (None, offset, why)."""
        size, b = self.file_size, self._buf
        if size - off < CHUNK_HEADER_BYTES:
            return None, off, "truncated chunk header"
        if bytes(b[off:off + 4]) != CHUNK_MAGIC:
            return None, off, "bad chunk magic"
        if self._crc(off, 44) != self._u32(off + 44):
            return None, off, "chunk header checksum mismatch"
        index, first_step, n_steps, n_frames = struct.unpack_from("<4I", b, off + 4)
        frames_bytes = self._u64(off + 24)
        if n_frames != self.info.n_layers:
            return None, off, f"chunk has {n_frames} frames, expected one per layer"
        if n_steps == 0:
            return None, off, "chunk holds no steps"
        table_bytes = n_frames * FRAME_ENTRY_BYTES
        t = off + CHUNK_HEADER_BYTES
        if size - t < table_bytes:
            return None, t, "truncated frame table"
        if self._crc(t, table_bytes) != self._u32(off + 40):
            return None, t, "frame table checksum mismatch"
        frames, total = [], 0
        for i in range(n_frames):
            csize, rsize, crc = struct.unpack_from("<QQI", b, t + i * FRAME_ENTRY_BYTES)
            if csize > size or total > size:
                return None, t + i * FRAME_ENTRY_BYTES, "frame size out of range"
            total += csize
            frames.append(FrameEntry(csize, rsize, crc))
        if total != frames_bytes:
            return None, off, "frame sizes do not add up to the chunk's frame bytes"
        fo = t + table_bytes
        if size - fo < frames_bytes:
            return None, fo, f"truncated chunk (needs {frames_bytes} bytes of frames, {size - fo} left)"
        return ChunkInfo(offset=off, bytes=fo + frames_bytes - off, frames_offset=fo, index=index,
                         first_step=first_step, n_steps=n_steps, frames=frames), None, None

    def _load_index(self) -> bool:
        size, b, data_start = self.file_size, self._buf, self.data_start
        if size < data_start + TRAILER_BYTES:
            return False
        tr = size - TRAILER_BYTES
        if bytes(b[tr:tr + 8]) != END_MAGIC:
            return False  # no trailer: a cut-short capture, scan

        def damaged(at, what):
            self._set_damage(at, what)
            self.chunks = []
            return False

        idx_off, idx_len, idx_crc, tr_steps = struct.unpack_from("<QQII", b, tr + 8)
        if idx_off < data_start or idx_off > tr or idx_len != tr - idx_off:
            return damaged(tr + 8, f"trailer: index [{idx_off}, +{idx_len}) does not end at the trailer")
        if self._crc(idx_off, idx_len) != idx_crc:
            return damaged(idx_off, "index checksum mismatch")
        if idx_len < 16 or bytes(b[idx_off:idx_off + 8]) != INDEX_MAGIC:
            return damaged(idx_off, "bad index magic")
        n = self._u32(idx_off + 8)
        if idx_len != 16 + n * INDEX_ENTRY_BYTES:
            return damaged(idx_off + 8, "index length disagrees with its entry count")
        next_step, expect = 0, data_start
        for i in range(n):
            at = idx_off + 16 + i * INDEX_ENTRY_BYTES
            coff, e_first, e_steps, e_bytes = struct.unpack_from("<QIIQ", b, at)
            if coff != expect or coff >= idx_off:
                return damaged(at, f"index entry {i} points to offset {coff} "
                                   f"(outside the chunk area or not where the previous chunk ends)")
            c, bad_at, why = self._parse_chunk_at(coff)
            if c is None:
                return damaged(bad_at, why)
            if (c.first_step != e_first or c.n_steps != e_steps or c.bytes != e_bytes or c.first_step != next_step
                    or c.index != i):
                return damaged(at, f"index entry {i} disagrees with its chunk header")
            next_step += c.n_steps
            expect = coff + c.bytes
            self.chunks.append(c)
        if expect != idx_off:
            return damaged(expect, "bytes between the last chunk and the index")
        if tr_steps != next_step:
            return damaged(tr + 28, "trailer step count disagrees with the index")
        self.n_steps = next_step
        self.complete = True
        return True

    def _scan_chunks(self) -> None:
        self.chunks = []
        size, b = self.file_size, self._buf
        off, next_step = self.data_start, 0
        while off < size:
            if size - off >= 8 and bytes(b[off:off + 8]) == INDEX_MAGIC:
                self._set_damage(off, "index present but the trailer is damaged")
                break
            c, bad_at, why = self._parse_chunk_at(off)
            if c is None:
                self._set_damage(bad_at, why)
                break
            ok = c.first_step == next_step and c.index == len(self.chunks)
            if ok:
                fo = c.frames_offset
                for layer, fe in enumerate(c.frames):
                    if self._crc(fo, fe.compressed_size) != fe.crc:
                        self._set_damage(fo, f"frame checksum mismatch (chunk {c.index}, layer {layer})")
                        ok = False
                        break
                    fo += fe.compressed_size
            if not ok:
                self._set_damage(off, "chunk out of sequence")
                break
            next_step += c.n_steps
            off += c.bytes
            self.chunks.append(c)
        self._set_damage(off, f"no index (capture cut short); {next_step} complete steps readable")
        self.n_steps = next_step

    def chunk_of_step(self, step: int) -> Optional[int]:
        """Index of the chunk holding `step`, or None."""
        i = bisect.bisect_right(self._first_steps, step) - 1
        if i < 0 or step >= self.chunks[i].first_step + self.chunks[i].n_steps:
            return None
        return i

    # -- frames -----------------------------------------------------------------------
    def frame(self, chunk: int, layer: int) -> Frame:
        """Decodes one frame (layer `layer` of chunk `chunk`); recent frames are cached."""
        key = (chunk, layer)
        f = self._cache.get(key)
        if f is not None:
            self._cache.move_to_end(key)
            return f
        f = self._read_frame(chunk, layer)
        if self._cache_frames:
            self._cache[key] = f
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
        return f

    def _read_frame(self, ci: int, layer: int) -> Frame:
        info = self.info
        if not (0 <= ci < len(self.chunks)):
            raise self._err(None, f"chunk {ci} does not exist")
        if not (0 <= layer < info.n_layers):
            raise self._err(None, f"layer {layer} does not exist")
        c = self.chunks[ci]
        fe = c.frames[layer]
        foff = c.frame_offset(layer)
        where = f"chunk {ci}, layer {layer}: "

        def bad(what):
            return self._err(foff, where + what)

        src = self._buf[foff:foff + fe.compressed_size]
        if crc32c(src) != fe.crc:
            raise bad("frame checksum mismatch")
        if _zstd is None:
            raise bad("cannot decompress: the zstandard module is not installed")
        try:
            content = _zstd.frame_content_size(src)
        except _zstd.ZstdError:
            content = -2
        if content < 0 or content != fe.raw_size or fe.raw_size > _MAX_RAW:
            raise bad("frame size disagrees with the frame table")
        try:
            raw = _zstd.ZstdDecompressor().decompress(src, max_output_size=fe.raw_size)
        except _zstd.ZstdError as e:
            raise bad(f"zstd: {e}") from None
        if len(raw) != fe.raw_size:
            raise bad("zstd: short frame")
        return self._parse_frame(ci, layer, c, raw, bad)

    def _parse_frame(self, ci: int, layer: int, c: ChunkInfo, raw: bytes, bad) -> Frame:
        info = self.info
        H, Hkv, hd = info.n_heads, info.n_kv_heads, info.head_dim
        topk = info.mode == "topk"
        if len(raw) < 24:
            raise bad("frame too short")
        meta_bytes, n_half, n_index = struct.unpack_from("<QQQ", raw, 0)
        body = len(raw) - 24
        if meta_bytes > body or n_half > body // 2 or n_index > body // 4 or meta_bytes + 2 * n_half + 4 * n_index != body:
            raise bad("section sizes disagree with the frame size")
        hp = 24 + meta_bytes
        planes = np.frombuffer(raw, dtype=np.uint8, count=2 * n_half, offset=hp)
        halves = (planes[:n_half].astype(np.uint16) | (planes[n_half:].astype(np.uint16) << np.uint16(8))).view(np.float16)
        deltas = np.frombuffer(raw, dtype="<u4", count=n_index, offset=hp + 2 * n_half)
        index = np.cumsum(deltas, dtype=np.uint32)  # wrapping prefix sum (uint32 arithmetic wraps)
        halves.flags.writeable = False
        index.flags.writeable = False

        mo, ho, io = 24, 0, 0  # offsets into raw (meta), halves, index
        meta_end = 24 + meta_bytes

        def need_meta(n):
            if n > meta_end - mo:
                raise bad(f"step records overrun the meta section at byte {mo - 24}")

        def need_half(n):
            if n > n_half - ho:
                raise bad("step records overrun the f16 section")

        rec_dtype = np.dtype([("lse", "<f4"), ("residual", "<f4"), ("n", "<u4")])
        steps = []
        for s in range(c.n_steps):
            need_meta(24)
            step, kind, n_queries, first_pos, n_rows, token = struct.unpack_from("<6I", raw, mo)
            mo += 24
            if step != c.first_step + s:
                raise bad(f"step {step} where {c.first_step + s} was expected")
            if kind > 1:
                raise bad(f"step {step}: unknown step kind {kind}")
            pre = kind == PREFILL
            if pre != (step == 0):
                raise bad(f"step {step}: only step 0 is a prefill")
            if (pre and (n_rows > n_queries or first_pos != 0 or n_queries > (1 << 24))) or \
                    (not pre and (n_queries != 1 or n_rows != 1 or first_pos != info.prompt_len + step - 1)):
                raise bad(f"step {step}: inconsistent query counts or positions")
            sl = StepLayer()
            sl.step, sl.layer, sl.kind_code, sl.n_queries, sl.first_pos, sl.n_rows = step, layer, kind, n_queries, first_pos, n_rows
            sl.token = token - (1 << 32) if token >= (1 << 31) else token
            sl.n_heads = H
            sl.colsum = None
            if pre:
                need_meta(4 * H * n_queries)
                sl.colsum = np.frombuffer(raw, dtype="<f4", count=H * n_queries, offset=mo).reshape(H, n_queries).copy()
                mo += 4 * H * n_queries
            n_row_heads = n_rows * H
            frp = first_pos + n_queries - n_rows
            qpos = np.repeat(np.arange(frp, frp + n_rows, dtype=np.int64), H)
            if topk:
                need_meta(12 * n_row_heads)
                rec = np.frombuffer(raw, dtype=rec_dtype, count=n_row_heads, offset=mo)
                mo += 12 * n_row_heads
                lse = rec["lse"].astype(np.float32)
                residual = rec["residual"].astype(np.float32)
                counts = rec["n"].astype(np.int64)
                bad_count = (counts > qpos + 1) | (counts > info.topk)
                if bad_count.any():
                    raise bad(f"step {step}: top-k count out of range")
                total = int(counts.sum())
                if total > n_index - io:
                    raise bad("step records overrun the index section")
                keys_all = index[io:io + total]
                starts = io + np.concatenate(([0], np.cumsum(counts)[:-1])) if n_row_heads else np.zeros(0, np.int64)
                if total:
                    k64 = keys_all.astype(np.int64)
                    limit = np.repeat(qpos, counts)
                    ascending = np.ones(total, dtype=bool)
                    ascending[1:] = k64[1:] > k64[:-1]
                    first = starts - io
                    ascending[first[first < total]] = True  # a row's first key has no predecessor
                    wrong = (k64 > limit) | ~ascending
                    if wrong.any():
                        at = int(np.argmax(wrong))  # first offending key; name its row's qpos
                        raise bad(f"step {step}: top-k key positions not ascending within 0..{int(limit[at])}")
                io += total
                n_probs = counts
            else:
                need_meta(4 * n_row_heads)
                lse = np.frombuffer(raw, dtype="<f4", count=n_row_heads, offset=mo).astype(np.float32)
                mo += 4 * n_row_heads
                residual = np.zeros(n_row_heads, dtype=np.float32)
                counts = None
                starts = None
                n_probs = qpos + 1
            need_half(int(n_probs.sum()))
            rows = []
            hstart = ho
            for i in range(n_row_heads):
                n = int(n_probs[i])
                keys = None if not topk else index[int(starts[i]):int(starts[i]) + n]
                rows.append(Row(int(qpos[i]), float(lse[i]), float(residual[i]), halves[hstart:hstart + n], keys, i % H))
                hstart += n
            ho = hstart
            sl.rows = rows
            sl.lse = lse.reshape(n_rows, H)
            sl.residual = residual.reshape(n_rows, H) if topk else None
            sl.counts = counts.reshape(n_rows, H) if topk else None
            sl.q = sl.k = sl.v = None
            if info.with_qkv:
                nq, nk = n_rows * H * hd, n_queries * Hkv * hd
                need_half(nq + 2 * nk)
                sl.q = halves[ho:ho + nq].reshape(n_rows, H, hd)
                sl.k = halves[ho + nq:ho + nq + nk].reshape(n_queries, Hkv, hd)
                sl.v = halves[ho + nq + nk:ho + nq + 2 * nk].reshape(n_queries, Hkv, hd)
                ho += nq + 2 * nk
            steps.append(sl)
        if mo != meta_end or ho != n_half or io != n_index:
            raise bad("unused bytes after the last step record")
        return Frame(chunk=ci, layer=layer, steps=steps, halves=halves, index=index)

    # -- convenience ------------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        if not (0 <= layer < self.info.n_layers):
            raise self._err(None, f"layer {layer} does not exist (trace has {self.info.n_layers})")

    def step_layer(self, step: int, layer: int) -> StepLayer:
        """The records of layer `layer` at step `step`."""
        self._check_layer(layer)
        ci = self.chunk_of_step(step)
        if ci is None:
            raise self._err(None, f"step {step} is not in the trace ({self.n_steps} steps)")
        return self.frame(ci, layer).steps[step - self.chunks[ci].first_step]

    def iter_layer(self, layer: int, start: int = 0, stop: Optional[int] = None) -> Iterator[StepLayer]:
        """Steps start..stop-1 (default: all) of one layer, decoding each chunk's frame once."""
        self._check_layer(layer)
        stop = self.n_steps if stop is None else min(stop, self.n_steps)
        for ci, c in enumerate(self.chunks):
            if c.first_step + c.n_steps <= start or c.first_step >= stop:
                continue
            f = self._read_frame(ci, layer) if self._cache_frames == 0 else self.frame(ci, layer)
            for sl in f.steps:
                if start <= sl.step < stop:
                    yield sl

    def dense_row(self, step: int, layer: int, head: int, row: int = -1) -> np.ndarray:
        """float32 probabilities over keys 0..qpos of one stored row (default: the step's
        last stored row, i.e. the decode query or the prompt's last token); top-k: zeros
        except the kept keys."""
        sl = self.step_layer(step, layer)
        if sl.n_rows == 0:
            raise self._err(None, f"step {step}: no stored rows (prefill window 0)")
        r = row if row >= 0 else sl.n_rows + row
        return sl.row(r, head).dense()

    def tokens(self) -> np.ndarray:
        """Token ids at positions 0..P+n_steps-2: the prompt, then the decode steps' tokens."""
        toks = list(self.prompt_ids)
        for sl in self.iter_layer(0):
            if sl.kind_code == DECODE:
                toks.append(sl.token)
        return np.asarray(toks, dtype=np.int64)

    def verify(self) -> Optional[str]:
        """Reads every frame; None when all decode, else the first error message. Together
        with `complete` this is what `kvscope trace-info` reports as complete."""
        try:
            for ci in range(len(self.chunks)):
                for layer in range(self.info.n_layers):
                    self._read_frame(ci, layer)
        except TraceError as e:
            return str(e)
        return None


def _main(argv) -> int:  # python kvtrace.py FILE...: a one-line summary per file
    rc = 0
    for p in argv:
        try:
            with Trace(p) as t:
                print(t)
                err = t.damage or t.verify()
                if err:
                    print("  damage:", err)
                    rc = 1
        except TraceError as e:
            print("error:", e)
            rc = 1
    return rc


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
