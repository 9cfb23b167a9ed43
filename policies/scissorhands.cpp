// scissorhands: persistence of importance (Liu et al., "Scissorhands: Exploiting the
// Persistence of Importance Hypothesis for LLM KV Cache Compression at Test Time",
// NeurIPS 2023). An entry is important at step t when a_{t,j} >= mean of a_{t,.} over the
// resident entries (1/n_resident for one query head). S_j = number of the last `history` observed steps in
// which j was important; the most recent round(recent_ratio * budget) entries are kept and
// the smallest S_j among the rest are evicted (ties: lower position).
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Scissorhands final : public Policy {
 public:
  Scissorhands(uint32_t history, double recent_ratio) : history_(history), ratio_(recent_ratio) {}
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    bits_.assign(static_cast<size_t>(s.streams()) * history_ * stride_, 0);
    count_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    slot_.assign(s.streams(), 0);
    protect_.assign(stride_, 0);
  }
  void observe(const StreamView& v) override {
    // Ring of the last `history` steps' importance bits; the count is kept in step.
    uint8_t* ring = bits_.data() + (static_cast<size_t>(v.stream) * history_ + slot_[v.stream]) * stride_;
    float* c = count_.data() + static_cast<size_t>(v.stream) * stride_;
    // Above the average resident entry (any aggregation, prefill column sums included).
    double total = 0;
    for (uint32_t j = 0; j < v.n; ++j) total += v.resident[j] ? v.attn[j] : 0.0f;
    const float threshold = v.n_resident > 0 ? static_cast<float>(total / v.n_resident) : 0.0f;
    for (uint32_t j = 0; j < v.n; ++j) {
      const uint8_t imp = v.resident[j] && v.attn[j] >= threshold;
      c[j] += static_cast<float>(imp) - static_cast<float>(ring[j]);
      ring[j] = imp;
    }
    slot_[v.stream] = (slot_[v.stream] + 1) % history_;
  }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    evict_lowest_outside_recent(v, k, ratio_, count_.data() + static_cast<size_t>(v.stream) * stride_, protect_, scratch_,
                                plan);
  }

 private:
  uint32_t history_;
  double ratio_;
  uint32_t stride_ = 0;
  std::vector<uint8_t> bits_;
  std::vector<float> count_;
  std::vector<uint32_t> slot_;
  std::vector<uint8_t> protect_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo scissorhands_info() {
  return {"scissorhands", "score", "importance persistence: steps with above-average attention in a history window",
          {{"history", 32, 1, 4096, true, "observed steps in the window"},
           {"recent_ratio", 0.5, 0.0, 1.0, false, "share of the budget kept for the most recent entries"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<Scissorhands>(p["history"].get<uint32_t>(), p["recent_ratio"].get<double>());
          }};
}

}  // namespace kvscope::policy
