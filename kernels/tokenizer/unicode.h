#pragma once
// UTF-8 and Unicode-class helpers for the tokenizers (private to kernels/tokenizer).
// Class data comes from the generated range tables (scripts/gen_unicode_tables.py).
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvscope::unicode {

// One decoded character: its code point and where its bytes lie in the text.
// A byte that does not start a valid UTF-8 sequence (stray continuation byte, overlong
// form, surrogate, truncated sequence) becomes a one-byte character with code point
// kInvalid; it belongs to no class, so pre-tokenizers treat it like punctuation and the
// byte-level engine still maps its raw byte, keeping encoding lossless.
struct Char {
  uint32_t cp;
  uint32_t offset;
  uint32_t len;
};
inline constexpr uint32_t kInvalid = 0xFFFFFFFFu;

std::vector<Char> decode_utf8(std::string_view text);
// Byte length of the valid UTF-8 character at text[pos] (1 for an invalid byte).
size_t char_len_at(std::string_view text, size_t pos);
void append_utf8(std::string& out, uint32_t cp);

enum Flags : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4 };
uint8_t flags(uint32_t cp);
inline bool is_letter(uint32_t cp) { return flags(cp) & kLetter; }
inline bool is_number(uint32_t cp) { return flags(cp) & kNumber; }
inline bool is_space(uint32_t cp) { return flags(cp) & kSpace; }

// GPT-2 bytes_to_unicode(): printable bytes map to themselves, the other 68 to U+0100...
const std::array<uint32_t, 256>& byte_to_cp();
// Inverse of byte_to_cp(); -1 for code points outside the table.
int byte_from_cp(uint32_t cp);

}  // namespace kvscope::unicode
