// The calibration file (hwmodels/calibration.h): fit_transfer against closed forms (exact
// recovery, the 2-point line, the clamped fit through the origin, noise), the mapping to
// hardware-model keys, and load_calibration's errors naming the file and key.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hwmodels/calibration.h"
#include "kernels/io/error.h"

using namespace kvscope::hw;
using nlohmann::json;

namespace {

using Points = std::vector<std::pair<double, double>>;

std::vector<double> sizes_4k_256m() {
  std::vector<double> s;
  for (double b = 4096; b <= 256.0 * 1024 * 1024; b *= 4) s.push_back(b);
  return s;
}

Points line(double bandwidth, double overhead) {
  Points p;
  for (double b : sizes_4k_256m()) p.emplace_back(b, overhead + b / bandwidth);
  return p;
}

// Independent closed form: the slope from the 2x2 normal equations [n Sx; Sx Sxx] [a; s] =
// [Sy; Sxy] by Cramer's rule on raw (uncentred) sums, in long double; the overhead as the
// 1/t^2-weighted mean of the residuals t - s x.
std::pair<double, double> normal_equations(const Points& p) {
  long double n = p.size(), sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (auto [x, y] : p) {
    sx += x;
    sy += y;
    sxx += static_cast<long double>(x) * x;
    sxy += static_cast<long double>(x) * y;
  }
  const long double det = n * sxx - sx * sx;
  const long double s = (n * sxy - sx * sy) / det;
  long double wr = 0, w = 0;
  for (auto [x, y] : p) {
    const long double wi = 1.0L / (static_cast<long double>(y) * y);
    wr += wi * (y - s * x);
    w += wi;
  }
  return {static_cast<double>(1.0L / s), static_cast<double>(wr / w)};
}

json sample(double bytes, double seconds, double bandwidth = 0) {
  return {{"bytes", bytes}, {"seconds", seconds}, {"bandwidth", bandwidth > 0 ? bandwidth : bytes / seconds}};
}

json samples_of(const Points& p) {
  json a = json::array();
  for (auto [b, s] : p) a.push_back(sample(b, s));
  return a;
}

// A complete, valid calibration document with a device.
json full_doc() {
  json d;
  d["format"] = "kvscope-calibration";
  d["version"] = 1;
  d["date"] = "2026-11-28T17:00:00Z";
  d["command"] = "kvscope calibrate --out x.json";
  d["host"] = {{"cpu", "Test CPU"},
               {"threads", 8},
               {"memory_bytes", 1ull << 34},
               {"memcpy", json::array({sample(4096, 1e-7), sample(67108864, 6.7e-3)})},
               {"memcpy_threads", json::array({sample(4096, 2e-6), sample(67108864, 2e-3)})},
               {"memcpy_bandwidth", 33.5e9}};
  d["device"] = {{"name", "Test GPU"}, {"index", 0},         {"sm", "9.0"},      {"driver_version", 13000},
                 {"runtime_version", 13000}, {"total_mem", 150000000000ull}, {"sms", 132}, {"l2_bytes", 62914560},
                 {"clock_khz", 1980000},     {"mem_clock_khz", 3201000},     {"bus_width", 6144}};
  d["h2d_pinned"] = samples_of(line(50e9, 10e-6));
  d["d2h_pinned"] = samples_of(line(40e9, 12e-6));
  // Pageable: the largest size at 25 GB/s (H2D) and 10 GB/s (D2H).
  d["h2d_pageable"] = json::array({sample(1 << 20, 1e-4), sample(268435456, 268435456 / 25e9)});
  d["d2h_pageable"] = json::array({sample(1 << 20, 1e-4), sample(268435456, 268435456 / 10e9)});
  d["d2d"] = json::array({sample(4096, 3e-6, 2 * 4096 / 3e-6), sample(268435456, 1.25e-4, 4.2e12), sample(1048576, 5e-6, 4.0e11)});
  d["p2p"] = json::array();
  d["gemm"] = json::array({{{"m", 1}, {"n", 4096}, {"k", 4096}, {"dtype", "bf16"}, {"seconds", 1e-5}, {"flops", 3.3e12}},
                           {{"m", 4096}, {"n", 28672}, {"k", 4096}, {"dtype", "fp16"}, {"seconds", 1.3e-3}, {"flops", 7.4e14}},
                           {{"m", 4096}, {"n", 4096}, {"k", 4096}, {"dtype", "bf16"}, {"seconds", 2e-4}, {"flops", 6.9e14}}});
  d["launch_overhead"] = 2.5e-6;
  json fits = json::object();
  for (const auto& [k, v] : calibration_overrides(d)) fits[k] = v;
  d["fits"] = fits;
  return d;
}

json cpu_only_doc() {
  json d = full_doc();
  d["device"] = nullptr;
  d["why"] = "no CUDA device";
  for (const char* k : {"h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable", "d2d", "p2p", "gemm"}) d[k] = json::array();
  d["launch_overhead"] = nullptr;
  json fits = json::object();
  for (const auto& [k, v] : calibration_overrides(d)) fits[k] = v;
  d["fits"] = fits;
  return d;
}

class TempDir {
 public:
  TempDir() {
    dir_ = std::filesystem::temp_directory_path() / ("kvscope-cal-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::create_directories(dir_);
  }
  ~TempDir() { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) const {
    const auto p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

 private:
  std::filesystem::path dir_;
  static inline int counter_ = 0;
};

// The message of the kvscope::Error that load_calibration throws on `text`.
std::string load_error(const std::string& text) {
  TempDir t;
  const std::string path = t.write("cal.json", text);
  try {
    load_calibration(path);
  } catch (const kvscope::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << "the message names the file: " << m;
    return m;
  }
  ADD_FAILURE() << "no error for: " << text.substr(0, 200);
  return "";
}

}  // namespace

// ---- fit_transfer ---------------------------------------------------------------------------

TEST(Calibration, FitRecoversBandwidthAndOverheadExactly) {
  for (auto [bw, ov] : {std::pair{50e9, 10e-6}, std::pair{25.6e9, 2.5e-6}, std::pair{4.0e12, 3e-6}, std::pair{1e9, 0.0}}) {
    const TransferFit f = fit_transfer(line(bw, ov));
    EXPECT_NEAR(f.bandwidth / bw, 1.0, 1e-12) << bw;
    EXPECT_NEAR(f.overhead, ov, 1e-15) << ov;
  }
}

TEST(Calibration, FitTwoPointsIsTheLineThroughThem) {
  // (1000, 3e-6) and (5000, 7e-6): slope 1e-9 s/B -> 1 GB/s, intercept 2e-6 s.
  const TransferFit f = fit_transfer({{1000, 3e-6}, {5000, 7e-6}});
  EXPECT_NEAR(f.bandwidth, 1e9, 1e-3);
  EXPECT_NEAR(f.overhead, 2e-6, 1e-18);
}

TEST(Calibration, FitEqualsTheNormalEquations) {
  // Scattered points: the centred closed form agrees with the raw normal equations.
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-1e-6, 1e-6);
  Points p;
  for (double b : sizes_4k_256m()) p.emplace_back(b, 5e-6 + b / 30e9 + u(rng) + (b > 1e8 ? 3e-5 : 0));
  const auto [bw, ov] = normal_equations(p);
  ASSERT_GT(ov, 0) << "this data set must not need the clamp";
  const TransferFit f = fit_transfer(p);
  EXPECT_NEAR(f.bandwidth / bw, 1.0, 1e-9);
  EXPECT_NEAR(f.overhead, ov, 1e-12);
}

TEST(Calibration, FitClampsNegativeOverheadToTheLineThroughTheOrigin) {
  // A true line with a negative intercept: the unconstrained fit is (-4e-6, 20 GB/s); with
  // overhead >= 0 the least-squares answer is t = b / B with 1/B = sum(x y) / sum(x x).
  Points p;
  for (auto [b, s] : line(20e9, -4e-6))
    if (s > 0) p.emplace_back(b, s);  // times must be positive: drop the smallest sizes
  double sxy = 0, sxx = 0;
  for (auto [x, y] : p) {
    sxy += x * y;
    sxx += x * x;
  }
  const TransferFit f = fit_transfer(p);
  EXPECT_EQ(f.overhead, 0.0);
  EXPECT_NEAR(f.bandwidth / (sxx / sxy), 1.0, 1e-12);
}

TEST(Calibration, FitIsRobustToNoise) {
  const double bw = 50e9, ov = 8e-6;
  std::mt19937_64 rng(42);
  // Additive timer noise of up to +-0.5 us on every point: the bandwidth is set by the large
  // sizes (ms-long) and stays within 0.1 %; the overhead, set by the small ones, within 1 us.
  {
    std::uniform_real_distribution<double> u(-0.5e-6, 0.5e-6);
    for (int trial = 0; trial < 20; ++trial) {
      Points p = line(bw, ov);
      for (auto& [b, s] : p) s += u(rng);
      const TransferFit f = fit_transfer(p);
      EXPECT_NEAR(f.bandwidth / bw, 1.0, 1e-3);
      EXPECT_NEAR(f.overhead, ov, 1e-6);
    }
  }
  // Relative noise of +-1 % on every point: the bandwidth within 2 %.
  {
    std::uniform_real_distribution<double> u(0.99, 1.01);
    for (int trial = 0; trial < 20; ++trial) {
      Points p = line(bw, ov);
      for (auto& [b, s] : p) s *= u(rng);
      const TransferFit f = fit_transfer(p);
      EXPECT_NEAR(f.bandwidth / bw, 1.0, 0.02);
      EXPECT_GE(f.overhead, 0.0);
    }
  }
  // Point order does not matter.
  Points p = line(bw, ov), r(p.rbegin(), p.rend());
  EXPECT_EQ(fit_transfer(p).bandwidth, fit_transfer(p).bandwidth);
  EXPECT_NEAR(fit_transfer(r).bandwidth / fit_transfer(p).bandwidth, 1.0, 1e-12);
}

TEST(Calibration, FitRejectsBadInput) {
  EXPECT_THROW(fit_transfer({}), kvscope::Error);
  EXPECT_THROW(fit_transfer({{4096, 1e-6}}), kvscope::Error);
  EXPECT_THROW(fit_transfer({{4096, 1e-6}, {4096, 2e-6}}), kvscope::Error);          // one size only
  EXPECT_THROW(fit_transfer({{4096, 2e-6}, {8192, 1e-6}, {16384, 5e-7}}), kvscope::Error);  // time falls with size
  EXPECT_THROW(fit_transfer({{4096, NAN}, {8192, 1e-6}}), kvscope::Error);
  EXPECT_THROW(fit_transfer({{-1, 1e-6}, {8192, 1e-6}}), kvscope::Error);
  try {
    fit_transfer({{1, 1}});
  } catch (const kvscope::Error& e) {
    EXPECT_NE(std::string(e.what()).find("at least 2"), std::string::npos) << e.what();
  }
}

// ---- calibration_overrides --------------------------------------------------------------------

TEST(Calibration, OverridesMapEveryMeasurement) {
  const json d = full_doc();
  const auto o = calibration_overrides(d);
  const std::vector<std::string> keys = {"host.dram_bandwidth", "pcie.bandwidth",    "pcie.efficiency",     "pcie.transfer_overhead",
                                         "pcie.pageable_factor", "gpu.hbm_bandwidth", "gpu.hbm_efficiency",  "gpu.flops_fp16",
                                         "gpu.gemm_efficiency",  "gpu.launch_overhead", "gpu.hbm_bytes",     "gpu.sms"};
  ASSERT_EQ(o.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(o[i].first, keys[i]) << i;
  auto v = [&](const std::string& k) {
    for (const auto& [kk, vv] : o)
      if (kk == k) return vv;
    return -1.0;
  };
  EXPECT_DOUBLE_EQ(v("host.dram_bandwidth"), 33.5e9);
  EXPECT_NEAR(v("pcie.bandwidth") / 40e9, 1.0, 1e-12);         // min(H2D 50, D2H 40)
  EXPECT_NEAR(v("pcie.transfer_overhead"), 12e-6, 1e-15);      // max(10 us, 12 us)
  EXPECT_EQ(v("pcie.efficiency"), 1.0);
  // Pageable/pinned at 256 MiB, where pinned moves 256 MiB in overhead + bytes / bandwidth.
  const double big = 268435456, h2d_pin = big / (10e-6 + big / 50e9), d2h_pin = big / (12e-6 + big / 40e9);
  EXPECT_NEAR(v("pcie.pageable_factor"), 0.5 * (25e9 / h2d_pin + 10e9 / d2h_pin), 1e-12);
  EXPECT_NEAR(v("pcie.pageable_factor"), 0.375, 1e-3);  // about mean(25/50, 10/40)
  EXPECT_DOUBLE_EQ(v("gpu.hbm_bandwidth"), 4.2e12);           // the largest D2D, not the last listed
  EXPECT_EQ(v("gpu.hbm_efficiency"), 1.0);
  EXPECT_DOUBLE_EQ(v("gpu.flops_fp16"), 7.4e14);              // best over shapes and dtypes
  EXPECT_EQ(v("gpu.gemm_efficiency"), 1.0);
  EXPECT_DOUBLE_EQ(v("gpu.launch_overhead"), 2.5e-6);
  EXPECT_DOUBLE_EQ(v("gpu.hbm_bytes"), 150000000000.0);
  EXPECT_DOUBLE_EQ(v("gpu.sms"), 132);
}

TEST(Calibration, OverridesCpuOnlyGiveJustTheHost) {
  const auto o = calibration_overrides(cpu_only_doc());
  ASSERT_EQ(o.size(), 1u);
  EXPECT_EQ(o[0].first, "host.dram_bandwidth");
  EXPECT_DOUBLE_EQ(o[0].second, 33.5e9);
}

TEST(Calibration, OverridesUseWhatExists) {
  json d = full_doc();
  d["d2h_pinned"] = json::array();  // one direction only: its fit alone
  d["d2h_pageable"] = json::array();
  d["gemm"] = json::array();
  d["launch_overhead"] = nullptr;
  const auto o = calibration_overrides(d);
  std::vector<std::string> keys;
  for (const auto& [k, v] : o) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"host.dram_bandwidth", "pcie.bandwidth", "pcie.efficiency", "pcie.transfer_overhead",
                                            "pcie.pageable_factor", "gpu.hbm_bandwidth", "gpu.hbm_efficiency", "gpu.hbm_bytes",
                                            "gpu.sms"}));
  EXPECT_NEAR(o[1].second / 50e9, 1.0, 1e-12);
  EXPECT_NEAR(o[3].second, 10e-6, 1e-15);
  EXPECT_NEAR(o[4].second, 25e9 / (268435456 / (10e-6 + 268435456 / 50e9)), 1e-12);  // H2D alone
}

