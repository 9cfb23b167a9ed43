// pyramidkv: layer budgets that shrink with depth, SnapKV selection within each layer (Cai,
// Zhang, Gao, Liu, Liu, Lu, Chang, Chen, Wong, Xiao, "PyramidKV: Dynamic KV Cache
// Compression based on Pyramidal Information Funneling", 2024). With L layers, the run's
// budget B, the kept window r (policies/snapkv_select.h) and b = B - r:
//   b_min = floor(b / beta),  b_max = 2b - b_min   (if b_max > context - r: b_max = context - r,
//                                                   b_min = 2b - b_max)
//   B_l   = r + b_max - l (b_max - b_min) / (L - 1)          (arithmetic, sum_l B_l = L B)
// rounded down, then the L - 1 or fewer units lost to rounding go to the layers with the
// largest fractional parts (ties: shallower layer), each clamped to [one page, context] and
// the total never above L B. Every KV head of layer l gets B_l. The paper clamps b_max by the
// prompt; here a budget also holds the generated entries, so the clamp is the context.
// Selection within a stream and decoding as snapkv (pinned selected prefix, FIFO after).
#include "policies/builtin.h"
#include "policies/snapkv_select.h"

namespace kvscope::policy {

namespace {
class PyramidKv final : public sel::SnapKvFamily {
 public:
  PyramidKv(uint32_t window, uint32_t kernel, bool avg, uint32_t beta) : SnapKvFamily(window, kernel, avg), beta_(beta) {}
  void reset(const Shape& s) override {
    SnapKvFamily::reset(s);
    ideal_.assign(s.n_layers, 0.0);
    layer_.assign(s.n_layers, 0);
  }
  void allocate(const Allocation& a, std::vector<uint32_t>& budgets) override {
    const uint32_t B = start_allocation(a, budgets), L = shape_.n_layers, H = shape_.n_kv_heads;
    const uint32_t r = sel_.run_window(), ctx = shape_.max_tokens;
    const int64_t b = static_cast<int64_t>(B) - std::min<int64_t>(r, B);
    int64_t lo = b / beta_, hi = 2 * b - lo;
    const int64_t cap = static_cast<int64_t>(ctx) - r;
    if (hi > cap) hi = cap, lo = 2 * b - hi;
    for (uint32_t l = 0; l < L; ++l)
      ideal_[l] = L == 1 ? static_cast<double>(r + b)
                         : r + static_cast<double>(hi * (L - 1) - static_cast<int64_t>(l) * (hi - lo)) / (L - 1);
    sel::fit_budgets(ideal_.data(), L, static_cast<uint64_t>(L) * B, std::max<uint32_t>(1, shape_.page_size), ctx,
                     layer_.data());
    for (uint32_t l = 0; l < L; ++l)
      for (uint32_t h = 0; h < H; ++h) budgets[shape_.stream(l, h)] = layer_[l];
  }
 private:
  uint32_t beta_;
  std::vector<double> ideal_;
  std::vector<uint32_t> layer_;
};
}  // namespace

PolicyInfo pyramidkv_info() {
  return {"pyramidkv", "prefill", "layer budgets shrinking with depth (arithmetic), SnapKV selection per layer",
          sel::snapkv_params({{"beta", 20, 1, 1 << 20, true, "the last layer gets (budget - window) / beta"}}),
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<PyramidKv>(p["window"].get<uint32_t>(), p["kernel"].get<uint32_t>(),
                                               p["avg_pool"].get<uint32_t>() != 0, p["beta"].get<uint32_t>());
          }};
}

}  // namespace kvscope::policy
