// The live policy run (sim/live.h) and the real cache actions it uses (kernels/cpu/kv_cache.h).
#include "sim/live.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/cpu/kv_cache.h"
#include "kernels/cpu/runtime.h"
#include "kernels/io/error.h"

using namespace kvscope;

namespace {

// A small random Llama model (no tokenizer: the tests feed token ids).
Model tiny_model(uint64_t seed) {
  Model m;
  ModelConfig& c = m.config;
  c.format = "test";
  c.dim = 32, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8;
  c.vocab_size = 64, c.max_seq_len = 96;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  auto fill = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (float& x : v) x = nd(rng);
  };
  const size_t d = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim;
  fill(m.weights.tok_embedding, c.vocab_size * d);
  m.weights.layers.resize(c.n_layers);
  for (auto& l : m.weights.layers) {
    l.attn_norm.assign(d, 1.0f), l.ffn_norm.assign(d, 1.0f);
    fill(l.wq, qd * d), fill(l.wk, kvd * d), fill(l.wv, kvd * d), fill(l.wo, d * qd);
    fill(l.w_gate, hid * d), fill(l.w_up, hid * d), fill(l.w_down, d * hid);
  }
  m.weights.final_norm.assign(d, 1.0f);
  return m;
}

std::vector<int32_t> tokens(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 64);
  return t;
}

std::vector<float> ramp(int heads, int hd, float base) {
  std::vector<float> r(static_cast<size_t>(heads) * hd);
  for (size_t i = 0; i < r.size(); ++i) r[i] = base + 0.37f * static_cast<float>(i * i % 11) - 1.0f;
  return r;
}

sim::ReplayConfig config(const std::string& policy, uint32_t budget, uint32_t page = 1) {
  sim::ReplayConfig c;
  c.policy = policy;
  c.budget = budget;
  c.page_size = page;
  return c;
}

}  // namespace

TEST(LiveCache, OffloadZeroesAndFetchRestoresBitExact) {
  cpu::KVCache kv(1, 2, 4, 4, 16);
  std::vector<std::vector<float>> ks, vs;
  for (int p = 0; p < 6; ++p) {
    ks.push_back(ramp(2, 4, 10.0f * p)), vs.push_back(ramp(2, 4, -7.0f * p));
    kv.append(0, p, ks.back().data(), vs.back().data());
  }
  kv.offload_token(0, 1, 3);
  const int slot = kv.find(0, 1, 3);
  EXPECT_FALSE(kv.live(0, 1, slot));
  EXPECT_TRUE(kv.on_host(0, 1, slot));
  EXPECT_EQ(kv.n_live(0, 1), 5);
  EXPECT_EQ(kv.n_live(0, 0), 6);
  for (int d = 0; d < 4; ++d) EXPECT_EQ(kv.k(0, 1, slot)[d], 0.0f);
  EXPECT_EQ(kv.bytes_offloaded(), 2u * 4 * 2);  // K and V, 4 values, 16 bits
  EXPECT_THROW(kv.offload_token(0, 1, 3), Error);  // not live
  EXPECT_THROW(kv.fetch_token(0, 1, 2), Error);    // not on the host
  kv.fetch_token(0, 1, 3);
  EXPECT_TRUE(kv.live(0, 1, slot));
  EXPECT_EQ(kv.n_live(0, 1), 6);
  EXPECT_EQ(std::memcmp(kv.k(0, 1, slot), ks[3].data() + 4, 16), 0);
  EXPECT_EQ(std::memcmp(kv.v(0, 1, slot), vs[3].data() + 4, 16), 0);
  EXPECT_EQ(kv.bytes_fetched(), 16u);
  try {
    kv.offload_token(0, 1, 40);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 40"), std::string::npos) << e.what();
  }
}

TEST(LiveCache, QuantizeStoresWhatABBitStoreGivesBack) {
  const int hd = 16;
  cpu::KVCache kv(1, 1, hd, 4, 8);
  std::vector<float> k(hd), v(hd);
  for (int i = 0; i < hd; ++i) k[i] = std::sin(1.3f * i) * 3.0f, v[i] = std::cos(0.7f * i) - 0.25f * i;
  kv.append(0, 0, k.data(), v.data());
  kv.quantize_token(0, 0, 0, 4);
  EXPECT_EQ(kv.bits(0, 0, 0), 4);
  // Independent reference: 16 levels between the row's min and max.
  for (int which = 0; which < 2; ++which) {
    const std::vector<float>& x = which ? v : k;
    const float* got = which ? kv.v(0, 0, 0) : kv.k(0, 0, 0);
    double lo = x[0], hi = x[0];
    for (float t : x) lo = std::min<double>(lo, t), hi = std::max<double>(hi, t);
    const double step = (hi - lo) / 15.0;
    std::set<float> distinct;
    for (int i = 0; i < hd; ++i) {
      const double want = lo + std::round((x[i] - lo) / step) * step;
      EXPECT_NEAR(got[i], want, 1e-5) << "row " << which << " element " << i;
      EXPECT_LE(std::fabs(got[i] - x[i]), step / 2 + 1e-5);
      distinct.insert(got[i]);
    }
    EXPECT_LE(distinct.size(), 16u);
    EXPECT_GT(distinct.size(), 4u);
  }
  EXPECT_THROW(kv.quantize_token(0, 0, 0, 8), Error);  // not fewer bits than now
  kv.offload_token(0, 0, 0);
  EXPECT_EQ(kv.bytes_offloaded(), 2u * hd * 4 / 8);  // at the stored 4 bits
}

