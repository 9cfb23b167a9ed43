// GPU measurements for `kvscope calibrate`: PCIe (pinned and pageable, both directions),
// D2D copies, P2P, cuBLAS GEMM at Llama-3-8B shapes, kernel launch overhead.
// docs/calibration.md describes each measurement.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <vector>

#include "kernels/cuda/calibrate.h"

namespace kvscope::cuda {
namespace {

struct CudaFail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so later steps may still run
    throw CudaFail(std::string(what) + ": " + cudaGetErrorString(e));
  }
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw CudaFail(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s)));
}

#define CK(call) check((call), #call)

// ---- RAII holders -----------------------------------------------------------------------

struct DeviceMem {
  void* p = nullptr;
  explicit DeviceMem(size_t bytes) { CK(cudaMalloc(&p, bytes)); }
  ~DeviceMem() {
    if (p) cudaFree(p);
  }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
};

struct PinnedMem {
  void* p = nullptr;
  explicit PinnedMem(size_t bytes) {
    CK(cudaMallocHost(&p, bytes));
    std::memset(p, 1, bytes);
  }
  ~PinnedMem() {
    if (p) cudaFreeHost(p);
  }
  PinnedMem(const PinnedMem&) = delete;
  PinnedMem& operator=(const PinnedMem&) = delete;
};

struct PageableMem {
  void* p = nullptr;
  explicit PageableMem(size_t bytes) {
    if (posix_memalign(&p, 4096, bytes) != 0) throw CudaFail("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    std::memset(p, 1, bytes);  // fault the pages in: page faults are not what we time
  }
  ~PageableMem() { std::free(p); }
  PageableMem(const PageableMem&) = delete;
  PageableMem& operator=(const PageableMem&) = delete;
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};

struct EventPair {
  cudaEvent_t a = nullptr, b = nullptr;
  EventPair() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
  ~EventPair() {
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
  }
  // Milliseconds between a and b after b completes.
  double ms() const {
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    return t;
  }
};

struct Cublas {
  cublasHandle_t h = nullptr;
  Cublas() { check(cublasCreate(&h), "cublasCreate"); }
  ~Cublas() {
    if (h) cublasDestroy(h);
  }
};

// ---- helpers ----------------------------------------------------------------------------

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<size_t> sizes(bool quick) {
  if (quick) return {size_t{4} << 10, size_t{1} << 20, size_t{64} << 20};
  std::vector<size_t> s;
  for (size_t b = size_t{4} << 10; b <= (size_t{256} << 20); b *= 4) s.push_back(b);
  return s;
}

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1 << 20) std::snprintf(buf, sizeof buf, "%g MiB", b / (1 << 20));
  else std::snprintf(buf, sizeof buf, "%g KiB", b / (1 << 10));
  return buf;
}

__global__ void empty_kernel() {}

template <class T>
__global__ void fill_random(T* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed ^ static_cast<uint32_t>(i >> 32) * 40503u;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    x *= 3266489917u;
    x ^= x >> 16;
    const float v = (static_cast<float>(x >> 8) * (1.0f / 16777216.0f)) * 2.0f - 1.0f;  // [-1, 1)
    if constexpr (std::is_same_v<T, __nv_bfloat16>) p[i] = __float2bfloat16(v);
    else p[i] = __float2half(v);
  }
}

class Calibrator {
 public:
  Calibrator(const CalOptions& o, GpuCalibration& r) : o_(o), r_(r) {}

  void log(const std::string& s) const {
    if (o_.log) o_.log(s);
  }

