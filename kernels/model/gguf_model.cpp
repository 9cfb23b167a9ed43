// GGUF (llama.cpp) model loader for general.architecture = "llama".
// Tensors are dequantized to fp32 at load. llama.cpp's converter permutes the rows of
// attn_q / attn_k so that RoPE rotates adjacent pairs: the runtime therefore uses
// RopeLayout::Interleaved for GGUF files, like llama2.c, unlike HF safetensors.
#include <filesystem>
#include <set>

#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/gguf.h"
#include "kernels/model/model.h"

namespace kvscope {

Model load_gguf(const std::string& path) {
  MappedFile file(path);
  const gguf::File g = gguf::parse(file.bytes(), path);
  const std::string arch = gguf::get_string(g, "general.architecture");
  if (arch != "llama") fail(path, "metadata key 'general.architecture': '" + arch + "' is not supported (supported: llama)");

  Model m;
  m.path = path;
  ModelConfig& c = m.config;
  c.format = "gguf";
  c.name = g.meta.contains("general.name") && g.meta["general.name"].is_string()
               ? g.meta["general.name"].get<std::string>()
               : std::filesystem::path(path).stem().string();
  auto key = [&](const char* k) { return arch + "." + k; };
  // Metadata integers are 64-bit; the model's dimensions must fit in int32.
  auto i32 = [&](const std::string& k, int64_t v) {
    if (v < INT32_MIN || v > INT32_MAX)
      fail(path, "metadata key '" + k + "': value " + std::to_string(v) + " out of range");
    return static_cast<int32_t>(v);
  };
  auto req_int = [&](const std::string& k) { return i32(k, gguf::get_int(g, k)); };
  auto opt_int = [&](const std::string& k, int64_t dflt) { return i32(k, g.meta.contains(k) ? gguf::get_int(g, k) : dflt); };
  c.dim = req_int(key("embedding_length"));
  c.hidden_dim = req_int(key("feed_forward_length"));
  c.n_layers = req_int(key("block_count"));
  c.n_heads = req_int(key("attention.head_count"));
  c.n_kv_heads = opt_int(key("attention.head_count_kv"), c.n_heads);
  const int64_t hd_default = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.head_dim = opt_int(key("attention.key_length"), hd_default);
  if (g.meta.contains(key("rope.dimension_count")) && gguf::get_int(g, key("rope.dimension_count")) != c.head_dim)
    fail(path, "metadata key '" + key("rope.dimension_count") + "': partial RoPE is not supported");
  c.max_seq_len = opt_int(key("context_length"), 2048);
  c.rope_theta = static_cast<float>(g.meta.contains(key("rope.freq_base")) ? gguf::get_float(g, key("rope.freq_base")) : 10000.0);
  c.norm_eps = static_cast<float>(gguf::get_float(g, key("attention.layer_norm_rms_epsilon")));
  if (g.meta.contains(key("rope.scaling.type")) && gguf::get_string(g, key("rope.scaling.type")) != "none")
    fail(path, "metadata key '" + key("rope.scaling.type") + "': RoPE scaling is not supported");
  c.rope = RopeLayout::Interleaved;

  std::map<std::string, const gguf::TensorInfo*> by_name;
  for (const auto& t : g.tensors) by_name[t.name] = &t;
  // Vocabulary size: from metadata, else from the embedding's outer dimension.
  auto emb = by_name.find("token_embd.weight");
  if (emb == by_name.end()) fail(path, "tensor 'token_embd.weight' is missing");
  c.vocab_size =
      opt_int(key("vocab_size"), emb->second->dims.size() == 2 ? static_cast<int64_t>(emb->second->dims[1]) : 0);
  c.tied_embeddings = by_name.find("output.weight") == by_name.end();
  c.validate(path);

  std::set<std::string> types;
  auto load = [&](const std::string& name, uint64_t rows, uint64_t cols) -> std::vector<float> {
    auto it = by_name.find(name);
    if (it == by_name.end()) fail(path, "tensor '" + name + "' is missing");
    const gguf::TensorInfo& t = *it->second;
    // GGUF dims are innermost first: a [rows][cols] matrix has dims {cols, rows}.
    const bool ok = cols == 0 ? (t.dims.size() == 1 && t.dims[0] == rows)
                              : (t.dims.size() == 2 && t.dims[0] == cols && t.dims[1] == rows);
    if (!ok) {
      std::string s = "[";
      for (size_t i = 0; i < t.dims.size(); ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
      fail_at(path, t.info_offset,
              "tensor '" + name + "': dims " + s + "] but the metadata implies [" +
                  (cols ? std::to_string(cols) + ", " : "") + std::to_string(rows) + "]");
    }
    if (!gguf::type_supported(t.type))
      fail_at(path, t.info_offset, "tensor '" + name + "': unsupported type " + gguf::type_name(t.type) +
                                       " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
    const uint64_t n = t.n_elements();
    gguf::type_nbytes(t.type, n, path, name);  // checks block divisibility
    std::vector<float> out(n);
    gguf::dequantize(t.type, file.data() + g.data_offset + t.offset, out.data(), n);
    types.insert(gguf::type_name(t.type));
    return out;
  };

  const uint64_t d = c.dim, q = c.q_dim(), kv = c.kv_dim(), h = c.hidden_dim, V = c.vocab_size;
  Weights& w = m.weights;
  w.tok_embedding = load("token_embd.weight", V, d);
  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& lw = w.layers[l];
    lw.attn_norm = load(p + "attn_norm.weight", d, 0);
    lw.wq = load(p + "attn_q.weight", q, d);
    lw.wk = load(p + "attn_k.weight", kv, d);
    lw.wv = load(p + "attn_v.weight", kv, d);
    lw.wo = load(p + "attn_output.weight", d, q);
    lw.ffn_norm = load(p + "ffn_norm.weight", d, 0);
    lw.w_gate = load(p + "ffn_gate.weight", h, d);
    lw.w_up = load(p + "ffn_up.weight", h, d);
    lw.w_down = load(p + "ffn_down.weight", d, h);
  }
  w.final_norm = load("output_norm.weight", d, 0);
  if (!c.tied_embeddings) w.output = load("output.weight", V, d);
  for (auto& t : types) c.weight_dtype += (c.weight_dtype.empty() ? "" : "+") + t;

  m.tokenizer = Tokenizer(vocab_from_gguf(g));
  if (m.tokenizer.vocab_size() != c.vocab_size)
    fail(path, "metadata key 'tokenizer.ggml.tokens': " + std::to_string(m.tokenizer.vocab_size()) +
                   " tokens but the model has vocab_size " + std::to_string(c.vocab_size));
  return m;
}

}  // namespace kvscope
