// Tokenizer: the two merge engines (SPM, byte-level BPE) and decoding.
// The readers (llama2.c, GGUF, tokenizer.json) live in their own files and only fill
// a VocabData; everything that depends on the engine is derived here, once, in the
// constructor.
#include "kernels/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <optional>
#include <queue>

#include "kernels/io/error.h"
#include "kernels/tokenizer/pretokenize.h"
#include "kernels/tokenizer/unicode.h"

namespace kvscope {

namespace {

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>>;

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0xHH>" -> HH.
std::optional<uint8_t> byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return std::nullopt;
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

std::string byte_token_text(uint8_t b) {
  static const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  if (from.empty()) return std::string(s);
  size_t i = 0;
  while (true) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

struct Fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  void u64(uint64_t v) {
    uint8_t le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(v >> (8 * i));
    bytes(le, 8);
  }
  void str(std::string_view s) {  // length-prefixed so that ("ab","c") != ("a","bc")
    u64(s.size());
    bytes(s.data(), s.size());
  }
};

bool encodable(TokenType t) {
  return t != TokenType::Control && t != TokenType::Byte && t != TokenType::Unknown;
}

const char* kind_name(VocabData::Kind k) { return k == VocabData::Kind::Spm ? "spm" : "bpe"; }

}  // namespace

struct Tokenizer::Engine {
  enum class Mode { SpmScore, SpmRank, Bpe };
  struct Merge {
    int32_t rank, result;
  };
  struct Sym {  // one symbol of the word being merged (a doubly linked list in a vector)
    int32_t prev, next;
    uint32_t off, n;  // SpmScore: bytes of the working text
    int32_t id;       // rank modes: token id, -1 once merged away
  };

  Mode mode = Mode::SpmScore;
  pretok::Scheme scheme = pretok::Scheme::Gpt2;
  bool spm_split = false;      // Metaspace split=true: words start at each space symbol
  bool ignore_merges = false;  // llama3: a pre-token that is itself a token is emitted whole
  PieceMap piece_to_id;        // every token text (encodable ids win over duplicates)
  std::vector<uint8_t> can_encode;
  std::array<int32_t, 256> byte_id{};  // SPM: <0xHH>; BPE: the byte's printable code point
  std::unordered_map<uint64_t, Merge> merges;  // (left id << 32 | right id)
  std::vector<std::pair<std::string, int32_t>> user_tokens;     // longest first
  std::vector<std::pair<std::string, int32_t>> special_tokens;  // user-defined + control, longest first
  std::vector<std::string> pieces;                           // decoded bytes per id
  std::vector<uint8_t> is_control;
  std::string identity;

  std::string where(const VocabData& v) const { return "tokenizer (" + (v.source.empty() ? "?" : v.source) + ")"; }

  // Id of an encodable token with exactly this text, or -1.
  int32_t lookup(std::string_view s) const {
    auto it = piece_to_id.find(s);
    return it != piece_to_id.end() && can_encode[it->second] ? it->second : -1;
  }

  int32_t byte_or_unk(const VocabData& v, uint8_t b) const {
    if (byte_id[b] >= 0) return byte_id[b];
    if (v.unk_id >= 0) return v.unk_id;
    throw Error(where(v) + ": cannot encode byte " + byte_token_text(b) +
                ": the vocabulary has no token for it and no unknown token");
  }

  void emit_text(const VocabData& v, std::string_view s, std::vector<int32_t>& out) const {
    const int32_t id = lookup(s);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
    for (char c : s) out.push_back(byte_or_unk(v, static_cast<uint8_t>(c)));
  }

  // ---- SPM, score mode (llama.cpp llm_tokenizer_spm, llama2.c encode) ----------------
  // Bigrams whose concatenation is a token wait in a max-heap on (score, -left); a popped
  // bigram is stale when either side has changed length since it was pushed.
  void spm_score(const VocabData& v, std::string_view s, std::vector<int32_t>& out) const {
    if (s.empty()) return;
    std::vector<Sym> sym;
    for (size_t pos = 0; pos < s.size();) {
      const size_t n = unicode::char_len_at(s, pos);
      const int32_t i = static_cast<int32_t>(sym.size());
      sym.push_back({i - 1, i + 1, static_cast<uint32_t>(pos), static_cast<uint32_t>(n), -1});
      pos += n;
    }
    sym.back().next = -1;

    struct Bigram {
      float score;
      int32_t left, right;
      uint32_t size;
    };
    auto lower = [](const Bigram& a, const Bigram& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> heap(lower);
    auto try_add = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const uint32_t size = sym[l].n + sym[r].n;
      const int32_t id = lookup(s.substr(sym[l].off, size));
      if (id < 0) return;
      heap.push({v.scores.empty() ? 0.0f : v.scores[id], l, r, size});
    };
    for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));

