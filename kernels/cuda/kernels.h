#pragma once
// Host entry points of kvscope's own CUDA kernels (ops.cu, attention.cu): one launcher per
// kernel, plain types only, so that host .cpp files (which may include nlohmann/json) and
// .cu files share this header. All launches are asynchronous on the given stream.
//
// fp16 data travels as uint16_t bit patterns on the host side; the .cu files reinterpret
// them as __half.
#include <cuda_runtime.h>

#include <cstdint>

namespace kvscope::cuda {

// 16-bit type of the weights and of the activations fed to cuBLAS.
enum class HalfType { F16, BF16 };

// ---- ops.cu -----------------------------------------------------------------------
// x[t] = table[tokens[t]] (fp32 rows of dim floats).
void launch_embed(const float* table, const int32_t* tokens, float* x, int T, int dim, cudaStream_t s);
// out[t] = half(x[t] / rms(x[t]) * w): fp32 statistics, 16-bit output for the next GEMM.
void launch_rmsnorm(const float* x, const float* w, void* out, HalfType ht, int T, int dim, float eps, cudaStream_t s);
// Rotates n_heads heads of each of T rows ([T][n_heads][head_dim]) at positions pos0 + t,
// with the runtime's fp32 cos/sin tables ([max_tokens][head_dim/2]).
void launch_rope(float* x, const float* cos_t, const float* sin_t, int T, int n_heads, int head_dim, int32_t pos0,
                 bool interleaved, cudaStream_t s);
// out = half(silu(gate) * up), n elements.
void launch_swiglu(const float* gate, const float* up, void* out, HalfType ht, int64_t n, cudaStream_t s);
void launch_to_half(const float* x, void* out, HalfType ht, int64_t n, cudaStream_t s);
// Writes T tokens' K/V rows (fp32 [T][n_kv][head_dim]) into the paged pools as fp16 at the
// pool rows rows[t * n_kv + h], with their positions pos0 + t, marked live.
void launch_append_kv(const float* k, const float* v, const int32_t* rows, int32_t pos0, int T, int n_kv, int head_dim,
                      uint16_t* k_pool, uint16_t* v_pool, int32_t* pos_pool, uint8_t* live_pool, cudaStream_t s);
// Up to four device-to-device float copies in one launch (the emission gathers Q, K, V and
// lse rows of a layer into the step's emission arena with a single launch, not four
// memcpy calls: on small models the step time is API calls).
struct CopySeg {
  const float* src = nullptr;
  float* dst = nullptr;
  int64_t n = 0;
};
void launch_copy_segments(const CopySeg* segs, int n_segs, cudaStream_t s);
// Deterministic pseudo-random fill, uniform in [-scale, scale) (benchmarks and tests).
void launch_fill_random(float* x, int64_t n, uint64_t seed, float scale, cudaStream_t s);

// ---- attention.cu -------------------------------------------------------------------
// Device view of a paged KV cache (kernels/cuda/kv_cache.h). A stream (layer, KV head) has
// a block table row: tables[stream * max_pages + i] is the pool page holding its logical
// slots [i * page_size, (i + 1) * page_size), or -1 when that page is offloaded (not
// resident: attention never reads it and gives its slots probability 0).
struct PagedKV {
  const uint16_t* k = nullptr;  // [pool pages * page_size][head_dim] fp16
  const uint16_t* v = nullptr;
  const int32_t* pos = nullptr;   // [pool pages * page_size] token position of each row
  const uint8_t* live = nullptr;  // [pool pages * page_size] 0: evicted token (a hole)
  const int32_t* tables = nullptr;
  const int32_t* n_slots = nullptr;  // [streams]
  int max_pages = 0;                 // table row length
  int page_size = 16;
  int head_dim = 0;
};

// What the attention kernels write for the trace (all optional; null: not emitted).
struct Emission {
  float* probs = nullptr;  // decode: [batch][n_heads][stride]; prefill: [rows][n_heads][stride]
  int64_t stride = 0;      // >= the stream's slot count
  float* colsum = nullptr; // prefill: [n_heads][stride], sums over the queries before the rows
  int rows = 0;            // prefill: the last `rows` queries are written in full
};

struct DecodeArgs {
  PagedKV kv;
  const float* q = nullptr;  // [batch][n_heads][head_dim], RoPE applied
  float* out = nullptr;      // [batch][n_heads][head_dim]
  float* lse = nullptr;      // [batch][n_heads] (always written)
  int batch = 1, n_heads = 0, n_kv_heads = 0;
  int stream0 = 0;            // stream of (batch 0, KV head 0)
  int batch_stream_stride = 0;  // streams between consecutive batch entries
  int max_pages_used = 0;     // max over the launched streams of their table length
  int32_t qpos = 0;           // causal limit: slots with position > qpos are masked
  float scale = 1.0f;
  Emission emit;              // probs only
  float* scratch = nullptr;   // decode_scratch_floats(...) floats
  int64_t scratch_floats = 0;
};
// Split-K decode: each block takes a run of pages of one stream for every query head of
// its GQA group and leaves a partial (max, sum, acc); a second kernel combines the splits,
// writes out and lse and, when emitting, turns the scores into probabilities.
void launch_decode_attention(const DecodeArgs& a, cudaStream_t s);
int64_t decode_scratch_floats(int batch, int n_heads, int head_dim);
bool decode_supported(int head_dim, int group);

struct PrefillArgs {
  PagedKV kv;
  const float* q = nullptr;  // [T][n_heads][head_dim]
  float* out = nullptr;      // [T][n_heads][head_dim]
  float* lse = nullptr;      // [T][n_heads]
  int T = 0, n_heads = 0, n_kv_heads = 0;
  int stream0 = 0;
  int32_t pos0 = 0;  // query t sits at position pos0 + t
  float scale = 1.0f;
  Emission emit;     // probs of the last emit.rows queries, colsum over the others
};
// Tiled prefill attention with online softmax (one block per 16 queries of one head),
// then, when emitting, a second pass per key tile that recomputes p = exp(s - lse).
void launch_prefill_attention(const PrefillArgs& a, cudaStream_t s);

int sm_count();

}  // namespace kvscope::cuda
