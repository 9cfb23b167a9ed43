#pragma once
// Parametric hardware (docs/hardware.md).
//
// A Hardware is a flat set of named figures — "gpu.hbm_bandwidth", "pcie.transfer_overhead",
// "system.tp" — with one table (params()) that gives each key its unit, its valid range and
// what it means. Everything that touches hardware goes through that table: presets, JSON
// files, `--set key=value`, `--sweep key=lo:hi:n` and calibration overrides, so an unknown
// key or an out-of-range value is refused in one place, naming the key.
//
// JSON form: {"name": ..., "base": "h100-sxm", "calibration": "file.json",
// "gpu": {"hbm_bandwidth": 3.35e12, ...}, ...}. "base" (optional) starts from a preset,
// "calibration" (optional) applies measured figures, every other group overrides its keys. Figures are
// SI: bytes, bytes per second (one direction for links), seconds, flop/s.
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvscope::hw {

struct Hardware {
  std::string name;
  std::string description;
  // Where each figure comes from: key -> source (docs/hardware.md lists the sources).
  std::map<std::string, std::string> sources;

  // GPU. flops_* are dense tensor-core peaks (fp16/bf16 inputs with fp32 accumulation).
  double gpu_hbm_bytes = 0, gpu_hbm_bandwidth = 0, gpu_hbm_efficiency = 0.85;
  double gpu_flops_fp32 = 0, gpu_flops_fp16 = 0, gpu_flops_fp8 = 0;
  double gpu_gemm_efficiency = 0.8;  // share of the peak a large GEMM reaches
  double gpu_launch_overhead = 2.5e-6;
  double gpu_sms = 0, gpu_l2_bytes = 0;
  // Host memory.
  double host_dram_bytes = 0, host_dram_bandwidth = 0;
  // PCIe between host and GPU (per direction).
  double pcie_generation = 0, pcie_lanes = 16, pcie_bandwidth = 0, pcie_efficiency = 0.85;
  double pcie_pageable_factor = 0.5;  // pageable / pinned bandwidth
  double pcie_pinned = 1;             // 1: host buffers are pinned
  double pcie_latency = 2.5e-6, pcie_transfer_overhead = 8e-6;
  // NVLink between GPUs of one node (per direction, per GPU).
  double nvlink_bandwidth = 0, nvlink_efficiency = 0.85, nvlink_latency = 3e-6, nvlink_gpus = 1;
  // Grace-Hopper style chip-to-chip link to host memory (per direction); 0: none.
  double c2c_bandwidth = 0, c2c_efficiency = 0.77, c2c_latency = 1e-6;
  // Optional third tier (CXL memory or NVMe) behind the host; bandwidth 0: none.
  double tier_bandwidth = 0, tier_latency = 0, tier_bytes = 0, tier_transfer_overhead = 0;
  // How the system runs the model.
  double system_tp = 1;              // tensor-parallel degree (<= nvlink.gpus)
  double system_overlap = 1;         // 1: copies overlap compute (separate streams)
  double system_prefetch_depth = 0;  // steps ahead a fetch may be issued (0: on demand)
  double system_weight_bytes = 2;    // bytes per weight (2: bf16)

  double get(const std::string& key) const;
  // Throws Error naming the key when it is unknown or the value out of range.
  void set(const std::string& key, double value);
  // "key=value"; the value may use SI suffixes (k, M, G, T) and "GB/s"-free plain numbers.
  void set(const std::string& assignment);

  // Checks the cross-key rules (tp <= gpus, at least one host link, ...); throws Error.
  void validate() const;

  // Effective figures the timing model uses.
  double hbm_bw() const { return gpu_hbm_bandwidth * gpu_hbm_efficiency; }
  // The host link: C2C where the system has one, else PCIe (pinned or pageable).
  double host_link_bw() const;
  double host_link_latency() const { return c2c_bandwidth > 0 ? c2c_latency : pcie_latency; }
  double host_link_overhead() const;  // fixed cost per transfer, latency included
  double nvlink_bw() const { return nvlink_bandwidth * nvlink_efficiency; }

  nlohmann::json to_json() const;
};

struct Param {
  const char* key;            // "gpu.hbm_bandwidth"
  double Hardware::*field;
  const char* unit;           // "B/s", "s", "B", "flop/s", "", "count"
  double lo, hi;              // valid range, inclusive
  bool integer;
  const char* help;
};
std::span<const Param> params();
const Param& param(const std::string& key);  // throws Error listing close keys

// Presets (hwmodels/presets.cpp): "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200",
// "b200", "gh200", "l40s", "rtx4090".
std::vector<std::string> preset_names();
Hardware preset(const std::string& name);  // throws Error listing the presets

// A preset name or a JSON file (see above). `where` names the source in errors.
Hardware from_json(const nlohmann::json& j, const std::string& where);
Hardware load(const std::string& name_or_path);
// Applies a calibration file's fits (kvscope calibrate, docs/calibration.md) as overrides;
// each changed figure's source becomes the file. A JSON description can name one too:
// {"base": "h200", "calibration": "h200-2026-11-28.json"}.
void apply_calibration(Hardware& h, const std::string& path);

// Parses "lo:hi:n" (linear) or "lo:hi:n:log" or "v1,v2,v3" into values.
std::vector<double> parse_sweep(const std::string& spec, const std::string& key);
double parse_number(const std::string& text, const std::string& what);

}  // namespace kvscope::hw
