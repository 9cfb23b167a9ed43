// a2sf: Accumulative Attention Score with Forgetting factor (Jo & Shin, "A2SF: Accumulative
// Attention Scoring with Forgetting Factor for Token Pruning in Transformer Decoder",
// 2024). S_j <- lambda * S_j + a_{t,j} at every observed step, so old attention fades;
// the most recent round(recent_ratio * budget) entries are kept, the smallest S_j among
// the rest are evicted. lambda = 1 is H2O.
#include <cmath>

#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class A2sf final : public Policy {
 public:
  A2sf(double lambda, double recent_ratio) : lambda_(static_cast<float>(lambda)), ratio_(recent_ratio) {}
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    score_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    protect_.assign(stride_, 0);
  }
  void observe(const StreamView& v) override {
    float* s = score_.data() + static_cast<size_t>(v.stream) * stride_;
    for (uint32_t j = 0; j < v.n; ++j) s[j] = lambda_ * s[j] + v.attn[j];
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
  float lambda_;
  double ratio_;
  uint32_t stride_ = 0;
  std::vector<float> score_;
  std::vector<uint8_t> protect_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo a2sf_info() {
  return {"a2sf", "score", "accumulated attention with a forgetting factor + recent window",
          {{"lambda", 0.9, 0.0, 1.0, false, "forgetting factor per step"},
           {"recent_ratio", 0.5, 0.0, 1.0, false, "share of the budget kept for the most recent entries"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<A2sf>(p["lambda"].get<double>(), p["recent_ratio"].get<double>());
          }};
}

}  // namespace kvscope::policy
