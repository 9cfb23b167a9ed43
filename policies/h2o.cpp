// h2o: Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023). Score of entry j = attention it
// has received so far, S_j = sum_t a_t,j (prefill: column sums over the prompt queries).
// The most recent r = round(recent_ratio * budget) entries are always kept; among the
// rest, the entries with the smallest S_j are evicted.
#include <cmath>

#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class H2o final : public Policy {
 public:
  explicit H2o(double recent_ratio) : ratio_(recent_ratio) {}
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    score_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    protect_.assign(stride_, 0);
  }
  void observe(const StreamView& v) override {
    float* s = score_.data() + static_cast<size_t>(v.stream) * stride_;
    for (uint32_t j = 0; j < v.n; ++j) s[j] += v.attn[j];
  }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    const uint32_t recent = static_cast<uint32_t>(std::lround(ratio_ * v.budget));
    std::fill(protect_.begin(), protect_.begin() + v.n, 0);
    for (uint32_t j = v.n, kept = 0; j-- > 0 && kept < recent;)
      if (v.resident[j]) protect_[j] = 1, ++kept;
    lowest_k(score_.data() + static_cast<size_t>(v.stream) * stride_, v.resident, v.n, k, protect_.data(), plan.evict,
             scratch_);
  }

 private:
  double ratio_;
  uint32_t stride_ = 0;
  std::vector<float> score_;
  std::vector<uint8_t> protect_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo h2o_info() {
  return {"h2o", "score", "accumulated attention (heavy hitters) + recent window",
          {{"recent_ratio", 0.5, 0.0, 1.0, false, "share of the budget kept for the most recent entries"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<H2o>(p["recent_ratio"].get<double>());
          }};
}

}  // namespace kvscope::policy
