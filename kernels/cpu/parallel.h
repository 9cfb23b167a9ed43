#pragma once
// parallel_for(n, threads, f): f(i) for i in [0, n), statically split over `threads`
// OpenMP threads; a plain loop (no OpenMP runtime call at all) when threads <= 1.
#include <omp.h>

namespace kvscope::cpu {

template <class F>
inline void parallel_for(int n, int threads, F&& f) {
  if (threads <= 1 || n <= 1) {
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int i = 0; i < n; ++i) f(i);
}

// Index of the calling thread inside parallel_for (0 outside).
inline int thread_index() { return omp_in_parallel() ? omp_get_thread_num() : 0; }

}  // namespace kvscope::cpu