// ---- load_calibration -------------------------------------------------------------------------

TEST(Calibration, LoadAcceptsValidFiles) {
  TempDir t;
  for (const json& d : {full_doc(), cpu_only_doc()}) {
    const std::string p = t.write("ok.json", d.dump(2));
    const json got = load_calibration(p);
    EXPECT_EQ(got, d);
  }
}

TEST(Calibration, LoadNamesTheFileAndKey) {
  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"format", [](json& d) { d["format"] = "something-else"; }, "key 'format'"},
      {"no format", [](json& d) { d.erase("format"); }, "key 'format': missing"},
      {"version", [](json& d) { d["version"] = 2; }, "key 'version': unsupported version 2"},
      {"version type", [](json& d) { d["version"] = "1"; }, "key 'version': expected an integer"},
      {"date", [](json& d) { d["date"] = 5; }, "key 'date': expected a string"},
      {"host", [](json& d) { d.erase("host"); }, "key 'host': missing"},
      {"threads", [](json& d) { d["host"]["threads"] = "8"; }, "key 'host.threads': expected an integer"},
      {"threads 0", [](json& d) { d["host"]["threads"] = 0; }, "key 'host.threads': expected an integer >= 1"},
      {"memcpy seconds", [](json& d) { d["host"]["memcpy"][1]["seconds"] = -1; }, "key 'host.memcpy[1].seconds'"},
      {"memcpy bytes", [](json& d) { d["host"]["memcpy"][0].erase("bytes"); }, "key 'host.memcpy[0].bytes': missing"},
      {"memcpy_bandwidth", [](json& d) { d["host"]["memcpy_bandwidth"] = 0; }, "key 'host.memcpy_bandwidth'"},
      {"device missing", [](json& d) { d.erase("device"); }, "key 'device': missing"},
      {"device type", [](json& d) { d["device"] = 3; }, "key 'device': expected an object or null"},
      {"why missing", [](json& d) { d["device"] = nullptr; }, "key 'why': missing"},
      {"device.sms", [](json& d) { d["device"]["sms"] = 1.5; }, "key 'device.sms': expected an integer"},
      {"device.name", [](json& d) { d["device"].erase("name"); }, "key 'device.name': missing"},
      {"h2d array", [](json& d) { d["h2d_pinned"] = 1; }, "key 'h2d_pinned': expected an array"},
      {"d2d entry", [](json& d) { d["d2d"][2]["bandwidth"] = "fast"; }, "key 'd2d[2].bandwidth': expected a number"},
      {"gemm dtype", [](json& d) { d["gemm"][1]["dtype"] = "fp8"; }, "key 'gemm[1].dtype'"},
      {"gemm m", [](json& d) { d["gemm"][0]["m"] = 0; }, "key 'gemm[0].m'"},
      {"launch", [](json& d) { d["launch_overhead"] = -1e-6; }, "key 'launch_overhead'"},
      {"fits missing", [](json& d) { d.erase("fits"); }, "key 'fits': missing"},
      {"fits key", [](json& d) { d["fits"]["gpu.warp_speed"] = 9; }, "key 'fits.gpu.warp_speed': not a hardware-model key"},
      {"fits value", [](json& d) { d["fits"]["gpu.sms"] = "132"; }, "key 'fits.gpu.sms': expected a number"},
      {"unfittable", [](json& d) { d["h2d_pinned"] = json::array({sample(4096, 1e-6), sample(4096, 1e-6)}); },
       "measurements cannot be fitted"},
  };
  for (const auto& c : cases) {
    json d = full_doc();
    c.edit(d);
    const std::string m = load_error(d.dump());
    EXPECT_NE(m.find(c.expect), std::string::npos) << c.what << ": " << m;
  }
  EXPECT_NE(load_error("{\"format\": ").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error("[1, 2]").find("expected a JSON object"), std::string::npos);
  try {
    load_calibration("/nonexistent/dir/cal.json");
    ADD_FAILURE() << "no error for a missing file";
  } catch (const kvscope::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/cal.json: cannot open"), std::string::npos) << e.what();
  }
}

