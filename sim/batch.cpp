// Multi-request replay: profiles from replays, arrivals, and the iteration-level engine
// (docs/batch.md).
#include "sim/batch.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <set>
#include <span>
#include <utility>

#include "kernels/io/error.h"
#include "kernels/io/rng.h"
#include "sim/alloc.h"
#include "sim/timing.h"

namespace kvscope::sim {

using nlohmann::json;

uint64_t RequestProfile::max_blocks() const { return blocks.empty() ? 0 : *std::max_element(blocks.begin(), blocks.end()); }

std::vector<uint64_t> footprint_blocks(const ReplayResult& r, const hw::ModelShape& target, uint32_t block_size) {
  if (block_size == 0) throw Error("block size must be positive");
  if (r.per_step.empty()) throw Error("footprint_blocks: the replay has no per-step metrics (run it with per_step = true)");
  const double n_target = static_cast<double>(target.n_layers) * target.n_kv_heads;
  // t_units sums each traced stream's 16-bit units times the target streams it stands for
  // (integers and eighths: exact in a double), so t_units / n_target is the mean target
  // stream, and an exact fit divides exactly: no block too many from rounding.
  std::vector<uint64_t> out;
  out.reserve(r.per_step.size());
  for (const StepMetrics& m : r.per_step)
    out.push_back(static_cast<uint64_t>(n_target * std::ceil(m.t_units / (n_target * block_size))));
  return out;
}

RequestProfile profile_trace(const trace::TraceReader& tr, const std::string& name, ReplayConfig cfg,
                             const hw::ModelShape& target, uint32_t block_size, bool coalesce) {
  cfg.per_step = true;
  cfg.bounds = false;        // the oracle bound and the output error do not change the footprint
  cfg.output_error = false;
  cfg.stream_weights = stream_weights(tr.info(), target);
  const ReplayResult r = replay(tr, cfg);
  RequestProfile p;
  p.name = name;
  p.loads = step_loads(r, tr.info(), target, coalesce);
  p.blocks = footprint_blocks(r, target, block_size);
  if (p.loads.size() != p.blocks.size() || p.loads.empty())
    throw Error(name + ": " + std::to_string(p.loads.size()) + " step loads for " + std::to_string(p.blocks.size()) + " steps");
  p.prompt_tokens = tr.info().prompt_len ? tr.info().prompt_len : static_cast<uint32_t>(std::max(1.0, p.loads[0].tokens));
  return p;
}

hw::StepLoad prefill_load(const RequestProfile& p, uint32_t n) {
  const hw::StepLoad& s0 = p.loads.at(0);
  const double P = p.prompt_tokens, N = n;
  // A tiled prefill reads every K/V row once per tile of query rows.
  constexpr double kTile = kPrefillTileRows;
  hw::StepLoad s;
  s.prefill = true;
  s.tokens = N;
  s.batch = 1;
  s.attn_entries = s0.attn_entries * (N * (N + 1)) / (P * (P + 1));
  s.kv_read_bytes = s0.kv_read_bytes * (N * std::ceil(N / kTile)) / (P * std::ceil(P / kTile));
  s.kv_write_bytes = s0.kv_write_bytes * N / P;
  return s;
}

uint64_t block_bytes(const hw::ModelShape& target, uint32_t block_size) {
  return static_cast<uint64_t>(std::llround(target.entry_bytes())) * block_size;
}

double default_kv_memory(const hw::Hardware& hw, const hw::ModelShape& target) {
  const double weights = target.params_per_step() * hw.system_weight_bytes / hw.system_tp;
  const double kv = hw.gpu_hbm_bytes * 0.9 - weights;
  if (!(kv > 0))
    throw Error(hw.name + ": " + target.name + "'s weights (" + std::to_string(weights / 1e9) + " GB per GPU) leave no KV memory in " +
                std::to_string(hw.gpu_hbm_bytes * 0.9 / 1e9) + " GB (90% of gpu.hbm_bytes); raise system.tp or give --kv-memory");
  return kv;
}

namespace {

// Nearest rank: the ceil(q n)-th smallest.
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

void add_time(hw::StepTime& a, const hw::StepTime& b) {
  a.gemm += b.gemm, a.attention += b.attention, a.compute += b.compute, a.hbm += b.hbm, a.launch += b.launch;
  a.nvlink += b.nvlink, a.pcie += b.pcie, a.stall += b.stall, a.total += b.total;
}

void add_load(hw::StepLoad& a, const hw::StepLoad& b) {
  a.prefill = a.prefill || b.prefill;
  a.tokens += b.tokens;
  a.attn_entries += b.attn_entries;
  a.kv_read_bytes += b.kv_read_bytes, a.kv_write_bytes += b.kv_write_bytes;
  a.h2d_bytes += b.h2d_bytes, a.h2d_transfers += b.h2d_transfers;
  a.d2h_bytes += b.d2h_bytes, a.d2h_transfers += b.d2h_transfers;
}

json time_json(const hw::StepTime& t) {
  return {{"gemm", t.gemm},     {"attention", t.attention}, {"compute", t.compute}, {"hbm", t.hbm}, {"launch", t.launch},
          {"nvlink", t.nvlink}, {"pcie", t.pcie},           {"stall", t.stall},     {"total", t.total}};
}

// A request in the engine.
struct Live {
  const RequestProfile* p = nullptr;
  AllocRequest view;
  uint32_t next = 0;       // the next trace step it runs
  uint64_t held = 0;       // blocks on the device
  uint64_t swapped = 0;    // blocks on the host (swap mode, while preempted)
  bool recompute = false;  // its next step is a recompute prefill
  bool done = false;
};

}  // namespace

std::vector<double> arrivals(size_t n, double rate, uint64_t seed) {
  std::vector<double> t(n, 0.0);
  if (!(rate > 0)) return t;
  Xoshiro256 g(seed);
  double now = 0;
  for (size_t i = 0; i < n; ++i) {
    now += -std::log1p(-g.unit()) / rate;
    t[i] = now;
  }
  return t;
}

StepCost hardware_cost(const hw::Hardware& hw, const hw::ModelShape& target) {
  return [hw, target](const hw::StepLoad& s, const SwapTraffic& swaps) {
    hw::StepTime t = hw::time_steps(hw, target, std::span<const hw::StepLoad>(&s, 1)).at(0);
    // Without overlap the stall already holds every copy; with it, offloads do not stall
    // (they hold the link only), but a swap-out frees blocks this step reuses.
    const double out = hw::transfer_time(hw, swaps.out_bytes, swaps.out_transfers);
    if (hw.system_overlap != 0 && out > t.stall) {
      t.total += out - t.stall;
      t.stall = out;
    }
    return t;
  };
}

json BatchResult::to_json() const {
  json reqs = json::array();
  for (const auto& r : per_request)
    reqs.push_back({{"id", r.id},
                    {"trace", r.name},
                    {"arrival", r.arrival},
                    {"admitted", r.admitted},
                    {"first_token", r.first_token},
                    {"finish", r.finish},
                    {"ttft", r.ttft()},
                    {"tpot", r.tpot()},
                    {"steps", r.steps},
                    {"preemptions", r.preemptions},
                    {"max_blocks", r.max_blocks}});
  return {{"alloc", alloc},
          {"alloc_params", alloc_params},
          {"preempt", preempt},
          {"requests", requests},
          {"iterations", iterations},
          {"makespan", makespan},
          {"max_batch", max_batch},
          {"mean_batch", mean_batch},
          {"generated_tokens", generated_tokens},
          {"throughput", throughput},
          {"preemptions", preemptions},
          {"bytes_swapped_out", bytes_swapped_out},
          {"bytes_swapped_in", bytes_swapped_in},
          {"recomputed_tokens", recomputed_tokens},
          {"ttft_mean", ttft_mean},
          {"ttft_p99", ttft_p99},
          {"tpot_mean", tpot_mean},
          {"tpot_p99", tpot_p99},
          {"peak_blocks", peak_blocks},
          {"total_blocks", total_blocks},
          {"block_bytes", block_bytes},
          {"time", time_json(time)},
          {"per_request", reqs}};
}

BatchResult run_batch(const std::vector<RequestProfile>& profiles, const std::vector<RequestSpec>& requests,
                      const BatchConfig& cfg, const StepCost& cost) {
  const AllocInfo& info = find_alloc(cfg.alloc);
  const json params = policy::validate_params(info.params, cfg.alloc_params, "--alloc-param");
  const std::unique_ptr<Allocator> alloc = info.make(params);
  const uint64_t total = cfg.total_blocks;

  BatchResult out;
  out.alloc = cfg.alloc;
  out.alloc_params = params;
  out.preempt = cfg.preempt == Preempt::Swap ? "swap" : "recompute";
  out.requests = requests.size();
  out.total_blocks = total;
  out.block_bytes = cfg.block_bytes;

  std::vector<Live> live(requests.size());
  out.per_request.resize(requests.size());
  // Waiting requests (new and preempted), served in (arrival, id) order.
  std::set<std::pair<double, size_t>> waiting;
  for (size_t i = 0; i < requests.size(); ++i) {
    const RequestSpec& q = requests[i];
    if (q.profile >= profiles.size()) throw Error("request " + std::to_string(i) + ": no profile " + std::to_string(q.profile));
    const RequestProfile& p = profiles[q.profile];
    if (p.blocks.empty() || p.blocks.size() != p.loads.size())
      throw Error("request " + std::to_string(i) + " (" + p.name + "): profile without steps");
    if (!(q.arrival >= 0) || !std::isfinite(q.arrival))
      throw Error("request " + std::to_string(i) + ": arrival must be a finite time >= 0");
    Live& l = live[i];
    l.p = &p;
    l.view.blocks = &p.blocks;
    l.view.max_blocks = p.max_blocks();
    for (uint32_t t = 0; t < p.blocks.size(); ++t)
      if (alloc->hold(l.view, t) > total)
        throw Error("request " + std::to_string(i) + " (" + p.name + ") needs " + std::to_string(alloc->hold(l.view, t)) +
                    " KV blocks at step " + std::to_string(t) + " under '" + cfg.alloc + "', more than the pool's " +
                    std::to_string(total) + " (raise --kv-memory, lower --budget or --block-size)");
    RequestResult& r = out.per_request[i];
    r.id = i;
    r.name = p.name;
    r.arrival = q.arrival;
    r.steps = static_cast<uint32_t>(p.blocks.size());
    waiting.insert({q.arrival, i});
  }

  std::vector<size_t> running;  // admission order: the back is the youngest
  uint64_t free_blocks = total, finished = 0;
  double now = 0, batch_sum = 0;

  // Preempts the youngest running request; returns its id.
  auto preempt_youngest = [&](SwapTraffic& swaps) {
    const size_t v = running.back();
    running.pop_back();
    Live& l = live[v];
    free_blocks += l.held;
    if (cfg.preempt == Preempt::Swap) {
      l.swapped = l.held;
      swaps.out_bytes += static_cast<double>(l.held * cfg.block_bytes);
      swaps.out_transfers += 1;
      out.bytes_swapped_out += l.held * cfg.block_bytes;
    } else {
      l.recompute = true;
    }
    l.held = 0;
    out.preemptions += 1;
    out.per_request[v].preemptions += 1;
    waiting.insert({out.per_request[v].arrival, v});
    return v;
  };

  while (finished < requests.size()) {
    SwapTraffic swaps;  // this iteration's preemption copies
    bool preempted = false;
    // 1. Blocks a running request no longer needs go back first, then each grows, oldest first.
    for (size_t id : running) {
      Live& l = live[id];
      const uint64_t need = alloc->hold(l.view, l.next);
      if (need < l.held) free_blocks += l.held - need, l.held = need;
    }
    for (size_t i = 0; i < running.size(); ++i) {
      const size_t id = running[i];
      Live& l = live[id];
      const uint64_t need = alloc->hold(l.view, l.next);
      bool self = false;
      while (need > l.held + free_blocks) {
        preempted = true;
        if (preempt_youngest(swaps) == id) {
          self = true;
          break;
        }
      }
      if (self) break;  // it was the youngest: nobody after it is left
      free_blocks -= need - l.held;
      l.held = need;
    }
    // 2. Admission, FCFS, unless this iteration preempted.
    if (!preempted)
      while (!waiting.empty() && (cfg.max_batch == 0 || running.size() < cfg.max_batch)) {
        const auto [arrival, id] = *waiting.begin();
        if (arrival > now) break;
        Live& l = live[id];
        const uint64_t need = alloc->hold(l.view, l.next);
        // An empty device always takes the head of the queue (the policy's headroom rule
        // must not stall the run; the pool check above guarantees it fits).
        const bool ok = need <= free_blocks && (running.empty() || alloc->admit(l.view, l.next, free_blocks, total));
        if (!ok) break;
        waiting.erase(waiting.begin());
        free_blocks -= need;
        l.held = need;
        running.push_back(id);
        if (l.swapped) {
          swaps.in_bytes += static_cast<double>(l.swapped * cfg.block_bytes);
          swaps.in_transfers += 1;
          out.bytes_swapped_in += l.swapped * cfg.block_bytes;
          l.swapped = 0;
        }
        if (out.per_request[id].admitted < 0) out.per_request[id].admitted = now;
      }
    if (running.empty()) {
      // Nothing to run: the clock jumps to the next arrival. (An empty device admits the
      // head of the queue once it has arrived, so the head has not arrived yet.)
      if (waiting.empty() || !(waiting.begin()->first > now)) throw Error("batch: the scheduler stalled at t = " + std::to_string(now));
      now = waiting.begin()->first;
      continue;
    }
    out.peak_blocks = std::max(out.peak_blocks, total - free_blocks);
    // 3. One step for the whole batch.
    hw::StepLoad sum;
    sum.tokens = 0;
    sum.h2d_bytes = swaps.in_bytes, sum.h2d_transfers = swaps.in_transfers;
    sum.d2h_bytes = swaps.out_bytes, sum.d2h_transfers = swaps.out_transfers;
    for (size_t id : running) {
      Live& l = live[id];
      out.per_request[id].max_blocks = std::max(out.per_request[id].max_blocks, l.held);
      if (l.recompute) {
        assert(l.next >= 1);
        const uint32_t n = l.p->prompt_tokens + l.next;
        add_load(sum, prefill_load(*l.p, n));
        out.recomputed_tokens += n - 1;
      } else {
        add_load(sum, l.p->loads[l.next]);
      }
    }
    sum.batch = static_cast<double>(running.size());
    const hw::StepTime t = cost(sum, swaps);
    add_time(out.time, t);
    now += t.total;
    out.iterations += 1;
    batch_sum += static_cast<double>(running.size());
    out.max_batch = std::max(out.max_batch, static_cast<uint32_t>(running.size()));
    // 4. Tokens out; finished requests free their blocks.
    std::vector<size_t> still;
    still.reserve(running.size());
    for (size_t id : running) {
      Live& l = live[id];
      RequestResult& r = out.per_request[id];
      if (r.first_token < 0) r.first_token = now;
      l.recompute = false;
      l.next += 1;
      if (l.next == r.steps) {
        l.done = true;
        r.finish = now;
        free_blocks += l.held;
        l.held = 0;
        finished += 1;
      } else {
        still.push_back(id);
      }
    }
    running.swap(still);
  }

  out.makespan = now;
  std::vector<double> ttft, tpot;
  for (const auto& r : out.per_request) {
    out.generated_tokens += r.steps;
    ttft.push_back(r.ttft());
    if (r.steps > 1) tpot.push_back(r.tpot());
  }
  out.throughput = now > 0 ? static_cast<double>(out.generated_tokens) / now : 0.0;
  out.mean_batch = out.iterations ? batch_sum / static_cast<double>(out.iterations) : 0.0;
  out.ttft_mean = mean(ttft), out.ttft_p99 = percentile(ttft, 0.99);
  out.tpot_mean = mean(tpot), out.tpot_p99 = percentile(tpot, 0.99);
  return out;
}

}  // namespace kvscope::sim
