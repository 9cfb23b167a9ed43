// kivi (policies/kivi.cpp): mixed precision instead of eviction, against a slow reference
// that also recomputes the quantization error of every quantized V row in closed form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/io/error.h"
#include "tests/cpp/sim_helpers.h"

using namespace kvscope;
using namespace kvscope::testing;

namespace {

// Asymmetric min/max quantization of one row at b bits, dequantized: lo + round((v - lo) /
// s) * s with s = (max - min) / (2^b - 1). Returns ||v - dq|| / ||v||.
double quant_error(const std::vector<float>& v, uint32_t b, std::vector<float>& dq) {
  const float lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
  const float s = hi > lo ? (hi - lo) / static_cast<float>((1u << b) - 1) : 0.0f;
  double num = 0, den = 0;
  dq.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    dq[i] = lo + (s > 0 ? std::nearbyint((v[i] - lo) / s) : 0.0f) * s;
    num += double(dq[i] - v[i]) * (dq[i] - v[i]);
    den += double(v[i]) * v[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

struct Ref {
  double retained = 0, output = 0, quant = 0;
  uint64_t quantized = 0, evictions = 0;
};

// Slow KIVI: per stream, each entry's bits (16, b, or 0 = evicted) and its accumulated
// attention; while over budget, quantize the lowest-scored 16-bit entry outside the newest
// w = min(residual, B / 2), else evict the lowest-scored entry outside them. An entry
// quantized and evicted in the same step counts as evicted only.
Ref kivi_replay(const trace::TraceReader& tr, uint32_t B, uint32_t b, uint32_t residual) {
  const auto& in = tr.info();
  const uint32_t hd = in.head_dim, G = in.group, ctx = in.prompt_len + tr.n_steps() - 1, w = std::min(residual, B / 2);
  Ref ref;
  double rows = 0, qerr = 0;
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      std::vector<uint32_t> bits(ctx, 0);
      std::vector<float> score(ctx, 0.0f);
      std::vector<std::vector<float>> V(ctx), VQ(ctx), K(ctx), KQ(ctx);
      auto shrink = [&](uint32_t n) {
        std::vector<uint8_t> fresh(n, 0);  // quantized during this step
        auto units = [&] {
          double u = 0;
          for (uint32_t j = 0; j < n; ++j) u += bits[j] / 16.0;
          return u;
        };
        while (units() > B) {
          std::vector<uint32_t> live;
          for (uint32_t j = 0; j < n; ++j)
            if (bits[j]) live.push_back(j);
          live.resize(live.size() - std::min<size_t>(w, live.size()));  // the window: newest w
          int32_t q = -1, e = -1;
          for (uint32_t j : live) {
            if (bits[j] == 16 && (q < 0 || score[j] < score[q])) q = static_cast<int32_t>(j);
            if (e < 0 || score[j] < score[e]) e = static_cast<int32_t>(j);
          }
          ASSERT_GE(e, 0);
          if (q >= 0) {
            bits[q] = b, fresh[q] = 1;
          } else {
            bits[e] = 0, fresh[e] = 0;
            ++ref.evictions;
          }
        }
        for (uint32_t j = 0; j < n; ++j)
          if (fresh[j]) qerr += quant_error(V[j], b, VQ[j]), quant_error(K[j], b, KQ[j]), ++ref.quantized;
      };
      for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
        tr.read_frame(ci, l, f);
        for (const auto& sv : f.steps) {
          for (uint32_t t = 0; t < sv.n_queries; ++t) {
            const uint32_t j = sv.first_pos + t;
            bits[j] = 16;
            V[j].resize(hd), K[j].resize(hd);
            for (uint32_t d = 0; d < hd; ++d) V[j][d] = f16_to_f32(sv.v[(size_t(t) * in.n_kv_heads + kvh) * hd + d]);
            for (uint32_t d = 0; d < hd; ++d) K[j][d] = f16_to_f32(sv.k[(size_t(t) * in.n_kv_heads + kvh) * hd + d]);
          }
          const uint32_t n = sv.first_pos + sv.n_queries;
          std::vector<float> agg(n, 0.0f);
          if (sv.kind == trace::StepKind::Prefill) {
            for (uint32_t g = 0; g < G; ++g)
              for (uint32_t j = 0; j < n; ++j) agg[j] = (g == 0 ? 0.0f : agg[j]) + sv.colsum[(kvh * G + g) * sv.n_queries + j];
            for (uint32_t j = 0; j < n; ++j) score[j] += agg[j];
            shrink(n);
            continue;
          }
          shrink(n);
          for (uint32_t g = 0; g < G; ++g) {
            const auto row = dense_row(sv, kvh * G + g, in.n_heads);
            double kept = 0, kept_w = 0, total = 0;
            std::vector<double> of(hd, 0.0), ok(hd, 0.0);
            for (uint32_t j = 0; j < n; ++j) {
              if (bits[j]) kept += row[j];
              if (row[j] == 0.0f) continue;
              total += row[j];
              const bool quant = bits[j] && bits[j] < 16;
              const auto& vk = quant ? VQ[j] : V[j];
              // The quantized key shifts the score by q.(k^ - k)/sqrt(d).
              double wj = row[j];
              if (quant) {
                double dz = 0;
                for (uint32_t d = 0; d < hd; ++d)
                  dz += double(f16_to_f32(sv.q[size_t(kvh * G + g) * hd + d])) * (KQ[j][d] - K[j][d]);
                wj *= std::exp(dz / std::sqrt(double(hd)));
              }
              if (bits[j]) kept_w += wj;
              for (uint32_t d = 0; d < hd; ++d) {
                of[d] += double(row[j]) * V[j][d];
                if (bits[j]) ok[d] += wj * vk[d];
              }
            }
            double num = 0, den = 0;
            for (uint32_t d = 0; d < hd; ++d) {
              const double fo = of[d] / total, ko = ok[d] / kept_w;
              num += (ko - fo) * (ko - fo);
              den += fo * fo;
            }
            ref.output += std::sqrt(num / den);
            ref.retained += kept;
            rows += 1;
            const float inv = static_cast<float>(1.0 / kept);
            for (uint32_t j = 0; j < n; ++j) agg[j] = (g == 0 ? 0.0f : agg[j]) + (bits[j] ? row[j] * inv : 0.0f);
          }
          for (uint32_t j = 0; j < n; ++j) score[j] += agg[j];
        }
      }
    }
  ref.retained /= rows, ref.output /= rows;
  ref.quant = ref.quantized ? qerr / double(ref.quantized) : 0.0;
  return ref;
}

}  // namespace

