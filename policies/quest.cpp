// quest: query-aware page selection (Tang, Zhao, Zhu, Xiao, Kasikci, Han, "Quest:
// Query-Aware Sparsity for Efficient Long-Context LLM Inference", ICML 2024).
//
// A stream's positions are cut into pages of P positions; page p keeps the element-wise
// minimum m_p and maximum M_p of its keys. At a decode step, for query head g of the group,
//   U_{p,g} = sum_d max(q_{g,d} * M_{p,d}, q_{g,d} * m_{p,d})  >=  q_g . k_j  for every j in p,
// and the page's criticality is the group's summed bound, U_p = sum_g U_{p,g}, an upper
// bound on the group's summed logit sum_g q_g . k_j over the page (the paper has one query
// head per KV head; the sum matches the engine's default group aggregation and, on the
// default trace, retains a little more than max_g U_{p,g}). The newest, possibly
// partial, page and the floor(budget / P) - 1 other pages with the largest U_p (ties: lower
// page) are the HBM set: selected pages on the host are fetched, the rest of HBM is
// offloaded. Nothing is evicted — every entry stays reachable, as in the paper, where the
// full cache stays in memory and only the selected pages are loaded for attention.
//
// Pages: at token granularity (engine page size 1) P is the `page` parameter; with an engine
// page size > 1, P is the engine's page size (the engine moves whole pages; `page` is then
// ignored). A budget below one page (token granularity only) keeps the newest `budget`
// entries. The prefill has no query yet: it keeps the newest pages.
#include <algorithm>
#include <cmath>

#include "kernels/io/error.h"
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {

class Quest final : public Policy {
 public:
  explicit Quest(uint32_t page) : page_param_(page) {}

  void reset(const Shape& s) override {
    P_ = s.page_size > 1 ? s.page_size : page_param_;
    hd_ = s.head_dim;
    G_ = s.group;
    max_pages_ = (s.max_tokens + P_ - 1) / P_;
    const size_t cells = static_cast<size_t>(s.streams()) * max_pages_ * hd_;
    lo_.assign(cells, 0.0f);
    hi_.assign(cells, 0.0f);
    folded_.assign(s.streams(), 0);
    bound_.assign(max_pages_, 0.0);
    keep_.assign(max_pages_, 0);
    order_.clear();
    order_.reserve(max_pages_);
  }

  void plan(const StreamView& v, Plan& plan) override {
    const uint32_t n = v.n, np = (n + P_ - 1) / P_;
    if (v.budget < P_) {  // no page fits: the newest `budget` entries
      const uint32_t first = n > v.budget ? n - v.budget : 0;
      for (uint32_t j = 0; j < n; ++j) move(v, j, j >= first, plan);
      return;
    }
    const uint32_t K = v.budget / P_;
    if (!keep_without_scores(v, np, K, keep_.data())) {
      if (!v.q || !v.keys) throw Error("quest: plan() at a decode step without the step's queries and keys");
      fold_keys(v);
      score_pages(v, np);
      keep_top(bound_.data(), np - 1, K - 1, order_, keep_.data());  // the newest page always
      keep_[np - 1] = 1;
    }
    move_to_keep_set(v, keep_.data(), P_, plan);
  }

 private:
  static void move(const StreamView& v, uint32_t j, bool keep, Plan& plan) {
    if (keep && v.where[j] == kHost) plan.fetch.push_back(j);
    else if (!keep && v.where[j] == kHbm) plan.offload.push_back(j);
  }

  // Folds the keys appended since the last call into their pages' min/max.
  void fold_keys(const StreamView& v) {
    const size_t base = static_cast<size_t>(v.stream) * max_pages_ * hd_;
    float* lo = lo_.data() + base;
    float* hi = hi_.data() + base;
    for (uint32_t j = folded_[v.stream]; j < v.n; ++j) {
      const float* k = v.keys + static_cast<size_t>(j) * hd_;
      float* L = lo + static_cast<size_t>(j / P_) * hd_;
      float* H = hi + static_cast<size_t>(j / P_) * hd_;
      if (j % P_ == 0) {
        std::copy(k, k + hd_, L);
        std::copy(k, k + hd_, H);
      } else {
        for (uint32_t d = 0; d < hd_; ++d) L[d] = std::min(L[d], k[d]), H[d] = std::max(H[d], k[d]);
      }
    }
    folded_[v.stream] = v.n;
  }

  // bound_[p] = sum over the group's query heads of sum_d max(q_d * M_pd, q_d * m_pd).
  void score_pages(const StreamView& v, uint32_t np) {
    const size_t base = static_cast<size_t>(v.stream) * max_pages_ * hd_;
    for (uint32_t p = 0; p < np; ++p) {
      const float* L = lo_.data() + base + static_cast<size_t>(p) * hd_;
      const float* H = hi_.data() + base + static_cast<size_t>(p) * hd_;
      double total = 0;
      for (uint32_t g = 0; g < G_; ++g) {
        const float* q = v.q + static_cast<size_t>(g) * hd_;
        double u = 0;
        for (uint32_t d = 0; d < hd_; ++d) {
          const double a = static_cast<double>(q[d]) * H[d], b = static_cast<double>(q[d]) * L[d];
          u += std::max(a, b);
        }
        total += u;
      }
      bound_[p] = total;
    }
  }

  uint32_t page_param_;
  uint32_t P_ = 16, hd_ = 0, G_ = 1, max_pages_ = 0;
  std::vector<float> lo_, hi_;     // [stream][page][head_dim]: element-wise min / max of the page's keys
  std::vector<uint32_t> folded_;   // [stream]: positions folded into lo_/hi_
  std::vector<double> bound_;      // [page] scratch: U_p
  std::vector<uint8_t> keep_;      // [page] scratch: selected
  std::vector<uint32_t> order_;    // scratch: candidate pages
};

}  // namespace

PolicyInfo quest_info() {
  return {"quest",
          "query",
          "query-aware page selection: per-page key min/max bound on q.k, top pages in HBM, the rest on host",
          {{"page", 16, 1, 65536, true,
            "positions per page at token granularity (with --page-size > 1 the engine's page size is used)"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<Quest>(static_cast<uint32_t>(p["page"].get<double>()));
          },
          kNeedsQK};
}

}  // namespace kvscope::policy
