#pragma once
// From a replay to step timing (docs/hardware.md, "Replaying as another model").
//
// A replay measures, per step, what each traced (layer, KV head) stream keeps in HBM and
// moves over the host link. The timing model needs the same for the model being timed,
// which may be larger than the traced one (`--as llama3-8b`). The mapping is fixed:
//   target layer j  <- traced layer floor(j * L / L_t)
//   target KV head g <- traced KV head g mod H
// so each traced stream s stands for w[s] target streams (stream_weights), and a step's
// load is the weighted sum over traced streams, at the target's head_dim and entry bytes.
// Positions, budgets and pages are those of the trace (the context is not rescaled).
#include <string>
#include <vector>

#include "hwmodels/timing.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::sim {

// The traced model's own shape, from the trace header.
hw::ModelShape shape_of_trace(const trace::TraceReader& tr);
// A named shape (kvscope synth --shape names: llama3-8b, llama3-70b, mistral-7b, ...) or
// "trace" for shape_of_trace. Throws Error listing the names.
hw::ModelShape shape_by_name(const std::string& name, const trace::TraceReader& tr);

// Query rows per prefill attention tile: a tiled prefill kernel reads every K/V row once
// per tile, so a prefill of P tokens reads P * ceil(P / kPrefillTileRows) entries.
inline constexpr double kPrefillTileRows = 128;

// w[s] for s = layer * n_kv_heads + kv_head: how many target streams traced stream s stands for.
std::vector<double> stream_weights(const trace::TraceInfo& traced, const hw::ModelShape& target);

// One load per trace step (step 0: the prefill), from a replay run with per_step = true
// and cfg.stream_weights = stream_weights(...). `coalesce`: contiguous positions moved in
// one step are one transfer (else one transfer per page, or per token at page size 1).
std::vector<hw::StepLoad> step_loads(const ReplayResult& r, const trace::TraceInfo& traced,
                                     const hw::ModelShape& target, bool coalesce);

}  // namespace kvscope::sim
