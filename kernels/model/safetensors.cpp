#include "kernels/model/safetensors.h"

#include <cstring>

#include <nlohmann/json.hpp>

#include "kernels/io/byte_reader.h"
#include "kernels/io/error.h"
#include "kernels/io/halfs.h"

namespace kvscope::safetensors {

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

uint64_t dtype_size(const std::string& t) {
  if (t == "F64" || t == "I64" || t == "U64") return 8;
  if (t == "F32" || t == "I32" || t == "U32") return 4;
  if (t == "F16" || t == "BF16" || t == "I16" || t == "U16") return 2;
  if (t == "I8" || t == "U8" || t == "BOOL" || t == "F8_E4M3" || t == "F8_E5M2") return 1;
  return 0;
}

Header parse_header(std::span<const uint8_t> bytes, const std::string& path) {
  ByteReader r(bytes, path);
  const uint64_t n = r.read<uint64_t>("header length");
  if (n > r.remaining() || n > (100ull << 20))
    fail_at(path, 0, "header length " + std::to_string(n) + " exceeds the file (size " + std::to_string(bytes.size()) + ")");
  auto text = r.take_string(n, "header");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail_at(path, 8 + e.byte, std::string("header is not valid JSON: ") + e.what());
  } catch (const nlohmann::json::exception& e) {  // e.g. a number out of range
    fail_at(path, 8, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail_at(path, 8, "header: expected a JSON object");
  Header h;
  h.data_offset = 8 + n;
  const uint64_t data_size = bytes.size() - h.data_offset;
  for (auto& [name, v] : j.items()) {
    const std::string where = "header: tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, "header: __metadata__: expected an object");
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) fail(path, "header: __metadata__." + k + ": expected a string");
        h.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail(path, where + ": expected an object");
    TensorInfo t;
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail(path, where + ": dtype: missing or not a string");
    t.dtype = v["dtype"].get<std::string>();
    const uint64_t esz = dtype_size(t.dtype);
    if (esz == 0) fail(path, where + ": dtype: unknown dtype '" + t.dtype + "'");
    if (!v.contains("shape") || !v["shape"].is_array()) fail(path, where + ": shape: missing or not an array");
    uint64_t numel = 1;
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) fail(path, where + ": shape: entries must be non-negative integers");
      const uint64_t x = d.get<uint64_t>();
      if (x != 0 && numel > (1ull << 50) / x) fail(path, where + ": shape: too many elements");
      numel *= x;
      t.shape.push_back(x);
    }
    const auto& off = v.contains("data_offsets") ? v["data_offsets"] : nlohmann::json();
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(path, where + ": data_offsets: expected [begin, end]");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      fail_at(path, h.data_offset + t.begin,
              where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                  ") outside the data section (size " + std::to_string(data_size) + ")");
    if (t.end - t.begin != numel * esz)
      fail(path, where + ": data_offsets span " + std::to_string(t.end - t.begin) + " bytes but shape x dtype needs " +
                     std::to_string(numel * esz));
    h.tensors.emplace(name, std::move(t));
  }
  return h;
}

std::vector<float> to_f32(std::span<const uint8_t> file_bytes, const Header& h, const std::string& name,
                          const std::string& path) {
  auto it = h.tensors.find(name);
  if (it == h.tensors.end()) fail(path, "tensor '" + name + "' is missing");
  const TensorInfo& t = it->second;
  const uint8_t* src = file_bytes.data() + h.data_offset + t.begin;
  const uint64_t n = t.numel();
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    std::memcpy(out.data(), src, n * 4);
  } else if (t.dtype == "F16" || t.dtype == "BF16") {
    const bool bf = t.dtype == "BF16";
    for (uint64_t i = 0; i < n; ++i) {
      uint16_t x;
      std::memcpy(&x, src + 2 * i, 2);
      out[i] = bf ? bf16_to_f32(x) : f16_to_f32(x);
    }
  } else {
    fail(path, "tensor '" + name + "': dtype " + t.dtype + " is not supported (supported: F32, F16, BF16)");
  }
  return out;
}

}  // namespace kvscope::safetensors
