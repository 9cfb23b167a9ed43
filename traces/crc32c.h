#pragma once
// CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, init/xor-out 0xFFFFFFFF.
// crc32c("123456789") == 0xE3069283. Hardware instruction when the build has SSE4.2.
#include <cstddef>
#include <cstdint>

namespace kvscope {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace kvscope
