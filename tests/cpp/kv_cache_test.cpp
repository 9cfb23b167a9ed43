#include "kernels/cpu/kv_cache.h"

#include <gtest/gtest.h>

#include <vector>

#include "kernels/io/error.h"

using kvscope::cpu::KVCache;

namespace {

std::vector<float> row(int heads, int hd, float base) {
  std::vector<float> r(static_cast<size_t>(heads) * hd);
  for (size_t i = 0; i < r.size(); ++i) r[i] = base + static_cast<float>(i);
  return r;
}

}  // namespace

TEST(KVCache, AppendAddressesByTokenAndPage) {
  KVCache kv(/*layers=*/2, /*kv_heads=*/2, /*head_dim=*/4, /*page_size=*/4, /*max_tokens=*/16);
  for (int p = 0; p < 10; ++p) {
    auto k = row(2, 4, 100.0f * p), v = row(2, 4, -100.0f * p);
    kv.append(0, p, k.data(), v.data());
  }
  EXPECT_EQ(kv.n_slots(0, 0), 10);
  EXPECT_EQ(kv.n_pages(0, 1), 3);  // ceil(10 / 4)
  EXPECT_EQ(kv.n_slots(1, 0), 0);
  EXPECT_EQ(kv.find(0, 1, 7), 7);
  EXPECT_EQ(kv.find(0, 1, 10), -1);
  // Head 1's K row of token 7 is elements [4, 8) of the appended row.
  EXPECT_FLOAT_EQ(kv.k(0, 1, 7)[0], 700.0f + 4.0f);
  EXPECT_FLOAT_EQ(kv.v(0, 0, 7)[3], -700.0f + 3.0f);
  const auto pg = kv.page(0, 0, 2);
  EXPECT_EQ(pg.n, 2);
  EXPECT_EQ(pg.pos[1], 9);
  EXPECT_EQ(kv.live_tokens(), 20);
}

TEST(KVCache, EvictTokenLeavesHoleEvictPageFreesIt) {
  KVCache kv(1, 1, 2, 4, 12);
  for (int p = 0; p < 12; ++p) {
    float k[2] = {float(p), 0}, v[2] = {0, float(p)};
    kv.append(0, p, k, v);
  }
  EXPECT_EQ(kv.pages_in_use(), 3);
  EXPECT_TRUE(kv.evict_token(0, 0, 5));
  EXPECT_FALSE(kv.evict_token(0, 0, 5));  // already gone
  EXPECT_FALSE(kv.live(0, 0, 5));
  EXPECT_EQ(kv.n_live(0, 0), 11);
  kv.evict_page(0, 0, 0);  // tokens 0..3
  EXPECT_EQ(kv.pages_in_use(), 2);
  EXPECT_EQ(kv.n_slots(0, 0), 8);
  EXPECT_EQ(kv.n_live(0, 0), 7);
  EXPECT_EQ(kv.find(0, 0, 2), -1);
  EXPECT_EQ(kv.find(0, 0, 4), 0);  // slots moved down by one page
  EXPECT_FLOAT_EQ(kv.k(0, 0, kv.find(0, 0, 11))[0], 11.0f);
  EXPECT_THROW(kv.evict_page(0, 0, 2), kvscope::Error);
}

TEST(KVCache, FullStreamThrows) {
  KVCache kv(1, 1, 2, 4, 4);
  float k[2] = {}, v[2] = {};
  for (int p = 0; p < 4; ++p) kv.append(0, p, k, v);
  EXPECT_THROW(kv.append(0, 4, k, v), kvscope::Error);
  KVCache kv2(1, 1, 2, 4, 8);
  kv2.append(0, 3, k, v);
  EXPECT_THROW(kv2.append(0, 3, k, v), kvscope::Error);  // positions must increase
}
