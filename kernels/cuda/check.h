#pragma once
// Error checks for CUDA runtime and cuBLAS calls: failures become kvscope::Error naming the
// call and the file:line, so `main` prints them like every other error.
#include <cuda_runtime.h>

#include <string>

#include "kernels/io/error.h"

namespace kvscope::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e) + " (" + file + ":" + std::to_string(line) + ")");
}

}  // namespace kvscope::cuda

#define KVS_CUDA(call)                                                                      \
  do {                                                                                      \
    const cudaError_t kvs_e_ = (call);                                                      \
    if (kvs_e_ != cudaSuccess) ::kvscope::cuda::throw_cuda(kvs_e_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: catches bad launch configurations at once (not asynchronous faults).
#define KVS_LAUNCHED(name) KVS_CUDA(cudaGetLastError())
