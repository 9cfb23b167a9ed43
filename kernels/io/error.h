#pragma once
// kvscope's one error type. Library code throws; only main() decides the exit code.
// Messages name the file and, where it applies, the field or byte offset:
//   "model.gguf: offset 1234: tensor 'blk.0.attn_q.weight': unsupported type Q5_K"
#include <cstdint>
#include <stdexcept>
#include <string>

namespace kvscope {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<file>: <what>"
[[noreturn]] void fail(const std::string& file, const std::string& what);
// "<file>: offset <off>: <what>"
[[noreturn]] void fail_at(const std::string& file, uint64_t offset, const std::string& what);

}  // namespace kvscope
