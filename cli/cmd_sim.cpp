// Replay subcommands: sim, policies.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/timing_options.h"
#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "sim/timing.h"
#include "traces/reader.h"

namespace kvscope::cli {

using nlohmann::json;

// `sim --page-stream` (defined in cli/cmd_export.cpp): a cache policy over an oracleGeneral file.
void run_page_stream(const std::string& path, const std::string& policy, const std::vector<std::string>& params, bool as_json,
                     bool trace_options_given);

namespace {

// "a,b,c" -> numbers; the option name in errors.
std::vector<uint32_t> parse_list(const std::string& text, const std::string& option) {
  std::vector<uint32_t> v;
  size_t i = 0;
  while (i <= text.size() && !text.empty()) {
    const size_t e = std::min(text.find(',', i), text.size());
    const std::string item = text.substr(i, e - i);
    char* end = nullptr;
    const unsigned long x = std::strtoul(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || x == 0 || x > (1ul << 30))
      throw Error(option + ": '" + item + "' is not a positive integer (expected a comma-separated list)");
    v.push_back(static_cast<uint32_t>(x));
    i = e + 1;
  }
  return v;
}

std::vector<uint32_t> json_budgets(const json& a, const std::string& file, const std::string& at) {
  if (!a.is_array() || a.empty()) fail(file, at + ": expected a non-empty array of positive integers");
  std::vector<uint32_t> v;
  for (size_t k = 0; k < a.size(); ++k) {
    if (!a[k].is_number_unsigned() || a[k].get<uint64_t>() == 0 || a[k].get<uint64_t>() > (1u << 30))
      fail(file, at + "[" + std::to_string(k) + "]: expected a positive integer");
    v.push_back(a[k].get<uint32_t>());
  }
  return v;
}

std::string quote_csv(const std::string& x) {
  std::string q = "\"";
  for (char ch : x) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

// A one-line progress bar on stderr, only when stderr is a terminal.
class Progress {
 public:
  explicit Progress(bool enabled) : on_(enabled && ::isatty(2)) {}
  void update(const std::string& label, double done) {
    if (!on_) return;
    const int width = 30, fill = static_cast<int>(done * width + 0.5);
    std::fprintf(stderr, "\r%-28.28s [%s%s] %3d%%", label.c_str(), std::string(fill, '#').c_str(),
                 std::string(width - fill, ' ').c_str(), static_cast<int>(done * 100 + 0.5));
    std::fflush(stderr);
  }
  void done() {
    if (on_) std::fprintf(stderr, "\r%*s\r", 70, "");
  }

 private:
  bool on_;
};

}  // namespace

void add_sim_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand("sim", "Replay KV-cache policies on a trace: retained attention mass vs the oracle-topk bound");
    static std::string trace_path, policy, agg = "sum", out, csv, spec_path, layer_budgets, head_budgets, access = "topk:8",
                       per_step_csv;
    static std::vector<std::string> params;
    static std::vector<uint32_t> budgets;
    static uint32_t page_size = 1;
    static bool as_json = false, quiet = false;
    c->add_option("--trace,-t", trace_path, "Trace file (.kvt)");
    c->add_option("--policy,-p", policy, "Policy name (see `kvscope policies`)");
    c->add_option("--param", params, "Policy parameter key=value (repeatable)");
    c->add_option("--budget,-b", budgets, "HBM entries per (layer, KV head); several values give a sweep");
    c->add_option("--page-size", page_size, "1: token granularity; B: policies move whole pages of B positions (PagedAttention: 16)");
    c->add_option("--layer-budgets", layer_budgets, "Per-layer budgets, comma-separated (overrides --budget per layer)");
    c->add_option("--head-budgets", head_budgets, "Per-(layer, KV head) budgets, comma-separated, layer-major");
    c->add_option("--access", access, "Cache policies: pages a step accesses, topk:K or mass:X");
    c->add_option("--spec", spec_path,
                  "JSON run spec: {\"trace\", \"aggregation\", \"page_size\", \"access\", \"runs\": [{\"policy\", \"params\", "
                  "\"budgets\", \"page_size\"}]}")
        ->check(CLI::ExistingFile);
    c->add_option("--agg", agg, "GQA aggregation of the group's attention")->check(CLI::IsMember({"sum", "max", "mean"}));
    c->add_flag("--json", as_json, "Print results as JSON (a list, one object per run and budget)");
    c->add_option("--out,-o", out, "Also write the JSON results to this file");
    c->add_option("--csv", csv, "Also write the results as CSV");
    c->add_option("--per-step", per_step_csv, "Also write per-step metrics of every run as CSV");
    c->add_flag("--quiet,-q", quiet, "No progress bar");
    static std::string hw_name, as = "trace", calibration;
    static std::vector<std::string> sets;
    static bool coalesce = false;
    c->add_option("--hw", hw_name, "Also time every run on this hardware preset or JSON file (docs/hardware.md)");
    c->add_option("--calibration", calibration, "With --hw: apply a calibration file's measured figures");
    c->add_option("--set", sets, "With --hw: override a hardware key=value (repeatable)");
    c->add_option("--as", as, "With --hw: time the trace as this model shape (llama3-8b, ...; default: the traced model)");
    c->add_flag("--coalesce", coalesce, "With --hw: adjacent pages moved in one step are one copy");
    static std::string page_stream;
    c->add_option("--page-stream", page_stream, "Replay a cache policy on a libCacheSim oracleGeneral file (with --param capacity=N)");
    c->callback([] {
      if (!page_stream.empty()) {
        run_page_stream(page_stream, policy, params, as_json, !trace_path.empty() || !budgets.empty() || !spec_path.empty() || !out.empty() || !csv.empty());
        return;
      }
      struct Run {
        std::string policy;
        json params;
        uint32_t budget;
        uint32_t page_size;
      };
      std::vector<Run> runs;
      if (!spec_path.empty()) {
        if (!policy.empty() || !budgets.empty() || !params.empty())
          throw Error("sim: give either --spec or --policy/--budget/--param, not both");
        json spec;
        try {
          spec = json::parse(read_text_file(spec_path));
        } catch (const json::parse_error& e) {
          fail_at(spec_path, e.byte, std::string("invalid JSON: ") + e.what());
        } catch (const json::exception& e) {
          fail(spec_path, std::string("invalid JSON: ") + e.what());
        }
        if (!spec.is_object()) fail(spec_path, "expected an object");
        for (auto it = spec.begin(); it != spec.end(); ++it)
          if (it.key() != "trace" && it.key() != "aggregation" && it.key() != "runs" && it.key() != "page_size" && it.key() != "access")
            fail(spec_path, it.key() + ": unknown key (known: trace, aggregation, page_size, access, runs)");
        if (spec.contains("trace")) {
          if (!spec["trace"].is_string()) fail(spec_path, "trace: expected a string");
          if (trace_path.empty()) trace_path = spec["trace"].get<std::string>();
        }
        if (spec.contains("aggregation")) {
          const auto& a = spec["aggregation"];
          if (!a.is_string() || (a != "sum" && a != "max" && a != "mean")) fail(spec_path, "aggregation: expected sum, max or mean");
          agg = a.get<std::string>();
        }
        if (spec.contains("page_size")) {
          if (!spec["page_size"].is_number_unsigned() || spec["page_size"].get<uint64_t>() == 0)
            fail(spec_path, "page_size: expected a positive integer");
          page_size = spec["page_size"].get<uint32_t>();
        }
        if (spec.contains("access")) {
          if (!spec["access"].is_string()) fail(spec_path, "access: expected a string such as \"topk:8\"");
          access = spec["access"].get<std::string>();
        }
        if (!spec.contains("runs") || !spec["runs"].is_array() || spec["runs"].empty())
          fail(spec_path, "runs: expected a non-empty array");
        for (size_t i = 0; i < spec["runs"].size(); ++i) {
          const json& r = spec["runs"][i];
          const std::string at = "runs[" + std::to_string(i) + "]";
          if (!r.is_object()) fail(spec_path, at + ": expected an object");
          for (auto it = r.begin(); it != r.end(); ++it)
            if (it.key() != "policy" && it.key() != "params" && it.key() != "budgets" && it.key() != "page_size")
              fail(spec_path, at + "." + it.key() + ": unknown key (known: policy, params, budgets, page_size)");
          if (!r.contains("policy") || !r["policy"].is_string()) fail(spec_path, at + ".policy: expected a policy name");
          const std::string name = r["policy"].get<std::string>();
          const policy::PolicyInfo* info = nullptr;
          try {
            info = &policy::find(name);
          } catch (const Error& e) {
            fail(spec_path, at + ".policy: " + e.what());
          }
          try {
            policy::validate_params(info->params, r.contains("params") ? r["params"] : json::object(), at + ".params");
          } catch (const Error& e) {
            fail(spec_path, e.what());
          }
          uint32_t ps = page_size;
          if (r.contains("page_size")) {
            if (!r["page_size"].is_number_unsigned() || r["page_size"].get<uint64_t>() == 0)
              fail(spec_path, at + ".page_size: expected a positive integer");
            ps = r["page_size"].get<uint32_t>();
          }
          if (!r.contains("budgets")) fail(spec_path, at + ".budgets: expected a non-empty array of positive integers");
          for (uint32_t b : json_budgets(r["budgets"], spec_path, at + ".budgets"))
            runs.push_back({name, r.contains("params") ? r["params"] : json::object(), b, ps});
        }
      } else {
        if (policy.empty() || (budgets.empty() && layer_budgets.empty() && head_budgets.empty()))
          throw Error("sim: give --policy and --budget (or --spec)");
        const json p = parse_policy_params(params);
        if (budgets.empty()) {  // overrides only: the run's nominal budget is their largest value
          const auto v = parse_list(!head_budgets.empty() ? head_budgets : layer_budgets, "--layer-budgets");
          budgets.push_back(*std::max_element(v.begin(), v.end()));
        }
        for (uint32_t b : budgets) runs.push_back({policy, p, b, page_size});
      }
      if (trace_path.empty()) throw Error("sim: give --trace (or \"trace\" in the spec)");
      trace::TraceReader tr(trace_path);
      if (!tr.damage().empty() && !tr.complete()) throw Error(tr.damage());
      const std::vector<uint32_t> lb = layer_budgets.empty() ? std::vector<uint32_t>{} : parse_list(layer_budgets, "--layer-budgets");
      const std::vector<uint32_t> hb = head_budgets.empty() ? std::vector<uint32_t>{} : parse_list(head_budgets, "--head-budgets");
      auto config = [&](const Run& run) {
        sim::ReplayConfig cfg;
        cfg.policy = run.policy;
        cfg.params = run.params;
        cfg.budget = run.budget;
        cfg.page_size = run.page_size;
        cfg.layer_budgets = lb;
        cfg.stream_budgets = hb;
        cfg.access = access;
        cfg.per_step = !per_step_csv.empty();
        cfg.agg = agg == "max" ? sim::Aggregation::Max : agg == "mean" ? sim::Aggregation::Mean : sim::Aggregation::Sum;
        return cfg;
      };
      for (const Run& run : runs) sim::validate(tr, config(run));  // every run checked before the first starts
      const bool timed = !hw_name.empty();
      const hw::Hardware hardware = timed ? load_hardware(hw_name, sets, calibration) : hw::Hardware{};
      if (timed) sim::shape_by_name(as, tr);
      const bool synthetic = tr.info().synthetic;
      json results = json::array();
      if (!as_json) {
        if (synthetic) std::printf("note: %s is a SYNTHETIC trace (kvscope synth), not a model run\n", trace_path.c_str());
        std::printf("%-14s %7s %5s %10s %10s %10s %10s %11s %11s %10s%s\n", "policy", "budget", "page", "retained", "oracle",
                    "evictions", "fetched MB", "peak HBM MB", "mean HBM", "output L2", timed ? "    TPOT ms" : "");
      }
      Progress bar(!quiet && !as_json);
      std::vector<sim::ReplayResult> all;
      for (size_t i = 0; i < runs.size(); ++i) {
        const Run& run = runs[i];
        sim::ReplayConfig cfg = config(run);
        const std::string label = run.policy + " B=" + std::to_string(run.budget);
        cfg.progress = [&](double d) { bar.update(label, (static_cast<double>(i) + d) / static_cast<double>(runs.size())); };
        json timing;
        sim::ReplayResult r;
        if (timed) {
          TimedReplay t = timed_replay(tr, cfg, as, coalesce);
          timing = timing_json(hardware, t);
          r = std::move(t.result);
          if (per_step_csv.empty()) r.per_step.clear();
        } else {
          r = sim::replay(tr, cfg);
        }
        bar.done();
        json j = r.to_json();
        if (timed) j["timing"] = timing;
        j["trace"] = trace_path;
        j["aggregation"] = agg;
        j["synthetic"] = synthetic;
        if (!per_step_csv.empty()) j.erase("per_step");
        results.push_back(j);
        if (!as_json)
          std::printf("%-14s %7u %5u %10.6f %10.6f %10llu %10.3f %11.3f %11.1f %10s%s\n", run.policy.c_str(), r.budget, r.page_size,
                      r.retained_mass, r.oracle_topk_mass, static_cast<unsigned long long>(r.evictions), r.bytes_fetched / 1e6,
                      r.peak_hbm_bytes / 1e6, r.mean_hbm_entries,
                      r.has_output_error ? std::to_string(r.output_rel_l2).c_str() : "-",
                      timed ? ("   " + std::to_string(timing["tpot"].get<double>() * 1e3)).c_str() : "");
        if (!per_step_csv.empty()) all.push_back(std::move(r));
      }
      if (as_json) std::cout << results.dump(1) << "\n";
      if (!out.empty()) {
        std::ofstream f(out);
        if (!f) fail(out, "cannot open for writing");
        f << results.dump(1) << "\n";
        if (!f) fail(out, "write failed");
      }
      if (!csv.empty()) {
        std::ofstream f(csv);
        if (!f) fail(csv, "cannot open for writing");
        static const char* cols[] = {"budget", "page_size", "steps", "context", "retained_mass", "oracle_topk_mass",
                                     "output_rel_l2", "evictions", "offloads", "fetches", "quantized", "bytes_fetched",
                                     "bytes_offloaded", "peak_hbm_bytes", "mean_hbm_entries", "mean_hbm_pages", "quant_rel_l2",
                                     "requests", "misses"};
        f << "trace,synthetic,policy,kind,params,aggregation";
        for (const char* col : cols) f << "," << col;
        f << "\n";
        for (const auto& j : results) {
          f << quote_csv(j["trace"].get<std::string>()) << "," << (j["synthetic"].get<bool>() ? "true" : "false") << ","
            << j["policy"].get<std::string>() << "," << j["kind"].get<std::string>() << "," << quote_csv(j["params"].dump()) << ","
            << j["aggregation"].get<std::string>();
          for (const char* col : cols) f << "," << (j[col].is_null() ? "" : j[col].dump());
          f << "\n";
        }
        if (!f) fail(csv, "write failed");
      }
      if (!per_step_csv.empty()) {
        std::ofstream f(per_step_csv);
        if (!f) fail(per_step_csv, "cannot open for writing");
        f << "policy,budget,page_size,step,retained_mass,oracle_topk_mass,hbm_entries,hbm_bytes,host_entries,bytes_fetched,"
             "bytes_offloaded,evictions\n";
        for (const auto& r : all)
          for (const auto& m : r.per_step)
            f << r.policy << "," << r.budget << "," << r.page_size << "," << m.step << "," << json(m.retained_mass).dump() << ","
              << json(m.oracle_topk_mass).dump() << "," << m.hbm_entries << "," << m.hbm_bytes << "," << m.host_entries << ","
              << m.bytes_fetched << "," << m.bytes_offloaded << "," << m.evictions << "\n";
        if (!f) fail(per_step_csv, "write failed");
      }
    });
  }
  {
    auto* c = app.add_subcommand("policies", "List the registered KV-cache policies with their parameters");
    c->callback([] {
      auto num = [](double x, bool integer) { return integer ? std::to_string(static_cast<long long>(x)) : json(x).dump(); };
      for (const auto& p : policy::registry()) {
        std::string ps;
        for (const auto& s : p.params)
          ps += " " + s.name + "=" + num(s.dflt, s.integer) + " [" + num(s.min, s.integer) + ", " + num(s.max, s.integer) + "]" +
                (s.integer ? " integer" : "") + " (" + s.help + ")";
        std::printf("%-14s %-9s %s%s%s\n", p.name.c_str(), p.kind.c_str(), p.summary.c_str(), ps.empty() ? "" : ";", ps.c_str());
      }
    });
  }
}

}  // namespace kvscope::cli
