// VocabData from a Hugging Face tokenizer.json (model.type "BPE").
//   * ByteLevel pre-tokenizer                              -> Bpe, pre "gpt2"
//     Sequence[Digits(individual_digits), ByteLevel]       -> Bpe, pre "smollm"
//     Sequence[Split(<GPT-2 or Llama-3 regex>), ByteLevel(use_regex=false)]
//                                                          -> Bpe, pre "gpt2" / "llama3"
//   * SentencePiece-style: normalizer Prepend("▁") / Replace(" ", "▁"), or a Metaspace
//     pre-tokenizer                                        -> Spm in rank mode (merges)
// Special ids come from a sibling tokenizer_config.json when there is one (bos_token,
// eos_token, add_bos_token), else from added_tokens and the TemplateProcessing
// post-processor. Anything the engines cannot reproduce is an error naming its key.
#include <cctype>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/tokenizer/tokenizer.h"

namespace kvscope {

namespace {

using json = nlohmann::json;

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* kGpt2PatternShort = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Error helper: every message names the file and the JSON key path.
struct Doc {
  std::string path;

  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    fail(path, "key '" + key + "': " + what);
  }
  const json* opt(const json& obj, const std::string& obj_key, const char* name) const {
    if (!obj.is_object()) bad(obj_key, "expected an object");
    auto it = obj.find(name);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  const json& need(const json& obj, const std::string& obj_key, const char* name) const {
    const json* v = opt(obj, obj_key, name);
    if (!v) bad(join(obj_key, name), "missing");
    return *v;
  }
  std::string str(const json& obj, const std::string& obj_key, const char* name, const std::string& def) const {
    const json* v = opt(obj, obj_key, name);
    if (!v) return def;
    if (!v->is_string()) bad(join(obj_key, name), "expected a string");
    return v->get<std::string>();
  }
  bool boolean(const json& obj, const std::string& obj_key, const char* name, bool def) const {
    const json* v = opt(obj, obj_key, name);
    if (!v) return def;
    if (!v->is_boolean()) bad(join(obj_key, name), "expected true or false");
    return v->get<bool>();
  }
  static std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }
};

json parse_json(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail_at(path, e.byte, "invalid JSON: " + std::string(e.what()));
  } catch (const json::exception& e) {  // e.g. a number out of range
    fail_at(path, 0, "invalid JSON: " + std::string(e.what()));
  }
}

// The pre-tokenizer list: a Sequence's members, or the single pre-tokenizer.
std::vector<std::pair<std::string, const json*>> pre_list(const Doc& d, const json& j) {
  std::vector<std::pair<std::string, const json*>> out;
  const json* pre = d.opt(j, "", "pre_tokenizer");
  if (!pre) return out;
  const std::string type = d.str(*pre, "pre_tokenizer", "type", "");
  if (type == "Sequence") {
    const json& list = d.need(*pre, "pre_tokenizer", "pretokenizers");
    if (!list.is_array()) d.bad("pre_tokenizer.pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) out.emplace_back("pre_tokenizer.pretokenizers[" + std::to_string(i) + "]", &list[i]);
  } else {
    out.emplace_back("pre_tokenizer", pre);
  }
  return out;
}

// Normalizers a SentencePiece-style tokenizer uses: Prepend(sym) and Replace(" ", sym).
struct SpmNormalizer {
  bool prepend = false, replace = false;
  std::string symbol;
};

SpmNormalizer read_normalizer(const Doc& d, const json& j) {
  SpmNormalizer n;
  const json* norm = d.opt(j, "", "normalizer");
  if (!norm) return n;
  std::vector<std::pair<std::string, const json*>> list;
  const std::string type = d.str(*norm, "normalizer", "type", "");
  if (type == "Sequence") {
    const json& a = d.need(*norm, "normalizer", "normalizers");
    if (!a.is_array()) d.bad("normalizer.normalizers", "expected an array");
    for (size_t i = 0; i < a.size(); ++i) list.emplace_back("normalizer.normalizers[" + std::to_string(i) + "]", &a[i]);
  } else {
    list.emplace_back("normalizer", norm);
  }
  for (const auto& [key, node] : list) {
    const std::string t = d.str(*node, key, "type", "");
    if (t == "Prepend") {
      n.prepend = true;
      n.symbol = d.str(*node, key, "prepend", "");
    } else if (t == "Replace") {
      const json& pat = d.need(*node, key, "pattern");
      const std::string s = d.str(pat, key + ".pattern", "String", "");
      if (s != " ") d.bad(key + ".pattern", "only Replace(\" \", <space symbol>) is supported");
      n.replace = true;
      n.symbol = d.str(*node, key, "content", "");
    } else {
      d.bad(key + ".type", "unsupported normalizer '" + t + "' (supported: Prepend, Replace)");
    }
  }
  return n;
}

std::string token_content(const Doc& d, const json& v, const std::string& key) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) return d.str(v, key, "content", "");
  d.bad(key, "expected a string or an object with 'content'");
}

}  // namespace

