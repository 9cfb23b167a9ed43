// Fuzzes the safetensors header parser and the fp32 conversion of accepted tensors.
#include <cstdint>

#include "kernels/io/error.h"
#include "kernels/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope;
  try {
    const auto h = safetensors::parse_header({data, size}, "fuzz.safetensors");
    for (const auto& [name, t] : h.tensors) {
      if (h.data_offset + t.end > size) __builtin_trap();  // parse_header guarantees bounds
      if (t.numel() > (1u << 16)) continue;
      try {
        (void)safetensors::to_f32({data, size}, h, name, "fuzz.safetensors");
      } catch (const Error&) {
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
