// batch: several traces replayed as concurrent requests on one device (docs/batch.md).
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/timing_options.h"
#include "hwmodels/hw.h"
#include "kernels/io/error.h"
#include "sim/alloc.h"
#include "sim/batch.h"
#include "sim/timing.h"
#include "traces/reader.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

// --alloc-param key=value pairs into a JSON object of numbers.
json parse_params(const std::vector<std::string>& kvs, const std::string& option) {
  json p = json::object();
  for (const auto& kv : kvs) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw Error(option + " '" + kv + "': expected key=value");
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    try {
      p[k] = json::parse(v);
    } catch (const json::exception&) {
      throw Error(option + " " + k + ": '" + v + "' is not a number");
    }
  }
  return p;
}

bool same_geometry(const hw::ModelShape& a, const hw::ModelShape& b) {
  return a.n_layers == b.n_layers && a.n_heads == b.n_heads && a.n_kv_heads == b.n_kv_heads && a.head_dim == b.head_dim &&
         a.dim == b.dim && a.hidden_dim == b.hidden_dim && a.vocab_size == b.vocab_size;
}

struct Options {
  std::vector<std::string> traces, params, sets, allocs, alloc_params;
  std::string policy, hw = "h100-sxm", as = "trace", preempt = "swap", kv_memory, json_out, calibration;
  uint32_t repeat = 1, budget = 0, page_size = 1, block_size = 16, max_batch = 0;
  double rate = 0;
  uint64_t seed = 1;
  bool coalesce = true, list = false;
};

