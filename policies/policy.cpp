#include "policies/policy.h"

#include <algorithm>
#include <cmath>

#include "kernels/io/error.h"

namespace kvscope::policy {

nlohmann::json validate_params(const std::vector<ParamSpec>& specs, const nlohmann::json& params, const std::string& where) {
  if (!params.is_null() && !params.is_object()) throw Error(where + ": expected an object of parameters");
  nlohmann::json out = nlohmann::json::object();
  if (params.is_object())
    for (auto item = params.begin(); item != params.end(); ++item) {
      const std::string& k = item.key();
      const nlohmann::json& v = item.value();
      auto it = std::find_if(specs.begin(), specs.end(), [&](const ParamSpec& s) { return s.name == k; });
      if (it == specs.end()) {
        std::string known;
        for (auto& s : specs) known += (known.empty() ? "" : ", ") + s.name;
        throw Error(where + "." + k + ": unknown parameter (known: " + (known.empty() ? "none" : known) + ")");
      }
      if (!v.is_number()) throw Error(where + "." + k + ": expected a number");
      const double x = v.get<double>();
      if (it->integer && (x != std::floor(x))) throw Error(where + "." + k + ": expected an integer");
      if (!(x >= it->min && x <= it->max))
        throw Error(where + "." + k + ": " + v.dump() + " outside [" + nlohmann::json(it->min).dump() + ", " +
                    nlohmann::json(it->max).dump() + "]");
      out[k] = x;
    }
  for (auto& s : specs)
    if (!out.contains(s.name)) out[s.name] = s.dflt;
  return out;
}

void lowest_k(const float* score, const uint8_t* resident, uint32_t n, uint32_t k, const uint8_t* protect,
              std::vector<uint32_t>& out, std::vector<uint32_t>& scratch) {
  scratch.clear();
  for (uint32_t j = 0; j < n; ++j)
    if (resident[j] && !(protect && protect[j])) scratch.push_back(j);
  if (k > scratch.size()) throw Error("policy: asked for " + std::to_string(k) + " victims among " +
                                      std::to_string(scratch.size()) + " evictable entries");
  auto less = [&](uint32_t a, uint32_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); };
  if (k < scratch.size()) std::nth_element(scratch.begin(), scratch.begin() + k, scratch.end(), less);
  std::sort(scratch.begin(), scratch.begin() + k);
  out.insert(out.end(), scratch.begin(), scratch.begin() + k);
}

void evict_lowest_outside_recent(const StreamView& v, uint32_t k, double recent_ratio, const float* score,
                                 std::vector<uint8_t>& protect, std::vector<uint32_t>& scratch, Plan& plan) {
  const uint32_t recent = static_cast<uint32_t>(std::lround(recent_ratio * v.budget));
  std::fill(protect.begin(), protect.begin() + v.n, 0);
  for (uint32_t j = v.n, kept = 0; j-- > 0 && kept < recent;)
    if (v.resident[j]) protect[j] = 1, ++kept;
  lowest_k(score, v.resident, v.n, k, protect.data(), plan.evict, scratch);
}

namespace {

class AccumulatedScore final : public Policy {
 public:
  AccumulatedScore(float lambda, double recent_ratio) : lambda_(lambda), ratio_(recent_ratio) {}
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
    evict_lowest_outside_recent(v, k, ratio_, score_.data() + static_cast<size_t>(v.stream) * stride_, protect_, scratch_,
                                plan);
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

std::unique_ptr<Policy> make_accumulated_score(float lambda, double recent_ratio) {
  return std::make_unique<AccumulatedScore>(lambda, recent_ratio);
}

}  // namespace kvscope::policy
