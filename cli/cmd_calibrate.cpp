// calibrate: measures the host (and the GPU in CUDA builds) and writes a calibration file
// that the hardware model uses instead of preset figures. docs/calibration.md.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "hwmodels/calibration.h"
#include "kernels/io/error.h"

#ifdef KVSCOPE_HAVE_CUDA
#include "kernels/cuda/attention_bench.h"
#include "kernels/cuda/calibrate.h"
#endif

namespace kvscope::cli {

namespace {

using ojson = nlohmann::ordered_json;

// The command line as run: /proc/self/cmdline (NUL-separated), joined with spaces.
std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!all.empty() && all.back() == '\0') all.pop_back();
  for (char& c : all)
    if (c == '\0') c = ' ';
  return all.empty() ? "kvscope calibrate" : all;
}

ojson samples_json(const std::vector<hw::Sample>& v) {
  ojson a = ojson::array();
  for (const auto& s : v)
    a.push_back({{"bytes", static_cast<uint64_t>(s.bytes)}, {"seconds", s.seconds}, {"bandwidth", s.bandwidth}});
  return a;
}

void say(const std::string& s) { std::fprintf(stderr, "calibrate: %s\n", s.c_str()); }

std::string gbs(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB/s", b / 1e9);
  return buf;
}

#ifdef KVSCOPE_HAVE_CUDA
ojson transfers_json(const std::vector<cuda::CalTransfer>& v) {
  ojson a = ojson::array();
  for (const auto& s : v)
    a.push_back({{"bytes", static_cast<uint64_t>(s.bytes)}, {"seconds", s.seconds}, {"bandwidth", s.bandwidth}});
  return a;
}
#endif

struct Options {
  std::string out;
  bool quick = false, no_gpu = false;
  int device = 0, threads = 0;
};

