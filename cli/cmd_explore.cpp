// explore: design-space search into SQLite; the front, the top candidates and exports of a
// results database (docs/explore.md).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "explorer/evaluate.h"
#include "explorer/mpi.h"
#include "explorer/pareto.h"
#include "explorer/runner.h"
#include "explorer/spec.h"
#include "explorer/store.h"
#include "kernels/io/error.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_sigint(int) {
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
}

struct Result {
  std::string hash;
  json config, metrics;
  std::vector<double> objectives;
};

// Full-length, error-free, feasible results with all objectives, in hash order;
// `where`: only the hashes it holds (nullptr: all).
std::vector<Result> candidates(const explore::Spec& s, explore::Store& store, const std::set<std::string>* where = nullptr) {
  std::vector<Result> out;
  for (auto& r : store.rows()) {
    if (where && !where->count(r.hash)) continue;
    if (r.partial || r.metrics.contains("error") || !explore::feasible(s, r.metrics)) continue;
    auto ov = explore::objective_vector(s, r.metrics);
    if (!ov) continue;
    out.push_back({r.hash, std::move(r.config), std::move(r.metrics), std::move(*ov)});
  }
  return out;
}

std::string describe(const json& c) {
  std::string d = c.value("policy", "?") + " B=" + std::to_string(c.value("budget", 0));
  if (c.value("page_size", 1) != 1) d += " page=" + std::to_string(c.value("page_size", 1));
  for (const auto& kv : c["params"].items()) d += " " + kv.key() + "=" + kv.value().dump();
  if (c.contains("hardware")) {
    d += " @" + c["hardware"].value("preset", "");
    for (const auto& kv : c["hardware"]["set"].items()) d += " " + kv.key() + "=" + kv.value().dump();
  }
  return d;
}

void print_table(const explore::Spec& s, const std::vector<const Result*>& rows) {
  std::printf("%-16s", "hash");
  for (const auto& o : s.objectives) std::printf(" %16s", (o.metric + (o.maximize ? "(max)" : "(min)")).c_str());
  std::printf("  configuration\n");
  for (const Result* r : rows) {
    std::printf("%-16s", r->hash.c_str());
    for (const auto& o : s.objectives) std::printf(" %16.6g", r->metrics[o.metric].get<double>());
    std::printf("  %s\n", describe(r->config).c_str());
  }
}

std::vector<const Result*> front_of(const std::vector<Result>& c) {
  std::vector<std::vector<double>> pts;
  for (const auto& r : c) pts.push_back(r.objectives);
  std::vector<const Result*> out;
  for (size_t i : explore::pareto_front(pts)) out.push_back(&c[i]);
  // Best first by the first objective.
  std::stable_sort(out.begin(), out.end(), [](const Result* a, const Result* b) { return a->objectives < b->objectives; });
  return out;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  if (!f) fail(path, "cannot open for writing");
  f << text;
  if (!f) fail(path, "write failed");
}

std::string csv_cell(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) {
    std::string s = v.get<std::string>(), q = "\"";
    for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return q + "\"";
  }
  const std::string d = v.dump();
  if (v.is_object() || v.is_array()) return csv_cell(json(d));
  return d;
}

