// validate: the explorer's candidates run for real on the model, each enforced in the real
// KV cache by the policy objects the simulator ran; quality against the full cache and
// the simulator's ranking against the measured one (docs/validation.md).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "explorer/store.h"
#include "kernels/io/error.h"
#include "kernels/io/mapped_file.h"
#include "kernels/model/model.h"
#include "policies/registry.h"
#include "sim/live.h"

namespace kvscope::cli {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Candidate {
  std::string hash;
  json config, metrics;
  sim::ReplayConfig cfg;
  std::string skip;  // why it is not run (empty: run)
};

// A number of the simulator's metrics, or NaN.
double metric(const json& m, const char* key) {
  return m.contains(key) && m[key].is_number() ? m[key].get<double>() : std::nan("");
}

json num_or_null(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

std::vector<Candidate> load_candidates(const std::string& path, uint32_t ctx, uint32_t n_layers, uint32_t n_kv_heads) {
  json all;
  try {
    all = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    fail(path, std::string("not JSON: ") + e.what());
  }
  if (!all.is_array()) fail(path, "expected an array of candidates (kvscope explore --top K --export F)");
  if (all.empty()) fail(path, "no candidates");
  std::vector<Candidate> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    const json& e = all[i];
    if (!e.is_object()) fail(path, at + ": expected an object with hash, config, metrics");
    if (!e.contains("hash") || !e["hash"].is_string()) fail(path, at + ".hash: missing or not a string");
    if (!e.contains("config") || !e["config"].is_object()) fail(path, at + ".config: missing or not an object");
    if (!e.contains("metrics") || !e["metrics"].is_object()) fail(path, at + ".metrics: missing or not an object");
    Candidate c;
    c.hash = e["hash"].get<std::string>();
    if (!seen.insert(c.hash).second) fail(path, at + ".hash: " + c.hash + " appears twice");
    c.config = e["config"];
    c.metrics = e["metrics"];
    const json& k = c.config;
    if (!k.contains("policy") || !k["policy"].is_string()) fail(path, at + ".config.policy: missing or not a string");
    c.cfg.policy = k["policy"].get<std::string>();
    try {
      policy::find(c.cfg.policy);
    } catch (const Error& err) {
      fail(path, at + ".config.policy: " + err.what());
    }
    auto uint_of = [&](const char* key, uint32_t dflt) -> uint32_t {
      if (!k.contains(key)) return dflt;
      if (!k[key].is_number_unsigned()) fail(path, at + ".config." + key + ": not a non-negative integer");
      const uint64_t v = k[key].get<uint64_t>();
      if (v > (1u << 30)) fail(path, at + ".config." + key + ": " + std::to_string(v) + " is too large");
      return static_cast<uint32_t>(v);
    };
    c.cfg.budget = uint_of("budget", 0);
    c.cfg.page_size = uint_of("page_size", 1);
    if (k.contains("params")) {
      if (!k["params"].is_object()) fail(path, at + ".config.params: not an object");
      c.cfg.params = k["params"];
    }
    if (k.contains("aggregation")) {
      const std::string a = k["aggregation"].is_string() ? k["aggregation"].get<std::string>() : "";
      if (a != "sum" && a != "max" && a != "mean") fail(path, at + ".config.aggregation: expected sum, max or mean");
      c.cfg.agg = a == "max" ? sim::Aggregation::Max : a == "mean" ? sim::Aggregation::Mean : sim::Aggregation::Sum;
    }
    if (c.metrics.contains("error")) {
      c.skip = "the simulator failed on it: " + c.metrics["error"].dump();
    } else if (!sim::live_supported(c.cfg.policy, &c.skip)) {
      // c.skip says why
    } else {
      try {
        sim::validate_run(c.cfg, ctx, n_layers, n_kv_heads, "");
      } catch (const Error& err) {
        fail(path, at + ".config: " + err.what());
      }
    }
    out.push_back(std::move(c));
  }
  return out;
}

void write_floats(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!f) fail(path, "cannot write");
}

}  // namespace

