// Replay engine and policies: closed forms and slow references on the committed trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <cmath>
#include <functional>
#include <set>
#include <string>

#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "traces/reader.h"
#include "tests/cpp/sim_helpers.h"

using namespace kvscope;
namespace fs = std::filesystem;

using namespace kvscope::testing;

TEST(PolicyRegistry, EveryPolicyFileIsRegistered) {
  std::set<std::string> files;
  for (auto& e : fs::directory_iterator(std::string(KVSCOPE_SOURCE_DIR) + "/policies")) {
    const std::string stem = e.path().stem().string();
    if (e.path().extension() == ".cpp" && stem != "policy" && stem != "registry") files.insert(stem);  // helpers live in headers
  }
  std::set<std::string> names;
  for (const auto& p : policy::registry()) names.insert(p.name);
  EXPECT_EQ(files, names);  // one file per policy, named after it, and each one registered
}

TEST(PolicyParams, UnknownKeysAndBadValuesNameTheKey) {
  const auto& h2o = policy::find("h2o");
  EXPECT_NO_THROW(policy::validate_params(h2o.params, {{"recent_ratio", 0.25}}, "p"));
  try {
    policy::validate_params(h2o.params, {{"recnt_ratio", 0.25}}, "policies[0].params");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("policies[0].params.recnt_ratio: unknown parameter"), std::string::npos) << e.what();
  }
  EXPECT_THROW(policy::validate_params(h2o.params, {{"recent_ratio", 1.5}}, "p"), Error);
  EXPECT_THROW(policy::validate_params(h2o.params, {{"recent_ratio", "half"}}, "p"), Error);
  EXPECT_THROW(policy::validate_params(policy::find("streamingllm").params, {{"sinks", 2.5}}, "p"), Error);
  EXPECT_THROW(policy::find("lru-but-misspelt"), Error);
}

TEST(Replay, BadBudgetsFailBeforeReplay) {
  trace::TraceReader tr(default_trace());
  EXPECT_THROW(run(tr, "window", 0), Error);
  EXPECT_THROW(run(tr, "window", 513), Error);  // context is 512
  EXPECT_NO_THROW(run(tr, "full", 0));          // full ignores the budget
}

TEST(Replay, FullKeepsAllMass) {
  trace::TraceReader tr(default_trace());
  const auto r = run(tr, "full", 0);
  EXPECT_NEAR(r.retained_mass, 1.0, 1e-3);  // fp16 rows sum to 1 within rounding
  EXPECT_EQ(r.evictions, 0u);
}

TEST(Replay, WindowAndStreamingLlmMatchTheirClosedForms) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {16u, 64u, 200u}) {
    const double w = closed_form(tr, [&](uint32_t j, uint32_t q) { return j + B > q; });
    EXPECT_NEAR(run(tr, "window", B).retained_mass, w, 1e-9) << "B=" << B;
    const uint32_t S = 4;
    const double s = closed_form(tr, [&](uint32_t j, uint32_t q) { return j < S || j + (B - S) > q; });
    EXPECT_NEAR(run(tr, "streamingllm", B, {{"sinks", S}}).retained_mass, s, 1e-9) << "B=" << B;
  }
}

