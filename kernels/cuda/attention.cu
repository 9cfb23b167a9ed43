// Attention over the paged KV cache: split-K decode (flash-decoding) and tiled prefill,
// both with online softmax, both able to emit what the trace needs while they compute.
//
// Decode: grid (split, KV head, batch). A block reads a run of `pages_per_split` pages of
// one stream once and serves every query head of its GQA group from it, so K/V bytes are
// read once per group: the kernel is HBM bound and this is what the benchmark measures.
// A warp is cut into sub-groups of LPR = head_dim/8 lanes; each lane loads 16 bytes (8
// halves) of a K row and of a V row, U rows per sub-group are in flight before any math.
// Each sub-group keeps its own (max, sum, acc) per head; they are merged across lanes,
// then across warps in shared memory, and written as one partial per (head, split). The
// combine kernel merges the splits, writes out and lse and, when emitting, rewrites the
// scores the split kernel stored into probabilities p = exp(s - lse).
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/kernels.h"

namespace kvscope::cuda {

namespace {

constexpr int kMaxSplits = 256;
constexpr int kDecodeWarps = 4;
// Rows in flight per sub-group: 4 keeps ~48 KiB of loads in flight per SM at head_dim 128
// (enough to cover HBM latency); group 8 holds twice the accumulators, so it gets 2.
template <int G>
constexpr int decode_unroll() { return G >= 8 ? 2 : 4; }
// Resident blocks asked of the register allocator: 3 (<= 168 registers, 12 warps per SM)
// fits groups up to 4 without spilling; group 8 keeps twice the q and acc registers.
template <int G>
constexpr int decode_min_blocks() { return G >= 8 ? 2 : 3; }

__device__ inline void half8_to_float(const uint4& u, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// Merges partial softmax state (m2, l2, acc2) into (m, l, acc).
template <int N>
__device__ inline void merge_state(float& m, float& l, float* acc, float m2, float l2, const float* acc2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) return;  // both empty
  const float a = __expf(m - M), b = __expf(m2 - M);
  l = l * a + l2 * b;
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] = acc[i] * a + acc2[i] * b;
  m = M;
}

// Reduce-scatter of N partial sums over the LPR lanes of a sub-group: each halving step
// sends half of the still-live values to the partner lane and keeps the other half, so N
// values cost N-1 shuffles instead of N*log2(LPR). Afterwards lane li holds the full sums
// of the indices returned by rs_base(li) .. + rs_keep(); lanes that differ only in their
// low bits hold the same values.
template <int O, int n, int N>
__device__ __forceinline__ void reduce_scatter(float (&v)[N], int li) {
  if constexpr (O > 0) {
    if constexpr (n > 1) {
      constexpr int h = n / 2;
      const bool hi = (li & O) != 0;
#pragma unroll
      for (int i = 0; i < h; ++i) {
        const float send = hi ? v[i] : v[i + h];
        const float keep = hi ? v[i + h] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
      }
      reduce_scatter<O / 2, h, N>(v, li);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
      reduce_scatter<O / 2, 1, N>(v, li);
    }
  }
}

constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }

template <int HD, int G>
__global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks<G>()) decode_split_kernel(DecodeArgs a, int pages_per_split, int n_splits) {
  constexpr int VEC = 8, LPR = HD / VEC, RPW = 32 / LPR, U = decode_unroll<G>(), NW = kDecodeWarps;
  constexpr int RPI = NW * RPW * U;  // slots per block iteration (one tile)
  constexpr int N = U * G;           // scores per sub-group and tile, index u * G + g
  constexpr int LOG_LPR = ilog2(LPR), LOG_N = ilog2(N);
  constexpr int S = LOG_N < LOG_LPR ? LOG_N : LOG_LPR;  // halving steps of the reduce-scatter
  constexpr int KEEP = N >> S;                           // sums each lane ends with
  __shared__ float sm_acc[NW][G][HD];
  __shared__ float sm_m[NW][G], sm_l[NW][G];
  __shared__ __align__(16) float sm_s[NW][RPW][N];

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int H = a.n_heads, h0 = kvh * G;
  const int stream = a.stream0 + b * a.batch_stream_stride + kvh;
  const int B = a.kv.page_size;
  const int n = a.kv.n_slots[stream];
  const int s_begin = split * pages_per_split * B;
  const int s_end = min(n, s_begin + pages_per_split * B);
  const int32_t* table = a.kv.tables + static_cast<int64_t>(stream) * a.kv.max_pages;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = lane / LPR, li = lane % LPR;
  const int rs_base = (li >> (LOG_LPR - S)) << (LOG_N - S);
  const bool rs_writer = (li & ((1 << (LOG_LPR - S)) - 1)) == 0;

  float q[G][VEC];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float4* qp = reinterpret_cast<const float4*>(a.q + (static_cast<int64_t>(b) * H + h0 + g) * HD + li * VEC);
    const float4 x = qp[0], y = qp[1];
    q[g][0] = x.x; q[g][1] = x.y; q[g][2] = x.z; q[g][3] = x.w;
    q[g][4] = y.x; q[g][5] = y.y; q[g][6] = y.z; q[g][7] = y.w;
  }
  float m[G], l[G], acc[G][VEC];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[g][i] = 0;
  }
  float* eprobs = a.emit.probs ? a.emit.probs + (static_cast<int64_t>(b) * H + h0) * a.emit.stride : nullptr;
  const uint4* kbase = reinterpret_cast<const uint4*>(a.kv.k);
  const uint4* vbase = reinterpret_cast<const uint4*>(a.kv.v);
  const int lane_slot = warp * RPW + sub;
  // Page sizes are powers of two in practice: shifts instead of integer division.
  const bool pow2 = (B & (B - 1)) == 0;
  const int bshift = __ffs(B) - 1;  // slot of (tile base, u) is base + u * NW * RPW + lane_slot

  // Tiles are double-buffered in registers: the loads of the next tile are in flight while
  // this one is computed, and the page-table entries are read one tile earlier still, so
  // neither the table nor the K/V latency sits between two tiles.
  struct Tile {
    uint4 k[U], v[U];
    int live[U], pos[U];  // raw: testing them here would wait for the loads
  };
  auto load_pages = [&](int (&pg)[U], int base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int slot = base + u * NW * RPW + lane_slot;
      pg[u] = slot < s_end ? __ldg(table + (pow2 ? slot >> bshift : slot / B)) : -1;
    }
  };
  auto issue = [&](Tile& t, const int (&pg)[U], int base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int slot = base + u * NW * RPW + lane_slot;
      t.live[u] = 0;
      t.pos[u] = 0;
      t.k[u] = t.v[u] = make_uint4(0, 0, 0, 0);
      if (pg[u] >= 0) {  // offloaded pages are never read (their slots emit -inf: p = 0)
        const int64_t row = static_cast<int64_t>(pg[u]) * B + (pow2 ? slot & (B - 1) : slot % B);
        t.k[u] = __ldg(kbase + row * LPR + li);
        t.v[u] = __ldg(vbase + row * LPR + li);
        t.live[u] = __ldg(a.kv.live + row);
        t.pos[u] = __ldg(a.kv.pos + row);
      }
    }
  };
  auto compute = [&](const Tile& t, int base) {
    // Scores of the tile's U rows for every head: partial dots, one reduce-scatter.
    float d[N];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = t.live[u] != 0 && t.pos[u] <= a.qpos;
      float kf[VEC];
      half8_to_float(t.k[u], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float x = 0;
#pragma unroll
        for (int i = 0; i < VEC; ++i) x += q[g][i] * kf[i];
        d[u * G + g] = ok ? x : -INFINITY;  // -inf partials sum to -inf
      }
    }
    reduce_scatter<LPR / 2, N, N>(d, li);
    __syncwarp();  // the previous tile's scores have been read
    if (rs_writer) {
#pragma unroll
      for (int j = 0; j < KEEP; ++j) {
        const int idx = rs_base + j;
        const float s = d[j] * a.scale;
        sm_s[warp][sub][idx] = s;
        if (eprobs) {
          const int slot = base + (idx / G) * NW * RPW + lane_slot;
          if (slot < s_end) eprobs[(idx % G) * a.emit.stride + slot] = s;
        }
      }
    }
    __syncwarp();
    float sc[N];
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 x = *reinterpret_cast<const float4*>(&sm_s[warp][sub][i]);
      sc[i] = x.x; sc[i + 1] = x.y; sc[i + 2] = x.z; sc[i + 3] = x.w;
    }
    // One online-softmax rescale per tile and head.
    float mn[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float tmax = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) tmax = fmaxf(tmax, sc[u * G + g]);
      mn[g] = tmax == -INFINITY ? 0.0f : tmax;  // all masked so far: p = c = 0, state stays empty
      const float c = __expf(m[g] - mn[g]);
      l[g] *= c;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[g][i] *= c;
      m[g] = tmax;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[VEC];
      half8_to_float(t.v[u], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = __expf(sc[u * G + g] - mn[g]);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[g][i] += p * vf[i];
      }
    }
  };

  {
    Tile ta, tb;
    int pa[U], pb[U];
    load_pages(pa, s_begin);
    load_pages(pb, s_begin + RPI);
    issue(ta, pa, s_begin);
    load_pages(pa, s_begin + 2 * RPI);
    for (int base = s_begin; base < s_end; base += 2 * RPI) {
      issue(tb, pb, base + RPI);
      load_pages(pb, base + 3 * RPI);
      compute(ta, base);
      if (base + RPI >= s_end) break;
      issue(ta, pa, base + 2 * RPI);
      load_pages(pa, base + 4 * RPI);
      compute(tb, base + RPI);
    }
  }
  // Merge the sub-groups of the warp (lanes li, li + LPR, ...).