class Progress {
 public:
  explicit Progress(bool on) : on_(on), t0_(std::chrono::steady_clock::now()) {}
  void operator()(uint64_t done, uint64_t total, const std::string& label) {
    if (!on_) return;
    if (label != label_) {
      if (!label_.empty()) std::fprintf(stderr, "\n");
      label_ = label;
      t0_ = std::chrono::steady_clock::now();
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double rate = dt > 0 ? done / dt : 0;
    const double eta = rate > 0 ? (total - done) / rate : 0;
    const int width = 30, fill = total ? static_cast<int>(width * done / total) : width;
    std::fprintf(stderr, "\r%-10s [%s%s] %llu/%llu  %.2f cfg/s  ETA %.0fs   ", label.c_str(), std::string(fill, '#').c_str(),
                 std::string(width - fill, ' ').c_str(), static_cast<unsigned long long>(done),
                 static_cast<unsigned long long>(total), rate, eta);
    std::fflush(stderr);
  }
  void end() {
    if (on_ && !label_.empty()) std::fprintf(stderr, "\n");
  }

 private:
  bool on_;
  std::string label_;
  std::chrono::steady_clock::time_point t0_;
};


struct Options {
  std::string spec_path, db, export_path, csv, json_out;
  unsigned threads = 1;
  bool quiet = false, front = false;
  std::string where;
  size_t top = 0, per_policy = 0;
  double worker_timeout = 300;
};

// A worker rank of `mpirun -np N kvscope explore`: replays what rank 0 sends.
void serve_worker(explore::MpiSession& mpi) {
  std::string raw, base_dir, error;
  if (!mpi.receive_spec(raw, base_dir)) return;  // rank 0 gave up and says why
  std::optional<explore::Spec> spec;
  std::unique_ptr<explore::Evaluator> ev;
  try {
    spec = explore::parse_spec(json::parse(raw), "spec from rank 0", base_dir);
    ev = std::make_unique<explore::Evaluator>(*spec);
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (mpi.serve(ev.get(), error)) {  // rank 0 lost a worker: MPI_Finalize would hang
    std::fflush(stdout);
    std::_Exit(0);
  }
}

void run_explore(const Options& o, explore::MpiSession* mpi);

}  // namespace

void add_explore_commands(CLI::App& app) {
  auto* c = app.add_subcommand("explore", "Search a design space (spec) into a SQLite database; front, top-K, exports (docs/explore.md)");
  static Options o;
  auto& [spec_path, db, export_path, csv, json_out, threads, quiet, front, where, top, per_policy, worker_timeout] = o;
  c->add_option("--spec", spec_path, "Search spec (JSON, docs/explore.md): run the sweep (resumes what the database has)");
  c->add_option("--db", db, "Results database (SQLite)")->required();
  c->add_option("--threads,-j", threads, "Worker threads")->check(CLI::Range(1u, 1024u));
  c->add_flag("--quiet,-q", quiet, "No progress bar or summary");
  c->add_flag("--front", front, "Print the Pareto front of the database's results");
  c->add_option("--top", top, "Best K feasible results by the first objective");
  c->add_option("--per-policy", per_policy, "With --top: at most this many results of each policy (diverse candidates)");
  c->add_option("--export", export_path, "With --top: write those candidates (full configurations) as JSON");
  c->add_option("--where", where,
                "With --front, --top, --csv, --json: only results meeting this SQL condition over configs JOIN metrics "
                "(e.g. \"budget <= 64\")");
  c->add_option("--csv", csv, "Write every result as CSV");
  c->add_option("--json", json_out, "Write every result as JSON");
  c->add_option("--worker-timeout", worker_timeout,
                "Under mpirun: seconds a worker rank with work out may stay silent before its work goes to the others")
      ->check(CLI::PositiveNumber);
  c->callback([] {
    if (!explore::mpi_launched()) return run_explore(o, nullptr);
    explore::MpiSession mpi;
    if (mpi.rank() != 0) return serve_worker(mpi);
    int rc = 0;
    try {
      run_explore(o, &mpi);
    } catch (const std::exception& e) {
      if (!mpi.lost_worker()) throw;
      std::fprintf(stderr, "kvscope: %s\n", e.what());
      rc = 1;
    }
    if (mpi.lost_worker()) {  // MPI_Finalize would wait for the lost rank forever
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(rc);
    }
  });
}

namespace {

// Rank 0 (or the only process): run the sweep, then the views.
void run_explore(const Options& o, explore::MpiSession* mpi) {
  const auto& [spec_path, db, export_path, csv, json_out, threads, quiet, front, where, top, per_policy, worker_timeout] = o;
  // Workers wait for the spec: an error before it is sent must still release them.
  struct Release {
    explore::MpiSession* mpi;
    bool sent = false;
    ~Release() {
      if (!mpi) return;
      if (sent) mpi->stop_workers();
      else mpi->broadcast_spec("", "");
    }
  } release{mpi};
  {
    if (!export_path.empty() && top == 0) throw Error("explore: --export needs --top K");
    if (spec_path.empty() && !front && top == 0 && csv.empty() && json_out.empty())
      throw Error("explore: nothing to do (give --spec to run, or --front, --top, --csv, --json)");
    std::optional<explore::Store> store_slot;
    store_slot.emplace(db);
    explore::Store& store = *store_slot;
    explore::Spec spec;
    if (!spec_path.empty()) {
      spec = explore::load_spec(spec_path);
      std::unique_ptr<explore::Backend> ranks;
      if (mpi) {
        if (mpi->size() < 2) throw Error("explore: under mpirun it needs 2 ranks or more (rank 0 only hands out work)");
        mpi->broadcast_spec(spec.raw.dump(), std::filesystem::absolute(spec_path).parent_path().string());
        release.sent = true;
        ranks = mpi->backend(worker_timeout);
      }
      // Rank 0 of an MPI run only hands out work: it opens the traces without decoding them.
      explore::Evaluator ev(spec, /*predecode=*/mpi == nullptr);
      const int64_t run_id = store.begin_run(spec.raw, mpi ? static_cast<unsigned>(mpi->size() - 1) : threads);
      g_stop.store(false);
      auto old = std::signal(SIGINT, on_sigint);
      Progress bar(!quiet && ::isatty(2));
      explore::RunOptions opt;
      opt.threads = threads;
      opt.backend = ranks.get();
      opt.stop = &g_stop;
      opt.progress = [&bar](uint64_t d, uint64_t t, const std::string& l) { bar(d, t, l); };
      explore::RunSummary sum;
      try {
        sum = explore::search(spec, ev, store, opt);
      } catch (...) {
        std::signal(SIGINT, old);
        bar.end();
        throw;
      }
      std::signal(SIGINT, old);
      bar.end();
      store.end_run(run_id, sum.evaluated, sum.skipped, sum.failed, sum.interrupted ? "interrupted" : "done");
      const size_t fsize = front_of(candidates(spec, store)).size();
      if (!quiet)
        std::printf("%s: %llu configurations proposed: %llu evaluated (%llu failed), %llu skipped (already done); front %zu; "
                    "%.1f s, %.2f cfg/s, SQLite %.1f%%\n",
                    sum.interrupted ? "interrupted" : "done", static_cast<unsigned long long>(sum.proposed),
                    static_cast<unsigned long long>(sum.evaluated), static_cast<unsigned long long>(sum.failed),
                    static_cast<unsigned long long>(sum.skipped), fsize, sum.seconds,
                    sum.seconds > 0 ? sum.evaluated / sum.seconds : 0.0,
                    sum.seconds > 0 ? 100.0 * sum.write_seconds / sum.seconds : 0.0);
      if (sum.interrupted) {
        if (!quiet) std::fprintf(stderr, "kvscope: interrupted; finished results are kept, run again to resume\n");
        std::fflush(stdout);
        store_slot.reset();  // close the database cleanly
        if (mpi) mpi->stop_workers();
        std::_Exit(130);
      }
    } else {
      const json raw = store.last_spec();
      if (raw.is_null()) fail(db, "no run recorded (run with --spec first)");
      spec = explore::parse_spec(raw, db + " (spec of the last run)");
    }
    std::optional<std::set<std::string>> chosen;
    if (!where.empty()) chosen = store.hashes_where(where);
    const std::set<std::string>* filter = chosen ? &*chosen : nullptr;
    if (front || top > 0) {
      const std::vector<Result> cand = candidates(spec, store, filter);
      if (front) {
        const auto f = front_of(cand);
        std::printf("Pareto front: %zu of %zu feasible results\n", f.size(), cand.size());
        print_table(spec, f);
      }
      if (top > 0) {
        std::vector<const Result*> best;
        for (const auto& r : cand) best.push_back(&r);
        std::stable_sort(best.begin(), best.end(),
                         [](const Result* a, const Result* b) { return a->objectives[0] < b->objectives[0]; });
        if (per_policy > 0) {  // at most per_policy of each policy, best first
          std::map<std::string, size_t> seen;
          std::erase_if(best, [&seen, &o](const Result* r) { return ++seen[r->config.value("policy", "")] > o.per_policy; });
        }
        if (best.size() > top) best.resize(top);
        if (export_path.empty()) {
          print_table(spec, best);
        } else {
          json arr = json::array();
          for (const Result* r : best) arr.push_back({{"hash", r->hash}, {"config", r->config}, {"metrics", r->metrics}});
          write_file(export_path, arr.dump(1) + "\n");
        }
      }
    }
    if (!csv.empty() || !json_out.empty()) {
      auto rows = store.rows();
      if (filter) std::erase_if(rows, [filter](const explore::Store::Row& r) { return !filter->count(r.hash); });
      if (!json_out.empty()) {
        json arr = json::array();
        for (const auto& r : rows)
          arr.push_back({{"hash", r.hash}, {"partial", r.partial}, {"config", r.config}, {"metrics", r.metrics}});
        write_file(json_out, arr.dump(1) + "\n");
      }
      if (!csv.empty()) {
        std::string out = "hash,partial,trace,policy,params,budget,page_size,max_steps,hardware,error";
        for (const auto& m : explore::metric_names()) out += "," + m;
        out += "\n";
        for (const auto& r : rows) {
          out += r.hash + "," + (r.partial ? "1" : "0");
          for (const char* k : {"trace", "policy", "params", "budget", "page_size", "max_steps", "hardware"})
            out += "," + csv_cell(r.config.contains(k) ? r.config[k] : json(nullptr));
          out += "," + csv_cell(r.metrics.contains("error") ? r.metrics["error"] : json(nullptr));
          for (const auto& m : explore::metric_names()) out += "," + csv_cell(r.metrics.contains(m) ? r.metrics[m] : json(nullptr));
          out += "\n";
        }
        write_file(csv, out);
      }
    }
  }
}

}  // namespace

}  // namespace kvscope::cli
