// Fuzzes the GGUF container parser, the tokenizer reader of its metadata, and the
// dequantizers on whatever tensors the parser accepted.
#include <cstdint>
#include <vector>

#include "kernels/io/error.h"
#include "kernels/model/gguf.h"
#include "kernels/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope;
  try {
    const gguf::File f = gguf::parse({data, size}, "fuzz.gguf");
    for (const auto& t : f.tensors) {
      if (!gguf::type_supported(t.type)) continue;
      const uint64_t n = t.n_elements();
      if (n > (1u << 16)) continue;
      uint64_t nbytes;
      try {
        nbytes = gguf::type_nbytes(t.type, n, f.path, t.name);
      } catch (const Error&) {
        continue;
      }
      // parse() guarantees the bytes are inside the input.
      if (f.data_offset + t.offset + nbytes > size) __builtin_trap();
      std::vector<float> out(n);
      gguf::dequantize(t.type, data + f.data_offset + t.offset, out.data(), n);
    }
    try {
      Tokenizer tok(vocab_from_gguf(f));
      auto ids = tok.encode("Hello world 123 \xC3\xA9t\xC3\xA9", true);
      (void)tok.decode(ids);
    } catch (const Error&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
