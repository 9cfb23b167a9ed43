// adakv: the per-head allocation against a slow reference that sorts every head's pooled
// window votes of a layer together, the per-layer sums preserved, and the replay equal to
// snapkv run with those per-head budgets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

#include "kernels/io/halfs.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "tests/cpp/sim_helpers.h"
#include "traces/reader.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

// Window rows of (layer, kvh) summed over the group, as the engine folds them.
std::vector<std::vector<float>> ada_rows(const trace::TraceReader& tr, uint32_t l, uint32_t kvh) {
  const auto& in = tr.info();
  trace::LayerFrame f;
  const auto& sv = tr.step_layer(0, l, f);
  const uint32_t n = sv.first_pos + sv.n_queries;
  std::vector<std::vector<float>> rows(sv.n_rows, std::vector<float>(n, 0.0f));
  std::vector<float> tmp(n);
  for (uint32_t r = 0; r < sv.n_rows; ++r)
    for (uint32_t g = 0; g < in.group; ++g) {
      const auto& rv = sv.row(r, kvh * in.group + g, in.n_heads);
      std::fill(tmp.begin(), tmp.end(), 0.0f);
      trace::halves_to_floats(rv.probs, tmp.data(), rv.n);
      for (uint32_t j = 0; j < n; ++j) rows[r][j] = g == 0 ? tmp[j] : rows[r][j] + tmp[j];
    }
  return rows;
}

// Drives a policy's prefill observe() from the trace, as sim/replay.cpp does (window rows at
// a stride of the context), then allocate().
std::vector<uint32_t> ada_allocate(const trace::TraceReader& tr, const std::string& name, uint32_t B,
                                   nlohmann::json params = nlohmann::json::object()) {
  const auto& in = tr.info();
  const uint32_t ctx = in.prompt_len + tr.n_steps() - 1;
  const auto& info = policy::find(name);
  auto pol = info.make(policy::validate_params(info.params, params, "t"));
  policy::Shape shape{in.n_layers, in.n_kv_heads, ctx, in.head_dim, in.group, 1, &tr};
  pol->reset(shape);
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l) {
    const auto& sv = tr.step_layer(0, l, f);
    const uint32_t n = sv.first_pos + sv.n_queries;
    std::vector<uint8_t> resident(n, 1), where(n, policy::kHbm), bits(n, 16);
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      std::vector<float> agg(n, 0.0f), window(static_cast<size_t>(sv.n_rows) * ctx, 0.0f);
      for (uint32_t g = 0; g < in.group; ++g)
        for (uint32_t j = 0; j < n; ++j) agg[j] += sv.colsum[(kvh * in.group + g) * sv.n_queries + j];
      const auto rows = ada_rows(tr, l, kvh);
      for (uint32_t r = 0; r < sv.n_rows; ++r) std::copy(rows[r].begin(), rows[r].end(), window.begin() + size_t{r} * ctx);
      policy::StreamView v;
      v.layer = l, v.kv_head = kvh, v.stream = shape.stream(l, kvh), v.prefill = true, v.n = n, v.page_size = 1;
      v.resident = resident.data(), v.where = where.data(), v.bits = bits.data();
      v.n_resident = n, v.hbm_units = n, v.budget = B, v.head_dim = in.head_dim, v.group = in.group;
      v.attn = agg.data(), v.head_attn = sv.colsum + size_t{kvh} * in.group * sv.n_queries, v.head_stride = sv.n_queries;
      v.window = window.data(), v.n_window = sv.n_rows, v.window_stride = ctx;
      pol->observe(v);
    }
  }
  std::vector<uint32_t> budgets(shape.streams(), B);
  pol->allocate(policy::Allocation{&shape, B, in.prompt_len}, budgets);
  return budgets;
}

