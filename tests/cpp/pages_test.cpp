// Page caches (policies/{lru,fifo,lfu,arc,s3fifo,belady-page}.cpp) on tiny hand-worked
// sequences, their hash map, and the oracleGeneral reader/writer (sim/pages.cpp).
// tests/python/test_pagestream.py checks the same caches against Python references on the
// real page streams.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/io/error.h"
#include "policies/cache_map.h"
#include "policies/registry.h"
#include "sim/pages.h"

using namespace kvscope;

namespace {

std::vector<sim::Request> stream_of(const std::string& letters) {
  std::vector<sim::Request> r;
  for (size_t i = 0; i < letters.size(); ++i) r.push_back({static_cast<uint32_t>(i), static_cast<uint64_t>(letters[i]), 1, -1});
  sim::link_next(r);
  return r;
}

uint64_t misses(const std::string& policy, const std::string& letters, uint64_t capacity, const nlohmann::json& params = {}) {
  const auto& info = policy::find(policy);
  auto cache = info.make_cache(policy::validate_params(info.params, params, policy));
  return sim::run_cache(*cache, stream_of(letters), capacity).misses;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kvscope_pages_test_" + name)).string();
}

}  // namespace

TEST(PageCaches, AreRegisteredAsCaches) {
  for (const char* name : {"lru", "fifo", "lfu", "arc", "s3fifo", "belady-page"}) {
    const auto& info = policy::find(name);
    EXPECT_EQ(info.kind, "cache") << name;
    EXPECT_NE(info.make_cache, nullptr) << name;
    EXPECT_EQ(info.make, nullptr) << name;
  }
}

TEST(PageCaches, HandWorkedSequences) {
  // LRU, c=2: A B [A hit] C(evicts B) B(evicts A) -> 4 misses.
  EXPECT_EQ(misses("lru", "ABACB", 2), 4u);
  // FIFO, c=2: A B [A hit] C(evicts A) [B hit] -> 3.
  EXPECT_EQ(misses("fifo", "ABACB", 2), 3u);
  // LFU, c=2: A [A] B C(evicts B: count 1 < 2) [A] B(evicts C) -> 4.
  EXPECT_EQ(misses("lfu", "AABCAB", 2), 4u);
  // LFU ties go to the least recent: A B C(evicts A) [B] A(evicts C, count 1 < 2) -> 4;
  // then C evicts A (count 1), B stays: [B] -> 5.
  EXPECT_EQ(misses("lfu", "ABCBACB", 2), 5u);
  // Belady, c=2: A B C(evicts B: next use 5 vs A's 4) [A] B -> 4; LRU misses all 5.
  EXPECT_EQ(misses("belady-page", "ABCAB", 2), 4u);
  EXPECT_EQ(misses("lru", "ABCAB", 2), 5u);
  // ARC, c=2 (worked in the paper's cases): A B [A: T1->T2] C(B->B1) [A] B(B1 hit: p=1,
  // A->B2) A(B2 hit: p=0, C->B1) C(B1 hit: p=1, B->B2) -> 6 misses.
  EXPECT_EQ(misses("arc", "ABACABAC", 2), 6u);
  // S3-FIFO, c=2 (S share 1, ghost 1): A B C(A->G) A(ghost hit: B->G, A into M)
  // D(C->G, dropping B) [A hit in M] -> 5.
  EXPECT_EQ(misses("s3fifo", "ABCADA", 2), 5u);
}

TEST(PageCaches, ColdMissesOnlyWhenEverythingFits) {
  const std::string s = "ABCDABCDDCBAEEEA";
  for (const char* name : {"lru", "fifo", "lfu", "arc", "s3fifo", "belady-page"}) {
    EXPECT_EQ(misses(name, s, 5), 5u) << name;
    EXPECT_EQ(misses(name, s, 100), 5u) << name;
  }
}

TEST(PageCaches, CyclicScanDefeatsLruAndFifo) {
  std::string s;
  for (int r = 0; r < 6; ++r) s += "ABCDE";
  EXPECT_EQ(misses("lru", s, 4), 30u);
  EXPECT_EQ(misses("fifo", s, 4), 30u);
  EXPECT_EQ(misses("belady-page", s, 4), 4u + 29u / 4u);  // misses at 0..4, then every 4th
}

TEST(PageCaches, CapacityZeroIsAnError) {
  for (const char* name : {"lru", "fifo", "lfu", "arc", "s3fifo", "belady-page"}) {
    auto cache = policy::find(name).make_cache(policy::validate_params(policy::find(name).params, {}, name));
    EXPECT_THROW(cache->reset(0), Error) << name;
  }
}

TEST(CacheMap, AgreesWithUnorderedMapUnderChurn) {
  policy::cache::CacheMap m;
  m.reset(4);
  std::unordered_map<uint64_t, uint32_t> ref;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const uint64_t key = (rng() % 3 == 0 ? (rng() % 8) << 32 : 0) | (rng() % 300);  // structured ids, many collisions
    const uint32_t found = m.find(key);
    auto it = ref.find(key);
    ASSERT_EQ(found != policy::cache::kNone, it != ref.end()) << "step " << i;
    if (it != ref.end()) {
      ASSERT_EQ(found, it->second);
      if (rng() % 2) {
        EXPECT_TRUE(m.erase(key));
        ref.erase(it);
      }
    } else {
      const uint32_t v = static_cast<uint32_t>(rng() % 1000000);
      m.insert(key, v);
      ref[key] = v;
    }
    ASSERT_EQ(m.size(), ref.size());
  }
}

TEST(PageStream, AccessRuleParsesAndPrints) {
  EXPECT_EQ(sim::AccessRule::parse("topk:8").str(), "topk:8");
  EXPECT_EQ(sim::AccessRule::parse("mass:0.9").str(), "mass:0.9");
  EXPECT_EQ(sim::AccessRule::parse("mass:1").mass, 1.0);
  for (const char* bad : {"topk:0", "topk:-1", "topk:2.5", "mass:0", "mass:1.5", "mass:x", "top:4", "topk", "topk:", ""}) {
    try {
      sim::AccessRule::parse(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'" + std::string(bad) + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(PageStream, LinkNextIsOneBased) {
  auto r = stream_of("ABAAC");
  const std::vector<int64_t> want = {3, -1, 4, -1, -1};
  for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i].next, want[i]) << i;
}

TEST(PageStream, OracleGeneralRoundTripAndErrors) {
  auto r = stream_of("ABCABD");
  r[2].id = 0x123456789abcdef0ULL;
  sim::link_next(r);
  const std::string path = temp_path("rt.oracleGeneral");
  sim::write_oracle_general(path, r);
  EXPECT_EQ(std::filesystem::file_size(path), r.size() * 24);
  const auto back = sim::read_oracle_general(path);
  ASSERT_EQ(back.size(), r.size());
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(back[i].time, r[i].time);
    EXPECT_EQ(back[i].id, r[i].id);
    EXPECT_EQ(back[i].size, r[i].size);
    EXPECT_EQ(back[i].next, r[i].next);
  }
  // Truncated: the error names the file and the offset of the partial record.
  {
    std::FILE* f = std::fopen(path.c_str(), "ab");
    std::fputc(0, f);
    std::fclose(f);
    try {
      sim::read_oracle_general(path);
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path + ": offset 144"), std::string::npos) << e.what();
    }
  }
  // Object size 0 in record 1.
  r[1].size = 0;
  sim::write_oracle_general(path, r);
  try {
    sim::read_oracle_general(path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": offset 24"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}
