// infinigen (policies/infinigen.cpp) against a slow reference from the trace's Q and K, and
// its closed relation at ratio 1 (exact q.k: the top-budget entries by the group's attention).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "tests/cpp/sim_helpers.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

using Rows = std::vector<std::vector<float>>;

// The speculated, group-summed attention over positions 0..n-1: per query head, the r
// dimensions with the largest |q_d| * sum_j |k_jd| (ties: lower d), the partial q.k over
// them / sqrt(d), its softmax; summed over the group.
std::vector<double> speculated(const Rows& K, uint32_t n, const Rows& q, uint32_t r) {
  const uint32_t hd = static_cast<uint32_t>(K[0].size());
  std::vector<double> colabs(hd, 0.0), out(n, 0.0);
  for (uint32_t j = 0; j < n; ++j)
    for (uint32_t d = 0; d < hd; ++d) colabs[d] += std::fabs(K[j][d]);
  for (const auto& qg : q) {
    std::vector<uint32_t> dims(hd);
    std::iota(dims.begin(), dims.end(), 0u);
    std::vector<double> w(hd);
    for (uint32_t d = 0; d < hd; ++d) w[d] = std::fabs(double(qg[d])) * colabs[d];
    std::sort(dims.begin(), dims.end(), [&](uint32_t a, uint32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
    dims.resize(r);
    std::sort(dims.begin(), dims.end());
    std::vector<double> e(n);
    double mx = -std::numeric_limits<double>::infinity(), z = 0;
    for (uint32_t j = 0; j < n; ++j) {
      double s = 0;
      for (uint32_t d : dims) s += double(qg[d]) * K[j][d];
      e[j] = s * (1.0 / std::sqrt(double(hd)));
      mx = std::max(mx, e[j]);
    }
    for (uint32_t j = 0; j < n; ++j) z += (e[j] = std::exp(e[j] - mx));
    for (uint32_t j = 0; j < n; ++j) out[j] += e[j] / z;
  }
  return out;
}

struct Ref {
  double retained = 0;
  uint64_t fetched = 0;
};

// Slow replay: at each decode step the HBM set is the newest entry (keep_newest) plus the
// best of the others by the speculated attention (ties: lower position); the prefill keeps
// the newest `budget` entries.
Ref infinigen_replay(const trace::TraceReader& tr, uint32_t B, uint32_t r, bool keep_newest) {
  const auto& in = tr.info();
  const uint32_t hd = in.head_dim, G = in.group;
  double sum = 0, rows = 0;
  uint64_t fetched = 0;
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      Rows K;
      std::set<uint32_t> hbm;
      for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
        tr.read_frame(ci, l, f);
        for (const auto& sv : f.steps) {
          for (uint32_t t = 0; t < sv.n_queries; ++t) {
            std::vector<float> k(hd);
            for (uint32_t d = 0; d < hd; ++d) k[d] = f16_to_f32(sv.k[(size_t(t) * in.n_kv_heads + kvh) * hd + d]);
            K.push_back(k);
          }
          const uint32_t n = sv.first_pos + sv.n_queries;
          if (sv.kind == trace::StepKind::Prefill) {
            for (uint32_t j = n > B ? n - B : 0; j < n; ++j) hbm.insert(j);
            continue;
          }
          hbm.insert(n - 1);
          std::set<uint32_t> sel;
          if (B >= n) {
            for (uint32_t j = 0; j < n; ++j) sel.insert(j);
          } else {
            Rows q;
            for (uint32_t g = 0; g < G; ++g) {
              std::vector<float> qg(hd);
              for (uint32_t d = 0; d < hd; ++d) qg[d] = f16_to_f32(sv.q[size_t(kvh * G + g) * hd + d]);
              q.push_back(qg);
            }
            const auto A = speculated(K, n, q, r);
            std::vector<uint32_t> order(keep_newest ? n - 1 : n);
            std::iota(order.begin(), order.end(), 0u);
            std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return A[a] > A[b] || (A[a] == A[b] && a < b); });
            order.resize(keep_newest ? B - 1 : B);
            sel.insert(order.begin(), order.end());
            if (keep_newest) sel.insert(n - 1);
          }
          for (uint32_t j : sel) fetched += hbm.count(j) ? 0 : 1;
          hbm = sel;
          for (uint32_t g = 0; g < G; ++g) {
            const auto row = dense_row(sv, kvh * G + g, in.n_heads);
            double kept = 0;
            for (uint32_t j : hbm) kept += row[j];
            sum += kept;
            rows += 1;
          }
        }
      }
    }
  return {sum / rows, fetched};
}

}  // namespace

