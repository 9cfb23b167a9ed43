#include "kernels/model/model.h"

#include <filesystem>

#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/gguf.h"

namespace kvscope {

namespace fs = std::filesystem;

void ModelConfig::validate(const std::string& src) const {
  auto positive = [&](const char* field, int64_t v) {
    if (v <= 0) fail(src, std::string(field) + ": must be positive, got " + std::to_string(v));
  };
  positive("dim", dim);
  positive("hidden_dim", hidden_dim);
  positive("n_layers", n_layers);
  positive("n_heads", n_heads);
  positive("n_kv_heads", n_kv_heads);
  positive("head_dim", head_dim);
  positive("vocab_size", vocab_size);
  positive("max_seq_len", max_seq_len);
  if (n_heads % n_kv_heads != 0)
    fail(src, "n_kv_heads: " + std::to_string(n_kv_heads) + " does not divide n_heads " + std::to_string(n_heads));
  if (head_dim % 2 != 0) fail(src, "head_dim: must be even for RoPE, got " + std::to_string(head_dim));
  if (!(rope_theta > 0)) fail(src, "rope_theta: must be positive");
  if (!(norm_eps > 0)) fail(src, "norm_eps: must be positive");
  auto at_most = [&](const char* field, int64_t v, int64_t limit) {
    if (v > limit) fail(src, std::string(field) + ": " + std::to_string(v) + " exceeds the supported maximum " + std::to_string(limit));
  };
  at_most("dim", dim, 1 << 16);
  at_most("hidden_dim", hidden_dim, 1 << 18);
  at_most("n_layers", n_layers, 1024);
  at_most("n_heads", n_heads, 1024);
  at_most("head_dim", head_dim, 1024);
  at_most("vocab_size", vocab_size, 1 << 22);
  at_most("max_seq_len", max_seq_len, 1 << 24);
}

nlohmann::json config_json(const ModelConfig& c) {
  return {{"name", c.name},
          {"format", c.format},
          {"arch", c.arch},
          {"dim", c.dim},
          {"hidden_dim", c.hidden_dim},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"head_dim", c.head_dim},
          {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len},
          {"rope_theta", c.rope_theta},
          {"rope_layout", c.rope == RopeLayout::Interleaved ? "interleaved" : "halves"},
          {"norm_eps", c.norm_eps},
          {"tied_embeddings", c.tied_embeddings},
          {"weight_dtype", c.weight_dtype}};
}

void check_numel(const std::string& file, const std::string& name, uint64_t got, uint64_t want) {
  if (got != want)
    fail(file, "tensor '" + name + "': has " + std::to_string(got) + " elements, expected " + std::to_string(want));
}

std::string checkpoint_path(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return path;
  std::vector<std::string> bins, ggufs;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    const std::string name = e.path().filename().string(), ext = e.path().extension().string();
    if (ext == ".safetensors" || name == "model.safetensors.index.json") return path;  // Hugging Face
    if (ext == ".gguf") ggufs.push_back(e.path().string());
    if (ext == ".bin" && name.rfind("tok", 0) != 0) bins.push_back(e.path().string());
  }
  if (ggufs.size() == 1 && bins.empty()) return ggufs[0];
  if (bins.size() == 1 && ggufs.empty()) return bins[0];
  return path;
}

Model load_model(const std::string& given, const std::string& tokenizer_path) {
  const std::string path = checkpoint_path(given);
  fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) fail(path, "no such file or directory");
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "config.json")) return load_hf(path);
    fail(path, "folder has no config.json (expected a Hugging Face model folder)");
  }
  if (p.extension() == ".gguf") return load_gguf(path);
  if (p.filename() == "config.json") return load_hf(p.parent_path().string());
  if (p.extension() == ".safetensors") return load_hf(p.parent_path().string());
  return load_llama2c(path, tokenizer_path);
}

Tokenizer load_tokenizer(const std::string& given, const std::string& tokenizer_path) {
  const std::string path = checkpoint_path(given);
  fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) fail(path, "no such file or directory");
  if (fs::is_directory(p, ec)) return Tokenizer(read_hf_tokenizer_json((p / "tokenizer.json").string()));
  if (p.extension() == ".gguf") {
    MappedFile f(path);
    return Tokenizer(vocab_from_gguf(gguf::parse(f.bytes(), path)));
  }
  if (p.filename() == "tokenizer.json") return Tokenizer(read_hf_tokenizer_json(path));
  return load_model(path, tokenizer_path).tokenizer;  // llama2.c: small, the header gives the vocab size
}

}  // namespace kvscope
