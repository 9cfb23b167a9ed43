#pragma once
// The thread-pool runner and the search driver (docs/explore.md, "Parallel runs").
// A Backend evaluates configurations (threads pulling indices from an atomic counter, or
// MPI ranks); the calling thread is the one writer to the Store. Results do not depend on
// the number of threads or ranks.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "explorer/evaluate.h"
#include "explorer/spec.h"
#include "explorer/store.h"

namespace kvscope::explore {

// Where configurations are evaluated: worker threads of this process (ThreadBackend) or
// MPI worker ranks (explorer/mpi.h). evaluate() calls deliver(k, metrics) on the calling
// thread — the one that writes the Store — once for each k in 0..todo.size()-1, in any
// order, and returns when all are delivered, or, once *stop is set, when the work already
// handed out is delivered.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual void evaluate(const std::vector<const nlohmann::json*>& todo,
                        const std::function<void(size_t k, nlohmann::json metrics)>& deliver,
                        const std::atomic<bool>* stop) = 0;
};

class ThreadBackend final : public Backend {
 public:
  ThreadBackend(const Evaluator& ev, unsigned threads) : ev_(ev), threads_(threads ? threads : 1) {}
  void evaluate(const std::vector<const nlohmann::json*>& todo,
                const std::function<void(size_t, nlohmann::json)>& deliver, const std::atomic<bool>* stop) override;

 private:
  const Evaluator& ev_;
  unsigned threads_;
};

struct RunOptions {
  unsigned threads = 1;
  Backend* backend = nullptr;  // nullptr: a ThreadBackend of `threads` threads
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
  Store& store_;
  RunOptions opt_;
  std::unique_ptr<Backend> own_;  // the default thread pool
  Backend* backend_;
  RunSummary sum_;
};

// Runs the spec's strategy to the end (or to a stop).
RunSummary search(const Spec& s, const Evaluator& ev, Store& store, const RunOptions& opt);

}  // namespace kvscope::explore