#pragma unroll
  for (int o = LPR; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o), l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
      float acc2[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc2[i] = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
      merge_state<VEC>(m[g], l[g], acc[g], m2, l2, acc2);
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) sm_acc[warp][g][li * VEC + i] = acc[g][i];
      if (li == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();
  // Merge the warps; one partial (acc[HD], m, l) per (batch, head, split).
  for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
    const int g = idx / HD, d = idx % HD;
    float M = -INFINITY;
    for (int w = 0; w < NW; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0, A = 0;
    if (M != -INFINITY)
      for (int w = 0; w < NW; ++w) {
        const float e = __expf(sm_m[w][g] - M);
        L += sm_l[w][g] * e;
        A += sm_acc[w][g][d] * e;
      }
    float* part = a.scratch + ((static_cast<int64_t>(b) * H + h0 + g) * n_splits + split) * (HD + 2);
    part[d] = A;
    if (d == 0) {
      part[HD] = M;
      part[HD + 1] = L;
    }
  }
}

constexpr int kCombineThreads = 128;

template <int HD>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(DecodeArgs a, int n_splits, int group) {
  // blockIdx.z cuts the probability rewrite of long streams into chunks; every block
  // recomputes (M, L) from the partials and block 0 writes out and lse.
  const int h = blockIdx.x, b = blockIdx.y, H = a.n_heads, z = blockIdx.z, nz = gridDim.z;
  const float* part = a.scratch + (static_cast<int64_t>(b) * H + h) * n_splits * (HD + 2);
  __shared__ float s_w[kMaxSplits];
  __shared__ float s_red[kCombineThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Max over the splits, then weights and the sum, by the whole block.
  float M = -INFINITY;
  for (int s = tid; s < n_splits; s += kCombineThreads) M = fmaxf(M, part[s * (HD + 2) + HD]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  if (lane == 0) s_red[warp] = M;
  __syncthreads();
  M = s_red[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; ++w) M = fmaxf(M, s_red[w]);
  float L = 0;
  for (int s = tid; s < n_splits; s += kCombineThreads) {
    const float w = M == -INFINITY ? 0.0f : __expf(part[s * (HD + 2) + HD] - M);
    s_w[s] = w;
    L += part[s * (HD + 2) + HD + 1] * w;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
  __syncthreads();  // s_red[] has been read
  if (lane == 0) s_red[warp] = L;
  __syncthreads();
  L = 0;
#pragma unroll
  for (int w = 0; w < kCombineThreads / 32; ++w) L += s_red[w];
  const float inv = L > 0 ? 1.0f / L : 0.0f;
  float* out = a.out + (static_cast<int64_t>(b) * H + h) * HD;
  if (z == 0)
    for (int d = tid; d < HD; d += kCombineThreads) {
      float A = 0;
      for (int s = 0; s < n_splits; ++s) A += part[s * (HD + 2) + d] * s_w[s];
      out[d] = A * inv;
    }
  const float lse = L > 0 ? M + logf(L) : -INFINITY;
  if (tid == 0 && z == 0) a.lse[static_cast<int64_t>(b) * H + h] = lse;
  if (a.emit.probs) {
    const int stream = a.stream0 + b * a.batch_stream_stride + h / group;
    const int n = a.kv.n_slots[stream];
    float* p = a.emit.probs + (static_cast<int64_t>(b) * H + h) * a.emit.stride;
    for (int j = z * kCombineThreads + tid; j < n; j += nz * kCombineThreads) {
      const float s = p[j];
      p[j] = (s == -INFINITY || lse == -INFINITY) ? 0.0f : expf(s - lse);
    }
  }
}

// ---- prefill ------------------------------------------------------------------------
constexpr int kBQ = 16, kBK = 16, kPrefillThreads = 128;

template <int HD>
__global__ void __launch_bounds__(kPrefillThreads) prefill_kernel(PrefillArgs a) {
  constexpr int TPR = kPrefillThreads / kBQ;  // threads per query row (8)
  constexpr int DPT = HD / TPR > 0 ? HD / TPR : 1;
  __shared__ float sq[kBQ][HD];
  __shared__ __half sk[kBK][HD], sv[kBK][HD];
  __shared__ float ss[kBQ][kBK];
  __shared__ int sok[kBK], spos[kBK];
  __shared__ int64_t srow[kBK];

  const int h = blockIdx.y, H = a.n_heads, group = H / a.n_kv_heads;
  const int t0 = blockIdx.x * kBQ;
  const int i = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  const int t = t0 + i;
  const int32_t qpos = a.pos0 + t;
  const int32_t last_qpos = a.pos0 + min(a.T, t0 + kBQ) - 1;
  const int stream = a.stream0 + h / group;
  const int B = a.kv.page_size;
  const int n = a.kv.n_slots[stream];
  const int32_t* table = a.kv.tables + static_cast<int64_t>(stream) * a.kv.max_pages;

  for (int idx = threadIdx.x; idx < kBQ * HD; idx += blockDim.x) {
    const int r = idx / HD, d = idx % HD;
    sq[r][d] = t0 + r < a.T ? a.q[(static_cast<int64_t>(t0 + r) * H + h) * HD + d] : 0.0f;
  }
  float m = -INFINITY, l = 0, acc[DPT];
#pragma unroll
  for (int k = 0; k < DPT; ++k) acc[k] = 0;
  const bool dims_owner = sub * DPT < HD;  // HD = 8: one dim per thread, all threads own one

  for (int base = 0; base < n; base += kBK) {
    __syncthreads();
    if (threadIdx.x < kBK) {
      const int slot = base + threadIdx.x;
      int ok = 0, p = 0;
      int64_t row = 0;
      if (slot < n) {
        const int pg = table[slot / B];
        if (pg >= 0) {
          row = static_cast<int64_t>(pg) * B + slot % B;
          ok = a.kv.live[row] != 0;
          p = a.kv.pos[row];
        }
      }
      sok[threadIdx.x] = ok;
      spos[threadIdx.x] = p;
      srow[threadIdx.x] = row;
    }
    __syncthreads();
    // Positions increase along the stream: once a tile starts after the block's last
    // query, every later tile does too.
    bool any_needed = false, any_ok = false;
    for (int j = 0; j < kBK; ++j) {
      any_ok |= sok[j] != 0;
      any_needed |= sok[j] && spos[j] <= last_qpos;
    }
    if (!any_needed) {
      if (any_ok) break;
      continue;
    }
    for (int idx = threadIdx.x; idx < kBK * HD; idx += blockDim.x) {
      const int j = idx / HD, d = idx % HD;
      const __half zero = __float2half(0.0f);
      const bool ok = sok[j] != 0;
      sk[j][d] = ok ? reinterpret_cast<const __half*>(a.kv.k)[srow[j] * HD + d] : zero;
      sv[j][d] = ok ? reinterpret_cast<const __half*>(a.kv.v)[srow[j] * HD + d] : zero;
    }
    __syncthreads();
    float s_loc[kBK / TPR];
    float tmax = -INFINITY;
#pragma unroll
    for (int c = 0; c < kBK / TPR; ++c) {
      const int j = sub + c * TPR;
      float s = -INFINITY;
      if (t < a.T && sok[j] && spos[j] <= qpos) {
        float d = 0;
#pragma unroll 8
        for (int k = 0; k < HD; ++k) d += sq[i][k] * __half2float(sk[j][k]);
        s = d * a.scale;
      }
      s_loc[c] = s;
      tmax = fmaxf(tmax, s);
    }
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
    const float mn = fmaxf(m, tmax);
    const float corr = mn == -INFINITY ? 1.0f : __expf(m - mn);
    float rsum = 0;
#pragma unroll
    for (int c = 0; c < kBK / TPR; ++c) {
      const float p = s_loc[c] == -INFINITY ? 0.0f : __expf(s_loc[c] - mn);
      ss[i][sub + c * TPR] = p;
      rsum += p;
    }
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) rsum += __shfl_xor_sync(0xffffffffu, rsum, o);
    __syncwarp();
    l = l * corr + rsum;
    if (dims_owner) {
#pragma unroll
      for (int k = 0; k < DPT; ++k) {
        const int d = sub * DPT + k;
        float x = acc[k] * corr;
        for (int j = 0; j < kBK; ++j) x += ss[i][j] * __half2float(sv[j][d]);
        acc[k] = x;
      }
    }
    m = mn;
  }
  if (t < a.T) {
    const float inv = l > 0 ? 1.0f / l : 0.0f;
    if (dims_owner)
      for (int k = 0; k < DPT; ++k) a.out[(static_cast<int64_t>(t) * H + h) * HD + sub * DPT + k] = acc[k] * inv;
    if (sub == 0) a.lse[static_cast<int64_t>(t) * H + h] = l > 0 ? m + logf(l) : -INFINITY;
  }
}

// Trace emission for a prefill: one thread per key slot recomputes p = exp(s - lse) for
// every query, adds it to the key's column sum for the queries before the stored rows and
// writes the stored rows in full. Keys own a thread, so column sums need no atomics and
// come out the same on every run.
constexpr int kEmitKeys = 64, kEmitQ = 8;

template <int HD>
__global__ void __launch_bounds__(kEmitKeys) prefill_emit_kernel(PrefillArgs a) {
  __shared__ __half sk[kEmitKeys][HD + 2];  // +2: rows start on different banks
  __shared__ float sq[kEmitQ][HD];
  __shared__ float slse[kEmitQ];
  const int h = blockIdx.y, H = a.n_heads, group = H / a.n_kv_heads;
  const int stream = a.stream0 + h / group;
  const int B = a.kv.page_size;
  const int n = a.kv.n_slots[stream];
  const int32_t* table = a.kv.tables + static_cast<int64_t>(stream) * a.kv.max_pages;
  const int j = blockIdx.x * kEmitKeys + threadIdx.x;
  bool ok = false;
  int32_t pos = 0;
  if (j < n) {
    const int pg = table[j / B];
    if (pg >= 0) {
      const int64_t row = static_cast<int64_t>(pg) * B + j % B;
      ok = a.kv.live[row] != 0;
      pos = a.kv.pos[row];
      for (int d = 0; d < HD; ++d) sk[threadIdx.x][d] = reinterpret_cast<const __half*>(a.kv.k)[row * HD + d];
    }
  }
  const int rows0 = a.T - a.emit.rows;
  float colsum = 0;
  for (int q0 = 0; q0 < a.T; q0 += kEmitQ) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kEmitQ * HD; idx += blockDim.x) {
      const int r = idx / HD, d = idx % HD;
      sq[r][d] = q0 + r < a.T ? a.q[(static_cast<int64_t>(q0 + r) * H + h) * HD + d] : 0.0f;
    }
    if (threadIdx.x < kEmitQ) slse[threadIdx.x] = q0 + threadIdx.x < a.T ? a.lse[static_cast<int64_t>(q0 + threadIdx.x) * H + h] : -INFINITY;
    __syncthreads();
    for (int r = 0; r < kEmitQ && q0 + r < a.T; ++r) {
      const int t = q0 + r;
      float p = 0;
      if (ok && pos <= a.pos0 + t && slse[r] != -INFINITY) {
        float d = 0;
        for (int k = 0; k < HD; ++k) d += sq[r][k] * __half2float(sk[threadIdx.x][k]);
        p = expf(d * a.scale - slse[r]);
      }
      if (t < rows0) colsum += p;
      else if (j < n) a.emit.probs[(static_cast<int64_t>(t - rows0) * H + h) * a.emit.stride + j] = p;
    }
  }
  if (a.emit.colsum && j < n) a.emit.colsum[static_cast<int64_t>(h) * a.emit.stride + j] = colsum;
}

