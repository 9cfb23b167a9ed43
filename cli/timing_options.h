#pragma once
// Options shared by the commands that time a replay (sim --hw, whatif, batch).
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hwmodels/hw.h"
#include "hwmodels/timing.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::cli {

// --param key=value (repeatable) into a JSON object of numbers; throws Error naming the option.
nlohmann::json parse_policy_params(const std::vector<std::string>& params);

// --hw NAME|FILE, then --calibration FILE (measured figures), then --set key=value, validated.
hw::Hardware load_hardware(const std::string& name_or_path, const std::vector<std::string>& sets,
                           const std::string& calibration = "");

// Everything needed to time one replay on a hardware model as a target shape.
struct TimedReplay {
  sim::ReplayResult result;
  hw::ModelShape shape;
  std::vector<hw::StepLoad> loads;
};
// Replays `cfg` (per-step metrics and the stream weights of `shape_name` switched on) and
// derives the step loads.
TimedReplay timed_replay(const trace::TraceReader& tr, sim::ReplayConfig cfg, const std::string& shape_name, bool coalesce);
// Timing summary of the step times of t's loads on `hw` (hw::time_steps), as JSON:
// hardware, shape, ttft, tpot, tokens/s, breakdowns.
nlohmann::json timing_json(const hw::Hardware& hw, const TimedReplay& t, std::span<const hw::StepTime> times);
inline nlohmann::json timing_json(const hw::Hardware& hw, const TimedReplay& t) {
  return timing_json(hw, t, hw::time_steps(hw, t.shape, t.loads));
}

}  // namespace kvscope::cli