// A slow, obvious H2O: sets and maps, one stream at a time.
TEST(Replay, H2oMatchesASlowReference) {
  trace::TraceReader tr(default_trace());
  const auto& in = tr.info();
  const uint32_t B = 48, recent = 24;  // recent_ratio 0.5
  double sum = 0, rows = 0;
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      std::set<uint32_t> res;
      std::vector<float> score(600, 0.0f);
      auto evict_to = [&](uint32_t cap) {
        while (res.size() > cap) {
          std::vector<uint32_t> cand(res.begin(), res.end());
          cand.resize(cand.size() - std::min<size_t>(recent, cand.size()));  // protect the most recent
          uint32_t victim = cand[0];
          for (uint32_t j : cand)
            if (score[j] < score[victim]) victim = j;  // ties: lower position (first seen)
          res.erase(victim);
        }
      };
      for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
        tr.read_frame(ci, l, f);
        for (const auto& sv : f.steps) {
          for (uint32_t j = sv.first_pos; j < sv.first_pos + sv.n_queries; ++j) res.insert(j);
          std::vector<float> agg(sv.first_pos + sv.n_queries, 0.0f);
          if (sv.kind == trace::StepKind::Prefill) {
            for (uint32_t g = 0; g < in.group; ++g)
              for (uint32_t j = 0; j < sv.n_queries; ++j) agg[j] = (g == 0 ? 0.0f : agg[j]) + sv.colsum[(kvh * in.group + g) * sv.n_queries + j];
            for (uint32_t j = 0; j < agg.size(); ++j) score[j] += agg[j];
            evict_to(B);
            continue;
          }
          evict_to(B);
          for (uint32_t g = 0; g < in.group; ++g) {
            const auto row = dense_row(sv, kvh * in.group + g, in.n_heads);
            double kept = 0;
            for (uint32_t j : res) kept += row[j];
            sum += kept;
            rows += 1;
            const float inv = static_cast<float>(1.0 / kept);
            for (uint32_t j = 0; j < row.size(); ++j) agg[j] = (g == 0 ? 0.0f : agg[j]) + (res.count(j) ? row[j] * inv : 0.0f);
          }
          for (uint32_t j = 0; j < agg.size(); ++j) score[j] += agg[j];
        }
      }
    }
  EXPECT_NEAR(run(tr, "h2o", B).retained_mass, sum / rows, 1e-9);
}

TEST(Replay, OracleTopkBoundsEveryPolicy) {
  trace::TraceReader tr(default_trace());
  for (const auto& p : policy::registry())
    for (uint32_t B : {8u, 32u, 128u, 400u}) {
      const auto r = run(tr, p.name, B);
      EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-9) << p.name << " B=" << B;
      for (size_t l = 0; l < r.retained_per_layer.size(); ++l)
        EXPECT_LE(r.retained_per_layer[l], r.oracle_per_layer[l] + 1e-9) << p.name << " B=" << B << " layer " << l;
    }
}

TEST(Replay, SameInputsSameBytes) {
  trace::TraceReader tr(default_trace());
  EXPECT_EQ(run(tr, "tova", 40).to_json().dump(), run(tr, "tova", 40).to_json().dump());
}

TEST(Replay, A2sfWithoutForgettingIsH2o) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {24u, 96u}) {
    const auto h = run(tr, "h2o", B, {{"recent_ratio", 0.25}});
    const auto a = run(tr, "a2sf", B, {{"lambda", 1.0}, {"recent_ratio", 0.25}});
    EXPECT_EQ(h.retained_mass, a.retained_mass) << "B=" << B;
    // Forgetting changes the choice: a strong decay must give a different result.
    EXPECT_NE(run(tr, "a2sf", B, {{"lambda", 0.2}, {"recent_ratio", 0.25}}).retained_mass, h.retained_mass);
  }
}

TEST(Replay, RandomIsSeededAndEvictsUniformly) {
  trace::TraceReader tr(default_trace());
  const auto a = run(tr, "random", 64, {{"seed", 7}});
  EXPECT_EQ(a.to_json().dump(), run(tr, "random", 64, {{"seed", 7}}).to_json().dump());
  EXPECT_NE(a.retained_mass, run(tr, "random", 64, {{"seed", 8}}).retained_mass);
  // Random keeps far less than the recency baseline on a real trace, and more than nothing.
  EXPECT_LT(a.retained_mass, run(tr, "window", 64).retained_mass);
  EXPECT_GT(a.retained_mass, 0.1);
}

