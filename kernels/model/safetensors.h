#pragma once
// safetensors container: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32|F16|BF16|...", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data; offsets are relative to the end of the header.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace kvscope::safetensors {

struct TensorInfo {
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to data_offset
  uint64_t numel() const;
};

struct Header {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length
};

// Validates the header against the file size: JSON well-formed, every tensor's dtype
// known, shape * element size == end - begin, [begin, end) inside the file.
// Throws kvscope::Error "<path>: header: tensor 'x': ..." or "<path>: offset N: ...".
Header parse_header(std::span<const uint8_t> bytes, const std::string& path);

uint64_t dtype_size(const std::string& dtype);  // 0 when unknown

// Converts a tensor's bytes to fp32 (F32, F16, BF16; others throw naming the tensor).
std::vector<float> to_f32(std::span<const uint8_t> file_bytes, const Header& h, const std::string& name,
                          const std::string& path);

}  // namespace kvscope::safetensors
