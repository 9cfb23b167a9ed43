#include "kernels/cuda/attention_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>
#include <memory>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/kv_cache.h"

namespace kvscope::cuda {

DecodeBenchResult bench_decode_attention(const DecodeBenchConfig& c) {
  DecodeBenchResult r;
  const int kvd = c.n_kv_heads * c.head_dim;
  // K/V bytes of one copy; positions (4 B) and live flags (1 B) per slot are read too.
  const double copy_bytes = static_cast<double>(c.batch) * c.n_kv_heads * c.ctx * (2.0 * c.head_dim * 2 + 5);
  int dev = 0, l2 = 0;
  KVS_CUDA(cudaGetDevice(&dev));
  KVS_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  // Consecutive calls read different copies, so each call streams from HBM, not L2.
  r.copies = std::max(1, static_cast<int>((4.0 * l2 + copy_bytes - 1) / copy_bytes));
  r.bytes = copy_bytes;
  cudaStream_t s = nullptr;
  KVS_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  struct Guard {
    cudaStream_t s;
    std::vector<void*> ptrs;
    ~Guard() {
      cudaStreamSynchronize(s);
      for (void* p : ptrs) cudaFree(p);
      cudaStreamDestroy(s);
    }
  } guard{s, {}};
  auto alloc = [&](size_t bytes) {
    void* p = nullptr;
    KVS_CUDA(cudaMalloc(&p, bytes));
    guard.ptrs.push_back(p);
    return p;
  };
  const int layers = c.batch * r.copies;  // one "layer" per (copy, sequence)
  auto kv = std::make_unique<KVCache>(layers, c.n_kv_heads, c.head_dim, c.page_size, c.ctx, s);
  float* k = static_cast<float*>(alloc(sizeof(float) * c.ctx * static_cast<size_t>(kvd)));
  float* v = static_cast<float*>(alloc(sizeof(float) * c.ctx * static_cast<size_t>(kvd)));
  launch_fill_random(k, static_cast<int64_t>(c.ctx) * kvd, 1, 1.0f, s);
  launch_fill_random(v, static_cast<int64_t>(c.ctx) * kvd, 2, 1.0f, s);
  for (int l = 0; l < layers; ++l) kv->append_device(l, 0, c.ctx, k, v);
  const PagedKV view = kv->view();
  const size_t qn = static_cast<size_t>(c.batch) * c.n_heads * c.head_dim;
  float* q = static_cast<float*>(alloc(sizeof(float) * qn));
  float* out = static_cast<float*>(alloc(sizeof(float) * qn));
  float* lse = static_cast<float*>(alloc(sizeof(float) * c.batch * c.n_heads));
  const int64_t sf = decode_scratch_floats(c.batch, c.n_heads, c.head_dim);
  float* scratch = static_cast<float*>(alloc(sizeof(float) * sf));
  float* probs = static_cast<float*>(alloc(sizeof(float) * static_cast<size_t>(c.batch) * c.n_heads * c.ctx));
  launch_fill_random(q, static_cast<int64_t>(qn), 3, 0.2f, s);

  DecodeArgs a;
  a.kv = view;
  a.q = q;
  a.out = out;
  a.lse = lse;
  a.batch = c.batch;
  a.n_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.batch_stream_stride = c.n_kv_heads;
  a.max_pages_used = (c.ctx + c.page_size - 1) / c.page_size;
  a.qpos = c.ctx - 1;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  a.scratch = scratch;
  a.scratch_floats = sf;
  auto run = [&](bool emit, int n) {
    a.emit.probs = emit ? probs : nullptr;
    a.emit.stride = c.ctx;
    for (int i = 0; i < n; ++i) {
      a.stream0 = (i % r.copies) * c.batch * c.n_kv_heads;
      launch_decode_attention(a, s);
    }
  };
  cudaEvent_t e0, e1;
  KVS_CUDA(cudaEventCreate(&e0));
  KVS_CUDA(cudaEventCreate(&e1));
  auto timed = [&](bool emit) {
    run(emit, 3);  // warm-up
    KVS_CUDA(cudaEventRecord(e0, s));
    run(emit, c.iters);
    KVS_CUDA(cudaEventRecord(e1, s));
    KVS_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    KVS_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    return 1000.0 * ms / c.iters;
  };
  r.us = timed(false);
  r.us_emit = timed(true);
  r.bytes_per_s = r.bytes / (r.us * 1e-6);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return r;
}

}  // namespace kvscope::cuda
