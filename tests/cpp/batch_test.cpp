// Multi-request replay (sim/batch.cpp, sim/alloc_*.cpp, docs/batch.md): closed forms on
// hand-made profiles with a constant step cost (1 s per iteration, so times count
// iterations), the allocation-policy registry, seeded arrivals, and one run on the
// default trace as llama3-8b on h100-sxm.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "hwmodels/hw.h"
#include "kernels/io/error.h"
#include "sim/alloc.h"
#include "sim/batch.h"
#include "sim/timing.h"
#include "traces/reader.h"

using namespace kvscope;

namespace {

constexpr uint64_t kBlockBytes = 1000;

// A request of blocks.size() steps: a prefill of `prompt` tokens, then decodes.
sim::RequestProfile profile(std::vector<uint64_t> blocks, uint32_t prompt = 4) {
  sim::RequestProfile p;
  p.name = "hand";
  p.prompt_tokens = prompt;
  for (size_t t = 0; t < blocks.size(); ++t) {
    hw::StepLoad s;
    s.prefill = t == 0;
    s.tokens = t == 0 ? prompt : 1;
    s.attn_entries = t == 0 ? prompt * (prompt + 1) / 2.0 : prompt + t;
    s.kv_read_bytes = 10.0 * (t == 0 ? prompt : prompt + t);
    s.kv_write_bytes = 10.0 * (t == 0 ? prompt : 1);
    p.loads.push_back(s);
  }
  p.blocks = std::move(blocks);
  return p;
}

// Every iteration takes 1 s; the loads it was given are kept.
struct Recorder {
  std::vector<hw::StepLoad> loads;
  sim::StepCost cost() {
    return [this](const hw::StepLoad& s, const sim::SwapTraffic&) {
      loads.push_back(s);
      hw::StepTime t;
      t.compute = t.total = 1.0;
      return t;
    };
  }
};

sim::BatchResult run(const std::vector<sim::RequestProfile>& profiles, size_t n, const std::string& alloc, uint64_t total,
                     sim::Preempt preempt = sim::Preempt::Swap, Recorder* rec = nullptr, nlohmann::json params = nlohmann::json::object(),
                     uint32_t max_batch = 0) {
  std::vector<sim::RequestSpec> reqs;
  for (size_t i = 0; i < n; ++i) reqs.push_back({i % profiles.size(), 0.0});
  sim::BatchConfig c;
  c.alloc = alloc;
  c.alloc_params = std::move(params);
  c.total_blocks = total;
  c.block_bytes = kBlockBytes;
  c.preempt = preempt;
  c.max_batch = max_batch;
  Recorder local;
  return sim::run_batch(profiles, reqs, c, (rec ? rec : &local)->cost());
}

}  // namespace

TEST(BatchAlloc, RegistryListsEveryFile) {
  const std::filesystem::path dir = std::filesystem::path(KVSCOPE_SOURCE_DIR) / "sim";
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("alloc_", 0) == 0 && f != "alloc_registry.cpp" && e.path().extension() == ".cpp") {
      std::string name = f.substr(6, f.size() - 6 - 4);
      std::replace(name.begin(), name.end(), '_', '-');
      files.push_back(name);
    }
  }
  ASSERT_GE(files.size(), 2u);
  for (const auto& name : files) EXPECT_NO_THROW(sim::find_alloc(name)) << name;
  EXPECT_EQ(files.size(), sim::alloc_registry().size());
  EXPECT_THROW(sim::find_alloc("pagd"), Error);
  EXPECT_THROW(sim::make_alloc("paged-watermark", {{"watermark", 2.0}}), Error);
  EXPECT_THROW(sim::make_alloc("paged", {{"watermark", 0.1}}), Error);
}

// Memory for exactly k = 3 reservations: reserve admits 3, then the next 3 when they finish.
TEST(BatchReserve, AdmitsExactlyKNeverPreempts) {
  const std::vector<sim::RequestProfile> p = {profile({2, 4, 6, 8, 10})};
  const sim::BatchResult r = run(p, 6, "reserve", 3 * 10 + 9);
  EXPECT_EQ(r.max_batch, 3u);
  EXPECT_EQ(r.preemptions, 0u);
  EXPECT_EQ(r.bytes_swapped_out + r.bytes_swapped_in + r.recomputed_tokens, 0u);
  EXPECT_EQ(r.iterations, 10u);
  EXPECT_DOUBLE_EQ(r.makespan, 10.0);
  EXPECT_DOUBLE_EQ(r.mean_batch, 3.0);
  EXPECT_EQ(r.peak_blocks, 30u);
  EXPECT_EQ(r.generated_tokens, 30u);
  EXPECT_DOUBLE_EQ(r.throughput, 3.0);
  EXPECT_DOUBLE_EQ(r.ttft_mean, (3 * 1.0 + 3 * 6.0) / 6);  // first three at t = 1, the rest at t = 6
  EXPECT_DOUBLE_EQ(r.ttft_p99, 6.0);
  EXPECT_DOUBLE_EQ(r.tpot_mean, 1.0);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(r.per_request[i].max_blocks, 10u);
  // The same memory under paged holds all six at first (2 blocks each).
  const sim::BatchResult q = run(p, 6, "paged", 39);
  EXPECT_EQ(q.max_batch, 6u);
  EXPECT_GT(q.preemptions, 0u);
}

