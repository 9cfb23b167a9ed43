// lazy: recurrence-interval eviction after LazyEviction (Zhang, Zhang, Ma, Zhang, Guo,
// "LazyEviction: Lagged KV Eviction with Attention Pattern Observation for Efficient Long
// Reasoning", 2025): tokens regain attention after long gaps, so an entry is kept while it
// is not overdue with respect to the longest gap it has shown. Entry j is important at step t
// when a_{t,j} >= alpha * mean of a_{t,.} over the entries the query sees. Per entry:
//   last_j = the step of its last importance (its first observation before any),
//   MRI_j  = max over its importance events of (t - last_j)    (maximum recurrence interval),
//   S_j(t) = (MRI_j + 1) / (t - last_j + 1)
// S_j >= 1 while the entry is within its longest observed interval and decays once it is
// overdue; the min(recent, floor(budget / 2)) most recent entries are kept and the smallest S_j
// among the rest are evicted (ties: lower position). At the prefill the trace's window rows
// (the last prompt queries) are the observed steps, t = r - (rows - 1) for row r (the
// column sums when a trace has none). Simplified from the paper: no lagged batch eviction
// every W steps (the budget is enforced at every step) and the recent window stands for the
// paper's observation window.
#include <algorithm>

#include "policies/builtin.h"
#include "policies/snapkv_select.h"

namespace kvscope::policy {

namespace {
class Lazy final : public Policy {
 public:
  Lazy(uint32_t recent, double alpha) : recent_(recent), alpha_(alpha) {}
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    const size_t cells = static_cast<size_t>(s.streams()) * stride_;
    last_.assign(cells, 0);
    mri_.assign(cells, 0);
    seen_.assign(cells, 0);
    score_.assign(stride_, 0.0f);
    protect_.assign(stride_, 0);
    page_blocked_.assign(stride_ + 1, 0);
  }
  void observe(const StreamView& v) override {
    if (!v.prefill) {
      double total = 0;
      for (uint32_t j = 0; j < v.n; ++j) total += v.resident[j] ? v.attn[j] : 0.0f;
      row(v, v.attn, v.n, total, v.n_resident, static_cast<int64_t>(v.step), true);
      return;
    }
    if (v.n_window == 0) {  // no window rows: the column sums as one step
      double total = 0;
      for (uint32_t j = 0; j < v.n; ++j) total += v.attn[j];
      row(v, v.attn, v.n, total, v.n, 0, false);
      return;
    }
    for (uint32_t r = 0; r < v.n_window; ++r) {
      const float* a = sel::window_row(v, r);
      const uint32_t seen = v.n - v.n_window + r + 1;  // the query at position seen - 1 sees 0..seen-1
      double total = 0;
      for (uint32_t j = 0; j < seen; ++j) total += a[j];
      row(v, a, seen, total, seen, static_cast<int64_t>(r) - static_cast<int64_t>(v.n_window - 1), false);
    }
  }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    const size_t base = static_cast<size_t>(v.stream) * stride_;
    const int64_t t = v.step;
    for (uint32_t j = 0; j < v.n; ++j) {
      const int64_t last = seen_[base + j] ? last_[base + j] : t;
      score_[j] = static_cast<float>(mri_[base + j] + 1) / static_cast<float>(t - last + 1);
    }
    sel::protect_recent(v, std::min(recent_, v.budget / 2), k, protect_, page_blocked_);
    lowest_k(score_.data(), v.resident, v.n, k, protect_.data(), plan.evict, scratch_, v.page_size);
  }

 private:
  // One observed row a[0..m) at step t: importance against alpha * total / count.
  void row(const StreamView& v, const float* a, uint32_t m, double total, uint32_t count, int64_t t, bool resident_only) {
    const size_t base = static_cast<size_t>(v.stream) * stride_;
    const float thr = count ? static_cast<float>(alpha_ * total / count) : 0.0f;
    for (uint32_t j = 0; j < m; ++j) {
      if (resident_only && !v.resident[j]) continue;
      const size_t c = base + j;
      if (!seen_[c]) seen_[c] = 1, last_[c] = t, mri_[c] = 0;
      if (a[j] >= thr) {
        mri_[c] = std::max(mri_[c], t - last_[c]);
        last_[c] = t;
      }
    }
  }

  uint32_t recent_;
  double alpha_;
  uint32_t stride_ = 0;
  std::vector<int64_t> last_, mri_;
  std::vector<uint8_t> seen_;
  std::vector<float> score_;
  std::vector<uint8_t> protect_, page_blocked_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo lazy_info() {
  return {"lazy", "score", "recurrence intervals: evict entries overdue relative to their longest gap between importances",
          {{"recent", 32, 0, 1 << 20, true, "most recent entries always kept (at most half the budget)"},
           {"alpha", 1.0, 0.0, 1e6, false, "important when attention >= alpha * the mean attention of the step"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<Lazy>(p["recent"].get<uint32_t>(), p["alpha"].get<double>());
          }};
}

}  // namespace kvscope::policy
