#pragma once
// TraceReader: reads .kvt files (docs/trace-format.md) through mmap, one (chunk, layer)
// frame at a time. Opening checks the header, then either the index (complete files) or
// scans the chunks (a capture that was cut short). Damage never throws at open: the
// reader keeps every complete chunk before it and says where it stopped (damage()).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/io/halfs.h"
#include "kernels/io/mapped_file.h"
#include "traces/format.h"

namespace kvscope::trace {

struct TraceInfo {
  uint32_t n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, group = 1;
  Mode mode = Mode::Dense;
  uint32_t topk = 0, prefill_window = 0;
  bool with_qkv = false;
  uint32_t prompt_len = 0;
  bool synthetic = false;
};

// One query head's attention row. Dense: probs[j] is key j's probability, j <= qpos.
// Top-k: probs[i] belongs to key keys[i] (ascending); `residual` is the mass not kept.
struct RowView {
  uint32_t qpos = 0;
  float lse = 0;
  float residual = 0;
  const uint16_t* probs = nullptr;  // f16
  const uint32_t* keys = nullptr;   // top-k only
  uint32_t n = 0;
};

// One layer of one step.
struct StepLayerView {
  uint32_t step = 0;
  StepKind kind = StepKind::Decode;
  uint32_t n_queries = 0, first_pos = 0, n_rows = 0;
  int32_t token = -1;
  const float* colsum = nullptr;  // prefill: [H][n_queries]
  const RowView* rows = nullptr;  // [n_rows][H]
  const uint16_t* q = nullptr;    // [n_rows][H][head_dim] f16, with_qkv only
  const uint16_t* k = nullptr;    // [n_queries][H_kv][head_dim]
  const uint16_t* v = nullptr;
  uint32_t first_row_pos() const { return first_pos + n_queries - n_rows; }
  const RowView& row(uint32_t r, uint32_t h, uint32_t n_heads) const { return rows[static_cast<size_t>(r) * n_heads + h]; }
};

// A decoded frame (one layer across the steps of one chunk); reuse it across calls.
struct LayerFrame {
  std::vector<uint8_t> raw;
  std::vector<uint16_t> halves;
  std::vector<uint32_t> index;
  std::vector<RowView> rows;
  std::vector<StepLayerView> steps;
  uint32_t chunk = UINT32_MAX, layer = UINT32_MAX;  // what it holds (UINT32_MAX: nothing)
};

struct ChunkInfo {
  uint64_t offset = 0, bytes = 0, frames_offset = 0;
  uint32_t index = 0, first_step = 0, n_steps = 0;
  std::vector<FrameEntry> frames;
};

class TraceReader {
 public:
  explicit TraceReader(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const nlohmann::json& header() const { return header_; }
  const TraceInfo& info() const { return info_; }
  uint64_t file_size() const { return file_.size(); }
  const std::vector<ChunkInfo>& chunks() const { return chunks_; }
  uint32_t n_steps() const { return n_steps_; }
  // True when the trailer and index were present and valid.
  bool complete() const { return complete_; }
  // Empty, or "<file>: offset N: what" for the first damage found (and where reading stopped).
  const std::string& damage() const { return damage_; }
  // Index of the chunk holding `step`, or -1.
  int chunk_of_step(uint32_t step) const;

  // Decompresses and parses one frame. Throws Error naming the file and offset.
  void read_frame(uint32_t chunk, uint32_t layer, LayerFrame& out) const;
  // Convenience: the view of (step, layer), decoding into `frame` if it does not hold it.
  const StepLayerView& step_layer(uint32_t step, uint32_t layer, LayerFrame& frame) const;

 private:
  bool load_index(uint64_t data_start);
  void scan_chunks(uint64_t data_start);
  bool parse_chunk_at(uint64_t off, ChunkInfo& out, std::string& why) const;

  MappedFile file_;
  nlohmann::json header_;
  TraceInfo info_;
  std::vector<ChunkInfo> chunks_;
  uint32_t n_steps_ = 0;
  bool complete_ = false;
  std::string damage_;
};

using kvscope::halves_to_floats;  // f16 -> f32 for n values (kernels/io/halfs.h)

}  // namespace kvscope::trace
