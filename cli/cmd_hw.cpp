// Hardware-model subcommands: hw (presets and keys), whatif (step timing of a replay
// against swept hardware figures). docs/hardware.md.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/timing_options.h"
#include "kernels/io/error.h"
#include "sim/timing.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

void print_presets() {
  std::printf("%-10s %8s %9s %10s %12s %12s  %s\n", "preset", "HBM GB", "HBM TB/s", "fp16 TF", "host link", "NVLink GB/s",
              "description");
  for (const auto& name : hw::preset_names()) {
    const hw::Hardware h = hw::preset(name);
    char link[32];
    if (h.c2c_bandwidth > 0) std::snprintf(link, sizeof link, "C2C %.0f", h.c2c_bandwidth / 1e9);
    else std::snprintf(link, sizeof link, "PCIe%.0f %.1f", h.pcie_generation, h.pcie_bandwidth / 1e9);
    std::printf("%-10s %8.0f %9.2f %10.0f %12s %12.0f  %s\n", name.c_str(), h.gpu_hbm_bytes / 1e9, h.gpu_hbm_bandwidth / 1e12,
                h.gpu_flops_fp16 / 1e12, link, h.nvlink_bandwidth / 1e9, h.description.c_str());
  }
}

void print_keys() {
  for (const hw::Param& p : hw::params())
    std::printf("%-24s %-7s %-10.3g %-10.3g %s\n", p.key, p.unit, p.lo, p.hi, p.help);
}

struct Sweep {
  std::string key;
  std::vector<double> values;
};

std::vector<Sweep> parse_sweeps(const std::vector<std::string>& specs) {
  std::vector<Sweep> out;
  for (const auto& s : specs) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("--sweep wants key=lo:hi:n (or key=v1,v2,...), got '" + s + "'");
    Sweep sw{s.substr(0, eq), {}};
    hw::param(sw.key);  // unknown keys fail before any replay
    sw.values = hw::parse_sweep(s.substr(eq + 1), sw.key);
    out.push_back(std::move(sw));
  }
  return out;
}

}  // namespace