void run(const Options& o) {
  if (o.list) {
    for (const auto& a : sim::alloc_registry()) {
      std::string ps;
      for (const auto& s : a.params) ps += " " + s.name + "=" + json(s.dflt).dump() + " (" + s.help + ")";
      std::printf("%-16s %s%s%s\n", a.name.c_str(), a.summary.c_str(), ps.empty() ? "" : ";", ps.c_str());
    }
    return;
  }
  if (o.traces.empty()) throw Error("batch: give --trace (repeatable)");
  if (o.policy.empty()) throw Error("batch: give --policy (the eviction policy; `full` keeps everything)");
  if (o.repeat == 0) throw Error("--repeat: must be at least 1");
  if (o.block_size == 0) throw Error("--block-size: must be at least 1");
  if (!(o.rate >= 0)) throw Error("--rate: must be >= 0 (0: every request at t = 0)");
  const std::vector<std::string> allocs = o.allocs.empty() ? std::vector<std::string>{"paged"} : o.allocs;
  const json alloc_params = parse_params(o.alloc_params, "--alloc-param");
  // --alloc-param goes to the chosen policies that declare the key; a key none declares is an error.
  std::vector<json> params_of;
  for (const auto& a : allocs) {
    const sim::AllocInfo& info = sim::find_alloc(a);
    json mine = json::object();
    for (const auto& s : info.params)
      if (alloc_params.contains(s.name)) mine[s.name] = alloc_params[s.name];
    policy::validate_params(info.params, mine, "--alloc-param");
    params_of.push_back(mine);
  }
  for (auto it = alloc_params.begin(); it != alloc_params.end(); ++it) {
    bool known = false;
    std::string lists;
    for (const auto& a : allocs) {
      std::string ks;
      for (const auto& s : sim::find_alloc(a).params) {
        known = known || s.name == it.key();
        ks += (ks.empty() ? "" : ", ") + s.name;
      }
      lists += (lists.empty() ? "" : "; ") + a + ": " + (ks.empty() ? "none" : ks);
    }
    if (!known) throw Error("--alloc-param." + it.key() + ": unknown parameter of the chosen allocation policies (" + lists + ")");
  }

  const hw::Hardware hw = load_hardware(o.hw, o.sets, o.calibration);

  sim::ReplayConfig cfg;
  cfg.policy = o.policy;
  cfg.params = parse_policy_params(o.params);
  cfg.budget = o.budget;
  cfg.page_size = o.page_size;

  // One profile per distinct trace file; every trace checked before the first replay.
  std::vector<std::string> distinct;
  std::map<std::string, size_t> index;
  for (const auto& t : o.traces)
    if (index.emplace(t, distinct.size()).second) distinct.push_back(t);
  hw::ModelShape target;
  for (size_t i = 0; i < distinct.size(); ++i) {
    trace::TraceReader tr(distinct[i]);
    if (!tr.damage().empty() && !tr.complete()) throw Error(tr.damage());
    const hw::ModelShape s = sim::shape_by_name(o.as, tr);
    if (i == 0) target = s;
    else if (!same_geometry(s, target))
      throw Error(distinct[i] + ": its model differs from " + distinct[0] + "'s; one device runs one model (give --as SHAPE)");
    sim::validate(tr, cfg);
  }
  std::vector<sim::RequestProfile> profiles;
  for (const auto& path : distinct) {
    trace::TraceReader tr(path);
    profiles.push_back(sim::profile_trace(tr, path, cfg, target, o.block_size, o.coalesce));
  }

  const double kv_memory = o.kv_memory.empty() ? sim::default_kv_memory(hw, target) : hw::parse_number(o.kv_memory, "--kv-memory");
  if (!(kv_memory > 0)) throw Error("--kv-memory: must be positive");
  sim::BatchConfig bc;
  bc.block_bytes = sim::block_bytes(target, o.block_size);
  bc.total_blocks = static_cast<uint64_t>(hw.system_tp * kv_memory / static_cast<double>(bc.block_bytes));
  bc.preempt = o.preempt == "recompute" ? sim::Preempt::Recompute : sim::Preempt::Swap;
  bc.max_batch = o.max_batch;

  std::vector<sim::RequestSpec> requests;
  for (uint32_t k = 0; k < o.repeat; ++k)
    for (const auto& t : o.traces) requests.push_back({index.at(t), 0.0});
  const std::vector<double> at = sim::arrivals(requests.size(), o.rate, o.seed);
  for (size_t i = 0; i < requests.size(); ++i) requests[i].arrival = at[i];

  const sim::StepCost cost = sim::hardware_cost(hw, target);
  std::printf("batch: %zu requests (%zu traces) as %s on %s; eviction %s budget %u page %u; KV memory %.3f GB/GPU x tp %g = %llu "
              "blocks of %u entries (%llu B); arrivals %s\n",
              requests.size(), distinct.size(), target.name.c_str(), hw.name.c_str(), o.policy.c_str(), o.budget, o.page_size,
              kv_memory / 1e9, hw.system_tp, static_cast<unsigned long long>(bc.total_blocks), o.block_size,
              static_cast<unsigned long long>(bc.block_bytes),
              o.rate > 0 ? ("Poisson " + json(o.rate).dump() + "/s seed " + std::to_string(o.seed)).c_str() : "all at t=0");
  std::printf("%-16s %-9s %5s %7s %10s %10s %8s %11s %11s %10s %10s %10s %10s %10s %9s %9s\n", "alloc", "preempt", "max", "mean",
              "makespan s", "tok/s", "preempt", "swap out MB", "swap in MB", "recomp tok", "TTFT ms", "TTFT p99", "TPOT ms",
              "TPOT p99", "peak blk", "blocks");
  json results = json::array();
  for (size_t k = 0; k < allocs.size(); ++k) {
    const std::string& a = allocs[k];
    bc.alloc = a;
    bc.alloc_params = params_of[k];
    const sim::BatchResult r = sim::run_batch(profiles, requests, bc, cost);
    std::printf("%-16s %-9s %5u %7.2f %10.4f %10.1f %8llu %11.3f %11.3f %10llu %10.3f %10.3f %10.3f %10.3f %9llu %9llu\n",
                a.c_str(), r.preempt.c_str(), r.max_batch, r.mean_batch, r.makespan, r.throughput,
                static_cast<unsigned long long>(r.preemptions), r.bytes_swapped_out / 1e6, r.bytes_swapped_in / 1e6,
                static_cast<unsigned long long>(r.recomputed_tokens), r.ttft_mean * 1e3, r.ttft_p99 * 1e3, r.tpot_mean * 1e3,
                r.tpot_p99 * 1e3, static_cast<unsigned long long>(r.peak_blocks), static_cast<unsigned long long>(r.total_blocks));
    json j = r.to_json();
    results.push_back(std::move(j));
  }
  if (!o.json_out.empty()) {
    json doc = {{"traces", o.traces},
                {"repeat", o.repeat},
                {"policy", o.policy},
                {"params", cfg.params},
                {"budget", o.budget},
                {"page_size", o.page_size},
                {"hardware", hw.name},
                {"shape", target.name},
                {"block_size", o.block_size},
                {"kv_memory", kv_memory},
                {"rate", o.rate},
                {"seed", o.seed},
                {"max_batch_cap", o.max_batch},
                {"coalesce", o.coalesce},
                {"profiles", json::array()},
                {"results", results}};
    for (const auto& p : profiles)
      doc["profiles"].push_back({{"trace", p.name}, {"steps", p.blocks.size()}, {"prompt_tokens", p.prompt_tokens},
                                 {"max_blocks", p.max_blocks()}, {"prefill_blocks", p.blocks.front()}});
    std::ofstream f(o.json_out);
    if (!f) fail(o.json_out, "cannot open for writing");
    f << doc.dump(1) << "\n";
    if (!f) fail(o.json_out, "write failed");
  }
}

}  // namespace