// The slow reference: every (score, head, position) of a layer sorted together; head h gets
// r + alpha b + (1 - alpha) c_h, c_h its entries among the top H b; floors, then the units
// lost to rounding to the largest fractional parts (ties: lower head).
std::vector<uint32_t> ada_reference(const trace::TraceReader& tr, uint32_t B, double alpha, uint32_t w = 32, uint32_t kernel = 7) {
  const auto& in = tr.info();
  const uint32_t H = in.n_kv_heads, n = in.prompt_len;
  std::vector<uint32_t> out;
  for (uint32_t l = 0; l < in.n_layers; ++l) {
    std::vector<std::vector<float>> pooled(H);
    uint32_t r = 0, m = 0;
    for (uint32_t h = 0; h < H; ++h) {
      const auto rows = ada_rows(tr, l, h);
      const uint32_t nw = static_cast<uint32_t>(rows.size()), wv = std::min(w, nw);
      r = std::max<uint32_t>(1, std::min({w, nw, B / 2}));
      m = n - r;
      std::vector<float> votes(n);
      for (uint32_t j = 0; j < n; ++j) {
        double s = 0;
        for (uint32_t q = nw - wv; q < nw; ++q) s += rows[q][j];
        votes[j] = static_cast<float>(s);
      }
      pooled[h].resize(m);
      for (int j = 0; j < static_cast<int>(m); ++j) {
        float best = -1;
        for (int i = j - static_cast<int>(kernel / 2); i < j - static_cast<int>(kernel / 2) + static_cast<int>(kernel); ++i)
          if (i >= 0 && i < static_cast<int>(m)) best = std::max(best, votes[i]);
        pooled[h][j] = best;
      }
    }
    const uint32_t b = B - r;
    if (m <= b) {
      out.insert(out.end(), H, B);
      continue;
    }
    std::vector<std::tuple<float, uint32_t, uint32_t>> all;  // (score, head, position)
    for (uint32_t h = 0; h < H; ++h)
      for (uint32_t j = 0; j < m; ++j) all.emplace_back(pooled[h][j], h, j);
    std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) {
      if (std::get<0>(x) != std::get<0>(y)) return std::get<0>(x) > std::get<0>(y);
      if (std::get<1>(x) != std::get<1>(y)) return std::get<1>(x) < std::get<1>(y);
      return std::get<2>(x) > std::get<2>(y);  // a later position first, as SnapKV's own selection keeps it
    });
    std::vector<uint32_t> count(H, 0), got(H);
    for (size_t i = 0; i < size_t{H} * b; ++i) ++count[std::get<1>(all[i])];
    std::vector<double> ideal(H);
    uint64_t sum = 0;
    for (uint32_t h = 0; h < H; ++h) {
      ideal[h] = r + alpha * b + (1.0 - alpha) * count[h];
      got[h] = static_cast<uint32_t>(std::floor(ideal[h]));
      sum += got[h];
    }
    std::vector<uint32_t> order(H);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t c) { return ideal[a] - got[a] > ideal[c] - got[c]; });
    for (uint32_t i = 0; sum < uint64_t{H} * B; ++i) ++got[order[i]], ++sum;
    out.insert(out.end(), got.begin(), got.end());
  }
  return out;
}

}  // namespace

TEST(PolicyAdakv, AllocationMatchesASlowReference) {
  trace::TraceReader tr(long_prompt_trace());
  const auto& in = tr.info();
  for (uint32_t B : {48u, 96u, 200u})
    for (double alpha : {0.2, 0.5}) {
      const auto got = ada_allocate(tr, "adakv", B, {{"alpha", alpha}});
      EXPECT_EQ(got, ada_reference(tr, B, alpha)) << "B=" << B << " alpha=" << alpha;
      bool adaptive = false;
      for (uint32_t l = 0; l < in.n_layers; ++l) {
        uint64_t sum = 0;
        for (uint32_t h = 0; h < in.n_kv_heads; ++h) {
          const uint32_t b = got[l * in.n_kv_heads + h];
          sum += b;
          adaptive |= b != B;
          const uint32_t r = std::min(32u, B / 2);
          EXPECT_GE(b, r + static_cast<uint32_t>(alpha * (B - r))) << "the safeguard floor";
        }
        EXPECT_EQ(sum, uint64_t{in.n_kv_heads} * B) << "layer " << l;  // the layer's total is preserved
      }
      EXPECT_TRUE(adaptive) << "B=" << B;  // heads differ on a real trace
    }
  // alpha = 1: every head keeps the uniform budget.
  const auto uniform = ada_allocate(tr, "adakv", 96, {{"alpha", 1.0}});
  EXPECT_TRUE(std::all_of(uniform.begin(), uniform.end(), [](uint32_t b) { return b == 96; }));
}

TEST(PolicyAdakv, ReplayIsSnapkvWithTheHeadBudgets) {
  trace::TraceReader tr(long_prompt_trace());
  for (uint32_t B : {48u, 128u}) {
    sim::ReplayConfig snap;
    snap.policy = "snapkv";
    snap.budget = B;
    snap.stream_budgets = ada_reference(tr, B, 0.2);
    const auto want = sim::replay(tr, snap);
    const auto got = run(tr, "adakv", B);
    EXPECT_EQ(got.retained_mass, want.retained_mass) << "B=" << B;
    EXPECT_EQ(got.evictions, want.evictions) << "B=" << B;
    EXPECT_NE(got.retained_mass, run(tr, "snapkv", B).retained_mass) << "B=" << B;
  }
  // A 5-token prompt leaves nothing to reallocate: adakv is snapkv.
  trace::TraceReader st(default_trace());
  EXPECT_EQ(run(st, "adakv", 32).retained_mass, run(st, "snapkv", 32).retained_mass);
}

TEST(PolicyAdakv, PagesStayWithinOnePageOfTheHeadBudgets) {
  trace::TraceReader tr(long_prompt_trace());
  const auto& in = tr.info();
  const uint32_t B = 64, P = 16, S = in.n_layers * in.n_kv_heads;
  sim::ReplayConfig c;
  c.policy = "adakv";
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
