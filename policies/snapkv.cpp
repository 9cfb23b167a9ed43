// snapkv: prefill selection by the observation window (Li, Huang, Yang, Venkitesh,
// Locatelli, Ye, Cai, Lewis, Chen, "SnapKV: LLM Knows What You are Looking for Before
// Generation", NeurIPS 2024). Per (layer, KV head) stream, from the last w prompt queries:
//   votes_j  = sum_{r in window} sum_{g in group} a_{r,g,j}
//   pooled_j = maxpool_k(votes)_j  (or avgpool)          over the prefix j < n - r
//   keep the r most recent prompt positions + the top (budget - r) prefix positions by pooled_j,
// r = max(1, min(w, window rows, floor(budget / 2))) (with per-stream budget overrides: the
// run's budget, capped by the stream's). SnapKV does not compress during
// decoding; under a hard budget the selected prefix stays pinned and the rest (window, then
// generated entries) is a FIFO: each step over budget evicts the oldest unpinned entry
// (policies/snapkv_select.h).
#include "policies/builtin.h"
#include "policies/snapkv_select.h"

namespace kvscope::policy {

namespace {
class SnapKv final : public Policy {
 public:
  SnapKv(uint32_t window, uint32_t kernel, bool avg) : window_(window), kernel_(kernel), avg_(avg) {}
  void reset(const Shape& s) override { sel_.reset(s); }
  void observe(const StreamView& v) override {
    if (v.prefill) sel_.observe_votes(v, window_);
  }
  void allocate(const Allocation& a, std::vector<uint32_t>&) override { sel_.set_run_window(window_, a.budget); }
  void plan(const StreamView& v, Plan& plan) override {
    if (v.prefill) {
      sel_.select(v, sel_.window_for(v, window_), kernel_, avg_, plan);
    } else if (v.hbm_units > v.budget) {
      sel_.fifo_victims(v, static_cast<uint32_t>(std::ceil(v.hbm_units - v.budget)), plan);
    }
  }

 private:
  uint32_t window_, kernel_;
  bool avg_;
  sel::Selection sel_;
};
}  // namespace

PolicyInfo snapkv_info() {
  return {"snapkv", "prefill", "observation-window votes, pooled, select the prompt at prefill; FIFO after",
          {{"window", 32, 1, 1 << 20, true, "observation window: last prompt queries that vote (capped by the trace's window rows)"},
           {"kernel", 7, 1, 1025, true, "pooling kernel size over positions"},
           {"avg_pool", 0, 0, 1, true, "1: average pooling, 0: max pooling"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<SnapKv>(p["window"].get<uint32_t>(), p["kernel"].get<uint32_t>(),
                                            p["avg_pool"].get<uint32_t>() != 0);
          }};
}

}  // namespace kvscope::policy
