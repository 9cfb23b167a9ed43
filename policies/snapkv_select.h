#pragma once
// Prefill-time selection shared by snapkv, pyramidkv, adakv and cake (and the small
// page-aware helpers keyformer and lazy use too). A header, not a .cpp: every policies/*.cpp
// is a registered policy (tests/cpp/sim_test.cpp checks it).
//
// SnapKV-style selection (Li et al., NeurIPS 2024), per (layer, KV head) stream at the
// prefill step, prompt of n positions, observation window of the last w_v prompt queries:
//   votes_j  = sum over the w_v window rows (and the group) of a_{r,j}
//   pooled_j = pool_{i in [j - k/2, j - k/2 + k)} votes_i   over the prefix j < m = n - r
//              (max pooling, or average with the padding counted: sum / k)
//   keep     = the r most recent prompt positions  +  the top (budget - r) prefix positions
// where r = max(1, min(w, w_v, floor(B / 2))) is the kept window, B the run's uniform
// budget (SnapKV keeps the whole observation window; r shrinks for budgets below 2w so that
// half of a small budget still goes to voted positions; a stream allocated less than r keeps
// a window of its whole budget). The selected prefix entries are pinned for the rest of the
// run; what is not pinned (the window, then every generated entry) is a FIFO: each decode
// step that goes over budget evicts the oldest unpinned entry (SnapKV does not compress
// during decoding; with a hard budget this is the least invasive rule).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "policies/policy.h"

namespace kvscope::policy::sel {

constexpr float kKeep = 1e30f;  // score of positions that must go last (window positions)

// Row r of the prefill window. policy.h documents the rows as [n_window][n]; sim/replay.cpp
// lays them out at a stride of the context (Shape::max_tokens). Every reader goes through
// here; the policy tests recompute the rows from the trace and would catch a change.
inline const float* window_row(const StreamView& v, uint32_t r) {
  return v.window + static_cast<size_t>(r) * v.window_stride;
}

// The kept observation window: at least one entry, at most half the budget.
inline uint32_t kept_window(uint32_t w, uint32_t n_window, uint32_t budget) {
  return std::max<uint32_t>(1, std::min(std::min(w, n_window), budget / 2));
}

// 1-D pooling with stride 1 and padding kernel/2 on both sides, over x[0..m): max pooling
// ignores the padding, average pooling counts it as zeros (PyTorch's avg_pool1d default).
inline void pool(const float* x, uint32_t m, uint32_t kernel, bool avg, float* out) {
  const int64_t h = kernel / 2, M = m;
  for (int64_t j = 0; j < M; ++j) {
    const int64_t lo = std::max<int64_t>(0, j - h), hi = std::min<int64_t>(M, j - h + kernel);
    if (avg) {
      double s = 0;
      for (int64_t i = lo; i < hi; ++i) s += x[i];
      out[j] = static_cast<float>(s / kernel);
    } else {
      float best = x[lo];
      for (int64_t i = lo + 1; i < hi; ++i) best = std::max(best, x[i]);
      out[j] = best;
    }
  }
}

// Integer budgets that follow real-valued `ideal` ones and sum to `total`: floor and clamp
// to [lo, hi]; while the sum is over the total, take one from the largest (ties: lowest
// index); while under, give one to the entry whose ideal exceeds its budget the most (ties:
// lowest index) and is below hi. Never above the total.
inline void fit_budgets(const double* ideal, uint32_t count, uint64_t total, uint32_t lo, uint32_t hi, uint32_t* out) {
  uint64_t sum = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const double f = std::floor(std::max(0.0, ideal[i]));
    out[i] = static_cast<uint32_t>(std::clamp<double>(f, lo, hi));
    sum += out[i];
  }
  while (sum > total) {
    uint32_t best = count;
    for (uint32_t i = 0; i < count; ++i)
      if (out[i] > lo && (best == count || out[i] > out[best])) best = i;
    if (best == count) return;  // everything at the floor: the engine reports it
    --out[best], --sum;
  }
  while (sum < total) {
    uint32_t best = count;
    for (uint32_t i = 0; i < count; ++i)
      if (out[i] < hi && (best == count || ideal[i] - out[i] > ideal[best] - out[best])) best = i;
    if (best == count) return;
    ++out[best], ++sum;
  }
}

