#include "kernels/tokenizer/pretokenize.h"

#include "kernels/tokenizer/unicode.h"

namespace kvscope::pretok {

namespace {

using unicode::Char;

// Character class as the patterns see it: \p{L}, \p{N}, \s, or anything else.
enum Cls : uint8_t { L, N, S, O };

struct Cursor {
  const std::vector<Char>& c;
  std::vector<Cls> cls;
  explicit Cursor(const std::vector<Char>& chars) : c(chars), cls(chars.size()) {
    for (size_t i = 0; i < chars.size(); ++i) {
      const uint8_t f = unicode::flags(chars[i].cp);
      cls[i] = (f & unicode::kLetter) ? L : (f & unicode::kNumber) ? N : (f & unicode::kSpace) ? S : O;
    }
  }
  uint32_t cp(size_t i) const { return c[i].cp; }
  // End of the run of class k starting at i (bounded by e).
  size_t run(size_t i, size_t e, Cls k) const {
    while (i < e && cls[i] == k) ++i;
    return i;
  }
};

uint32_t ascii_lower(uint32_t cp) { return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp; }

// 's|'t|'re|'ve|'m|'ll|'d at i; returns the end or 0 when none matches.
size_t contraction(const Cursor& k, size_t i, size_t e, bool ignore_case) {
  if (k.cp(i) != '\'' || i + 1 >= e) return 0;
  auto at = [&](size_t j) { return ignore_case ? ascii_lower(k.cp(j)) : k.cp(j); };
  const uint32_t a = at(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= e) return 0;
  const uint32_t b = at(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// \s+(?!\S)|\s+ at i, where cls[i] == S: a run of whitespace followed by a non-space
// gives back its last character (it then leads the next piece), unless the run is one
// character long.
size_t trailing_space(const Cursor& k, size_t i, size_t e) {
  const size_t end = k.run(i, e, S);
  if (end == e) return end;
  return end - i >= 2 ? end - 1 : end;
}

size_t gpt2_match(const Cursor& k, size_t i, size_t e) {
  if (size_t end = contraction(k, i, e, false)) return end;
  // ' ?X+' for X in {L, N, other}: an optional leading space joins a following non-space.
  size_t j = i;
  if (k.cp(i) == ' ' && i + 1 < e && k.cls[i + 1] != S) j = i + 1;
  if (k.cls[j] != S) return k.run(j, e, k.cls[j]);
  return trailing_space(k, i, e);
}

bool is_crlf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

size_t llama3_match(const Cursor& k, size_t i, size_t e) {
  if (size_t end = contraction(k, i, e, true)) return end;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (k.cls[i] == L) return k.run(i, e, L);
  if (k.cls[i] != N && !is_crlf(k.cp(i)) && i + 1 < e && k.cls[i + 1] == L) return k.run(i + 1, e, L);
  // \p{N}{1,3}
  if (k.cls[i] == N) {
    size_t end = i;
    while (end < e && end - i < 3 && k.cls[end] == N) ++end;
    return end;
  }
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  size_t j = (k.cp(i) == ' ' && i + 1 < e && k.cls[i + 1] == O) ? i + 1 : i;
  if (k.cls[j] == O) {
    size_t end = k.run(j, e, O);
    while (end < e && is_crlf(k.cp(end))) ++end;
    return end;
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last \r or \n.
  const size_t run_end = k.run(i, e, S);
  for (size_t p = run_end; p > i; --p)
    if (is_crlf(k.cp(p - 1))) return p;
  return trailing_space(k, i, e);
}

void split_range(const Cursor& k, size_t b, size_t e, Scheme s, std::vector<Span>& out) {
  size_t i = b;
  while (i < e) {
    const size_t end = s == Scheme::Llama3 ? llama3_match(k, i, e) : gpt2_match(k, i, e);
    const uint32_t off = k.c[i].offset;
    const uint32_t last = k.c[end - 1].offset + k.c[end - 1].len;
    out.push_back({off, last - off});
    i = end;
  }
}

}  // namespace

std::optional<Scheme> scheme_from_name(std::string_view name) {
  if (name == "gpt2" || name == "default" || name == "gpt-2") return Scheme::Gpt2;
  if (name == "smollm") return Scheme::Smollm;
  if (name == "llama3" || name == "llama-bpe" || name == "llama-v3") return Scheme::Llama3;
  return std::nullopt;
}

std::vector<Span> split(std::string_view text, Scheme scheme) {
  const auto chars = unicode::decode_utf8(text);
  const Cursor k(chars);
  std::vector<Span> out;
  if (scheme != Scheme::Smollm) {
    split_range(k, 0, chars.size(), scheme, out);
    return out;
  }
  size_t b = 0;
  for (size_t i = 0; i < chars.size(); ++i) {
    if (k.cls[i] != N) continue;
    split_range(k, b, i, Scheme::Gpt2, out);
    out.push_back({chars[i].offset, chars[i].len});
    b = i + 1;
  }
  split_range(k, b, chars.size(), Scheme::Gpt2, out);
  return out;
}

}  // namespace kvscope::pretok
