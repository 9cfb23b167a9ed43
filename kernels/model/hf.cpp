// Hugging Face Llama-family folder loader:
//   config.json                       — architecture (LlamaForCausalLM / model_type "llama")
//   model.safetensors                 — or shards listed in model.safetensors.index.json
//   tokenizer.json                    — byte-level BPE or SentencePiece-style BPE
// HF checkpoints keep q_proj/k_proj rows in the order that rotate_half RoPE expects,
// so the runtime rotates halves (RopeLayout::Halves).
#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/model.h"
#include "kernels/model/safetensors.h"

namespace kvscope {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json parse_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail_at(path, e.byte, std::string("invalid JSON: ") + e.what());
  } catch (const json::exception& e) {  // e.g. a number out of range
    fail_at(path, 0, std::string("invalid JSON: ") + e.what());
  }
}

int32_t cfg_int(const json& j, const std::string& file, const char* key, std::optional<int64_t> dflt = {}) {
  int64_t v;
  if (!j.contains(key) || j[key].is_null()) {
    if (!dflt) fail(file, std::string(key) + ": missing");
    v = *dflt;
  } else {
    if (!j[key].is_number_integer()) fail(file, std::string(key) + ": expected an integer");
    if (j[key].is_number_unsigned() && j[key].get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail(file, std::string(key) + ": value out of range");
    v = j[key].get<int64_t>();
  }
  if (v < INT32_MIN || v > INT32_MAX) fail(file, std::string(key) + ": value " + std::to_string(v) + " out of range");
  return static_cast<int32_t>(v);
}

bool cfg_bool(const json& j, const std::string& file, const char* key, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) fail(file, std::string(key) + ": expected a boolean");
  return j[key].get<bool>();
}

std::string cfg_str(const json& j, const std::string& file, const char* key, const std::string& dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_string()) fail(file, std::string(key) + ": expected a string");
  return j[key].get<std::string>();
}

double cfg_num(const json& j, const std::string& file, const char* key, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) fail(file, std::string(key) + ": expected a number");
  return j[key].get<double>();
}

ModelConfig read_config(const std::string& file) {
  const json j = parse_json_file(file);
  if (!j.is_object()) fail(file, "expected a JSON object");
  ModelConfig c;
  c.format = "hf";
  const std::string mt = cfg_str(j, file, "model_type", "");
  bool llama = mt == "llama";
  if (j.contains("architectures") && j["architectures"].is_array())
    for (auto& a : j["architectures"])
      if (a == "LlamaForCausalLM") llama = true;
  if (!llama)
    fail(file, "model_type: '" + mt + "' is not supported (supported: llama / LlamaForCausalLM)");
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    fail(file, "hidden_act: only 'silu' (SwiGLU) is supported, got " + j["hidden_act"].dump());
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    fail(file, "rope_scaling: RoPE scaling is not supported, got " + j["rope_scaling"].dump());
  if (cfg_bool(j, file, "attention_bias", false) || cfg_bool(j, file, "mlp_bias", false))
    fail(file, "attention_bias/mlp_bias: biases are not supported");
  c.name = cfg_str(j, file, "_name_or_path", fs::path(file).parent_path().filename().string());
  c.dim = cfg_int(j, file, "hidden_size");
  c.hidden_dim = cfg_int(j, file, "intermediate_size");
  c.n_layers = cfg_int(j, file, "num_hidden_layers");
  c.n_heads = cfg_int(j, file, "num_attention_heads");
  c.n_kv_heads = cfg_int(j, file, "num_key_value_heads", c.n_heads);
  c.head_dim = cfg_int(j, file, "head_dim", c.n_heads > 0 && c.dim % c.n_heads == 0 ? c.dim / c.n_heads : 0);
  c.vocab_size = cfg_int(j, file, "vocab_size");
  c.max_seq_len = cfg_int(j, file, "max_position_embeddings", 2048);
  c.rope_theta = static_cast<float>(cfg_num(j, file, "rope_theta", 10000.0));
  c.norm_eps = static_cast<float>(cfg_num(j, file, "rms_norm_eps", 1e-6));
  c.tied_embeddings = cfg_bool(j, file, "tie_word_embeddings", false);
  c.rope = RopeLayout::Halves;
  c.validate(file);
  return c;
}