TEST(LiveCache, DeadPagesGoBackToThePool) {
  cpu::KVCache kv(1, 1, 2, 4, 16);
  for (int p = 0; p < 10; ++p) {
    const float r[2] = {static_cast<float>(p), 1.0f};
    kv.append(0, p, r, r);
  }
  const int used = kv.pages_in_use();
  for (int p = 4; p < 8; ++p) EXPECT_TRUE(kv.evict_token(0, 0, p));
  kv.offload_token(0, 0, 0);
  for (int p = 1; p < 4; ++p) EXPECT_TRUE(kv.evict_token(0, 0, p));
  // Page 0 keeps an offloaded slot, page 1 is dead, page 2 is still being filled.
  EXPECT_EQ(kv.reclaim_dead_pages(0, 0), 1);
  EXPECT_EQ(kv.pages_in_use(), used - 1);
  EXPECT_EQ(kv.find(0, 0, 9), 5);
  EXPECT_EQ(kv.k(0, 0, kv.find(0, 0, 9))[0], 9.0f);
  kv.fetch_token(0, 0, 0);
  EXPECT_EQ(kv.n_live(0, 0), 3);
}

TEST(LiveDriver, FullPolicyIsBitExactWithThePlainRuntime) {
  const Model m = tiny_model(1);
  const auto prompt = tokens(9, 2), feed = tokens(40, 3);
  cpu::Runtime plain(m, {.threads = 1});
  cpu::Runtime live(m, {.threads = 1});
  sim::LiveDriver d(live, config("full", 0));
  auto a = plain.forward(prompt);
  std::vector<float> want(a.begin(), a.end());
  auto b = d.prefill(prompt);
  ASSERT_EQ(std::memcmp(want.data(), b.data(), want.size() * sizeof(float)), 0);
  for (int32_t t : feed) {
    auto x = plain.decode(t);
    want.assign(x.begin(), x.end());
    auto y = d.decode(t);
    ASSERT_EQ(std::memcmp(want.data(), y.data(), want.size() * sizeof(float)), 0);
  }
  EXPECT_EQ(d.stats().evictions, 0u);
}

// The window policy run live equals a hand-written window on the cache (evict the
// position that leaves the window before each attention), bit for bit, and leaves exactly
// B entries per stream.
class HandWindow : public cpu::KVHook {
 public:
  HandWindow(cpu::KVCache& kv, int B, int P) : kv_(kv), B_(B), P_(P) {}
  void before_attention(int layer, int32_t pos, int T, const float*) override {
    if (T != 1) return;
    for (int h = 0; h < kv_.n_kv_heads(); ++h) {
      for (int32_t p = 0; p + B_ <= pos; ++p) kv_.evict_token(layer, h, p);
      kv_.reclaim_dead_pages(layer, h);  // the same slot layout as the live run
    }
  }
  void trim_after_prefill() {
    for (int l = 0; l < kv_.n_layers(); ++l)
      for (int h = 0; h < kv_.n_kv_heads(); ++h)
        for (int32_t p = 0; p + B_ < P_; ++p) kv_.evict_token(l, h, p);
  }
  // (The prefill leaves no dead full page at P = 20, B = 12: positions 0..7 share page 0
  // with live ones.)

 private:
  cpu::KVCache& kv_;
  int B_, P_;
};

TEST(LiveDriver, WindowEqualsAHandWrittenWindowAndKeepsTheBudget) {
  const Model m = tiny_model(4);
  const auto prompt = tokens(20, 5), feed = tokens(50, 6);
  const int B = 12;
  cpu::Runtime hand(m, {.threads = 1});
  HandWindow hw(hand.kv(), B, 20);
  cpu::Runtime live(m, {.threads = 1});
  sim::LiveDriver d(live, config("window", B));
  hand.forward(prompt);
  hw.trim_after_prefill();
  hand.set_kv_hook(&hw);
  d.prefill(prompt);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) EXPECT_EQ(live.kv().n_live(l, h), B);
  for (int32_t t : feed) {
    auto x = hand.decode(t);
    std::vector<float> want(x.begin(), x.end());
    auto y = d.decode(t);
    ASSERT_EQ(std::memcmp(want.data(), y.data(), want.size() * sizeof(float)), 0);
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h) {
        ASSERT_EQ(live.kv().n_live(l, h), B);
        ASSERT_EQ(d.n_resident(l, h), static_cast<uint32_t>(B));
      }
  }
  EXPECT_EQ(d.stats().evictions, 2u * 2 * (20 - B + 50));
  // Evicted pages went back to the pool: far fewer than the 70 positions' worth.
  EXPECT_LE(live.kv().n_pages(0, 0), 2);
}

