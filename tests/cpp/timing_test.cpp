// Hardware model and step timing against closed forms (hwmodels/, sim/timing.h).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "hwmodels/hw.h"
#include "hwmodels/timing.h"
#include "kernels/io/error.h"
#include "sim/replay.h"
#include "sim/timing.h"
#include "traces/reader.h"

namespace kvscope {
namespace {

std::string source_dir() {
  const char* s = std::getenv("KVSCOPE_SOURCE_DIR");
  return s ? s : KVSCOPE_SOURCE_DIR;
}

// A machine with round figures, so that every expected time is easy to write down.
hw::Hardware round_machine() {
  hw::Hardware h;
  h.name = "round";
  h.gpu_hbm_bytes = 80e9;
  h.gpu_hbm_bandwidth = 2e12, h.gpu_hbm_efficiency = 0.5;  // 1e12 B/s effective
  h.gpu_flops_fp16 = 1e15, h.gpu_gemm_efficiency = 0.5;    // 5e14 flop/s before eff(M)
  h.gpu_launch_overhead = 0;
  h.pcie_generation = 5, h.pcie_bandwidth = 50e9, h.pcie_efficiency = 0.5;  // 25e9 B/s
  h.pcie_latency = 2e-6, h.pcie_transfer_overhead = 10e-6;
  h.nvlink_bandwidth = 400e9, h.nvlink_efficiency = 0.5, h.nvlink_latency = 1e-6, h.nvlink_gpus = 8;
  h.validate();
  return h;
}

hw::ModelShape empty_model() { return hw::ModelShape{"empty", 0, 1, 1, 128, 0, 0, 0}; }

TEST(Timing, PureTransferIsLatencyPlusOverheadPlusBytesOverBandwidth) {
  const hw::Hardware h = round_machine();
  EXPECT_DOUBLE_EQ(hw::transfer_time(h, 0, 0), 0.0);
  EXPECT_DOUBLE_EQ(hw::transfer_time(h, 1e6, 1), 2e-6 + 10e-6 + 1e6 / 25e9);
  EXPECT_DOUBLE_EQ(hw::transfer_time(h, 1e6, 16), 2e-6 + 16 * 10e-6 + 1e6 / 25e9);
  // A step that only fetches, fetched on demand (prefetch depth 0): it waits for the copy.
  hw::Hardware d0 = h;
  d0.set("system.prefetch_depth", 0);
  hw::StepLoad s;
  s.tokens = 0, s.h2d_bytes = 1e6, s.h2d_transfers = 1;
  const auto t = hw::time_steps(d0, empty_model(), std::span(&s, 1));
  EXPECT_DOUBLE_EQ(t[0].pcie, 2e-6 + 10e-6 + 1e6 / 25e9);
  EXPECT_DOUBLE_EQ(t[0].stall, t[0].pcie);
  EXPECT_DOUBLE_EQ(t[0].total, t[0].pcie);
  // Pageable buffers run at pcie.pageable_factor of the pinned bandwidth.
  hw::Hardware pg = h;
  pg.set("pcie.pinned=0");
  pg.set("pcie.pageable_factor=0.5");
  EXPECT_DOUBLE_EQ(hw::transfer_time(pg, 1e6, 1), 2e-6 + 10e-6 + 1e6 / 12.5e9);
}

TEST(Timing, DecodeAttentionIsBandwidthBound) {
  const hw::Hardware h = round_machine();
  hw::StepLoad s;
  s.tokens = 0;
  s.attn_entries = 1e6;
  s.kv_read_bytes = 1e6 * 512;  // head_dim 128, K and V, fp16
  const hw::StepTime t = hw::kernel_time(h, empty_model(), s);
  EXPECT_DOUBLE_EQ(t.attention, 512e6 / 1e12);
  EXPECT_DOUBLE_EQ(t.hbm, t.attention);
  EXPECT_DOUBLE_EQ(t.compute, 0.0);
  EXPECT_DOUBLE_EQ(t.total, t.attention);
}

TEST(Timing, LargeGemmRunsAtTheRoofline) {
  const hw::Hardware h = round_machine();
  hw::ModelShape m{"one-layer", 1, 32, 8, 128, 4096, 14336, 0};
  hw::StepLoad s;
  s.prefill = true, s.tokens = 4096, s.batch = 1;
  const hw::StepTime t = hw::kernel_time(h, m, s);
  const double M = 4096, eff = M / (M + 32), peak = 1e15 * 0.5 * eff;
  const double nk[4][2] = {{4096 + 2 * 1024, 4096}, {4096, 4096}, {2 * 14336, 4096}, {4096, 14336}};
  double expect = 0;
  for (const auto& x : nk) expect += 2 * M * x[0] * x[1] / peak;
  // vocab 0: the classifier is empty. Every GEMM here is compute-bound.
  EXPECT_NEAR(t.gemm, expect, 1e-12 * expect);
  EXPECT_NEAR(t.compute, expect, 1e-12 * expect);
  EXPECT_DOUBLE_EQ(t.hbm, 0.0);
  // One token: the same GEMMs are bound by reading the weights.
  s.prefill = false, s.tokens = 1;
  const hw::StepTime d = hw::kernel_time(h, m, s);
  double bytes = 0;
  for (const auto& x : nk) bytes += x[0] * x[1] * 2 + (x[1] + x[0]) * 2;
  EXPECT_NEAR(d.gemm, bytes / 1e12, 1e-12);
  EXPECT_DOUBLE_EQ(d.compute, 0.0);
}

TEST(Timing, OverlapTakesTheMaxAndSerialTakesTheSum) {
  hw::Hardware h = round_machine();
  h.pcie_latency = 0, h.pcie_transfer_overhead = 0;
  h.set("system.prefetch_depth", 1);
  const double C = 1e-3;       // compute per step
  const double X = 25e9 * 2e-3;  // bytes fetched per step: 2 ms on the link
  std::vector<hw::StepLoad> steps(1000);
  for (auto& s : steps) s.tokens = 0, s.kv_read_bytes = C * 1e12, s.h2d_bytes = X, s.h2d_transfers = 1;
  auto mean_total = [&](const hw::Hardware& hh) {
    const auto t = hw::time_steps(hh, empty_model(), steps);
    double sum = 0;
    for (const auto& x : t) sum += x.total;
    return sum / static_cast<double>(t.size());
  };
  EXPECT_NEAR(mean_total(h), 2e-3, 2e-3 * 2e-3);  // prefetched one step ahead: max(C, X)
  hw::Hardware serial = h;
  serial.set("system.overlap", 0);
  EXPECT_NEAR(mean_total(serial), 3e-3, 1e-12);  // C + X
  hw::Hardware on_demand = h;
  on_demand.set("system.prefetch_depth", 0);
  EXPECT_NEAR(mean_total(on_demand), 3e-3, 1e-12);  // fetched when the step begins: waits X, then C
  // Compute-bound the other way round: copies hide entirely after the first step.
  for (auto& s : steps) s.h2d_bytes = 25e9 * 0.5e-3;
  EXPECT_NEAR(mean_total(h), 1e-3, 1e-3 * 2e-3);
}

TEST(Timing, ManySmallCopiesCostMoreThanOneRun) {
  // Published measurements: 8-72 KB blocks moved as 0.5-2 MB contiguous runs were 4-5x
  // faster. With an H100 preset's per-copy cost, 16 x 64 KB copies vs one 1 MB copy:
  const hw::Hardware h = hw::preset("h100-sxm");
  const double small = hw::transfer_time(h, 16 * 65536.0, 16), large = hw::transfer_time(h, 16 * 65536.0, 1);
  EXPECT_GT(small / large, 3.0);
  EXPECT_LT(small / large, 8.0);
}

TEST(Timing, TensorParallelAllReduceIsARing) {
  hw::Hardware h = round_machine();
  h.set("system.tp", 4);
  hw::ModelShape m{"tp", 2, 32, 8, 128, 4096, 14336, 0};
  hw::StepLoad s;
  s.tokens = 8;
  const hw::StepTime t = hw::kernel_time(h, m, s);
  const double bytes = 8 * 4096 * 2.0, one = 2.0 * 3 / 4 * bytes / 200e9 + 2.0 * 3 * 1e-6;
  EXPECT_NEAR(t.nvlink, 2 * 2 * one, 1e-15);
  EXPECT_NEAR(t.total, t.compute + t.hbm + t.launch + t.nvlink, 1e-15);
}

TEST(Timing, LaunchFloorShowsOnlyItsExcess) {
  hw::Hardware h = round_machine();
  h.gpu_launch_overhead = 5e-6;
  hw::ModelShape m{"tiny", 2, 2, 1, 8, 16, 32, 10};
  hw::StepLoad s;
  const hw::StepTime t = hw::kernel_time(h, m, s);
  const double kernels = 10 * 2 + 3;
  EXPECT_NEAR(t.launch + t.gemm + t.attention, kernels * 5e-6, 1e-15);
}

TEST(Hardware, UnknownKeysAndBadValuesAreNamed) {
  hw::Hardware h = hw::preset("h100-sxm");
  try {
    h.set("pcie.bandwith=32e9");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pcie.bandwith"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("pcie.bandwidth"), std::string::npos);  // did you mean
  }
  EXPECT_THROW(h.set("gpu.hbm_bandwidth", 3.35), Error);  // a unit slip: TB/s for B/s
  EXPECT_THROW(h.set("system.tp=2.5"), Error);
  EXPECT_THROW(h.set("pcie.bandwidth=fast"), Error);
  h.set("pcie.bandwidth=32G");
  EXPECT_DOUBLE_EQ(h.pcie_bandwidth, 32e9);
  hw::Hardware g = hw::preset("rtx4090");
  g.set("system.tp", 2);  // in range for the key, but this machine has one GPU
  EXPECT_THROW(g.validate(), Error);
}

TEST(Hardware, JsonRoundTripAndBasePreset) {
  const hw::Hardware h = hw::preset("h200");
  const hw::Hardware back = hw::from_json(h.to_json(), "roundtrip.json");
  for (const hw::Param& p : hw::params()) EXPECT_EQ(h.*(p.field), back.*(p.field)) << p.key;
  const nlohmann::json j = {{"base", "h100-sxm"}, {"name", "fast-pcie"}, {"pcie", {{"bandwidth", 128e9}}}};
  const hw::Hardware f = hw::from_json(j, "f.json");
  EXPECT_EQ(f.name, "fast-pcie");
  EXPECT_DOUBLE_EQ(f.pcie_bandwidth, 128e9);
  EXPECT_DOUBLE_EQ(f.gpu_hbm_bandwidth, hw::preset("h100-sxm").gpu_hbm_bandwidth);
  const nlohmann::json bad = {{"base", "h100-sxm"}, {"gpu", {{"hbm_bandwdth", 1e12}}}};
  try {
    hw::from_json(bad, "bad.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("gpu.hbm_bandwdth"), std::string::npos);
  }
  EXPECT_THROW(hw::from_json({{"base", "h9000"}}, "x.json"), Error);
  EXPECT_THROW(hw::load("no-such-preset-or-file"), Error);
}

TEST(Hardware, CalibrationFileOverridesThePreset) {
  const hw::Hardware h = hw::load(source_dir() + "/hwmodels/calibrations/h200-measured.json");
  const nlohmann::json cal = nlohmann::json::parse(
      std::ifstream(source_dir() + "/hwmodels/calibrations/h200-2026-11-28.json"));
  EXPECT_EQ(h.name, "h200-measured");
  EXPECT_DOUBLE_EQ(h.pcie_bandwidth, cal["fits"]["pcie.bandwidth"].get<double>());
  EXPECT_DOUBLE_EQ(h.pcie_transfer_overhead, cal["fits"]["pcie.transfer_overhead"].get<double>());
  EXPECT_DOUBLE_EQ(h.pcie_efficiency, 1.0);
  EXPECT_NE(h.sources.at("pcie.bandwidth").find("measured"), std::string::npos);
  // Figures the file does not measure stay the preset's.
  EXPECT_DOUBLE_EQ(h.nvlink_bandwidth, hw::preset("h200").nvlink_bandwidth);
  // The measured link is slower than the datasheet's 63 GB/s, as every measurement is.
  EXPECT_LT(h.host_link_bw(), hw::preset("h200").pcie_bandwidth);
}

TEST(Hardware, SweepSpecs) {
  EXPECT_EQ(hw::parse_sweep("16e9:128e9:8", "k").size(), 8u);
  EXPECT_DOUBLE_EQ(hw::parse_sweep("16e9:128e9:8", "k")[7], 128e9);
  EXPECT_DOUBLE_EQ(hw::parse_sweep("16e9:128e9:8", "k")[1], 32e9);
  const auto lg = hw::parse_sweep("1:1000:4:log", "k");
  EXPECT_NEAR(lg[1], 10, 1e-9);
  EXPECT_NEAR(lg[2], 100, 1e-9);
  EXPECT_EQ(hw::parse_sweep("1,2,4", "k"), (std::vector<double>{1, 2, 4}));
  EXPECT_THROW(hw::parse_sweep("1:2", "k"), Error);
  EXPECT_THROW(hw::parse_sweep("1:2:0", "k"), Error);
  EXPECT_THROW(hw::parse_sweep("0:2:3:log", "k"), Error);
}

TEST(Timing, StreamWeightsMapEveryTargetStreamOnce) {
  trace::TraceInfo in;
  in.n_layers = 5, in.n_kv_heads = 4;
  hw::ModelShape m{"llama3-8b-like", 32, 32, 8, 128, 4096, 14336, 128256};
  const auto w = sim::stream_weights(in, m);
  ASSERT_EQ(w.size(), 20u);
  EXPECT_DOUBLE_EQ(std::accumulate(w.begin(), w.end(), 0.0), 32.0 * 8);
  // Target layers 0..6 map to traced layer 0 (floor(j*5/32) = 0 for j < 7), 8 heads onto 4: 2 each.
  EXPECT_DOUBLE_EQ(w[0], 7 * 2);
  EXPECT_DOUBLE_EQ(w[4 * 4 + 3], (32 - 26) * 2);  // layer 4 gets j = 26..31
  // Fewer target layers than traced ones: some traced layers stand for none.
  hw::ModelShape small{"small", 2, 2, 2, 8, 16, 32, 10};
  const auto ws = sim::stream_weights(in, small);
  EXPECT_DOUBLE_EQ(std::accumulate(ws.begin(), ws.end(), 0.0), 4.0);
}

TEST(Timing, FullCacheLoadsGrowByOneEntryPerStep) {
  const std::string path = source_dir() + "/traces/stories260K-short-prompt.kvt";
  trace::TraceReader tr(path);
  const hw::ModelShape m = sim::shape_by_name("llama3-8b", tr);
  sim::ReplayConfig cfg;
  cfg.policy = "full";
  cfg.per_step = true;
  cfg.bounds = false;
  cfg.output_error = false;
  cfg.stream_weights = sim::stream_weights(tr.info(), m);
  const sim::ReplayResult r = sim::replay(tr, cfg);
  const auto loads = sim::step_loads(r, tr.info(), m, false);
  ASSERT_EQ(loads.size(), r.per_step.size());
  const double P = tr.info().prompt_len, streams = 32.0 * 8;
  EXPECT_TRUE(loads[0].prefill);
  EXPECT_DOUBLE_EQ(loads[0].tokens, P);
  EXPECT_DOUBLE_EQ(loads[0].attn_entries, streams * P * (P + 1) / 2);
  for (size_t i = 1; i < loads.size(); ++i) {
    EXPECT_FALSE(loads[i].prefill);
    EXPECT_DOUBLE_EQ(loads[i].attn_entries, streams * (P + static_cast<double>(i))) << i;
    EXPECT_DOUBLE_EQ(loads[i].kv_read_bytes, streams * (P + static_cast<double>(i)) * 512) << i;
    EXPECT_DOUBLE_EQ(loads[i].h2d_bytes, 0.0);
  }
  // Time grows with the context at decode; TPOT is the mean step.
  const hw::Hardware h = hw::preset("h100-sxm");
  const auto t = hw::time_steps(h, m, loads);
  EXPECT_LT(t[1].total, t.back().total);
  const hw::TimingSummary s = hw::summarize(loads, t);
  double sum = 0;
  for (size_t i = 1; i < t.size(); ++i) sum += t[i].total;
  EXPECT_NEAR(s.tpot, sum / static_cast<double>(t.size() - 1), 1e-15);
  EXPECT_DOUBLE_EQ(s.ttft, t[0].total);
  // Llama-3-8B decode on an H100 is bound by reading 16 GB of weights: 5-7 ms per token.
  EXPECT_GT(s.tpot, 4e-3);
  EXPECT_LT(s.tpot, 8e-3);
}

TEST(Timing, OffloadPolicyMovesAreCountedAsCopies) {
  const std::string path = source_dir() + "/traces/stories260K-short-prompt.kvt";
  trace::TraceReader tr(path);
  const hw::ModelShape m = sim::shape_of_trace(tr);
  sim::ReplayConfig cfg;
  cfg.policy = "quest";
  cfg.budget = 64;
  cfg.page_size = 16;
  cfg.per_step = true;
  cfg.bounds = false;
  cfg.output_error = false;
  const sim::ReplayResult r = sim::replay(tr, cfg);
  const auto pages = sim::step_loads(r, tr.info(), m, false), runs = sim::step_loads(r, tr.info(), m, true);
  double bytes = 0, n_pages = 0, n_runs = 0;
  for (size_t i = 0; i < pages.size(); ++i) {
    bytes += pages[i].h2d_bytes;
    n_pages += pages[i].h2d_transfers, n_runs += runs[i].h2d_transfers;
    EXPECT_DOUBLE_EQ(pages[i].h2d_bytes, runs[i].h2d_bytes);
  }
  ASSERT_GT(r.bytes_fetched, 0u);
  // The traced model's own shape: the loads' bytes are the replay's bytes.
  EXPECT_NEAR(bytes, static_cast<double>(r.bytes_fetched), 1e-6 * bytes);
  EXPECT_NEAR(n_pages * 16 * m.entry_bytes(), bytes, 1e-6 * bytes);  // whole pages of 16
  EXPECT_LE(n_runs, n_pages);
  EXPECT_GT(n_runs, 0);
}

}  // namespace
}  // namespace kvscope

namespace kvscope {
namespace {

TEST(Replay, MaxStepsReplaysAPrefix) {
  trace::TraceReader tr(source_dir() + "/traces/stories260K-short-prompt.kvt");
  sim::ReplayConfig cfg;
  cfg.policy = "h2o";
  cfg.budget = 32;
  cfg.per_step = true;
  const sim::ReplayResult all = sim::replay(tr, cfg);
  cfg.max_steps = 40;
  const sim::ReplayResult head = sim::replay(tr, cfg);
  // The first 40 decode steps are the same replay; nothing after them is touched.
  double ret = 0, rows = 0;
  for (uint32_t s = 1; s <= 40; ++s) {
    EXPECT_EQ(all.per_step[s].hbm_entries, head.per_step[s].hbm_entries) << s;
    EXPECT_DOUBLE_EQ(all.per_step[s].retained_mass, head.per_step[s].retained_mass) << s;
    ret += all.per_step[s].retained_mass, rows += 1;
  }
  EXPECT_EQ(head.per_step[41].hbm_entries, 0u);
  EXPECT_NEAR(head.retained_mass, ret / rows, 1e-12);  // every step has the same number of rows
  EXPECT_EQ(head.rows, static_cast<uint64_t>(40) * tr.info().n_layers * tr.info().n_heads);
  cfg.policy = "lru";
  cfg.page_size = 16;
  EXPECT_THROW(sim::validate(tr, cfg), Error);
}

}  // namespace
}  // namespace kvscope
