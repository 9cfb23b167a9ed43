// Fuzzes the .kvt trace reader (traces/reader.cpp): open, every frame of every chunk, and
// random access by step through one reused LayerFrame. Only kvscope::Error may escape the
// reader; any other exception, crash or sanitizer report is a finding, and so is a view
// that breaks what the reader promises (traces/reader.h).
//
// TraceReader maps a path, so each input is written to a temp file ($TMPDIR, else
// /dev/shm, else /tmp). Random bytes rarely get past the CRCs, so each input is read twice:
// as it is, and "repaired": every checksum (header JSON, chunk header, frame table, frames,
// index) recomputed over the input's own fields, so that mutations reach the checks
// behind the checksums. In the repaired copy, frame bytes that do not start with the zstd
// magic are taken as a frame's decompressed contents and compressed (seeds made that way
// let the fuzzer mutate frame sections directly), and file header flag bit 0 asks for an
// index and trailer rebuilt from the repaired chunks (otherwise the input's own index is
// kept with only its checksum and position fixed). The repaired copy has flags = 0.
#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/io/error.h"
#include "traces/crc32c.h"
#include "traces/format.h"
#include "traces/reader.h"

namespace {

using namespace kvscope;
using namespace kvscope::trace;
using Bytes = std::vector<uint8_t>;

std::string g_path;

void remove_temp() {
  if (!g_path.empty()) ::unlink(g_path.c_str());
}

const std::string& temp_path() {
  if (g_path.empty()) {
    std::string dir = "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t && *t) dir = t;
    else if (::access("/dev/shm", W_OK) == 0) dir = "/dev/shm";
    g_path = dir + "/kvscope_fuzz_trace_" + std::to_string(::getpid()) + ".kvt";
    std::atexit(remove_temp);
  }
  return g_path;
}

void write_file(const uint8_t* p, size_t n) {
  const std::string& path = temp_path();
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) __builtin_trap();
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) __builtin_trap();
    p += w;
    n -= static_cast<size_t>(w);
  }
  ::close(fd);
}

template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
void set(Bytes& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof(T));
}

volatile uint64_t g_sink = 0;

#define CHECK(cond) \
  do {                \
    if (!(cond)) __builtin_trap(); \
  } while (0)

// Reads every value a view points to (so that ASan sees any pointer past its buffer) and
// checks the promises of reader.h.
void touch(const TraceInfo& in, const StepLayerView& v) {
  uint64_t acc = 0;
  const uint32_t H = in.n_heads;
  CHECK(v.n_rows <= v.n_queries);
  if (v.kind == StepKind::Prefill) {
    CHECK(v.colsum != nullptr);
    for (uint64_t i = 0; i < static_cast<uint64_t>(H) * v.n_queries; ++i) {
      uint32_t bits;
      std::memcpy(&bits, v.colsum + i, 4);
      acc += bits;
    }
  }
  if (static_cast<uint64_t>(v.n_rows) * H > 0) CHECK(v.rows != nullptr);
  for (uint32_t r = 0; r < v.n_rows; ++r)
    for (uint32_t h = 0; h < H; ++h) {
      const RowView& rv = v.row(r, h, H);
      CHECK(rv.qpos == v.first_row_pos() + r);
      if (in.mode == Mode::Dense) {
        CHECK(static_cast<uint64_t>(rv.n) == static_cast<uint64_t>(rv.qpos) + 1);
      } else {
        CHECK(rv.n <= in.topk && static_cast<uint64_t>(rv.n) <= static_cast<uint64_t>(rv.qpos) + 1);
        for (uint32_t i = 0; i < rv.n; ++i) {
          CHECK(rv.keys[i] <= rv.qpos);
          CHECK(i == 0 || rv.keys[i] > rv.keys[i - 1]);
          acc += rv.keys[i];
        }
      }
      for (uint32_t i = 0; i < rv.n; ++i) acc += rv.probs[i];
    }
  if (in.with_qkv) {
    CHECK(v.q && v.k && v.v);
    const uint64_t nq = static_cast<uint64_t>(v.n_rows) * H * in.head_dim;
    const uint64_t nk = static_cast<uint64_t>(v.n_queries) * in.n_kv_heads * in.head_dim;
    for (uint64_t i = 0; i < nq; ++i) acc += v.q[i];
    for (uint64_t i = 0; i < nk; ++i) acc += v.k[i] + v.v[i];
  } else {
    CHECK(!v.q && !v.k && !v.v);
  }
  g_sink = g_sink + acc;
}

void read_everything(const std::string& path) {
  try {
    TraceReader r(path);
    const TraceInfo& in = r.info();
    uint64_t steps = 0;
    for (size_t c = 0; c < r.chunks().size(); ++c) {
      CHECK(r.chunks()[c].first_step == steps);
      steps += r.chunks()[c].n_steps;
    }
    CHECK(steps == r.n_steps());
    CHECK(r.complete() == r.damage().empty());
    LayerFrame f;
    for (uint32_t c = 0; c < r.chunks().size(); ++c)
      for (uint32_t l = 0; l < in.n_layers; ++l) {
        try {
          r.read_frame(c, l, f);
          CHECK(f.steps.size() == r.chunks()[c].n_steps);
          for (uint32_t s = 0; s < f.steps.size(); ++s) {
            CHECK(f.steps[s].step == r.chunks()[c].first_step + s);
            touch(in, f.steps[s]);
          }
        } catch (const Error&) {
        }
      }
    // Random access through one reused frame, as a replay would do it, including after
    // a failed decode.
    LayerFrame g;
    const uint32_t n_steps = r.n_steps() < 64 ? r.n_steps() : 64;
    const uint32_t n_layers = in.n_layers < 8 ? in.n_layers : 8;
    for (uint32_t l = 0; l < n_layers; ++l)
      for (uint32_t s = 0; s < n_steps; ++s) {
        try {
          const StepLayerView& v = r.step_layer(s, l, g);
          CHECK(v.step == s);
          touch(in, v);
        } catch (const Error&) {
        }
      }
  } catch (const Error&) {
  }
}

