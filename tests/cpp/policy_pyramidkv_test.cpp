// pyramidkv: the per-layer budgets against their closed form (arithmetic sequence from
// 2b - b/beta down to b/beta, plus the window), the total never above L x budget, and the
// replay equal to snapkv run with those layer budgets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "policies/registry.h"
#include "sim/replay.h"
#include "tests/cpp/sim_helpers.h"
#include "traces/reader.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

// Closed form: B_l = r + b_max - l (b_max - b_min) / (L - 1), b = B - r, b_min = b / beta,
// b_max = 2b - b_min (clamped by the context); floors, then the lost units to the largest
// fractional parts (ties: shallower). Cases here never hit the page / context clamps.
std::vector<uint32_t> pyramid_closed_form(uint32_t L, uint32_t B, uint32_t r, uint32_t beta, uint32_t ctx) {
  const int64_t b = static_cast<int64_t>(B) - r;
  int64_t lo = b / beta, hi = 2 * b - lo;
  if (hi > static_cast<int64_t>(ctx) - r) hi = static_cast<int64_t>(ctx) - r, lo = 2 * b - hi;
  std::vector<double> ideal(L);
  std::vector<uint32_t> out(L);
  uint64_t sum = 0;
  for (uint32_t l = 0; l < L; ++l) {
    ideal[l] = r + static_cast<double>(hi * (L - 1) - static_cast<int64_t>(l) * (hi - lo)) / (L - 1);
    out[l] = static_cast<uint32_t>(std::floor(ideal[l]));
    sum += out[l];
  }
  std::vector<uint32_t> order(L);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t c) { return ideal[a] - out[a] > ideal[c] - out[c]; });
  for (uint32_t i = 0; sum < uint64_t{L} * B; ++i) ++out[order[i]], ++sum;
  return out;
}

// Budgets the policy allocates for a synthetic prefill with `n_window` window rows.
std::vector<uint32_t> pyramid_allocate(uint32_t L, uint32_t H, uint32_t ctx, uint32_t prompt, uint32_t n_window, uint32_t B,
                                       uint32_t page, nlohmann::json params = nlohmann::json::object()) {
  const auto& info = policy::find("pyramidkv");
  auto pol = info.make(policy::validate_params(info.params, params, "t"));
  policy::Shape shape{L, H, ctx, 8, 1, page, nullptr};
  pol->reset(shape);
  std::vector<float> colsum(prompt, 1.0f), window(static_cast<size_t>(n_window) * ctx, 0.0f);
  std::vector<uint8_t> resident(prompt, 1), where(prompt, policy::kHbm), bits(prompt, 16);
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t h = 0; h < H; ++h) {
      policy::StreamView v;
      v.layer = l, v.kv_head = h, v.stream = shape.stream(l, h), v.prefill = true, v.n = prompt, v.page_size = page;
      v.resident = resident.data(), v.where = where.data(), v.bits = bits.data();
      v.n_resident = prompt, v.hbm_units = prompt, v.budget = B, v.head_dim = 8, v.group = 1;
      v.attn = colsum.data(), v.head_attn = colsum.data(), v.head_stride = prompt;
      v.window = window.data(), v.n_window = n_window, v.window_stride = ctx;
      pol->observe(v);
    }
  std::vector<uint32_t> budgets(shape.streams(), B);
  pol->allocate(policy::Allocation{&shape, B, prompt}, budgets);
  return budgets;
}

}  // namespace

