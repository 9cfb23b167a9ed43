// cake: the layer allocation against a slow reference of P_l = H_l^(1/tau1) V_l^(1/tau2)
// computed here from the trace's window rows, the budgets' sum, and the whole replay (the
// indicator mean + gamma * variance, prefill selection and decode eviction) against a slow
// replay.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "kernels/io/halfs.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "tests/cpp/sim_helpers.h"
#include "traces/reader.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

std::vector<std::vector<float>> cake_rows(const trace::TraceReader& tr, uint32_t l, uint32_t kvh) {
  const auto& in = tr.info();
  trace::LayerFrame f;
  const auto& sv = tr.step_layer(0, l, f);
  const uint32_t n = sv.first_pos + sv.n_queries;
  std::vector<std::vector<float>> rows(sv.n_rows, std::vector<float>(n, 0.0f));
  std::vector<float> tmp(n);
  for (uint32_t r = 0; r < sv.n_rows; ++r)
    for (uint32_t g = 0; g < in.group; ++g) {
      std::fill(tmp.begin(), tmp.end(), 0.0f);
      const auto& rv = sv.row(r, kvh * in.group + g, in.n_heads);
      trace::halves_to_floats(rv.probs, tmp.data(), rv.n);
      for (uint32_t j = 0; j < n; ++j) rows[r][j] = g == 0 ? tmp[j] : rows[r][j] + tmp[j];
    }
  return rows;
}

std::vector<uint32_t> cake_allocate(const trace::TraceReader& tr, uint32_t B, nlohmann::json params = nlohmann::json::object()) {
  const auto& in = tr.info();
  const uint32_t ctx = in.prompt_len + tr.n_steps() - 1;
  const auto& info = policy::find("cake");
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
      const auto rows = cake_rows(tr, l, kvh);
      for (uint32_t r = 0; r < sv.n_rows; ++r) std::copy(rows[r].begin(), rows[r].end(), window.begin() + size_t{r} * ctx);
      policy::StreamView v;
      v.layer = l, v.kv_head = kvh, v.stream = shape.stream(l, kvh), v.prefill = true, v.n = n, v.page_size = 1;
      v.resident = resident.data(), v.where = where.data(), v.bits = bits.data();
      v.n_resident = n, v.hbm_units = n, v.budget = B, v.head_dim = in.head_dim, v.group = in.group;
      v.attn = agg.data(), v.head_attn = sv.colsum + size_t{kvh} * in.group * sv.n_queries, v.head_stride = sv.n_queries;
      v.window = sv.n_rows ? window.data() : nullptr, v.n_window = sv.n_rows, v.window_stride = ctx;
      pol->observe(v);
    }
  }
  std::vector<uint32_t> budgets(shape.streams(), B);
  pol->allocate(policy::Allocation{&shape, B, in.prompt_len}, budgets);
  return budgets;
}

// A = the group-summed window row / group size.
float group_mean(float x, uint32_t G) { return x * (1.0f / static_cast<float>(G)); }

