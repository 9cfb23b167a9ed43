#pragma once
// On-disk structures of the kvscope trace format, version 1 (docs/trace-format.md).
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvscope::trace {

inline constexpr uint32_t kVersion = 1;
inline constexpr char kFileMagic[8] = {'K', 'V', 'S', 'T', 'R', 'A', 'C', 'E'};
inline constexpr char kChunkMagic[4] = {'C', 'H', 'N', 'K'};
inline constexpr char kIndexMagic[8] = {'K', 'V', 'S', 'I', 'N', 'D', 'E', 'X'};
inline constexpr char kEndMagic[8] = {'K', 'V', 'S', 'T', 'E', 'N', 'D', '\0'};

inline constexpr size_t kFileHeaderBytes = 32;
inline constexpr size_t kChunkHeaderBytes = 48;
inline constexpr size_t kFrameEntryBytes = 24;
inline constexpr size_t kIndexEntryBytes = 24;
inline constexpr size_t kTrailerBytes = 32;

enum class StepKind : uint32_t { Prefill = 0, Decode = 1 };
enum class Mode { Dense, TopK };

struct FrameEntry {
  uint64_t compressed_size = 0;
  uint64_t raw_size = 0;
  uint32_t crc = 0;
};

struct IndexEntry {
  uint64_t chunk_offset = 0;
  uint32_t first_step = 0;
  uint32_t n_steps = 0;
  uint64_t chunk_bytes = 0;
};

// Little-endian field packing (the format is LE; so is every machine we build for).
template <class T>
inline void put(std::vector<uint8_t>& out, T v) {
  const size_t n = out.size();
  out.resize(n + sizeof(T));
  std::memcpy(out.data() + n, &v, sizeof(T));
}

}  // namespace kvscope::trace
