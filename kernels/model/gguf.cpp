#include "kernels/model/gguf.h"

#include <cstring>

#include "kernels/io/byte_reader.h"
#include "kernels/io/error.h"
#include "kernels/io/halfs.h"

namespace kvscope::gguf {
namespace {

// GGUF metadata value types.
enum : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

constexpr uint64_t kMaxStringLen = 1ull << 30;
constexpr uint64_t kMaxDims = 4;

std::string read_string(ByteReader& r, std::string_view what) {
  const uint64_t len = r.read<uint64_t>(what);
  if (len > kMaxStringLen || len > r.remaining())
    r.error(std::string(what) + ": string length " + std::to_string(len) + " exceeds the file");
  return std::string(r.take_string(len, what));
}

nlohmann::json read_scalar(ByteReader& r, uint32_t type, std::string_view what) {
  switch (type) {
    case kU8: return r.read<uint8_t>(what);
    case kI8: return r.read<int8_t>(what);
    case kU16: return r.read<uint16_t>(what);
    case kI16: return r.read<int16_t>(what);
    case kU32: return r.read<uint32_t>(what);
    case kI32: return r.read<int32_t>(what);
    case kF32: return r.read<float>(what);
    case kBool: {
      uint8_t b = r.read<uint8_t>(what);
      if (b > 1) r.error(std::string(what) + ": bool value " + std::to_string(b) + " is not 0 or 1");
      return b != 0;
    }
    case kString: return read_string(r, what);
    case kU64: return r.read<uint64_t>(what);
    case kI64: return r.read<int64_t>(what);
    case kF64: return r.read<double>(what);
    default: r.error(std::string(what) + ": unknown value type " + std::to_string(type));
  }
}

uint64_t scalar_size(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: return 8;
    case kString: return 8;  // at least the length
    default: return 0;
  }
}

nlohmann::json read_value(ByteReader& r, uint32_t type, const std::string& key) {
  if (type != kArray) return read_scalar(r, type, "value of '" + key + "'");
  const uint32_t elem = r.read<uint32_t>("array element type of '" + key + "'");
  const uint64_t n = r.read<uint64_t>("array length of '" + key + "'");
  if (elem == kArray) r.error("metadata key '" + key + "': nested arrays are not supported");
  const uint64_t esz = scalar_size(elem);
  if (esz == 0) r.error("metadata key '" + key + "': unknown array element type " + std::to_string(elem));
  if (n > r.remaining() / esz)
    r.error("metadata key '" + key + "': array length " + std::to_string(n) + " exceeds the file");
  nlohmann::json arr = nlohmann::json::array();
  arr.get_ref<nlohmann::json::array_t&>().reserve(n);
  const std::string what = "element of '" + key + "'";
  for (uint64_t i = 0; i < n; ++i) arr.push_back(read_scalar(r, elem, what));
  return arr;
}

struct TypeTraits {
  uint64_t block;  // elements per block
  uint64_t bytes;  // bytes per block
};

bool traits(uint32_t t, TypeTraits& out) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: out = {1, 4}; return true;
    case GgmlType::F16: out = {1, 2}; return true;
    case GgmlType::BF16: out = {1, 2}; return true;
    case GgmlType::Q8_0: out = {32, 34}; return true;
    case GgmlType::Q4_0: out = {32, 18}; return true;
    case GgmlType::Q4_1: out = {32, 20}; return true;
    default: return false;
  }
}

}  // namespace

std::string type_name(uint32_t t) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::BF16: return "BF16";
  }
  return "type#" + std::to_string(t);
}

bool type_supported(uint32_t t) {
  TypeTraits tt;
  return traits(t, tt);
}

uint64_t TensorInfo::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