// Two requests growing 1, 2, 3, 4 blocks in a pool of 5. Hand schedule:
//   it 1 (t=0): both admitted (1 + 1), step 0       it 2: both grow to 2 (free 1), step 1
//   it 3: A grows to 3 (free 0); B needs 3: B, the youngest, is preempted (2 blocks out); A step 2
//   it 4: A grows to 4 (free 1); B (needs 3) waits; A step 3, done at t = 4
//   it 5: B resumed (2 blocks in, holds 3), step 2  it 6: B step 3, done at t = 6
TEST(BatchPaged, GrowingFootprintPreemptsAndSwapsTwice) {
  const std::vector<sim::RequestProfile> p = {profile({1, 2, 3, 4})};
  Recorder rec;
  const sim::BatchResult r = run(p, 2, "paged", 5, sim::Preempt::Swap, &rec);
  EXPECT_EQ(r.max_batch, 2u);
  EXPECT_EQ(r.preemptions, 1u);
  EXPECT_EQ(r.per_request[1].preemptions, 1u);
  EXPECT_EQ(r.per_request[0].preemptions, 0u);
  EXPECT_EQ(r.bytes_swapped_out, 2 * kBlockBytes);
  EXPECT_EQ(r.bytes_swapped_in, 2 * kBlockBytes);
  EXPECT_EQ(r.bytes_swapped_out + r.bytes_swapped_in, 2 * 2 * kBlockBytes);  // the victim's KV bytes, both ways
  EXPECT_EQ(r.recomputed_tokens, 0u);
  EXPECT_EQ(r.iterations, 6u);
  EXPECT_DOUBLE_EQ(r.makespan, 6.0);
  EXPECT_DOUBLE_EQ(r.per_request[0].finish, 4.0);
  EXPECT_DOUBLE_EQ(r.per_request[1].finish, 6.0);
  EXPECT_DOUBLE_EQ(r.per_request[1].tpot(), (6.0 - 1.0) / 3);
  EXPECT_EQ(r.peak_blocks, 4u);  // measured after admission: B left before it could grow
  ASSERT_EQ(rec.loads.size(), 6u);
  EXPECT_DOUBLE_EQ(rec.loads[2].d2h_bytes, 2.0 * kBlockBytes);
  EXPECT_DOUBLE_EQ(rec.loads[2].d2h_transfers, 1.0);
  EXPECT_DOUBLE_EQ(rec.loads[2].batch, 1.0);
  EXPECT_DOUBLE_EQ(rec.loads[4].h2d_bytes, 2.0 * kBlockBytes);
  EXPECT_DOUBLE_EQ(rec.loads[4].h2d_transfers, 1.0);
  EXPECT_FALSE(rec.loads[4].prefill);  // a swapped-in request decodes
  EXPECT_TRUE(rec.loads[0].prefill);
  EXPECT_DOUBLE_EQ(rec.loads[0].tokens, 8.0);  // two prompts of 4
  EXPECT_DOUBLE_EQ(rec.loads[0].batch, 2.0);
  EXPECT_DOUBLE_EQ(rec.loads[1].tokens, 2.0);
  for (size_t i : {0, 1, 3, 5}) EXPECT_EQ(rec.loads[i].d2h_bytes + rec.loads[i].h2d_bytes, 0.0) << i;
  // reserve on the same pool: one at a time (4 of 5 blocks each), no preemption.
  const sim::BatchResult s = run(p, 2, "reserve", 5);
  EXPECT_EQ(s.max_batch, 1u);
  EXPECT_EQ(s.preemptions, 0u);
  EXPECT_DOUBLE_EQ(s.makespan, 8.0);
}

