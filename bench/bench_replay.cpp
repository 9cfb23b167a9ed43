// Replay throughput, measured side by side in one run (medians of `reps`):
//   usage: bench_replay TRACE.kvt REPS POLICY[:BUDGET[:PAGE]] ...
// For each policy: the replay on frames decoded beforehand (attention entries per second,
// one core), the replay end to end from the compressed file, and the zstd decode alone.
// Also: memcpy of the decoded bytes (what "consuming decoded trace bytes" is compared
// with) and two policies replayed on two threads at once vs one after the other.
// Bounds (oracle-topk) and the output error (traces with V) are off: they are metrics of
// the engine's, a per-row nth_element and a head_dim-wide sum per entry, not the policy's
// cost (kvscope sim computes them; see docs/performance.md for their price).
// Timing: the same in-memory replay with step timing added (per-step metrics, the
// llama3-8b stream mapping, step loads, time_steps on the h100-sxm preset, the summary),
// so that its cost is a ratio measured beside the plain replay.
// Prints one JSON object (bench/sim_speed.py turns it into ratios).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "hwmodels/hw.h"
#include "hwmodels/timing.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "sim/timing.h"
#include "traces/reader.h"

using namespace kvscope;
using clk = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F>
double time_median(int reps, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clk::now();
    f();
    t.push_back(std::chrono::duration<double>(clk::now() - t0).count());
  }
  return median(t);
}

struct Spec {
  std::string policy;
  uint32_t budget = 0, page = 1;
};

Spec parse(const std::string& s) {
  Spec p;
  const size_t a = s.find(':');
  p.policy = s.substr(0, a);
  if (a != std::string::npos) {
    const size_t b = s.find(':', a + 1);
    p.budget = static_cast<uint32_t>(std::stoul(s.substr(a + 1, b - a - 1)));
    if (b != std::string::npos) p.page = static_cast<uint32_t>(std::stoul(s.substr(b + 1)));
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s TRACE.kvt REPS POLICY[:BUDGET[:PAGE]] ...\n", argv[0]);
    return 2;
  }
  trace::TraceReader tr(argv[1]);
  const int reps = std::max(1, std::atoi(argv[2]));
  const auto& in = tr.info();
  const uint32_t ctx = in.prompt_len + tr.n_steps() - 1;

  // Decode once to count; the frames are reused by every in-memory replay.
  std::vector<trace::LayerFrame> frames;
  const double t_decode = time_median(reps, [&] { frames = sim::decode_all(tr); });
  uint64_t decoded_bytes = 0, entries = 0;
  for (const auto& f : frames) {
    decoded_bytes += f.raw.size();
    for (const auto& sv : f.steps)
      if (sv.kind == trace::StepKind::Decode)
        for (uint32_t h = 0; h < in.n_heads; ++h) entries += sv.row(0, h, in.n_heads).n;
  }
  // memcpy of the same decoded bytes, frame by frame.
  std::vector<uint8_t> dst;
  for (const auto& f : frames) dst.resize(std::max(dst.size(), f.raw.size()));
  volatile uint64_t sink = 0;
  const double t_memcpy = time_median(reps, [&] {
    for (const auto& f : frames) {
      std::memcpy(dst.data(), f.raw.data(), f.raw.size());
      sink = sink + dst[f.raw.size() / 2];
    }
  });

  nlohmann::json out = {{"trace", argv[1]},
                        {"synthetic", in.synthetic},
                        {"layers", in.n_layers},
                        {"heads", in.n_heads},
                        {"kv_heads", in.n_kv_heads},
                        {"context", ctx},
                        {"steps", tr.n_steps()},
                        {"mode", in.mode == trace::Mode::Dense ? "dense" : "topk"},
                        {"file_bytes", tr.file_size()},
                        {"decoded_bytes", decoded_bytes},
                        {"decode_entries", entries},
                        {"reps", reps},
                        {"t_decode_all", t_decode},
                        {"t_memcpy", t_memcpy}};
  std::vector<sim::ReplayConfig> cfgs;
  for (int i = 3; i < argc; ++i) {
    const Spec s = parse(argv[i]);
    sim::ReplayConfig c;
    c.policy = s.policy;
    c.budget = s.budget ? s.budget : std::max<uint32_t>(1, ctx / 8);
    c.page_size = s.page;
    c.bounds = false;
    c.output_error = false;
    c.access = "topk:" + std::to_string(std::max<uint32_t>(1, c.budget / s.page / 2));
    cfgs.push_back(c);
  }
  nlohmann::json runs = nlohmann::json::array();
  for (sim::ReplayConfig c : cfgs) {
    double mass = 0;
    c.frames = &frames;
    const double t_mem = time_median(reps, [&] { mass = sim::replay(tr, c).retained_mass; });
    // The same replay, timed as Llama-3-8B on an H100 (cache policies have no step loads).
    double t_timed = -1;
    if (policy::find(c.policy).kind != "cache") {
      const hw::Hardware h100 = hw::preset("h100-sxm");
      const hw::ModelShape shape = sim::shape_by_name("llama3-8b", tr);
      sim::ReplayConfig ct = c;
      ct.per_step = true;
      ct.stream_weights = sim::stream_weights(in, shape);
      double tpot = 0;
      t_timed = time_median(reps, [&] {
        const sim::ReplayResult r = sim::replay(tr, ct);
        const auto loads = sim::step_loads(r, in, shape, false);
        tpot = hw::summarize(loads, hw::time_steps(h100, shape, loads)).tpot;
      });
      if (!(tpot > 0)) t_timed = -1;
    }
    c.frames = nullptr;
    const double t_file = time_median(reps, [&] { sim::replay(tr, c); });
    runs.push_back({{"policy", c.policy},
                    {"budget", c.budget},
                    {"page_size", c.page_size},
                    {"retained_mass", mass},
                    {"t_in_memory", t_mem},
                    {"t_in_memory_timed", t_timed},
                    {"t_end_to_end", t_file},
                    {"entries_per_s_in_memory", entries / t_mem},
                    {"entries_per_s_end_to_end", entries / t_file},
                    {"decoded_bytes_per_s_in_memory", decoded_bytes / t_mem}});
    std::fprintf(stderr, "%-12s B=%-6u page %-3u in memory %.3f s, end to end %.3f s\n", c.policy.c_str(), c.budget,
                 c.page_size, t_mem, t_file);
  }
  out["runs"] = runs;
  // Scaling on the cores: the first two policies at once on two threads vs one after the other.
  if (cfgs.size() >= 2) {
    sim::ReplayConfig a = cfgs[0], b = cfgs[1];
    a.frames = b.frames = &frames;
    const double t_seq = time_median(reps, [&] {
      sim::replay(tr, a);
      sim::replay(tr, b);
    });
    const double t_par = time_median(reps, [&] {
      std::thread t([&] { sim::replay(tr, a); });
      sim::replay(tr, b);
      t.join();
    });
    out["scaling"] = {{"policies", {a.policy, b.policy}}, {"t_sequential", t_seq}, {"t_two_threads", t_par}};
  }
  std::printf("%s\n", out.dump(1).c_str());
  return sink == 42 ? 1 : 0;
}