void add_batch_commands(CLI::App& app) {
  auto* c = app.add_subcommand(
      "batch", "Replay traces as concurrent requests on one device: KV block allocation, admission, preemption (docs/batch.md)");
  static Options o;
  c->add_option("--trace,-t", o.traces, "Trace file of one request (repeatable; the same file may be given several times)");
  c->add_option("--repeat", o.repeat, "Replicate the list of traces K times (default 1)");
  c->add_option("--policy,-p", o.policy, "Eviction policy of every request (see `kvscope policies`; `full` keeps everything)");
  c->add_option("--param", o.params, "Eviction-policy parameter key=value (repeatable)");
  c->add_option("--budget,-b", o.budget, "Eviction budget: HBM entries per (layer, KV head) (ignored by full)");
  c->add_option("--page-size", o.page_size, "Eviction granularity: 1 (token) or whole pages of B positions");
  c->add_option("--hw", o.hw, "Hardware preset or JSON file (default h100-sxm; see `kvscope hw`)");
  c->add_option("--calibration", o.calibration, "Apply a calibration file's measured figures (kvscope calibrate)");
  c->add_option("--set", o.sets, "Hardware override key=value (repeatable)");
  c->add_option("--as", o.as, "Model shape to time (llama3-8b, ...; default: the traced model)");
  c->add_option("--alloc", o.allocs, "Allocation policy (repeatable: one result row each; default paged; --list-alloc)");
  c->add_option("--alloc-param", o.alloc_params, "Allocation-policy parameter key=value (repeatable)");
  c->add_flag("--list-alloc", o.list, "List the allocation policies and exit");
  c->add_option("--block-size", o.block_size, "KV entries per allocator block and stream (default 16, as vLLM)");
  c->add_option("--kv-memory", o.kv_memory,
                "KV memory per GPU in bytes (SI suffixes: 512M, 2G); default gpu.hbm_bytes x 0.9 - weights / tp");
  c->add_option("--preempt", o.preempt, "Preemption: swap (KV to host and back) or recompute (drop, re-prefill on resume)")
      ->check(CLI::IsMember({"swap", "recompute"}));
  c->add_option("--max-batch", o.max_batch, "Cap on running requests (0: none)");
  c->add_option("--rate", o.rate, "Poisson arrivals, requests per second (0: all at t = 0)");
  c->add_option("--seed", o.seed, "Seed of the arrivals (default 1)");
  c->add_flag("--coalesce,!--no-coalesce", o.coalesce, "Policy copies: contiguous positions in one transfer (default on)");
  c->add_option("--json", o.json_out, "Also write the configuration and results as JSON to this file");
  c->callback([] { run(o); });
}

}  // namespace kvscope::cli
