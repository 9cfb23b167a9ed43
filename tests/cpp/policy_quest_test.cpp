// quest (policies/quest.cpp) against a slow reference recomputed from the trace's Q and K.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "kernels/io/error.h"
#include "kernels/model/model.h"
#include "tests/cpp/sim_helpers.h"
#include "traces/format.h"
#include "traces/writer.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

using Rows = std::vector<std::vector<float>>;  // [position or head][head_dim]

// Quest's choice from scratch: every page's min/max recomputed from the keys, the bound
// sum_d max(q_d M_d, q_d m_d) per query head, summed over the group, the newest page plus the
// K - 1 best others (ties: lower page). A budget below a page keeps the newest entries.
std::set<uint32_t> quest_reference(const Rows& K, uint32_t n, const Rows& q, uint32_t B, uint32_t P) {
  std::set<uint32_t> sel;
  if (B < P) {
    for (uint32_t j = n > B ? n - B : 0; j < n; ++j) sel.insert(j);
    return sel;
  }
  const uint32_t np = (n + P - 1) / P, want = B / P;
  std::vector<uint32_t> pages;
  if (want >= np) {
    for (uint32_t p = 0; p < np; ++p) pages.push_back(p);
  } else {
    const size_t hd = K[0].size();
    std::vector<double> U(np);
    for (uint32_t p = 0; p < np; ++p) {
      std::vector<float> lo(K[p * P]), hi(K[p * P]);
      for (uint32_t j = p * P; j < std::min(n, (p + 1) * P); ++j)
        for (size_t d = 0; d < hd; ++d) lo[d] = std::min(lo[d], K[j][d]), hi[d] = std::max(hi[d], K[j][d]);
      U[p] = 0;
      for (const auto& qg : q) {
        double u = 0;
        for (size_t d = 0; d < hd; ++d) u += std::max(double(qg[d]) * hi[d], double(qg[d]) * lo[d]);
        U[p] += u;
      }
    }
    std::vector<uint32_t> others(np - 1);
    std::iota(others.begin(), others.end(), 0u);
    std::sort(others.begin(), others.end(), [&](uint32_t a, uint32_t b) { return U[a] > U[b] || (U[a] == U[b] && a < b); });
    pages.assign(others.begin(), others.begin() + (want - 1));
    pages.push_back(np - 1);
  }
  for (uint32_t p : pages)
    for (uint32_t j = p * P; j < std::min(n, (p + 1) * P); ++j) sel.insert(j);
  return sel;
}

std::vector<float> halves(const uint16_t* h, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(h[i]);
  return out;
}

struct QuestRef {
  double retained = 0;
  uint64_t fetched = 0;  // entries host -> HBM
};

// The whole replay, slowly: per stream, the HBM set is the reference selection at every
// decode step (the prefill keeps the newest pages).
QuestRef quest_replay(const trace::TraceReader& tr, uint32_t B, uint32_t P) {
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
          for (uint32_t t = 0; t < sv.n_queries; ++t) K.push_back(halves(sv.k + (size_t(t) * in.n_kv_heads + kvh) * hd, hd));
          const uint32_t n = sv.first_pos + sv.n_queries;
          if (sv.kind == trace::StepKind::Prefill) {
            const uint32_t np = (n + P - 1) / P, want = B < P ? 0 : B / P;
            for (uint32_t j = 0; j < n; ++j)
              if (B < P ? j + B >= n : j / P + want >= np) hbm.insert(j);
            continue;
          }
          Rows q;
          for (uint32_t g = 0; g < G; ++g) q.push_back(halves(sv.q + size_t(kvh * G + g) * hd, hd));
          hbm.insert(n - 1);  // the new entry arrives in HBM
          const auto sel = quest_reference(K, n, q, B, P);
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

TEST(PolicyQuest, DeclaresItsNeedsAndParameters) {
  const auto& q = policy::find("quest");
  EXPECT_EQ(q.kind, "query");
  EXPECT_TRUE(q.needs & policy::kNeedsQK);
  EXPECT_EQ(policy::validate_params(q.params, {}, "p")["page"].get<double>(), 16.0);
  EXPECT_THROW(policy::validate_params(q.params, {{"page", 0}}, "p"), Error);
}

// The replay's retained mass and fetched bytes equal the slow reference's.
TEST(PolicyQuest, MatchesASlowReference) {
  trace::TraceReader tr(default_trace());
  ASSERT_TRUE(tr.info().with_qkv);
  for (uint32_t B : {32u, 128u}) {
    const auto ref = quest_replay(tr, B, 16);
    const auto r = run(tr, "quest", B);
    EXPECT_NEAR(r.retained_mass, ref.retained, 1e-12) << "B=" << B;
    EXPECT_EQ(r.bytes_fetched, ref.fetched * r.entry_bytes) << "B=" << B;
    EXPECT_EQ(r.evictions, 0u);
    EXPECT_GT(r.fetches, 0u);
    EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-12);
  }
  // Another page size, and a budget below one page (the newest entries).
  const auto ref8 = quest_replay(tr, 40, 8);
  EXPECT_NEAR(run(tr, "quest", 40, {{"page", 8}}).retained_mass, ref8.retained, 1e-12);
  const auto ref_small = quest_replay(tr, 10, 16);
  EXPECT_NEAR(run(tr, "quest", 10).retained_mass, ref_small.retained, 1e-12);
  EXPECT_NEAR(run(tr, "quest", 10).retained_mass, run(tr, "window", 10).retained_mass, 1e-12);
}