// Maps tensor name -> shard file, from the index or from the one file present.
std::map<std::string, std::string> weight_map(const fs::path& dir) {
  std::map<std::string, std::string> m;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const json j = parse_json_file(index.string());
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index.string(), "weight_map: missing or not an object");
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail(index.string(), "weight_map." + name + ": expected a file name");
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        fail(index.string(), "weight_map." + name + ": shard name '" + f + "' must be a plain file name");
      m[name] = (dir / f).string();
    }
    return m;
  }
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) fail(dir.string(), "no *.safetensors files and no model.safetensors.index.json");
  for (auto& f : files) {
    MappedFile mf(f.string());
    auto h = safetensors::parse_header(mf.bytes(), f.string());
    for (auto& [name, _] : h.tensors) m[name] = f.string();
  }
  return m;
}

struct Shard {
  MappedFile file;
  safetensors::Header header;
};

}  // namespace

Model load_hf(const std::string& dir_str) {
  const fs::path dir(dir_str);
  Model m;
  m.path = dir_str;
  m.config = read_config((dir / "config.json").string());
  ModelConfig& c = m.config;

  const auto wmap = weight_map(dir);
  std::map<std::string, std::unique_ptr<Shard>> shards;
  std::set<std::string> dtypes;
  auto load = [&](const std::string& name, uint64_t rows, uint64_t cols) -> std::vector<float> {
    auto it = wmap.find(name);
    if (it == wmap.end()) fail(dir_str, "tensor '" + name + "' is missing from the checkpoint");
    auto& sh = shards[it->second];
    if (!sh) {
      sh = std::make_unique<Shard>();
      sh->file = MappedFile(it->second);
      sh->header = safetensors::parse_header(sh->file.bytes(), it->second);
    }
    auto ti = sh->header.tensors.find(name);
    if (ti == sh->header.tensors.end()) fail(it->second, "tensor '" + name + "' is missing (the index lists it here)");
    const auto& shape = ti->second.shape;
    const bool ok = cols == 0 ? (shape.size() == 1 && shape[0] == rows)
                              : (shape.size() == 2 && shape[0] == rows && shape[1] == cols);
    if (!ok) {
      std::string s = "[";
      for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
      fail(it->second, "tensor '" + name + "': shape " + s + "] but the config implies [" + std::to_string(rows) +
                           (cols ? ", " + std::to_string(cols) : "") + "]");
    }
    dtypes.insert(ti->second.dtype);
    return safetensors::to_f32(sh->file.bytes(), sh->header, name, it->second);
  };

  const uint64_t d = c.dim, q = c.q_dim(), kv = c.kv_dim(), h = c.hidden_dim, V = c.vocab_size;
  Weights& w = m.weights;
  w.tok_embedding = load("model.embed_tokens.weight", V, d);
  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& lw = w.layers[l];
    lw.attn_norm = load(p + "input_layernorm.weight", d, 0);
    lw.wq = load(p + "self_attn.q_proj.weight", q, d);
    lw.wk = load(p + "self_attn.k_proj.weight", kv, d);
    lw.wv = load(p + "self_attn.v_proj.weight", kv, d);
    lw.wo = load(p + "self_attn.o_proj.weight", d, q);
    lw.ffn_norm = load(p + "post_attention_layernorm.weight", d, 0);
    lw.w_gate = load(p + "mlp.gate_proj.weight", h, d);
    lw.w_up = load(p + "mlp.up_proj.weight", h, d);
    lw.w_down = load(p + "mlp.down_proj.weight", d, h);
  }
  w.final_norm = load("model.norm.weight", d, 0);
  if (!c.tied_embeddings) {
    if (wmap.count("lm_head.weight")) {
      w.output = load("lm_head.weight", V, d);
    } else {
      fail(dir_str, "tensor 'lm_head.weight' is missing and tie_word_embeddings is false");
    }
  }
  for (auto& t : dtypes) c.weight_dtype += (c.weight_dtype.empty() ? "" : "+") + t;

  const fs::path tok = dir / "tokenizer.json";
  if (!fs::exists(tok)) fail(dir_str, "tokenizer.json is missing");
  m.tokenizer = Tokenizer(read_hf_tokenizer_json(tok.string()));
  return m;
}

}  // namespace kvscope
