// oracle-topk: the retained-mass bound as a policy (offline; docs/policies.md, "Metrics").
// At decode step t it reads the step's full-cache attention before it happens (`future`,
// group-aggregated as the run aggregates, sum by default) and holds in HBM the budget
// entries with the most of it:
//   H_t = argmax_{|H| <= B} sum_{j in H} a~_{t,j},   a~_{t,j} = agg_g p_{t,g,j}   (ties: lower position)
// Everything else is on the host (offload / fetch; never evicted), so the choice at one
// step costs nothing at the next. With the sum aggregation H_t maximises the group's summed
// mass, hence the mean over query heads: no policy holding at most B entries retains more.
// It is at most the engine's per-query-head oracle_topk_mass (each head's own top B).
// Page granularity: the floor(B / page_size) pages with the most summed attention. The
// prefill, with no attention to come yet, keeps the newest entries.
#include <algorithm>

#include "kernels/io/error.h"
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {

class OracleTopk final : public Policy {
 public:
  void reset(const Shape& s) override {
    P_ = std::max<uint32_t>(1, s.page_size);
    score_.assign(s.max_tokens, 0.0f);
    keep_.assign(s.max_tokens, 0);
    order_.clear();
    order_.reserve(s.max_tokens);
  }

  void plan(const StreamView& v, Plan& plan) override {
    const uint32_t n = v.n, units = (n + P_ - 1) / P_, K = v.budget / P_;
    if (!keep_without_scores(v, units, K, keep_.data())) {
      if (!v.future) throw Error("oracle-topk: plan() at a decode step without the step's attention (future)");
      const float* a = v.future;
      if (P_ > 1) {
        for (uint32_t p = 0; p < units; ++p) {
          float s = 0;
          for (uint32_t j = p * P_, e = std::min(n, j + P_); j < e; ++j) s += v.future[j];
          score_[p] = s;
        }
        a = score_.data();
      }
      keep_top(a, units, K, order_, keep_.data());
    }
    move_to_keep_set(v, keep_.data(), P_, plan);
  }

 private:
  uint32_t P_ = 1;
  std::vector<float> score_;     // [page] scratch
  std::vector<uint8_t> keep_;    // [position or page] scratch
  std::vector<uint32_t> order_;  // scratch
};

}  // namespace

PolicyInfo oracle_topk_info() {
  return {"oracle-topk",
          "bound",
          "offline: the budget entries with the most attention at each step in HBM, the rest on host",
          {},
          [](const nlohmann::json&) -> std::unique_ptr<Policy> { return std::make_unique<OracleTopk>(); },
          kNeedsFuture};
}

}  // namespace kvscope::policy