// The policy driven by hand on one stream: its HBM set after plan() is the reference's
// selection at every decode step.
TEST(PolicyQuest, SelectedPagesEqualTheReferenceStepByStep) {
  trace::TraceReader tr(default_trace());
  const auto& in = tr.info();
  const uint32_t hd = in.head_dim, G = in.group, ctx = in.prompt_len + tr.n_steps() - 1;
  const uint32_t layer = 2, kvh = 1, B = 48, P = 16;
  const auto& info = policy::find("quest");
  auto pol = info.make(policy::validate_params(info.params, {}, "quest"));
  policy::Shape shape{in.n_layers, in.n_kv_heads, ctx, hd, G, 1, &tr};
  pol->reset(shape);
  std::vector<uint8_t> where(ctx, policy::kEvicted), resident(ctx, 0), bits(ctx, 16);
  std::vector<float> keys(size_t(ctx) * hd), q(size_t(G) * hd);
  Rows K;
  policy::Plan plan;
  trace::LayerFrame f;
  uint32_t checked = 0;
  for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
    tr.read_frame(ci, layer, f);
    for (const auto& sv : f.steps) {
      const uint32_t n = sv.first_pos + sv.n_queries;
      for (uint32_t t = 0; t < sv.n_queries; ++t) {
        const uint32_t j = sv.first_pos + t;
        K.push_back(halves(sv.k + (size_t(t) * in.n_kv_heads + kvh) * hd, hd));
        std::copy(K.back().begin(), K.back().end(), keys.begin() + size_t(j) * hd);
        where[j] = policy::kHbm, resident[j] = 1;
      }
      Rows qr;
      for (uint32_t g = 0; sv.kind == trace::StepKind::Decode && g < G; ++g) {
        qr.push_back(halves(sv.q + size_t(kvh * G + g) * hd, hd));
        std::copy(qr.back().begin(), qr.back().end(), q.begin() + size_t(g) * hd);
      }
      policy::StreamView v;
      v.step = sv.step, v.layer = layer, v.kv_head = kvh, v.stream = shape.stream(layer, kvh);
      v.prefill = sv.kind == trace::StepKind::Prefill;
      v.n = n, v.page_size = 1;
      v.resident = resident.data(), v.where = where.data(), v.bits = bits.data();
      v.n_resident = static_cast<uint32_t>(std::count(resident.begin(), resident.begin() + n, 1));
      v.hbm_units = v.n_resident, v.budget = B, v.head_dim = hd, v.group = G;
      if (!v.prefill) v.q = q.data(), v.keys = keys.data();
      plan.clear();
      pol->plan(v, plan);
      EXPECT_TRUE(plan.evict.empty() && plan.quantize.empty());
      for (uint32_t j : plan.offload) {
        ASSERT_EQ(where[j], policy::kHbm);
        where[j] = policy::kHost, resident[j] = 0;
      }
      for (uint32_t j : plan.fetch) {
        ASSERT_EQ(where[j], policy::kHost);
        where[j] = policy::kHbm, resident[j] = 1;
      }
      if (v.prefill) continue;
      const auto sel = quest_reference(K, n, qr, B, P);
      std::set<uint32_t> got;
      for (uint32_t j = 0; j < n; ++j)
        if (resident[j]) got.insert(j);
      ASSERT_EQ(got, sel) << "step " << sv.step;
      EXPECT_LE(got.size(), B);
      ++checked;
    }
  }
  EXPECT_EQ(checked, tr.n_steps() - 1);
}