template <int HD, int G>
void decode_launch(const DecodeArgs& a, cudaStream_t s) {
  constexpr int LPR = HD / 8, RPW = 32 / LPR, RPI = kDecodeWarps * RPW * decode_unroll<G>();
  const int B = a.kv.page_size;
  const int max_pages = a.max_pages_used > 0 ? a.max_pages_used : 1;
  // Work is cut into whole waves of resident blocks (a partial last wave leaves SMs idle
  // while it runs): one wave for short contexts, up to 8 for long ones so the tail is
  // small, each block at least one iteration's worth of slots, at most kMaxSplits.
  static const int occ = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_split_kernel<HD, G>, kDecodeWarps * 32, 0) != cudaSuccess || n <= 0) n = 2;
    return n;
  }();
  const int streams = a.batch * a.n_kv_heads;
  const int64_t resident = static_cast<int64_t>(sm_count()) * occ;
  const int64_t work_pages = static_cast<int64_t>(streams) * max_pages;
  const int64_t waves = std::max<int64_t>(1, std::min<int64_t>(8, work_pages / (resident * 16)));
  const int64_t want_splits = std::max<int64_t>(1, (resident * waves + streams - 1) / streams);
  int pps = static_cast<int>((max_pages + want_splits - 1) / want_splits);
  pps = max(pps, (RPI + B - 1) / B);
  pps = max(pps, (max_pages + kMaxSplits - 1) / kMaxSplits);
  const int n_splits = (max_pages + pps - 1) / pps;
  if (static_cast<int64_t>(a.batch) * a.n_heads * n_splits * (HD + 2) > a.scratch_floats)
    throw Error("decode attention: scratch too small");
  decode_split_kernel<HD, G><<<dim3(n_splits, a.n_kv_heads, a.batch), kDecodeWarps * 32, 0, s>>>(a, pps, n_splits);
  KVS_LAUNCHED(decode_split);
  // Emitting: enough blocks for the probability rewrite (~2048 slots each, <= 32 per head).
  const int64_t slots = static_cast<int64_t>(max_pages) * B;
  const int chunks = a.emit.probs ? static_cast<int>(std::min<int64_t>(32, std::max<int64_t>(1, slots / 2048))) : 1;
  decode_combine_kernel<HD><<<dim3(a.n_heads, a.batch, chunks), kCombineThreads, 0, s>>>(a, n_splits, G);
  KVS_LAUNCHED(decode_combine);
}

