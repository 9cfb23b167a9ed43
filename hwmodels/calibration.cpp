// The calibration file: transfer fits, the hardware-model overrides, validation, and the
// host measurements (memcpy bandwidth, host description). docs/calibration.md.
#include "hwmodels/calibration.h"

#include <sched.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>

#include <omp.h>

#include "kernels/io/error.h"

namespace kvscope::hw {

// ---- fits -------------------------------------------------------------------------------

TransferFit fit_transfer(const std::vector<std::pair<double, double>>& bytes_seconds) {
  const size_t n = bytes_seconds.size();
  if (n < 2) throw Error("fit_transfer: need at least 2 (bytes, seconds) points, got " + std::to_string(n));
  double mx = 0, my = 0;
  for (const auto& [x, y] : bytes_seconds) {
    if (!std::isfinite(x) || !std::isfinite(y) || x < 0 || !(y > 0))
      throw Error("fit_transfer: points must be finite, sizes non-negative and times positive (got bytes " +
                  std::to_string(x) + ", seconds " + std::to_string(y) + ")");
    mx += x;
    my += y;
  }
  mx /= static_cast<double>(n);
  my /= static_cast<double>(n);
  // Bandwidth: the least-squares slope, which the large (millisecond) copies decide.
  // Centred sums: the sizes span 4 KiB .. 256 MiB, raw sums of squares would lose digits.
  double sxx = 0, sxy = 0;
  for (const auto& [x, y] : bytes_seconds) {
    sxx += (x - mx) * (x - mx);
    sxy += (x - mx) * (y - my);
  }
  if (!(sxx > 0)) throw Error("fit_transfer: every point has the same size; the bandwidth is undefined");
  double slope = sxy / sxx;  // seconds per byte
  if (!(slope > 0)) throw Error("fit_transfer: time does not grow with size (slope " + std::to_string(slope) + " s/B)");
  // Overhead: what the bandwidth leaves unexplained, averaged with weights 1/t^2 so that the
  // small copies decide it. The plain intercept is steered by the large copies, where a
  // 0.1 % wobble is microseconds: on the H200 it gave 10.9 us where a 4 KiB copy takes 3.0 us.
  double wr = 0, w = 0;
  for (const auto& [x, y] : bytes_seconds) {
    wr += (y - slope * x) / (y * y);
    w += 1.0 / (y * y);
  }
  double overhead = wr / w;
  if (overhead < 0) {
    // The constraint overhead >= 0 binds: the least-squares line through the origin.
    double sx2 = 0, sxy0 = 0;
    for (const auto& [x, y] : bytes_seconds) {
      sx2 += x * x;
      sxy0 += x * y;
    }
    overhead = 0;
    slope = sxy0 / sx2;
  }
  return {1.0 / slope, overhead};
}

namespace {

bool has_samples(const nlohmann::json& cal, const char* key, size_t at_least = 1) {
  return cal.contains(key) && cal[key].is_array() && cal[key].size() >= at_least;
}

std::vector<std::pair<double, double>> points(const nlohmann::json& arr) {
  std::vector<std::pair<double, double>> p;
  for (const auto& s : arr) p.emplace_back(s.at("bytes").get<double>(), s.at("seconds").get<double>());
  return p;
}

// Bandwidth of the largest size in `arr` that also appears in `other`; 0 if none.
std::pair<double, double> largest_common(const nlohmann::json& a, const nlohmann::json& b) {
  double best = -1, ba = 0, bb = 0;
  for (const auto& sa : a)
    for (const auto& sb : b)
      if (sa.at("bytes").get<double>() == sb.at("bytes").get<double>() && sa.at("bytes").get<double>() > best) {
        best = sa.at("bytes").get<double>();
        ba = sa.at("bandwidth").get<double>();
        bb = sb.at("bandwidth").get<double>();
      }
  return {ba, bb};
}

}  // namespace

std::vector<std::pair<std::string, double>> calibration_overrides(const nlohmann::json& cal) {
  std::vector<std::pair<std::string, double>> out;
  if (cal.contains("host") && cal["host"].is_object() && cal["host"].contains("memcpy_bandwidth") &&
      cal["host"]["memcpy_bandwidth"].is_number() && cal["host"]["memcpy_bandwidth"].get<double>() > 0)
    out.emplace_back("host.dram_bandwidth", cal["host"]["memcpy_bandwidth"].get<double>());

  // PCIe: fit each pinned direction, keep the slower bandwidth and the larger overhead.
  std::vector<TransferFit> fits;
  for (const char* key : {"h2d_pinned", "d2h_pinned"})
    if (has_samples(cal, key, 2)) fits.push_back(fit_transfer(points(cal[key])));
  if (!fits.empty()) {
    double bw = fits[0].bandwidth, ov = fits[0].overhead;
    for (const auto& f : fits) {
      bw = std::min(bw, f.bandwidth);
      ov = std::max(ov, f.overhead);
    }
    out.emplace_back("pcie.bandwidth", bw);
    out.emplace_back("pcie.efficiency", 1.0);
    out.emplace_back("pcie.transfer_overhead", ov);
  }
  // Pageable / pinned at the largest size both were measured at, mean over directions.
  std::vector<double> factors;
  for (auto [pin, pag] : {std::pair{"h2d_pinned", "h2d_pageable"}, std::pair{"d2h_pinned", "d2h_pageable"}}) {
    if (!has_samples(cal, pin) || !has_samples(cal, pag)) continue;
    auto [bpin, bpag] = largest_common(cal[pin], cal[pag]);
    if (bpin > 0 && bpag > 0) factors.push_back(bpag / bpin);
  }
  if (!factors.empty()) {
    double s = 0;
    for (double f : factors) s += f;
    out.emplace_back("pcie.pageable_factor", s / static_cast<double>(factors.size()));
  }

  if (has_samples(cal, "d2d")) {
    // The file's D2D bandwidth already counts bytes read + written.
    const nlohmann::json* big = nullptr;
    for (const auto& s : cal["d2d"])
      if (!big || s.at("bytes").get<double>() > big->at("bytes").get<double>()) big = &s;
    out.emplace_back("gpu.hbm_bandwidth", big->at("bandwidth").get<double>());
    out.emplace_back("gpu.hbm_efficiency", 1.0);
  }
  if (has_samples(cal, "gemm")) {
    double best = 0;
    for (const auto& g : cal["gemm"]) best = std::max(best, g.at("flops").get<double>());
    if (best > 0) {
      out.emplace_back("gpu.flops_fp16", best);
      out.emplace_back("gpu.gemm_efficiency", 1.0);
    }
  }
  if (cal.contains("launch_overhead") && cal["launch_overhead"].is_number() && cal["launch_overhead"].get<double>() > 0)
    out.emplace_back("gpu.launch_overhead", cal["launch_overhead"].get<double>());
  if (cal.contains("device") && cal["device"].is_object()) {
    const auto& d = cal["device"];
    if (d.contains("total_mem") && d["total_mem"].is_number() && d["total_mem"].get<double>() > 0)
      out.emplace_back("gpu.hbm_bytes", d["total_mem"].get<double>());
    if (d.contains("sms") && d["sms"].is_number() && d["sms"].get<double>() > 0)
      out.emplace_back("gpu.sms", d["sms"].get<double>());
  }
  return out;
}

// ---- validation -------------------------------------------------------------------------

namespace {

class Checker {
 public:
  explicit Checker(const std::string& path) : path_(path) {}