  // Runs `f` as one step: a failure is recorded and the next step still runs.
  template <class F>
  void step(const char* name, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      r_.errors.push_back(std::string(name) + ": " + e.what());
      log(std::string(name) + ": FAILED: " + e.what());
      cudaGetLastError();
    }
  }

  // Times `op(i)` run `iters` times back to back between two events on `st`, `repeats` times
  // after one warm-up sample. Returns the median seconds of one op.
  template <class Op>
  double time_op(cudaStream_t st, int iters, int repeats, Op&& op) {
    EventPair ev;
    std::vector<double> t;
    for (int rep = -1; rep < repeats; ++rep) {
      CK(cudaEventRecord(ev.a, st));
      for (int i = 0; i < iters; ++i) op(i);
      CK(cudaEventRecord(ev.b, st));
      const double ms = ev.ms();
      if (rep >= 0) t.push_back(ms * 1e-3 / iters);
    }
    return median(t);
  }

  int iters_for(size_t bytes, double min_sample_bytes) const {
    return static_cast<int>(std::clamp(std::ceil(min_sample_bytes / static_cast<double>(bytes)), 1.0, 256.0));
  }

  void transfers() {
    const auto sz = sizes(o_.quick);
    const size_t max_bytes = sz.back();
    const int repeats = o_.quick ? 3 : 7;
    const double min_sample = o_.quick ? 16.0 * (1 << 20) : 64.0 * (1 << 20);
    Stream st;
    DeviceMem dev(max_bytes);
    struct Kind {
      const char* name;
      std::vector<CalTransfer>* out;
      bool pinned, h2d;
    };
    const Kind kinds[] = {{"h2d pinned", &r_.h2d_pinned, true, true},
                          {"d2h pinned", &r_.d2h_pinned, true, false},
                          {"h2d pageable", &r_.h2d_pageable, false, true},
                          {"d2h pageable", &r_.d2h_pageable, false, false}};
    std::unique_ptr<PinnedMem> pinned;
    std::unique_ptr<PageableMem> pageable;
    step("pinned host allocation", [&] { pinned = std::make_unique<PinnedMem>(max_bytes); });
    step("pageable host allocation", [&] { pageable = std::make_unique<PageableMem>(max_bytes); });
    CK(cudaMemset(dev.p, 0, max_bytes));
    for (const Kind& k : kinds) {
      void* host = k.pinned ? (pinned ? pinned->p : nullptr) : (pageable ? pageable->p : nullptr);
      if (!host) continue;
      step(k.name, [&] {
        for (size_t bytes : sz) {
          const cudaMemcpyKind dir = k.h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
          void* dst = k.h2d ? dev.p : host;
          const void* src = k.h2d ? host : dev.p;
          const double s = time_op(st.s, iters_for(bytes, min_sample), repeats,
                                   [&](int) { CK(cudaMemcpyAsync(dst, src, bytes, dir, st.s)); });
          k.out->push_back({static_cast<double>(bytes), s, static_cast<double>(bytes) / s});
        }
        const auto& b = k.out->back();
        log(std::string(k.name) + ": " + fmt_bw(b.bandwidth) + " at " + human_bytes(b.bytes) + ", " +
            fmt_us(k.out->front().seconds) + " at " + human_bytes(k.out->front().bytes));
      });
    }
  }

  void d2d() {
    const auto sz = sizes(o_.quick);
    const size_t max_bytes = sz.back();
    const int repeats = o_.quick ? 3 : 7;
    const double min_sample = o_.quick ? 256.0 * (1 << 20) : 1024.0 * (1 << 20);
    Stream st;
    DeviceMem a(max_bytes), b(max_bytes);
    CK(cudaMemset(a.p, 1, max_bytes));
    CK(cudaMemset(b.p, 0, max_bytes));
    for (size_t bytes : sz) {
      const double s = time_op(st.s, iters_for(bytes, min_sample), repeats,
                               [&](int) { CK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, st.s)); });
      r_.d2d.push_back({static_cast<double>(bytes), s, 2.0 * static_cast<double>(bytes) / s});
    }
    log("d2d: " + fmt_bw(r_.d2d.back().bandwidth) + " (read + written) at " + human_bytes(r_.d2d.back().bytes));
  }

  void p2p(int n_devices) {
    if (n_devices < 2) {
      r_.p2p_why = "one device";
      return;
    }
    const int me = o_.device, peer = (o_.device + 1) % n_devices;
    int can = 0;
    CK(cudaDeviceCanAccessPeer(&can, me, peer));
    if (!can) {
      r_.p2p_why = "device " + std::to_string(me) + " cannot access device " + std::to_string(peer) +
                   " as a peer: copies would be staged through the host";
      log("p2p: " + r_.p2p_why);
      return;
    }
    cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) check(e, "cudaDeviceEnablePeerAccess");
    cudaGetLastError();
    const auto sz = sizes(o_.quick);
    const size_t max_bytes = sz.back();
    const int repeats = o_.quick ? 3 : 7;
    Stream st;
    DeviceMem src(max_bytes);
    CK(cudaSetDevice(peer));
    std::unique_ptr<DeviceMem> dst;
    try {
      dst = std::make_unique<DeviceMem>(max_bytes);
    } catch (...) {
      cudaSetDevice(me);
      throw;
    }
    CK(cudaSetDevice(me));
    for (size_t bytes : sz) {
      const double s = time_op(st.s, iters_for(bytes, 256.0 * (1 << 20)), repeats,
                               [&](int) { CK(cudaMemcpyPeerAsync(dst->p, peer, src.p, me, bytes, st.s)); });
      r_.p2p.push_back({static_cast<double>(bytes), s, static_cast<double>(bytes) / s});
    }
    r_.p2p_peer = peer;
    CK(cudaSetDevice(peer));
    dst.reset();
    CK(cudaSetDevice(me));
    log("p2p " + std::to_string(me) + " -> " + std::to_string(peer) + ": " + fmt_bw(r_.p2p.back().bandwidth) + " at " +
        human_bytes(r_.p2p.back().bytes));
  }

  template <class T>
  void gemm_dtype(const char* dtype, cudaDataType_t type) {
    struct NK {
      int n, k;
      const char* what;
    };
    std::vector<NK> shapes = {{6144, 4096, "qkv"}, {4096, 4096, "o"}, {28672, 4096, "gate+up"}, {4096, 14336, "down"}};
    std::vector<int> ms = {1, 16, 128, 1024, 4096};
    if (o_.quick) {
      shapes = {{4096, 4096, "o"}};
      ms = {1, 128, 4096};
    }
    const int m_max = *std::max_element(ms.begin(), ms.end());
    const int repeats = o_.quick ? 3 : 5;
    const double target_s = o_.quick ? 1e-3 : 4e-3;  // one timed sample at least this long
    Cublas cb;
    Stream st;
    check(cublasSetStream(cb.h, st.s), "cublasSetStream");
    const float alpha = 1.0f, beta = 0.0f;
    for (const NK& s : shapes) {
      step((std::string("gemm ") + dtype + " " + s.what).c_str(), [&] {
        // Weights rotate through copies filling >= 2x the L2, so the small-M (memory-bound)
        // products read HBM as in a real layer stack rather than hitting the L2.
        const size_t a_elems = static_cast<size_t>(s.n) * s.k;
        const size_t a_bytes = a_elems * sizeof(T);
        const int copies = static_cast<int>(std::clamp<size_t>((2 * static_cast<size_t>(r_.device.l2_bytes) + a_bytes - 1) / a_bytes, 1, 8));
        DeviceMem a(a_bytes * copies), b(static_cast<size_t>(s.k) * m_max * sizeof(T)), c(static_cast<size_t>(s.n) * m_max * sizeof(T));
        fill_random<T><<<1024, 256, 0, st.s>>>(static_cast<T*>(a.p), a_elems * copies, 1u);
        fill_random<T><<<1024, 256, 0, st.s>>>(static_cast<T*>(b.p), static_cast<size_t>(s.k) * m_max, 2u);
        CK(cudaGetLastError());
        CK(cudaStreamSynchronize(st.s));
        for (int m : ms) {
          // Row-major Y[m][n] = X[m][k] * W[n][k]^T, i.e. column-major C(n x m) = W^T(n x k) * X(k x m).
          auto run = [&](int i) {
            const T* w = static_cast<const T*>(a.p) + static_cast<size_t>(i % copies) * a_elems;
            check(cublasGemmEx(cb.h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, w, type, s.k, b.p, type, s.k, &beta, c.p, type,
                               s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "cublasGemmEx");
          };
          // Probe: a few runs (cuBLAS picks and loads its kernel on the first) set the count.
          const double probe = time_op(st.s, copies, 1, run);
          const int iters = static_cast<int>(std::clamp(std::ceil(target_s / std::max(probe, 1e-7)), 1.0, 4000.0));
          const double sec = time_op(st.s, iters, repeats, run);
          const double flops = 2.0 * m * static_cast<double>(s.n) * s.k / sec;
          r_.gemm.push_back({m, s.n, s.k, dtype, sec, flops});
        }
        double best = 0;
        for (const auto& g : r_.gemm)
          if (g.n == s.n && g.k == s.k && g.dtype == dtype) best = std::max(best, g.flops);
        log(std::string("gemm ") + dtype + " " + s.what + " (n=" + std::to_string(s.n) + ", k=" + std::to_string(s.k) +
            "): best " + fmt_tflops(best) + ", m=1 " + fmt_us(r_.gemm[r_.gemm.size() - ms.size()].seconds));
      });
    }
  }

  void launch_overhead() {
    Stream st;
    const int n = o_.quick ? 500 : 5000;
    const int repeats = o_.quick ? 3 : 7;
    auto launch = [&](int) { empty_kernel<<<1, 1, 0, st.s>>>(); };
    for (int i = 0; i < 100; ++i) launch(i);  // load the module, warm the queue
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st.s));
    r_.launch_overhead = time_op(st.s, n, repeats, launch);
    CK(cudaGetLastError());
    log("launch overhead: " + fmt_us(r_.launch_overhead) + " per back-to-back empty kernel");
  }

  static std::string fmt_bw(double b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f GB/s", b / 1e9);
    return buf;
  }
  static std::string fmt_us(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f us", s * 1e6);
    return buf;
  }
  static std::string fmt_tflops(double f) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f TFLOP/s", f / 1e12);
    return buf;
  }

 private:
  const CalOptions& o_;
  GpuCalibration& r_;
};