template <int HD>
void decode_by_group(const DecodeArgs& a, cudaStream_t s) {
  switch (a.n_heads / a.n_kv_heads) {
    case 1: return decode_launch<HD, 1>(a, s);
    case 2: return decode_launch<HD, 2>(a, s);
    case 4: return decode_launch<HD, 4>(a, s);
    case 8: return decode_launch<HD, 8>(a, s);
  }
  throw Error("decode attention: unsupported GQA group " + std::to_string(a.n_heads / a.n_kv_heads));
}

template <int HD>
void prefill_launch(const PrefillArgs& a, cudaStream_t s) {
  prefill_kernel<HD><<<dim3((a.T + kBQ - 1) / kBQ, a.n_heads), kPrefillThreads, 0, s>>>(a);
  KVS_LAUNCHED(prefill);
  if (a.emit.probs || a.emit.colsum) {
    int n_max = a.kv.max_pages * a.kv.page_size;  // bound; threads past a stream's n_slots idle
    if (a.emit.stride > 0 && a.emit.stride < n_max) n_max = static_cast<int>(a.emit.stride);
    prefill_emit_kernel<HD><<<dim3((n_max + kEmitKeys - 1) / kEmitKeys, a.n_heads), kEmitKeys, 0, s>>>(a);
    KVS_LAUNCHED(prefill_emit);
  }
}

}  // namespace

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) v = 0;
    return v > 0 ? v : 100;
  }();
  return n;
}

