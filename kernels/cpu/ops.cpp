#include "kernels/cpu/ops.h"

#include <cmath>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"

namespace kvscope::cpu {

using simd::dot;

namespace {

// Four rows of W against N rows of X: Y[t][o + r] for r < 4, t < N. Each loaded W vector
// feeds N FMAs and each X vector four. The sum for one (row, token) pair is accumulated
// in the same order whatever N is, so batched prefill and one-token decode agree bitwise.
template <int N>
inline void kernel_4xN(const float* __restrict w, const float* __restrict x, int n, int64_t ldw, int64_t ldx,
                       float* __restrict y, int64_t ldy) {
  int i = 0;
  float t[4][N] = {};
#ifdef KVSCOPE_AVX2
  __m256 acc[4][N];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < N; ++c) acc[r][c] = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 xv[N];
    for (int c = 0; c < N; ++c) xv[c] = _mm256_loadu_ps(x + c * ldx + i);
    for (int r = 0; r < 4; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * ldw + i);
      for (int c = 0; c < N; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  for (int c = 0; c < N; ++c) {
    float r4[4];
    _mm_storeu_ps(r4, simd::hsum4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]));
    for (int r = 0; r < 4; ++r) t[r][c] = r4[r];
  }
#endif
  for (; i < n; ++i)
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < N; ++c) t[r][c] += w[r * ldw + i] * x[c * ldx + i];
  for (int c = 0; c < N; ++c)
    for (int r = 0; r < 4; ++r) y[c * ldy + r] = t[r][c];
}

}  // namespace

void matmul(const float* W, const float* X, float* Y, int T, int in, int out, int threads) {
  const int64_t work = static_cast<int64_t>(T) * in * out;
  const int nt = (threads > 1 && work >= (1 << 17)) ? threads : 1;
  const int blocks = (out + 3) / 4;
  // Parallel over blocks of 4 output rows; each block sweeps all T inputs, two at a
  // time, while its rows are hot in L1.
  parallel_for(blocks, nt, [&](int b) {
    const int o = b * 4;
    const float* w = W + static_cast<int64_t>(o) * in;
    if (o + 4 <= out) {
      int t = 0;
      for (; t + 2 <= T; t += 2)
        kernel_4xN<2>(w, X + static_cast<int64_t>(t) * in, in, in, in, Y + static_cast<int64_t>(t) * out + o, out);
      for (; t < T; ++t)
        kernel_4xN<1>(w, X + static_cast<int64_t>(t) * in, in, in, in, Y + static_cast<int64_t>(t) * out + o, out);
    } else {
      for (int oo = o; oo < out; ++oo)
        for (int t = 0; t < T; ++t)
          Y[static_cast<int64_t>(t) * out + oo] = dot(W + static_cast<int64_t>(oo) * in, X + static_cast<int64_t>(t) * in, in);
    }
  });
}

void rmsnorm(const float* x, const float* w, float* y, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void swiglu(float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

float softmax(float* x, int n) {
  float mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const float e = std::exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
  return mx + static_cast<float>(std::log(sum));
}

}  // namespace kvscope::cpu
