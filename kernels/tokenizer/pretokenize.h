#pragma once
// Hand-written pre-tokenizers for byte-level BPE (private to kernels/tokenizer).
// Each scheme reproduces what a backtracking regex engine (PCRE / Oniguruma, as used by
// tiktoken, Hugging Face tokenizers and llama.cpp) yields for the pattern, scanning
// left to right and taking the first alternative that matches at each position.
//
//   Gpt2   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Smollm every \p{N} character is a piece of its own; the text between digits is
//          split with Gpt2 (HF Sequence[Digits(individual_digits), ByteLevel]).
//   Llama3 (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace kvscope::pretok {

enum class Scheme { Gpt2, Smollm, Llama3 };

// "gpt2"/"default"/"gpt-2", "smollm", "llama3"/"llama-bpe"/"llama-v3"; nullopt otherwise.
std::optional<Scheme> scheme_from_name(std::string_view name);

struct Span {
  uint32_t offset, len;  // bytes of the text
};

// Pieces in order; together they cover the whole text.
std::vector<Span> split(std::string_view text, Scheme scheme);

}  // namespace kvscope::pretok
