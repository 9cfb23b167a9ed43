// export: page-access streams of a trace for other tools (docs/page-caches.md); and
// run_page_stream(), what `kvscope sim --page-stream` runs (hooked in cli/cmd_sim.cpp).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "kernels/io/error.h"
#include "policies/registry.h"
#include "sim/pages.h"
#include "traces/reader.h"

namespace kvscope::cli {

using nlohmann::json;

void run_page_stream(const std::string& path, const std::string& policy, const std::vector<std::string>& params, bool as_json,
                     bool trace_options_given) {
  if (trace_options_given)
    throw Error("sim --page-stream: --trace, --budget, --spec, --out and --csv do not apply (the capacity is --param capacity=N)");
  std::string caches;
  for (const auto& p : policy::registry())
    if (p.make_cache) caches += (caches.empty() ? "" : ", ") + p.name;
  if (policy.empty()) throw Error("sim --page-stream: give --policy (cache policies: " + caches + ")");
  const policy::PolicyInfo& info = policy::find(policy);
  if (!info.make_cache)
    throw Error("sim --page-stream: policy '" + policy + "' is not a page cache (kind " + info.kind + "; cache policies: " + caches + ")");
  json rest = json::object();
  double capacity = 0;
  bool have_capacity = false;
  for (const auto& kv : params) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw Error("--param '" + kv + "': expected key=value");
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    json x;
    try {
      x = json::parse(v);
    } catch (const json::exception&) {
      throw Error("--param " + k + ": '" + v + "' is not a number");
    }
    if (k == "capacity") {
      if (!x.is_number() || !(x.get<double>() >= 1) || std::floor(x.get<double>()) != x.get<double>() ||
          x.get<double>() > 1073741824.0)
        throw Error("--param capacity: '" + v + "': expected an integer number of objects between 1 and 2^30");
      capacity = x.get<double>();
      have_capacity = true;
    } else {
      rest[k] = x;
    }
  }
  if (!have_capacity) throw Error("sim --page-stream: give --param capacity=N (cache size in objects, N >= 1)");
  const json p = policy::validate_params(info.params, rest, "policy " + policy);
  const std::vector<sim::Request> requests = sim::read_oracle_general(path);
  if (requests.empty()) fail(path, "no requests (empty oracleGeneral file)");
  auto cache = info.make_cache(p);
  const sim::CacheRun r = sim::run_cache(*cache, requests, static_cast<uint64_t>(capacity));
  const double ratio = static_cast<double>(r.misses) / static_cast<double>(r.requests);
  const double rate = r.seconds > 0 ? static_cast<double>(r.requests) / r.seconds : 0.0;
  if (as_json) {
    json j = {{"page_stream", path},
              {"policy", policy},
              {"kind", info.kind},
              {"params", p},
              {"capacity", static_cast<uint64_t>(capacity)},
              {"requests", r.requests},
              {"misses", r.misses},
              {"miss_ratio", ratio},
              {"seconds", r.seconds},
              {"requests_per_s", rate}};
    std::cout << j.dump(1) << "\n";
  } else {
    std::printf("%-12s %10s %12s %12s %10s %14s\n", "policy", "capacity", "requests", "misses", "miss ratio", "requests/s");
    std::printf("%-12s %10llu %12llu %12llu %10.6f %14.4g\n", policy.c_str(), static_cast<unsigned long long>(capacity),
                static_cast<unsigned long long>(r.requests), static_cast<unsigned long long>(r.misses), ratio, rate);
  }
}

void add_export_commands(CLI::App& app) {
  auto* c = app.add_subcommand("export", "Export a trace's page-access stream (libCacheSim oracleGeneral) for cache simulators");
  static std::string trace_path, access = "topk:8", format = "libcachesim", out, agg = "sum";
  static uint32_t page_size = 16;
  c->add_option("--trace,-t", trace_path, "Trace file (.kvt)")->required();
  c->add_option("--page-size", page_size, "Positions per page (>= 1)")->default_val(16);
  c->add_option("--access", access, "Pages a decode step accesses per KV head: topk:K or mass:X")->default_val("topk:8");
  c->add_option("--format", format, "Output format (libcachesim: oracleGeneral binary records)")->default_val("libcachesim");
  c->add_option("--out,-o", out, "Output file")->required();
  c->add_option("--agg", agg, "GQA aggregation of the group's attention")->check(CLI::IsMember({"sum", "max", "mean"}));
  c->callback([] {
    if (format != "libcachesim") throw Error("export: --format '" + format + "': unknown format (known: libcachesim)");
    if (page_size == 0) throw Error("export: --page-size must be >= 1");
    const sim::AccessRule rule = sim::AccessRule::parse(access);
    trace::TraceReader tr(trace_path);
    if (!tr.damage().empty() && !tr.complete()) throw Error(tr.damage());
    const sim::Aggregation a = agg == "max" ? sim::Aggregation::Max : agg == "mean" ? sim::Aggregation::Mean : sim::Aggregation::Sum;
    const sim::PageStream ps = sim::build_page_stream(tr, page_size, rule, a);
    sim::write_oracle_general(out, ps.requests);
    std::unordered_set<uint64_t> ids;
    ids.reserve(ps.requests.size() / 4 + 16);
    for (const auto& r : ps.requests) ids.insert(r.id);
    std::printf("requests %zu\nobjects %zu\ncovered mass %.6f\nwrote %s (oracleGeneral, %zu bytes; page size %u, access %s, agg %s)\n",
                ps.requests.size(), ids.size(), ps.covered_mass, out.c_str(), ps.requests.size() * 24, page_size,
                rule.str().c_str(), agg.c_str());
  });
}

}  // namespace kvscope::cli
