// VocabData from GGUF metadata (tokenizer.ggml.*), as written by llama.cpp's converters.
//   model "llama" -> Spm: tokens, scores, token_type, add_space_prefix (default true)
//   model "gpt2"  -> Bpe: tokens, merges, token_type, pre (default "default")
// Defaults for missing special ids follow llama.cpp (llama: unk 0, bos 1, eos 2).
#include "kernels/io/error.h"
#include "kernels/model/gguf.h"
#include "kernels/tokenizer/pretokenize.h"
#include "kernels/tokenizer/tokenizer.h"

namespace kvscope {

namespace {

struct Meta {
  const gguf::File& f;

  std::string where(const std::string& key) const {
    auto it = f.meta_offset.find(key);
    const std::string at = it == f.meta_offset.end() ? f.path : f.path + ": offset " + std::to_string(it->second);
    return at + ": metadata key '" + key + "'";
  }
  [[noreturn]] void bad(const std::string& key, const std::string& what) const { throw Error(where(key) + ": " + what); }
  const nlohmann::json* find(const std::string& key) const {
    auto it = f.meta.find(key);
    return it == f.meta.end() ? nullptr : &*it;
  }

  const nlohmann::json& array(const std::string& key, size_t expect_n) const {
    const auto& a = gguf::get(f, key);
    if (!a.is_array()) bad(key, "expected an array");
    if (expect_n != SIZE_MAX && a.size() != expect_n)
      bad(key, std::to_string(a.size()) + " entries, expected " + std::to_string(expect_n) + " (one per token)");
    return a;
  }

  std::vector<std::string> strings(const std::string& key) const {
    const auto& a = array(key, SIZE_MAX);
    std::vector<std::string> out;
    out.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_string()) bad(key, "element " + std::to_string(i) + " is not a string");
      out.push_back(a[i].get<std::string>());
    }
    return out;
  }

  bool boolean(const std::string& key, bool def) const {
    const auto* v = find(key);
    if (!v) return def;
    if (v->is_boolean()) return v->get<bool>();
    if (v->is_number_integer()) return v->get<int64_t>() != 0;
    bad(key, "expected a boolean");
  }

  int32_t id(const std::string& key, int32_t def, size_t n) const {
    if (!find(key)) return def;
    const int64_t v = gguf::get_int(f, key);
    // Some converters store -1 (as uint32 0xFFFFFFFF) for "none".
    if (v == -1 || v == 0xFFFFFFFFll) return -1;
    if (v < 0 || static_cast<uint64_t>(v) >= n)
      bad(key, "token id " + std::to_string(v) + " out of range (vocab size " + std::to_string(n) + ")");
    return static_cast<int32_t>(v);
  }
};

}  // namespace

VocabData vocab_from_gguf(const gguf::File& f) {
  const Meta m{f};
  const std::string model_key = "tokenizer.ggml.model";
  const std::string model = gguf::get_string(f, model_key);
  VocabData v;
  if (model == "llama") {
    v.kind = VocabData::Kind::Spm;
    v.source = "gguf:llama";
  } else if (model == "gpt2") {
    v.kind = VocabData::Kind::Bpe;
    v.source = "gguf:gpt2";
  } else {
    m.bad(model_key, "unsupported tokenizer model '" + model + "' (supported: llama, gpt2)");
  }

  v.tokens = m.strings("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  if (n == 0) m.bad("tokenizer.ggml.tokens", "empty vocabulary");

  if (m.find("tokenizer.ggml.token_type")) {
    const std::string key = "tokenizer.ggml.token_type";
    const auto& a = m.array(key, n);
    v.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (!a[i].is_number_integer()) m.bad(key, "element " + std::to_string(i) + " is not an integer");
      const int64_t t = a[i].get<int64_t>();
      if (t < 0 || t > static_cast<int64_t>(TokenType::Byte))
        m.bad(key, "element " + std::to_string(i) + ": unknown token type " + std::to_string(t));
      v.types.push_back(static_cast<TokenType>(t));
    }
  }

  if (v.kind == VocabData::Kind::Spm) {
    if (m.find("tokenizer.ggml.scores")) {
      const std::string key = "tokenizer.ggml.scores";
      const auto& a = m.array(key, n);
      v.scores.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        if (!a[i].is_number()) m.bad(key, "element " + std::to_string(i) + " is not a number");
        v.scores.push_back(a[i].get<float>());
      }
    }
    v.space_symbol = "\xE2\x96\x81";
    v.add_space_prefix = m.boolean("tokenizer.ggml.add_space_prefix", true);
    v.add_bos = m.boolean("tokenizer.ggml.add_bos_token", true);
    v.pre = "default";
    v.unk_id = m.id("tokenizer.ggml.unknown_token_id", n > 0 ? 0 : -1, n);
    v.bos_id = m.id("tokenizer.ggml.bos_token_id", n > 1 ? 1 : -1, n);
    v.eos_id = m.id("tokenizer.ggml.eos_token_id", n > 2 ? 2 : -1, n);
  } else {
    v.merges = m.strings("tokenizer.ggml.merges");
    const std::string pre_key = "tokenizer.ggml.pre";
    const std::string pre = m.find(pre_key) ? gguf::get_string(f, pre_key) : "default";
    const auto scheme = pretok::scheme_from_name(pre);
    if (!scheme) m.bad(pre_key, "unsupported pre-tokenizer '" + pre + "' (supported: default, gpt2, gpt-2, smollm, llama3, llama-bpe)");
    v.pre = *scheme == pretok::Scheme::Smollm ? "smollm" : *scheme == pretok::Scheme::Llama3 ? "llama3" : "gpt2";
    v.add_space_prefix = false;  // llama.cpp ignores it for byte-level BPE
    v.add_bos = m.boolean("tokenizer.ggml.add_bos_token", false);
    v.unk_id = m.id("tokenizer.ggml.unknown_token_id", -1, n);
    v.bos_id = m.id("tokenizer.ggml.bos_token_id", -1, n);
    v.eos_id = m.id("tokenizer.ggml.eos_token_id", -1, n);
  }
  return v;
}

}  // namespace kvscope
