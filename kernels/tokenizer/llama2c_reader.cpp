// llama2.c tokenizer.bin / tok*.bin:
//   int32 max_token_length
//   per token id: float32 score, int32 byte length, raw bytes (no terminator)
// Ids 0 <unk>, 1 BOS, 2 EOS; "<0xHH>" pieces are byte-fallback tokens (3..258 in the
// files llama2.c exports). Pieces store a plain ' ' where SentencePiece has U+2581.
#include <cctype>

#include "kernels/io/byte_reader.h"
#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/tokenizer/tokenizer.h"

namespace kvscope {

VocabData read_llama2c_tokenizer(const std::string& path, int32_t vocab_size) {
  MappedFile file(path);
  ByteReader r(file.bytes(), path);
  const int32_t max_len = r.read<int32_t>("max_token_length");
  if (max_len <= 0) fail_at(path, 0, "max_token_length " + std::to_string(max_len) + " is not positive");

  VocabData v;
  v.kind = VocabData::Kind::Spm;
  v.source = "llama2c";
  v.space_symbol = " ";
  v.add_space_prefix = true;
  v.add_bos = true;
  v.pre = "default";
  // vocab_size <= 0: read entries until the end of the file.
  for (int32_t i = 0; vocab_size > 0 ? i < vocab_size : r.remaining() > 0; ++i) {
    const std::string id = "token " + std::to_string(i);
    v.scores.push_back(r.read<float>("score of " + id));
    const uint64_t len_at = r.offset();
    const int32_t len = r.read<int32_t>("length of " + id);
    if (len < 0) fail_at(path, len_at, id + ": negative length " + std::to_string(len));
    v.tokens.emplace_back(r.take_string(static_cast<uint64_t>(len), "bytes of " + id));
  }
  const size_t n = v.tokens.size();
  if (n < 3) fail_at(path, r.offset(), "only " + std::to_string(n) + " tokens (need at least <unk>, BOS, EOS)");
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  v.types.assign(n, TokenType::Normal);
  v.types[0] = TokenType::Unknown;
  v.types[1] = v.types[2] = TokenType::Control;
  for (size_t i = 3; i < n; ++i) {
    const std::string& t = v.tokens[i];
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
        std::isxdigit(static_cast<unsigned char>(t[4])))
      v.types[i] = TokenType::Byte;
  }
  return v;
}

}  // namespace kvscope
