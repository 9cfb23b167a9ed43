// The hardware parameter table, overrides, JSON and validation (docs/hardware.md).
#include "hwmodels/hw.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "hwmodels/calibration.h"
#include "kernels/io/error.h"

namespace kvscope::hw {

using nlohmann::json;

namespace {

// One row per figure. Ranges reject typos (a bandwidth of 3.35 instead of 3.35e12 passes
// as "positive" but not as >= 1e6) without excluding any real or imagined machine.
constexpr Param kParams[] = {
    {"gpu.hbm_bytes", &Hardware::gpu_hbm_bytes, "B", 1e6, 1e15, false, "device memory capacity"},
    {"gpu.hbm_bandwidth", &Hardware::gpu_hbm_bandwidth, "B/s", 1e9, 1e15, false, "device memory bandwidth (datasheet)"},
    {"gpu.hbm_efficiency", &Hardware::gpu_hbm_efficiency, "", 0.01, 1, false, "share of hbm_bandwidth kernels reach"},
    {"gpu.flops_fp32", &Hardware::gpu_flops_fp32, "flop/s", 0, 1e18, false, "dense fp32 peak (non-tensor)"},
    {"gpu.flops_fp16", &Hardware::gpu_flops_fp16, "flop/s", 1e9, 1e18, false,
     "dense fp16/bf16 tensor peak, fp32 accumulation"},
    {"gpu.flops_fp8", &Hardware::gpu_flops_fp8, "flop/s", 0, 1e18, false, "dense fp8 tensor peak (0: none)"},
    {"gpu.gemm_efficiency", &Hardware::gpu_gemm_efficiency, "", 0.01, 1, false, "share of the peak a large GEMM reaches"},
    {"gpu.launch_overhead", &Hardware::gpu_launch_overhead, "s", 0, 1e-2, false, "CPU cost of one kernel launch"},
    {"gpu.sms", &Hardware::gpu_sms, "count", 0, 1e5, true, "streaming multiprocessors"},
    {"gpu.l2_bytes", &Hardware::gpu_l2_bytes, "B", 0, 1e12, false, "L2 cache"},
    {"host.dram_bytes", &Hardware::host_dram_bytes, "B", 0, 1e16, false, "host memory capacity"},
    {"host.dram_bandwidth", &Hardware::host_dram_bandwidth, "B/s", 0, 1e15, false, "host memory bandwidth"},
    {"pcie.generation", &Hardware::pcie_generation, "", 0, 7, true, "PCIe generation (0: none)"},
    {"pcie.lanes", &Hardware::pcie_lanes, "count", 0, 64, true, "PCIe lanes"},
    {"pcie.bandwidth", &Hardware::pcie_bandwidth, "B/s", 0, 1e14, false, "PCIe bandwidth per direction (theoretical)"},
    {"pcie.efficiency", &Hardware::pcie_efficiency, "", 0.01, 1, false, "share of pcie.bandwidth pinned copies reach"},
    {"pcie.pageable_factor", &Hardware::pcie_pageable_factor, "", 0.01, 1, false, "pageable / pinned bandwidth"},
    {"pcie.pinned", &Hardware::pcie_pinned, "bool", 0, 1, true, "1: host buffers are pinned"},
    {"pcie.latency", &Hardware::pcie_latency, "s", 0, 1e-2, false, "latency of a copy (once per batch of copies)"},
    {"pcie.transfer_overhead", &Hardware::pcie_transfer_overhead, "s", 0, 1e-2, false, "fixed cost of each copy"},
    {"nvlink.bandwidth", &Hardware::nvlink_bandwidth, "B/s", 0, 1e14, false, "NVLink bandwidth per direction per GPU"},
    {"nvlink.efficiency", &Hardware::nvlink_efficiency, "", 0.01, 1, false, "share of nvlink.bandwidth reached"},
    {"nvlink.latency", &Hardware::nvlink_latency, "s", 0, 1e-2, false, "latency of one NVLink hop"},
    {"nvlink.gpus", &Hardware::nvlink_gpus, "count", 1, 1024, true, "GPUs connected by NVLink"},
    {"c2c.bandwidth", &Hardware::c2c_bandwidth, "B/s", 0, 1e14, false, "chip-to-chip host link per direction (0: none)"},
    {"c2c.efficiency", &Hardware::c2c_efficiency, "", 0.01, 1, false, "share of c2c.bandwidth reached"},
    {"c2c.latency", &Hardware::c2c_latency, "s", 0, 1e-2, false, "latency of a C2C copy"},
    {"tier.bandwidth", &Hardware::tier_bandwidth, "B/s", 0, 1e14, false, "third tier (CXL/NVMe) bandwidth (0: none)"},
    {"tier.latency", &Hardware::tier_latency, "s", 0, 1, false, "third tier latency"},
    {"tier.bytes", &Hardware::tier_bytes, "B", 0, 1e18, false, "third tier capacity"},
    {"tier.transfer_overhead", &Hardware::tier_transfer_overhead, "s", 0, 1, false, "fixed cost of each third-tier copy"},
    {"system.tp", &Hardware::system_tp, "count", 1, 1024, true, "tensor-parallel degree"},
    {"system.overlap", &Hardware::system_overlap, "bool", 0, 1, true, "1: copies overlap compute"},
    {"system.prefetch_depth", &Hardware::system_prefetch_depth, "steps", 0, 64, true,
     "steps ahead a fetch may be issued (0: on demand)"},
    {"system.weight_bytes", &Hardware::system_weight_bytes, "B", 0.125, 8, false, "bytes per weight"},
};

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Edit distance, for "did you mean" on unknown keys.
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::span<const Param> params() { return kParams; }

const Param& param(const std::string& key) {
  for (const Param& p : kParams)
    if (key == p.key) return p;
  std::string best;
  size_t best_d = 4;
  for (const Param& p : kParams) {
    const size_t d = distance(key, p.key);
    if (d < best_d) best_d = d, best = p.key;
  }
  std::string msg = "hardware: unknown key '" + key + "'";
  if (!best.empty()) msg += " (did you mean '" + best + "'?)";
  msg += "; `kvscope hw --keys` lists them";
  throw Error(msg);
}

double Hardware::get(const std::string& key) const { return this->*(param(key).field); }

void Hardware::set(const std::string& key, double value) {
  const Param& p = param(key);
  if (!std::isfinite(value) || value < p.lo || value > p.hi)
    throw Error("hardware: " + key + " = " + fmt(value) + " is outside " + fmt(p.lo) + " .. " + fmt(p.hi) + " (" + p.unit +
                ")");
  if (p.integer && value != std::floor(value)) throw Error("hardware: " + key + " = " + fmt(value) + " must be a whole number");
  this->*(p.field) = value;
}

double parse_number(const std::string& text, const std::string& what) {
  std::string t = text;
  double scale = 1;
  if (!t.empty()) {
    switch (t.back()) {
      case 'k': scale = 1e3; break;
      case 'M': scale = 1e6; break;
      case 'G': scale = 1e9; break;
      case 'T': scale = 1e12; break;
      case 'P': scale = 1e15; break;
      default: break;
    }
    if (scale != 1) t.pop_back();
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(t, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (t.empty() || used != t.size() || !std::isfinite(v)) throw Error(what + ": '" + text + "' is not a number");
  return v * scale;
}

void Hardware::set(const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) throw Error("hardware: --set wants key=value, got '" + assignment + "'");
  const std::string key = assignment.substr(0, eq);
  param(key);  // unknown key before a bad number
  set(key, parse_number(assignment.substr(eq + 1), "hardware: " + key));
}

double Hardware::host_link_bw() const {
  if (c2c_bandwidth > 0) return c2c_bandwidth * c2c_efficiency;
  return pcie_bandwidth * pcie_efficiency * (pcie_pinned ? 1.0 : pcie_pageable_factor);
}

double Hardware::host_link_overhead() const { return c2c_bandwidth > 0 ? 0.0 : pcie_transfer_overhead; }

void Hardware::validate() const {
  const std::string who = "hardware '" + name + "': ";
  for (const Param& p : kParams) {
    const double v = this->*(p.field);
    if (!std::isfinite(v) || v < p.lo || v > p.hi)
      throw Error(who + p.key + " = " + fmt(v) + " is outside " + fmt(p.lo) + " .. " + fmt(p.hi));
  }
  if (system_tp > nvlink_gpus)
    throw Error(who + "system.tp = " + fmt(system_tp) + " exceeds nvlink.gpus = " + fmt(nvlink_gpus));
  if (system_tp > 1 && nvlink_bandwidth <= 0) throw Error(who + "system.tp > 1 needs nvlink.bandwidth > 0");
  if (pcie_bandwidth <= 0 && c2c_bandwidth <= 0) throw Error(who + "needs a host link: pcie.bandwidth or c2c.bandwidth > 0");
}

json Hardware::to_json() const {
  json j = json::object();
  j["name"] = name;
  if (!description.empty()) j["description"] = description;
  for (const Param& p : kParams) {
    const std::string key = p.key;
    const size_t dot = key.find('.');
    j[key.substr(0, dot)][key.substr(dot + 1)] = this->*(p.field);
  }
  if (!sources.empty()) j["sources"] = sources;
  return j;
}

Hardware from_json(const json& j, const std::string& where) {
  if (!j.is_object()) throw Error(where + ": a hardware description must be a JSON object");
  Hardware h;
  if (j.contains("base")) {
    if (!j["base"].is_string()) throw Error(where + ": 'base' must be a preset name");
    h = preset(j["base"].get<std::string>());
  }
  if (j.contains("calibration")) {
    // Measured figures (kvscope calibrate) over the base; a relative path is relative to
    // the description's own folder. Groups below still override them.
    if (!j["calibration"].is_string()) throw Error(where + ": 'calibration' must be the path of a calibration file");
    std::filesystem::path cal = j["calibration"].get<std::string>();
    if (cal.is_relative()) cal = std::filesystem::path(where).parent_path() / cal;
    apply_calibration(h, cal.string());
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& group = it.key();
    if (group == "base" || group == "calibration") continue;
    if (group == "name" || group == "description") {
      if (!it->is_string()) throw Error(where + ": '" + group + "' must be a string");
      (group == "name" ? h.name : h.description) = it->get<std::string>();
      continue;
    }
    if (group == "sources") {
      if (!it->is_object()) throw Error(where + ": 'sources' must map keys to strings");
      for (auto s = it->begin(); s != it->end(); ++s) {
        param(s.key());
        if (!s->is_string()) throw Error(where + ": sources." + s.key() + " must be a string");
        h.sources[s.key()] = s->get<std::string>();
      }
      continue;
    }
    if (!it->is_object()) throw Error(where + ": '" + group + "' must be an object of figures (or an unknown key)");
    for (auto f = it->begin(); f != it->end(); ++f) {
      const std::string key = group + "." + f.key();
      try {
        param(key);
      } catch (const Error& e) {
        throw Error(where + ": " + e.what());
      }
      if (!f->is_number()) throw Error(where + ": " + key + " must be a number");
      try {
        h.set(key, f->get<double>());
      } catch (const Error& e) {
        throw Error(where + ": " + e.what());
      }
    }
  }
  if (h.name.empty()) h.name = std::filesystem::path(where).stem().string();
  try {
    h.validate();
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  return h;
}

Hardware load(const std::string& name_or_path) {
  const auto names = preset_names();
  if (std::find(names.begin(), names.end(), name_or_path) != names.end()) return preset(name_or_path);
  if (!std::filesystem::exists(name_or_path)) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw Error("hardware: '" + name_or_path + "' is neither a preset (" + list + ") nor a file");
  }
  std::ifstream in(name_or_path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(name_or_path + ": not valid JSON: " + e.what());
  }
  return from_json(j, name_or_path);
}

void apply_calibration(Hardware& h, const std::string& path) {
  const json cal = load_calibration(path);
  for (const auto& [key, value] : calibration_overrides(cal)) {
    try {
      h.set(key, value);
    } catch (const Error& e) {
      throw Error(path + ": " + e.what());
    }
    h.sources[key] = "measured: " + path + " (" + cal.value("date", std::string("undated")) + ")";
  }
}

std::vector<double> parse_sweep(const std::string& spec, const std::string& key) {
  const std::string what = "--sweep " + key;
  std::vector<double> out;
  if (spec.find(':') == std::string::npos) {
    size_t start = 0;
    while (start <= spec.size()) {
      const size_t comma = std::min(spec.find(',', start), spec.size());
      out.push_back(parse_number(spec.substr(start, comma - start), what));
      start = comma + 1;
    }
    return out;
  }
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t colon = spec.find(':', start);
    parts.push_back(spec.substr(start, colon == std::string::npos ? std::string::npos : colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  const bool log = parts.size() == 4 && parts[3] == "log";
  if (parts.size() != 3 && !log) throw Error(what + ": expected lo:hi:n, lo:hi:n:log or v1,v2,...; got '" + spec + "'");
  const double lo = parse_number(parts[0], what), hi = parse_number(parts[1], what);
  const double nd = parse_number(parts[2], what);
  if (nd < 1 || nd > 10000 || nd != std::floor(nd)) throw Error(what + ": the number of points must be 1..10000");
  const int n = static_cast<int>(nd);
  if (log && (lo <= 0 || hi <= 0)) throw Error(what + ": a log sweep needs positive bounds");
  for (int i = 0; i < n; ++i) {
    const double t = n == 1 ? 0.0 : static_cast<double>(i) / (n - 1);
    out.push_back(log ? lo * std::pow(hi / lo, t) : lo + (hi - lo) * t);
  }
  return out;
}

}  // namespace kvscope::hw
