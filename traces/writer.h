#pragma once
// TraceWriter: captures a model run's attention into a .kvt file (docs/trace-format.md).
//
// It is an AttentionObserver: the runtime reports every (layer, query, head) row while it
// computes, the capture driver brackets each step with begin_step()/end_step(). Rows are
// reduced on the calling thread (dense fp16 or top-k), chunks are compressed and appended
// by a background thread (at most two chunks in flight), so compute rarely waits on zstd.
// A chunk is written with one write() and earlier bytes are never rewritten: a killed
// capture stays readable up to its last complete chunk.
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/runtime.h"
#include "traces/format.h"

namespace kvscope::trace {

struct CaptureSettings {
  Mode mode = Mode::Dense;
  int topk = 64;             // top-k mode: keys kept per row
  bool with_qkv = false;     // store Q (stored rows) and K/V (every token) in fp16
  int prefill_window = 32;   // prefill: last w query rows stored in full
  int steps_per_chunk = 16;
  int zstd_level = 3;
};

class TraceWriter : public cpu::AttentionObserver {
 public:
  // `header` holds the model/tokenizer/prompt/capture description (see make_header);
  // the file is created (truncated) and its header written at once.
  TraceWriter(const std::string& path, const nlohmann::json& header, const ModelConfig& cfg, CaptureSettings s);
  ~TraceWriter() override;  // without finish(): joins the worker, leaves no index (a "killed" capture)

  void begin_step(uint32_t step, StepKind kind, uint32_t n_queries, uint32_t first_pos, int32_t token);
  void on_attention(const cpu::AttentionRecord& r) override;
  // Prefill only: adds sums[0..n_queries-1] to the key column sums of (layer, q_head), for
  // query rows the caller does not report through on_attention (kvscope synth computes
  // them in closed form). Captures never call it; the file format is unchanged.
  void add_prefill_colsum(int layer, int q_head, std::span<const double> sums);
  void end_step();
  // Flushes the last chunk, writes the index and trailer, closes the file.
  void finish();

  uint64_t bytes_written() const;
  uint32_t steps_written() const { return steps_done_; }

  static nlohmann::json make_header(const Model& m, const std::vector<int32_t>& prompt_ids, const CaptureSettings& s,
                                    const nlohmann::json& extra_capture);

 private:
  struct LayerBuf {  // one layer's sections for the steps of the current chunk
    std::vector<uint8_t> meta;
    std::vector<uint16_t> halves;
    std::vector<uint32_t> index;
  };
  struct StepLayer {  // one layer's data of the current step, assembled at end_step
    std::vector<double> colsum;  // prefill: [H][P], accumulated in double, stored as f32
    std::vector<uint8_t> rows_meta;
    std::vector<uint16_t> rows_halves, q, k, v;
    std::vector<uint32_t> rows_index;
  };
  struct Job {
    uint32_t chunk_index, first_step, n_steps;
    std::vector<LayerBuf> layers;
  };

  void submit_chunk();
  void worker();
  std::vector<uint8_t> encode_chunk(const Job& job) const;
  void write_all(const void* p, size_t n);

  std::string path_;
  int fd_ = -1;
  ModelConfig cfg_;
  CaptureSettings s_;
  // current step
  bool in_step_ = false;
  uint32_t step_ = 0, n_queries_ = 0, first_pos_ = 0, n_rows_ = 0, first_row_pos_ = 0;
  StepKind kind_ = StepKind::Decode;
  int32_t token_ = -1;
  std::vector<StepLayer> cur_;
  // current chunk
  std::vector<LayerBuf> chunk_;
  uint32_t chunk_first_step_ = 0, chunk_steps_ = 0, chunk_index_ = 0, steps_done_ = 0;
  std::vector<float> sel_;  // top-k scratch
  // writer thread
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::string worker_error_;
  uint64_t offset_ = 0;  // bytes written (worker-owned after the header)
  std::vector<IndexEntry> index_;
  bool finished_ = false;
};

}  // namespace kvscope::trace
