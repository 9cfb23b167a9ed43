#pragma once
// Token-level replay of one policy on a trace (docs/policies.md). First increment of the
// replay simulator: eviction at token granularity, one budget per stream (layer, KV head),
// GQA aggregation, retained attention mass with the oracle-topk bound beside it.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "traces/reader.h"

namespace kvscope::sim {

enum class Aggregation { Sum, Max, Mean };

struct ReplayConfig {
  std::string policy;
  nlohmann::json params = nlohmann::json::object();
  uint32_t budget = 0;  // resident entries per (layer, KV head); ignored by "full"
  Aggregation agg = Aggregation::Sum;
};

struct ReplayResult {
  std::string policy;
  nlohmann::json params;
  uint32_t budget = 0;
  uint32_t steps = 0, context = 0;
  double retained_mass = 0;     // mean over decode steps x layers x query heads
  double oracle_topk_mass = 0;  // the same for the B entries with the most attention (upper bound)
  std::vector<double> retained_per_layer, oracle_per_layer;
  // Relative L2 error of the attention output over the resident entries vs the full cache,
  // ||o_kept - o_full|| / ||o_full|| with o = sum_j p_j v_j / sum_j p_j (traces with V only).
  bool has_output_error = false;
  double output_rel_l2 = 0;
  std::vector<double> output_rel_l2_per_layer;
  uint64_t evictions = 0;
  uint64_t rows = 0;
  nlohmann::json to_json() const;
};

// Checks a run against a trace without replaying it: known policy, valid parameters, a
// budget in 1..context (any budget for "full"). Returns the parameters with defaults filled
// in; throws Error naming what is wrong.
nlohmann::json validate(const trace::TraceReader& trace, const ReplayConfig& cfg);

// validate(), then the replay.
ReplayResult replay(const trace::TraceReader& trace, const ReplayConfig& cfg);

}  // namespace kvscope::sim
