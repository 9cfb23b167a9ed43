// Trace subcommands: trace (capture), trace-info, trace-dump.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "kernels/cpu/runtime.h"
#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/model.h"
#include "traces/reader.h"
#include "traces/writer.h"
#ifdef KVSCOPE_HAVE_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/runtime.h"
#endif

namespace kvscope::cli {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

class Progress {
 public:
  Progress(int total, bool enabled) : total_(total), enabled_(enabled), t0_(std::chrono::steady_clock::now()) {}
  void update(int done) {
    if (!enabled_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const int w = 30, fill = total_ > 0 ? w * done / total_ : w;
    std::fprintf(stderr, "\r[%.*s%*s] %d/%d steps  %.1f steps/s ", fill, "##############################", w - fill, "", done,
                 total_, done / std::max(s, 1e-9));
    std::fflush(stderr);
  }
  void done() {
    if (enabled_) std::fprintf(stderr, "\n");
  }

 private:
  int total_;
  bool enabled_;
  std::chrono::steady_clock::time_point t0_;
};

// Per-layer statistics over every stored row: mean entropy (nats) and sink mass
// (probability on keys 0..3). Top-k rows: the residual is spread evenly over the keys
// not kept (an upper bound on the entropy) and counts toward the sink mass only through
// kept sink keys (a lower bound).
struct LayerStats {
  double entropy = 0, sink = 0, rows = 0, entries = 0;
};

void accumulate(const trace::RowView& r, trace::Mode mode, LayerStats& st, std::vector<float>& buf) {
  buf.resize(r.n);
  trace::halves_to_floats(r.probs, buf.data(), r.n);
  double h = 0, sink = 0;
  for (uint32_t i = 0; i < r.n; ++i) {
    const double p = buf[i];
    if (p > 0) h -= p * std::log(p);
    const uint32_t key = mode == trace::Mode::Dense ? i : r.keys[i];
    if (key < 4) sink += p;
  }
  if (mode == trace::Mode::TopK && r.residual > 0 && r.qpos + 1 > r.n) {
    const double rest = r.qpos + 1 - r.n;
    h -= r.residual * std::log(r.residual / rest);
  }
  st.entropy += h;
  st.sink += sink;
  st.rows += 1;
  st.entries += r.qpos + 1;
}

std::vector<float> to_floats(const uint16_t* p, size_t n) {
  std::vector<float> v(n);
  trace::halves_to_floats(p, v.data(), n);
  return v;
}

}  // namespace

// "cpu", "cuda" or "auto" -> the device to run on. `cuda` without a usable GPU (or in a
// build without the CUDA path) is an error that says which; `auto` falls back to cpu.
std::string resolve_device(const std::string& requested, const std::string& who) {
  if (requested == "cpu") return "cpu";
#ifdef KVSCOPE_HAVE_CUDA
  std::string why;
  if (!cuda::list_devices(&why).empty()) return "cuda";
  if (requested == "auto") return "cpu";
  throw Error(who + ": --device cuda: no CUDA device (" + why + "); use --device cpu or --device auto");
#else
  if (requested == "auto") return "cpu";
  throw Error(who + ": --device cuda: this build has no CUDA path (nvcc was not found at configure time); use --device cpu");
#endif
}

void add_trace_commands(CLI::App& app) {
  // ---- trace ----------------------------------------------------------------
  {
    auto* c = app.add_subcommand("trace", "Run a model on a prompt and capture its attention into a .kvt trace");
    static std::string model, tokenizer, prompt, prompt_file, out;
    static int max_new = 128, threads = 0, topk = 0;
    static bool dense = false, with_qkv = false, ignore_eos = false, literal = false, quiet = false;
    static trace::CaptureSettings cs;
    static float temperature = 0.0f, top_p = 0.9f;
    static uint64_t seed = 42;
    static std::string device = "cpu", timing_json, gpu_weights = "f16";
    static bool no_trace = false;
    c->add_option("--model,-m", model, "Model: llama2.c .bin, .gguf, or Hugging Face folder")->required();
    c->add_option("--tokenizer", tokenizer, "llama2.c tokenizer (default: beside the model)");
    c->add_option("--prompt-file", prompt_file, "Prompt text file")->check(CLI::ExistingFile);
    c->add_option("--prompt,-p", prompt, "Prompt text (instead of --prompt-file)");
    c->add_option("--max-new-tokens,-n", max_new, "Tokens to generate (steps = prefill + n-1 decodes), capped by the context")
        ->check(CLI::Range(1, 1 << 20));
    auto* o_topk = c->add_option("--topk", topk, "Store the top-k keys of each attention row (with residual mass and log-sum-exp)")
                       ->check(CLI::Range(1, 1 << 24));
    auto* o_dense = c->add_flag("--dense", dense, "Store every probability in fp16 (the default)");
    o_topk->excludes(o_dense);
    c->add_flag("--with-qkv", with_qkv, "Also store Q (stored rows) and K/V (every token) in fp16");
    c->add_option("--prefill-window", cs.prefill_window, "Prefill: last w query rows stored in full (default 32)")
        ->check(CLI::Range(0, 1 << 24));
    c->add_option("--steps-per-chunk", cs.steps_per_chunk, "Steps per compressed chunk (default 16)")->check(CLI::Range(1, 1 << 16));
    c->add_option("--zstd-level", cs.zstd_level, "zstd level (default 3; the committed traces use 19)")->check(CLI::Range(1, 22));
    c->add_option("--temperature", temperature, "0 = greedy")->check(CLI::Range(0.0f, 100.0f));
    c->add_option("--top-p", top_p, "Nucleus mass when sampling")->check(CLI::Range(0.0f, 1.0f));
    c->add_option("--seed", seed, "Sampling seed");
    c->add_flag("--ignore-eos", ignore_eos, "Keep generating past EOS (fills the context)");
    c->add_flag("--no-special", literal, "Treat control tokens in the prompt as plain text");
    c->add_option("--threads,-t", threads, "CPU threads (0: all cores); results do not depend on it")->check(CLI::NonNegativeNumber);
    c->add_option("--device", device, "cpu (default), cuda (needs a CUDA build and a GPU), auto (cuda when present)")
        ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
    c->add_option("--gpu-weights", gpu_weights, "CUDA path: 16-bit weight type, f16 (default) or bf16")->check(CLI::IsMember({"f16", "bf16"}));
    c->add_flag("--no-trace", no_trace, "Run the same steps without capturing (timing baseline); --out is then optional");
    c->add_option("--timing-json", timing_json, "Write run timings (tokens/s, seconds) to this JSON file");
    c->add_flag("--quiet,-q", quiet, "No progress bar");
    c->add_option("--out,-o", out, "Output trace file (.kvt); required unless --no-trace");
    c->callback([] {
      if (out.empty() && !no_trace) throw CLI::RequiredError("--out");
      const std::string dev = resolve_device(device, "trace");
      cs.mode = topk > 0 ? trace::Mode::TopK : trace::Mode::Dense;
      cs.topk = topk;
      cs.with_qkv = with_qkv;
      const Model m = load_model(model, tokenizer);
      std::string text = prompt;
      if (!prompt_file.empty()) text = read_text_file(prompt_file);
      const bool bos = m.tokenizer.add_bos_default() || m.config.format == "llama2c";
      const std::vector<int32_t> ids = m.tokenizer.encode(text, bos, !literal);
      if (ids.empty()) throw Error("trace: the prompt encodes to no tokens");
      // One driver for both runtimes: `fwd` runs tokens, `ordered` runs a writer call in
      // order with the attention records (at once on the CPU; on the CUDA path, on the
      // emission thread after the records of the steps before it), `drain` waits for them.
      std::unique_ptr<cpu::Runtime> cpu_rt;
      std::function<std::span<const float>(std::span<const int32_t>)> fwd;
      std::function<void(std::function<void()>)> ordered = [](std::function<void()> f) { f(); };
      std::function<void()> drain = [] {};
      std::function<double()> emit_wait = [] { return 0.0; };
      std::string gpu_name;
      int ctx = 0;
#ifdef KVSCOPE_HAVE_CUDA
      std::unique_ptr<cuda::Runtime> gpu_rt;
#endif
      if (dev == "cpu") {
        cpu_rt = std::make_unique<cpu::Runtime>(m, cpu::RuntimeOptions{.threads = threads});
        ctx = cpu_rt->kv().max_tokens();
        fwd = [&](std::span<const int32_t> t) { return cpu_rt->forward(t); };
      } else {
#ifdef KVSCOPE_HAVE_CUDA
        cuda::RuntimeOptions go;
        go.weights = gpu_weights == "bf16" ? cuda::HalfType::BF16 : cuda::HalfType::F16;
        gpu_rt = std::make_unique<cuda::Runtime>(m, go);
        ctx = gpu_rt->kv().max_tokens();
        gpu_name = gpu_rt->device_name();
        fwd = [&](std::span<const int32_t> t) { return gpu_rt->forward(t); };
        ordered = [&](std::function<void()> f) { gpu_rt->post(std::move(f)); };
        drain = [&] { gpu_rt->drain(); };
        emit_wait = [&] { return gpu_rt->emit_wait_seconds(); };
#endif
      }
      const int P = static_cast<int>(ids.size());
      if (P > ctx) throw Error("trace: prompt has " + std::to_string(P) + " tokens, more than the context of " + std::to_string(ctx));
      const int steps = std::min(max_new, ctx - P + 1);
      json extra = {{"device", dev},
                    {"max_new_tokens", max_new},
                    {"temperature", temperature},
                    {"top_p", top_p},
                    {"seed", seed},
                    {"ignore_eos", ignore_eos},
                    {"prompt_file", prompt_file.empty() ? "" : fs::path(prompt_file).filename().string()},
                    {"model_file", fs::path(model).filename().string()}};
      if (dev == "cuda") {
        extra["gpu"] = gpu_name;
        extra["gpu_weights"] = gpu_weights;
      }
      std::unique_ptr<trace::TraceWriter> w;
      if (!no_trace) {
        w = std::make_unique<trace::TraceWriter>(out, trace::TraceWriter::make_header(m, ids, cs, extra), m.config, cs);
        if (cpu_rt) cpu_rt->set_observer(w.get());
#ifdef KVSCOPE_HAVE_CUDA
        // Prefill: the writer stores the last prefill_window rows in full and only the
        // column sums of the others; the GPU computes those sums itself.
        trace::TraceWriter* wp = w.get();
        if (gpu_rt)
          gpu_rt->set_observer(wp, {.full_rows = cs.prefill_window,
                                    .add_colsum = [wp](int l, int h, std::span<const double> sums) { wp->add_prefill_colsum(l, h, sums); },
                                    .records_for_kv = cs.with_qkv});
#endif
      }
      trace::TraceWriter* wp = w.get();
      cpu::Sampler sampler(temperature, top_p, seed);
      Progress bar(steps, !quiet && ::isatty(2));
      using clk = std::chrono::steady_clock;
      const auto t0 = clk::now();
      if (wp) ordered([wp, P] { wp->begin_step(0, trace::StepKind::Prefill, P, 0, -1); });
      auto logits = fwd(ids);
      if (wp) ordered([wp] { wp->end_step(); });
      const auto t1 = clk::now();
      bar.update(1);
      int done = 1;
      for (int s = 1; s < steps; ++s) {
        const int32_t next = sampler.sample(logits);
        if (!ignore_eos && (next == m.tokenizer.eos() || (m.config.format == "llama2c" && next == m.tokenizer.bos()))) break;
        if (wp) ordered([wp, s, P, next] { wp->begin_step(s, trace::StepKind::Decode, 1, P + s - 1, next); });
        logits = fwd({&next, 1});
        if (wp) ordered([wp] { wp->end_step(); });
        bar.update(++done);
      }
      const auto t2 = clk::now();
      drain();
      if (wp) wp->finish();
      bar.done();
      const double secs = std::chrono::duration<double>(clk::now() - t0).count();
      const double pre_s = std::chrono::duration<double>(t1 - t0).count(), dec_s = std::chrono::duration<double>(t2 - t1).count();
      const unsigned long long bytes = wp ? static_cast<unsigned long long>(wp->bytes_written()) : 0ull;
      std::fprintf(stderr,
                   "%s%s: %d steps (prompt %d tokens, context %d), %llu bytes, %.2f s; prefill %.1f tok/s, decode %.1f tok/s%s\n",
                   wp ? "wrote " : "ran (no trace)", wp ? out.c_str() : "", done, P, P + done - 1, bytes, secs, P / std::max(pre_s, 1e-9),
                   (done - 1) / std::max(dec_s, 1e-9), dev == "cuda" ? (" [cuda: " + gpu_name + "]").c_str() : "");
      if (!timing_json.empty()) {
        const json tj = {{"device", dev},
                         {"gpu", gpu_name},
                         {"traced", wp != nullptr},
                         {"prompt_tokens", P},
                         {"steps", done},
                         {"prefill_s", pre_s},
                         {"decode_s", dec_s},
                         {"total_s", secs},
                         {"prefill_tok_s", P / std::max(pre_s, 1e-9)},
                         {"decode_tok_s", (done - 1) / std::max(dec_s, 1e-9)},
                         {"tok_s", (P + done - 1) / std::max(secs, 1e-9)},
                         {"emit_wait_s", emit_wait()},
                         {"bytes", bytes}};
        std::ofstream f(timing_json);
        if (!f) throw Error(timing_json + ": cannot create");
        f << tj.dump(1) << "\n";
      }
    });
  }
  // ---- trace-info -----------------------------------------------------------
  {
    auto* c = app.add_subcommand("trace-info", "Summarise a trace: model, steps, sizes, per-layer entropy and sink mass");
    static std::string path;
    static bool as_json = false;
    c->add_option("trace", path, "Trace file (.kvt)")->required();
    c->add_flag("--json", as_json, "Machine-readable output");
    c->callback([] {
      trace::TraceReader r(path);
      const auto& in = r.info();
      std::vector<LayerStats> st(in.n_layers);
      trace::LayerFrame f;
      std::vector<float> buf;
      std::string read_error;
      try {
        for (uint32_t ci = 0; ci < r.chunks().size(); ++ci)
          for (uint32_t l = 0; l < in.n_layers; ++l) {
            r.read_frame(ci, l, f);
            for (const auto& sv : f.steps)
              for (uint32_t i = 0; i < sv.n_rows * in.n_heads; ++i) accumulate(sv.rows[i], in.mode, st[l], buf);
          }
      } catch (const Error& e) {
        read_error = e.what();
      }
      double entries = 0;
      for (auto& s : st) entries += s.entries;
      const json& h = r.header();
      json layers = json::array();
      for (uint32_t l = 0; l < in.n_layers; ++l)
        layers.push_back({{"layer", l},
                          {"mean_entropy_nats", st[l].rows ? st[l].entropy / st[l].rows : 0.0},
                          {"sink_mass", st[l].rows ? st[l].sink / st[l].rows : 0.0},
                          {"rows", st[l].rows}});
      const uint32_t last_ctx = r.n_steps() == 0 ? 0 : in.prompt_len + r.n_steps() - 1;
      json j = {{"file", path},
                {"model", h["model"]},
                {"synthetic", in.synthetic},
                {"tokenizer", h.value("tokenizer", json::object())},
                {"capture", h["capture"]},
                {"prompt_tokens", in.prompt_len},
                {"steps", r.n_steps()},
                {"final_context", last_ctx},
                {"layers", in.n_layers},
                {"q_heads", in.n_heads},
                {"kv_heads", in.n_kv_heads},
                {"chunks", r.chunks().size()},
                {"bytes", r.file_size()},
                {"attention_entries", entries},
                {"bytes_per_entry", entries > 0 ? r.file_size() / entries : 0.0},
                {"complete", r.complete() && read_error.empty()},
                {"per_layer", layers}};
      if (!r.damage().empty()) j["damage"] = r.damage();
      if (!read_error.empty()) j["damage"] = read_error;
      if (as_json) {
        std::cout << j.dump(1, ' ', false, json::error_handler_t::replace) << "\n";
      } else {
        std::printf("trace        %s%s\n", path.c_str(), in.synthetic ? "  (SYNTHETIC)" : "");
        if (const json s = h.contains("synth") && h["synth"].is_object() ? h["synth"] : json::object(); in.synthetic)
          std::printf("synthetic    yes: kvscope synth, shape %s, seed %s, fitted to %s (docs/synth.md)\n", s.value("shape", json("?")).dump().c_str(),
                      s.value("seed", json("?")).dump().c_str(), s.contains("fit") && s["fit"].is_object() ? s["fit"].value("trace", json("?")).dump().c_str() : "nothing");
        auto str = [](const json& o, const char* k) { return o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : "?"; };
        std::printf("model        %s (%s): %u layers, %u query / %u KV heads, head_dim %u\n", str(h["model"], "name").c_str(),
                    str(h["model"], "format").c_str(), in.n_layers, in.n_heads, in.n_kv_heads, in.head_dim);
        std::printf("capture      %s%s%s, prefill window %u\n", in.mode == trace::Mode::Dense ? "dense fp16" : "top-k",
                    in.mode == trace::Mode::TopK ? (" k=" + std::to_string(in.topk)).c_str() : "",
                    in.with_qkv ? ", with Q/K/V" : "", in.prefill_window);
        std::printf("steps        %u (step 0 = prefill of %u tokens; final context %u)\n", r.n_steps(), in.prompt_len, last_ctx);
        std::printf("bytes        %llu in %zu chunks; %.0f attention entries; %.4f bytes/entry\n",
                    static_cast<unsigned long long>(r.file_size()), r.chunks().size(), entries,
                    entries > 0 ? r.file_size() / entries : 0.0);
        std::printf("%-6s %18s %10s\n", "layer", "mean entropy (nat)", "sink mass");
        for (auto& L : layers)
          std::printf("%-6d %18.4f %10.4f\n", L["layer"].get<int>(), L["mean_entropy_nats"].get<double>(), L["sink_mass"].get<double>());
      }
      if (!read_error.empty()) throw Error(read_error);
      if (!r.damage().empty()) throw Error(r.damage());
    });
  }
  // ---- trace-dump -----------------------------------------------------------
  {
    auto* c = app.add_subcommand("trace-dump", "Print one head's attention row(s) at one step (and Q/K/V if stored)");
    static std::string path;
    static uint32_t step = 0, layer = 0, head = 0;
    static bool as_json = false, all_rows = false;
    c->add_option("trace", path, "Trace file (.kvt)")->required();
    c->add_option("--step,-s", step, "Step (0 = prefill)")->required();
    c->add_option("--layer,-l", layer, "Layer")->required();
    c->add_option("--head", head, "Query head")->required();
    c->add_flag("--all-rows", all_rows, "Prefill: print every stored row (default: the last)");
    c->add_flag("--json", as_json, "Machine-readable output");
    c->callback([] {
      trace::TraceReader r(path);
      const auto& in = r.info();
      if (layer >= in.n_layers) throw Error("trace-dump: --layer " + std::to_string(layer) + " out of range (trace has " + std::to_string(in.n_layers) + ")");
      if (head >= in.n_heads) throw Error("trace-dump: --head " + std::to_string(head) + " out of range (trace has " + std::to_string(in.n_heads) + ")");
      trace::LayerFrame f;
      const trace::StepLayerView& v = r.step_layer(step, layer, f);
      const uint32_t kvh = head / in.group, hd = in.head_dim;
      json rows = json::array();
      const uint32_t r0 = all_rows ? 0 : v.n_rows - 1;
      for (uint32_t ri = r0; ri < v.n_rows; ++ri) {
        const trace::RowView& rv = v.row(ri, head, in.n_heads);
        std::vector<uint32_t> keys(rv.n);
        for (uint32_t i = 0; i < rv.n; ++i) keys[i] = in.mode == trace::Mode::Dense ? i : rv.keys[i];
        json row = {{"qpos", rv.qpos}, {"lse", rv.lse}, {"keys", keys}, {"probs", to_floats(rv.probs, rv.n)}};
        if (in.mode == trace::Mode::TopK) row["residual"] = rv.residual;
        if (v.q) row["q"] = to_floats(v.q + (static_cast<size_t>(ri) * in.n_heads + head) * hd, hd);
        rows.push_back(row);
      }
      json j = {{"step", v.step},
                {"kind", v.kind == trace::StepKind::Prefill ? "prefill" : "decode"},
                {"layer", layer},
                {"head", head},
                {"kv_head", kvh},
                {"token", v.token},
                {"n_queries", v.n_queries},
                {"first_pos", v.first_pos},
                {"rows", rows}};
      if (v.colsum) j["colsum"] = std::vector<float>(v.colsum + static_cast<size_t>(head) * v.n_queries,
                                                      v.colsum + static_cast<size_t>(head + 1) * v.n_queries);
      if (v.k) {
        json k = json::array(), vv = json::array();
        for (uint32_t t = 0; t < v.n_queries; ++t) {
          k.push_back(to_floats(v.k + (static_cast<size_t>(t) * in.n_kv_heads + kvh) * hd, hd));
          vv.push_back(to_floats(v.v + (static_cast<size_t>(t) * in.n_kv_heads + kvh) * hd, hd));
        }
        j["k"] = k;  // one row per token run in this step, for this head's KV head
        j["v"] = vv;
      }
      if (as_json) {
        std::cout << j.dump() << "\n";
        return;
      }
      std::printf("step %u (%s), layer %u, head %u (KV head %u)%s\n", v.step, j["kind"].get<std::string>().c_str(), layer, head,
                  kvh, v.token >= 0 ? (", token " + std::to_string(v.token)).c_str() : "");
      for (auto& row : rows) {
        std::printf("query position %u  lse %.6f", row["qpos"].get<uint32_t>(), row["lse"].get<float>());
        if (row.contains("residual")) std::printf("  residual %.6f", row["residual"].get<float>());
        std::printf("\n  key:prob");
        const auto& ks = row["keys"];
        const auto& ps = row["probs"];
        for (size_t i = 0; i < ks.size(); ++i) std::printf("%s%u:%.5f", i % 8 == 0 ? "\n  " : "  ", ks[i].get<uint32_t>(), ps[i].get<float>());
        std::printf("\n");
        if (row.contains("q")) {
          std::printf("  q:");
          for (auto& x : row["q"]) std::printf(" %.4f", x.get<float>());
          std::printf("\n");
        }
      }
      if (j.contains("k")) {
        std::printf("k (last token):");
        for (auto& x : j["k"].back()) std::printf(" %.4f", x.get<float>());
        std::printf("\nv (last token):");
        for (auto& x : j["v"].back()) std::printf(" %.4f", x.get<float>());
        std::printf("\n");
      }
    });
  }
}

}  // namespace kvscope::cli
