#pragma once
// Tokenizers for Llama-family checkpoints.
//
// Every source (llama2.c tok*.bin, Hugging Face tokenizer.json, GGUF metadata) is first
// read into a VocabData; one Tokenizer class then encodes and decodes for all of them.
// Two merge engines cover the formats users have:
//   * Spm  — SentencePiece-style BPE: text -> UTF-8 characters (spaces escaped to the
//            space symbol, optional dummy prefix), repeatedly merge the adjacent pair whose
//            concatenation is a token with the highest score (ties: leftmost), unknown
//            pieces fall back to <0xXX> byte tokens. llama2.c, GGUF "llama", HF Metaspace
//            (the latter merges by merge rank; see VocabData::merges).
//   * Bpe  — byte-level BPE (GPT-2): pre-tokenizer split (regex per `pre`), bytes mapped
//            to printable code points, merges applied by rank (lowest first).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvscope {

namespace gguf { struct File; }

// llama.cpp token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t { Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct VocabData {
  enum class Kind { Spm, Bpe };
  Kind kind = Kind::Spm;
  std::vector<std::string> tokens;  // piece text as stored (SPM with space symbol; BPE byte-level encoded)
  std::vector<float> scores;        // SPM merge priority (higher merges first); may be empty for BPE
  std::vector<TokenType> types;     // may be empty: the Tokenizer then fills it (Normal; SPM
                                    // "<0xHH>" Byte; unk Unknown; BOS/EOS Control)
  std::vector<std::string> merges;  // BPE: "left right", rank = index. Spm: when non-empty
                                    // (HF tokenizer.json), pairs merge by rank, not score
  std::string pre = "default";      // BPE pre-tokenizer: "gpt2"/"default", "smollm", "llama3", ...
                                    // Spm: "default" (none) or "split" (Metaspace split=true)
  std::string space_symbol = "\xE2\x96\x81";  // SPM: U+2581; llama2.c stores plain ' '
  bool add_space_prefix = true;     // SPM dummy prefix
  bool add_bos = true;
  int32_t bos_id = -1, eos_id = -1, unk_id = -1;
  std::string source;               // "llama2c", "gguf:llama", "gguf:gpt2", "hf:bpe", ...
};

class Tokenizer {
 public:
  Tokenizer() = default;
  explicit Tokenizer(VocabData v);

  // Encodes text. User-defined tokens are always matched as units; control tokens
  // ("<s>", "<|im_start|>") only with parse_special, else they are literal text.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = false) const;
  // Concatenated bytes of the tokens; BOS/EOS/control tokens decode to nothing,
  // byte tokens to their byte; an SPM leading dummy-prefix space after BOS is dropped.
  std::string decode(std::span<const int32_t> ids) const;
  // Bytes of one token as it would appear in the middle of a decoded text.
  std::string piece(int32_t id) const;

  int32_t bos() const { return v_.bos_id; }
  int32_t eos() const { return v_.eos_id; }
  int32_t vocab_size() const { return static_cast<int32_t>(v_.tokens.size()); }
  bool add_bos_default() const { return v_.add_bos; }
  const VocabData& vocab() const { return v_; }
  // Stable identity: source + sha256-free FNV-1a 64 hash of tokens/scores/merges, hex.
  std::string identity() const;

 private:
  struct Engine;  // lookup tables built from v_ (defined in tokenizer.cpp); shared by copies
  VocabData v_;
  std::shared_ptr<const Engine> e_;
  const Engine& engine() const;
};

// Readers. Each throws kvscope::Error naming the file and field/offset.
VocabData read_llama2c_tokenizer(const std::string& path, int32_t vocab_size);
VocabData read_hf_tokenizer_json(const std::string& path);
VocabData vocab_from_gguf(const gguf::File& f);

}  // namespace kvscope
