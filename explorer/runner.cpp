// Thread pool and search driver (explorer/runner.h).
#include "explorer/runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "explorer/pareto.h"
#include "explorer/space.h"
#include "explorer/strategies.h"

namespace kvscope::explore {

using nlohmann::json;

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void ThreadBackend::evaluate(const std::vector<const json*>& todo, const std::function<void(size_t, json)>& deliver,
                             const std::atomic<bool>* stop) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<size_t, json>> ready;
  const unsigned n_threads = std::min<unsigned>(threads_, static_cast<unsigned>(std::max<size_t>(todo.size(), 1)));
  unsigned running = n_threads;  // guarded by mu: the workers count themselves out
  std::vector<std::thread> workers;
  for (unsigned w = 0; w < n_threads; ++w)
    workers.emplace_back([this, stop, &next, &todo, &mu, &cv, &ready, &running] {
      for (;;) {
        if (stop && stop->load()) break;
        const size_t k = next.fetch_add(1);
        if (k >= todo.size()) break;
        json m = ev_.evaluate(*todo[k]);
        std::lock_guard<std::mutex> lock(mu);
        ready.emplace_back(k, std::move(m));
        cv.notify_one();
      }
      std::lock_guard<std::mutex> lock(mu);
      --running;
      cv.notify_one();
    });
  // Deliver on this thread; a throwing deliver still joins the workers first.
  std::exception_ptr error;
  for (;;) {
    std::deque<std::pair<size_t, json>> batch;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&ready, &running] { return !ready.empty() || running == 0; });
      if (ready.empty() && running == 0) break;
      batch.swap(ready);
    }
    for (auto& r : batch) {
      if (error) continue;
      try {
        deliver(r.first, std::move(r.second));
      } catch (...) {
        error = std::current_exception();
      }
    }
  }
  for (auto& t : workers) t.join();
  if (error) std::rethrow_exception(error);
}

Runner::Runner(const Evaluator& ev, Store& store, RunOptions opt) : store_(store), opt_(std::move(opt)) {
  if (opt_.threads == 0) opt_.threads = 1;
  if (!opt_.backend) own_ = std::make_unique<ThreadBackend>(ev, opt_.threads);
  backend_ = opt_.backend ? opt_.backend : own_.get();
}

std::vector<json> Runner::run_batch(const std::vector<json>& configs, bool partial, const std::string& label) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<json> out(configs.size());
  std::vector<std::string> hashes(configs.size());
  const std::set<std::string> done = store_.done();
  std::map<std::string, size_t> first;  // hash -> first index in this batch
  std::vector<size_t> todo;
  for (size_t i = 0; i < configs.size(); ++i) {
    hashes[i] = config_hash(configs[i]);
    if (first.count(hashes[i])) continue;  // the same configuration twice in the batch: once
    first.emplace(hashes[i], i);
    ++sum_.proposed;
    if (done.count(hashes[i])) {
      ++sum_.skipped;
      if (auto m = store_.metrics(hashes[i])) out[i] = *m;
    } else {
      todo.push_back(i);
    }
  }

  std::vector<const json*> work;
  for (size_t i : todo) work.push_back(&configs[i]);
  uint64_t written = 0;
  std::exception_ptr error;
  backend_->evaluate(
      work,
      [&](size_t k, json m) {
        const size_t i = todo[k];
        if (!error) {
          try {
            const auto tw = std::chrono::steady_clock::now();
            store_.put(hashes[i], configs[i], m, partial);
            sum_.write_seconds += since(tw);
          } catch (...) {
            error = std::current_exception();
          }
        }
        ++sum_.evaluated;
        if (m.contains("error")) ++sum_.failed;
        out[i] = std::move(m);
        ++written;
        if (opt_.progress) opt_.progress(written, todo.size(), label);
      },
      opt_.stop);
  if (error) std::rethrow_exception(error);
  // Duplicates share the first one's metrics.
  for (size_t i = 0; i < configs.size(); ++i) {
    const size_t f = first[hashes[i]];
    if (f != i) out[i] = out[f];
  }
  if (stopped()) sum_.interrupted = true;
  sum_.seconds += since(t0);
  return out;
}

