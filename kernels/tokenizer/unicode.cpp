#include "kernels/tokenizer/unicode.h"

#include <algorithm>

#include "kernels/tokenizer/unicode_tables.h"

namespace kvscope::unicode {

namespace {

// Returns the length of a valid UTF-8 sequence at p (n bytes available) and its code
// point, or 0 when the bytes there are not valid UTF-8 (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF).
size_t decode_one(const unsigned char* p, size_t n, uint32_t& cp) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  size_t len;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (len > n) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

bool in_ranges(const unicode_tables::CodepointRange* r, size_t n, uint32_t cp) {
  // First range whose last >= cp; cp is inside when that range also starts at or before it.
  const auto* end = r + n;
  const auto* it = std::lower_bound(r, end, cp, [](const unicode_tables::CodepointRange& a, uint32_t v) {
    return a.last < v;
  });
  return it != end && it->first <= cp;
}

uint8_t flags_slow(uint32_t cp) {
  uint8_t f = 0;
  if (in_ranges(unicode_tables::kLetter, unicode_tables::kLetterCount, cp)) f |= kLetter;
  if (in_ranges(unicode_tables::kNumber, unicode_tables::kNumberCount, cp)) f |= kNumber;
  if (in_ranges(unicode_tables::kWhitespace, unicode_tables::kWhitespaceCount, cp)) f |= kSpace;
  return f;
}

struct Latin1Flags {
  std::array<uint8_t, 256> f{};
  Latin1Flags() {
    for (uint32_t c = 0; c < 256; ++c) f[c] = flags_slow(c);
  }
};

bool printable_byte(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }

struct ByteTables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 256 + 68> from_cp{};  // indexed by code point < 324
  ByteTables() {
    from_cp.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = printable_byte(b) ? static_cast<uint32_t>(b) : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

std::vector<Char> decode_utf8(std::string_view text) {
  std::vector<Char> out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    uint32_t cp = 0;
    size_t len = decode_one(p + i, text.size() - i, cp);
    if (len == 0) cp = kInvalid, len = 1;
    out.push_back({cp, static_cast<uint32_t>(i), static_cast<uint32_t>(len)});
    i += len;
  }
  return out;
}

size_t char_len_at(std::string_view text, size_t pos) {
  uint32_t cp = 0;
  size_t len = decode_one(reinterpret_cast<const unsigned char*>(text.data()) + pos, text.size() - pos, cp);
  return len == 0 ? 1 : len;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

uint8_t flags(uint32_t cp) {
  static const Latin1Flags latin1;
  if (cp < 256) return latin1.f[cp];
  if (cp == kInvalid) return 0;
  return flags_slow(cp);
}

const std::array<uint32_t, 256>& byte_to_cp() { return byte_tables().to_cp; }

int byte_from_cp(uint32_t cp) {
  const auto& t = byte_tables();
  return cp < t.from_cp.size() ? t.from_cp[cp] : -1;
}

}  // namespace kvscope::unicode