// Quest's pages are the engine's pages when the engine pages: same choices as token
// granularity with the same page size.
TEST(PolicyQuest, EnginePagesAreQuestPages) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {32u, 64u}) {
    const auto a = run(tr, "quest", B), b = run(tr, "quest", B, {}, 16);
    EXPECT_EQ(a.retained_mass, b.retained_mass) << "B=" << B;
    EXPECT_EQ(a.bytes_fetched, b.bytes_fetched) << "B=" << B;
    EXPECT_EQ(a.bytes_offloaded, b.bytes_offloaded) << "B=" << B;
  }
  // With engine pages of 8, the engine's page size wins over the parameter.
  EXPECT_NEAR(run(tr, "quest", 40, {}, 8).retained_mass, quest_replay(tr, 40, 8).retained, 1e-12);
}

// A trace captured without Q/K: the replay refuses to start and names the need.
TEST(PolicyQuest, TraceWithoutQkIsAnError) {
  const std::string path = ::testing::TempDir() + "policy_quest_no_qk.kvt";
  {
    ModelConfig c;
    c.name = "tiny", c.format = "synthetic", c.dim = 8, c.hidden_dim = 16, c.n_layers = 1, c.n_heads = 2;
    c.n_kv_heads = 1, c.head_dim = 4, c.vocab_size = 16, c.max_seq_len = 32, c.weight_dtype = "F32";
    trace::CaptureSettings s;
    s.with_qkv = false;
    s.prefill_window = 2;
    const std::vector<int32_t> prompt = {1, 5, 7};
    const nlohmann::json header = {
        {"format", "kvscope-trace"},
        {"version", trace::kVersion},
        {"created_by", "policy_quest_test"},
        {"synthetic", true},
        {"model",
         {{"name", c.name}, {"format", c.format}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads}, {"head_dim", c.head_dim}, {"dim", c.dim}, {"hidden_dim", c.hidden_dim},
          {"vocab_size", c.vocab_size}, {"max_seq_len", c.max_seq_len}, {"rope_theta", 10000.0},
          {"rope_layout", "interleaved"}, {"weight_dtype", c.weight_dtype}}},
        {"tokenizer", {{"identity", "synthetic"}, {"bos_id", 1}, {"eos_id", 2}}},
        {"gqa", {{"group", 2}, {"kv_head_of_q_head", {0, 0}}}},
        {"prompt_ids", prompt},
        {"capture",
         {{"mode", "dense"}, {"topk", 0}, {"with_qkv", false}, {"prefill_window", 2}, {"prob_dtype", "f16"},
          {"qkv_dtype", "f16"}, {"steps_per_chunk", s.steps_per_chunk}, {"zstd_level", s.zstd_level}, {"device", "cpu"}}}};
    trace::TraceWriter w(path, header, c, s);
    std::vector<int32_t> slots(8);
    std::iota(slots.begin(), slots.end(), 0);
    const std::vector<float> zeros(4, 0.0f);
    for (uint32_t step = 0; step < 4; ++step) {
      const bool pre = step == 0;
      const uint32_t nq = pre ? 3 : 1, first = pre ? 0 : 2 + step;
      w.begin_step(step, pre ? trace::StepKind::Prefill : trace::StepKind::Decode, nq, first, pre ? -1 : 9);
      for (uint32_t qi = 0; qi < nq; ++qi)
        for (int h = 0; h < 2; ++h) {
          const uint32_t qpos = first + qi;
          std::vector<float> p(qpos + 1, 1.0f / static_cast<float>(qpos + 1));
          cpu::AttentionRecord r;
          r.layer = 0, r.q_head = h, r.kv_head = 0, r.query_pos = static_cast<int32_t>(qpos);
          r.probs = {p.data(), p.size()};
          r.slot_pos = {slots.data(), p.size()};
          r.q = zeros.data(), r.k = zeros.data(), r.v = zeros.data();
          w.on_attention(r);
        }
      w.end_step();
    }
    w.finish();
  }
  trace::TraceReader tr(path);
  ASSERT_FALSE(tr.info().with_qkv);
  EXPECT_NO_THROW(run(tr, "h2o", 4));
  for (const char* name : {"quest", "infinigen"}) {
    try {
      run(tr, name, 4);
      ADD_FAILURE() << name << " ran on a trace without Q/K";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("needs the trace's Q and K"), std::string::npos) << e.what();
    }
  }
}