// Slow reference of the allocation: per layer H = -sum A log(A + 1e-10) and V = sum_j Var_r A
// over the prefix before the window, summed over the KV heads; B_l = r + P_l / sum P L (B - r),
// floors, lost units to the largest fractional parts (ties: shallower layer).
std::vector<uint32_t> cake_reference(const trace::TraceReader& tr, uint32_t B, double tau1, double tau2, uint32_t w = 32) {
  const auto& in = tr.info();
  const uint32_t L = in.n_layers, n = in.prompt_len;
  std::vector<double> pref(L);
  uint32_t r = 1;
  for (uint32_t l = 0; l < L; ++l) {
    double hl = 0, vl = 0;
    for (uint32_t h = 0; h < in.n_kv_heads; ++h) {
      const auto rows = cake_rows(tr, l, h);
      const uint32_t nw = static_cast<uint32_t>(rows.size()), wv = std::min(w, nw), r0 = nw - wv, prefix = n - wv;
      r = std::max<uint32_t>(1, std::min({w, nw, B / 2}));
      double disp = 0, shift = 0;
      for (uint32_t j = 0; j < prefix && wv > 1; ++j) {
        double sum = 0;
        for (uint32_t q = r0; q < nw; ++q) sum += group_mean(rows[q][j], in.group);
        double var = 0;
        for (uint32_t q = r0; q < nw; ++q) var += std::pow(group_mean(rows[q][j], in.group) - sum / wv, 2);
        shift += var / (wv - 1);
      }
      for (uint32_t q = r0; q < nw; ++q)
        for (uint32_t j = 0; j < prefix; ++j) {
          const double a = group_mean(rows[q][j], in.group);
          disp -= a * std::log(a + 1e-10);
        }
      hl += disp, vl += shift;
    }
    pref[l] = std::pow(hl, 1.0 / tau1) * std::pow(vl, 1.0 / tau2);
  }
  const double total = std::accumulate(pref.begin(), pref.end(), 0.0);
  std::vector<double> ideal(L);
  std::vector<uint32_t> out(L);
  uint64_t sum = 0;
  for (uint32_t l = 0; l < L; ++l) {
    ideal[l] = total > 0 ? r + pref[l] / total * L * (B - r) : B;
    out[l] = static_cast<uint32_t>(std::floor(ideal[l]));
    sum += out[l];
  }
  std::vector<uint32_t> order(L);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t c) { return ideal[a] - out[a] > ideal[c] - out[c]; });
  for (uint32_t i = 0; sum < uint64_t{L} * B; ++i) ++out[order[i]], ++sum;
  std::vector<uint32_t> streams;
  for (uint32_t l = 0; l < L; ++l) streams.insert(streams.end(), in.n_kv_heads, out[l]);
  return streams;
}

// The whole policy, slowly: per-entry count / sum / sum of squares of A over the window rows
// and the decode rows while resident; prefill: avgpool_5 of I = mean + gamma var over the
// prefix, keep the window and the top budget - window; decode: keep the window, evict the
// smallest I (ties: lower position).
double slow_cake(const trace::TraceReader& tr, uint32_t B, double gamma) {
  const auto& in = tr.info();
  const auto alloc = cake_reference(tr, B, 1.6, 0.6);
  const uint32_t ru = std::max<uint32_t>(1, std::min({32u, in.prefill_window, in.prompt_len, B / 2}));
  struct Stats {
    std::vector<uint32_t> c;
    std::vector<double> s1, s2;
  };
  std::map<uint32_t, Stats> st;
  auto ind = [&](const Stats& s, uint32_t j) {
    if (s.c[j] == 0) return 0.0f;
    const double mean = s.s1[j] / s.c[j];
    const double var = s.c[j] > 1 ? std::max(0.0, (s.s2[j] - s.s1[j] * mean) / (s.c[j] - 1)) : 0.0;
    return static_cast<float>(mean + gamma * var);
  };
  SlowPolicy p;
  p.start = [&](SlowStream& s) {
    Stats& x = st[s.layer * 1000 + s.kvh];
    x.c.assign(1024, 0), x.s1.assign(1024, 0.0), x.s2.assign(1024, 0.0);
    const auto rows = cake_rows(tr, s.layer, s.kvh);
    const uint32_t nw = static_cast<uint32_t>(rows.size()), wv = std::min(32u, nw);
    for (uint32_t j = 0; j < in.prompt_len; ++j) {
      x.c[j] = wv;
      for (uint32_t q = nw - wv; q < nw; ++q) {
        const double a = group_mean(rows[q][j], in.group);
        x.s1[j] += a, x.s2[j] += a * a;
      }
    }
  };
  p.evict = [&](SlowStream& s, uint32_t, uint32_t step) {
    const Stats& x = st[s.layer * 1000 + s.kvh];
    const uint32_t bs = alloc[s.layer * in.n_kv_heads + s.kvh], r = std::max<uint32_t>(1, std::min(ru, bs));
    std::vector<uint32_t> cand(s.res.begin(), s.res.end());
    std::vector<float> score(1024, 0.0f);
    if (step == 0) {
      const uint32_t n = in.prompt_len, m = n - r;
      for (uint32_t j = 0; j < n; ++j) {
        if (j >= m) {
          score[j] = 1e30f;
          continue;
        }
        double sum = 0;
        for (int i = static_cast<int>(j) - 2; i <= static_cast<int>(j) + 2; ++i)
          if (i >= 0 && i < static_cast<int>(m)) sum += ind(x, i);
        score[j] = static_cast<float>(sum / 5);
      }
    } else {
      for (uint32_t j : cand) score[j] = ind(x, j);
      cand.resize(cand.size() - std::min<size_t>(r, cand.size()));  // the window is kept
    }
    std::stable_sort(cand.begin(), cand.end(), [&](uint32_t a, uint32_t b) { return score[a] < score[b]; });
    for (size_t i = 0; s.res.size() > bs; ++i) s.res.erase(cand[i]);
  };
  p.observe = [&](SlowStream& s, const std::vector<float>& agg, uint32_t) {
    Stats& x = st[s.layer * 1000 + s.kvh];
    for (uint32_t j : s.res) {
      const double a = group_mean(agg[j], in.group);
      ++x.c[j], x.s1[j] += a, x.s2[j] += a * a;
    }
  };
  // slow_replay calls evict above its cap: the smallest stream budget, so that every stream
  // is brought to its own budget.
  return slow_replay(tr, *std::min_element(alloc.begin(), alloc.end()), p);
}

}  // namespace