void add_hw_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand("hw", "List hardware presets, the model's keys, or show one description");
    static std::string show, calibration;
    static std::vector<std::string> sets;
    static bool keys = false;
    c->add_option("--show", show, "Print this preset or JSON file (after --calibration and --set) as JSON");
    c->add_option("--calibration", calibration, "Apply a calibration file's measured figures (kvscope calibrate)");
    c->add_option("--set", sets, "Override key=value (repeatable)");
    c->add_flag("--keys", keys, "List every key with its unit, range and meaning");
    c->callback([] {
      if (keys) return print_keys();
      if (show.empty()) {
        if (!sets.empty()) throw Error("hw: --set needs --show NAME");
        return print_presets();
      }
      std::cout << load_hardware(show, sets, calibration).to_json().dump(1) << "\n";
    });
  }
  {
    auto* c = app.add_subcommand("whatif", "Step timing of a policy's replay on a hardware model, against swept hardware figures");
    static std::string trace_path, policy, hw_name = "h100-sxm", as = "trace", csv, json_out, calibration, per_step;
    static std::vector<std::string> params, sets, sweeps;
    static uint32_t budget = 0, page_size = 1;
    static bool coalesce = false, as_json = false;
    c->add_option("--trace,-t", trace_path, "Trace file (.kvt)")->required();
    c->add_option("--policy,-p", policy, "Policy name (see `kvscope policies`)")->required();
    c->add_option("--param", params, "Policy parameter key=value (repeatable)");
    c->add_option("--budget,-b", budget, "HBM entries per (layer, KV head) (any value for full)");
    c->add_option("--page-size", page_size, "1: token granularity; B: whole pages of B positions");
    c->add_option("--hw", hw_name, "Hardware preset or JSON file (kvscope hw)");
    c->add_option("--calibration", calibration, "Apply a calibration file's measured figures (kvscope calibrate)");
    c->add_option("--set", sets, "Override a hardware key=value (repeatable)");
    c->add_option("--sweep", sweeps, "key=lo:hi:n, key=lo:hi:n:log or key=v1,v2,...; several give a grid");
    c->add_option("--as", as, "Time the trace as this model shape (llama3-8b, llama3-70b, ...; default: the traced model)");
    c->add_flag("--coalesce", coalesce, "Adjacent pages moved in one step are one copy (default: one copy per page)");
    c->add_option("--csv", csv, "Also write the table as CSV");
    c->add_option("--per-step", per_step, "Also write every step's breakdown at every point as CSV");
    c->add_option("--out,-o", json_out, "Also write the results as JSON");
    c->add_flag("--json", as_json, "Print JSON instead of the table");
    c->callback([] {
      const hw::Hardware base = load_hardware(hw_name, sets, calibration);
      const std::vector<Sweep> grid = parse_sweeps(sweeps);
      trace::TraceReader tr(trace_path);
      if (!tr.damage().empty() && !tr.complete()) throw Error(tr.damage());
      sim::ReplayConfig cfg;
      cfg.policy = policy;
      cfg.params = parse_policy_params(params);
      cfg.budget = budget;
      cfg.page_size = page_size;
      cfg.bounds = false;
      cfg.output_error = false;
      const TimedReplay t = timed_replay(tr, cfg, as, coalesce);

      // Every point of the grid, the last sweep varying fastest.
      size_t points = 1;
      for (const auto& s : grid) points *= s.values.size();
      json rows = json::array();
      if (!as_json) {
        if (tr.info().synthetic) std::printf("note: %s is a SYNTHETIC trace (kvscope synth)\n", trace_path.c_str());
        std::printf("%s B=%u on %s as %s: retained mass %.4f, decode steps %zu\n", policy.c_str(), t.result.budget,
                    base.name.c_str(), t.shape.name.c_str(), t.result.retained_mass, t.loads.size() - 1);
        for (const auto& s : grid) std::printf("%-22s ", s.key.c_str());
        std::printf("%9s %9s %9s | %8s %8s %8s %8s %8s %8s  (ms per decode step)\n", "TTFT ms", "TPOT ms", "tok/s", "compute",
                    "hbm", "launch", "nvlink", "pcie", "stall");
      }
      std::ofstream steps_csv;
      if (!per_step.empty()) {
        steps_csv.open(per_step);
        if (!steps_csv) fail(per_step, "cannot open for writing");
        steps_csv << "point,";
        for (const auto& s : grid) steps_csv << s.key << ",";
        steps_csv << "step,prefill,tokens,gemm_s,attention_s,compute_s,hbm_s,launch_s,nvlink_s,pcie_s,stall_s,total_s\n";
      }
      for (size_t p = 0; p < points; ++p) {
        hw::Hardware h = base;
        json point = json::object();
        size_t rest = p;
        std::vector<double> at(grid.size());
        for (size_t i = grid.size(); i-- > 0;) {
          at[i] = grid[i].values[rest % grid[i].values.size()];
          rest /= grid[i].values.size();
        }
        for (size_t i = 0; i < grid.size(); ++i) {
          h.set(grid[i].key, at[i]);
          point[grid[i].key] = at[i];
        }
        h.validate();
        const std::vector<hw::StepTime> st = hw::time_steps(h, t.shape, t.loads);
        json j = timing_json(h, t, st);
        if (steps_csv.is_open()) {
          for (size_t i = 0; i < st.size(); ++i) {
            steps_csv << p << ",";
            for (double v : at) steps_csv << json(v).dump() << ",";
            const hw::StepTime& x = st[i];
            steps_csv << i << "," << (t.loads[i].prefill ? 1 : 0) << "," << json(t.loads[i].tokens).dump();
            for (double v : {x.gemm, x.attention, x.compute, x.hbm, x.launch, x.nvlink, x.pcie, x.stall, x.total})
              steps_csv << "," << json(v).dump();
            steps_csv << "\n";
          }
        }
        j["point"] = point;
        if (!as_json) {
          for (double v : at) std::printf("%-22.6g ", v);
          const json& d = j["decode_mean"];
          std::printf("%9.3f %9.4f %9.1f | %8.4f %8.4f %8.4f %8.4f %8.4f %8.4f\n", j["ttft"].get<double>() * 1e3,
                      j["tpot"].get<double>() * 1e3, j["tokens_per_s"].get<double>(), d["compute"].get<double>() * 1e3,
                      d["hbm"].get<double>() * 1e3, d["launch"].get<double>() * 1e3, d["nvlink"].get<double>() * 1e3,
                      d["pcie"].get<double>() * 1e3, d["stall"].get<double>() * 1e3);
        }
        rows.push_back(j);
      }
      if (steps_csv.is_open() && !steps_csv.flush()) fail(per_step, "write failed");
      json doc = {{"trace", trace_path},
                  {"policy", policy},
                  {"params", t.result.params},
                  {"budget", t.result.budget},
                  {"page_size", t.result.page_size},
                  {"retained_mass", t.result.retained_mass},
                  {"hardware", base.to_json()},
                  {"shape", t.shape.name},
                  {"coalesce", coalesce},
                  {"points", rows}};
      if (as_json) std::cout << doc.dump(1) << "\n";
      if (!json_out.empty()) {
        std::ofstream f(json_out);
        if (!f) fail(json_out, "cannot open for writing");
        f << doc.dump(1) << "\n";
        if (!f) fail(json_out, "write failed");
      }
      if (!csv.empty()) {
        std::ofstream f(csv);
        if (!f) fail(csv, "cannot open for writing");
        for (const auto& s : grid) f << s.key << ",";
        f << "ttft_s,tpot_s,tokens_per_s,compute_s,hbm_s,launch_s,nvlink_s,pcie_s,stall_s\n";
        for (const auto& r : rows) {
          for (const auto& s : grid) f << json(r["point"][s.key]).dump() << ",";
          const json& d = r["decode_mean"];
          f << json(r["ttft"]).dump() << "," << json(r["tpot"]).dump() << "," << json(r["tokens_per_s"]).dump();
          for (const char* k : {"compute", "hbm", "launch", "nvlink", "pcie", "stall"}) f << "," << json(d[k]).dump();
          f << "\n";
        }
        if (!f) fail(csv, "write failed");
      }
    });
  }
}

}  // namespace kvscope::cli
