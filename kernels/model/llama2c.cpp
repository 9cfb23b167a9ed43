// llama2.c checkpoint loader (Karpathy's "legacy" export, version 0):
//   header: 7 x int32 = dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//           (vocab_size < 0 means the classifier is stored separately, else it is tied)
//   body:   fp32 arrays token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
//           rms_final, freq_cis_real, freq_cis_imag (legacy, skipped), [wcls]
// RoPE rotates interleaved pairs; theta 10000; RMSNorm eps 1e-5.
#include <cstring>
#include <filesystem>

#include "kernels/io/byte_reader.h"
#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/model.h"

namespace kvscope {

namespace fs = std::filesystem;

namespace {

std::string find_tokenizer(const std::string& model_path, int32_t vocab) {
  fs::path dir = fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  for (const std::string& name : {"tok" + std::to_string(vocab) + ".bin", std::string("tokenizer.bin")})
    if (fs::exists(dir / name)) return (dir / name).string();
  fail(model_path, "no tokenizer found beside the checkpoint (looked for tok" + std::to_string(vocab) +
                       ".bin and tokenizer.bin); pass --tokenizer");
}

}  // namespace

Model load_llama2c(const std::string& path, const std::string& tokenizer_path) {
  MappedFile file(path);
  ByteReader r(file.bytes(), path);
  int32_t h[7];
  for (int i = 0; i < 7; ++i) h[i] = r.read<int32_t>("llama2.c header");
  Model m;
  m.path = path;
  ModelConfig& c = m.config;
  c.format = "llama2c";
  c.name = fs::path(path).stem().string();
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  if (h[5] == INT32_MIN) fail(path, "header: vocab_size out of range");
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = h[5] < 0 ? -h[5] : h[5];
  c.max_seq_len = h[6];
  c.head_dim = (c.n_heads > 0 && c.dim % c.n_heads == 0) ? c.dim / c.n_heads : 0;
  if (c.n_heads > 0 && c.dim % c.n_heads != 0)
    fail(path, "header: dim " + std::to_string(c.dim) + " is not a multiple of n_heads " + std::to_string(c.n_heads));
  c.rope = RopeLayout::Interleaved;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.weight_dtype = "F32";
  c.validate(path + ": header");

  const uint64_t L = c.n_layers, d = c.dim, hd = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim(), V = c.vocab_size;
  const uint64_t rope_legacy = static_cast<uint64_t>(c.max_seq_len) * c.head_dim;  // real + imag halves
  uint64_t expect = V * d + L * (d + q * d + 2 * kv * d + d * q + d + 3 * hd * d) + d + rope_legacy;
  if (!c.tied_embeddings) expect += V * d;
  if (r.remaining() != expect * 4)
    fail(path, "file size " + std::to_string(file.size()) + " does not match the header (expected " +
                   std::to_string(28 + expect * 4) + " bytes for this configuration)");

  auto take = [&](uint64_t n, const char* what) {
    std::vector<float> v(n);
    auto s = r.take(n * 4, what);
    std::memcpy(v.data(), s.data(), n * 4);
    return v;
  };
  auto take_layers = [&](uint64_t per_layer, const char* what, std::vector<float> LayerWeights::*field) {
    for (uint64_t l = 0; l < L; ++l) m.weights.layers[l].*field = take(per_layer, what);
  };
  Weights& w = m.weights;
  w.layers.resize(L);
  w.tok_embedding = take(V * d, "token_embedding");
  take_layers(d, "rms_att", &LayerWeights::attn_norm);
  take_layers(q * d, "wq", &LayerWeights::wq);
  take_layers(kv * d, "wk", &LayerWeights::wk);
  take_layers(kv * d, "wv", &LayerWeights::wv);
  take_layers(d * q, "wo", &LayerWeights::wo);
  take_layers(d, "rms_ffn", &LayerWeights::ffn_norm);
  take_layers(hd * d, "w1", &LayerWeights::w_gate);
  take_layers(d * hd, "w2", &LayerWeights::w_down);
  take_layers(hd * d, "w3", &LayerWeights::w_up);
  w.final_norm = take(d, "rms_final");
  r.take(rope_legacy * 4, "freq_cis (legacy)");
  if (!c.tied_embeddings) w.output = take(V * d, "wcls");

  const std::string tok = tokenizer_path.empty() ? find_tokenizer(path, c.vocab_size) : tokenizer_path;
  m.tokenizer = Tokenizer(read_llama2c_tokenizer(tok, c.vocab_size));
  return m;
}

}  // namespace kvscope