  [[noreturn]] void bad(const std::string& key, const std::string& what) const { fail(path_, "key '" + key + "': " + what); }

  const nlohmann::json& need(const nlohmann::json& obj, const std::string& prefix, const char* key) const {
    if (!obj.contains(key)) bad(join(prefix, key), "missing");
    return obj[key];
  }
  void string(const nlohmann::json& v, const std::string& key) const {
    if (!v.is_string()) bad(key, "expected a string, got " + std::string(v.type_name()));
  }
  void integer(const nlohmann::json& v, const std::string& key, int64_t min) const {
    if (!v.is_number_integer()) bad(key, "expected an integer, got " + std::string(v.type_name()));
    if (v.get<int64_t>() < min) bad(key, "expected an integer >= " + std::to_string(min) + ", got " + v.dump());
  }
  void positive(const nlohmann::json& v, const std::string& key) const {
    if (!v.is_number()) bad(key, "expected a number, got " + std::string(v.type_name()));
    const double d = v.get<double>();
    if (!std::isfinite(d) || d <= 0) bad(key, "expected a positive number, got " + v.dump());
  }
  void samples(const nlohmann::json& obj, const std::string& prefix, const char* key, bool required) const {
    const std::string k = join(prefix, key);
    if (!obj.contains(key)) {
      if (required) bad(k, "missing");
      return;
    }
    const auto& arr = obj[key];
    if (!arr.is_array()) bad(k, "expected an array of {bytes, seconds, bandwidth}, got " + std::string(arr.type_name()));
    for (size_t i = 0; i < arr.size(); ++i) {
      const std::string ki = k + "[" + std::to_string(i) + "]";
      if (!arr[i].is_object()) bad(ki, "expected an object, got " + std::string(arr[i].type_name()));
      for (const char* f : {"bytes", "seconds", "bandwidth"}) positive(need(arr[i], ki, f), ki + "." + f);
    }
  }
  static std::string join(const std::string& prefix, const char* key) { return prefix.empty() ? key : prefix + "." + key; }

