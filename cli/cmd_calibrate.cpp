// calibrate: measures the host (and the GPU in CUDA builds) and writes a calibration file
// that the hardware model uses instead of preset figures. docs/hardware.md.
#include "cli/commands.h"

namespace kvscope::cli {

void add_calibrate_commands(CLI::App& app) {}

}  // namespace kvscope::cli
