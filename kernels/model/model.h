#pragma once
// A loaded Llama-family model: architecture, fp32 weights and tokenizer.
//
// Loaders (one file each) turn what users have on disk into this one structure:
//   llama2c.cpp      — llama2.c checkpoint (.bin) + tok*.bin beside it
//   hf.cpp           — Hugging Face folder: config.json, *.safetensors (sharded or not), tokenizer.json
//   gguf_model.cpp   — GGUF (llama.cpp): F32/F16/BF16/Q8_0/Q4_0/Q4_1, tokenizer from metadata
// Weights are dequantized to fp32 at load: the runtime is a reference, and later the
// GPU path converts from here.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/tokenizer/tokenizer.h"

namespace kvscope {

// How RoPE pairs the dimensions of one head.
//   Interleaved: rotate (x[2i], x[2i+1])           — llama2.c; GGUF llama (Q/K rows permuted at conversion)
//   Halves:      rotate (x[i], x[i + head_dim/2])   — Hugging Face safetensors (rotate_half)
enum class RopeLayout { Interleaved, Halves };

struct ModelConfig {
  std::string arch = "llama";
  std::string format;  // "llama2c", "hf", "gguf"
  std::string name;
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t vocab_size = 0;
  int32_t max_seq_len = 0;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  RopeLayout rope = RopeLayout::Interleaved;
  bool tied_embeddings = false;
  std::string weight_dtype;  // as stored on disk, e.g. "F32", "BF16", "Q4_1+Q8_0+F32"

  int32_t q_dim() const { return n_heads * head_dim; }
  int32_t kv_dim() const { return n_kv_heads * head_dim; }
  int32_t group() const { return n_heads / n_kv_heads; }  // query heads per KV head
  // Throws Error("<source>: <field>: ...") when inconsistent.
  void validate(const std::string& source) const;
};

// Row-major [out][in] fp32 matrices (y = W x).
struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  std::vector<float> wq;         // [q_dim][dim]
  std::vector<float> wk;         // [kv_dim][dim]
  std::vector<float> wv;         // [kv_dim][dim]
  std::vector<float> wo;         // [dim][q_dim]
  std::vector<float> ffn_norm;   // [dim]
  std::vector<float> w_gate;     // [hidden][dim]   (llama2.c w1)
  std::vector<float> w_down;     // [dim][hidden]   (llama2.c w2)
  std::vector<float> w_up;       // [hidden][dim]   (llama2.c w3)
};

struct Weights {
  std::vector<float> tok_embedding;  // [vocab][dim]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;     // [dim]
  std::vector<float> output;         // [vocab][dim]; empty when tied to tok_embedding
  const std::vector<float>& classifier() const { return output.empty() ? tok_embedding : output; }
};

struct Model {
  std::string path;
  ModelConfig config;
  Weights weights;
  Tokenizer tokenizer;
};

// Picks the loader from what checkpoint_path(path) is: a folder with config.json (Hugging
// Face), a .gguf file, or a llama2.c .bin (tokenizer: --tokenizer, else tok*.bin / tokenizer.bin beside it).
// The checkpoint a path names: a folder without safetensors that holds exactly one .gguf,
// or one llama2.c .bin (tok*.bin aside), stands for that file (stories260K's folder also
// has a descriptive config.json); anything else is returned as given.
std::string checkpoint_path(const std::string& path);
Model load_model(const std::string& path, const std::string& tokenizer_path = "");

// Just the tokenizer of a model (no weights are read).
Tokenizer load_tokenizer(const std::string& path, const std::string& tokenizer_path = "");

Model load_llama2c(const std::string& path, const std::string& tokenizer_path);
Model load_hf(const std::string& dir);
Model load_gguf(const std::string& path);

// The architecture as JSON (model-info, trace headers): name, format, dimensions, RoPE.
nlohmann::json config_json(const ModelConfig& c);

// Checks a loaded tensor's element count; throws "<file>: tensor '<name>': ..." on mismatch.
void check_numel(const std::string& file, const std::string& name, uint64_t got, uint64_t want);

}  // namespace kvscope
