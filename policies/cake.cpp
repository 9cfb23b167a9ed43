// cake: layer budgets by layer preference and an attention-shift tolerant indicator (Qin,
// Cao, Lin, Hu, Fan, Cheng, Lin, Li, "CAKE: Cascading and Adaptive KV Cache Eviction with
// Layer Preferences", ICLR 2025). From the prefill's observation window (the last w prompt
// queries, rows A_{r,j} = group-aggregated attention / group size) over the prefix
// j < n - w, summed over the layer's KV heads:
//   H_l = -sum_{r,j} A_{r,j} log(A_{r,j} + 1e-10)      (spatial dispersion)
//   V_l =  sum_j Var_r(A_{r,j})                         (temporal shift, unbiased variance)
//   P_l =  H_l^(1/tau1) V_l^(1/tau2),   B_l = r + (P_l / sum_l P_l) L (B - r)
// rounded down with the units lost to rounding handed to the largest fractional parts
// (ties: shallower layer), within [one page, context], sum <= L B; every KV head of layer l
// gets B_l (uniform when sum_l P_l is 0, e.g. a prompt no longer than the window).
// Eviction indicator of entry j over every row observed so far (the window rows, then each
// decode step's renormalised attention while j is resident):
//   I_j = mean(A_{.,j}) + gamma Var(A_{.,j})
// At the prefill, SnapKV-style selection on avgpool_k(I) keeps the top B_l - r prefix
// positions and the last r; at each decode step over budget the r most recent entries are
// kept and the smallest I_j evicted (CAKE re-scores at decode from the current queries; here
// the running indicator, unpooled, plays that role). r is the kept window of snapkv_select.h.
// The cascading (layer-by-layer) memory bound of the paper is a prefill-memory device: the
// replay allocates once all layers are observed, which gives the same final budgets.
#include <cmath>

#include "policies/builtin.h"
#include "policies/snapkv_select.h"

namespace kvscope::policy {

namespace {
class Cake final : public Policy {
 public:
  Cake(uint32_t window, uint32_t kernel, bool avg, double tau1, double tau2, double gamma)
      : window_(window), kernel_(kernel), avg_(avg), tau1_(tau1), tau2_(tau2), gamma_(gamma) {}
  void reset(const Shape& s) override {
    shape_ = s;
    stride_ = s.max_tokens;
    sel_.reset(s);
    const size_t cells = static_cast<size_t>(s.streams()) * stride_;
    cnt_.assign(cells, 0);
    s1_.assign(cells, 0.0);
    s2_.assign(cells, 0.0);
    disp_.assign(s.streams(), 0.0);
    shift_.assign(s.streams(), 0.0);
    ideal_.assign(s.n_layers, 0.0);
    layer_.assign(s.n_layers, 0);
    score_.assign(stride_, 0.0f);
    protect_.assign(stride_, 0);
    page_blocked_.assign(stride_ + 1, 0);
  }
  void observe(const StreamView& v) override {
    const size_t base = static_cast<size_t>(v.stream) * stride_;
    uint32_t* c = cnt_.data() + base;
    double *s1 = s1_.data() + base, *s2 = s2_.data() + base;
    const float inv_g = 1.0f / static_cast<float>(std::max<uint32_t>(1, v.group));
    if (!v.prefill) {
      for (uint32_t j = 0; j < v.n; ++j) {
        if (!v.resident[j]) continue;
        const double a = v.attn[j] * inv_g;
        ++c[j], s1[j] += a, s2[j] += a * a;
      }
      return;
    }
    const uint32_t wv = std::min(window_, v.n_window), r0 = v.n_window - wv, prefix = v.n - wv;
    sel_.set_window(v.stream, wv);
    double disp = 0, shift = 0;
    for (uint32_t j = 0; j < v.n; ++j) {
      double sum = 0, sq = 0;
      for (uint32_t r = r0; r < v.n_window; ++r) {
        const double a = sel::window_row(v, r)[j] * inv_g;
        sum += a, sq += a * a;
      }
      c[j] = wv, s1[j] = sum, s2[j] = sq;
      if (j < prefix && wv > 1) {  // Var_r, two-pass
        const double mean = sum / wv;
        double var = 0;
        for (uint32_t r = r0; r < v.n_window; ++r) {
          const double d = sel::window_row(v, r)[j] * inv_g - mean;
          var += d * d;
        }
        shift += var / (wv - 1);
      }
    }
    for (uint32_t r = r0; r < v.n_window; ++r)
      for (uint32_t j = 0; j < prefix; ++j) {
        const double a = sel::window_row(v, r)[j] * inv_g;
        disp -= a * std::log(a + 1e-10);
      }
    disp_[v.stream] = disp, shift_[v.stream] = shift;
    indicator(v, sel_.raw(v.stream));
  }
  void allocate(const Allocation& a, std::vector<uint32_t>& budgets) override {
    uint64_t given = 0;
    for (uint32_t b : budgets) given += b;
    const uint32_t S = shape_.streams(), L = shape_.n_layers, H = shape_.n_kv_heads;
    const uint32_t B = static_cast<uint32_t>(std::min<uint64_t>(a.budget, given / S));
    sel_.set_run_window(window_, B);
    const uint32_t r = std::min(sel_.run_window(), B);
    double total = 0;
    for (uint32_t l = 0; l < L; ++l) {
      double hl = 0, vl = 0;
      for (uint32_t h = 0; h < H; ++h) hl += disp_[shape_.stream(l, h)], vl += shift_[shape_.stream(l, h)];
      ideal_[l] = std::pow(hl, 1.0 / tau1_) * std::pow(vl, 1.0 / tau2_);
      total += ideal_[l];
    }
    for (uint32_t l = 0; l < L; ++l)
      ideal_[l] = total > 0 && std::isfinite(total) ? r + ideal_[l] / total * L * (B - r) : static_cast<double>(B);
    sel::fit_budgets(ideal_.data(), L, static_cast<uint64_t>(L) * B, std::max<uint32_t>(1, shape_.page_size),
                     shape_.max_tokens, layer_.data());
    for (uint32_t l = 0; l < L; ++l)
      for (uint32_t h = 0; h < H; ++h) budgets[shape_.stream(l, h)] = layer_[l];
  }
  void plan(const StreamView& v, Plan& plan) override {
    if (v.prefill) {
      sel_.select(v, sel_.window_for(v, window_), kernel_, avg_, plan);
      return;
    }
    if (v.hbm_units <= v.budget) return;
    const uint32_t k = static_cast<uint32_t>(std::ceil(v.hbm_units - v.budget));
    sel::protect_recent(v, sel_.window_for(v, window_), k, protect_, page_blocked_);
    indicator(v, score_.data());
    lowest_k(score_.data(), v.resident, v.n, k, protect_.data(), plan.evict, scratch_, v.page_size);
  }

