// Replay -> step loads of the timed model (sim/timing.h, docs/hardware.md).
#include "sim/timing.h"

#include <cmath>

#include "kernels/io/error.h"
#include "traces/synth.h"

namespace kvscope::sim {

namespace {

int field(const nlohmann::json& model, const char* key, const std::string& file) {
  if (!model.contains(key) || !model[key].is_number_integer())
    throw Error(file + ": the trace header's model has no integer '" + key + "' (needed for timing)");
  return model[key].get<int>();
}

}  // namespace

hw::ModelShape shape_of_trace(const trace::TraceReader& tr) {
  const nlohmann::json& h = tr.header();
  if (!h.contains("model") || !h["model"].is_object()) throw Error(tr.path() + ": the trace header has no model description");
  const nlohmann::json& m = h["model"];
  hw::ModelShape s;
  s.name = m.value("name", std::string("trace"));
  s.n_layers = field(m, "n_layers", tr.path());
  s.n_heads = field(m, "n_heads", tr.path());
  s.n_kv_heads = field(m, "n_kv_heads", tr.path());
  s.head_dim = field(m, "head_dim", tr.path());
  s.dim = field(m, "dim", tr.path());
  s.hidden_dim = field(m, "hidden_dim", tr.path());
  s.vocab_size = field(m, "vocab_size", tr.path());
  return s;
}

hw::ModelShape shape_by_name(const std::string& name, const trace::TraceReader& tr) {
  if (name.empty() || name == "trace") return shape_of_trace(tr);
  const trace::synth::Shape& x = trace::synth::find_shape(name);
  hw::ModelShape s;
  s.name = x.name;
  s.n_layers = x.n_layers, s.n_heads = x.n_heads, s.n_kv_heads = x.n_kv_heads, s.head_dim = x.head_dim;
  s.dim = x.dim, s.hidden_dim = x.hidden_dim, s.vocab_size = x.vocab_size;
  return s;
}

std::vector<double> stream_weights(const trace::TraceInfo& traced, const hw::ModelShape& target) {
  const uint32_t L = traced.n_layers, H = traced.n_kv_heads;
  std::vector<double> w(static_cast<size_t>(L) * H, 0.0);
  for (int j = 0; j < target.n_layers; ++j) {
    const uint32_t l = static_cast<uint32_t>(static_cast<uint64_t>(j) * L / target.n_layers);
    for (int g = 0; g < target.n_kv_heads; ++g) w[static_cast<size_t>(l) * H + static_cast<uint32_t>(g) % H] += 1.0;
  }
  return w;
}

std::vector<hw::StepLoad> step_loads(const ReplayResult& r, const trace::TraceInfo& traced, const hw::ModelShape& target,
                                     bool coalesce) {
  if (r.per_step.empty())
    throw Error("timing: the replay of " + r.policy + " has no per-step metrics (cache policies are not timed)");
  const double eb = target.entry_bytes();
  const double streams = static_cast<double>(target.n_layers) * target.n_kv_heads;
  std::vector<hw::StepLoad> out;
  out.reserve(r.per_step.size());
  for (size_t i = 0; i < r.per_step.size(); ++i) {
    const StepMetrics& m = r.per_step[i];
    hw::StepLoad s;
    if (i == 0) {
      // The prefill attends causally over the whole prompt, before any eviction.
      const double P = traced.prompt_len;
      s.prefill = true;
      s.tokens = P;
      s.attn_entries = streams * P * (P + 1) / 2;
      s.kv_read_bytes = streams * P * eb * std::ceil(P / kPrefillTileRows);
      s.kv_write_bytes = streams * P * eb;
    } else {
      s.tokens = 1;
      s.attn_entries = m.t_entries;
      s.kv_read_bytes = m.t_units * eb;
      s.kv_write_bytes = streams * eb;
    }
    s.batch = 1;
    s.h2d_bytes = m.t_fetch_units * eb;
    s.h2d_transfers = coalesce ? m.t_fetch_runs : m.t_fetch_pages;
    s.d2h_bytes = m.t_offload_units * eb;
    s.d2h_transfers = coalesce ? m.t_offload_runs : m.t_offload_pages;
    out.push_back(s);
  }
  return out;
}

}  // namespace kvscope::sim