    while (!heap.empty()) {
      const Bigram b = heap.top();
      heap.pop();
      Sym& l = sym[b.left];
      Sym& r = sym[b.right];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    // Every merged symbol is a token; only single characters can be missing, and those
    // fall back to byte tokens (llama.cpp's resegment() reduces to this).
    for (int32_t i = 0; i >= 0; i = sym[i].next) emit_text(v, s.substr(sym[i].off, sym[i].n), out);
  }

  // ---- rank modes (byte-level BPE; HF BPE over characters) ----------------------------
  // Min-heap on (rank, left); a popped bigram is stale when either side's id changed.
  void rank_merge(std::vector<Sym>& sym, std::vector<int32_t>& out) const {
    if (sym.empty()) return;
    struct Bigram {
      int32_t rank, left, right, lid, rid, result;
    };
    auto lower = [](const Bigram& a, const Bigram& b) {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> heap(lower);
    auto try_add = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(sym[l].id)) << 32) |
                           static_cast<uint32_t>(sym[r].id);
      auto it = merges.find(key);
      if (it == merges.end()) return;
      heap.push({it->second.rank, l, r, sym[l].id, sym[r].id, it->second.result});
    };
    for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
    while (!heap.empty()) {
      const Bigram b = heap.top();
      heap.pop();
      Sym& l = sym[b.left];
      Sym& r = sym[b.right];
      if (l.id != b.lid || r.id != b.rid || l.next != b.right) continue;
      l.id = b.result;
      r.id = -1;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
  }

  static void push_sym(std::vector<Sym>& sym, int32_t id) {
    const int32_t i = static_cast<int32_t>(sym.size());
    sym.push_back({i - 1, i + 1, 0, 0, id});
  }
  static void close_list(std::vector<Sym>& sym) {
    if (!sym.empty()) sym.back().next = -1;
  }

  void spm_rank(const VocabData& v, std::string_view s, std::vector<int32_t>& out) const {
    std::vector<Sym> sym;
    for (size_t pos = 0; pos < s.size();) {
      const size_t n = unicode::char_len_at(s, pos);
      const int32_t id = lookup(s.substr(pos, n));
      if (id >= 0) {
        push_sym(sym, id);
      } else {
        for (size_t k = 0; k < n; ++k) push_sym(sym, byte_or_unk(v, static_cast<uint8_t>(s[pos + k])));
      }
      pos += n;
    }
    close_list(sym);
    rank_merge(sym, out);
  }

  void spm_raw(const VocabData& v, std::string_view frag, bool at_start, std::vector<int32_t>& out) const {
    std::string s;
    if (at_start && v.add_space_prefix) s = v.space_symbol;
    s += replace_all(frag, " ", v.space_symbol);
    auto word = [&](std::string_view w) {
      if (mode == Mode::SpmRank)
        spm_rank(v, w, out);
      else
        spm_score(v, w, out);
    };
    if (!spm_split || v.space_symbol.empty()) {
      word(s);
      return;
    }
    // Metaspace split: each occurrence of the space symbol starts a new word.
    const std::string_view sv(s);
    size_t b = 0;
    for (size_t j = sv.find(v.space_symbol, 1); j != std::string_view::npos; j = sv.find(v.space_symbol, j + 1)) {
      word(sv.substr(b, j - b));
      b = j;
    }
    word(sv.substr(b));
  }

  void bpe_raw(const VocabData& v, std::string_view frag, std::vector<int32_t>& out) const {
    const auto& to_cp = unicode::byte_to_cp();
    std::vector<Sym> sym;
    for (const auto& span : pretok::split(frag, scheme)) {
      const std::string_view w = frag.substr(span.offset, span.len);
      if (ignore_merges) {
        std::string mapped;
        for (char c : w) unicode::append_utf8(mapped, to_cp[static_cast<uint8_t>(c)]);
        const int32_t id = lookup(mapped);
        if (id >= 0) {
          out.push_back(id);
          continue;
        }
      }
      // A byte without a token (e.g. 0xFF in a vocabulary trained on valid UTF-8) is
      // dropped, as llama.cpp and HF tokenizers (without unk_token) do.
      sym.clear();
      for (char c : w)
        if (const int32_t id = byte_id[static_cast<uint8_t>(c)]; id >= 0) push_sym(sym, id);
      close_list(sym);
      rank_merge(sym, out);
    }
  }

  void raw(const VocabData& v, std::string_view frag, bool at_start, std::vector<int32_t>& out) const {
    if (mode == Mode::Bpe)
      bpe_raw(v, frag, out);
    else
      spm_raw(v, frag, at_start, out);
  }
};

