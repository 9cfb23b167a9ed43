// Replay subcommands: sim, policies.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "kernels/io/error.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::cli {

using nlohmann::json;

void add_sim_commands(CLI::App& app) {
  {
    auto* c = app.add_subcommand("sim", "Replay a KV-cache policy on a trace: retained attention mass vs the oracle-topk bound");
    static std::string trace_path, policy, agg = "sum", out;
    static std::vector<std::string> params;
    static std::vector<uint32_t> budgets;
    static bool as_json = false;
    c->add_option("--trace,-t", trace_path, "Trace file (.kvt)")->required();
    c->add_option("--policy,-p", policy, "Policy name (see `kvscope policies`)")->required();
    c->add_option("--param", params, "Policy parameter key=value (repeatable)");
    c->add_option("--budget,-b", budgets, "Resident entries per (layer, KV head); several values give a sweep")->required();
    c->add_option("--agg", agg, "GQA aggregation of the group's attention")->check(CLI::IsMember({"sum", "max", "mean"}));
    c->add_flag("--json", as_json, "Print results as JSON (one object per budget, in a list)");
    c->add_option("--out,-o", out, "Also write the JSON results to this file");
    c->callback([] {
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
      trace::TraceReader tr(trace_path);
      if (!tr.damage().empty() && !tr.complete()) throw Error(tr.damage());
      json results = json::array();
      if (!as_json)
        std::printf("%-14s %8s %14s %14s %12s %12s\n", "policy", "budget", "retained mass", "oracle-topk", "evictions",
                    "output L2");
      for (uint32_t b : budgets) {
        sim::ReplayConfig cfg;
        cfg.policy = policy;
        cfg.params = p;
        cfg.budget = b;
        cfg.agg = agg == "max" ? sim::Aggregation::Max : agg == "mean" ? sim::Aggregation::Mean : sim::Aggregation::Sum;
        const sim::ReplayResult r = sim::replay(tr, cfg);
        json j = r.to_json();
        j["trace"] = trace_path;
        j["aggregation"] = agg;
        j["synthetic"] = tr.info().synthetic;
        results.push_back(j);
        if (!as_json)
          std::printf("%-14s %8u %14.6f %14.6f %12llu %12s\n", policy.c_str(), r.budget, r.retained_mass, r.oracle_topk_mass,
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