bool decode_supported(int head_dim, int group) {
  const bool hd = head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
  const bool g = group == 1 || group == 2 || group == 4 || group == 8;
  return hd && g;
}

int64_t decode_scratch_floats(int batch, int n_heads, int head_dim) {
  return static_cast<int64_t>(batch) * n_heads * kMaxSplits * (head_dim + 2);
}

void launch_decode_attention(const DecodeArgs& a, cudaStream_t s) {
  switch (a.kv.head_dim) {
    case 8: return decode_by_group<8>(a, s);
    case 16: return decode_by_group<16>(a, s);
    case 32: return decode_by_group<32>(a, s);
    case 64: return decode_by_group<64>(a, s);
    case 128: return decode_by_group<128>(a, s);
    case 256: return decode_by_group<256>(a, s);
  }
  throw Error("decode attention: unsupported head_dim " + std::to_string(a.kv.head_dim));
}

void launch_prefill_attention(const PrefillArgs& a, cudaStream_t s) {
  if (a.T <= 0) return;
  switch (a.kv.head_dim) {
    case 8: return prefill_launch<8>(a, s);
    case 16: return prefill_launch<16>(a, s);
    case 32: return prefill_launch<32>(a, s);
    case 64: return prefill_launch<64>(a, s);
    case 128: return prefill_launch<128>(a, s);
    case 256: return prefill_launch<256>(a, s);
  }
  throw Error("prefill attention: unsupported head_dim " + std::to_string(a.kv.head_dim));
}

}  // namespace kvscope::cuda
