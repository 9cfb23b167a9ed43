// infinigen: speculative KV fetch from a partial query-key product (Lee, Lee, Seo, Sim,
// "InfiniGen: Efficient Generative Inference of Large Language Models with Dynamic KV Cache
// Management", OSDI 2024).
//
// The whole cache lives on the host; a few key dimensions of every entry stay in HBM. Before
// the step's attention, each query head g scores every entry on its r = max(1, round(ratio *
// head_dim)) dimensions D_g and the group combines the speculated attention:
//   s_{g,j} = sum_{d in D_g} q_{g,d} k_{j,d} / sqrt(head_dim),
//   A~_j    = sum_g softmax_j(s_{g,.})  (over all n entries)
// The newest entry (its K/V were just computed on the device) and the budget - 1 other
// entries with the largest A~_j (ties: lower position) are in HBM: fetched from the host if
// needed, every other HBM entry offloaded; nothing is evicted. With ratio 1 the partial
// product is the exact q.k, and A~ is the group-summed full-cache attention recomputed from
// the trace's Q and K.
//
// Simplifications (docs/policies.md): the paper speculates layer i's attention at layer i-1
// from that layer's input and offline SVD-skewed partial Q/K weights, and fetches the tokens
// whose partial score is within `alpha` of the maximum (capped by a budget). A trace holds only
// each layer's own q and k, so here the speculation uses this step's q, and the dimensions are
// chosen online per query head as the r largest |q_{g,d}| * sum_j |k_{j,d}| (the paper picks
// the columns with the largest |Q| and |K| sums once, offline); the count is the budget.
// keep_newest = 0 drops the newest-entry rule (then ratio 1 selects exactly the top-budget
// entries by A~). At page granularity pages are ranked by the sum of A~ over their entries
// and floor(budget / page_size) pages are kept (the newest page when keep_newest). The
// prefill, with no query yet, keeps the newest entries.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/io/error.h"
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {

class InfiniGen final : public Policy {
 public:
  InfiniGen(double ratio, bool keep_newest) : ratio_(ratio), keep_newest_(keep_newest) {}

  void reset(const Shape& s) override {
    hd_ = s.head_dim;
    G_ = s.group;
    P_ = std::max<uint32_t>(1, s.page_size);
    r_ = std::min<uint32_t>(hd_, std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(ratio_ * hd_))));
    colabs_.assign(static_cast<size_t>(s.streams()) * hd_, 0.0);
    folded_.assign(s.streams(), 0);
    approx_.assign(s.max_tokens, 0.0);
    logit_.assign(s.max_tokens, 0.0);
    keep_.assign(s.max_tokens, 0);
    weight_.assign(hd_, 0.0);
    dims_.assign(hd_, 0);
    order_.clear();
    order_.reserve(s.max_tokens);
  }

  void plan(const StreamView& v, Plan& plan) override {
    const uint32_t n = v.n, units = (n + P_ - 1) / P_, K = v.budget / P_;
    if (!keep_without_scores(v, units, K, keep_.data())) {
      if (!v.q || !v.keys) throw Error("infinigen: plan() at a decode step without the step's queries and keys");
      speculate(v);
      if (P_ > 1) {  // pages: summed speculated attention, into approx_[page]
        for (uint32_t p = 0; p < units; ++p) {
          double a = 0;
          for (uint32_t j = p * P_, e = std::min(n, j + P_); j < e; ++j) a += approx_[j];
          logit_[p] = a;
        }
        std::copy(logit_.begin(), logit_.begin() + units, approx_.begin());
      }
      const uint32_t forced = keep_newest_ ? 1 : 0;
      keep_top(approx_.data(), units - forced, K - forced, order_, keep_.data());
      if (forced) keep_[units - 1] = 1;
    }
    move_to_keep_set(v, keep_.data(), P_, plan);
  }

 private:
  // approx_[j] = sum over the group of the softmax of the partial scores.
  void speculate(const StreamView& v) {
    const uint32_t n = v.n;
    double* colabs = colabs_.data() + static_cast<size_t>(v.stream) * hd_;
    for (uint32_t j = folded_[v.stream]; j < n; ++j)
      for (uint32_t d = 0; d < hd_; ++d) colabs[d] += std::fabs(v.keys[static_cast<size_t>(j) * hd_ + d]);
    folded_[v.stream] = n;
    const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(hd_));
    std::fill(approx_.begin(), approx_.begin() + n, 0.0);
    for (uint32_t g = 0; g < G_; ++g) {
      const float* q = v.q + static_cast<size_t>(g) * hd_;
      // The r dimensions with the largest |q_d| * sum_j |k_jd| (ties: lower d), ascending.
      for (uint32_t d = 0; d < hd_; ++d) weight_[d] = std::fabs(static_cast<double>(q[d])) * colabs[d], dims_[d] = d;
      const double* w = weight_.data();
      if (r_ < hd_) {
        std::nth_element(dims_.begin(), dims_.begin() + (r_ - 1), dims_.end(),
                         [w](uint32_t a, uint32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
        std::sort(dims_.begin(), dims_.begin() + r_);
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (uint32_t j = 0; j < n; ++j) {
        const float* k = v.keys + static_cast<size_t>(j) * hd_;
        double s = 0;
        for (uint32_t i = 0; i < r_; ++i) s += static_cast<double>(q[dims_[i]]) * k[dims_[i]];
        logit_[j] = s * inv_sqrt_d;
        mx = std::max(mx, logit_[j]);
      }
      double z = 0;
      for (uint32_t j = 0; j < n; ++j) z += (logit_[j] = std::exp(logit_[j] - mx));
      for (uint32_t j = 0; j < n; ++j) approx_[j] += logit_[j] / z;
    }
  }

  double ratio_;
  bool keep_newest_;
  uint32_t hd_ = 0, G_ = 1, P_ = 1, r_ = 1;
  std::vector<double> colabs_;    // [stream][head_dim]: sum over the stream's keys of |k_d|
  std::vector<uint32_t> folded_;  // [stream]: positions folded into colabs_
  std::vector<double> approx_, logit_;  // [position] scratch
  std::vector<uint8_t> keep_;           // [position or page] scratch
  std::vector<double> weight_;          // [head_dim] scratch
  std::vector<uint32_t> dims_, order_;  // scratch
};

}  // namespace

PolicyInfo infinigen_info() {
  return {"infinigen",
          "query",
          "speculated attention from r key dimensions; fetch the top-budget entries, the rest on host",
          {{"ratio", 0.2, 0.0, 1.0, false,
            "share of the head dimensions used for the partial q.k (r = max(1, round(ratio * head_dim)))"},
           {"keep_newest", 1, 0, 1, true, "1: the newest entry (page) is always in HBM"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<InfiniGen>(p["ratio"].get<double>(), p["keep_newest"].get<double>() != 0);
          },
          kNeedsQK};
}

}  // namespace kvscope::policy