TEST(PolicyKivi, DeclaresItsKindAndParameters) {
  const auto& p = policy::find("kivi");
  EXPECT_EQ(p.kind, "quant");
  const auto d = policy::validate_params(p.params, {}, "p");
  EXPECT_EQ(d["bits"].get<double>(), 2.0);
  EXPECT_EQ(d["residual"].get<double>(), 32.0);
  EXPECT_THROW(p.make(policy::validate_params(p.params, {{"bits", 3}}, "p")), Error);
  EXPECT_THROW(policy::validate_params(p.params, {{"bits", 8}}, "p"), Error);
}

// Retained mass, output error, evictions and the quantization error (closed form per V row)
// equal the slow reference's.
TEST(PolicyKivi, MatchesASlowReference) {
  trace::TraceReader tr(default_trace());
  ASSERT_TRUE(tr.info().with_qkv);
  struct Case {
    uint32_t B, bits, residual;
  };
  for (const Case c : {Case{32, 2, 32}, Case{64, 4, 8}, Case{128, 2, 32}}) {
    const auto ref = kivi_replay(tr, c.B, c.bits, c.residual);
    const auto r = run(tr, "kivi", c.B, {{"bits", c.bits}, {"residual", c.residual}});
    const std::string at = "B=" + std::to_string(c.B) + " bits=" + std::to_string(c.bits);
    EXPECT_NEAR(r.retained_mass, ref.retained, 1e-12) << at;
    EXPECT_NEAR(r.output_rel_l2, ref.output, 1e-9) << at;
    EXPECT_EQ(r.quantized, ref.quantized) << at;
    EXPECT_EQ(r.evictions, ref.evictions) << at;
    EXPECT_NEAR(r.quant_rel_l2, ref.quant, 1e-12) << at;
    EXPECT_GT(r.quant_rel_l2, 0.0) << at;
    EXPECT_EQ(r.fetches + r.offloads, 0u) << at;
  }
}

// HBM use never exceeds the budget in bytes, while more entries than the budget stay.
TEST(PolicyKivi, BytesWithinBudgetEntriesBeyondIt) {
  trace::TraceReader tr(default_trace());
  const auto& in = tr.info();
  for (uint32_t bits : {2u, 4u})
    for (uint32_t B : {32u, 128u}) {
      sim::ReplayConfig c;
      c.policy = "kivi";
      c.budget = B;
      c.params = {{"bits", bits}};
      c.per_step = true;
      const auto r = sim::replay(tr, c);
      const uint64_t cap = uint64_t(B) * r.entry_bytes * in.n_layers * in.n_kv_heads;
      for (const auto& s : r.per_step) EXPECT_LE(s.hbm_bytes, cap) << "step " << s.step << " B=" << B;
      EXPECT_GT(r.mean_hbm_entries, double(B)) << "bits=" << bits << " B=" << B;
      EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-12);  // the bound at max(B, HBM entries)
    }
}

// Keeping more entries at low precision retains more attention mass than evicting them
// (H2O at the same budget); on the output, 4-bit entries err less than 2-bit ones. (At
// head_dim 8 a 2-bit per-token key has 4 levels over 8 values: KIVI's output error is
// above H2O's here, as the live run measures too, docs/validation.md.)
TEST(PolicyKivi, MoreMassThanH2oLessErrorWithMoreBits) {
  trace::TraceReader tr(default_trace());
  for (uint32_t B : {32u, 64u, 128u}) {
    const auto k2 = run(tr, "kivi", B), k4 = run(tr, "kivi", B, {{"bits", 4}}), h = run(tr, "h2o", B);
    EXPECT_GT(k2.retained_mass, h.retained_mass) << "B=" << B;
    EXPECT_LT(k4.output_rel_l2, k2.output_rel_l2) << "B=" << B;
  }
}

TEST(PolicyKivi, WholePagesAtPageSize16) {
  trace::TraceReader tr(default_trace());
  const auto r = run(tr, "kivi", 64, {}, 16);  // the engine checks whole-page evictions and the budget
  EXPECT_GT(r.quantized, 0u);
  EXPECT_GT(r.mean_hbm_entries, 64.0);
  EXPECT_LE(r.retained_mass, r.oracle_topk_mass + 1e-12);
}