// ---- host measurements ------------------------------------------------------------------------

TEST(Calibration, SizesAndMedian) {
  const auto s = calibration_sizes(false);
  ASSERT_EQ(s.size(), 9u);
  EXPECT_EQ(s.front(), 4096u);
  EXPECT_EQ(s.back(), 256u << 20);
  for (size_t i = 1; i < s.size(); ++i) EXPECT_EQ(s[i], 4 * s[i - 1]);
  EXPECT_EQ(calibration_sizes(true).size(), 3u);
  EXPECT_EQ(median({3, 1, 2}), 2);
  EXPECT_EQ(median({4, 1, 3, 2}), 2.5);
  EXPECT_THROW(median({}), kvscope::Error);
}

TEST(Calibration, HostMeasurementsArePlausible) {
  const HostInfo h = host_info();
  EXPECT_FALSE(h.cpu.empty());
  EXPECT_GE(h.threads, 1);
  EXPECT_GT(h.memory_bytes, 64ull << 20);
  const HostMemcpy m = measure_host_memcpy({true, 2});
  ASSERT_EQ(m.single.size(), 3u);
  ASSERT_EQ(m.threads.size(), 3u);
  EXPECT_EQ(m.n_threads, 2);
  for (const auto* v : {&m.single, &m.threads})
    for (const auto& s : *v) {
      EXPECT_GT(s.seconds, 0);
      EXPECT_NEAR(s.bandwidth, s.bytes / s.seconds, 1e-6 * s.bandwidth);
      EXPECT_GT(s.bandwidth, 1e8) << s.bytes;    // > 100 MB/s anywhere
      EXPECT_LT(s.bandwidth, 1e13) << s.bytes;   // < 10 TB/s: the copies really ran
    }
  EXPECT_GE(m.best_bandwidth, std::max(m.single.back().bandwidth, m.threads.back().bandwidth));
  EXPECT_EQ(utc_now_iso8601().size(), 20u);
}
