#include "traces/reader.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "kernels/io/byte_reader.h"
#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "traces/crc32c.h"


namespace kvscope::trace {

using nlohmann::json;

namespace {

template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Header keys are checked where they are used; errors point at the header JSON.
uint32_t json_u32(const json& j, const std::string& file, const char* obj, const char* key) {
  if (!j.contains(obj) || !j[obj].is_object() || !j[obj].contains(key) || !j[obj][key].is_number_unsigned())
    fail_at(file, kFileHeaderBytes, std::string("header: ") + obj + "." + key + ": missing or not a non-negative integer");
  const uint64_t v = j[obj][key].get<uint64_t>();
  if (v > (1u << 24)) fail_at(file, kFileHeaderBytes, std::string("header: ") + obj + "." + key + ": value out of range");
  return static_cast<uint32_t>(v);
}

std::string json_str(const json& j, const std::string& file, const char* key) {
  if (!j.contains(key) || !j[key].is_string()) fail_at(file, kFileHeaderBytes, std::string("header: ") + key + ": missing or not a string");
  return j[key].get<std::string>();
}

}  // namespace

TraceReader::TraceReader(const std::string& path) : file_(path) {
  const uint8_t* b = file_.data();
  const uint64_t size = file_.size();
  if (size < kFileHeaderBytes) fail_at(path, 0, "file too short for a trace header (" + std::to_string(size) + " bytes)");
  if (std::memcmp(b, kFileMagic, 8) != 0) fail_at(path, 0, "not a kvscope trace (bad magic)");
  const uint32_t version = get<uint32_t>(b + 8);
  if (version != kVersion)
    fail_at(path, 8, "unsupported trace version " + std::to_string(version) + " (this build reads version " +
                         std::to_string(kVersion) + ")");
  if (get<uint32_t>(b + 12) != 0)
    fail_at(path, 12, "unknown header flags " + std::to_string(get<uint32_t>(b + 12)) + " (written by a newer kvscope?)");
  const uint64_t json_len = get<uint64_t>(b + 16);
  if (json_len > size - kFileHeaderBytes) fail_at(path, 16, "header JSON length " + std::to_string(json_len) + " exceeds the file");
  const uint32_t json_crc = get<uint32_t>(b + 24);
  if (crc32c(b + kFileHeaderBytes, json_len) != json_crc) fail_at(path, kFileHeaderBytes, "header JSON checksum mismatch");
  try {
    header_ = json::parse(b + kFileHeaderBytes, b + kFileHeaderBytes + json_len);
  } catch (const json::parse_error& e) {
    fail_at(path, kFileHeaderBytes + e.byte, std::string("header JSON does not parse: ") + e.what());
  } catch (const json::exception& e) {  // e.g. a number out of range
    fail_at(path, kFileHeaderBytes, std::string("header JSON does not parse: ") + e.what());
  }
  if (!header_.is_object()) fail_at(path, kFileHeaderBytes, "header: expected a JSON object");
  if (json_str(header_, path, "format") != "kvscope-trace")
    fail_at(path, kFileHeaderBytes, "header: format: expected \"kvscope-trace\"");
  if (!header_.contains("version") || header_["version"] != kVersion)
    fail_at(path, kFileHeaderBytes, "header: version: does not match the file header's version");
  info_.n_layers = json_u32(header_, path, "model", "n_layers");
  info_.n_heads = json_u32(header_, path, "model", "n_heads");
  info_.n_kv_heads = json_u32(header_, path, "model", "n_kv_heads");
  info_.head_dim = json_u32(header_, path, "model", "head_dim");
  if (info_.n_layers == 0 || info_.n_heads == 0 || info_.n_kv_heads == 0 || info_.n_heads % info_.n_kv_heads != 0 ||
      info_.head_dim == 0)
    fail_at(path, kFileHeaderBytes, "header: model: inconsistent layer/head counts");
  info_.group = info_.n_heads / info_.n_kv_heads;
  if (!header_.contains("capture") || !header_["capture"].is_object()) fail_at(path, kFileHeaderBytes, "header: capture: missing");
  const json& cap = header_["capture"];
  if (!cap.contains("mode") || !cap["mode"].is_string()) fail_at(path, kFileHeaderBytes, "header: capture.mode: missing or not a string");
  const std::string mode = cap["mode"].get<std::string>();
  if (mode == "dense") info_.mode = Mode::Dense;
  else if (mode == "topk") info_.mode = Mode::TopK;
  else fail_at(path, kFileHeaderBytes, "header: capture.mode: '" + mode + "' is not dense or topk");
  info_.topk = json_u32(header_, path, "capture", "topk");
  info_.prefill_window = json_u32(header_, path, "capture", "prefill_window");
  if (!cap.contains("with_qkv") || !cap["with_qkv"].is_boolean())
    fail_at(path, kFileHeaderBytes, "header: capture.with_qkv: missing or not a boolean");
  info_.with_qkv = cap["with_qkv"].get<bool>();
  if (!header_.contains("prompt_ids") || !header_["prompt_ids"].is_array())
    fail_at(path, kFileHeaderBytes, "header: prompt_ids: missing or not an array");
  info_.prompt_len = static_cast<uint32_t>(header_["prompt_ids"].size());
  if (header_.contains("synthetic") && !header_["synthetic"].is_boolean())
    fail_at(path, kFileHeaderBytes, "header: synthetic: not a boolean");
  info_.synthetic = header_.contains("synthetic") && header_["synthetic"].get<bool>();

  const uint64_t data_start = kFileHeaderBytes + json_len;
  if (!load_index(data_start)) scan_chunks(data_start);
}

bool TraceReader::parse_chunk_at(uint64_t off, ChunkInfo& c, std::string& why) const {
  const uint8_t* b = file_.data();
  const uint64_t size = file_.size();
  auto bad = [&](uint64_t at, const std::string& w) {
    why = path() + ": offset " + std::to_string(at) + ": " + w;
    return false;
  };
  if (size - off < kChunkHeaderBytes) return bad(off, "truncated chunk header");
  const uint8_t* h = b + off;
  if (std::memcmp(h, kChunkMagic, 4) != 0) return bad(off, "bad chunk magic");
  if (crc32c(h, 44) != get<uint32_t>(h + 44)) return bad(off, "chunk header checksum mismatch");
  c.offset = off;
  c.index = get<uint32_t>(h + 4);
  c.first_step = get<uint32_t>(h + 8);
  c.n_steps = get<uint32_t>(h + 12);
  const uint32_t n_frames = get<uint32_t>(h + 16);
  const uint64_t frames_bytes = get<uint64_t>(h + 24);
  if (n_frames != info_.n_layers) return bad(off, "chunk has " + std::to_string(n_frames) + " frames, expected one per layer");
  if (c.n_steps == 0) return bad(off, "chunk holds no steps");
  const uint64_t table_bytes = static_cast<uint64_t>(n_frames) * kFrameEntryBytes;
  if (size - off - kChunkHeaderBytes < table_bytes) return bad(off + kChunkHeaderBytes, "truncated frame table");
  const uint8_t* t = h + kChunkHeaderBytes;
  if (crc32c(t, table_bytes) != get<uint32_t>(h + 40)) return bad(off + kChunkHeaderBytes, "frame table checksum mismatch");
  c.frames_offset = off + kChunkHeaderBytes + table_bytes;
  c.frames.resize(n_frames);
  uint64_t sum = 0;
  for (uint32_t i = 0; i < n_frames; ++i) {
    FrameEntry& e = c.frames[i];
    e.compressed_size = get<uint64_t>(t + i * kFrameEntryBytes);
    e.raw_size = get<uint64_t>(t + i * kFrameEntryBytes + 8);
    e.crc = get<uint32_t>(t + i * kFrameEntryBytes + 16);
    if (e.compressed_size > size || sum > size) return bad(off + kChunkHeaderBytes + i * kFrameEntryBytes, "frame size out of range");
    sum += e.compressed_size;
  }
  if (sum != frames_bytes) return bad(off, "frame sizes do not add up to the chunk's frame bytes");
  if (size - c.frames_offset < frames_bytes)
    return bad(c.frames_offset, "truncated chunk (needs " + std::to_string(frames_bytes) + " bytes of frames, " +
                                    std::to_string(size - c.frames_offset) + " left)");
  c.bytes = c.frames_offset + frames_bytes - off;
  return true;
}

bool TraceReader::load_index(uint64_t data_start) {
  const uint8_t* b = file_.data();
  const uint64_t size = file_.size();
  if (size < data_start + kTrailerBytes) return false;
  const uint8_t* tr = b + size - kTrailerBytes;
  if (std::memcmp(tr, kEndMagic, 8) != 0) return false;  // no trailer: a cut-short capture, scan
  const uint64_t tr_off = size - kTrailerBytes;
  const uint64_t idx_off = get<uint64_t>(tr + 8), idx_len = get<uint64_t>(tr + 16);
  auto damaged = [&](uint64_t at, const std::string& w) {
    if (damage_.empty()) damage_ = path() + ": offset " + std::to_string(at) + ": " + w;
    chunks_.clear();
    return false;
  };
  if (idx_off < data_start || idx_off > tr_off || idx_len != tr_off - idx_off)
    return damaged(tr_off + 8, "trailer: index [" + std::to_string(idx_off) + ", +" + std::to_string(idx_len) +
                                   ") does not end at the trailer");
  if (crc32c(b + idx_off, idx_len) != get<uint32_t>(tr + 24)) return damaged(idx_off, "index checksum mismatch");
  if (idx_len < 16 || std::memcmp(b + idx_off, kIndexMagic, 8) != 0) return damaged(idx_off, "bad index magic");
  const uint32_t n = get<uint32_t>(b + idx_off + 8);
  if (idx_len != 16 + static_cast<uint64_t>(n) * kIndexEntryBytes) return damaged(idx_off + 8, "index length disagrees with its entry count");
  uint32_t next_step = 0;
  uint64_t expect_off = data_start;
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t* e = b + idx_off + 16 + static_cast<uint64_t>(i) * kIndexEntryBytes;
    const uint64_t entry_at = idx_off + 16 + static_cast<uint64_t>(i) * kIndexEntryBytes;
    const uint64_t coff = get<uint64_t>(e);
    if (coff != expect_off || coff >= idx_off)
      return damaged(entry_at, "index entry " + std::to_string(i) + " points to offset " + std::to_string(coff) +
                                   " (outside the chunk area or not where the previous chunk ends)");
    ChunkInfo c;
    std::string why;
    if (!parse_chunk_at(coff, c, why)) {
      if (damage_.empty()) damage_ = why;
      chunks_.clear();
      return false;
    }
    if (c.first_step != get<uint32_t>(e + 8) || c.n_steps != get<uint32_t>(e + 12) || c.bytes != get<uint64_t>(e + 16) ||
        c.first_step != next_step || c.index != i)
      return damaged(entry_at, "index entry " + std::to_string(i) + " disagrees with its chunk header");
    next_step += c.n_steps;
    expect_off = coff + c.bytes;
    chunks_.push_back(std::move(c));
  }
  if (expect_off != idx_off) return damaged(expect_off, "bytes between the last chunk and the index");
  if (get<uint32_t>(tr + 28) != next_step) return damaged(tr_off + 28, "trailer step count disagrees with the index");
  n_steps_ = next_step;
  complete_ = true;
  return true;
}