TEST(PolicyPyramidkv, LayerBudgetsFollowTheClosedForm) {
  struct Case {
    uint32_t L, H, ctx, prompt, B, beta;
  };
  for (const Case& c : {Case{5, 4, 512, 429, 64, 20}, Case{32, 8, 4096, 3000, 128, 20}, Case{32, 8, 4096, 3000, 1024, 10},
                        Case{5, 4, 512, 429, 400, 20}, Case{12, 2, 2048, 2000, 100, 7}}) {
    const uint32_t r = std::max<uint32_t>(1, std::min(32u, c.B / 2));
    const auto got = pyramid_allocate(c.L, c.H, c.ctx, c.prompt, 32, c.B, 1, {{"beta", c.beta}});
    const auto want = pyramid_closed_form(c.L, c.B, r, c.beta, c.ctx);
    uint64_t total = 0;
    for (uint32_t l = 0; l < c.L; ++l)
      for (uint32_t h = 0; h < c.H; ++h) {
        EXPECT_EQ(got[l * c.H + h], want[l]) << "L=" << c.L << " B=" << c.B << " layer " << l;
        total += got[l * c.H + h];
      }
    EXPECT_EQ(total, uint64_t{c.L} * c.H * c.B) << "B=" << c.B;  // the whole budget, no more
    EXPECT_GT(want.front(), want.back());                         // a pyramid: shallow layers keep more
    EXPECT_TRUE(std::is_sorted(want.rbegin(), want.rend()));
  }
  // The paper's numbers: b = 96 (B = 128, window 32), beta = 20: layer 0 gets 2b - b/20 = 188
  // plus the window, the last layer b/20 = 4 plus the window.
  const auto p = pyramid_closed_form(32, 128, 32, 20, 4096);
  EXPECT_EQ(p.front(), 32u + 188u);
  EXPECT_EQ(p.back(), 32u + 4u);
}

TEST(PolicyPyramidkv, TotalNeverAboveTheBudgetAndEachStreamInRange) {
  for (uint32_t page : {1u, 16u})
    for (uint32_t B = page; B <= 512; B += 37) {
      const auto got = pyramid_allocate(5, 4, 512, 429, 32, B, page);
      const uint64_t total = std::accumulate(got.begin(), got.end(), uint64_t{0});
      EXPECT_LE(total, uint64_t{20} * B) << "B=" << B << " page " << page;
      for (uint32_t b : got) {
        EXPECT_GE(b, page) << "B=" << B;
        EXPECT_LE(b, 512u) << "B=" << B;
      }
    }
}

TEST(PolicyPyramidkv, ReplayIsSnapkvWithTheLayerBudgets) {
  trace::TraceReader tr(long_prompt_trace());
  const auto& in = tr.info();
  const uint32_t ctx = in.prompt_len + tr.n_steps() - 1;
  for (uint32_t B : {48u, 128u}) {
    const uint32_t r = std::max<uint32_t>(1, std::min(32u, B / 2));
    const auto layers = pyramid_closed_form(in.n_layers, B, r, 20, ctx);
    sim::ReplayConfig snap;
    snap.policy = "snapkv";
    snap.budget = B;
    snap.layer_budgets = layers;
    const auto want = sim::replay(tr, snap);
    const auto got = run(tr, "pyramidkv", B);
    EXPECT_EQ(got.retained_mass, want.retained_mass) << "B=" << B;
    EXPECT_EQ(got.evictions, want.evictions) << "B=" << B;
    EXPECT_LE(got.mean_hbm_entries, B + 1e-9);  // the average stream holds no more than the uniform budget
    EXPECT_NE(got.retained_mass, run(tr, "snapkv", B).retained_mass);  // the pyramid changes the outcome
  }
}

TEST(PolicyPyramidkv, PagesStayWithinOnePageOfTheLayerBudgets) {
  trace::TraceReader tr(long_prompt_trace());
  const auto& in = tr.info();
  const uint32_t B = 64, P = 16, S = in.n_layers * in.n_kv_heads;
  sim::ReplayConfig c;
  c.policy = "pyramidkv";
  c.budget = B;
  c.page_size = P;
  c.per_step = true;
  const auto r = sim::replay(tr, c);
  EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-9);
  for (const auto& s : r.per_step) {
    EXPECT_LE(s.hbm_entries, uint64_t{S} * B) << "step " << s.step;
    EXPECT_GE(s.hbm_entries, uint64_t{S} * (B - P + 1)) << "step " << s.step;
  }
}
