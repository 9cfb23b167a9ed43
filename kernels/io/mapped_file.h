#pragma once
// Read-only memory map of a whole file. Move-only; unmaps on destruction.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace kvscope {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws Error naming the path when the file is missing or unreadable.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Whole file into memory (for small text files: JSON configs, tokenizers).
std::string read_text_file(const std::string& path);

}  // namespace kvscope