void run_calibrate(const Options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  // Fail on an unwritable --out before measuring for a minute.
  const std::filesystem::path out(o.out);
  const std::filesystem::path tmp = out.string() + ".tmp";
  {
    std::ofstream probe(tmp, std::ios::binary | std::ios::trunc);
    if (!probe) fail(o.out, "cannot open for writing");
  }
  struct RemoveTmp {  // on any error below, leave no .tmp behind
    std::filesystem::path p;
    ~RemoveTmp() {
      std::error_code ec;
      std::filesystem::remove(p, ec);
    }
  } remove_tmp{tmp};
  ojson doc;
  doc["format"] = "kvscope-calibration";
  doc["version"] = 1;
  doc["date"] = hw::utc_now_iso8601();
  doc["command"] = command_line();
  doc["quick"] = o.quick;

  // ---- host ----
  const hw::HostInfo hi = hw::host_info();
  say("host: " + hi.cpu + ", " + std::to_string(hi.threads) + " threads, " + std::to_string(hi.memory_bytes >> 20) + " MiB");
  const hw::HostMemcpy mc = hw::measure_host_memcpy({o.quick, o.threads});
  say("host memcpy: " + gbs(mc.single.back().bandwidth) + " one thread, " + gbs(mc.threads.back().bandwidth) + " " +
      std::to_string(mc.n_threads) + " threads (at " + std::to_string(static_cast<uint64_t>(mc.single.back().bytes) >> 20) +
      " MiB); best large-size " + gbs(mc.best_bandwidth));
  ojson host;
  host["cpu"] = hi.cpu;
  host["threads"] = hi.threads;
  host["memory_bytes"] = hi.memory_bytes;
  host["memcpy"] = samples_json(mc.single);
  host["memcpy_threads"] = samples_json(mc.threads);
  host["memcpy_thread_count"] = mc.n_threads;
  host["memcpy_bandwidth"] = mc.best_bandwidth;
  doc["host"] = host;

  // ---- device ----
  std::vector<std::string> errors;
  ojson notes;
  notes["memcpy"] = "seconds: median time of one memcpy of `bytes`; bandwidth counts the bytes copied once; "
                    "memcpy_bandwidth: best of both lists at sizes >= 64 MiB";
  std::string why;
#ifdef KVSCOPE_HAVE_CUDA
  cuda::GpuCalibration g;
  if (o.no_gpu) {
    why = "--no-gpu given";
  } else {
    cuda::CalOptions co;
    co.quick = o.quick;
    co.device = o.device;
    co.log = [](const std::string& s) { say(s); };
    g = cuda::calibrate_gpu(co);
    if (!g.ok) why = g.why;
  }
  if (g.ok) {
    const auto& d = g.device;
    ojson dev;
    dev["name"] = d.name;
    dev["index"] = d.index;
    dev["sm"] = std::to_string(d.sm_major) + "." + std::to_string(d.sm_minor);
    dev["driver_version"] = d.driver_version;
    dev["runtime_version"] = d.runtime_version;
    dev["total_mem"] = static_cast<uint64_t>(d.total_mem);
    dev["sms"] = d.sms;
    dev["l2_bytes"] = d.l2_bytes;
    dev["clock_khz"] = d.clock_khz;
    dev["mem_clock_khz"] = d.mem_clock_khz;
    dev["bus_width"] = d.bus_width;
    doc["device"] = dev;
  } else {
    doc["device"] = nullptr;
    doc["why"] = why;
  }
  doc["h2d_pinned"] = transfers_json(g.h2d_pinned);
  doc["d2h_pinned"] = transfers_json(g.d2h_pinned);
  doc["h2d_pageable"] = transfers_json(g.h2d_pageable);
  doc["d2h_pageable"] = transfers_json(g.d2h_pageable);
  doc["d2d"] = transfers_json(g.d2d);
  doc["p2p"] = transfers_json(g.p2p);
  ojson gemm = ojson::array();
  for (const auto& x : g.gemm)
    gemm.push_back({{"m", x.m}, {"n", x.n}, {"k", x.k}, {"dtype", x.dtype}, {"seconds", x.seconds}, {"flops", x.flops}});
  doc["gemm"] = gemm;
  doc["launch_overhead"] = g.launch_overhead > 0 ? ojson(g.launch_overhead) : ojson(nullptr);
  errors = g.errors;
  // The project's decode-attention kernel (kernels/cuda/attention.cu) on a Llama-3-8B layer:
  // what attention over the resident KV reaches on this device, beside the D2D copy.
  ojson attn = ojson::array();
  if (g.ok) {
    const std::vector<int> ctxs = o.quick ? std::vector<int>{4096} : std::vector<int>{4096, 16384, 32768};
    const std::vector<int> batches = o.quick ? std::vector<int>{1} : std::vector<int>{1, 16};
    for (int c : ctxs)
      for (int b : batches) {
        try {
          cuda::DecodeBenchConfig bc;
          bc.ctx = c, bc.batch = b, bc.iters = o.quick ? 5 : 30;
          const cuda::DecodeBenchResult r = cuda::bench_decode_attention(bc);
          attn.push_back({{"context", c}, {"batch", b}, {"seconds", r.us * 1e-6}, {"bytes", r.bytes}, {"bandwidth", r.bytes_per_s}});
          say("attention ctx " + std::to_string(c) + " batch " + std::to_string(b) + ": " +
              std::to_string(r.bytes_per_s / 1e9) + " GB/s");
        } catch (const std::exception& e) {
          errors.push_back(std::string("attention: ") + e.what());
        }
      }
    notes["attention"] = "kvscope decode attention (split-K over pages of 16), 32 query heads, 8 KV heads, head_dim 128, fp16 KV; "
                         "bandwidth = K, V, position and live bytes read per call / seconds per call";
  }
  doc["attention"] = attn;
  if (g.ok) {
    notes["d2d"] = "cudaMemcpyAsync device to device; bandwidth counts bytes read + written (2 * bytes / seconds)";
    notes["p2p"] = g.p2p_peer >= 0 ? "cudaMemcpyPeerAsync from device " + std::to_string(g.device.index) + " to device " +
                                         std::to_string(g.p2p_peer) + "; bandwidth counts bytes copied once"
                                   : "not measured: " + g.p2p_why;
    notes["transfers"] = "cudaMemcpyAsync on one stream timed with CUDA events, median of repeats after a warm-up; "
                         "seconds per copy";
    notes["gemm"] = "cublasGemmEx, row-major Y[m][n] = X[m][k] W[n][k]^T, inputs and output in dtype, CUBLAS_COMPUTE_32F; "
                    "flops = 2 m n k / seconds; weights rotate through copies filling >= 2x L2";
    notes["launch_overhead"] = "seconds per launch of back-to-back empty kernels on one stream (CUDA events)";
  }
#else
  why = "this kvscope was built without CUDA (KVSCOPE_CUDA=OFF or no nvcc at build time)";
  doc["device"] = nullptr;
  doc["why"] = why;
  for (const char* k : {"h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable", "d2d", "p2p", "gemm", "attention"})
    doc[k] = ojson::array();
  doc["launch_overhead"] = nullptr;
  (void)o.device;
#endif
  if (!why.empty()) say("no GPU measurements: " + why);
  if (!errors.empty()) doc["errors"] = errors;
  doc["notes"] = notes;

  // ---- fits ----
  const nlohmann::json plain = nlohmann::json::parse(doc.dump());
  ojson fits = ojson::object();
  for (const auto& [k, v] : hw::calibration_overrides(plain)) fits[k] = v;
  doc["fits"] = fits;
  hw::validate_calibration(nlohmann::json::parse(doc.dump()), o.out);  // what we write must load

  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail(o.out, "cannot open for writing");
    f << doc.dump(2) << "\n";
    if (!f.flush()) fail(o.out, "write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, out, ec);
  if (ec) fail(o.out, "cannot rename " + tmp.string() + ": " + ec.message());

  for (const auto& [k, v] : fits.items()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v.get<double>());
    say("fit " + k + " = " + buf);
  }
  for (const auto& e : errors) say("WARNING: step failed: " + e);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", s);
  say("wrote " + o.out + " in " + buf + " s");
}

}  // namespace

void add_calibrate_commands(CLI::App& app) {
  auto* c = app.add_subcommand("calibrate",
                               "Measure this machine (host memcpy; with a CUDA build and a GPU: PCIe, HBM, P2P, GEMM, "
                               "launch overhead) and write a calibration file for the hardware model");
  static Options o;
  c->add_option("--out,-o", o.out, "Calibration file to write (JSON, docs/calibration.md)")->required();
  c->add_flag("--quick", o.quick, "Few sizes and repeats (CI; a few seconds)");
  c->add_flag("--no-gpu", o.no_gpu, "Skip the GPU measurements (the file gets \"device\": null)");
  c->add_option("--device", o.device, "CUDA device index to measure (default 0)")->check(CLI::NonNegativeNumber);
  c->add_option("--threads,-t", o.threads, "Threads of the all-threads memcpy (default: every CPU this process may use)")
      ->check(CLI::NonNegativeNumber);
  c->callback([] { run_calibrate(o); });
}

}  // namespace kvscope::cli