TEST(LiveDriver, OffloadQuantizeAndPagesKeepTheirBudgets) {
  const Model m = tiny_model(7);
  const auto prompt = tokens(24, 8), feed = tokens(40, 9);
  struct Case {
    std::string policy;
    uint32_t budget, page;
  };
  for (const Case& c : {Case{"quest", 16, 1}, Case{"kivi", 16, 1}, Case{"h2o", 32, 16}, Case{"snapkv", 32, 16},
                        Case{"infinigen", 16, 1}, Case{"pyramidkv", 20, 1}}) {
    cpu::RuntimeOptions o;
    o.threads = 1;
    o.page_size = c.page > 1 ? static_cast<int>(c.page) : 16;
    cpu::Runtime rt(m, o);
    sim::ReplayConfig cfg = config(c.policy, c.budget, c.page);
    if (c.policy == "quest") cfg.params = {{"page", 4}};  // 4 pages of 4 in the budget: chosen, fetched
    sim::LiveDriver d(rt, cfg);
    d.prefill(prompt);
    for (int32_t t : feed) {
      auto y = d.decode(t);
      for (float v : y) ASSERT_TRUE(std::isfinite(v)) << c.policy;
      for (int l = 0; l < 2; ++l)
        for (int h = 0; h < 2; ++h) {
          ASSERT_LE(d.hbm_units(l, h), d.budget(l, h) + 1e-9) << c.policy;
          ASSERT_EQ(static_cast<uint32_t>(rt.kv().n_live(l, h)), d.n_resident(l, h)) << c.policy;
        }
    }
    const sim::LiveStats& s = d.stats();
    if (c.policy == "quest" || c.policy == "infinigen") {
      EXPECT_GT(s.fetches, 0u) << c.policy;
      EXPECT_EQ(s.bytes_fetched, rt.kv().bytes_fetched()) << c.policy;
      EXPECT_EQ(s.bytes_offloaded, rt.kv().bytes_offloaded()) << c.policy;
      EXPECT_EQ(s.evictions, 0u) << c.policy;
    }
    if (c.policy == "kivi") {
      EXPECT_GT(s.quantized, 0u);
    }
    if (c.policy == "h2o" || c.policy == "snapkv") {
      EXPECT_GT(s.evictions, 0u) << c.policy;
    }
  }
}

TEST(LiveDriver, RefusesOfflineAndCachePolicies) {
  const Model m = tiny_model(1);
  cpu::Runtime rt(m, {.threads = 1});
  for (const char* p : {"belady", "oracle-topk", "lru"}) {
    std::string why;
    EXPECT_FALSE(sim::live_supported(p, &why)) << p;
    EXPECT_FALSE(why.empty());
    try {
      sim::LiveDriver d(rt, config(p, 16));
      FAIL() << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(sim::LiveDriver(rt, config("no-such-policy", 16)), Error);
  EXPECT_THROW(sim::LiveDriver(rt, config("h2o", 1000)), Error);  // budget over the context
}

TEST(LiveQuality, FullCandidateScoresZeroAndSpearmanAveragesTies) {
  const Model m = tiny_model(3);
  const auto prompt = tokens(6, 1);
  const sim::Reference ref = sim::reference_run(m, prompt, 30, 1);
  ASSERT_EQ(ref.continuation.size(), 31u);
  const sim::Quality full = sim::candidate_run(m, ref, config("full", 0), 1);
  EXPECT_EQ(full.steps, 30u);
  EXPECT_EQ(full.kl, 0.0);
  EXPECT_EQ(full.top1, 30.0);
  EXPECT_EQ(full.nll, full.nll_full);
  const sim::Quality w = sim::candidate_run(m, ref, config("window", 4), 1);
  EXPECT_GT(w.kl, 0.0);
  EXPECT_TRUE(std::isfinite(w.kl));
  EXPECT_DOUBLE_EQ(w.nll_full, full.nll_full);
  // Threads do not change a number.
  const sim::Quality w2 = sim::candidate_run(m, ref, config("window", 4), 2);
  EXPECT_EQ(w.kl, w2.kl);
  EXPECT_EQ(w.nll, w2.nll);

  EXPECT_NEAR(sim::spearman({1, 2, 3, 4}, {1, 3, 2, 4}), 0.8, 1e-12);
  EXPECT_NEAR(sim::spearman({1, 1, 2}, {1, 2, 3}), 1.5 / std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(sim::spearman({4, 3, 2, 1}, {1, 2, 3, 4}), -1.0, 1e-12);
  EXPECT_TRUE(std::isnan(sim::spearman({1, 1, 1}, {1, 2, 3})));
}