void add_validate_commands(CLI::App& app) {
  auto* c = app.add_subcommand("validate",
                               "Run the explorer's candidates for real (policies enforced in the model's KV cache); quality vs "
                               "the full cache and the simulator's ranking (docs/validation.md)");
  static std::string candidates, model, db = "results.db", device = "cpu", out, dump;
  static std::vector<std::string> prompts;
  static uint32_t tokens = 0;
  static int threads = 0;
  static bool quiet = false, no_quantize_keys = false;
  c->add_option("--candidates", candidates, "Candidates JSON (kvscope explore --top K --export F)")->required();
  c->add_option("--model", model, "Model: a folder, .bin (llama2.c), .gguf or Hugging Face folder")->required();
  c->add_option("--prompts", prompts, "Prompt text file(s), one prompt per file (as kvscope trace --prompt-file)")->required();
  c->add_option("--db", db, "SQLite database to write the results into (default results.db)");
  c->add_option("--tokens,-n", tokens, "Decode steps scored per prompt (the full cache's greedy continuation); default 0: "
              "fill the model's context, as the default traces do")
      ->check(CLI::Range(0u, 1u << 24));
  c->add_option("--device", device, "cpu (default); cuda is not available for the live driver in this build")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  c->add_option("--out,-o", out, "Write the per-candidate results and the summary as JSON");
  c->add_option("--dump-logits", dump, "Write every run's logits ([steps][vocab] float32) and the tokens into this folder");
  c->add_option("--threads,-t", threads, "CPU threads (0: all cores); results do not depend on it")->check(CLI::NonNegativeNumber);
  c->add_flag("--quiet,-q", quiet, "No progress or table");
  c->add_flag("--no-quantize-keys", no_quantize_keys,
              "Diagnostic: quantized entries keep K at full precision (the simulator models only V's quantization)");
  c->callback([] {
    if (device == "cuda")
      throw Error("validate: --device cuda: the live policy driver is CPU-only in this build (run with --device cpu)");
    const std::string model_file = checkpoint_path(model);
    const Model m = load_model(model_file);
    const uint32_t ctx = static_cast<uint32_t>(m.config.max_seq_len);
    std::vector<Candidate> cands =
        load_candidates(candidates, ctx, static_cast<uint32_t>(m.config.n_layers), static_cast<uint32_t>(m.config.n_kv_heads));
    const bool bos = m.tokenizer.add_bos_default() || m.config.format == "llama2c";
    std::vector<sim::Reference> refs;
    std::string prompt_names;
    for (const std::string& p : prompts) {
      const std::vector<int32_t> ids = m.tokenizer.encode(read_text_file(p), bos, true);
      if (ids.empty()) fail(p, "the prompt encodes to no tokens");
      try {
        refs.push_back(sim::reference_run(m, ids, tokens ? tokens : ctx, threads));
      } catch (const Error& e) {
        fail(p, e.what());
      }
      prompt_names += (prompt_names.empty() ? "" : ",") + fs::path(p).filename().string();
    }
    const std::string model_name = fs::path(model_file).filename().string();
    if (!dump.empty()) {
      fs::create_directories(dump);
      for (size_t i = 0; i < refs.size(); ++i) {
        write_floats((fs::path(dump) / ("full_p" + std::to_string(i) + ".f32")).string(), refs[i].logits);
        std::ofstream f(fs::path(dump) / ("tokens_p" + std::to_string(i) + ".json"));
        f << json{{"prompt", refs[i].prompt}, {"continuation", refs[i].continuation}, {"vocab", refs[i].vocab}}.dump() << "\n";
      }
    }

    std::vector<json> rows;
    json skipped = json::array();
    std::vector<double> kl, sim_ret, sim_l2, sim_tpot, step_ms;
    std::set<std::string> policies;
    bool all_l2 = true, all_tpot = true;
    size_t done = 0;
    const size_t to_run = static_cast<size_t>(std::count_if(cands.begin(), cands.end(), [](const Candidate& x) { return x.skip.empty(); }));
    for (const Candidate& cd : cands) {
      if (!cd.skip.empty()) {
        skipped.push_back({{"hash", cd.hash}, {"policy", cd.cfg.policy}, {"reason", cd.skip}});
        if (!quiet) std::fprintf(stderr, "validate: skipping %s (%s): %s\n", cd.hash.c_str(), cd.cfg.policy.c_str(), cd.skip.c_str());
        continue;
      }
      sim::Quality total;
      for (size_t i = 0; i < refs.size(); ++i) {
        sim::Quality q = sim::candidate_run(m, refs[i], cd.cfg, threads, !dump.empty(), !no_quantize_keys);
        total.kl += q.kl, total.top1 += q.top1, total.nll += q.nll, total.nll_full += q.nll_full;
        total.steps += q.steps, total.decode_seconds += q.decode_seconds;
        total.stats.evictions += q.stats.evictions, total.stats.offloads += q.stats.offloads;
        total.stats.fetches += q.stats.fetches, total.stats.quantized += q.stats.quantized;
        total.stats.bytes_offloaded += q.stats.bytes_offloaded, total.stats.bytes_fetched += q.stats.bytes_fetched;
        total.stats.mean_hbm_entries += q.stats.mean_hbm_entries / static_cast<double>(refs.size());
        if (!dump.empty()) write_floats((fs::path(dump) / (cd.hash + "_p" + std::to_string(i) + ".f32")).string(), q.logits);
      }
      const double n = static_cast<double>(total.steps);
      json r = {{"hash", cd.hash},
                {"model", model_name},
                {"prompts", prompt_names},
                {"device", "cpu"},
                {"policy", cd.cfg.policy},
                {"params", cd.config.contains("params") ? cd.config["params"] : json::object()},
                {"budget", cd.cfg.budget},
                {"page_size", cd.cfg.page_size},
                {"steps", total.steps},
                {"kl", total.kl / n},
                {"top1", total.top1 / n},
                {"ppl", std::exp(total.nll / n)},
                {"ppl_full", std::exp(total.nll_full / n)},
                {"step_ms", 1e3 * total.decode_seconds / n},
                {"bytes_offloaded", total.stats.bytes_offloaded},
                {"bytes_fetched", total.stats.bytes_fetched},
                {"evictions", total.stats.evictions},
                {"offloads", total.stats.offloads},
                {"fetches", total.stats.fetches},
                {"quantized", total.stats.quantized},
                {"mean_hbm_entries", total.stats.mean_hbm_entries},
                {"sim_retained_mass", num_or_null(metric(cd.metrics, "retained_mass"))},
                {"sim_output_rel_l2", num_or_null(metric(cd.metrics, "output_rel_l2"))},
                {"sim_tpot", num_or_null(metric(cd.metrics, "tpot"))},
                {"timing_error", nullptr}};
      kl.push_back(total.kl / n);
      sim_ret.push_back(-metric(cd.metrics, "retained_mass"));
      sim_l2.push_back(metric(cd.metrics, "output_rel_l2"));
      sim_tpot.push_back(metric(cd.metrics, "tpot"));
      step_ms.push_back(1e3 * total.decode_seconds / n);
      all_l2 = all_l2 && std::isfinite(sim_l2.back());
      all_tpot = all_tpot && std::isfinite(sim_tpot.back());
      policies.insert(cd.cfg.policy);
      rows.push_back(r);
      ++done;
      if (!quiet && ::isatty(2)) std::fprintf(stderr, "\rvalidate: %zu/%zu", done, to_run);
    }
    if (!quiet && ::isatty(2)) std::fprintf(stderr, "\n");
    if (rows.empty()) fail(candidates, "no candidate can run live (all skipped)");
    bool all_ret = true;
    for (double x : sim_ret) all_ret = all_ret && std::isfinite(x);
    const double rho_ret = all_ret ? sim::spearman(sim_ret, kl) : std::nan("");
    const double rho_l2 = all_l2 ? sim::spearman(sim_l2, kl) : std::nan("");
    const double rho_time = all_tpot ? sim::spearman(sim_tpot, step_ms) : std::nan("");
    const std::string predictor = all_l2 ? "output_rel_l2" : "retained_mass";
    const json summary = {
        {"model", model_name},
        {"prompts", prompt_names},
        {"device", "cpu"},
        {"n", rows.size()},
        {"policies", policies.size()},
        {"rho_quality", num_or_null(all_l2 ? rho_l2 : rho_ret)},
        {"rho_time", num_or_null(rho_time)},
        {"quality_predictor", predictor},
        {"rho_retained_mass", num_or_null(rho_ret)},
        {"rho_output_rel_l2", num_or_null(rho_l2)},
        {"quality_measure", "kl"},
        {"time_note",
         "cpu run: sim tpot is the timing model's step time of the timed model on the timed hardware; step_ms is this CPU "
         "running the small model: rho_time is not a validation of the timing model"},
        {"quantize_keys", !no_quantize_keys},
        {"tokens_per_prompt", refs.empty() ? 0 : refs[0].continuation.size() - 1},
        {"skipped", skipped}};
    {
      explore::Store store(db);
      store.put_validations(rows, summary);
    }
    if (!out.empty()) {
      std::ofstream f(out);
      f << json{{"summary", summary}, {"candidates", rows}}.dump(1) << "\n";
      if (!f) fail(out, "cannot write");
    }
    if (!quiet) {
      std::printf("%-16s %-14s %6s %4s %10s %6s %8s %9s %9s %8s\n", "hash", "policy", "budget", "page", "kl", "top1", "ppl",
                  "sim_ret", "sim_l2", "step_ms");
      for (const json& r : rows)
        std::printf("%-16s %-14s %6u %4u %10.6f %6.3f %8.4f %9.4f %9.4f %8.4f\n", r["hash"].get<std::string>().substr(0, 16).c_str(),
                    r["policy"].get<std::string>().c_str(), r["budget"].get<uint32_t>(), r["page_size"].get<uint32_t>(),
                    r["kl"].get<double>(), r["top1"].get<double>(), r["ppl"].get<double>(),
                    r["sim_retained_mass"].is_number() ? r["sim_retained_mass"].get<double>() : std::nan(""),
                    r["sim_output_rel_l2"].is_number() ? r["sim_output_rel_l2"].get<double>() : std::nan(""),
                    r["step_ms"].get<double>());
      std::printf("%zu candidates over %zu policies (%zu skipped); ppl_full %.4f\n", rows.size(), policies.size(), skipped.size(),
                  rows[0]["ppl_full"].get<double>());
      std::printf("Spearman rho vs measured KL: output_rel_l2 %.4f, retained_mass %.4f (headline: %s)\n", rho_l2, rho_ret,
                  predictor.c_str());
      std::printf("Spearman rho sim tpot vs CPU step time: %.4f (CPU only: not a validation of the timing model)\n", rho_time);
      if (std::isnan(rho_l2) || std::isnan(rho_ret))
        std::printf("(nan: a ranking is undefined when every value ties, e.g. budgets above the context evict nothing)\n");
    }
  });
}

}  // namespace kvscope::cli
