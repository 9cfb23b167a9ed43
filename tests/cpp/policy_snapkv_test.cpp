// snapkv: the prefill selection recomputed here from the trace's window rows (votes, max or
// average pooling, top budget - window), then the decode rule (pinned selection, FIFO for
// the rest), replayed slowly and compared with the engine; page granularity bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "kernels/io/halfs.h"
#include "sim/replay.h"
#include "tests/cpp/sim_helpers.h"
#include "traces/reader.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

// The prefill window rows of (layer, kvh), summed over the group as the engine does.
std::vector<std::vector<float>> snap_window_rows(const trace::TraceReader& tr, uint32_t l, uint32_t kvh) {
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
      if (rv.keys) {
        for (uint32_t i = 0; i < rv.n; ++i) tmp[rv.keys[i]] = f16_to_f32(rv.probs[i]);
      } else {
        trace::halves_to_floats(rv.probs, tmp.data(), rv.n);
      }
      for (uint32_t j = 0; j < n; ++j) rows[r][j] = g == 0 ? tmp[j] : rows[r][j] + tmp[j];
    }
  return rows;
}

// Positions SnapKV keeps at the prefill, and which of them are the pinned prefix.
struct SnapChoice {
  std::set<uint32_t> keep, pinned;
};
SnapChoice snap_choice(const trace::TraceReader& tr, uint32_t l, uint32_t kvh, uint32_t B, uint32_t w, uint32_t kernel,
                       bool avg) {
  const auto rows = snap_window_rows(tr, l, kvh);
  const uint32_t nw = static_cast<uint32_t>(rows.size()), n = static_cast<uint32_t>(rows[0].size());
  const uint32_t wv = std::min(w, nw);
  const uint32_t r = std::max<uint32_t>(1, std::min({w, nw, B / 2}));
  const uint32_t m = n - r;
  std::vector<float> votes(n), pooled(m);
  for (uint32_t j = 0; j < n; ++j) {
    double s = 0;
    for (uint32_t q = nw - wv; q < nw; ++q) s += rows[q][j];
    votes[j] = static_cast<float>(s);
  }
  const int h = static_cast<int>(kernel / 2);
  for (int j = 0; j < static_cast<int>(m); ++j) {
    double sum = 0;
    float best = -1;
    for (int i = j - h; i < j - h + static_cast<int>(kernel); ++i)
      if (i >= 0 && i < static_cast<int>(m)) sum += votes[i], best = std::max(best, votes[i]);
    pooled[j] = avg ? static_cast<float>(sum / kernel) : best;
  }
  std::vector<uint32_t> order(m);
  for (uint32_t j = 0; j < m; ++j) order[j] = j;
  // Evicted first: the smallest pooled score, ties the lower position.
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return pooled[a] < pooled[b] || (pooled[a] == pooled[b] && a < b); });
  SnapChoice c;
  const uint32_t slots = B > r ? B - r : 0, drop = n > B ? m - std::min(m, slots) : 0;
  for (uint32_t i = drop; i < m; ++i) c.keep.insert(order[i]), c.pinned.insert(order[i]);
  for (uint32_t j = m; j < n; ++j) c.keep.insert(j);
  return c;
}

double slow_snapkv(const trace::TraceReader& tr, uint32_t B, uint32_t w, uint32_t kernel, bool avg) {
  std::map<uint32_t, SnapChoice> choice;
  SlowPolicy p;
  p.start = [&](SlowStream& s) { choice[s.layer * 1000 + s.kvh] = snap_choice(tr, s.layer, s.kvh, B, w, kernel, avg); };
  p.evict = [&](SlowStream& s, uint32_t cap, uint32_t step) {
    const SnapChoice& c = choice[s.layer * 1000 + s.kvh];
    if (step == 0) {
      s.res = c.keep;
      return;
    }
    while (s.res.size() > cap) {
      auto it = s.res.begin();
      while (c.pinned.count(*it)) ++it;  // the oldest entry that is not a selected prefix position
      s.res.erase(it);
    }
  };
  return slow_replay(tr, B, p);
}

}  // namespace

TEST(PolicySnapkv, PrefillSelectionMatchesTheWindowVotes) {
  trace::TraceReader tr(long_prompt_trace());
  ASSERT_EQ(tr.info().prompt_len, 429u);
  ASSERT_EQ(tr.info().prefill_window, 32u);
  for (uint32_t B : {48u, 128u, 300u}) {
    const double ref = slow_snapkv(tr, B, 32, 7, false);
    EXPECT_NEAR(run(tr, "snapkv", B).retained_mass, ref, 1e-9) << "B=" << B;
  }
  // Average pooling with another kernel and a shorter window: a different selection.
  const double avg = slow_snapkv(tr, 96, 16, 5, true);
  EXPECT_NEAR(run(tr, "snapkv", 96, {{"window", 16}, {"kernel", 5}, {"avg_pool", 1}}).retained_mass, avg, 1e-9);
  EXPECT_NE(avg, slow_snapkv(tr, 96, 32, 7, false));
}

TEST(PolicySnapkv, SmallBudgetsShrinkTheKeptWindow) {
  // Budgets below twice the window keep floor(B / 2) recent positions and vote for the rest.
  trace::TraceReader tr(long_prompt_trace());
  for (uint32_t B : {8u, 32u})
    EXPECT_NEAR(run(tr, "snapkv", B).retained_mass, slow_snapkv(tr, B, 32, 7, false), 1e-9) << "B=" << B;
  // The short trace's prompt (5 tokens) is all window: nothing to select, a FIFO with the
  // prompt prefix pinned.
  trace::TraceReader st(default_trace());
  EXPECT_NEAR(run(st, "snapkv", 8).retained_mass, slow_snapkv(st, 8, 32, 7, false), 1e-9);
}

TEST(PolicySnapkv, PagesStayWithinOnePageOfTheBudget) {
  trace::TraceReader tr(long_prompt_trace());
  const uint32_t B = 64, P = 16, S = tr.info().n_layers * tr.info().n_kv_heads;
  sim::ReplayConfig c;
  c.policy = "snapkv";
  c.budget = B;
  c.page_size = P;
  c.per_step = true;
  const auto r = sim::replay(tr, c);
  EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-9);
  ASSERT_EQ(r.per_step.size(), tr.n_steps());
  for (const auto& s : r.per_step) {  // whole pages, never more than one page under the budget
    EXPECT_LE(s.hbm_entries, uint64_t{S} * B) << "step " << s.step;
    EXPECT_GE(s.hbm_entries, uint64_t{S} * (B - P + 1)) << "step " << s.step;
  }
  // The selection is not the sliding window's.
  EXPECT_NE(r.retained_mass, run(tr, "window", B, {}, P).retained_mass);
}
