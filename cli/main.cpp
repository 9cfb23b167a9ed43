// kvscope: KV-cache management studies on real attention traces.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "explorer/mpi.h"
#include "kernels/io/error.h"
#include "kvscope_version.h"

int main(int argc, char** argv) {
  // OpenMP reads its wait policy when the library loads, before main. Busy-waiting worker
  // threads collapse throughput whenever another process shares the cores (measured on
  // 2 cores: SmolLM2 decode from ~30 to ~2 tok/s), so kvscope re-executes itself once with
  // the passive policy unless the user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT).
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    ::execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default
  }
  CLI::App app{"kvscope — trace real attention, replay KV-cache policies, explore hardware"};
  app.set_version_flag("--version", std::string("kvscope ") + KVSCOPE_VERSION +
                                        (kvscope::explore::mpi_available() ? " (mpi)" : " (no mpi)"));
  app.require_subcommand(1);
  kvscope::cli::add_model_commands(app);
  kvscope::cli::add_trace_commands(app);
  kvscope::cli::add_sim_commands(app);
  kvscope::cli::add_export_commands(app);
  kvscope::cli::add_synth_commands(app);
  kvscope::cli::add_hw_commands(app);
  kvscope::cli::add_batch_commands(app);
  kvscope::cli::add_calibrate_commands(app);
  kvscope::cli::add_gpu_commands(app);
  kvscope::cli::add_explore_commands(app);
  kvscope::cli::add_validate_commands(app);
  kvscope::cli::add_report_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kvscope::Error& e) {
    std::fprintf(stderr, "kvscope: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvscope: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