TEST(PolicyInfinigen, DeclaresItsNeedsAndParameters) {
  const auto& p = policy::find("infinigen");
  EXPECT_EQ(p.kind, "query");
  EXPECT_TRUE(p.needs & policy::kNeedsQK);
  const auto d = policy::validate_params(p.params, {}, "p");
  EXPECT_EQ(d["ratio"].get<double>(), 0.2);
  EXPECT_EQ(d["keep_newest"].get<double>(), 1.0);
}

// Partial dimensions (2 of the trace's 8: ratio 0.25), the newest entry kept.
TEST(PolicyInfinigen, MatchesASlowReference) {
  trace::TraceReader tr(default_trace());
  ASSERT_EQ(tr.info().head_dim, 8u);
  for (uint32_t B : {32u, 128u}) {
    const auto ref = infinigen_replay(tr, B, 2, true);
    const auto r = run(tr, "infinigen", B, {{"ratio", 0.25}});
    EXPECT_NEAR(r.retained_mass, ref.retained, 1e-12) << "B=" << B;
    EXPECT_EQ(r.bytes_fetched, ref.fetched * r.entry_bytes) << "B=" << B;
    EXPECT_EQ(r.evictions, 0u);
  }
  // The default ratio 0.2: round(1.6) = 2 dimensions as well.
  EXPECT_EQ(run(tr, "infinigen", 48).retained_mass, run(tr, "infinigen", 48, {{"ratio", 0.25}}).retained_mass);
}

// Ratio 1: the partial product is the exact q.k, so without the newest-entry rule the HBM
// set is exactly the budget entries with the most group-summed attention recomputed from Q
// and K — the oracle's choice up to the fp16 rounding of the trace's probabilities.
TEST(PolicyInfinigen, FullRatioSelectsTheTopBudgetByExactAttention) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {16u, 64u}) {
    const auto ref = infinigen_replay(tr, B, 8, false);
    const auto r = run(tr, "infinigen", B, {{"ratio", 1.0}, {"keep_newest", 0}});
    EXPECT_NEAR(r.retained_mass, ref.retained, 1e-12) << "B=" << B;
    const auto oracle = run(tr, "oracle-topk", B);
    EXPECT_LE(r.retained_mass, oracle.retained_mass + 1e-12) << "B=" << B;
    EXPECT_NEAR(r.retained_mass, oracle.retained_mass, 2e-3) << "B=" << B;
    // Fewer dimensions speculate worse.
    EXPECT_LT(run(tr, "infinigen", B, {{"ratio", 0.125}, {"keep_newest", 0}}).retained_mass, r.retained_mass) << "B=" << B;
  }
}

TEST(PolicyInfinigen, WholePagesAtPageSize16) {
  trace::TraceReader tr(default_trace());
  const auto r = run(tr, "infinigen", 64, {}, 16);  // the engine checks budget and whole pages
  EXPECT_EQ(r.evictions, 0u);
  EXPECT_GT(r.fetches, 0u);
  EXPECT_LE(r.mean_hbm_entries, 64.0);
  EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-12);
  // With exact scores, whole pages by summed attention are the page-level oracle's choice
  // up to the fp16 rounding of the trace's probabilities.
  const auto exact = run(tr, "infinigen", 64, {{"ratio", 1.0}, {"keep_newest", 0}}, 16);
  EXPECT_NEAR(exact.retained_mass, run(tr, "oracle-topk", 64, {}, 16).retained_mass, 2e-3);
}
