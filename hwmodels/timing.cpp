// Step timing: roofline kernels, launch floor, tensor-parallel all-reduce, and a copy
// stream with prefetch beside the compute stream (hwmodels/timing.h, docs/hardware.md).
#include "hwmodels/timing.h"

#include <algorithm>
#include <cmath>

namespace kvscope::hw {

using nlohmann::json;

namespace {

// Half-saturation of GEMM efficiency in the token dimension: small M leaves tiles and SMs
// idle. With M = 32 a GEMM reaches half of gpu.gemm_efficiency; with M = 4096, 99 %.
constexpr double kGemmHalfM = 32;
// Kernels per layer: two RMSNorms, QKV GEMM, RoPE, attention and its split-K combine,
// O GEMM, gate/up GEMM, SwiGLU, down GEMM; per step: final norm, classifier, sampling.
constexpr double kKernelsPerLayer = 10, kKernelsPerStep = 3;

struct Kernel {
  double flops, bytes, eff;
};

}  // namespace

double ModelShape::params_per_step() const {
  const double q = static_cast<double>(n_heads) * head_dim, kv = static_cast<double>(n_kv_heads) * head_dim;
  const double per_layer = dim * (q + 2 * kv) + q * dim + 3.0 * dim * hidden_dim;
  return n_layers * per_layer + static_cast<double>(dim) * vocab_size;
}

json StepTime::to_json() const {
  return {{"gemm", gemm},     {"attention", attention}, {"compute", compute}, {"hbm", hbm},     {"launch", launch},
          {"nvlink", nvlink}, {"pcie", pcie},           {"stall", stall},     {"total", total}};
}

StepTime kernel_time(const Hardware& hw, const ModelShape& m, const StepLoad& s) {
  StepTime t;
  const double tp = hw.system_tp, wb = hw.system_weight_bytes;
  const double peak = hw.gpu_flops_fp16 * hw.gpu_gemm_efficiency, hbm = hw.hbm_bw();
  auto run = [&](const Kernel& k, double& bucket) {
    const double tf = k.flops / (peak * k.eff), tb = k.bytes / hbm;
    bucket += std::max(tf, tb);
    (tf >= tb ? t.compute : t.hbm) += std::max(tf, tb);
  };
  // GEMMs, split over tensor-parallel ranks (columns or rows: the same share each).
  const double M = std::max(s.tokens, 0.0), eff = M / (M + kGemmHalfM);
  const double q = static_cast<double>(m.n_heads) * m.head_dim, kv = static_cast<double>(m.n_kv_heads) * m.head_dim;
  const double shapes[4][2] = {{q + 2 * kv, static_cast<double>(m.dim)},
                               {static_cast<double>(m.dim), q},
                               {2.0 * m.hidden_dim, static_cast<double>(m.dim)},
                               {static_cast<double>(m.dim), static_cast<double>(m.hidden_dim)}};
  if (M > 0) {
    for (int l = 0; l < m.n_layers; ++l)
      for (const auto& nk : shapes)
        run({2 * M * nk[0] * nk[1] / tp, (nk[0] * nk[1] * wb + (M * nk[1] + M * nk[0]) * 2) / tp, eff}, t.gemm);
    const double rows = std::max(1.0, std::min(s.batch, M));  // logits of each request's last token
    const double cls_eff = rows / (rows + kGemmHalfM);
    run({2 * rows * m.vocab_size * m.dim / tp, (static_cast<double>(m.vocab_size) * m.dim * wb + rows * m.vocab_size * 4) / tp,
         cls_eff},
        t.gemm);
  }
  // Attention: QK^T and PV, 2 flops per multiply-add, every query head of a group over
  // the shared KV entry; bytes are the KV it reads and writes.
  const double attn_flops = 4.0 * m.head_dim * m.group() * s.attn_entries / tp;
  if (attn_flops > 0 || s.kv_read_bytes > 0)
    run({attn_flops, (s.kv_read_bytes + s.kv_write_bytes) / tp, 1.0}, t.attention);
  // Launch floor: the GPU cannot run kernels faster than the CPU enqueues them.
  const double kernels = kKernelsPerLayer * m.n_layers + kKernelsPerStep;
  const double gpu = t.gemm + t.attention;
  t.launch = std::max(0.0, kernels * hw.gpu_launch_overhead - gpu);
  // Tensor parallel: two ring all-reduces of the M x dim activations (bf16) per layer.
  if (tp > 1 && M > 0) {
    const double bytes = M * m.dim * 2.0;
    const double one = 2.0 * (tp - 1) / tp * bytes / hw.nvlink_bw() + 2.0 * (tp - 1) * hw.nvlink_latency;
    t.nvlink = 2.0 * m.n_layers * one;
  }
  t.total = t.compute + t.hbm + t.launch + t.nvlink;
  return t;
}

double transfer_time(const Hardware& hw, double bytes, double transfers) {
  if (bytes <= 0 && transfers <= 0) return 0.0;
  return hw.host_link_latency() + transfers * hw.host_link_overhead() + bytes / hw.host_link_bw();
}

std::vector<StepTime> time_steps(const Hardware& hw, const ModelShape& m, std::span<const StepLoad> steps) {
  std::vector<StepTime> out;
  out.reserve(steps.size());
  const size_t depth = static_cast<size_t>(hw.system_prefetch_depth);
  std::vector<double> begin(steps.size() + 1, 0.0);
  double h2d_free = 0, d2h_free = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    StepTime t = kernel_time(hw, m, steps[i]);
    const double h2d = transfer_time(hw, steps[i].h2d_bytes, steps[i].h2d_transfers);
    const double d2h = transfer_time(hw, steps[i].d2h_bytes, steps[i].d2h_transfers);
    t.pcie = std::max(h2d, d2h);
    if (hw.system_overlap == 0) {
      t.stall = h2d + d2h;  // one stream: the step waits for every copy
    } else {
      // Fetches for step i go out when step i - depth began (depth 0: when step i begins),
      // behind earlier fetches on the same direction of the link.
      const double issue = i >= depth ? begin[i - depth] : 0.0;
      const double start = std::max(issue, h2d_free);
      h2d_free = h2d > 0 ? start + h2d : h2d_free;
      t.stall = h2d > 0 ? std::max(0.0, h2d_free - begin[i]) : 0.0;
    }
    t.total += t.stall;
    const double end = begin[i] + t.total;
    // Offloads leave once the step decided them; they hold the link, not the compute.
    if (d2h > 0) d2h_free = std::max(d2h_free, end) + d2h;
    begin[i + 1] = end;
    out.push_back(t);
  }
  return out;
}

