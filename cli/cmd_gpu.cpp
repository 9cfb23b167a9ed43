// gpu-bench: measurements of the CUDA path (bench/gpu.sh drives them).
//   gpu-bench devices     the GPUs the CUDA runtime sees
//   gpu-bench attention   decode-attention HBM bandwidth on random data (Llama-3-8B layer shape)
//   gpu-bench logits      teacher-forced logits over a trace's tokens, on cpu or cuda, to a .f32 file
// In a build without the CUDA path the subcommand exists and says so.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "kernels/cpu/runtime.h"
#include "kernels/io/error.h"
#include "kernels/model/model.h"
#include "traces/reader.h"
#ifdef KVSCOPE_HAVE_CUDA
#include "kernels/cuda/attention_bench.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/runtime.h"
#endif

namespace kvscope::cli {

using nlohmann::json;

std::string resolve_device(const std::string& requested, const std::string& who);  // cmd_trace.cpp

#ifndef KVSCOPE_HAVE_CUDA

void add_gpu_commands(CLI::App& app) {
  auto* c = app.add_subcommand("gpu-bench", "CUDA path measurements (this build has no CUDA path)");
  c->allow_extras();
  c->callback([] { throw Error("gpu-bench: this build has no CUDA path (nvcc was not found at configure time)"); });
}

#else

namespace {

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  size_t i = 0;
  while (i < s.size()) {
    const size_t j = s.find(',', i);
    v.push_back(std::stoi(s.substr(i, j == std::string::npos ? std::string::npos : j - i)));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  return v;
}

}  // namespace

void add_gpu_commands(CLI::App& app) {
  auto* g = app.add_subcommand("gpu-bench", "CUDA path measurements: devices, attention bandwidth, logits");
  g->require_subcommand(1);
  // ---- devices ----
  {
    auto* c = g->add_subcommand("devices", "List the GPUs the CUDA runtime sees (JSON)");
    c->callback([] {
      std::string why;
      const auto devs = cuda::list_devices(&why);
      json a = json::array();
      for (const auto& d : devs)
        a.push_back({{"index", d.index}, {"name", d.name}, {"sm", std::to_string(d.sm_major) + "." + std::to_string(d.sm_minor)},
                     {"total_mem", d.total_mem}, {"driver_version", d.driver_version}, {"runtime_version", d.runtime_version}});
      std::cout << json{{"devices", a}, {"why", devs.empty() ? why : ""}}.dump(1) << "\n";
    });
  }
  // ---- attention ----
  {
    auto* c = g->add_subcommand("attention", "Decode-attention kernel bandwidth on random data (paged fp16 KV)");
    static std::string ctxs = "4096,8192,16384,32768", batches = "1,4,16", json_out;
    static cuda::DecodeBenchConfig cfg;
    static double peak = 4.8e12;
    c->add_option("--ctx", ctxs, "Context lengths, comma-separated");
    c->add_option("--batch", batches, "Batch sizes (sequences), comma-separated");
    c->add_option("--heads", cfg.n_heads, "Query heads (default 32)");
    c->add_option("--kv-heads", cfg.n_kv_heads, "KV heads (default 8)");
    c->add_option("--head-dim", cfg.head_dim, "Head dimension (default 128)");
    c->add_option("--page-size", cfg.page_size, "Tokens per page (default 16)");
    c->add_option("--iters", cfg.iters, "Timed calls per point (default 50)");
    c->add_option("--peak-bw", peak, "Device peak HBM bandwidth in B/s (default 4.8e12, H200)");
    c->add_option("--json", json_out, "Write the results to this JSON file");
    c->callback([] {
      if (cuda::list_devices().empty()) throw Error("gpu-bench attention: no CUDA device");
      json rows = json::array();
      std::printf("%8s %6s %12s %12s %10s %8s %10s %7s\n", "ctx", "batch", "us/call", "GB/s", "share", "copies", "us emit", "emit+");
      for (int ctx : parse_list(ctxs))
        for (int b : parse_list(batches)) {
          cuda::DecodeBenchConfig k = cfg;
          k.ctx = ctx;
          k.batch = b;
          json row = {{"ctx", ctx}, {"batch", b}};
          try {
            const auto r = cuda::bench_decode_attention(k);
            const double share = r.bytes_per_s / peak, over = r.us_emit / r.us - 1.0;
            row.update({{"us", r.us}, {"us_emit", r.us_emit}, {"bytes", r.bytes}, {"bytes_per_s", r.bytes_per_s},
                        {"peak_share", share}, {"emit_overhead", over}, {"copies", r.copies}});
            std::printf("%8d %6d %12.2f %12.1f %9.1f%% %8d %10.2f %6.1f%%\n", ctx, b, r.us, r.bytes_per_s / 1e9, 100 * share, r.copies,
                        r.us_emit, 100 * over);
          } catch (const std::exception& e) {
            row["error"] = e.what();
            std::printf("%8d %6d  error: %s\n", ctx, b, e.what());
          }
          std::fflush(stdout);
          rows.push_back(row);
        }
      const json j = {{"shape", {{"heads", cfg.n_heads}, {"kv_heads", cfg.n_kv_heads}, {"head_dim", cfg.head_dim}, {"page_size", cfg.page_size}}},
                      {"peak_bw", peak},
                      {"device", cuda::list_devices().front().name},
                      {"points", rows}};
      if (!json_out.empty()) {
        std::ofstream f(json_out);
        if (!f) throw Error(json_out + ": cannot create");
        f << j.dump(1) << "\n";
      }
    });
  }
  // ---- logits ----
  {
    auto* c = g->add_subcommand("logits", "Teacher-forced logits over a trace's tokens (prefill, then each decode token)");
    static std::string model, tokenizer, trace_path, device = "cuda", out, gpu_weights = "f16";
    static int max_steps = 0;
    c->add_option("--model,-m", model, "Model")->required();
    c->add_option("--tokenizer", tokenizer, "llama2.c tokenizer (default: beside the model)");
    c->add_option("--trace", trace_path, "Trace whose prompt and decode tokens are replayed")->required();
    c->add_option("--device", device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
    c->add_option("--gpu-weights", gpu_weights, "f16 or bf16")->check(CLI::IsMember({"f16", "bf16"}));
    c->add_option("--steps", max_steps, "At most this many steps (0: all)");
    c->add_option("--out,-o", out, "Output: float32 [steps][vocab], little-endian")->required();
    c->callback([] {
      const std::string dev = resolve_device(device, "gpu-bench logits");
      const Model m = load_model(model, tokenizer);
      trace::TraceReader r(trace_path);
      std::vector<int32_t> prompt = r.header().at("prompt_ids").get<std::vector<int32_t>>();
      uint32_t steps = r.n_steps();
      if (max_steps > 0) steps = std::min<uint32_t>(steps, max_steps);
      std::vector<int32_t> toks;
      trace::LayerFrame f;
      for (uint32_t s = 1; s < steps; ++s) toks.push_back(r.step_layer(s, 0, f).token);
      std::unique_ptr<cpu::Runtime> crt;
      std::unique_ptr<cuda::Runtime> grt;
      if (dev == "cpu") crt = std::make_unique<cpu::Runtime>(m);
      else {
        cuda::RuntimeOptions o;
        o.weights = gpu_weights == "bf16" ? cuda::HalfType::BF16 : cuda::HalfType::F16;
        grt = std::make_unique<cuda::Runtime>(m, o);
      }
      auto fwd = [&](std::span<const int32_t> t) { return crt ? crt->forward(t) : grt->forward(t); };
      std::ofstream o(out, std::ios::binary);
      if (!o) throw Error(out + ": cannot create");
      auto lg = fwd(prompt);
      o.write(reinterpret_cast<const char*>(lg.data()), lg.size() * sizeof(float));
      for (int32_t t : toks) {
        lg = fwd({&t, 1});
        o.write(reinterpret_cast<const char*>(lg.data()), lg.size() * sizeof(float));
      }
      if (!o) throw Error(out + ": write failed");
      std::fprintf(stderr, "gpu-bench logits: %u steps on %s -> %s\n", steps, dev.c_str(), out.c_str());
    });
  }
}

#endif

}  // namespace kvscope::cli
