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
class SnapKv final : public sel::SnapKvFamily {
 public:
  using SnapKvFamily::SnapKvFamily;
  void allocate(const Allocation& a, std::vector<uint32_t>&) override { sel_.set_run_window(window_, a.budget); }
};
}  // namespace

PolicyInfo snapkv_info() {
  return {"snapkv", "prefill", "observation-window votes, pooled, select the prompt at prefill; FIFO after",
          sel::snapkv_params(),
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<SnapKv>(p["window"].get<uint32_t>(), p["kernel"].get<uint32_t>(),
                                            p["avg_pool"].get<uint32_t>() != 0);
          }};
}

}  // namespace kvscope::policy