int attr(cudaDeviceAttr a, int dev) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

}  // namespace

GpuCalibration calibrate_gpu(const CalOptions& o) {
  GpuCalibration r;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    r.why = std::string("CUDA runtime: ") + cudaGetErrorString(e);
    cudaGetLastError();
    // The static runtime says "driver version is insufficient" also when there is no
    // driver at all: say which.
    if (e == cudaErrorInsufficientDriver) {
      if (void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) {
        dlclose(h);
        int drv = 0, rt = 0;
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        r.why += " (driver supports CUDA " + std::to_string(drv / 1000) + "." + std::to_string(drv % 1000 / 10) +
                 ", this kvscope was built with " + std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10) + ")";
      } else {
        r.why = "no NVIDIA driver (libcuda.so.1 cannot be loaded)";
      }
    }
    return r;
  }
  if (n == 0) {
    r.why = "no CUDA device";
    return r;
  }
  if (o.device < 0 || o.device >= n) {
    r.why = "device " + std::to_string(o.device) + " requested, " + std::to_string(n) + " present";
    return r;
  }
  const int d = o.device;
  if ((e = cudaSetDevice(d)) != cudaSuccess || (e = cudaFree(nullptr)) != cudaSuccess) {
    r.why = std::string("cannot create a context on device ") + std::to_string(d) + ": " + cudaGetErrorString(e);
    cudaGetLastError();
    return r;
  }
  cudaDeviceProp p{};
  if ((e = cudaGetDeviceProperties(&p, d)) != cudaSuccess) {
    r.why = std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(e);
    cudaGetLastError();
    return r;
  }
  CalDevice& dv = r.device;
  dv.index = d;
  dv.name = p.name;
  dv.sm_major = p.major;
  dv.sm_minor = p.minor;
  dv.total_mem = p.totalGlobalMem;
  cudaDriverGetVersion(&dv.driver_version);
  cudaRuntimeGetVersion(&dv.runtime_version);
  dv.sms = attr(cudaDevAttrMultiProcessorCount, d);
  dv.l2_bytes = attr(cudaDevAttrL2CacheSize, d);
  dv.clock_khz = attr(cudaDevAttrClockRate, d);
  dv.mem_clock_khz = attr(cudaDevAttrMemoryClockRate, d);
  dv.bus_width = attr(cudaDevAttrGlobalMemoryBusWidth, d);
  r.ok = true;

  Calibrator c(o, r);
  c.log("device " + std::to_string(d) + ": " + dv.name + ", sm_" + std::to_string(dv.sm_major) + std::to_string(dv.sm_minor) + ", " +
        std::to_string(dv.sms) + " SMs, " + std::to_string(dv.total_mem >> 20) + " MiB");
  c.step("launch overhead", [&] { c.launch_overhead(); });
  c.step("transfers", [&] { c.transfers(); });
  c.step("d2d", [&] { c.d2d(); });
  c.step("p2p", [&] { c.p2p(n); });
  c.step("gemm bf16", [&] { c.gemm_dtype<__nv_bfloat16>("bf16", CUDA_R_16BF); });
  c.step("gemm fp16", [&] { c.gemm_dtype<__half>("fp16", CUDA_R_16F); });
  // A sticky error (a faulted context) would make everything after it fail: say so once.
  if ((e = cudaDeviceSynchronize()) != cudaSuccess) r.errors.push_back(std::string("final synchronize: ") + cudaGetErrorString(e));
  return r;
}

}  // namespace kvscope::cuda
