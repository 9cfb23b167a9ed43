#pragma once
// Multi-request replay (docs/batch.md): N traces as concurrent requests on one device
// under a KV memory budget. Each request's per-step load and KV footprint come from a
// replay of its trace under the eviction policy (profile_trace); the engine (run_batch)
// schedules them iteration by iteration (Orca/vLLM), allocates KV blocks through an
// allocation policy (sim/alloc.h), preempts by swap or recompute, and costs each
// iteration with a StepCost (the hardware model, or a constant in tests).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hwmodels/hw.h"
#include "hwmodels/timing.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::sim {

// One request's run, step by step (step 0: the prefill), in the target shape.
struct RequestProfile {
  std::string name;                 // the trace it came from
  uint32_t prompt_tokens = 1;       // P: the prefill's tokens
  std::vector<hw::StepLoad> loads;  // one per step
  std::vector<uint64_t> blocks;     // KV blocks held after each step
  uint64_t max_blocks() const;
};

// blocks(t) = n_target_streams * ceil(t_units(t) / (n_target_streams * block_size)): the
// mean target stream's 16-bit entries in HBM after step t, rounded up to whole blocks, for
// every target stream. From a replay with per_step and stream_weights for `target`.
std::vector<uint64_t> footprint_blocks(const ReplayResult& r, const hw::ModelShape& target, uint32_t block_size);

// Replays the trace once under cfg (per_step and stream_weights set here) and derives the
// profile: sim::step_loads(..., coalesce) and footprint_blocks.
RequestProfile profile_trace(const trace::TraceReader& tr, const std::string& name, ReplayConfig cfg,
                             const hw::ModelShape& target, uint32_t block_size, bool coalesce);

// The load of a prefill of n tokens for a request whose trace prefilled P = prompt_tokens:
// its step-0 load with attention pairs scaled by n(n+1)/P(P+1), KV bytes written by n/P,
// read by n ceil(n/128) / P ceil(P/128) (one read per 128-row tile, as sim/timing.cpp), no copies.
hw::StepLoad prefill_load(const RequestProfile& p, uint32_t n);

// Bytes of one block: block_size 16-bit entries of one target stream.
uint64_t block_bytes(const hw::ModelShape& target, uint32_t block_size);
// Default KV memory per GPU: gpu.hbm_bytes * 0.9 - params_per_step * system.weight_bytes / tp.
// Throws Error when the weights leave nothing.
double default_kv_memory(const hw::Hardware& hw, const hw::ModelShape& target);

// Arrival times: all 0 with rate <= 0, else a Poisson process of `rate` requests per second
// from xoshiro256** seeded through splitmix64 (no std:: distributions: the same bytes everywhere).
std::vector<double> arrivals(size_t n, double rate, uint64_t seed);

enum class Preempt { Swap, Recompute };

struct BatchConfig {
  std::string alloc = "paged";
  nlohmann::json alloc_params = nlohmann::json::object();
  uint64_t total_blocks = 0;
  uint64_t block_bytes = 0;
  Preempt preempt = Preempt::Swap;
  uint32_t max_batch = 0;  // 0: no cap
};

// One request: which profile it runs and when it arrives.
struct RequestSpec {
  size_t profile = 0;
  double arrival = 0;
};

// An iteration's preemption copies (swap mode), already included in its load's h2d/d2h.
struct SwapTraffic {
  double out_bytes = 0, out_transfers = 0;  // victims' KV to host
  double in_bytes = 0, in_transfers = 0;    // resumed requests' KV back
};
// The time of one iteration: its summed load (every request's step plus the swaps).
using StepCost = std::function<hw::StepTime(const hw::StepLoad&, const SwapTraffic&)>;
// hw::time_steps on a one-element span (nothing earlier to hide copies behind: swap-ins
// and the policies' fetches stall the step), and the step also waits for its swap-outs,
// whose blocks it reuses: stall = max(stall, transfer_time(swap-outs)) with overlap.
StepCost hardware_cost(const hw::Hardware& hw, const hw::ModelShape& target);

struct RequestResult {
  size_t id = 0;
  std::string name;
  double arrival = 0, admitted = -1, first_token = -1, finish = -1;
  uint32_t steps = 0, preemptions = 0;
  uint64_t max_blocks = 0;
  double ttft() const { return first_token - arrival; }
  double tpot() const { return steps > 1 ? (finish - first_token) / (steps - 1) : 0.0; }
};

struct BatchResult {
  std::string alloc;
  nlohmann::json alloc_params;
  std::string preempt;
  uint64_t requests = 0, iterations = 0;
  double makespan = 0;
  uint32_t max_batch = 0;
  double mean_batch = 0;
  uint64_t generated_tokens = 0;
  double throughput = 0;  // generated tokens per second
  uint64_t preemptions = 0, bytes_swapped_out = 0, bytes_swapped_in = 0, recomputed_tokens = 0;
  double ttft_mean = 0, ttft_p99 = 0, tpot_mean = 0, tpot_p99 = 0;
  uint64_t peak_blocks = 0, total_blocks = 0, block_bytes = 0;
  hw::StepTime time;  // summed over iterations
  std::vector<RequestResult> per_request;
  nlohmann::json to_json() const;
};

// Runs the requests to completion. Throws Error when a request's largest footprint
// exceeds the pool (naming it) or on an unknown allocation policy or parameter.
BatchResult run_batch(const std::vector<RequestProfile>& profiles, const std::vector<RequestSpec>& requests,
                      const BatchConfig& cfg, const StepCost& cost);

}  // namespace kvscope::sim
