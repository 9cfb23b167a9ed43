// Hardware-model subcommands: hw (presets), whatif (step timing against swept hardware
// parameters), batch (several traces as concurrent requests). docs/hardware.md.
#include "cli/commands.h"

namespace kvscope::cli {

void add_hw_commands(CLI::App& app) {}

}  // namespace kvscope::cli
