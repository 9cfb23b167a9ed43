#pragma once
// Step timing (docs/hardware.md, "Timing model").
//
// One step of the model (a prefill of T tokens or a decode of one token per request) is
// costed kernel by kernel on a Hardware:
//   GEMMs       roofline: max(flops / (peak * eff(M)), bytes / HBM), eff(M) = e * M / (M + 32)
//   attention   max(flops / (peak * e), KV bytes read / HBM): bandwidth-bound at decode
//   launches    the CPU enqueues kernels at gpu.launch_overhead each; the GPU is never
//               faster than that (max of the two, the excess shown as "launch")
//   all-reduce  with system.tp > 1: two ring all-reduces of M x dim activations per layer
// and the host link moves the step's fetches (host -> HBM) and offloads (HBM -> host):
//   latency + transfers * overhead + bytes / bandwidth, per direction.
// Copies overlap compute (system.overlap = 1) on a copy stream: the fetches of step t are
// issued when step t - system.prefetch_depth begins and step t's attention waits for them;
// what compute waits is the stall. Without overlap a step is compute + copies.
//
// Every component is in seconds and they add up: total = compute + hbm + launch + nvlink + stall.
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hwmodels/hw.h"

namespace kvscope::hw {

// The model as the timing model sees it.
struct ModelShape {
  std::string name;
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, dim = 0, hidden_dim = 0, vocab_size = 0;
  int group() const { return n_kv_heads ? n_heads / n_kv_heads : 1; }
  // Bytes of one 16-bit KV entry (K and V of one head at one position).
  double entry_bytes() const { return 2.0 * head_dim * 2.0; }
  // Weights read per token step (all layers and the classifier), in parameters.
  double params_per_step() const;
};

// What one step does, summed over the batch.
struct StepLoad {
  bool prefill = false;
  double tokens = 1;          // new tokens in the step (all requests): the GEMMs' M
  double batch = 1;           // requests (decode: classifier rows; prefill: last rows)
  double attn_entries = 0;    // (query token, KV entry) pairs per (layer, KV head), summed
  double kv_read_bytes = 0;   // KV bytes attention reads from HBM
  double kv_write_bytes = 0;  // new K/V written
  double h2d_bytes = 0, h2d_transfers = 0;  // fetches
  double d2h_bytes = 0, d2h_transfers = 0;  // offloads
};

struct StepTime {
  double gemm = 0, attention = 0;           // kernel times (each max(flop-bound, memory-bound))
  double compute = 0, hbm = 0;              // the same split by what bound each kernel
  double launch = 0;                        // CPU launch cost the GPU could not hide
  double nvlink = 0;                        // all-reduce (tensor parallel)
  double pcie = 0;                          // host-link busy time (max of the two directions)
  double stall = 0;                         // compute waiting for fetches
  double total = 0;                         // compute + hbm + launch + nvlink + stall
  nlohmann::json to_json() const;
};

// Kernel-side cost of one step (no copies): everything but pcie and stall.
StepTime kernel_time(const Hardware& hw, const ModelShape& m, const StepLoad& s);
// Host-link time of a direction: latency + transfers * overhead + bytes / bandwidth (0 when idle).
double transfer_time(const Hardware& hw, double bytes, double transfers);

// Costs a sequence of steps with copy/compute overlap and prefetch (see above).
std::vector<StepTime> time_steps(const Hardware& hw, const ModelShape& m, std::span<const StepLoad> steps);

struct TimingSummary {
  double ttft = 0;          // prefill steps
  double tpot = 0;          // mean decode step
  double tokens_per_s = 0;  // decode tokens per second (batch / tpot)
  StepTime decode_mean;     // mean decode breakdown
  StepTime prefill;         // the prefill breakdown
  double decode_steps = 0;
  nlohmann::json to_json() const;
};
TimingSummary summarize(std::span<const StepLoad> loads, std::span<const StepTime> times);

}  // namespace kvscope::hw