namespace {

Fitness fitness_of(const Spec& s, const json& m) {
  Fitness f;
  if (m.is_null() || m.contains("error")) return f;
  const auto ov = objective_vector(s, m);
  if (!ov) return f;
  f.ok = true;
  f.obj = *ov;
  for (const auto& c : s.constraints) {
    if (!m.contains(c.metric) || !m[c.metric].is_number()) {
      f.ok = false;
      return f;
    }
    const double v = m[c.metric].get<double>();
    if (c.has_le && v > c.le) f.violation += (v - c.le) / std::max(std::abs(c.le), 1e-300);
    if (c.has_ge && v < c.ge) f.violation += (c.ge - v) / std::max(std::abs(c.ge), 1e-300);
  }
  return f;
}

// NSGA-II: the population is `samples` LHS points; each generation breeds as many children,
// evaluates them (resume reads stored ones back) and keeps the best of both.
void nsga2(const Spec& s, Runner& run) {
  std::vector<Point> pop = initial_points(s);
  auto evaluate = [&s, &run](const std::vector<Point>& pts, const std::string& label) {
    std::vector<json> configs;
    for (const auto& p : pts) configs.push_back(configuration(s, p));
    const std::vector<json> m = run.run_batch(configs, false, label);
    std::vector<Fitness> f;
    for (const auto& x : m) f.push_back(fitness_of(s, x));
    return f;
  };
  std::vector<Fitness> fit = evaluate(pop, "gen 0");
  Rng rng(s.strategy.seed ^ 0x6e73676132ULL);  // "nsga2": not the LHS stream
  for (uint32_t g = 1; g <= s.strategy.generations && !run.stopped(); ++g) {
    std::vector<size_t> rank;
    std::vector<double> crowd;
    rank_and_crowd(fit, rank, crowd);
    const std::vector<Point> kids = nsga2_offspring(s, pop, rank, crowd, pop.size(), rng);
    const std::vector<Fitness> kfit = evaluate(kids, "gen " + std::to_string(g));
    if (run.stopped()) break;
    std::vector<Point> pool = pop;
    pool.insert(pool.end(), kids.begin(), kids.end());
    std::vector<Fitness> pfit = fit;
    pfit.insert(pfit.end(), kfit.begin(), kfit.end());
    std::vector<Point> next;
    std::vector<Fitness> nfit;
    for (size_t i : nsga2_select(pfit, pop.size())) {
      next.push_back(pool[i]);
      nfit.push_back(pfit[i]);
    }
    pop.swap(next);
    fit.swap(nfit);
  }
}

}  // namespace

RunSummary search(const Spec& s, const Evaluator& ev, Store& store, const RunOptions& opt) {
  Runner run(ev, store, opt);
  if (s.strategy.name == "nsga2") {
    nsga2(s, run);
    return run.summary();
  }
  const std::vector<Point> points = initial_points(s);
  if (s.strategy.name != "halving") {
    std::vector<json> configs;
    for (const auto& p : points) configs.push_back(configuration(s, p));
    run.run_batch(configs, false, s.strategy.name);
    return run.summary();
  }
  // Successive halving: each rung replays the survivors with a longer prefix.
  const std::vector<uint32_t> rungs = halving_rungs(s, ev.min_trace_steps());
  std::vector<size_t> alive(points.size());
  for (size_t i = 0; i < alive.size(); ++i) alive[i] = i;
  for (size_t r = 0; r < rungs.size() && !run.stopped(); ++r) {
    const bool last = r + 1 == rungs.size();
    std::vector<json> configs;
    for (size_t i : alive) configs.push_back(configuration(s, points[i], rungs[r]));
    const std::vector<json> m = run.run_batch(configs, !last, "rung " + std::to_string(r + 1) + "/" + std::to_string(rungs.size()));
    if (last || run.stopped()) break;
    // Rank: feasible with the first objective first (best first), then the rest; stable.
    struct Ranked {
      int cls;
      double v;
      size_t i;
    };
    std::vector<Ranked> rank;
    for (size_t k = 0; k < alive.size(); ++k) {
      const auto ov = m[k].is_null() || m[k].contains("error") ? std::nullopt : objective_vector(s, m[k]);
      if (!ov) rank.push_back({2, 0, alive[k]});
      else rank.push_back({feasible(s, m[k]) ? 0 : 1, (*ov)[0], alive[k]});
    }
    std::stable_sort(rank.begin(), rank.end(), [](const Ranked& a, const Ranked& b) {
      return a.cls != b.cls ? a.cls < b.cls : a.v < b.v;
    });
    const size_t keep = std::max<size_t>(1, (alive.size() + s.strategy.eta - 1) / s.strategy.eta);
    alive.clear();
    for (size_t k = 0; k < keep && k < rank.size(); ++k) alive.push_back(rank[k].i);
    std::sort(alive.begin(), alive.end());
  }
  return run.summary();
}

}  // namespace kvscope::explore
