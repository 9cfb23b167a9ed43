#pragma once
// Small inline vector helpers for the CPU hot loops (AVX2+FMA when the build targets it,
// plain loops otherwise). Each function adds in a fixed order, so a given build is
// deterministic; AVX2 and scalar builds may differ in the last bits.
#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KVSCOPE_AVX2 1
#endif

namespace kvscope::cpu::simd {

#ifdef KVSCOPE_AVX2
inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// {hsum(a), hsum(b), hsum(c), hsum(d)}
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// e^x for x <= 0 (attention exponents after max subtraction); x below -87 gives 0.
// Cody–Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 Taylor
// polynomial of e^r (max relative error ~2e-7 on the reduced range), scaled by 2^n.
inline __m256 exp_neg(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}
#endif

inline float dot(const float* __restrict a, const float* __restrict b, int n) {
  int i = 0;
  float s = 0;
#ifdef KVSCOPE_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  s = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[r] = dot(q, rows + r * hd, hd) for r < 8.
inline void dot_rows8(const float* __restrict q, const float* __restrict rows, int hd, float* out) {
#ifdef KVSCOPE_AVX2
  if (hd % 8 == 0) {
    __m256 acc[8];
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows + r * hd + d), acc[r]);
    }
    _mm_storeu_ps(out, hsum4(acc[0], acc[1], acc[2], acc[3]));
    _mm_storeu_ps(out + 4, hsum4(acc[4], acc[5], acc[6], acc[7]));
    return;
  }
#endif
  for (int r = 0; r < 8; ++r) out[r] = dot(q, rows + r * hd, hd);
}

// y += a * x
inline void axpy(float a, const float* __restrict x, float* __restrict y, int n) {
  int i = 0;
#ifdef KVSCOPE_AVX2
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// o[0..hd) += sum_j p[j] * V[j*hd .. j*hd+hd)  for j < n (V rows contiguous).
inline void weighted_rows(const float* __restrict p, const float* __restrict V, int n, int hd, float* __restrict o) {
#ifdef KVSCOPE_AVX2
  if (hd % 8 == 0) {
    for (int d = 0; d < hd; d += 8) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      int j = 0;
      for (; j + 4 <= n; j += 4) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(V + j * hd + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 1]), _mm256_loadu_ps(V + (j + 1) * hd + d), a1);
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 2]), _mm256_loadu_ps(V + (j + 2) * hd + d), a2);
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 3]), _mm256_loadu_ps(V + (j + 3) * hd + d), a3);
      }
      for (; j < n; ++j) a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(V + j * hd + d), a0);
      const __m256 sum = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
      _mm256_storeu_ps(o + d, _mm256_add_ps(_mm256_loadu_ps(o + d), sum));
    }
    return;
  }
#endif
  for (int j = 0; j < n; ++j) axpy(p[j], V + j * hd, o, hd);
}

// x[i] = exp(x[i] - mx), with -inf entries -> 0; returns the sum (lanes added in a fixed order).
inline double exp_shift_sum(float* x, int n, float mx) {
  int i = 0;
  double sum = 0;
#ifdef KVSCOPE_AVX2
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  sum = hsum(acc);
#endif
  for (; i < n; ++i) {
    const float e = x[i] == -INFINITY ? 0.0f : std::exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  return sum;
}

}  // namespace kvscope::cpu::simd
