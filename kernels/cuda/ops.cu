// Element-wise and row kernels of the CUDA runtime: embedding, RMSNorm, RoPE, SwiGLU,
// conversions, KV append. Each is memory bound and tiny next to the GEMMs; they are kept
// simple and exact in fp32 (outputs become 16-bit only where cuBLAS consumes them).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"

namespace kvscope::cuda {

namespace {

__device__ inline void store_half(void* out, int64_t i, float x, HalfType ht) {
  if (ht == HalfType::F16) static_cast<__half*>(out)[i] = __float2half_rn(x);
  else static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(x);
}

__global__ void embed_kernel(const float* table, const int32_t* tokens, float* x, int dim) {
  const int t = blockIdx.x;
  const float* src = table + static_cast<int64_t>(tokens[t]) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) x[static_cast<int64_t>(t) * dim + i] = src[i];
}

// One block per row; the sum of squares is reduced in fp32 across the block.
__global__ void rmsnorm_kernel(const float* x, const float* w, void* out, HalfType ht, int dim, float eps) {
  const int t = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(t) * dim;
  float ss = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float inv = rsqrtf(red[0] / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) store_half(out, static_cast<int64_t>(t) * dim + i, xr[i] * inv * w[i], ht);
}

__global__ void rope_kernel(float* x, const float* cos_t, const float* sin_t, int T, int n_heads, int head_dim, int32_t pos0,
                            bool interleaved) {
  const int half = head_dim / 2;
  const int64_t n = static_cast<int64_t>(T) * n_heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n; idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t th = idx / half;  // t * n_heads + h
    const int t = static_cast<int>(th / n_heads);
    float* h = x + th * head_dim;
    const float c = cos_t[static_cast<int64_t>(pos0 + t) * half + i], s = sin_t[static_cast<int64_t>(pos0 + t) * half + i];
    const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const float a = h[ia], b = h[ib];
    h[ia] = a * c - b * s;
    h[ib] = a * s + b * c;
  }
}

__global__ void swiglu_kernel(const float* gate, const float* up, void* out, HalfType ht, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    store_half(out, i, g / (1.0f + expf(-g)) * up[i], ht);
  }
}

__global__ void to_half_kernel(const float* x, void* out, HalfType ht, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store_half(out, i, x[i], ht);
}

// One block per (token, KV head): head_dim values of K and V, then position and live flag.
__global__ void append_kv_kernel(const float* k, const float* v, const int32_t* rows, int32_t pos0, int n_kv, int head_dim,
                                 __half* k_pool, __half* v_pool, int32_t* pos_pool, uint8_t* live_pool) {
  const int t = blockIdx.x / n_kv, h = blockIdx.x % n_kv;
  const int64_t r = rows[blockIdx.x];
  const int64_t src = (static_cast<int64_t>(t) * n_kv + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    k_pool[r * head_dim + d] = __float2half_rn(k[src + d]);
    v_pool[r * head_dim + d] = __float2half_rn(v[src + d]);
  }
  if (threadIdx.x == 0) {
    pos_pool[r] = pos0 + t;
    live_pool[r] = 1;
  }
}

// splitmix64 of (seed, index): independent of the launch shape, so fills are reproducible.
__global__ void fill_random_kernel(float* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    x[i] = (2.0f * u - 1.0f) * scale;
  }
}

struct CopySegs {
  CopySeg seg[4];
};

__global__ void copy_segments_kernel(CopySegs c) {
  const CopySeg sg = c.seg[blockIdx.y];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < sg.n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    sg.dst[i] = sg.src[i];
}

int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

}  // namespace

void launch_embed(const float* table, const int32_t* tokens, float* x, int T, int dim, cudaStream_t s) {
  embed_kernel<<<T, 128, 0, s>>>(table, tokens, x, dim);
  KVS_LAUNCHED(embed);
}

void launch_rmsnorm(const float* x, const float* w, void* out, HalfType ht, int T, int dim, float eps, cudaStream_t s) {
  rmsnorm_kernel<<<T, dim >= 1024 ? 1024 : 256, 0, s>>>(x, w, out, ht, dim, eps);
  KVS_LAUNCHED(rmsnorm);
}

void launch_rope(float* x, const float* cos_t, const float* sin_t, int T, int n_heads, int head_dim, int32_t pos0, bool interleaved,
                 cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(T) * n_heads * (head_dim / 2);
  rope_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, cos_t, sin_t, T, n_heads, head_dim, pos0, interleaved);
  KVS_LAUNCHED(rope);
}

void launch_swiglu(const float* gate, const float* up, void* out, HalfType ht, int64_t n, cudaStream_t s) {
  swiglu_kernel<<<grid_for(n, 256), 256, 0, s>>>(gate, up, out, ht, n);
  KVS_LAUNCHED(swiglu);
}

void launch_to_half(const float* x, void* out, HalfType ht, int64_t n, cudaStream_t s) {
  to_half_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, out, ht, n);
  KVS_LAUNCHED(to_half);
}

void launch_append_kv(const float* k, const float* v, const int32_t* rows, int32_t pos0, int T, int n_kv, int head_dim,
                      uint16_t* k_pool, uint16_t* v_pool, int32_t* pos_pool, uint8_t* live_pool, cudaStream_t s) {
  if (T <= 0) return;
  append_kv_kernel<<<T * n_kv, 128, 0, s>>>(k, v, rows, pos0, n_kv, head_dim, reinterpret_cast<__half*>(k_pool),
                                            reinterpret_cast<__half*>(v_pool), pos_pool, live_pool);
  KVS_LAUNCHED(append_kv);
}

void launch_copy_segments(const CopySeg* segs, int n_segs, cudaStream_t s) {
  if (n_segs <= 0 || n_segs > 4) throw Error("copy_segments: 1..4 segments");
  CopySegs c;
  int64_t mx = 0;
  for (int i = 0; i < n_segs; ++i) {
    c.seg[i] = segs[i];
    mx = mx > segs[i].n ? mx : segs[i].n;
  }
  if (mx == 0) return;
  copy_segments_kernel<<<dim3(grid_for(mx, 256) < 1024 ? grid_for(mx, 256) : 1024, n_segs), 256, 0, s>>>(c);
  KVS_LAUNCHED(copy_segments);
}

void launch_fill_random(float* x, int64_t n, uint64_t seed, float scale, cudaStream_t s) {
  fill_random_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, n, seed, scale);
  KVS_LAUNCHED(fill_random);
}

}  // namespace kvscope::cuda