 private:
  std::string path_;
};

const char* const kOverrideKeys[] = {"host.dram_bandwidth",   "pcie.bandwidth",     "pcie.efficiency",
                                     "pcie.transfer_overhead", "pcie.pageable_factor", "gpu.hbm_bandwidth",
                                     "gpu.hbm_efficiency",    "gpu.flops_fp16",     "gpu.gemm_efficiency",
                                     "gpu.launch_overhead",   "gpu.hbm_bytes",      "gpu.sms"};

}  // namespace

void validate_calibration(const nlohmann::json& cal, const std::string& path) {
  Checker c(path);
  if (!cal.is_object()) fail(path, "not a calibration file: expected a JSON object, got " + std::string(cal.type_name()));
  const auto& fmt = c.need(cal, "", "format");
  if (!fmt.is_string() || fmt.get<std::string>() != "kvscope-calibration")
    c.bad("format", "expected \"kvscope-calibration\", got " + fmt.dump());
  const auto& ver = c.need(cal, "", "version");
  if (!ver.is_number_integer()) c.bad("version", "expected an integer, got " + std::string(ver.type_name()));
  if (ver.get<int64_t>() != 1) c.bad("version", "unsupported version " + ver.dump() + " (this kvscope reads version 1)");
  c.string(c.need(cal, "", "date"), "date");
  c.string(c.need(cal, "", "command"), "command");

  const auto& host = c.need(cal, "", "host");
  if (!host.is_object()) c.bad("host", "expected an object, got " + std::string(host.type_name()));
  c.string(c.need(host, "host", "cpu"), "host.cpu");
  c.integer(c.need(host, "host", "threads"), "host.threads", 1);
  c.integer(c.need(host, "host", "memory_bytes"), "host.memory_bytes", 0);
  c.samples(host, "host", "memcpy", true);
  c.samples(host, "host", "memcpy_threads", false);
  c.positive(c.need(host, "host", "memcpy_bandwidth"), "host.memcpy_bandwidth");

  const auto& dev = c.need(cal, "", "device");
  if (dev.is_null()) {
    c.string(c.need(cal, "", "why"), "why");
  } else if (dev.is_object()) {
    c.string(c.need(dev, "device", "name"), "device.name");
    c.integer(c.need(dev, "device", "index"), "device.index", 0);
    c.string(c.need(dev, "device", "sm"), "device.sm");
    for (const char* k : {"driver_version", "runtime_version", "l2_bytes", "clock_khz", "mem_clock_khz", "bus_width"})
      c.integer(c.need(dev, "device", k), std::string("device.") + k, 0);
    c.integer(c.need(dev, "device", "total_mem"), "device.total_mem", 1);
    c.integer(c.need(dev, "device", "sms"), "device.sms", 1);
  } else {
    c.bad("device", "expected an object or null, got " + std::string(dev.type_name()));
  }
  if (cal.contains("why") && !cal["why"].is_null()) c.string(cal["why"], "why");

  for (const char* k : {"h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable", "d2d", "p2p"}) c.samples(cal, "", k, false);
  if (cal.contains("gemm")) {
    const auto& g = cal["gemm"];
    if (!g.is_array()) c.bad("gemm", "expected an array, got " + std::string(g.type_name()));
    for (size_t i = 0; i < g.size(); ++i) {
      const std::string ki = "gemm[" + std::to_string(i) + "]";
      if (!g[i].is_object()) c.bad(ki, "expected an object, got " + std::string(g[i].type_name()));
      for (const char* f : {"m", "n", "k"}) c.integer(c.need(g[i], ki, f), ki + "." + f, 1);
      const auto& dt = c.need(g[i], ki, "dtype");
      if (!dt.is_string() || (dt.get<std::string>() != "bf16" && dt.get<std::string>() != "fp16"))
        c.bad(ki + ".dtype", "expected \"bf16\" or \"fp16\", got " + dt.dump());
      c.positive(c.need(g[i], ki, "seconds"), ki + ".seconds");
      c.positive(c.need(g[i], ki, "flops"), ki + ".flops");
    }
  }
  if (cal.contains("launch_overhead") && !cal["launch_overhead"].is_null())
    c.positive(cal["launch_overhead"], "launch_overhead");

  const auto& fits = c.need(cal, "", "fits");
  if (!fits.is_object()) c.bad("fits", "expected an object, got " + std::string(fits.type_name()));
  for (auto it = fits.begin(); it != fits.end(); ++it) {
    const std::string& k = it.key();
    const nlohmann::json& v = it.value();
    if (std::find_if(std::begin(kOverrideKeys), std::end(kOverrideKeys), [&](const char* s) { return k == s; }) ==
        std::end(kOverrideKeys))
      c.bad("fits." + k, "not a hardware-model key this version knows");
    if (!v.is_number()) c.bad("fits." + k, "expected a number, got " + std::string(v.type_name()));
    const double d = v.get<double>();
    // pcie.transfer_overhead may be 0 (clamped fit); everything else is a positive figure.
    if (!std::isfinite(d) || d < 0 || (d == 0 && k != "pcie.transfer_overhead"))
      c.bad("fits." + k, "expected a positive number, got " + v.dump());
  }
}

nlohmann::json load_calibration(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open calibration file: ") + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json cal;
  try {
    cal = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, std::string("not valid JSON: ") + e.what());
  }
  validate_calibration(cal, path);
  try {
    calibration_overrides(cal);  // the fits must be computable from what the file holds
  } catch (const Error& e) {
    fail(path, std::string("measurements cannot be fitted: ") + e.what());
  }
  return cal;
}