// The same schedule with recompute: B's KV is dropped; on resume it re-prefills its prompt
// (4) and the 2 tokens generated so far in place of step 2: 6 tokens run, 5 recomputed.
TEST(BatchPaged, RecomputeAddsTheRecomputedTokens) {
  const std::vector<sim::RequestProfile> p = {profile({1, 2, 3, 4}, 4)};
  Recorder rec;
  const sim::BatchResult r = run(p, 2, "paged", 5, sim::Preempt::Recompute, &rec);
  EXPECT_EQ(r.preemptions, 1u);
  EXPECT_EQ(r.bytes_swapped_out + r.bytes_swapped_in, 0u);
  EXPECT_EQ(r.recomputed_tokens, 4u + 2 - 1);
  EXPECT_DOUBLE_EQ(r.makespan, 6.0);
  ASSERT_EQ(rec.loads.size(), 6u);
  const hw::StepLoad& re = rec.loads[4];
  EXPECT_TRUE(re.prefill);
  EXPECT_DOUBLE_EQ(re.tokens, 6.0);
  EXPECT_DOUBLE_EQ(re.attn_entries, 10.0 * (6.0 * 7) / (4.0 * 5));
  EXPECT_DOUBLE_EQ(re.kv_write_bytes, 40.0 * 6 / 4);
  EXPECT_DOUBLE_EQ(re.kv_read_bytes, 40.0 * 6 / 4);  // one 128-row tile either way
  EXPECT_DOUBLE_EQ(re.h2d_bytes + re.d2h_bytes, 0.0);
  const hw::StepLoad big = sim::prefill_load(p[0], 300);
  EXPECT_DOUBLE_EQ(big.kv_read_bytes, 40.0 * 300 * 3 / 4);  // three tiles of 128 rows
}

// vLLM's watermark: 4 requests of 25 blocks fit 100 exactly, but admitting the fourth would
// leave fewer than 10% free.
TEST(BatchPagedWatermark, KeepsHeadroom) {
  const std::vector<sim::RequestProfile> p = {profile({25, 25, 25})};
  EXPECT_EQ(run(p, 8, "paged", 100).max_batch, 4u);
  const sim::BatchResult w = run(p, 8, "paged-watermark", 100, sim::Preempt::Swap, nullptr, {{"watermark", 0.1}});
  EXPECT_EQ(w.max_batch, 3u);
  EXPECT_EQ(w.preemptions, 0u);
  EXPECT_EQ(w.alloc_params["watermark"].get<double>(), 0.1);
  // A watermark no request can meet still admits into an empty device.
  const sim::BatchResult x = run(p, 2, "paged-watermark", 30, sim::Preempt::Swap, nullptr, {{"watermark", 0.5}});
  EXPECT_EQ(x.max_batch, 1u);
  EXPECT_DOUBLE_EQ(x.makespan, 6.0);
}