Tokenizer::Tokenizer(VocabData v) : v_(std::move(v)) {
  auto e = std::make_shared<Engine>();
  const std::string where = e->where(v_);
  const size_t n = v_.tokens.size();
  if (n == 0) throw Error(where + ": empty vocabulary");
  if (n > static_cast<size_t>(INT32_MAX)) throw Error(where + ": vocabulary too large");
  if (!v_.scores.empty() && v_.scores.size() != n)
    throw Error(where + ": " + std::to_string(v_.scores.size()) + " scores for " + std::to_string(n) + " tokens");
  if (!v_.types.empty() && v_.types.size() != n)
    throw Error(where + ": " + std::to_string(v_.types.size()) + " token types for " + std::to_string(n) + " tokens");
  auto check_id = [&](int32_t id, const char* what) {
    if (id < -1 || id >= static_cast<int32_t>(n))
      throw Error(where + ": " + what + " id " + std::to_string(id) + " out of range (vocab size " + std::to_string(n) + ")");
  };
  check_id(v_.bos_id, "BOS");
  check_id(v_.eos_id, "EOS");
  check_id(v_.unk_id, "unknown-token");
  const bool spm = v_.kind == VocabData::Kind::Spm;

  // Token types: derive what the source did not say.
  if (v_.types.empty()) {
    v_.types.assign(n, TokenType::Normal);
    for (size_t i = 0; i < n; ++i)
      if (spm && byte_token_value(v_.tokens[i])) v_.types[i] = TokenType::Byte;
    if (v_.unk_id >= 0) v_.types[v_.unk_id] = TokenType::Unknown;
    if (v_.bos_id >= 0) v_.types[v_.bos_id] = TokenType::Control;
    if (v_.eos_id >= 0) v_.types[v_.eos_id] = TokenType::Control;
  }

  if (spm) {
    e->mode = v_.merges.empty() ? Engine::Mode::SpmScore : Engine::Mode::SpmRank;
    if (v_.pre == "split")
      e->spm_split = true;
    else if (!v_.pre.empty() && v_.pre != "default")
      throw Error(where + ": unknown SPM pre-tokenizer '" + v_.pre + "' (supported: default, split)");
  } else {
    e->mode = Engine::Mode::Bpe;
    auto s = pretok::scheme_from_name(v_.pre);
    if (!s)
      throw Error(where + ": unknown BPE pre-tokenizer '" + v_.pre + "' (supported: gpt2, default, smollm, llama3)");
    e->scheme = *s;
    e->ignore_merges = *s == pretok::Scheme::Llama3;
  }

  // Text -> id. For duplicate texts the first encodable id wins.
  e->can_encode.resize(n);
  e->piece_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const bool enc = encodable(v_.types[i]);
    e->can_encode[i] = enc;
    auto [it, fresh] = e->piece_to_id.try_emplace(v_.tokens[i], static_cast<int32_t>(i));
    if (!fresh && enc && !e->can_encode[it->second]) it->second = static_cast<int32_t>(i);
    if (v_.types[i] == TokenType::UserDefined && !v_.tokens[i].empty())
      e->user_tokens.emplace_back(v_.tokens[i], static_cast<int32_t>(i));
    if ((v_.types[i] == TokenType::UserDefined || v_.types[i] == TokenType::Control) && !v_.tokens[i].empty())
      e->special_tokens.emplace_back(v_.tokens[i], static_cast<int32_t>(i));
  }
  for (auto* list : {&e->user_tokens, &e->special_tokens})
    std::stable_sort(list->begin(), list->end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  auto any_id = [&](std::string_view s) -> int32_t {
    auto it = e->piece_to_id.find(s);
    return it == e->piece_to_id.end() ? -1 : it->second;
  };

  // Byte fallback ids.
  const auto& to_cp = unicode::byte_to_cp();
  for (int b = 0; b < 256; ++b) {
    int32_t id = -1;
    if (!spm) {
      std::string c;
      unicode::append_utf8(c, to_cp[b]);
      id = any_id(c);
    }
    if (id < 0) id = any_id(byte_token_text(static_cast<uint8_t>(b)));
    if (id < 0 && spm) id = e->lookup(std::string(1, static_cast<char>(b)));
    e->byte_id[b] = id;
  }

  // Merge ranks: "left right"; when a token itself holds spaces, the split point is the
  // one where both halves are tokens.
  for (size_t r = 0; r < v_.merges.size(); ++r) {
    const std::string& m = v_.merges[r];
    int32_t lid = -1, rid = -1;
    size_t sp = m.find(' ');
    if (sp == std::string::npos)
      throw Error(where + ": merges[" + std::to_string(r) + "] '" + m + "' is not 'left right'");
    for (; sp != std::string::npos; sp = m.find(' ', sp + 1)) {
      lid = any_id(std::string_view(m).substr(0, sp));
      rid = any_id(std::string_view(m).substr(sp + 1));
      if (lid >= 0 && rid >= 0) break;
    }
    if (lid < 0 || rid < 0) continue;  // a merge of pieces that are not tokens can never apply
    const int32_t res = any_id(v_.tokens[lid] + v_.tokens[rid]);
    if (res < 0) continue;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(lid)) << 32) | static_cast<uint32_t>(rid);
    e->merges.try_emplace(key, Engine::Merge{static_cast<int32_t>(r), res});
  }

  // Decoded bytes of every token.
  e->pieces.resize(n);
  e->is_control.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = v_.tokens[i];
    std::string& p = e->pieces[i];
    switch (v_.types[i]) {
      case TokenType::Control:
        e->is_control[i] = 1;
        break;
      case TokenType::UserDefined:
      case TokenType::Unknown:
        p = t;
        break;
      case TokenType::Byte:
        if (auto b = byte_token_value(t)) {
          p = std::string(1, static_cast<char>(*b));
          break;
        }
        [[fallthrough]];
      default:
        if (spm) {
          p = v_.space_symbol == " " ? t : replace_all(t, v_.space_symbol, " ");
        } else {
          for (const auto& c : unicode::decode_utf8(t)) {
            const int b = c.cp == unicode::kInvalid ? -1 : unicode::byte_from_cp(c.cp);
            if (b >= 0)
              p += static_cast<char>(b);
            else
              p.append(t, c.offset, c.len);
          }
        }
    }
  }

  for (int32_t id : {v_.bos_id, v_.eos_id}) {
    if (id < 0) continue;
    e->is_control[id] = 1;
    e->pieces[id].clear();
  }

  Fnv1a h;
  h.u64(n);
  for (const auto& t : v_.tokens) h.str(t);
  h.u64(v_.scores.size());
  for (float s : v_.scores) {
    uint32_t bits;
    std::memcpy(&bits, &s, 4);
    h.u64(bits);
  }
  h.u64(v_.merges.size());
  for (const auto& m : v_.merges) h.str(m);
  static const char* hex = "0123456789abcdef";
  std::string hx(16, '0');
  for (int i = 0; i < 16; ++i) hx[i] = hex[(h.h >> (60 - 4 * i)) & 15];
  e->identity = (v_.source.empty() ? std::string("unknown") : v_.source) + ":" + kind_name(v_.kind) + ":" + hx;

  e_ = std::move(e);
}

