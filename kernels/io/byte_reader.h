#pragma once
// Bounds-checked little-endian cursor over a byte span. Every failure names the
// file and the byte offset where the read was attempted.
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "kernels/io/error.h"

namespace kvscope {

class ByteReader {
 public:
  ByteReader(std::span<const uint8_t> bytes, std::string file) : bytes_(bytes), file_(std::move(file)) {}

  uint64_t offset() const { return off_; }
  uint64_t size() const { return bytes_.size(); }
  uint64_t remaining() const { return bytes_.size() - off_; }
  const std::string& file() const { return file_; }
  void seek(uint64_t off) {
    if (off > bytes_.size()) fail_at(file_, off, "seek past end of file (size " + std::to_string(bytes_.size()) + ")");
    off_ = off;
  }

  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + off_, sizeof(T));
    off_ += sizeof(T);
    return v;
  }

  std::span<const uint8_t> take(uint64_t n, std::string_view what) {
    need(n, what);
    auto s = bytes_.subspan(off_, n);
    off_ += n;
    return s;
  }

  std::string_view take_string(uint64_t n, std::string_view what) {
    auto s = take(n, what);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining())
      fail_at(file_, off_,
              "truncated while reading " + std::string(what) + " (need " + std::to_string(n) + " bytes, " +
                  std::to_string(remaining()) + " left)");
  }

  [[noreturn]] void error(std::string_view what) const { fail_at(file_, off_, std::string(what)); }

 private:
  std::span<const uint8_t> bytes_;
  std::string file_;
  uint64_t off_ = 0;
};

}  // namespace kvscope