VocabData read_hf_tokenizer_json(const std::string& path) {
  const Doc d{path};
  const json j = parse_json(path);
  if (!j.is_object()) fail(path, "expected a JSON object at the top level");
  const json& model = d.need(j, "", "model");
  const std::string type = d.str(model, "model", "type", model.contains("merges") ? "BPE" : "");
  if (type.empty()) d.bad("model.type", "missing");
  if (type != "BPE") d.bad("model.type", "unsupported model type '" + type + "' (supported: BPE)");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!d.str(model, "model", k, "").empty()) d.bad(std::string("model.") + k, "not supported");
  }

  VocabData v;
  // Vocabulary (token -> id), then added tokens, which may extend it.
  const json& vocab = d.need(model, "model", "vocab");
  if (!vocab.is_object()) d.bad("model.vocab", "expected an object mapping token -> id");
  std::map<int64_t, std::string> by_id;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= INT32_MAX)
      d.bad("model.vocab[\"" + it.key() + "\"]", "expected a non-negative integer id");
    auto [pos, fresh] = by_id.emplace(it.value().get<int64_t>(), it.key());
    if (!fresh) d.bad("model.vocab", "id " + std::to_string(pos->first) + " used by both '" + pos->second + "' and '" + it.key() + "'");
  }
  struct Added {
    int64_t id;
    std::string content;
    bool special;
  };
  std::vector<Added> added;
  if (const json* at = d.opt(j, "", "added_tokens")) {
    if (!at->is_array()) d.bad("added_tokens", "expected an array");
    for (size_t i = 0; i < at->size(); ++i) {
      const std::string key = "added_tokens[" + std::to_string(i) + "]";
      const json& a = (*at)[i];
      const json& id = d.need(a, key, "id");
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= INT32_MAX)
        d.bad(key + ".id", "expected a non-negative integer");
      added.push_back({id.get<int64_t>(), d.str(a, key, "content", ""), d.boolean(a, key, "special", false)});
      by_id[added.back().id] = added.back().content;
    }
  }
  if (by_id.empty()) d.bad("model.vocab", "empty vocabulary");
  const size_t n = static_cast<size_t>(by_id.rbegin()->first) + 1;
  v.tokens.assign(n, std::string());
  v.types.assign(n, TokenType::Unused);  // holes in the id space stay Unused
  for (const auto& [id, t] : by_id) {
    v.tokens[id] = t;
    v.types[id] = TokenType::Normal;
  }
  for (const auto& a : added) v.types[a.id] = a.special ? TokenType::Control : TokenType::UserDefined;
  auto id_of = [&](const std::string& t) -> int32_t {
    if (auto it = vocab.find(t); it != vocab.end()) return it->get<int32_t>();
    for (const auto& a : added)
      if (a.content == t) return static_cast<int32_t>(a.id);
    return -1;
  };

  const json& merges = d.need(model, "model", "merges");
  if (!merges.is_array()) d.bad("model.merges", "expected an array");
  v.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {
      v.merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    } else {
      d.bad("model.merges[" + std::to_string(i) + "]", "expected \"left right\" or [\"left\", \"right\"]");
    }
  }
  const std::string unk = d.str(model, "model", "unk_token", "");
  if (!unk.empty()) {
    v.unk_id = id_of(unk);
    if (v.unk_id < 0) d.bad("model.unk_token", "'" + unk + "' is not in the vocabulary");
    v.types[v.unk_id] = TokenType::Unknown;
  }
  const bool byte_fallback = d.boolean(model, "model", "byte_fallback", false);

  // Engine and pre-tokenizer.
  const auto pres = pre_list(d, j);
  const SpmNormalizer norm = read_normalizer(d, j);
  bool byte_level = false;
  for (const auto& [key, node] : pres) byte_level |= d.str(*node, key, "type", "") == "ByteLevel";
  if (byte_level) {
    if (norm.prepend || norm.replace) d.bad("normalizer", "a SentencePiece normalizer with a ByteLevel pre-tokenizer is not supported");
    v.kind = VocabData::Kind::Bpe;
    v.source = "hf:bpe";
    v.add_space_prefix = false;
    std::string shape;  // e.g. "Digits+ByteLevel"
    std::string pattern;
    bool byte_level_regex = true;
    for (const auto& [key, node] : pres) {
      const std::string t = d.str(*node, key, "type", "");
      if (t == "ByteLevel") {
        if (d.boolean(*node, key, "add_prefix_space", false))
          d.bad(key + ".add_prefix_space", "true is not supported (byte-level BPE is encoded without a prefix space)");
        byte_level_regex = d.boolean(*node, key, "use_regex", true);
      } else if (t == "Digits") {
        if (!d.boolean(*node, key, "individual_digits", false))
          d.bad(key + ".individual_digits", "only individual_digits=true is supported");
      } else if (t == "Split") {
        const json& pat = d.need(*node, key, "pattern");
        pattern = d.str(pat, key + ".pattern", "Regex", "");
        if (d.str(*node, key, "behavior", "") != "Isolated" || d.boolean(*node, key, "invert", false))
          d.bad(key + ".behavior", "only behavior Isolated (invert false) is supported");
      } else {
        d.bad(key + ".type", "unsupported pre-tokenizer '" + t + "' next to ByteLevel");
      }
      shape += (shape.empty() ? "" : "+") + t;
    }
    if (shape == "ByteLevel" && byte_level_regex) {
      v.pre = "gpt2";
    } else if (shape == "Digits+ByteLevel" && byte_level_regex) {
      v.pre = "smollm";
    } else if (shape == "Split+ByteLevel" && !byte_level_regex && (pattern == kGpt2Pattern || pattern == kGpt2PatternShort)) {
      v.pre = "gpt2";
    } else if (shape == "Split+ByteLevel" && !byte_level_regex && pattern == kLlama3Pattern) {
      v.pre = "llama3";
    } else {
      d.bad("pre_tokenizer", "unsupported byte-level pre-tokenizer '" + shape + (pattern.empty() ? "" : " /" + pattern + "/") +
                                 "' (supported: ByteLevel, Digits+ByteLevel, Split(GPT-2 or Llama-3 regex)+ByteLevel)");
    }
    v.add_bos = false;
  } else {
    v.kind = VocabData::Kind::Spm;
    v.source = "hf:spm";
    v.pre = "default";
    bool metaspace = false;
    for (const auto& [key, node] : pres) {
      const std::string t = d.str(*node, key, "type", "");
      if (t != "Metaspace") d.bad(key + ".type", "unsupported pre-tokenizer '" + t + "' (supported: ByteLevel, Metaspace)");
      metaspace = true;
      v.space_symbol = d.str(*node, key, "replacement", "\xE2\x96\x81");
      const std::string scheme = d.str(*node, key, "prepend_scheme", "");
      if (!scheme.empty()) {
        if (scheme != "always" && scheme != "first" && scheme != "never")
          d.bad(key + ".prepend_scheme", "unknown value '" + scheme + "'");
        v.add_space_prefix = scheme != "never";
      } else {
        v.add_space_prefix = d.boolean(*node, key, "add_prefix_space", true);
      }
      if (d.boolean(*node, key, "split", true)) v.pre = "split";
    }
    if (!metaspace && !norm.prepend && !norm.replace)
      d.bad("pre_tokenizer", "neither ByteLevel nor Metaspace, and no SentencePiece normalizer (Prepend/Replace \"\xE2\x96\x81\")");
    if (!metaspace) {
      v.space_symbol = norm.symbol;
      v.add_space_prefix = norm.prepend;
      if (!norm.replace) d.bad("normalizer", "Prepend without Replace(\" \", \"" + norm.symbol + "\") is not supported");
    }
    if (byte_fallback) {
      for (size_t i = 0; i < n; ++i) {
        const std::string& t = v.tokens[i];
        if (v.types[i] == TokenType::Normal && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
            std::isxdigit(static_cast<unsigned char>(t[3])) && std::isxdigit(static_cast<unsigned char>(t[4])))
          v.types[i] = TokenType::Byte;
      }
    }
    v.add_bos = true;
  }

  // Special ids: tokenizer_config.json, else post-processor, else well-known names.
  auto find_added = [&](std::initializer_list<const char*> names) -> int32_t {
    for (const char* name : names)
      for (const auto& a : added)
        if (a.special && a.content == name) return static_cast<int32_t>(a.id);
    return -1;
  };
  v.bos_id = find_added({"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|im_start|>", "<|endoftext|>"});
  v.eos_id = find_added({"</s>", "<|end_of_text|>", "<|im_end|>", "<eos>", "<|endoftext|>"});
  // TemplateProcessing, alone or inside a Sequence (Llama 3: [ByteLevel, TemplateProcessing]).
  auto template_processing = [&](const json& node, const std::string& key) {
    if (d.str(node, key, "type", "") != "TemplateProcessing") return;
    const json* single = d.opt(node, key, "single");
    v.add_bos = false;
    if (single && single->is_array() && !single->empty()) {
      if (const json* st = d.opt((*single)[0], key + ".single[0]", "SpecialToken")) {
        const std::string t = d.str(*st, key + ".single[0].SpecialToken", "id", "");
        if (id_of(t) >= 0) v.bos_id = id_of(t), v.add_bos = true;
      }
    }
  };
  if (const json* post = d.opt(j, "", "post_processor")) {
    template_processing(*post, "post_processor");
    if (d.str(*post, "post_processor", "type", "") == "Sequence") {
      if (const json* list = d.opt(*post, "post_processor", "processors"); list && list->is_array())
        for (size_t i = 0; i < list->size(); ++i)
          template_processing((*list)[i], "post_processor.processors[" + std::to_string(i) + "]");
    }
  }
  const auto config_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) {
    const Doc c{config_path.string()};
    const json cfg = parse_json(c.path);
    if (!cfg.is_object()) fail(c.path, "expected a JSON object at the top level");
    for (auto [name, dst] : {std::pair{"bos_token", &v.bos_id}, std::pair{"eos_token", &v.eos_id}}) {
      const json* t = c.opt(cfg, "", name);
      if (!t) continue;
      const std::string content = token_content(c, *t, name);
      *dst = id_of(content);
      if (*dst < 0) c.bad(name, "'" + content + "' is not a token of " + path);
    }
    v.add_bos = c.boolean(cfg, "", "add_bos_token", v.add_bos);
  }
  for (int32_t id : {v.bos_id, v.eos_id})
    if (id >= 0 && v.types[id] == TokenType::Normal) v.types[id] = TokenType::Control;
  if (v.bos_id < 0) v.add_bos = false;
  return v;
}

}  // namespace kvscope
