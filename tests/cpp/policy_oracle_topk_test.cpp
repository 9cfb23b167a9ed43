// oracle-topk (policies/oracle-topk.cpp): the bound as a policy, against its closed form and
// against every other policy.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "tests/cpp/sim_helpers.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

// Per stream and decode step: the B positions with the most group-summed attention (ties:
// lower position), then each query head's mass on them; mean over rows.
double oracle_closed_form(const trace::TraceReader& tr, uint32_t B) {
  const auto& in = tr.info();
  double sum = 0, rows = 0;
  trace::LayerFrame f;
  for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci)
    for (uint32_t l = 0; l < in.n_layers; ++l) {
      tr.read_frame(ci, l, f);
      for (const auto& sv : f.steps) {
        if (sv.kind == trace::StepKind::Prefill) continue;
        const uint32_t n = sv.first_pos + 1;
        for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
          std::vector<std::vector<float>> rows_g;
          std::vector<float> a(n, 0.0f);
          for (uint32_t g = 0; g < in.group; ++g) {
            rows_g.push_back(dense_row(sv, kvh * in.group + g, in.n_heads));
            for (uint32_t j = 0; j < n; ++j) a[j] = g == 0 ? rows_g[g][j] : a[j] + rows_g[g][j];
          }
          std::vector<uint32_t> order(n);
          std::iota(order.begin(), order.end(), 0u);
          std::sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) { return a[x] > a[y] || (a[x] == a[y] && x < y); });
          std::vector<uint8_t> keep(n, 0);
          for (uint32_t i = 0; i < std::min(B, n); ++i) keep[order[i]] = 1;
          for (const auto& row : rows_g) {
            double m = 0;
            for (uint32_t j = 0; j < n; ++j) m += keep[j] ? row[j] : 0.0f;
            sum += m;
            rows += 1;
          }
        }
      }
    }
  return sum / rows;
}

}  // namespace

TEST(PolicyOracleTopk, DeclaresItsNeeds) {
  const auto& p = policy::find("oracle-topk");
  EXPECT_EQ(p.kind, "bound");
  EXPECT_TRUE(p.needs & policy::kNeedsFuture);
  EXPECT_FALSE(p.needs & policy::kNeedsQK);
}

TEST(PolicyOracleTopk, MatchesItsClosedFormAndTheEngineBound) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {16u, 64u, 200u}) {
    const auto r = run(tr, "oracle-topk", B);
    EXPECT_NEAR(r.retained_mass, oracle_closed_form(tr, B), 1e-12) << "B=" << B;
    // Each query head's own top B bounds the group's common choice.
    EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-12) << "B=" << B;
    EXPECT_EQ(r.evictions, 0u);
    EXPECT_LE(r.mean_hbm_entries, double(B));
  }
}

// No other policy holding at most B entries retains more (skipped: "full", which ignores
// the budget; quantizing policies, which hold more entries than B; cache policies, which
// replay a page stream).
TEST(PolicyOracleTopk, BoundsEveryOtherPolicy) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {16u, 64u}) {
    const double bound = run(tr, "oracle-topk", B).retained_mass;
    for (const auto& p : policy::registry()) {
      if (p.kind == "quant" || p.kind == "cache" || p.name == "oracle-topk" || p.name == "full") continue;
      const auto r = run(tr, p.name, B);
      EXPECT_LE(r.retained_mass, bound + 1e-12) << p.name << " beats oracle-topk at B=" << B;
    }
  }
}

TEST(PolicyOracleTopk, WholePagesAtPageSize16) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {32u, 64u}) {
    const auto pages = run(tr, "oracle-topk", B, {}, 16);  // the engine checks whole pages and the budget
    EXPECT_EQ(pages.evictions, 0u);
    // Whole pages are a restriction of the token-level choice.
    EXPECT_LE(pages.retained_mass, run(tr, "oracle-topk", B).retained_mass + 1e-12) << "B=" << B;
    EXPECT_GT(pages.retained_mass, 0.5) << "B=" << B;
  }
}
