#pragma once
// Synthetic attention traces (kvscope synth, docs/synth.md).
//
// A parametric attention model stands in for a real model run: every (layer, query head)
// mixes six components — attention sinks, a sharp local kernel, a broad local kernel,
// periodic recurrence, heavy hitters (a per-(layer, KV head) set of keys with Zipf
// popularity) and a diffuse background — multiplies the non-sink part by log-normal
// per-entry noise, and moves a share `focus` of each row onto one key drawn from the row
// (content-driven concentration that keeps the expected row). Rows are proper distributions over keys 0..q with a log-sum-exp that is
// consistent with them. The model's parameters are drawn from a seed, or fitted to a real
// trace (fit_trace). synthesize() writes the result through TraceWriter in the ordinary
// .kvt format, marked "synthetic": true.
//
// Everything is a function of the options alone: hashes and a xoshiro256** generator of
// our own (no std:: distributions), a fixed evaluation order, one thread feeding the writer.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "traces/format.h"

namespace kvscope::trace::synth {

// A model geometry (figures from each model's config.json, docs/synth.md).
struct Shape {
  std::string name;
  int n_layers, n_heads, n_kv_heads, head_dim, dim, hidden_dim, vocab_size, max_seq_len;
  float rope_theta;
  std::string rope_layout;
  std::string source;  // where the figures come from
};
const std::vector<Shape>& shapes();
// Throws Error("synth: --shape 'x' is not one of: ...").
const Shape& find_shape(const std::string& name);

// The attention model of one (layer, query head). Masses are shares of the expected row
// mass and sum to 1 (docs/synth.md has the formulas).
struct HeadParams {
  double m_sink = 0, m_near = 0, m_far = 0, m_per = 0, m_hh = 0, m_bg = 1;
  int n_sink = 1;            // sink keys 0..n_sink-1
  double sink_ratio = 0.3;   // sink key j gets weight sink_ratio^j
  double tau_near = 1.0;     // sharp local kernel: exp(-|d - near_peak| / tau_near), d = q - j
  int near_peak = 0;         //   distance that gets the most weight (0: the query itself; 1: previous token)
  double tau_far = 32.0;     // broad local kernel: exp(-d / tau_far)
  int period = 64;           // periodic recurrence: distances k*period, k = 1..period_reps,
  double period_decay = 0.8; //   weight period_decay^(k-1)
  int period_reps = 8;
  double noise = 0.5;        // sigma of the log-normal noise on every non-sink entry
  double focus = 0.0;        // share of each row moved onto one key drawn from the row itself
  double base = 0.0;         // score of a background key of unit weight (sets the lse)
  nlohmann::json to_json() const;
};

// The heavy-hitter set of one (layer, KV head): key j is a hitter with probability
// `density`; its popularity is v^-zipf with v uniform in (0, 1] (floored at 1e-3), which
// ranks hitters by a Zipf law of exponent `zipf`.
struct KvParams {
  double density = 0.03;
  double zipf = 1.0;
  nlohmann::json to_json() const;
};

struct Model {
  int n_layers = 0, n_heads = 0, n_kv_heads = 0;
  std::vector<HeadParams> heads;  // [layer][q head]
  std::vector<KvParams> kv;       // [layer][kv head]
  const HeadParams& head(int l, int h) const { return heads[static_cast<size_t>(l) * n_heads + h]; }
  const KvParams& kvp(int l, int g) const { return kv[static_cast<size_t>(l) * n_kv_heads + g]; }
};

// Parameters drawn from the seed, varied by layer depth and head.
Model draw_model(int n_layers, int n_heads, int n_kv_heads, uint64_t seed);

// Evaluates the model: rows, and the prefill's column sums in closed form.
class Generator {
 public:
  Generator(Model m, int context, uint64_t seed);
  const Model& model() const { return m_; }
  int context() const { return context_; }

  // Background key weights of (layer, every KV head) for keys 0..last; call before row()
  // or prefill_colsum() for that layer (it replaces the previous layer's).
  void prepare_layer(int layer, int last);
  // The attention row of query q (keys 0..q) of (layer, head) into probs[0..q]; returns
  // its log-sum-exp. Needs prepare_layer(layer, >= q). Thread-safe between calls of
  // prepare_layer.
  float row(int layer, int head, int q, float* probs) const;
  // The same row under other parameters p (the fit's calibration tries many); `noise` is
  // noise_table(p.noise). The hitter set, background weights and noise hashes stay.
  float row_with(int layer, int head, int q, const HeadParams& p, const std::vector<float>& noise, float* probs) const;
  // kTable log-normal factors exp(sigma * g_i), g_i fixed standard-normal draws, mean 1.
  static std::vector<float> noise_table(double sigma);
  // Adds to out[0..P-1] the expected column sums of queries 0..q_end (noise averaged
  // out) in O(P + small): what a prefill's colsum holds for the rows not materialised.
  void prefill_colsum(int layer, int head, int q_end, int P, double* out) const;

 private:
  struct Hitters {
    std::vector<uint32_t> pos;
    std::vector<float> w;
    std::vector<double> cum;  // cum[i] = w[0] + ... + w[i]
  };
  size_t hitters_upto(const Hitters& hs, int q) const;

  Model m_;
  int context_;
  uint64_t seed_;
  std::vector<Hitters> hitters_;           // [layer][kv head]
  std::vector<std::vector<float>> noise_;  // [layer][q head]: 1024 log-normal factors, mean 1
  std::vector<uint32_t> head_key_;         // [layer][q head]
  std::vector<float> bg_table_;            // 1024 log-normal key weights, mean 1
  int layer_ = -1, last_ = -1;
  std::vector<std::vector<float>> b_;      // [kv head][key]
  std::vector<std::vector<double>> bcum_;  // prefix sums of b_
};

// Per-(layer, head) statistics of a trace's stored rows, as trace-info computes them.
struct FitResult {
  std::string path;
  int n_layers = 0, n_heads = 0, n_kv_heads = 0;
  std::vector<HeadParams> heads;   // [layer][head] of the real trace
  std::vector<double> sink, entropy, lse;  // real targets per (layer, head)
  std::vector<double> fit_sink, fit_entropy;  // the calibrated model's, on the same rows
  nlohmann::json to_json() const;
};

// Fits HeadParams to every (layer, head) of a real trace (docs/synth.md, "Fitting").
FitResult fit_trace(const std::string& path, uint64_t seed);
// The synthetic model for a shape from a fit: layers and heads mapped by relative depth
// and index; heavy-hitter sets at the fit's defaults.
Model model_from_fit(const FitResult& f, int n_layers, int n_heads, int n_kv_heads);

struct Options {
  std::string shape = "llama3-8b";
  int context = 4096;
  int steps = 256;
  uint64_t seed = 1;
  Mode mode = Mode::Dense;
  int topk = 64;
  int layers = 0;  // 0: the shape's
  int prefill_window = 32;
  int steps_per_chunk = 16;
  int zstd_level = 3;
  std::string fit;  // real trace to fit, or empty
  int threads = 0;  // row computation threads (0: all); the output does not depend on it
};

struct Summary {
  uint32_t steps = 0, prompt_len = 0, context = 0;
  uint64_t bytes = 0;
  double seconds = 0, prefill_seconds = 0, fit_seconds = 0;
};

// Checks the options; throws Error naming the option.
void validate(const Options& o);
// Writes the synthetic trace to `out`. progress(done_steps, total_steps) after each step.
Summary synthesize(const Options& o, const std::string& out, const std::function<void(int, int)>& progress = {});

}  // namespace kvscope::trace::synth
