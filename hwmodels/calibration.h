#pragma once
// The calibration file (docs/calibration.md): measured figures that replace the hardware
// model's preset ones. `kvscope calibrate` writes it; the hardware model reads it through
// load_calibration + calibration_overrides.
//
// This header also holds the host (CPU) measurements, which run everywhere; the GPU ones
// live in kernels/cuda/calibrate.h (CUDA builds only).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvscope::hw {

// t = overhead + bytes / bandwidth over (bytes, t) points, in closed form: the bandwidth
// from the least-squares slope, the overhead as the 1/t^2-weighted mean of t - bytes /
// bandwidth (so the small copies decide it). bandwidth in bytes/s, overhead in seconds;
// when the overhead comes out negative it is 0 and the slope is refitted through the origin.
struct TransferFit {
  double bandwidth = 0;
  double overhead = 0;
};

// Throws kvscope::Error on fewer than 2 points, on non-finite or negative values, when
// every point has the same size (the slope is undefined) or when the fitted time does
// not grow with size (slope <= 0: no bandwidth can be derived).
TransferFit fit_transfer(const std::vector<std::pair<double, double>>& bytes_seconds);

// The hardware-model keys the calibration file provides, with their values, in a fixed
// order. Only keys whose measurements exist are returned (a CPU-only file gives just
// "host.dram_bandwidth"). The file's "fits" object is exactly these pairs. Keys:
//   host.dram_bandwidth    best large-size memcpy bandwidth (bytes copied once, B/s)
//   pcie.bandwidth         min(fitted H2D pinned, fitted D2H pinned) bandwidth, B/s per direction
//   pcie.efficiency        1.0 (pcie.bandwidth is already an achieved figure)
//   pcie.transfer_overhead fitted intercept of the same fits (the larger of the two), s
//   pcie.pageable_factor   pageable / pinned bandwidth at the largest common size, mean of H2D and D2H
//   gpu.hbm_bandwidth      largest D2D copy: bytes read + written / time, B/s
//   gpu.hbm_efficiency     1.0
//   gpu.flops_fp16         best measured GEMM flop/s (bf16 and fp16 inputs, fp32 accumulate)
//   gpu.gemm_efficiency    1.0
//   gpu.launch_overhead    seconds per back-to-back kernel launch
//   gpu.hbm_bytes          device total memory, bytes
//   gpu.sms                multiprocessor count
std::vector<std::pair<std::string, double>> calibration_overrides(const nlohmann::json& cal);

// Reads and validates a calibration file: format "kvscope-calibration", version 1 and the
// type of every key it holds. Throws kvscope::Error "<path>: <key>: <what>" on anything wrong.
nlohmann::json load_calibration(const std::string& path);

// Checks a parsed calibration document; `path` only names it in messages.
void validate_calibration(const nlohmann::json& cal, const std::string& path);

// ---- host measurements (run everywhere) -----------------------------------------------

struct Sample {
  double bytes = 0;    // bytes per operation
  double seconds = 0;  // median seconds per operation
  double bandwidth = 0;  // bytes / seconds unless the producer says otherwise (D2D: read + written)
};

struct HostInfo {
  std::string cpu;          // /proc/cpuinfo "model name" (or the ARM implementer/part, or "unknown")
  int threads = 0;          // CPUs this process may run on (its affinity mask)
  uint64_t memory_bytes = 0;  // physical memory
};

HostInfo host_info();

struct HostMemcpyOptions {
  bool quick = false;
  int threads = 0;  // 0: HostInfo::threads
};

struct HostMemcpy {
  std::vector<Sample> single;   // one thread
  std::vector<Sample> threads;  // all threads, each copying its slice
  int n_threads = 0;
  double best_bandwidth = 0;    // best bandwidth over both at sizes >= kLargeBytes
};

// Sizes that count as "large" for best_bandwidth (past the last-level cache of common CPUs).
inline constexpr double kLargeBytes = 64.0 * 1024 * 1024;

// The sizes measured: 4 KiB .. 256 MiB in powers of 4 (quick: 4 KiB, 1 MiB, 64 MiB).
std::vector<size_t> calibration_sizes(bool quick);

HostMemcpy measure_host_memcpy(const HostMemcpyOptions& o);

// Median of a non-empty list (mean of the two middle values for an even count).
double median(std::vector<double> v);

// "2026-11-28T17:05:03Z"
std::string utc_now_iso8601();

}  // namespace kvscope::hw
