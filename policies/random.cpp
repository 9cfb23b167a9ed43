// random: evicts uniformly random resident entries (seeded; the same seed gives the same
// replay). The floor any informed policy should clear.
#include <random>

#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Random final : public Policy {
 public:
  explicit Random(uint64_t seed) : seed_(seed), rng_(seed) {}
  void reset(const Shape&) override { rng_.seed(seed_); }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    // Candidates: resident entries, or at page granularity the first resident entry of
    // each page holding one (evict_range then takes the whole page).
    const uint32_t B = v.page_size;
    cand_.clear();
    for (uint32_t j = 0; j < v.n; ++j)
      if (v.resident[j] && (B == 1 || cand_.empty() || cand_.back() / B != j / B)) cand_.push_back(j);
    // Partial Fisher-Yates with our own bounded draw (portable: no std distribution).
    uint32_t taken = 0;
    for (uint32_t i = 0; taken < k && i < cand_.size(); ++i) {
      const uint64_t span = cand_.size() - i;
      const uint64_t r = i + static_cast<uint64_t>((static_cast<unsigned __int128>(rng_()) * span) >> 64);
      std::swap(cand_[i], cand_[r]);
      evict_range(v, cand_[i], cand_[i] + 1, k, plan, taken);
    }
  }

 private:
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<uint32_t> cand_;
};
}  // namespace

PolicyInfo random_info() {
  return {"random", "baseline", "evict uniformly random resident entries",
          {{"seed", 1, 0, 9007199254740992.0, true, "random seed"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> { return std::make_unique<Random>(p["seed"].get<uint64_t>()); }};
}

}  // namespace kvscope::policy
