#pragma once
// The KV-cache policy interface (docs/policies.md). The replay engine (sim/) drives it
// now; a live model run will drive the same objects later.
//
// The engine owns the loop. Per (step, layer, KV head) stream it
//   1. appends the step's new tokens (resident),
//   2. when more than `budget` entries are resident, asks victims(view, k, plan) for k
//      entries to evict — a decision made before this step's attention is known, as a
//      real cache must,
//   3. measures the step's attention on what stays resident,
//   4. calls observe(view) with that attention renormalised over the resident entries
//      (what the model would really have computed), aggregated over the KV head's
//      group of query heads.
// After the prefill step, the engine also evicts down to the budget (prefill-time
// selection sees the prefill's column sums and window rows in observe()).
// Per-stream state lives in flat arrays indexed by position (struct of arrays): no
// allocation and no virtual call per token.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvscope::policy {

struct Shape {
  uint32_t n_layers = 0, n_kv_heads = 0, max_tokens = 0;
  uint32_t streams() const { return n_layers * n_kv_heads; }
  uint32_t stream(uint32_t layer, uint32_t kv_head) const { return layer * n_kv_heads + kv_head; }
};

struct StreamView {
  uint32_t step = 0, layer = 0, kv_head = 0, stream = 0;
  bool prefill = false;
  uint32_t n = 0;                   // positions 0..n-1 exist (context length)
  const uint8_t* resident = nullptr;  // [n] 1 when the entry is in HBM
  uint32_t n_resident = 0;
  const float* attn = nullptr;      // [n] observe(): group-aggregated attention over resident entries
                                    //     (prefill: aggregated column sums over the prompt queries)
  uint32_t budget = 0;
};

struct Plan {
  std::vector<uint32_t> evict;  // positions
  void clear() { evict.clear(); }
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual void reset(const Shape& shape) = 0;
  virtual void observe(const StreamView& v) = 0;
  // Appends exactly k resident positions to plan.evict (k <= n_resident).
  virtual void victims(const StreamView& v, uint32_t k, Plan& plan) = 0;
};

// Parameter declaration: each policy lists its keys; unknown keys and bad values are errors
// that name the key.
struct ParamSpec {
  std::string name;
  double dflt;
  double min, max;
  bool integer;
  std::string help;
};

struct PolicyInfo {
  std::string name;
  std::string kind;  // "baseline", "score", ...
  std::string summary;
  std::vector<ParamSpec> params;
  std::unique_ptr<Policy> (*make)(const nlohmann::json& params);
};

// Validates `params` against `specs` (unknown key, wrong type, out of range -> Error naming
// "<where>.<key>") and returns them with defaults filled in.
nlohmann::json validate_params(const std::vector<ParamSpec>& specs, const nlohmann::json& params, const std::string& where);

// Picks, among resident positions, the k with the smallest score (ties: lower position
// first) and appends them to out. Shared by the score-based policies.
void lowest_k(const float* score, const uint8_t* resident, uint32_t n, uint32_t k, const uint8_t* protect,
              std::vector<uint32_t>& out, std::vector<uint32_t>& scratch);

// Protects the most recent round(recent_ratio * budget) resident entries, then appends the
// k lowest-scored of the others to plan.evict (lowest_k). `protect` has room for v.n.
void evict_lowest_outside_recent(const StreamView& v, uint32_t k, double recent_ratio, const float* score,
                                 std::vector<uint8_t>& protect, std::vector<uint32_t>& scratch, Plan& plan);

// Score-based eviction shared by H2O (lambda = 1) and A2SF: S_j <- lambda * S_j + a_j at
// every observed step; the most recent round(recent_ratio * budget) resident entries are
// kept; the smallest S_j among the rest are evicted (ties: lower position).
std::unique_ptr<Policy> make_accumulated_score(float lambda, double recent_ratio);

}  // namespace kvscope::policy