// ---- host measurements ------------------------------------------------------------------

double median(std::vector<double> v) {
  if (v.empty()) throw Error("median of an empty list");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string utc_now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  const size_t b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, implementer, part;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = trim(line.substr(0, colon)), val = trim(line.substr(colon + 1));
    if ((key == "model name" || key == "Model Name" || key == "cpu model") && !val.empty()) return val;
    if (key == "CPU implementer" && implementer.empty()) implementer = val;
    if (key == "CPU part" && part.empty()) part = val;
  }
  if (!implementer.empty()) return "ARM implementer " + implementer + " part " + part;
  utsname u{};
  return uname(&u) == 0 ? std::string("unknown (") + u.machine + ")" : "unknown";
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, FreeDeleter>;

Buffer alloc_touched(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, std::max<size_t>(bytes, 4096)) != 0)
    throw Error("calibrate: cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  std::memset(p, 1, bytes);  // fault every page in before timing
  return Buffer(static_cast<char*>(p));
}

// Compiler barrier: the copies' results are never read, so stop them being optimised away.
inline void clobber() { asm volatile("" ::: "memory"); }

using Clock = std::chrono::steady_clock;

}  // namespace

HostInfo host_info() {
  HostInfo h;
  h.cpu = cpu_model();
  cpu_set_t set;
  CPU_ZERO(&set);
  h.threads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
  if (h.threads <= 0) h.threads = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) h.memory_bytes = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  return h;
}

