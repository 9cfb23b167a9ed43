// kvscope synth's attention model (traces/synth.h): rows are distributions, and the
// prefill's closed-form column sums equal the sum of the materialised rows exactly when
// the model has no noise and no focus (the only parts the closed form averages out).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/io/error.h"
#include "traces/synth.h"

using namespace kvscope::trace::synth;

namespace {

Model noiseless(uint64_t seed, int period) {
  Model m = draw_model(3, 4, 2, seed);
  for (auto& p : m.heads) {
    p.noise = 0;
    p.focus = 0;
    p.m_per = 0.1;  // every head exercises the periodic kernel too
    p.period = period;
  }
  return m;
}

}  // namespace

TEST(Synth, ClosedFormColsumEqualsTheRowsWithoutNoise) {
  const int P = 700;
  for (uint64_t seed : {1u, 9u}) {
    Generator g(noiseless(seed, 7 + static_cast<int>(seed)), P, seed);
    std::vector<float> row(P);
    for (int l = 0; l < 3; ++l) {
      g.prepare_layer(l, P - 1);
      for (int h = 0; h < 4; ++h) {
        for (int q_end : {P - 1, P - 33, -1}) {
          std::vector<double> cs(P, 0.0), ref(P, 0.0);
          g.prefill_colsum(l, h, q_end, P, cs.data());
          for (int q = 0; q <= q_end; ++q) {
            g.row(l, h, q, row.data());
            for (int j = 0; j <= q; ++j) ref[j] += row[j];
          }
          double worst = 0;
          for (int j = 0; j < P; ++j) worst = std::max(worst, std::fabs(cs[j] - ref[j]) / (1.0 + ref[j]));
          EXPECT_LT(worst, 2e-5) << "seed " << seed << " layer " << l << " head " << h << " q_end " << q_end;
        }
      }
    }
  }
}

TEST(Synth, RowsAreDistributions) {
  Generator g(draw_model(2, 8, 4, 3), 2000, 3);
  std::vector<float> row(2000);
  for (int l = 0; l < 2; ++l) {
    g.prepare_layer(l, 1999);
    for (int h = 0; h < 8; ++h)
      for (int q : {0, 1, 5, 100, 1999}) {
        const float lse = g.row(l, h, q, row.data());
        double s = 0;
        for (int j = 0; j <= q; ++j) {
          ASSERT_GE(row[j], 0.0f);
          s += row[j];
        }
        EXPECT_NEAR(s, 1.0, 1e-5);
        EXPECT_TRUE(std::isfinite(lse));
      }
  }
}

TEST(Synth, SameSeedSameRows) {
  Generator a(draw_model(1, 4, 2, 11), 300, 11), b(draw_model(1, 4, 2, 11), 300, 11), c(draw_model(1, 4, 2, 12), 300, 12);
  std::vector<float> ra(300), rb(300), rc(300);
  a.prepare_layer(0, 299), b.prepare_layer(0, 299), c.prepare_layer(0, 299);
  a.row(0, 1, 299, ra.data());
  b.row(0, 1, 299, rb.data());
  c.row(0, 1, 299, rc.data());
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
}

TEST(Synth, OptionErrorsNameTheOption) {
  auto message = [](Options o) {
    try {
      validate(o);
    } catch (const kvscope::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  Options o;
  o.steps = 0;
  EXPECT_NE(message(o).find("--steps"), std::string::npos);
  o = Options{};
  o.context = 10, o.steps = 11;
  EXPECT_NE(message(o).find("--steps"), std::string::npos);
  o = Options{};
  o.shape = "nope";
  EXPECT_NE(message(o).find("--shape"), std::string::npos);
  o = Options{};
  EXPECT_EQ(message(o), "");
  EXPECT_EQ(find_shape("qwen2.5-7b").n_kv_heads, 4);
}