// Marks in `protect` (room for v.n) the r most recent resident entries. At page
// granularity a protected entry protects its page; r is halved until the unprotected pages
// hold at least k resident entries, so that k victims can always be found.
inline void protect_recent(const StreamView& v, uint32_t r, uint32_t k, std::vector<uint8_t>& protect,
                           std::vector<uint8_t>& page_blocked) {
  const uint32_t B = std::max<uint32_t>(1, v.page_size);
  if (B == 1) r = std::min(r, v.n_resident > k ? v.n_resident - k : 0);
  for (;;) {
    std::fill(protect.begin(), protect.begin() + v.n, 0);
    for (uint32_t j = v.n, kept = 0; j-- > 0 && kept < r;)
      if (v.resident[j]) protect[j] = 1, ++kept;
    if (B == 1 || r == 0) return;
    const uint32_t pages = (v.n + B - 1) / B;
    std::fill(page_blocked.begin(), page_blocked.begin() + pages, 0);
    for (uint32_t j = 0; j < v.n; ++j)
      if (protect[j]) page_blocked[j / B] = 1;
    uint64_t evictable = 0;
    for (uint32_t j = 0; j < v.n; ++j) evictable += v.resident[j] && !page_blocked[j / B];
    if (evictable >= k) return;
    r /= 2;
  }
}

// Per-stream state of SnapKV-style selection: the raw per-position score from the prefill
// (votes, or another indicator), the pinned prefix, the kept window; struct of arrays of
// stride max_tokens, sized once in reset().
class Selection {
 public:
  void reset(const Shape& s) {
    stride_ = s.max_tokens;
    raw_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    pinned_.assign(static_cast<size_t>(s.streams()) * stride_, 0);
    n_window_.assign(s.streams(), 0);
    run_window_ = 0;
    score_.assign(stride_, 0.0f);
    page_flag_.assign(stride_ + 1, 0);
  }
  float* raw(uint32_t stream) { return raw_.data() + static_cast<size_t>(stream) * stride_; }
  const float* raw(uint32_t stream) const { return raw_.data() + static_cast<size_t>(stream) * stride_; }
  uint32_t n_window(uint32_t stream) const { return n_window_[stream]; }

  // observe() at prefill: votes_j = sum of the last min(w, n_window) window rows.
  void observe_votes(const StreamView& v, uint32_t w) {
    const uint32_t wv = std::min(w, v.n_window);
    n_window_[v.stream] = wv;
    float* out = raw(v.stream);
    for (uint32_t j = 0; j < v.n; ++j) {
      double s = 0;
      for (uint32_t r = v.n_window - wv; r < v.n_window; ++r) s += window_row(v, r)[j];
      out[j] = static_cast<float>(s);
    }
  }
  void set_window(uint32_t stream, uint32_t wv) { n_window_[stream] = wv; }

  // allocate(): the kept window of the run, from its uniform budget (every stream keeps
  // the same window, as SnapKV, PyramidKV and Ada-KV do; a stream whose budget is below it
  // keeps a window of its whole budget).
  void set_run_window(uint32_t w, uint32_t run_budget) {
    run_window_ = kept_window(w, n_window_.empty() ? 0 : n_window_[0], run_budget);
  }
  uint32_t run_window() const { return run_window_; }
  uint32_t window_for(const StreamView& v, uint32_t w) const {
    if (run_window_ == 0) return kept_window(w, n_window_[v.stream], v.budget);  // allocate() not called
    return std::max<uint32_t>(1, std::min(run_window_, v.budget));
  }

  // Pooled prefill score over the prefix j < n - r, kKeep for the kept window.
  const float* prefill_score(const StreamView& v, uint32_t r, uint32_t kernel, bool avg) {
    const uint32_t m = v.n > r ? v.n - r : 0;
    pool(raw(v.stream), m, kernel, avg, score_.data());
    for (uint32_t j = m; j < v.n; ++j) score_[j] = kKeep;
    return score_.data();
  }