// The input with every checksum recomputed (see the top of the file); empty when it does
// not start like a trace.
Bytes repair(const uint8_t* d, size_t n) {
  if (n < kFileHeaderBytes || std::memcmp(d, kFileMagic, 8) != 0) return {};
  const uint32_t flags = get<uint32_t>(d + 12);
  const uint64_t json_len = std::min<uint64_t>(get<uint64_t>(d + 16), n - kFileHeaderBytes);
  Bytes out(d, d + kFileHeaderBytes + json_len);
  set<uint32_t>(out, 12, 0);
  set<uint64_t>(out, 16, json_len);
  set<uint32_t>(out, 24, crc32c(d + kFileHeaderBytes, json_len));
  size_t off = kFileHeaderBytes + json_len;
  std::vector<IndexEntry> index;
  uint32_t steps = 0;
  while (n - off >= kChunkHeaderBytes && std::memcmp(d + off, kChunkMagic, 4) == 0) {
    const uint32_t n_frames = get<uint32_t>(d + off + 16);
    if (n_frames > 256 || n - off - kChunkHeaderBytes < static_cast<uint64_t>(n_frames) * kFrameEntryBytes) break;
    const uint8_t* t = d + off + kChunkHeaderBytes;
    size_t fo = off + kChunkHeaderBytes + n_frames * kFrameEntryBytes;
    Bytes table, frames;
    for (uint32_t i = 0; i < n_frames; ++i) {
      const uint64_t cs = std::min<uint64_t>(get<uint64_t>(t + i * kFrameEntryBytes), n - fo);
      uint64_t raw_size = get<uint64_t>(t + i * kFrameEntryBytes + 8);
      const uint8_t* src = d + fo;
      fo += cs;
      Bytes z;
      if (cs >= 4 && get<uint32_t>(src) == 0xFD2FB528u) {
        z.assign(src, src + cs);
      } else {
        z.resize(ZSTD_compressBound(cs));
        const size_t zn = ZSTD_compress(z.data(), z.size(), src, cs, 1);
        if (ZSTD_isError(zn)) __builtin_trap();
        z.resize(zn);
        raw_size = cs;
      }
      const size_t e = table.size();
      table.resize(e + kFrameEntryBytes, 0);
      set<uint64_t>(table, e, z.size());
      set<uint64_t>(table, e + 8, raw_size);
      set<uint32_t>(table, e + 16, crc32c(z.data(), z.size()));
      frames.insert(frames.end(), z.begin(), z.end());
    }
    Bytes h(d + off, d + off + kChunkHeaderBytes);
    set<uint64_t>(h, 24, frames.size());
    set<uint32_t>(h, 40, crc32c(table.data(), table.size()));
    set<uint32_t>(h, 44, crc32c(h.data(), 44));
    const uint64_t chunk_off = out.size();
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), table.begin(), table.end());
    out.insert(out.end(), frames.begin(), frames.end());
    index.push_back({chunk_off, get<uint32_t>(h.data() + 8), get<uint32_t>(h.data() + 12), out.size() - chunk_off});
    steps += get<uint32_t>(h.data() + 12);
    off = fo;
  }
  Bytes idx;
  uint32_t trailer_steps = steps;
  if (flags & 1u) {
    idx.assign(kIndexMagic, kIndexMagic + 8);
    idx.resize(16, 0);
    set<uint32_t>(idx, 8, static_cast<uint32_t>(index.size()));
    for (const IndexEntry& e : index) {
      const size_t at = idx.size();
      idx.resize(at + kIndexEntryBytes);
      set<uint64_t>(idx, at, e.chunk_offset);
      set<uint32_t>(idx, at + 8, e.first_step);
      set<uint32_t>(idx, at + 12, e.n_steps);
      set<uint64_t>(idx, at + 16, e.chunk_bytes);
    }
  } else if (n - off >= 16 && std::memcmp(d + off, kIndexMagic, 8) == 0) {
    const uint64_t entries = std::min<uint64_t>(get<uint32_t>(d + off + 8), (n - off - 16) / kIndexEntryBytes);
    const size_t len = 16 + entries * kIndexEntryBytes;
    idx.assign(d + off, d + off + len);
    if (n - off - len >= kTrailerBytes) trailer_steps = get<uint32_t>(d + off + len + 28);
  } else {
    out.insert(out.end(), d + off, d + n);  // whatever follows, as it is
    return out;
  }
  const uint64_t idx_off = out.size();
  out.insert(out.end(), idx.begin(), idx.end());
  const size_t tr = out.size();
  out.resize(tr + kTrailerBytes, 0);
  std::memcpy(out.data() + tr, kEndMagic, 8);
  set<uint64_t>(out, tr + 8, idx_off);
  set<uint64_t>(out, tr + 16, idx.size());
  set<uint32_t>(out, tr + 24, crc32c(idx.data(), idx.size()));
  set<uint32_t>(out, tr + 28, trailer_steps);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_file(data, size);
  read_everything(temp_path());
  const Bytes fixed = repair(data, size);
  if (!fixed.empty() && (fixed.size() != size || std::memcmp(fixed.data(), data, size) != 0)) {
    write_file(fixed.data(), fixed.size());
    read_everything(temp_path());
  }
  return 0;
}