 private:
  // I_j = mean + gamma * unbiased variance of the rows observed so far.
  void indicator(const StreamView& v, float* out) const {
    const size_t base = static_cast<size_t>(v.stream) * stride_;
    const uint32_t* c = cnt_.data() + base;
    const double *s1 = s1_.data() + base, *s2 = s2_.data() + base;
    for (uint32_t j = 0; j < v.n; ++j) {
      if (c[j] == 0) {
        out[j] = 0.0f;
        continue;
      }
      const double mean = s1[j] / c[j];
      const double var = c[j] > 1 ? std::max(0.0, (s2[j] - s1[j] * mean) / (c[j] - 1)) : 0.0;
      out[j] = static_cast<float>(mean + gamma_ * var);
    }
  }

  uint32_t window_, kernel_;
  bool avg_;
  double tau1_, tau2_, gamma_;
  Shape shape_;
  uint32_t stride_ = 0;
  sel::Selection sel_;
  std::vector<uint32_t> cnt_;
  std::vector<double> s1_, s2_, disp_, shift_, ideal_;
  std::vector<uint32_t> layer_;
  std::vector<float> score_;
  std::vector<uint8_t> protect_, page_blocked_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo cake_info() {
  return {"cake", "prefill", "layer budgets by attention entropy x variance; mean + gamma * variance eviction indicator",
          {{"window", 32, 1, 1 << 20, true, "observation window: last prompt queries (capped by the trace's window rows)"},
           {"kernel", 5, 1, 1025, true, "pooling kernel size of the prefill indicator"},
           {"avg_pool", 1, 0, 1, true, "1: average pooling, 0: max pooling"},
           {"tau1", 1.6, 0.01, 100.0, false, "temperature of the dispersion (entropy) term"},
           {"tau2", 0.6, 0.01, 100.0, false, "temperature of the shift (variance) term"},
           {"gamma", 200.0, 0.0, 1e9, false, "weight of the variance in the eviction indicator"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<Cake>(p["window"].get<uint32_t>(), p["kernel"].get<uint32_t>(),
                                          p["avg_pool"].get<uint32_t>() != 0, p["tau1"].get<double>(),
                                          p["tau2"].get<double>(), p["gamma"].get<double>());
          }};
}

}  // namespace kvscope::policy
