// Replay subcommands: sim, policies.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::cli {

using nlohmann::json;

void add_sim_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand("sim", "Replay KV-cache policies on a trace: retained attention mass vs the oracle-topk bound");
    static std::string trace_path, policy, agg = "sum", out, csv, spec_path;
    static std::vector<std::string> params;
    static std::vector<uint32_t> budgets;
    static bool as_json = false;
    c->add_option("--trace,-t", trace_path, "Trace file (.kvt)");
    c->add_option("--policy,-p", policy, "Policy name (see `kvscope policies`)");
    c->add_option("--param", params, "Policy parameter key=value (repeatable)");
    c->add_option("--budget,-b", budgets, "Resident entries per (layer, KV head); several values give a sweep");
    c->add_option("--spec", spec_path, "JSON run spec: {\"trace\", \"aggregation\", \"runs\": [{\"policy\", \"params\", \"budgets\"}]}")
        ->check(CLI::ExistingFile);
    c->add_option("--agg", agg, "GQA aggregation of the group's attention")->check(CLI::IsMember({"sum", "max", "mean"}));
    c->add_flag("--json", as_json, "Print results as JSON (a list, one object per run and budget)");
    c->add_option("--out,-o", out, "Also write the JSON results to this file");
    c->add_option("--csv", csv, "Also write the results as CSV");
    c->callback([] {
      struct Run {
        std::string policy;
        json params;
        uint32_t budget;
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
        for (auto& [k, v] : spec.items())
          if (k != "trace" && k != "aggregation" && k != "runs") fail(spec_path, k + ": unknown key (known: trace, aggregation, runs)");
        if (spec.contains("trace")) {
          if (!spec["trace"].is_string()) fail(spec_path, "trace: expected a string");
          if (trace_path.empty()) trace_path = spec["trace"].get<std::string>();
        }
        if (spec.contains("aggregation")) {
          const auto& a = spec["aggregation"];
          if (!a.is_string() || (a != "sum" && a != "max" && a != "mean")) fail(spec_path, "aggregation: expected sum, max or mean");
          agg = a.get<std::string>();
        }
        if (!spec.contains("runs") || !spec["runs"].is_array() || spec["runs"].empty())
          fail(spec_path, "runs: expected a non-empty array");
        for (size_t i = 0; i < spec["runs"].size(); ++i) {
          const json& r = spec["runs"][i];
          const std::string at = "runs[" + std::to_string(i) + "]";
          if (!r.is_object()) fail(spec_path, at + ": expected an object");
          for (auto& [k, v] : r.items())
            if (k != "policy" && k != "params" && k != "budgets") fail(spec_path, at + "." + k + ": unknown key (known: policy, params, budgets)");
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
          if (!r.contains("budgets") || !r["budgets"].is_array() || r["budgets"].empty())
            fail(spec_path, at + ".budgets: expected a non-empty array of positive integers");
          for (size_t k = 0; k < r["budgets"].size(); ++k) {
            const json& b = r["budgets"][k];
            if (!b.is_number_unsigned() || b.get<uint64_t>() == 0 || b.get<uint64_t>() > (1u << 30))
              fail(spec_path, at + ".budgets[" + std::to_string(k) + "]: expected a positive integer");
            runs.push_back({name, r.contains("params") ? r["params"] : json::object(), b.get<uint32_t>()});
          }
        }
      } else {
        if (policy.empty() || budgets.empty()) throw Error("sim: give --policy and --budget (or --spec)");
        json p = json::object();
        for (const auto& kv : params) {
          const auto eq = kv.find('=');
          if (eq == std::string::npos || eq == 0) throw Error("--param '" + kv + "': expected key=value");
          const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
          try {
            p[k] = json::parse(v);
          } catch (const json::exception&) {
            throw Error("--param " + k + ": '" + v + "' is not a number");
          }
        }
        for (uint32_t b : budgets) runs.push_back({policy, p, b});
      }
      if (trace_path.empty()) throw Error("sim: give --trace (or \"trace\" in the spec)");
      trace::TraceReader tr(trace_path);
      if (!tr.damage().empty() && !tr.complete()) throw Error(tr.damage());
      auto config = [](const Run& run) {
        sim::ReplayConfig cfg;
        cfg.policy = run.policy;
        cfg.params = run.params;
        cfg.budget = run.budget;
        cfg.agg = agg == "max" ? sim::Aggregation::Max : agg == "mean" ? sim::Aggregation::Mean : sim::Aggregation::Sum;
        return cfg;
      };
      for (const Run& run : runs) sim::validate(tr, config(run));  // every run checked before the first starts
      json results = json::array();
      if (!as_json)
        std::printf("%-14s %8s %14s %14s %12s %12s\n", "policy", "budget", "retained mass", "oracle-topk", "evictions",
                    "output L2");
      for (const Run& run : runs) {
        const sim::ReplayResult r = sim::replay(tr, config(run));
        json j = r.to_json();
        j["trace"] = trace_path;
        j["aggregation"] = agg;
        j["synthetic"] = tr.info().synthetic;
        results.push_back(j);
        if (!as_json)
          std::printf("%-14s %8u %14.6f %14.6f %12llu %12s\n", run.policy.c_str(), r.budget, r.retained_mass, r.oracle_topk_mass,
                      static_cast<unsigned long long>(r.evictions),
                      r.has_output_error ? std::to_string(r.output_rel_l2).c_str() : "-");
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
        f << "trace,synthetic,policy,params,aggregation,budget,steps,context,retained_mass,oracle_topk_mass,output_rel_l2,evictions\n";
        auto quote = [](const std::string& x) {
          std::string q = "\"";
          for (char ch : x) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
          return q + "\"";
        };
        for (const auto& j : results)
          f << quote(j["trace"].get<std::string>()) << "," << (j["synthetic"].get<bool>() ? "true" : "false") << ","
            << j["policy"].get<std::string>() << "," << quote(j["params"].dump()) << "," << j["aggregation"].get<std::string>()
            << "," << j["budget"] << "," << j["steps"] << "," << j["context"] << "," << j["retained_mass"].dump() << ","
            << j["oracle_topk_mass"].dump() << "," << (j["output_rel_l2"].is_null() ? "" : j["output_rel_l2"].dump()) << ","
            << j["evictions"] << "\n";
        if (!f) fail(csv, "write failed");
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
