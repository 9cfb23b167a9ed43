#pragma once
// GPU measurements for `kvscope calibrate` (docs/calibration.md). CUDA builds only
// (KVSCOPE_HAVE_CUDA). Plain structs, no JSON: cli/cmd_calibrate.cpp writes the file.
// Never throws: a missing driver or device, or a failing step, is reported in the result.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace kvscope::cuda {

struct CalDevice {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int driver_version = 0, runtime_version = 0;  // 13000 = 13.0
  size_t total_mem = 0;
  int sms = 0;
  int l2_bytes = 0;
  int clock_khz = 0, mem_clock_khz = 0;  // peak clocks the driver reports
  int bus_width = 0;                     // bits
};

// One size: `seconds` is the median time of one operation, `bandwidth` its bytes per
// second. For D2D copies `bandwidth` counts the bytes read plus the bytes written
// (2 * bytes / seconds); everywhere else it is bytes / seconds.
struct CalTransfer {
  double bytes = 0, seconds = 0, bandwidth = 0;
};

struct CalGemm {
  int m = 0, n = 0, k = 0;
  std::string dtype;  // "bf16" or "fp16" (inputs and output; fp32 accumulate)
  double seconds = 0, flops = 0;  // flops: 2*m*n*k / seconds
};

struct CalOptions {
  bool quick = false;
  int device = 0;
  // Progress lines ("h2d pinned 256 MiB: 52.1 GB/s"); may be empty.
  std::function<void(const std::string&)> log;
};

struct GpuCalibration {
  bool ok = false;   // false: no usable device; `why` says why and nothing else is filled
  std::string why;
  CalDevice device;
  std::vector<CalTransfer> h2d_pinned, d2h_pinned, h2d_pageable, d2h_pageable, d2d, p2p;
  int p2p_peer = -1;          // the second device of the P2P pair, -1 when not measured
  std::string p2p_why;        // why P2P was not measured (one device, no peer access, ...)
  std::vector<CalGemm> gemm;
  double launch_overhead = 0;  // seconds per launch, back-to-back empty kernels; 0 if failed
  std::vector<std::string> errors;  // steps that failed (the others still ran)
};

GpuCalibration calibrate_gpu(const CalOptions& o);

}  // namespace kvscope::cuda