TEST(PolicyCake, AllocationMatchesTheLayerPreferenceFormula) {
  trace::TraceReader tr(long_prompt_trace());
  const auto& in = tr.info();
  for (uint32_t B : {48u, 128u, 256u}) {
    const auto got = cake_allocate(tr, B);
    EXPECT_EQ(got, cake_reference(tr, B, 1.6, 0.6)) << "B=" << B;
    EXPECT_EQ(std::accumulate(got.begin(), got.end(), uint64_t{0}), uint64_t{in.n_layers} * in.n_kv_heads * B);
    EXPECT_NE(*std::min_element(got.begin(), got.end()), *std::max_element(got.begin(), got.end()));  // layers differ
  }
  // Other temperatures: another allocation, still the formula's.
  const auto t = cake_allocate(tr, 96, {{"tau1", 1.0}, {"tau2", 1.0}});
  EXPECT_EQ(t, cake_reference(tr, 96, 1.0, 1.0));
  EXPECT_NE(t, cake_reference(tr, 96, 1.6, 0.6));
  // A prompt no longer than the window has no prefix to measure: uniform budgets.
  trace::TraceReader st(default_trace());
  const auto u = cake_allocate(st, 40);
  EXPECT_TRUE(std::all_of(u.begin(), u.end(), [](uint32_t b) { return b == 40; }));
}

TEST(PolicyCake, ReplayMatchesASlowReference) {
  trace::TraceReader tr(long_prompt_trace());
  for (uint32_t B : {64u, 160u}) EXPECT_NEAR(run(tr, "cake", B).retained_mass, slow_cake(tr, B, 200.0), 1e-9) << "B=" << B;
  EXPECT_NEAR(run(tr, "cake", 96, {{"gamma", 0.0}}).retained_mass, slow_cake(tr, 96, 0.0), 1e-9);
  EXPECT_NE(slow_cake(tr, 96, 0.0), slow_cake(tr, 96, 200.0));  // the variance term matters
}

TEST(PolicyCake, PagesStayWithinOnePageOfTheLayerBudgets) {
  trace::TraceReader tr(long_prompt_trace());
  const auto& in = tr.info();
  const uint32_t B = 64, P = 16, S = in.n_layers * in.n_kv_heads;
  sim::ReplayConfig c;
  c.policy = "cake";
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
