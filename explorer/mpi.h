#pragma once
// MPI for `kvscope explore` (docs/explore.md, "Across machines: MPI").
//
//   mpirun -np N kvscope explore --spec S --db results.db
//
// Rank 0 parses the spec, broadcasts it, runs the strategy, hands configurations out to
// ranks 1..N-1 as they ask for work (the Backend below) and alone writes SQLite. Workers
// open the traces once (mmap), replay what they are sent and send the metrics back. A
// worker silent past the timeout is taken for dead: its in-flight configurations go to
// the others (a late answer from it is still accepted, once). OpenMPI aborts the whole job
// when a rank dies unless mpirun has --enable-recovery; without it, every finished result
// is already in the database and a rerun resumes.
//
// Built when Boost.MPI is found (KVSCOPE_HAVE_MPI); otherwise mpi_available() is false and
// MpiSession's constructor throws.
#include <memory>
#include <string>

#include "explorer/evaluate.h"
#include "explorer/runner.h"

namespace kvscope::explore {

bool mpi_available();
// True when mpirun (OpenMPI, MPICH or a PMI launcher) started this process with more than
// one rank: MPI is only initialised then.
bool mpi_launched();

class MpiSession {
 public:
  MpiSession();   // MPI_Init
  ~MpiSession();  // MPI_Finalize
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const;
  int size() const;

  // Rank 0: sends the spec (raw JSON and the directory its relative traces resolve from)
  // to the workers; an empty `raw` tells them that rank 0 gave up before starting.
  void broadcast_spec(const std::string& raw, const std::string& base_dir);
  // Workers: false when rank 0 gave up.
  bool receive_spec(std::string& raw, std::string& base_dir);

  // Workers: replay what rank 0 sends until it says stop. `ev` null: this rank could not
  // open the traces; `error` says why and goes to rank 0, which stops the run. Returns
  // true when rank 0 lost a worker (see lost_worker()).
  bool serve(const Evaluator* ev, const std::string& error);

  // Rank 0: the Backend that hands configurations to the workers. A worker with work
  // out and no answer for `timeout_s` seconds is taken for dead.
  std::unique_ptr<Backend> backend(double timeout_s);
  // Rank 0: tells every worker to stop.
  void stop_workers();
  // A worker was lost: MPI_Finalize would wait for it forever, so every surviving rank
  // must leave with _exit after flushing its output instead of returning.
  bool lost_worker() const;

  struct Impl;  // Boost.MPI state (explorer/mpi.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::explore
