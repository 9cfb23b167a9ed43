// Evaluation of one configuration (explorer/evaluate.h).
#include "explorer/evaluate.h"

#include <algorithm>
#include <exception>

#include "hwmodels/hw.h"
#include "hwmodels/timing.h"
#include "kernels/io/error.h"
#include "sim/replay.h"
#include "sim/timing.h"

namespace kvscope::explore {

using nlohmann::json;

Evaluator::Evaluator(const Spec& s, bool predecode) {
  for (size_t i = 0; i < s.traces.size(); ++i) {
    if (traces_.count(s.traces[i])) continue;
    Trace t;
    t.reader = std::make_unique<trace::TraceReader>(s.resolved[i]);
    if (!t.reader->damage().empty() && !t.reader->complete()) throw Error(t.reader->damage());
    if (predecode) t.frames = sim::decode_all(*t.reader);
    traces_.emplace(s.traces[i], std::move(t));
  }
}

uint32_t Evaluator::min_trace_steps() const {
  uint32_t n = UINT32_MAX;
  for (const auto& kv : traces_) n = std::min(n, kv.second.reader->n_steps() > 0 ? kv.second.reader->n_steps() - 1 : 0);
  return n == UINT32_MAX ? 0 : n;
}

json Evaluator::evaluate(const json& config) const {
  try {
    const auto it = traces_.find(config.at("trace").get<std::string>());
    if (it == traces_.end()) throw Error("trace " + config.at("trace").dump() + " is not in the spec");
    const trace::TraceReader& tr = *it->second.reader;
    sim::ReplayConfig cfg;
    cfg.policy = config.at("policy").get<std::string>();
    cfg.params = config.at("params");
    cfg.budget = config.at("budget").get<uint32_t>();
    cfg.page_size = config.at("page_size").get<uint32_t>();
    cfg.max_steps = config.at("max_steps").get<uint32_t>();
    cfg.access = config.at("access").get<std::string>();
    const std::string agg = config.at("aggregation").get<std::string>();
    cfg.agg = agg == "max" ? sim::Aggregation::Max : agg == "mean" ? sim::Aggregation::Mean : sim::Aggregation::Sum;
    cfg.bounds = config.at("bounds").get<bool>();
    cfg.output_error = cfg.bounds;
    if (!it->second.frames.empty()) cfg.frames = &it->second.frames;
    const bool timed = config.contains("hardware");
    hw::Hardware h;
    hw::ModelShape shape;
    if (timed) {
      h = hw::preset(config["hardware"].at("preset").get<std::string>());
      for (const auto& kv : config["hardware"].at("set").items()) h.set(kv.key(), kv.value().get<double>());
      h.validate();
      shape = sim::shape_by_name(config.at("as").get<std::string>(), tr);
      cfg.per_step = true;
      cfg.stream_weights = sim::stream_weights(tr.info(), shape);
    }
    const sim::ReplayResult r = sim::replay(tr, cfg);
    json m = r.to_json();
    m.erase("per_step");
    m.erase("policy");
    m.erase("params");
    m.erase("budget");
    m.erase("page_size");
    if (!cfg.bounds) {
      m["oracle_topk_mass"] = nullptr;
      m["oracle_topk_per_layer"] = nullptr;
    }
    if (timed) {
      const auto loads = sim::step_loads(r, tr.info(), shape, config.at("coalesce").get<bool>());
      const auto times = hw::time_steps(h, shape, loads);
      const hw::TimingSummary t = hw::summarize(loads, times);
      m["ttft"] = t.ttft;
      m["tpot"] = t.tpot;
      m["tokens_per_s"] = t.tokens_per_s;
      m["timing"] = t.to_json();
    }
    return m;
  } catch (const std::exception& e) {
    return json{{"error", e.what()}};
  }
}

}  // namespace kvscope::explore
