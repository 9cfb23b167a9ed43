#pragma once
// GGUF container parser (versions 2 and 3), as written by llama.cpp's converters.
// Layout: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv typed key/values,
// n_tensors tensor infos (name, n_dims, dims[ne0 innermost], type, offset), padding to
// general.alignment (default 32), then tensor data.
// The parser works on a byte span so that the fuzz target can drive it directly.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvscope::gguf {

// ggml tensor types we know by name (ids from ggml.h). Only some are dequantizable.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};
std::string type_name(uint32_t t);
bool type_supported(uint32_t t);  // F32, F16, BF16, Q8_0, Q4_0, Q4_1

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ne[0] first: the innermost (row length)
  uint32_t type = 0;
  uint64_t offset = 0;         // relative to the data section
  uint64_t info_offset = 0;    // where this info record starts in the file (for errors)
  uint64_t n_elements() const;
};

struct File {
  std::string path;
  uint32_t version = 0;
  nlohmann::json meta = nlohmann::json::object();  // key -> value (arrays become JSON arrays)
  std::map<std::string, uint64_t> meta_offset;      // key -> byte offset of its record
  std::vector<TensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute offset of the data section
};

// Parses header, metadata and tensor infos; checks that every tensor lies inside
// the file. Throws kvscope::Error naming the file and byte offset.
File parse(std::span<const uint8_t> bytes, const std::string& path);

// Byte size of n elements of type t (n must be a multiple of the block size).
uint64_t type_nbytes(uint32_t t, uint64_t n, const std::string& path, const std::string& tensor);

// Dequantizes n elements of type t from src into dst (F32/F16/BF16/Q8_0/Q4_0/Q4_1).
void dequantize(uint32_t t, const uint8_t* src, float* dst, uint64_t n);

// Metadata accessors that throw "<path>: metadata key 'k': ..." errors.
const nlohmann::json& get(const File& f, const std::string& key);
int64_t get_int(const File& f, const std::string& key);
double get_float(const File& f, const std::string& key);
std::string get_string(const File& f, const std::string& key);

}  // namespace kvscope::gguf
