#include "kernels/cpu/ops.h"

#include <cmath>

#include "kernels/cpu/simd.h"

namespace kvscope::cpu {

using simd::dot;

namespace {

// Four rows of W against one X row: each loaded X vector feeds four FMAs.
inline void dot4(const float* __restrict w0, const float* __restrict x, int n, int64_t stride, float* out) {
  const float* w1 = w0 + stride;
  const float* w2 = w1 + stride;
  const float* w3 = w2 + stride;
  int i = 0;
  float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
#ifdef KVSCOPE_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xv, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xv, a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xv, a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xv, a3);
  }
  float r[4];
  _mm_storeu_ps(r, simd::hsum4(a0, a1, a2, a3));
  t0 = r[0];
  t1 = r[1];
  t2 = r[2];
  t3 = r[3];
#endif
  for (; i < n; ++i) {
    t0 += w0[i] * x[i];
    t1 += w1[i] * x[i];
    t2 += w2[i] * x[i];
    t3 += w3[i] * x[i];
  }
  out[0] = t0;
  out[1] = t1;
  out[2] = t2;
  out[3] = t3;
}

}  // namespace

void matmul(const float* W, const float* X, float* Y, int T, int in, int out, int threads) {
  const int64_t work = static_cast<int64_t>(T) * in * out;
  const int nt = (threads > 1 && work >= (1 << 17)) ? threads : 1;
  const int blocks = (out + 3) / 4;
  // Parallel over blocks of 4 output rows; each block sweeps all T inputs while its
  // rows are hot in L1.
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int b = 0; b < blocks; ++b) {
    const int o = b * 4;
    if (o + 4 <= out) {
      for (int t = 0; t < T; ++t) {
        float r[4];
        dot4(W + static_cast<int64_t>(o) * in, X + static_cast<int64_t>(t) * in, in, in, r);
        float* y = Y + static_cast<int64_t>(t) * out + o;
        y[0] = r[0];
        y[1] = r[1];
        y[2] = r[2];
        y[3] = r[3];
      }
    } else {
      for (int oo = o; oo < out; ++oo)
        for (int t = 0; t < T; ++t)
          Y[static_cast<int64_t>(t) * out + oo] = dot(W + static_cast<int64_t>(oo) * in, X + static_cast<int64_t>(t) * in, in);
    }
  }
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
