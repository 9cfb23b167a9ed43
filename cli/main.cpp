// kvscope: KV-cache management studies on real attention traces.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "kernels/io/error.h"
#include "kvscope_version.h"

int main(int argc, char** argv) {
  CLI::App app{"kvscope — trace real attention, replay KV-cache policies, explore hardware"};
  app.set_version_flag("--version", std::string("kvscope ") + KVSCOPE_VERSION);
  app.require_subcommand(1);
  kvscope::cli::add_model_commands(app);
  kvscope::cli::add_trace_commands(app);
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
