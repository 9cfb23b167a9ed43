#pragma once
// CPU reference kernels. Deterministic: every output element is computed by one
// thread in a fixed order, so results are bitwise identical for any thread count.
#include <cstdint>

namespace kvscope::cpu {

// Y[t][o] = sum_i W[o][i] * X[t][i]   for t < T, o < out.  W row-major [out][in].
void matmul(const float* W, const float* X, float* Y, int T, int in, int out, int threads);

// y = x / sqrt(mean(x^2) + eps) * w   (one row of n)
void rmsnorm(const float* x, const float* w, float* y, int n, float eps);

// x[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g))
void swiglu(float* gate, const float* up, int n);

// In-place softmax over n entries; returns log(sum(exp(x))) of the input (the log-sum-exp).
float softmax(float* x, int n);

}  // namespace kvscope::cpu
