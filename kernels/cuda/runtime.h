#pragma once
// CUDA model runtime: the GPU twin of cpu::Runtime (kernels/cpu/runtime.h), run from the
// same `const Model&` (weights converted to fp16 or bf16 at construction).
//
//   projections, MLP, classifier   cuBLAS GEMMs, 16-bit inputs, fp32 accumulate and output
//   RMSNorm, RoPE, SwiGLU          ops.cu (fp32 math)
//   attention                      attention.cu over the paged KV cache (kv_cache.h):
//                                  split-K decode, tiled prefill, both online softmax
//
// Trace emission: when an observer is set, the attention kernels also write each head's
// probabilities over the stream's slots (and lse; for a prefill, the column sums of the
// rows not reported in full) into a device arena; at the end of the step one copy on a
// copy stream moves the arena to pinned host memory (two arena/pinned pairs, so step s is
// handed over while step s+1 computes) and a host thread turns it into
// cpu::AttentionRecord calls, in the CPU runtime's order. Observer calls
// therefore happen on that thread, after forward() returns: bracket steps with post()
// (which runs on the same thread, in order) and call drain() before reading the result.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "kernels/cpu/runtime.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/kv_cache.h"
#include "kernels/model/model.h"

namespace kvscope::cuda {

struct RuntimeOptions {
  int page_size = 16;
  int max_tokens = 0;  // KV capacity per stream; 0: the model's max_seq_len
  int device = 0;
  HalfType weights = HalfType::F16;
};

// How the rows of a prefill reach the observer.
//   full_rows < 0   every query row through on_attention (what the CPU runtime does).
//   full_rows >= 0  the last full_rows rows through on_attention; the column sums of the
//                   other rows, computed on the GPU, through add_colsum(layer, q_head,
//                   sums[n_queries]) (TraceWriter::add_prefill_colsum). When
//                   records_for_kv is set, each of those rows is still reported for the
//                   first query head of every KV group, with all probabilities 0: that is
//                   where a TraceWriter takes every token's K/V rows, and zeros add
//                   nothing to its column sums.
// The summed form is used only for a prefill from position 0 over a full cache (what a
// capture is); anything else falls back to full rows.
struct PrefillReport {
  int full_rows = -1;
  std::function<void(int layer, int q_head, std::span<const double> sums)> add_colsum;
  bool records_for_kv = false;
};

class Runtime {
 public:
  explicit Runtime(const Model& model, RuntimeOptions opt = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // As cpu::Runtime::forward: the logits of the last token, or of every token. The span
  // lives in pinned memory until the next call.
  std::span<const float> forward(std::span<const int32_t> tokens, bool all_logits = false);
  std::span<const float> prefill(std::span<const int32_t> tokens) { return forward(tokens, false); }
  std::span<const float> decode(int32_t token) { return forward({&token, 1}, false); }

  int32_t pos() const;
  void reset();  // drains the emission queue first
  KVCache& kv();
  const Model& model() const;
  const std::string& device_name() const;

  void set_observer(cpu::AttentionObserver* o, PrefillReport report = {});
  // Runs fn on the emission thread once every record of the calls before it was handed
  // over (begin_step / end_step of a TraceWriter). Without an observer it runs at once.
  void post(std::function<void()> fn);
  // Waits for every record and posted function; rethrows the first error they threw.
  void drain();
  // Seconds forward() spent waiting for a free pinned set (emission back-pressure).
  double emit_wait_seconds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::cuda