std::vector<size_t> calibration_sizes(bool quick) {
  if (quick) return {size_t{4} << 10, size_t{1} << 20, size_t{64} << 20};
  std::vector<size_t> s;
  for (size_t b = size_t{4} << 10; b <= (size_t{256} << 20); b *= 4) s.push_back(b);
  return s;
}

HostMemcpy measure_host_memcpy(const HostMemcpyOptions& o) {
  const auto sizes = calibration_sizes(o.quick);
  const size_t max_bytes = sizes.back();
  const int repeats = o.quick ? 3 : 7;
  // Each timed sample copies at least this much (small sizes loop), so timer resolution and
  // thread wake-up stay small against the sample.
  const double min_sample_bytes = o.quick ? 16.0 * (1 << 20) : 64.0 * (1 << 20);
  const int nt = o.threads > 0 ? o.threads : host_info().threads;

  Buffer src = alloc_touched(max_bytes), dst = alloc_touched(max_bytes);
  HostMemcpy r;
  r.n_threads = nt;

  for (size_t bytes : sizes) {
    const int iters = static_cast<int>(std::max(1.0, std::ceil(min_sample_bytes / static_cast<double>(bytes))));
    // Single thread.
    {
      std::vector<double> t;
      for (int rep = -1; rep < repeats; ++rep) {  // rep -1: warm-up
        const auto t0 = Clock::now();
        for (int i = 0; i < iters; ++i) {
          std::memcpy(dst.get(), src.get(), bytes);
          clobber();
        }
        const double s = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
        if (rep >= 0) t.push_back(s);
      }
      const double s = median(t);
      r.single.push_back({static_cast<double>(bytes), s, static_cast<double>(bytes) / s});
    }
    // All threads: each copies its own 64-byte-aligned slice of the same buffer.
    {
      std::vector<double> t(repeats);
      const size_t slice = ((bytes / nt + 63) / 64) * 64;
      char* s_ptr = src.get();
      char* d_ptr = dst.get();
#pragma omp parallel num_threads(nt)
      {
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
        const size_t per = team == nt ? slice : ((bytes / team + 63) / 64) * 64;
        const size_t off = std::min(bytes, per * static_cast<size_t>(me));
        const size_t len = std::min(per, bytes - off);
        for (int rep = -1; rep < repeats; ++rep) {
          Clock::time_point t0;
#pragma omp barrier
#pragma omp master
          t0 = Clock::now();
          for (int i = 0; i < iters; ++i) {
            if (len) std::memcpy(d_ptr + off, s_ptr + off, len);
            clobber();
          }
#pragma omp barrier
#pragma omp master
          if (rep >= 0) t[rep] = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
        }
      }
      const double s = median(t);
      r.threads.push_back({static_cast<double>(bytes), s, static_cast<double>(bytes) / s});
    }
  }
  for (const auto* v : {&r.single, &r.threads})
    for (const auto& s : *v)
      if (s.bytes >= kLargeBytes) r.best_bandwidth = std::max(r.best_bandwidth, s.bandwidth);
  if (r.best_bandwidth <= 0)  // no size reached kLargeBytes: the largest one measured
    for (const auto* v : {&r.single, &r.threads}) r.best_bandwidth = std::max(r.best_bandwidth, v->back().bandwidth);
  volatile char sink = dst.get()[max_bytes - 1];
  (void)sink;
  return r;
}

}  // namespace kvscope::hw