TEST(BatchEngine, MaxBatchCapAndOversizedRequest) {
  const std::vector<sim::RequestProfile> p = {profile({1, 1})};
  const sim::BatchResult r = run(p, 5, "paged", 100, sim::Preempt::Swap, nullptr, nlohmann::json::object(), 2);
  EXPECT_EQ(r.max_batch, 2u);
  EXPECT_DOUBLE_EQ(r.makespan, 6.0);  // 2 + 2 + 1, two steps each
  const std::vector<sim::RequestProfile> big = {profile({1, 7, 3})};
  try {
    run(big, 1, "paged", 6);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 7 KV blocks at step 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(run(p, 1, "nope", 10), Error);
}

TEST(BatchArrivals, SeededPoissonIsDeterministic) {
  const auto a = sim::arrivals(20000, 50.0, 7), b = sim::arrivals(20000, 50.0, 7), c = sim::arrivals(20000, 50.0, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_GT(a.front(), 0.0);
  EXPECT_NEAR(a.back() / 20000, 1.0 / 50, 0.05 / 50);  // mean gap 1/rate within 5%
  for (double t : sim::arrivals(4, 0.0, 7)) EXPECT_EQ(t, 0.0);
  // Late arrivals: the clock jumps to them; TTFT counts from arrival.
  const std::vector<sim::RequestProfile> p = {profile({1, 1, 1})};
  sim::BatchConfig cfg;
  cfg.alloc = "paged";
  cfg.total_blocks = 10;
  cfg.block_bytes = kBlockBytes;
  Recorder rec;
  const sim::BatchResult r = sim::run_batch(p, {{0, 10.0}, {0, 11.5}}, cfg, rec.cost());
  EXPECT_DOUBLE_EQ(r.per_request[0].ttft(), 1.0);
  EXPECT_DOUBLE_EQ(r.per_request[1].admitted, 12.0);  // arrives mid-iteration, joins at the next
  EXPECT_DOUBLE_EQ(r.makespan, 15.0);
  // Same seed, same JSON.
  std::vector<sim::RequestSpec> reqs;
  const auto t = sim::arrivals(12, 0.5, 3);
  for (size_t i = 0; i < t.size(); ++i) reqs.push_back({0, t[i]});
  const std::vector<sim::RequestProfile> g = {profile({1, 2, 3, 4, 5, 6})};
  cfg.total_blocks = 12;
  Recorder r1, r2;
  EXPECT_EQ(sim::run_batch(g, reqs, cfg, r1.cost()).to_json().dump(), sim::run_batch(g, reqs, cfg, r2.cost()).to_json().dump());
}

// The default trace as llama3-8b on h100-sxm, 8 requests, KV memory for two full contexts.
TEST(BatchDefaultTrace, PagedPreemptsReserveDoesNot) {
  const std::string path = std::string(KVSCOPE_SOURCE_DIR) + "/traces/stories260K-short-prompt.kvt";
  trace::TraceReader tr(path);
  const hw::Hardware hw = hw::preset("h100-sxm");
  const hw::ModelShape target = sim::shape_by_name("llama3-8b", tr);
  sim::ReplayConfig cfg;
  cfg.policy = "full";
  cfg.budget = 512;
  const sim::RequestProfile p = sim::profile_trace(tr, path, cfg, target, 16, true);
  const uint64_t streams = static_cast<uint64_t>(target.n_layers) * target.n_kv_heads;
  ASSERT_EQ(p.blocks.size(), tr.n_steps());
  EXPECT_EQ(p.blocks.front(), streams * 1);    // 5 prompt tokens: one block per stream
  EXPECT_EQ(p.blocks.back(), streams * 32);    // 512 entries: 32 blocks per stream
  EXPECT_EQ(p.max_blocks(), streams * 32);
  EXPECT_TRUE(std::is_sorted(p.blocks.begin(), p.blocks.end()));
  const uint64_t bb = sim::block_bytes(target, 16);
  EXPECT_EQ(bb, 16u * 2 * 128 * 2);
  EXPECT_GT(sim::default_kv_memory(hw, target), 40e9);

  sim::BatchConfig c;
  c.block_bytes = bb;
  c.total_blocks = 2 * p.max_blocks();
  const std::vector<sim::RequestSpec> reqs(8, sim::RequestSpec{0, 0.0});
  const sim::StepCost cost = sim::hardware_cost(hw, target);
  c.alloc = "reserve";
  const sim::BatchResult reserve = sim::run_batch({p}, reqs, c, cost);
  EXPECT_EQ(reserve.max_batch, 2u);
  EXPECT_EQ(reserve.preemptions, 0u);
  c.alloc = "paged";
  const sim::BatchResult paged = sim::run_batch({p}, reqs, c, cost);
  EXPECT_EQ(paged.max_batch, 8u);
  EXPECT_GT(paged.preemptions, 0u);
  EXPECT_EQ(paged.bytes_swapped_in, paged.bytes_swapped_out);  // every victim resumed
  EXPECT_GT(paged.bytes_swapped_out, 0u);
  EXPECT_LE(paged.peak_blocks, c.total_blocks);
  EXPECT_GT(paged.time.pcie, 0.0);
  c.preempt = sim::Preempt::Recompute;
  const sim::BatchResult recompute = sim::run_batch({p}, reqs, c, cost);
  EXPECT_GT(recompute.preemptions, 0u);
  EXPECT_GT(recompute.recomputed_tokens, 0u);
  EXPECT_EQ(recompute.bytes_swapped_out, 0u);
  for (const sim::BatchResult* r : {&reserve, &paged, &recompute}) {
    EXPECT_EQ(r->generated_tokens, 8u * tr.n_steps());
    EXPECT_GT(r->makespan, 0.0);
    EXPECT_NEAR(r->throughput, r->generated_tokens / r->makespan, 1e-9 * r->throughput);
    EXPECT_NEAR(r->time.total, r->makespan, 1e-9 * r->makespan);  // all at t = 0: no idle time
  }
  // An eviction budget shrinks every footprint: 64 entries, 4 blocks per stream.
  cfg.policy = "h2o";
  cfg.budget = 64;
  const sim::RequestProfile h = sim::profile_trace(tr, path, cfg, target, 16, true);
  EXPECT_EQ(h.max_blocks(), streams * 4);
}
