// Model-runtime subcommands: generate, tokenize, logits, model-info.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "kernels/cpu/runtime.h"
#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/model.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

struct ModelArgs {
  std::string model;
  std::string tokenizer;
  int threads = 0;
};

void add_model_args(CLI::App* c, ModelArgs& a) {
  c->add_option("--model,-m", a.model,
                "Model: llama2.c .bin, .gguf file, or Hugging Face folder (config.json + safetensors)")
      ->required();
  c->add_option("--tokenizer", a.tokenizer, "llama2.c tokenizer (default: tok<vocab>.bin beside the model)");
  c->add_option("--threads,-t", a.threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
}

std::string prompt_text(const std::string& prompt, const std::string& file) {
  if (!file.empty()) {
    std::string t = read_text_file(file);
    return t;
  }
  return prompt;
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      ids.push_back(static_cast<int32_t>(std::stol(item, &used)));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw Error("--tokens: '" + item + "' is not an integer");
    }
  }
  return ids;
}

json model_json(const Model& m) {
  json j = config_json(m.config);
  j["path"] = m.path;
  j["tokenizer"] = m.tokenizer.identity();
  return j;
}

}  // namespace

void add_model_commands(CLI::App& app) {
  // ---- generate -------------------------------------------------------------
  {
    auto* c = app.add_subcommand("generate", "Generate a continuation of a prompt with the CPU runtime");
    static ModelArgs ma;
    static std::string prompt, prompt_file;
    static int max_new = 64;
    static float temperature = 0.0f, top_p = 0.9f;
    static uint64_t seed = 42;
    static bool as_json = false, stats = false, no_bos = false, ignore_eos = false, literal = false;
    add_model_args(c, ma);
    c->add_option("--prompt,-p", prompt, "Prompt text");
    c->add_option("--prompt-file", prompt_file, "Read the prompt from a file")->check(CLI::ExistingFile);
    c->add_option("--max-new-tokens,-n", max_new, "Tokens to generate")->check(CLI::Range(0, 1 << 20));
    c->add_option("--temperature", temperature, "0 = greedy; otherwise sample softmax(logits/T)")->check(CLI::Range(0.0f, 100.0f));
    c->add_option("--top-p", top_p, "Nucleus mass when sampling")->check(CLI::Range(0.0f, 1.0f));
    c->add_option("--seed", seed, "Sampling seed");
    c->add_flag("--no-bos", no_bos, "Do not prepend BOS even if the tokenizer asks for it");
    c->add_flag("--no-special", literal, "Treat control tokens in the prompt (<|im_start|>, <s>) as plain text");
    c->add_flag("--ignore-eos", ignore_eos, "Keep generating past EOS/BOS (benchmarks)");
    c->add_flag("--json", as_json, "Print ids, text and timing as JSON");
    c->add_flag("--stats", stats, "Print tokens/s to stderr");
    c->callback([] {
      const Model m = load_model(ma.model, ma.tokenizer);
      const Tokenizer& tok = m.tokenizer;
      const std::string text = prompt_text(prompt, prompt_file);
      const bool bos = !no_bos && (tok.add_bos_default() || m.config.format == "llama2c");
      std::vector<int32_t> ids = tok.encode(text, bos, !literal);
      if (ids.empty()) throw Error("generate: the prompt is empty and the tokenizer adds no BOS; give --prompt");
      cpu::Runtime rt(m, {.threads = ma.threads});
      cpu::Sampler sampler(temperature, top_p, seed);
      const int limit = std::min<int>(rt.kv().max_tokens(), static_cast<int>(ids.size()) + max_new);
      if (static_cast<int>(ids.size()) > rt.kv().max_tokens())
        throw Error("generate: prompt has " + std::to_string(ids.size()) + " tokens, more than the context of " +
                    std::to_string(rt.kv().max_tokens()));
      using clk = std::chrono::steady_clock;
      auto t0 = clk::now();
      auto logits = rt.prefill(ids);
      auto t1 = clk::now();
      std::vector<int32_t> gen;
      int decode_steps = 0;
      double decode_s = 0;
      if (!as_json) std::cout << tok.decode(ids) << std::flush;
      while (static_cast<int>(ids.size() + gen.size()) < limit) {
        const int32_t next = sampler.sample(logits);
        if (!ignore_eos && (next == tok.eos() || next == tok.bos())) break;
        gen.push_back(next);
        if (!as_json) std::cout << tok.piece(next) << std::flush;
        if (static_cast<int>(ids.size() + gen.size()) >= limit) break;
        const auto d0 = clk::now();
        logits = rt.decode(next);
        decode_s += std::chrono::duration<double>(clk::now() - d0).count();
        ++decode_steps;
      }
      const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
      const double prefill_rate = ids.size() / std::max(prefill_s, 1e-9);
      const double decode_rate = decode_steps / std::max(decode_s, 1e-9);
      if (as_json) {
        json j = {{"model", model_json(m)},
                  {"prompt_ids", ids},
                  {"generated_ids", gen},
                  {"text", tok.decode(gen)},
                  {"prefill_seconds", prefill_s},
                  {"prefill_tokens_per_s", prefill_rate},
                  {"decode_steps", decode_steps},
                  {"decode_seconds", decode_s},
                  {"decode_tokens_per_s", decode_rate},
                  {"threads", rt.threads()}};
        std::cout << j.dump(1, ' ', false, json::error_handler_t::replace) << "\n";
      } else {
        std::cout << "\n";
      }
      if (stats)
        std::fprintf(stderr, "prefill: %zu tokens, %.1f tok/s; decode: %d steps, %.1f tok/s (%d threads)\n", ids.size(),
                     prefill_rate, decode_steps, decode_rate, rt.threads());
    });
  }
  // ---- tokenize -------------------------------------------------------------
  {
    auto* c = app.add_subcommand("tokenize", "Encode text with a model's tokenizer; prints JSON ids");
    static ModelArgs ma;
    static std::string text, input_json;
    static bool bos = false, decode_back = false, special = false;
    add_model_args(c, ma);
    c->add_option("--text", text, "Text to encode");
    c->add_option("--input-json", input_json, "JSON array of strings; prints a JSON array of id arrays")->check(CLI::ExistingFile);
    c->add_flag("--bos", bos, "Prepend BOS");
    c->add_flag("--parse-special", special, "Match control tokens (<|im_start|>, <s>) in the text");
    c->add_flag("--decode", decode_back, "Also print the decoded text (single --text only)");
    c->callback([] {
      const Tokenizer tok = load_tokenizer(ma.model, ma.tokenizer);
      if (!input_json.empty()) {
        json in;
        try {
          in = json::parse(read_text_file(input_json));
        } catch (const json::parse_error& e) {
          fail_at(input_json, e.byte, std::string("invalid JSON: ") + e.what());
        } catch (const json::exception& e) {
          fail_at(input_json, 0, std::string("invalid JSON: ") + e.what());
        }
        if (!in.is_array()) fail(input_json, "expected a JSON array of strings");
        json out = json::array();
        for (size_t i = 0; i < in.size(); ++i) {
          if (!in[i].is_string()) fail(input_json, "[" + std::to_string(i) + "]: expected a string");
          out.push_back(tok.encode(in[i].get<std::string>(), bos, special));
        }
        std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
        return;
      }
      const auto ids = tok.encode(text, bos, special);
      json out = ids;
      if (decode_back) out = {{"ids", ids}, {"text", tok.decode(ids)}};
      std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    });
  }
  // ---- logits ---------------------------------------------------------------
  {
    auto* c = app.add_subcommand("logits", "Teacher-forced logits of a token sequence (raw float32 [T][vocab])");
    static ModelArgs ma;
    static std::string tokens, prompt, out_path, mode = "prefill";
    static int chunk = 0;
    add_model_args(c, ma);
    c->add_option("--tokens", tokens, "Comma-separated token ids");
    c->add_option("--prompt", prompt, "Text, encoded with the model's tokenizer (with BOS when it adds one)");
    c->add_option("--mode", mode, "prefill: one batched forward; decode: one token at a time; chunked: --chunk tokens at a time")
        ->check(CLI::IsMember({"prefill", "decode", "chunked"}));
    c->add_option("--chunk", chunk, "Chunk size for --mode chunked")->check(CLI::PositiveNumber);
    c->add_option("--out,-o", out_path, "Output file (little-endian float32, row-major [T][vocab])")->required();
    c->callback([] {
      const Model m = load_model(ma.model, ma.tokenizer);
      std::vector<int32_t> ids = !tokens.empty() ? parse_ids(tokens)
                                                 : m.tokenizer.encode(prompt, m.tokenizer.add_bos_default() || m.config.format == "llama2c");
      if (ids.empty()) throw Error("logits: no tokens (give --tokens or --prompt)");
      cpu::Runtime rt(m, {.threads = ma.threads});
      const size_t V = m.config.vocab_size;
      std::vector<float> all;
      all.reserve(ids.size() * V);
      const int step = mode == "prefill" ? static_cast<int>(ids.size()) : mode == "decode" ? 1 : (chunk > 0 ? chunk : 7);
      for (size_t i = 0; i < ids.size(); i += step) {
        const size_t n = std::min<size_t>(step, ids.size() - i);
        auto l = rt.forward(std::span<const int32_t>(ids.data() + i, n), true);
        all.insert(all.end(), l.begin(), l.end());
      }
      std::ofstream out(out_path, std::ios::binary);
      if (!out) fail(out_path, "cannot open for writing");
      out.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size() * sizeof(float)));
      if (!out) fail(out_path, "write failed");
      std::cout << json{{"tokens", ids}, {"vocab_size", V}, {"out", out_path}}.dump() << "\n";
    });
  }
  // ---- model-info -----------------------------------------------------------
  {
    auto* c = app.add_subcommand("model-info", "Load a model and print its configuration as JSON");
    static ModelArgs ma;
    add_model_args(c, ma);
    c->callback([] { std::cout << model_json(load_model(ma.model, ma.tokenizer)).dump(1, ' ', false, json::error_handler_t::replace) << "\n"; });
  }
}

}  // namespace kvscope::cli