void TraceReader::scan_chunks(uint64_t data_start) {
  chunks_.clear();
  uint64_t off = data_start;
  uint32_t next_step = 0;
  const uint64_t size = file_.size();
  const uint8_t* b = file_.data();
  while (off < size) {
    if (size - off >= 8 && std::memcmp(b + off, kIndexMagic, 8) == 0) {
      if (damage_.empty()) damage_ = path() + ": offset " + std::to_string(off) + ": index present but the trailer is damaged";
      break;
    }
    ChunkInfo c;
    std::string why;
    if (!parse_chunk_at(off, c, why)) {
      if (damage_.empty()) damage_ = why;
      break;
    }
    bool ok = c.first_step == next_step && c.index == chunks_.size();
    for (size_t l = 0; ok && l < c.frames.size(); ++l) {
      uint64_t foff = c.frames_offset;
      for (size_t i = 0; i < l; ++i) foff += c.frames[i].compressed_size;
      if (crc32c(b + foff, c.frames[l].compressed_size) != c.frames[l].crc) {
        if (damage_.empty()) damage_ = path() + ": offset " + std::to_string(foff) + ": frame checksum mismatch (chunk " +
                                       std::to_string(c.index) + ", layer " + std::to_string(l) + ")";
        ok = false;
      }
    }
    if (!ok) {
      if (damage_.empty()) damage_ = path() + ": offset " + std::to_string(off) + ": chunk out of sequence";
      break;
    }
    next_step += c.n_steps;
    off += c.bytes;
    chunks_.push_back(std::move(c));
  }
  if (damage_.empty())
    damage_ = path() + ": offset " + std::to_string(off) + ": no index (capture cut short); " +
              std::to_string(next_step) + " complete steps readable";
  n_steps_ = next_step;
}

