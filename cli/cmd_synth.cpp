// synth subcommand: synthetic traces at real-model scale (docs/synth.md).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "kernels/io/error.h"
#include "traces/synth.h"

namespace kvscope::cli {

void add_synth_commands(CLI::App& app) {
  auto* c = app.add_subcommand("synth",
                               "Write a synthetic .kvt trace shaped like a big model, from a parametric attention model "
                               "(sinks, local window, heavy hitters, periodic recurrence, background)");
  static trace::synth::Options o;
  static std::string out, mode;
  static bool quiet = false;
  std::string shape_names;
  for (const auto& s : trace::synth::shapes()) shape_names += (shape_names.empty() ? "" : ", ") + s.name;
  c->add_option("--shape", o.shape, "Model geometry: " + shape_names + " (default llama3-8b)");
  c->add_option("--context", o.context, "Final context C in tokens (default 4096)");
  c->add_option("--steps", o.steps,
                "Steps N: a prefill of P = C - N + 1 prompt tokens, then N - 1 decode steps (default 256)");
  c->add_option("--out,-o", out, "Output trace file (.kvt)")->required();
  c->add_option("--seed", o.seed, "Seed of every random draw (default 1); same arguments, same bytes");
  c->add_option("--mode", mode, "dense (every probability, fp16; the default) or topk");
  auto* o_topk = c->add_option("--topk", o.topk, "Keys kept per row in top-k mode (default 64; implies --mode topk)");
  auto* o_layers = c->add_option("--layers", o.layers, "Override the shape's layer count (keeps bench traces small)");
  c->add_option("--prefill-window", o.prefill_window, "Prefill: last w query rows stored in full (default 32)");
  c->add_option("--steps-per-chunk", o.steps_per_chunk, "Steps per compressed chunk (default 16)");
  c->add_option("--zstd-level", o.zstd_level, "zstd level (default 3)");
  c->add_option("--fit", o.fit, "Fit the model's parameters to this real trace (per layer and head) instead of drawing them");
  c->add_option("--threads,-t", o.threads, "Threads computing rows (0: all cores); the output does not depend on it");
  c->add_flag("--quiet,-q", quiet, "No progress bar");
  c->callback([o_topk, o_layers] {
    if (mode.empty()) o.mode = o_topk->count() > 0 ? trace::Mode::TopK : trace::Mode::Dense;
    else if (mode == "dense") o.mode = trace::Mode::Dense;
    else if (mode == "topk") o.mode = trace::Mode::TopK;
    else throw Error("synth: --mode must be dense or topk (got '" + mode + "')");
    if (o.mode == trace::Mode::Dense && o_topk->count() > 0) throw Error("synth: --topk needs --mode topk (got --mode dense)");
    if (o_layers->count() > 0 && o.layers < 1) throw Error("synth: --layers must be in 1..1024 (got " + std::to_string(o.layers) + ")");
    const bool bar = !quiet && ::isatty(2);
    const auto t0 = std::chrono::steady_clock::now();
    auto progress = [bar, t0](int done, int total) {
      if (!bar || (done != total && done % 8 != 0)) return;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int w = 30, fill = total > 0 ? w * done / total : w;
      std::fprintf(stderr, "\r[%.*s%*s] %d/%d steps  %.1f steps/s ", fill, "##############################", w - fill, "", done,
                   total, done / std::max(s, 1e-9));
      if (done == total) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    };
    const trace::synth::Summary s = trace::synth::synthesize(o, out, progress);
    std::fprintf(stderr,
                 "wrote %s: synthetic %s, %u steps (prompt %u tokens, context %u), %llu bytes, %.2f s (fit %.2f s, prefill %.2f s)\n",
                 out.c_str(), o.shape.c_str(), s.steps, s.prompt_len, s.context, static_cast<unsigned long long>(s.bytes), s.seconds,
                 s.fit_seconds, s.prefill_seconds);
  });
}

}  // namespace kvscope::cli