// Output error of the sliding window, recomputed here from the trace's V rows.
TEST(Replay, OutputErrorMatchesAReferenceForTheWindow) {
  trace::TraceReader tr(default_trace());
  const auto& in = tr.info();
  ASSERT_TRUE(in.with_qkv);
  const uint32_t B = 40, hd = in.head_dim;
  double sum = 0, rows = 0;
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l) {
    std::vector<std::vector<float>> V(in.n_kv_heads);  // [kvh][pos * hd]
    for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
      tr.read_frame(ci, l, f);
      for (const auto& sv : f.steps) {
        for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh)
          for (uint32_t t = 0; t < sv.n_queries; ++t)
            for (uint32_t d = 0; d < hd; ++d) V[kvh].push_back(f16_to_f32(sv.v[(t * in.n_kv_heads + kvh) * hd + d]));
        if (sv.kind == trace::StepKind::Prefill) continue;
        for (uint32_t h = 0; h < in.n_heads; ++h) {
          const auto row = dense_row(sv, h, in.n_heads);
          const auto& Vh = V[h / in.group];
          const uint32_t q = sv.first_pos;
          std::vector<double> full(hd, 0), kept(hd, 0);
          double pf = 0, pk = 0;
          for (uint32_t j = 0; j <= q; ++j) {
            pf += row[j];
            if (j + B > q) pk += row[j];
            for (uint32_t d = 0; d < hd; ++d) {
              full[d] += double(row[j]) * Vh[j * hd + d];
              if (j + B > q) kept[d] += double(row[j]) * Vh[j * hd + d];
            }
          }
          double num = 0, den = 0;
          for (uint32_t d = 0; d < hd; ++d) {
            num += std::pow(kept[d] / pk - full[d] / pf, 2);
            den += std::pow(full[d] / pf, 2);
          }
          sum += std::sqrt(num / den);
          rows += 1;
        }
      }
    }
  }
  const auto r = run(tr, "window", B);
  ASSERT_TRUE(r.has_output_error);
  EXPECT_NEAR(r.output_rel_l2, sum / rows, 1e-9);
  EXPECT_GT(r.output_rel_l2, 0.01);  // a 40-entry window on a 512-token context does lose something
  EXPECT_EQ(run(tr, "full", 0).output_rel_l2, 0.0);
}

// Scissorhands against an obvious reference: a deque of the last `history` sets of
// important positions, counted per position.
TEST(Replay, ScissorhandsMatchesASlowReference) {
  trace::TraceReader tr(default_trace());
  const auto& in = tr.info();
  const uint32_t B = 40, recent = 20, history = 8;  // recent_ratio 0.5
  double sum = 0, rows = 0;
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      std::set<uint32_t> res;
      std::vector<std::set<uint32_t>> past;  // most recent last
      auto observe = [&](const std::vector<float>& a) {
        double total = 0;
        for (uint32_t j : res) total += a[j];
        const float thr = static_cast<float>(total / res.size());
        std::set<uint32_t> imp;
        for (uint32_t j : res)
          if (a[j] >= thr) imp.insert(j);
        past.push_back(imp);
        if (past.size() > history) past.erase(past.begin());
      };
      auto count = [&](uint32_t j) {
        float c = 0;
        for (auto& s : past) c += s.count(j);
        return c;
      };
      auto evict_to = [&](uint32_t cap) {
        while (res.size() > cap) {
          std::vector<uint32_t> cand(res.begin(), res.end());
          cand.resize(cand.size() - std::min<size_t>(recent, cand.size()));
          uint32_t victim = cand[0];
          for (uint32_t j : cand)
            if (count(j) < count(victim)) victim = j;
          res.erase(victim);
        }
      };
      for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
        tr.read_frame(ci, l, f);
        for (const auto& sv : f.steps) {
          for (uint32_t j = sv.first_pos; j < sv.first_pos + sv.n_queries; ++j) res.insert(j);
          std::vector<float> agg(sv.first_pos + sv.n_queries, 0.0f);
          if (sv.kind == trace::StepKind::Prefill) {
            for (uint32_t g = 0; g < in.group; ++g)
              for (uint32_t j = 0; j < sv.n_queries; ++j) agg[j] += sv.colsum[(kvh * in.group + g) * sv.n_queries + j];
            observe(agg);
            evict_to(B);
            continue;
          }
          evict_to(B);
          for (uint32_t g = 0; g < in.group; ++g) {
            const auto row = dense_row(sv, kvh * in.group + g, in.n_heads);
            double kept = 0;
            for (uint32_t j : res) kept += row[j];
            sum += kept;
            rows += 1;
            const float inv = static_cast<float>(1.0 / kept);
            for (uint32_t j = 0; j < row.size(); ++j) agg[j] += res.count(j) ? row[j] * inv : 0.0f;
          }
          observe(agg);
        }
      }
    }
  EXPECT_NEAR(run(tr, "scissorhands", B, {{"history", history}}).retained_mass, sum / rows, 1e-9);
}