int TraceReader::chunk_of_step(uint32_t step) const {
  auto it = std::upper_bound(chunks_.begin(), chunks_.end(), step,
                             [](uint32_t s, const ChunkInfo& c) { return s < c.first_step; });
  if (it == chunks_.begin()) return -1;
  --it;
  return step < it->first_step + it->n_steps ? static_cast<int>(it - chunks_.begin()) : -1;
}

void TraceReader::read_frame(uint32_t ci, uint32_t layer, LayerFrame& f) const {
  if (ci >= chunks_.size()) throw Error(path() + ": chunk " + std::to_string(ci) + " does not exist");
  if (layer >= info_.n_layers) throw Error(path() + ": layer " + std::to_string(layer) + " does not exist");
  const ChunkInfo& c = chunks_[ci];
  // Until the frame is fully parsed it holds nothing: a failed read never leaves views
  // pointing into a half-decoded buffer.
  f.steps.clear();
  f.rows.clear();
  f.chunk = UINT32_MAX;
  f.layer = UINT32_MAX;
  uint64_t foff = c.frames_offset;
  for (uint32_t i = 0; i < layer; ++i) foff += c.frames[i].compressed_size;
  const FrameEntry& e = c.frames[layer];
  const uint8_t* src = file_.data() + foff;
  const std::string where = "chunk " + std::to_string(ci) + ", layer " + std::to_string(layer) + ": ";
  if (crc32c(src, e.compressed_size) != e.crc) fail_at(path(), foff, where + "frame checksum mismatch");
  const unsigned long long content = ZSTD_getFrameContentSize(src, e.compressed_size);
  // A zstd block expands at most 128 KiB per 4 compressed bytes (an RLE block): a larger
  // declared size is damage, and must not be allocated blindly.
  if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN || content != e.raw_size ||
      e.raw_size > 32768ull * e.compressed_size + (128u << 10))
    fail_at(path(), foff, where + "frame size disagrees with the frame table");
  f.raw.resize(e.raw_size);
  const size_t got = ZSTD_decompress(f.raw.data(), f.raw.size(), src, e.compressed_size);
  if (ZSTD_isError(got) || got != e.raw_size)
    fail_at(path(), foff, where + "zstd: " + (ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short frame"));

  // Sections.
  auto bad = [&](const std::string& w) { fail_at(path(), foff, where + w); };
  if (f.raw.size() < 24) bad("frame too short");
  const uint64_t meta_bytes = get<uint64_t>(f.raw.data()), n_half = get<uint64_t>(f.raw.data() + 8),
                 n_index = get<uint64_t>(f.raw.data() + 16);
  const uint64_t body = f.raw.size() - 24;
  if (meta_bytes > body || n_half > body / 2 || n_index > body / 4 || meta_bytes + 2 * n_half + 4 * n_index != body)
    bad("section sizes disagree with the frame size");
  const uint8_t* meta = f.raw.data() + 24;
  const uint8_t* hp = meta + meta_bytes;
  f.halves.resize(n_half);
  for (uint64_t i = 0; i < n_half; ++i) f.halves[i] = static_cast<uint16_t>(hp[i] | (hp[n_half + i] << 8));
  const uint8_t* ip = hp + 2 * n_half;
  f.index.resize(n_index);
  uint32_t acc = 0;
  for (uint64_t i = 0; i < n_index; ++i) {
    acc += get<uint32_t>(ip + 4 * i);
    f.index[i] = acc;
  }

  // Step records. Row views are built in a first pass into f.rows; pointers into
  // f.rows are fixed up after it stops growing.
  const uint32_t H = info_.n_heads, Hkv = info_.n_kv_heads, hd = info_.head_dim;
  const bool topk = info_.mode == Mode::TopK;
  uint64_t mo = 0, ho = 0, io = 0;
  auto need_meta = [&](uint64_t n) {
    if (n > meta_bytes - mo) bad("step records overrun the meta section at byte " + std::to_string(mo));
  };
  auto need_half = [&](uint64_t n) {
    if (n > n_half - ho) bad("step records overrun the f16 section");
  };
  f.steps.clear();
  f.rows.clear();
  std::vector<size_t> row_start;
  for (uint32_t s = 0; s < c.n_steps; ++s) {
    need_meta(24);
    StepLayerView v;
    v.step = get<uint32_t>(meta + mo);
    const uint32_t kind = get<uint32_t>(meta + mo + 4);
    v.n_queries = get<uint32_t>(meta + mo + 8);
    v.first_pos = get<uint32_t>(meta + mo + 12);
    v.n_rows = get<uint32_t>(meta + mo + 16);
    v.token = static_cast<int32_t>(get<uint32_t>(meta + mo + 20));
    mo += 24;
    if (v.step != c.first_step + s) bad("step " + std::to_string(v.step) + " where " + std::to_string(c.first_step + s) + " was expected");
    if (kind > 1) bad("step " + std::to_string(v.step) + ": unknown step kind " + std::to_string(kind));
    v.kind = static_cast<StepKind>(kind);
    const bool pre = v.kind == StepKind::Prefill;
    if (pre != (v.step == 0)) bad("step " + std::to_string(v.step) + ": only step 0 is a prefill");
    if (pre ? (v.n_rows > v.n_queries || v.first_pos != 0 || v.n_queries > (1u << 24))
            : (v.n_queries != 1 || v.n_rows != 1 || v.first_pos != info_.prompt_len + v.step - 1))
      bad("step " + std::to_string(v.step) + ": inconsistent query counts or positions");
    if (pre) {
      need_meta(4ull * H * v.n_queries);
      v.colsum = reinterpret_cast<const float*>(meta + mo);  // raw is 8-aligned + 24 + 24k: 4-aligned
      mo += 4ull * H * v.n_queries;
    }
    row_start.push_back(f.rows.size());
    const uint32_t frp = v.first_row_pos();
    for (uint32_t r = 0; r < v.n_rows; ++r)
      for (uint32_t h = 0; h < H; ++h) {
        RowView rv;
        rv.qpos = frp + r;
        need_meta(topk ? 12 : 4);
        rv.lse = get<float>(meta + mo);
        if (topk) {
          rv.residual = get<float>(meta + mo + 4);
          rv.n = get<uint32_t>(meta + mo + 8);
          mo += 12;
          if (rv.n > rv.qpos + 1 || rv.n > info_.topk) bad("step " + std::to_string(v.step) + ": top-k count out of range");
          if (rv.n > n_index - io) bad("step records overrun the index section");
          rv.keys = f.index.data() + io;
          for (uint32_t i = 0; i < rv.n; ++i)
            if (rv.keys[i] > rv.qpos || (i > 0 && rv.keys[i] <= rv.keys[i - 1]))
              bad("step " + std::to_string(v.step) + ": top-k key positions not ascending within 0.." + std::to_string(rv.qpos));
          io += rv.n;
        } else {
          mo += 4;
          rv.n = rv.qpos + 1;
        }
        need_half(rv.n);
        rv.probs = f.halves.data() + ho;
        ho += rv.n;
        f.rows.push_back(rv);
      }
    if (info_.with_qkv) {
      const uint64_t nq = static_cast<uint64_t>(v.n_rows) * H * hd, nk = static_cast<uint64_t>(v.n_queries) * Hkv * hd;
      need_half(nq + 2 * nk);
      v.q = f.halves.data() + ho;
      v.k = v.q + nq;
      v.v = v.k + nk;
      ho += nq + 2 * nk;
    }
    f.steps.push_back(v);
  }
  if (mo != meta_bytes || ho != n_half || io != n_index) bad("unused bytes after the last step record");
  for (size_t s = 0; s < f.steps.size(); ++s) f.steps[s].rows = f.rows.data() + row_start[s];
  f.chunk = ci;
  f.layer = layer;
}

const StepLayerView& TraceReader::step_layer(uint32_t step, uint32_t layer, LayerFrame& frame) const {
  const int ci = chunk_of_step(step);
  if (ci < 0) throw Error(path() + ": step " + std::to_string(step) + " is not in the trace (" + std::to_string(n_steps_) + " steps)");
  if (frame.chunk != static_cast<uint32_t>(ci) || frame.layer != layer) read_frame(ci, layer, frame);
  return frame.steps[step - chunks_[ci].first_step];
}

}  // namespace kvscope::trace
