#include "kernels/io/error.h"

namespace kvscope {

void fail(const std::string& file, const std::string& what) { throw Error(file + ": " + what); }

void fail_at(const std::string& file, uint64_t offset, const std::string& what) {
  throw Error(file + ": offset " + std::to_string(offset) + ": " + what);
}

}  // namespace kvscope
