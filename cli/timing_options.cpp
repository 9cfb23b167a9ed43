// Shared timing options (cli/timing_options.h).
#include "cli/timing_options.h"

#include "kernels/io/error.h"
#include "sim/timing.h"

namespace kvscope::cli {

using nlohmann::json;

json parse_policy_params(const std::vector<std::string>& params) {
  json p = json::object();
  for (const auto& kv : params) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("--param '" + kv + "': expected key=value");
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    try {
      p[k] = json::parse(v);
    } catch (const json::exception&) {
      throw Error("--param " + k + ": '" + v + "' is not a number");
    }
  }
  return p;
}

hw::Hardware load_hardware(const std::string& name_or_path, const std::vector<std::string>& sets,
                           const std::string& calibration) {
  hw::Hardware h = hw::load(name_or_path);
  if (!calibration.empty()) hw::apply_calibration(h, calibration);
  for (const auto& s : sets) h.set(s);
  h.validate();
  return h;
}

TimedReplay timed_replay(const trace::TraceReader& tr, sim::ReplayConfig cfg, const std::string& shape_name, bool coalesce) {
  TimedReplay t;
  t.shape = sim::shape_by_name(shape_name, tr);
  cfg.per_step = true;
  cfg.stream_weights = sim::stream_weights(tr.info(), t.shape);
  t.result = sim::replay(tr, cfg);
  t.loads = sim::step_loads(t.result, tr.info(), t.shape, coalesce);
  return t;
}

json timing_json(const hw::Hardware& hw, const TimedReplay& t, std::span<const hw::StepTime> times) {
  json j = hw::summarize(t.loads, times).to_json();
  j["hardware"] = hw.name;
  j["shape"] = t.shape.name;
  return j;
}

}  // namespace kvscope::cli