const Tokenizer::Engine& Tokenizer::engine() const {
  if (!e_) throw Error("tokenizer: used before a vocabulary was loaded");
  return *e_;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const Engine& e = engine();
  std::vector<int32_t> out;
  if (add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
  // User-defined tokens (and with parse_special, control tokens such as <|im_start|>)
  // are matched in the text first (leftmost, longest); the text between them is
  // encoded normally. Only a fragment at the very start gets the SPM dummy prefix.
  const auto& specials = parse_special ? e.special_tokens : e.user_tokens;
  size_t start = 0;
  if (!specials.empty()) {
    for (size_t i = 0; i < text.size();) {
      int32_t hit = -1;
      size_t len = 0;
      for (const auto& [t, id] : specials) {
        if (text.compare(i, t.size(), t) == 0) {
          hit = id, len = t.size();
          break;
        }
      }
      if (hit < 0) {
        ++i;
        continue;
      }
      if (i > start) e.raw(v_, text.substr(start, i - start), start == 0, out);
      out.push_back(hit);
      i += len;
      start = i;
    }
  }
  if (start < text.size()) e.raw(v_, text.substr(start), start == 0, out);
  return out;
}

std::string Tokenizer::piece(int32_t id) const {
  const Engine& e = engine();
  if (id < 0 || id >= vocab_size())
    throw Error(e.where(v_) + ": token id " + std::to_string(id) + " out of range (vocab size " +
                std::to_string(vocab_size()) + ")");
  return e.pieces[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  const Engine& e = engine();
  const bool dummy_prefix = v_.kind == VocabData::Kind::Spm && v_.add_space_prefix;
  // The SPM dummy prefix is the leading space of the first piece of a text; a BOS
  // starts a new text (llama2.c: strip the leading space of a piece after BOS).
  bool strip = dummy_prefix;
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw Error(e.where(v_) + ": token id " + std::to_string(id) + " out of range (vocab size " +
                  std::to_string(vocab_size()) + ")");
    if (id == v_.bos_id) strip = dummy_prefix;
    if (e.is_control[id]) continue;
    const std::string& p = e.pieces[id];
    if (strip && !p.empty() && p[0] == ' ')
      out.append(p, 1);
    else
      out += p;
    strip = false;
  }
  return out;
}

std::string Tokenizer::identity() const { return engine().identity; }

}  // namespace kvscope