  // plan() at prefill: evict down to the budget by the pooled score (page-aware), then pin
  // the surviving prefix (whole pages below the window at page granularity).
  void select(const StreamView& v, uint32_t r, uint32_t kernel, bool avg, Plan& plan) {
    const float* score = prefill_score(v, r, kernel, avg);
    const size_t first = plan.evict.size();
    if (v.hbm_units > v.budget) {
      const uint32_t k = static_cast<uint32_t>(std::ceil(v.hbm_units - v.budget));
      lowest_k(score, v.resident, v.n, k, nullptr, plan.evict, scratch_, v.page_size);
    }
    const uint32_t B = std::max<uint32_t>(1, v.page_size), m = v.n > r ? v.n - r : 0, pin_end = m / B * B;
    uint8_t* pin = pinned_.data() + static_cast<size_t>(v.stream) * stride_;
    std::fill(pin, pin + v.n, 0);
    for (uint32_t j = 0; j < pin_end; ++j) pin[j] = v.resident[j];
    for (size_t i = first; i < plan.evict.size(); ++i) pin[plan.evict[i]] = 0;
  }

  // plan() at a decode step: the oldest unpinned pages first, then (budgets too small for
  // the window) the oldest pinned ones; the page of the newest entry last of all.
  void fifo_victims(const StreamView& v, uint32_t k, Plan& plan) {
    const uint32_t B = std::max<uint32_t>(1, v.page_size), pages = (v.n + B - 1) / B, newest = (v.n - 1) / B;
    const uint8_t* pin = pinned_.data() + static_cast<size_t>(v.stream) * stride_;
    std::fill(page_flag_.begin(), page_flag_.begin() + pages, 0);
    for (uint32_t j = 0; j < v.n; ++j)
      if (v.resident[j] && pin[j]) page_flag_[j / B] = 1;
    uint32_t taken = 0;
    for (int pass = 0; pass < 3 && taken < k; ++pass)
      for (uint32_t p = 0; p < pages && taken < k; ++p) {
        const bool ok = pass == 0 ? (!page_flag_[p] && p != newest) : pass == 1 ? (page_flag_[p] && p != newest) : p == newest;
        if (!ok) continue;
        for (uint32_t j = p * B, e = std::min(v.n, j + B); j < e; ++j)
          if (v.resident[j]) plan.evict.push_back(j), ++taken;
      }
  }

 private:
  uint32_t stride_ = 0, run_window_ = 0;
  std::vector<float> raw_;
  std::vector<uint8_t> pinned_;
  std::vector<uint32_t> n_window_;
  std::vector<float> score_;
  std::vector<uint8_t> page_flag_;
  std::vector<uint32_t> scratch_;
};

// SnapKV and the policies that put a budget allocation on top of it (PyramidKV, Ada-KV):
// prefill votes from the observation window, pooled selection at the prefill, FIFO of the
// unpinned entries after. Subclasses add allocate().
class SnapKvFamily : public Policy {
 public:
  SnapKvFamily(uint32_t window, uint32_t kernel, bool avg) : window_(window), kernel_(kernel), avg_(avg) {}
  void reset(const Shape& s) override {
    shape_ = s;
    sel_.reset(s);
  }
  void observe(const StreamView& v) override {
    if (v.prefill) sel_.observe_votes(v, window_);
  }
  void plan(const StreamView& v, Plan& plan) override {
    if (v.prefill) {
      sel_.select(v, sel_.window_for(v, window_), kernel_, avg_, plan);
    } else if (v.hbm_units > v.budget) {
      sel_.fifo_victims(v, static_cast<uint32_t>(std::ceil(v.hbm_units - v.budget)), plan);
    }
  }

 protected:
  // The uniform budget an allocation starts from: the run's, lowered to the mean of the
  // given per-stream budgets when that is smaller; sets the run's observation window.
  uint32_t start_allocation(const Allocation& a, const std::vector<uint32_t>& budgets) {
    uint64_t given = 0;
    for (uint32_t b : budgets) given += b;
    const uint32_t B = static_cast<uint32_t>(std::min<uint64_t>(a.budget, given / shape_.streams()));
    sel_.set_run_window(window_, B);
    return B;
  }

  uint32_t window_, kernel_;
  bool avg_;
  Shape shape_;
  Selection sel_;
};

// The parameters every SnapKV-family policy takes, followed by `extra`.
inline std::vector<ParamSpec> snapkv_params(std::vector<ParamSpec> extra = {}) {
  std::vector<ParamSpec> p = {
      {"window", 32, 1, 1 << 20, true, "observation window: last prompt queries that vote (capped by the trace's window rows)"},
      {"kernel", 7, 1, 1025, true, "pooling kernel size over positions"},
      {"avg_pool", 0, 0, 1, true, "1: average pooling, 0: max pooling"}};
  p.insert(p.end(), extra.begin(), extra.end());
  return p;
}

}  // namespace kvscope::policy::sel
