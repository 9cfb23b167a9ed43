#pragma once
// Decode-attention bandwidth benchmark on random data (kvscope gpu-bench attention):
// a paged fp16 KV cache of one layer for `batch` sequences of `ctx` tokens, one decode
// query per sequence. Reports the achieved HBM bandwidth of the attention kernels.
#include <cstdint>

namespace kvscope::cuda {

struct DecodeBenchConfig {
  int ctx = 4096, batch = 1;
  int n_heads = 32, n_kv_heads = 8, head_dim = 128, page_size = 16;
  int iters = 50;
};

struct DecodeBenchResult {
  double us = 0;           // per call, emission off (split + combine kernels)
  double us_emit = 0;      // per call, probabilities emitted
  double bytes = 0;        // K + V + position + live bytes read per call
  double bytes_per_s = 0;  // bytes / time, emission off
  int copies = 1;          // independent caches rotated so the working set exceeds L2
};

DecodeBenchResult bench_decode_attention(const DecodeBenchConfig& c);

}  // namespace kvscope::cuda
