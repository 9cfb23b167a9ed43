// adakv: adaptive budget allocation across the KV heads of a layer (Feng, Lv, Cao, Xie,
// Zhou, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient
// LLM Inference", 2024), on top of SnapKV's scores. Per layer with H KV heads, run budget B,
// kept window r (policies/snapkv_select.h), b = B - r and each head's pooled window votes
// s_{h,j} over its prefix j < n - r:
//   c_h  = |{ (h, j) in the top H b of all the layer's s_{h,j} }|      (ties: lower head, then
//                                                                       later position first)
//   B_h  = r + alpha b + (1 - alpha) c_h     (the safeguard floor alpha b of the paper;
//                                             sum_h B_h = H B)
// rounded down with the units lost to rounding handed to the largest fractional parts
// (ties: lower head), each within [one page, context]; a prompt whose prefix fits in b
// keeps the uniform budget. Each head then selects its own top B_h - r prefix positions
// and keeps the window, and decodes as snapkv (pinned selection, FIFO after).
#include <algorithm>

#include "policies/builtin.h"
#include "policies/snapkv_select.h"

namespace kvscope::policy {

namespace {
class AdaKv final : public sel::SnapKvFamily {
 public:
  AdaKv(uint32_t window, uint32_t kernel, bool avg, double alpha) : SnapKvFamily(window, kernel, avg), alpha_(alpha) {}
  void reset(const Shape& s) override {
    SnapKvFamily::reset(s);
    pooled_.assign(static_cast<size_t>(s.n_kv_heads) * s.max_tokens, 0.0f);
    cand_.clear();
    cand_.reserve(static_cast<size_t>(s.n_kv_heads) * s.max_tokens);
    count_.assign(s.n_kv_heads, 0);
    ideal_.assign(s.n_kv_heads, 0.0);
    head_.assign(s.n_kv_heads, 0);
  }
  void allocate(const Allocation& a, std::vector<uint32_t>& budgets) override {
    const uint32_t B = start_allocation(a, budgets), H = shape_.n_kv_heads, ctx = shape_.max_tokens;
    const uint32_t r = std::min(sel_.run_window(), B), b = B - r;
    const uint32_t m = a.prompt_len > r ? a.prompt_len - r : 0;
    for (uint32_t l = 0; l < shape_.n_layers; ++l) {
      if (m <= b) {  // nothing to compress: uniform
        for (uint32_t h = 0; h < H; ++h) budgets[shape_.stream(l, h)] = B;
        continue;
      }
      cand_.clear();
      for (uint32_t h = 0; h < H; ++h) {
        float* p = pooled_.data() + static_cast<size_t>(h) * ctx;
        sel::pool(sel_.raw(shape_.stream(l, h)), m, kernel_, avg_, p);
        for (uint32_t j = 0; j < m; ++j) cand_.push_back({p[j], h, j});
      }
      const size_t top = static_cast<size_t>(H) * b;
      auto before = [](const Cand& x, const Cand& y) {
        return x.s > y.s || (x.s == y.s && (x.h < y.h || (x.h == y.h && x.j > y.j)));
      };
      std::nth_element(cand_.begin(), cand_.begin() + top, cand_.end(), before);
      std::fill(count_.begin(), count_.end(), 0);
      for (size_t i = 0; i < top; ++i) ++count_[cand_[i].h];
      for (uint32_t h = 0; h < H; ++h) ideal_[h] = r + alpha_ * b + (1.0 - alpha_) * count_[h];
      sel::fit_budgets(ideal_.data(), H, static_cast<uint64_t>(H) * B, std::max<uint32_t>(1, shape_.page_size), ctx,
                       head_.data());
      for (uint32_t h = 0; h < H; ++h) budgets[shape_.stream(l, h)] = head_[h];
    }
  }
 private:
  struct Cand {
    float s;
    uint32_t h, j;
  };
  double alpha_;
  std::vector<float> pooled_;
  std::vector<Cand> cand_;
  std::vector<uint32_t> count_, head_;
  std::vector<double> ideal_;
};
}  // namespace

PolicyInfo adakv_info() {
  return {"adakv", "prefill", "per-layer budget shared across KV heads by their top SnapKV scores (floor alpha)",
          sel::snapkv_params({{"alpha", 0.2, 0.0, 1.0, false, "safeguard: share of each head's uniform budget it keeps whatever its scores"}}),
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<AdaKv>(p["window"].get<uint32_t>(), p["kernel"].get<uint32_t>(),
                                           p["avg_pool"].get<uint32_t>() != 0, p["alpha"].get<double>());
          }};
}

}  // namespace kvscope::policy
