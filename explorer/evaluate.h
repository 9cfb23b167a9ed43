#pragma once
// One configuration -> its metrics (docs/explore.md). The traces are opened (mmap) and
// decoded once per process; evaluate() only reads them, so any number of threads may
// call it at once. An MPI worker would run this alone.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "explorer/spec.h"
#include "traces/reader.h"

namespace kvscope::explore {

class Evaluator {
 public:
  // Opens every trace of the spec (`predecode`: decode every frame once, shared by all replays).
  explicit Evaluator(const Spec& s, bool predecode = true);
  // The metrics object: the replay's scalars, retained_per_layer, with hardware the timing
  // summary (ttft, tpot, tokens_per_s, timing). A configuration the replay refuses gives
  // {"error": "..."}; it does not throw.
  nlohmann::json evaluate(const nlohmann::json& config) const;
  // Decode steps of the shortest trace.
  uint32_t min_trace_steps() const;

 private:
  struct Trace {
    std::unique_ptr<trace::TraceReader> reader;
    std::vector<trace::LayerFrame> frames;
  };
  std::map<std::string, Trace> traces_;  // by the path as the spec writes it
};

}  // namespace kvscope::explore
