#pragma once
// The thread-pool runner and the search driver (docs/explore.md, "Parallel runs").
// Workers pull configuration indices from an atomic counter and call Evaluator::evaluate;
// the calling thread is the one writer to the Store. Results do not depend on the
// number of threads.
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "explorer/evaluate.h"
#include "explorer/spec.h"
#include "explorer/store.h"

namespace kvscope::explore {

struct RunOptions {
  unsigned threads = 1;
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT): finish in-flight work, write it, return
  // Called by the writer after each result: done and total of the current batch, and its label.
  std::function<void(uint64_t done, uint64_t total, const std::string& label)> progress;
};

struct RunSummary {
  uint64_t proposed = 0;   // distinct configurations the strategy asked for (per batch)
  uint64_t evaluated = 0;  // replayed in this run (failed ones included)
  uint64_t skipped = 0;    // already in the database
  uint64_t failed = 0;     // evaluated with an error
  bool interrupted = false;
  double seconds = 0, write_seconds = 0;  // wall time; time spent writing SQLite
};

class Runner {
 public:
  Runner(const Evaluator& ev, Store& store, RunOptions opt);
  // Each configuration's metrics, stored or evaluated now; null for those not evaluated
  // because of a stop. `partial`: the configurations are short rungs (configs.partial).
  std::vector<nlohmann::json> run_batch(const std::vector<nlohmann::json>& configs, bool partial, const std::string& label);
  const RunSummary& summary() const { return sum_; }
  bool stopped() const { return opt_.stop && opt_.stop->load(); }

 private:
  const Evaluator& ev_;
  Store& store_;
  RunOptions opt_;
  RunSummary sum_;
};

// Runs the spec's strategy to the end (or to a stop).
RunSummary search(const Spec& s, const Evaluator& ev, Store& store, const RunOptions& opt);

}  // namespace kvscope::explore