namespace {
void add(StepTime& a, const StepTime& b, double w) {
  a.gemm += w * b.gemm, a.attention += w * b.attention, a.compute += w * b.compute, a.hbm += w * b.hbm;
  a.launch += w * b.launch, a.nvlink += w * b.nvlink, a.pcie += w * b.pcie, a.stall += w * b.stall;
  a.total += w * b.total;
}
}  // namespace

json TimingSummary::to_json() const {
  return {{"ttft", ttft},
          {"tpot", tpot},
          {"tokens_per_s", tokens_per_s},
          {"decode_steps", decode_steps},
          {"prefill", prefill.to_json()},
          {"decode_mean", decode_mean.to_json()}};
}

TimingSummary summarize(std::span<const StepLoad> loads, std::span<const StepTime> times) {
  TimingSummary s;
  double batch = 0;
  for (size_t i = 0; i < times.size() && i < loads.size(); ++i) {
    if (loads[i].prefill) {
      add(s.prefill, times[i], 1.0);
      s.ttft += times[i].total;
    } else {
      add(s.decode_mean, times[i], 1.0);
      s.decode_steps += 1;
      batch += loads[i].batch;
    }
  }
  if (s.decode_steps > 0) {
    StepTime mean;
    add(mean, s.decode_mean, 1.0 / s.decode_steps);
    s.decode_mean = mean;
    s.tpot = mean.total;
    s.tokens_per_s = mean.total > 0 ? batch / s.decode_steps / mean.total : 0.0;
  }
  return s;
}

}  // namespace kvscope::hw
