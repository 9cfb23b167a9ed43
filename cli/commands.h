#pragma once
// Each cmd_*.cpp registers its subcommands on the root app. main() owns exit codes.
#include <CLI/CLI.hpp>

namespace kvscope::cli {

void add_model_commands(CLI::App& app);  // generate, tokenize, logits, model-info
void add_trace_commands(CLI::App& app);  // trace, trace-info, trace-dump
void add_sim_commands(CLI::App& app);    // sim, policies
void add_export_commands(CLI::App& app); // export (page-access streams for libCacheSim)
void add_synth_commands(CLI::App& app);  // synth (synthetic traces at real scale)
void add_hw_commands(CLI::App& app);     // hw (presets), whatif (hardware models, docs/hardware.md)
void add_batch_commands(CLI::App& app);  // batch (concurrent requests: allocation, admission, preemption)
void add_calibrate_commands(CLI::App& app);  // calibrate (measured figures for the hardware model)
void add_gpu_commands(CLI::App& app);  // gpu-bench (CUDA path measurements; says so in builds without CUDA)
void add_explore_commands(CLI::App& app);  // explore (design-space search into SQLite, docs/explore.md)
void add_validate_commands(CLI::App& app);  // validate (candidates run live in the model's KV cache, docs/validation.md)
void add_report_commands(CLI::App& app);  // report (static HTML page of a results database, docs/report.md)

}  // namespace kvscope::cli