uint64_t type_nbytes(uint32_t t, uint64_t n, const std::string& path, const std::string& tensor) {
  TypeTraits tt;
  if (!traits(t, tt))
    fail(path, "tensor '" + tensor + "': unsupported type " + type_name(t) +
                   " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
  if (n % tt.block != 0)
    fail(path, "tensor '" + tensor + "': " + std::to_string(n) + " elements is not a multiple of the " +
                   type_name(t) + " block size " + std::to_string(tt.block));
  return n / tt.block * tt.bytes;
}

File parse(std::span<const uint8_t> bytes, const std::string& path) {
  ByteReader r(bytes, path);
  File f;
  f.path = path;
  auto magic = r.take_string(4, "magic");
  if (magic != "GGUF") fail_at(path, 0, "not a GGUF file (bad magic)");
  f.version = r.read<uint32_t>("version");
  if (f.version != 2 && f.version != 3)
    fail_at(path, 4, "unsupported GGUF version " + std::to_string(f.version) + " (supported: 2, 3)");
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Each kv needs >= 12 bytes, each tensor info >= 24: reject absurd counts early.
  if (n_kv > r.remaining() / 12) fail_at(path, 16, "metadata count " + std::to_string(n_kv) + " exceeds the file");
  if (n_tensors > r.remaining() / 24) fail_at(path, 8, "tensor count " + std::to_string(n_tensors) + " exceeds the file");

  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t at = r.offset();
    std::string key = read_string(r, "metadata key");
    const uint32_t type = r.read<uint32_t>("type of '" + key + "'");
    if (f.meta.contains(key)) fail_at(path, at, "duplicate metadata key '" + key + "'");
    f.meta[key] = read_value(r, type, key);
    f.meta_offset[key] = at;
  }
  if (f.meta.contains("general.alignment")) {
    const auto& a = f.meta["general.alignment"];
    if (!a.is_number_unsigned() || a.get<uint64_t>() == 0 || (a.get<uint64_t>() & (a.get<uint64_t>() - 1)) != 0 ||
        a.get<uint64_t>() > (1u << 20))
      fail_at(path, f.meta_offset["general.alignment"], "metadata key 'general.alignment': not a power of two");
    f.alignment = a.get<uint64_t>();
  }

  f.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.info_offset = r.offset();
    t.name = read_string(r, "tensor name");
    const uint32_t nd = r.read<uint32_t>("n_dims of '" + t.name + "'");
    if (nd == 0 || nd > kMaxDims)
      fail_at(path, t.info_offset, "tensor '" + t.name + "': n_dims " + std::to_string(nd) + " out of range 1..4");
    uint64_t n = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t dim = r.read<uint64_t>("dims of '" + t.name + "'");
      if (dim == 0 || dim > (1ull << 40) || n > (1ull << 42) / dim)
        fail_at(path, t.info_offset, "tensor '" + t.name + "': dimension " + std::to_string(dim) + " out of range");
      n *= dim;
      t.dims.push_back(dim);
    }
    t.type = r.read<uint32_t>("type of '" + t.name + "'");
    t.offset = r.read<uint64_t>("offset of '" + t.name + "'");
    f.tensors.push_back(std::move(t));
  }
  const uint64_t a = f.alignment;
  f.data_offset = (r.offset() + a - 1) / a * a;
  if (f.data_offset > bytes.size() && n_tensors > 0)
    fail_at(path, r.offset(), "data section starts past end of file");
  // Bounds of every tensor whose type we know the size of.
  for (const auto& t : f.tensors) {
    TypeTraits tt;
    if (!traits(t.type, tt)) continue;  // reported when (if) the tensor is loaded
    const uint64_t n = t.n_elements();
    if (n % tt.block != 0) continue;
    const uint64_t nbytes = n / tt.block * tt.bytes;
    if (t.offset % a != 0)
      fail_at(path, t.info_offset, "tensor '" + t.name + "': data offset " + std::to_string(t.offset) +
                                       " not aligned to " + std::to_string(a));
    const uint64_t data_size = bytes.size() >= f.data_offset ? bytes.size() - f.data_offset : 0;
    if (t.offset > data_size || nbytes > data_size - t.offset)
      fail_at(path, t.info_offset, "tensor '" + t.name + "': data [" + std::to_string(f.data_offset + t.offset) +
                                       ", +" + std::to_string(nbytes) + ") lies outside the file (size " +
                                       std::to_string(bytes.size()) + ")");
  }
  return f;
}

void dequantize(uint32_t t, const uint8_t* src, float* dst, uint64_t n) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: std::memcpy(dst, src, n * 4); return;
    case GgmlType::F16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case GgmlType::BF16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case GgmlType::Q8_0:  // block: fp16 d, 32 x int8 q; x = d * q
      for (uint64_t b = 0; b < n / 32; ++b, src += 34, dst += 32) {
        uint16_t h;
        std::memcpy(&h, src, 2);
        const float d = f16_to_f32(h);
        const auto* q = reinterpret_cast<const int8_t*>(src + 2);
        for (int j = 0; j < 32; ++j) dst[j] = d * static_cast<float>(q[j]);
      }
      return;
    case GgmlType::Q4_0:  // block: fp16 d, 16 bytes; x[j] = d*(lo(q[j])-8), x[j+16] = d*(hi(q[j])-8)
      for (uint64_t b = 0; b < n / 32; ++b, src += 18, dst += 32) {
        uint16_t h;
        std::memcpy(&h, src, 2);
        const float d = f16_to_f32(h);
        const uint8_t* q = src + 2;
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * static_cast<float>(static_cast<int>(q[j] & 0x0f) - 8);
          dst[j + 16] = d * static_cast<float>(static_cast<int>(q[j] >> 4) - 8);
        }
      }
      return;
    case GgmlType::Q4_1:  // block: fp16 d, fp16 m, 16 bytes; x = d*q + m
      for (uint64_t b = 0; b < n / 32; ++b, src += 20, dst += 32) {
        uint16_t hd, hm;
        std::memcpy(&hd, src, 2);
        std::memcpy(&hm, src + 2, 2);
        const float d = f16_to_f32(hd), m = f16_to_f32(hm);
        const uint8_t* q = src + 4;
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * static_cast<float>(q[j] & 0x0f) + m;
          dst[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
        }
      }
      return;
    default: throw Error("dequantize: unsupported type " + type_name(t));
  }
}

const nlohmann::json& get(const File& f, const std::string& key) {
  auto it = f.meta.find(key);
  if (it == f.meta.end()) fail(f.path, "metadata key '" + key + "' is missing");
  return *it;
}

static std::string where(const File& f, const std::string& key) {
  auto it = f.meta_offset.find(key);
  return it == f.meta_offset.end() ? f.path : f.path + ": offset " + std::to_string(it->second);
}

int64_t get_int(const File& f, const std::string& key) {
  const auto& v = get(f, key);
  if (!v.is_number_integer()) throw Error(where(f, key) + ": metadata key '" + key + "': expected an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    throw Error(where(f, key) + ": metadata key '" + key + "': value out of range");
  return v.get<int64_t>();
}

double get_float(const File& f, const std::string& key) {
  const auto& v = get(f, key);
  if (!v.is_number()) throw Error(where(f, key) + ": metadata key '" + key + "': expected a number");
  return v.get<double>();
}

std::string get_string(const File& f, const std::string& key) {
  const auto& v = get(f, key);
  if (!v.is_string()) throw Error(where(f, key) + ": metadata key '" + key + "': expected a string");
  return v.get<std::string>();
}

}  // namespace kvscope::gguf
