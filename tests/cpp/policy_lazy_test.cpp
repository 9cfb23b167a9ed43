// lazy: recurrence-interval eviction against a slow reference built on slow_replay (maps of
// last importance step and maximum recurrence interval per entry, the prefill's window rows
// as the first observed steps), and page granularity bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "sim/replay.h"
#include "tests/cpp/sim_helpers.h"
#include "traces/reader.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

std::vector<std::vector<float>> lazy_rows(const trace::TraceReader& tr, uint32_t l, uint32_t kvh) {
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

double slow_lazy(const trace::TraceReader& tr, uint32_t B, uint32_t recent, double alpha) {
  struct Entry {
    int64_t last = 0, mri = 0;
  };
  std::map<uint32_t, std::map<uint32_t, Entry>> state;  // stream -> position -> entry (present = seen)
  // One observed step t: the entries in `visible` with their attention a.
  auto observe_row = [&](std::map<uint32_t, Entry>& e, const std::vector<uint32_t>& visible, const std::vector<float>& a,
                         int64_t t) {
    double total = 0;
    for (uint32_t j : visible) total += a[j];
    const float thr = static_cast<float>(alpha * total / visible.size());
    for (uint32_t j : visible) {
      if (!e.count(j)) e[j] = Entry{t, 0};
      if (a[j] >= thr) {
        e[j].mri = std::max(e[j].mri, t - e[j].last);
        e[j].last = t;
      }
    }
  };
  SlowPolicy p;
  p.start = [&](SlowStream& s) { state[s.layer * 1000 + s.kvh].clear(); };
  p.prefill = [&](SlowStream& s, const std::vector<float>&) {
    auto& e = state[s.layer * 1000 + s.kvh];
    const auto rows = lazy_rows(tr, s.layer, s.kvh);
    const uint32_t nw = static_cast<uint32_t>(rows.size()), n = static_cast<uint32_t>(rows[0].size());
    for (uint32_t r = 0; r < nw; ++r) {
      std::vector<uint32_t> visible;
      for (uint32_t j = 0; j <= n - nw + r; ++j) visible.push_back(j);  // causal: the query at n - nw + r
      observe_row(e, visible, rows[r], static_cast<int64_t>(r) - static_cast<int64_t>(nw - 1));
    }
  };
  p.evict = [&](SlowStream& s, uint32_t cap, uint32_t step) {
    auto& e = state[s.layer * 1000 + s.kvh];
    const int64_t t = step;
    auto score = [&](uint32_t j) {
      const auto it = e.find(j);
      const int64_t last = it == e.end() ? t : it->second.last, mri = it == e.end() ? 0 : it->second.mri;
      return static_cast<float>(mri + 1) / static_cast<float>(t - last + 1);
    };
    while (s.res.size() > cap) {
      std::vector<uint32_t> cand(s.res.begin(), s.res.end());
      cand.resize(cand.size() - std::min<size_t>(std::min(recent, cap / 2), cand.size()));  // the recent window
      uint32_t victim = cand[0];
      for (uint32_t j : cand)
        if (score(j) < score(victim)) victim = j;  // ties: the lower position
      s.res.erase(victim);
    }
  };
  p.observe = [&](SlowStream& s, const std::vector<float>& agg, uint32_t step) {
    observe_row(state[s.layer * 1000 + s.kvh], std::vector<uint32_t>(s.res.begin(), s.res.end()), agg, step);
  };
  return slow_replay(tr, B, p);
}

}  // namespace

TEST(PolicyLazy, MatchesASlowReference) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {40u, 128u}) EXPECT_NEAR(run(tr, "lazy", B).retained_mass, slow_lazy(tr, B, 32, 1.0), 1e-9) << "B=" << B;
  EXPECT_NEAR(run(tr, "lazy", 64, {{"recent", 8}, {"alpha", 2.0}}).retained_mass, slow_lazy(tr, 64, 8, 2.0), 1e-9);
  // The long prompt: the prefill's window rows seed the intervals, then the prompt is cut.
  trace::TraceReader lt(long_prompt_trace());
  EXPECT_NEAR(run(lt, "lazy", 96).retained_mass, slow_lazy(lt, 96, 32, 1.0), 1e-9);
}

TEST(PolicyLazy, RecurrenceIsNotRecency) {
  // Scoring by recurrence must keep entries the sliding window drops: a different result,
  // and within the oracle bound.
  trace::TraceReader tr(default_trace());
  const auto l = run(tr, "lazy", 64), w = run(tr, "window", 64);
  EXPECT_NE(l.retained_mass, w.retained_mass);
  EXPECT_LE(l.retained_mass, l.oracle_topk_mass + 1e-9);
}

TEST(PolicyLazy, PagesStayWithinOnePageOfTheBudget) {
  trace::TraceReader tr(long_prompt_trace());
  const uint32_t B = 64, P = 16, S = tr.info().n_layers * tr.info().n_kv_heads;
  sim::ReplayConfig c;
  c.policy = "lazy";
  c.budget = B;
  c.page_size = P;
  c.per_step = true;
  const auto r = sim::replay(tr, c);
  EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-9);
  for (const auto& s : r.per_step) {
    EXPECT_LE(s.hbm_entries, uint64_t{S} * B) << "step " << s.step;
    EXPECT_GE(s.hbm_entries, uint64_t{S} * (B - P + 1)) << "step " << s.step;
  }
  EXPECT_NO_THROW(run(tr, "lazy", P, {}, P));
}
