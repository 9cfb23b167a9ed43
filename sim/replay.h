#pragma once
// Replay of one policy on a trace (docs/policies.md). Per (layer, KV head) stream, the
// engine keeps where every entry lives (HBM at 16/8/4/2 bits, host, evicted), drives the
// policy step by step (policies/policy.h) and measures what the model would have seen:
// retained attention mass with the oracle-topk bound beside it, the attention output's
// error where V is in the trace, entries and pages resident, bytes moved, peak HBM bytes.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "traces/reader.h"

namespace kvscope::sim {

enum class Aggregation { Sum, Max, Mean };

// Folds one query head's row into its KV head's group row (first: copies it), by `agg`;
// the replay and the live run build the rows a policy sees with these two.
inline void fold_head(float* dst, const float* src, uint32_t n, bool first, Aggregation agg) {
  if (first) {
    for (uint32_t j = 0; j < n; ++j) dst[j] = src[j];
  } else if (agg == Aggregation::Max) {
    for (uint32_t j = 0; j < n; ++j) dst[j] = dst[j] < src[j] ? src[j] : dst[j];  // std::max
  } else {
    for (uint32_t j = 0; j < n; ++j) dst[j] += src[j];
  }
}
// After folding a group of G heads: Mean divides by G; Sum and Max leave the row.
inline void scale_group(float* x, uint32_t n, Aggregation agg, uint32_t group) {
  if (agg != Aggregation::Mean) return;
  const float f = 1.0f / static_cast<float>(group);
  for (uint32_t j = 0; j < n; ++j) x[j] *= f;
}

struct ReplayConfig {
  std::string policy;
  nlohmann::json params = nlohmann::json::object();
  uint32_t budget = 0;      // HBM per (layer, KV head) in 16-bit entries; ignored by "full"
  Aggregation agg = Aggregation::Sum;
  uint32_t page_size = 1;   // 1: token granularity; B: whole pages of B positions
  // Optional overrides: one budget per layer, or one per (layer, KV head) stream.
  std::vector<uint32_t> layer_budgets, stream_budgets;
  std::string access = "topk:8";  // cache policies: which pages a step accesses (sim/pages.h)
  bool per_step = false;          // fill ReplayResult::per_step
  uint32_t max_steps = 0;         // > 0: stop after this decode step (a cheap short replay); 0: all
  bool bounds = true;             // compute the oracle-topk bound beside the policy (benchmarks turn it off)
  bool output_error = true;       // compute the attention-output error on traces with V (likewise)
  // Frames decoded beforehand (decode_all), [chunk * n_layers + layer]; nullptr: decode
  // each frame from the file as the replay reaches it.
  const std::vector<trace::LayerFrame>* frames = nullptr;
  std::function<void(double done)> progress;  // called with the share done, 0..1
  // Timing (sim/timing.h): how many streams of the timed model each traced stream stands
  // for, [layer * n_kv_heads + kv_head]; empty: one each. Weighs the StepMetrics t_* sums.
  std::vector<double> stream_weights;
};

struct StepMetrics {
  uint32_t step = 0;
  double retained_mass = 0, oracle_topk_mass = 0;  // means over the step's rows
  uint64_t hbm_entries = 0, hbm_bytes = 0, host_entries = 0;
  uint64_t bytes_fetched = 0, bytes_offloaded = 0, evictions = 0;
  // Timing inputs, summed over streams with ReplayConfig::stream_weights: entries and
  // 16-bit units in HBM after the step's plan (what attention reads), units moved, and the
  // copies they take: one per page (per entry at page size 1), or one per run of adjacent
  // pages when contiguous moves are coalesced.
  double t_entries = 0, t_units = 0;
  double t_fetch_units = 0, t_fetch_pages = 0, t_fetch_runs = 0;
  double t_offload_units = 0, t_offload_pages = 0, t_offload_runs = 0;
};

struct ReplayResult {
  std::string policy, kind;
  nlohmann::json params;
  uint32_t budget = 0, page_size = 1;
  uint32_t steps = 0, context = 0;
  double retained_mass = 0;     // mean over decode steps x layers x query heads
  double oracle_topk_mass = 0;  // the same for the B entries with the most attention (upper bound)
  std::vector<double> retained_per_layer, oracle_per_layer;
  std::vector<std::vector<double>> retained_per_head;  // [layer][kv_head]
  // Relative L2 error of the attention output over the HBM entries vs the full cache,
  // ||o_kept - o_full|| / ||o_full|| with o = sum_j p_j v_j / sum_j p_j (traces with V only;
  // quantized entries contribute their dequantized V).
  bool has_output_error = false;
  double output_rel_l2 = 0;
  std::vector<double> output_rel_l2_per_layer;
  // Memory and traffic. An entry is K and V, head_dim values each, at its storage bits.
  uint64_t entry_bytes = 0;  // one 16-bit entry
  uint64_t evictions = 0, offloads = 0, fetches = 0, quantized = 0;
  uint64_t bytes_offloaded = 0, bytes_fetched = 0;  // HBM -> host, host -> HBM
  double mean_hbm_entries = 0, mean_hbm_pages = 0;  // per stream, over decode steps
  uint64_t peak_hbm_bytes = 0;                      // all streams, over steps
  double quant_rel_l2 = 0;  // mean ||V - dequant(V)|| / ||V|| over quantized entries (with V)
  // Cache policies (kind "cache"): the page stream and its misses.
  uint64_t requests = 0, misses = 0;
  uint64_t rows = 0;
  std::vector<StepMetrics> per_step;
  nlohmann::json to_json() const;
};

// Checks a run against a trace without replaying it: known policy, valid parameters, a
// budget in 1..context (any budget for "full"), Q/K or V in the trace when the policy
// needs them, page size and budget overrides that fit the trace. Returns the parameters
// with defaults filled in; throws Error naming what is wrong.
nlohmann::json validate(const trace::TraceReader& trace, const ReplayConfig& cfg);

// The trace-independent checks of validate(), shared with the live run (sim/live.h):
// known policy, parameters, budget and page size within a context of `ctx` tokens, budget
// overrides for n_layers x n_kv_heads streams. `who` prefixes the errors.
nlohmann::json validate_run(const ReplayConfig& cfg, uint32_t ctx, uint32_t n_layers, uint32_t n_kv_heads,
                            const std::string& who);
// Per-stream budgets of a run: the uniform budget, or the per-layer / per-stream overrides.
std::vector<uint32_t> stream_budgets(const ReplayConfig& cfg, uint32_t n_layers, uint32_t n_kv_heads, uint32_t uniform);
// Checks allocate()'s per-stream budgets against those it was given: same count, sum not
// grown, each at least one page and at most the context. Errors start with `who`.
void check_allocation(const std::string& who, const std::vector<uint32_t>& given, const std::vector<uint32_t>& proposed,
                      uint32_t ctx, uint32_t page_size);

// Every frame of the trace, decoded: [chunk * n_layers + layer].
std::vector<trace::LayerFrame> decode_all(const trace::TraceReader& trace);

// validate(), then the replay.
ReplayResult replay(const trace::TraceReader& trace, const ReplayConfig& cfg);

}  // namespace kvscope::sim
