// The design-space explorer (explorer/, docs/explore.md): spec errors, configuration
// hashes, strategies, the Pareto front and the store's resume.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "explorer/evaluate.h"
#include "explorer/pareto.h"
#include "explorer/runner.h"
#include "explorer/space.h"
#include "explorer/spec.h"
#include "explorer/store.h"
#include "explorer/strategies.h"
#include "kernels/io/error.h"

namespace {

using nlohmann::json;
using namespace kvscope::explore;

std::string source_dir() {
  const char* s = std::getenv("KVSCOPE_SOURCE_DIR");
  return s ? s : KVSCOPE_SOURCE_DIR;
}

json base_spec() {
  return json::parse(R"({
    "traces": ["t.kvt"],
    "policies": [
      {"name": "window", "budget": {"choices": [32, 64]}},
      {"name": "streamingllm", "params": {"sinks": {"lo": 0, "hi": 8, "type": "int"}}, "budget": {"lo": 16, "hi": 256, "scale": "log", "type": "int", "n": 4}},
      {"name": "h2o", "params": {"recent_ratio": {"lo": 0.1, "hi": 0.9, "n": 5}}, "budget": 64, "page_size": {"choices": [1, 16]}}
    ],
    "objectives": [{"metric": "retained_mass", "goal": "max"}, {"metric": "peak_hbm_bytes", "goal": "min"}],
    "constraints": [{"metric": "peak_hbm_bytes", "le": 1e9}],
    "strategy": {"name": "grid", "samples": 40, "seed": 7}
  })");
}

std::string error_of(const json& j) {
  try {
    parse_spec(j, "spec.json");
  } catch (const kvscope::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ExploreSpec, ErrorsNameTheKeyPath) {
  EXPECT_EQ(error_of(base_spec()), "");
  json j = base_spec();
  j["policies"][2]["params"]["recent"] = {{"lo", "zero"}, {"hi", 64}};
  EXPECT_EQ(error_of(j), "spec.json: policies[2].params.recent.lo: expected a number");
  j = base_spec();
  j["objectives"][1]["metric"] = "speed";
  EXPECT_NE(error_of(j).find("spec.json: objectives[1].metric: unknown metric 'speed'"), std::string::npos) << error_of(j);
  j = base_spec();
  j["objectives"][0]["goal"] = "up";
  EXPECT_EQ(error_of(j), "spec.json: objectives[0].goal: expected \"max\" or \"min\"");
  j = base_spec();
  j["strategy"]["name"] = "annealing";
  EXPECT_NE(error_of(j).find("spec.json: strategy.name: unknown strategy"), std::string::npos);
  j = base_spec();
  j["policies"][1]["budget"]["scale"] = "log2";
  EXPECT_EQ(error_of(j), "spec.json: policies[1].budget.scale: expected \"lin\" or \"log\"");
  j = base_spec();
  j["policies"][0]["budget"] = {{"lo", 0}, {"hi", 8}, {"scale", "log"}};
  EXPECT_EQ(error_of(j), "spec.json: policies[0].budget.lo: a log range needs lo > 0");
  j = base_spec();
  j["hardware"] = json::parse(R"([{"preset": "h100-sxm", "set": {"gpu.hbm_bandwith": 1e12}}])");
  EXPECT_NE(error_of(j).find("spec.json: hardware[0].set.gpu.hbm_bandwith:"), std::string::npos) << error_of(j);
  j = base_spec();
  j["hardware"] = json::parse(R"([{"preset": "h900"}])");
  EXPECT_NE(error_of(j).find("spec.json: hardware[0].preset: unknown preset 'h900'"), std::string::npos);
  j = base_spec();
  j["colour"] = 1;
  EXPECT_NE(error_of(j).find("spec.json: colour: unknown key"), std::string::npos);
  j = base_spec();
  j.erase("traces");
  EXPECT_EQ(error_of(j), "spec.json: traces: missing");
  j = base_spec();
  j["constraints"][0].erase("le");
  EXPECT_EQ(error_of(j), "spec.json: constraints[0]: needs le and/or ge");
  j = base_spec();
  j["policies"][2]["page_size"]["choices"][1] = 0;
  EXPECT_EQ(error_of(j), "spec.json: policies[2].page_size.choices[1]: expected a positive integer");
}

TEST(ExploreSpace, HashIsStableAndCanonical) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
  json a = json::object();
  a["policy"] = "h2o";
  a["params"] = {{"recent_ratio", 0.25}};
  a["budget"] = 64;
  json b = json::object();
  b["budget"] = 64;
  b["params"] = {{"recent_ratio", 0.25}};
  b["policy"] = "h2o";
  EXPECT_EQ(canonical(a), R"({"budget":64,"params":{"recent_ratio":0.25},"policy":"h2o"})");
  EXPECT_EQ(config_hash(a), "78b988da2d547111");  // pinned: FNV-1a 64 of the dump above
  EXPECT_EQ(config_hash(a), config_hash(b));
  b["budget"] = 65;
  EXPECT_NE(config_hash(a), config_hash(b));
  // A configuration from a point is a pure function of the spec and the point.
  const Spec s = parse_spec(base_spec(), "spec.json");
  const auto pts = grid_points(s);
  ASSERT_FALSE(pts.empty());
  EXPECT_EQ(config_hash(configuration(s, pts[3])), config_hash(configuration(s, pts[3])));
  EXPECT_EQ(config_hash(configuration(s, pts[3])).size(), 16u);
}

TEST(ExploreStrategies, GridCountsAndEnds) {
  const Spec s = parse_spec(base_spec(), "spec.json");
  const auto pts = grid_points(s);
  // window: 2 budgets; streamingllm: 3 sinks levels x 4 budget levels; h2o: 5 x 2 page sizes.
  EXPECT_EQ(pts.size(), 2u + 12u + 10u);
  std::set<int64_t> budgets;
  for (const auto& p : pts)
    if (configuration(s, p)["policy"] == "streamingllm") budgets.insert(configuration(s, p)["budget"].get<int64_t>());
  EXPECT_EQ(budgets, (std::set<int64_t>{16, 40, 102, 256}));  // 16 * 16^(k/3), rounded
}

TEST(ExploreStrategies, ReproducibleFromTheSeed) {
  json j = base_spec();
  const Spec s = parse_spec(j, "spec.json");
  auto dump = [&s](const std::vector<Point>& pts) {
    std::string out;
    for (const auto& p : pts) out += canonical(configuration(s, p)) + "\n";
    return out;
  };
  EXPECT_EQ(dump(grid_points(s)), dump(grid_points(s)));
  EXPECT_EQ(dump(random_points(s, 50, 3)), dump(random_points(s, 50, 3)));
  EXPECT_NE(dump(random_points(s, 50, 3)), dump(random_points(s, 50, 4)));
  EXPECT_EQ(dump(lhs_points(s, 50, 3)), dump(lhs_points(s, 50, 3)));
  EXPECT_NE(dump(lhs_points(s, 50, 3)), dump(lhs_points(s, 50, 4)));
  // The generator's bytes are fixed: xoshiro256** seeded by splitmix64(0).
  Rng r(0);
  const uint64_t first = r.next();
  Rng r2(0);
  EXPECT_EQ(first, r2.next());
  for (int i = 0; i < 1000; ++i) {
    const double u = r.unit();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_LT(r.below(7), 7u);
  }
}

TEST(ExploreStrategies, LatinHypercubeIsStratified) {
  for (uint64_t n : {1u, 7u, 50u, 333u}) {
    const auto m = latin_hypercube(n, 5, 11);
    ASSERT_EQ(m.size(), n);
    for (size_t d = 0; d < 5; ++d) {
      std::vector<int> hits(n, 0);
      for (const auto& row : m) {
        ASSERT_GE(row[d], 0.0);
        ASSERT_LT(row[d], 1.0);
        const auto k = static_cast<size_t>(row[d] * static_cast<double>(n));
        ASSERT_LT(k, n);
        ++hits[k];
      }
      for (uint64_t k = 0; k < n; ++k) EXPECT_EQ(hits[k], 1) << "n " << n << " dim " << d << " stratum " << k;
    }
  }
  // Through a spec with one policy: each searched dimension is stratified.
  json j = base_spec();
  j["policies"] = json::array({j["policies"][1]});
  const Spec s = parse_spec(j, "spec.json");
  const auto pts = lhs_points(s, 40, 5);
  for (size_t d = 0; d < 2; ++d) {
    std::set<size_t> strata;
    for (const auto& p : pts) strata.insert(static_cast<size_t>(p.u[d] * 40));
    EXPECT_EQ(strata.size(), 40u);
  }
}

TEST(ExplorePareto, MatchesBruteForce) {
  Rng rng(99);
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n = 1 + rng.below(120), k = 1 + rng.below(4);
    std::vector<std::vector<double>> pts(n, std::vector<double>(k));
    for (auto& p : pts)
      for (auto& x : p) x = trial % 2 ? static_cast<double>(rng.below(6)) : rng.unit();  // ties on odd trials
    std::vector<size_t> brute;
    for (size_t i = 0; i < n; ++i) {
      bool dom = false;
      for (size_t j = 0; j < n && !dom; ++j) {
        if (i == j) continue;
        bool le = true, lt = false;
        for (size_t d = 0; d < k; ++d) {
          le = le && pts[j][d] <= pts[i][d];
          lt = lt || pts[j][d] < pts[i][d];
        }
        dom = le && lt;
      }
      if (!dom) brute.push_back(i);
    }
    EXPECT_EQ(pareto_front(pts), brute) << "trial " << trial;
  }
  EXPECT_TRUE(pareto_front({}).empty());
}

TEST(ExplorePareto, ConstraintsAndGoals) {
  const Spec s = parse_spec(base_spec(), "spec.json");
  EXPECT_TRUE(feasible(s, json{{"peak_hbm_bytes", 5e8}}));
  EXPECT_FALSE(feasible(s, json{{"peak_hbm_bytes", 2e9}}));
  EXPECT_FALSE(feasible(s, json{{"retained_mass", 0.5}}));
  const auto v = objective_vector(s, json{{"retained_mass", 0.75}, {"peak_hbm_bytes", 10}});
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, (std::vector<double>{-0.75, 10}));
  EXPECT_FALSE(objective_vector(s, json{{"retained_mass", 0.75}}));
}

TEST(ExploreStore, ResumeSkipsDoneHashes) {
  const std::string trace = source_dir() + "/traces/stories260K-short-prompt.kvt";
  if (!std::filesystem::exists(trace)) GTEST_SKIP() << "no default trace";
  json j = base_spec();
  j["traces"] = {trace};
  j["policies"] = json::parse(R"([{"name": "window", "budget": {"choices": [16, 32, 48, 64]}},
                                  {"name": "streamingllm", "budget": {"choices": [32, 99999]}}])");
  j["max_steps"] = 8;
  const Spec s = parse_spec(j, "spec.json");
  const auto pts = grid_points(s);
  ASSERT_EQ(pts.size(), 6u);
  std::vector<json> configs;
  for (const auto& p : pts) configs.push_back(configuration(s, p));
  const std::string db = (std::filesystem::temp_directory_path() / ("explore_test_" + std::to_string(::getpid()) + ".db")).string();
  std::filesystem::remove(db);
  const Evaluator ev(s);
  std::vector<json> first;
  {
    Store st(db);
    Runner r(ev, st, RunOptions{});
    first = r.run_batch(std::vector<json>(configs.begin(), configs.begin() + 3), false, "a");
    EXPECT_EQ(r.summary().evaluated, 3u);
    EXPECT_EQ(r.summary().skipped, 0u);
  }
  {
    Store st(db);
    EXPECT_EQ(st.done().size(), 3u);
    RunOptions opt;
    opt.threads = 2;
    Runner r(ev, st, opt);
    const auto all = r.run_batch(configs, false, "b");
    EXPECT_EQ(r.summary().evaluated, 3u);
    EXPECT_EQ(r.summary().skipped, 3u);
    EXPECT_EQ(r.summary().failed, 1u);  // budget 99999 is more than the context
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(all[i], first[i]);
    EXPECT_TRUE(all[5].contains("error"));
    EXPECT_EQ(st.done().size(), 6u);
    EXPECT_EQ(st.rows().size(), 6u);
    EXPECT_EQ(*st.metrics(config_hash(configs[4])), all[4]);
  }
  std::filesystem::remove(db);
  std::filesystem::remove(db + "-wal");
  std::filesystem::remove(db + "-shm");
}

}  // namespace

namespace {

TEST(ExploreStrategies, HalvingReplaysTheBestInFull) {
  const std::string trace = source_dir() + "/traces/stories260K-short-prompt.kvt";
  if (!std::filesystem::exists(trace)) GTEST_SKIP() << "no default trace";
  json j = json::parse(R"({
    "policies": [{"name": "window", "budget": {"lo": 8, "hi": 500, "scale": "log", "type": "int"}}],
    "objectives": [{"metric": "retained_mass", "goal": "max"}],
    "strategy": {"name": "halving", "samples": 9, "seed": 3, "eta": 3, "min_steps": 4},
    "max_steps": 12, "bounds": false})");
  j["traces"] = {trace};
  const Spec s = parse_spec(j, "spec.json");
  const std::string db = (std::filesystem::temp_directory_path() / ("explore_halving_" + std::to_string(::getpid()) + ".db")).string();
  std::filesystem::remove(db);
  const Evaluator ev(s);
  {
    Store st(db);
    RunOptions opt;
    opt.threads = 2;
    const RunSummary sum = search(s, ev, st, opt);
    EXPECT_EQ(halving_rungs(s, ev.min_trace_steps()), (std::vector<uint32_t>{4, 12}));
    std::vector<std::pair<double, int64_t>> rung1;
    std::set<int64_t> full;
    for (const auto& r : st.rows()) {
      if (r.partial) {
        EXPECT_EQ(r.config["max_steps"], 4);
        rung1.emplace_back(r.metrics["retained_mass"].get<double>(), r.config["budget"].get<int64_t>());
      } else {
        EXPECT_EQ(r.config["max_steps"], 12);
        full.insert(r.config["budget"].get<int64_t>());
      }
    }
    EXPECT_EQ(rung1.size(), 9u);  // LHS over one dimension: 9 distinct budgets
    ASSERT_EQ(full.size(), 3u);
    std::sort(rung1.rbegin(), rung1.rend());
    const double third = rung1[2].first;  // survivors: the 3 best at rung 1 (ties broken by point order)
    for (const auto& r : rung1) {
      if (full.count(r.second)) {
        EXPECT_GE(r.first, third) << r.second;
      }
    }
    EXPECT_EQ(sum.evaluated, 12u);
    // Again: everything is done, the same survivors are found from the stored rung.
    const RunSummary again = search(s, ev, st, opt);
    EXPECT_EQ(again.evaluated, 0u);
    EXPECT_EQ(again.skipped, 12u);
  }
  std::filesystem::remove(db);
  std::filesystem::remove(db + "-wal");
  std::filesystem::remove(db + "-shm");
}

}  // namespace

namespace {

Fitness fit(std::vector<double> v, double violation = 0, bool ok = true) {
  Fitness f;
  f.ok = ok;
  f.obj = std::move(v);
  f.violation = violation;
  return f;
}

TEST(ExploreNsga2, NondominatedSortAndCrowding) {
  Rng rng(5);
  for (int trial = 0; trial < 30; ++trial) {
    const size_t n = 1 + rng.below(60);
    std::vector<Fitness> f;
    for (size_t i = 0; i < n; ++i)
      f.push_back(fit({static_cast<double>(rng.below(8)), static_cast<double>(rng.below(8))},
                      rng.below(4) == 0 ? rng.unit() : 0.0, rng.below(10) != 0));
    const auto fronts = nondominated_sort(f);
    std::vector<int> seen(n, 0);
    for (size_t r = 0; r < fronts.size(); ++r)
      for (size_t i : fronts[r]) {
        ++seen[i];
        for (size_t q = r; q < fronts.size(); ++q)
          for (size_t j : fronts[q]) EXPECT_FALSE(constrained_dominates(f[j], f[i]));
        if (r > 0) {
          bool by_previous = false;
          for (size_t j : fronts[r - 1]) by_previous = by_previous || constrained_dominates(f[j], f[i]);
          EXPECT_TRUE(by_previous);
        }
      }
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(seen[i], 1);
    // With every point ok and feasible, the first front is the Pareto front.
    std::vector<Fitness> g;
    std::vector<std::vector<double>> pts;
    for (const auto& x : f) {
      g.push_back(fit(x.obj));
      pts.push_back(x.obj);
    }
    EXPECT_EQ(nondominated_sort(g)[0], pareto_front(pts));
  }
  // Feasibility first.
  EXPECT_TRUE(constrained_dominates(fit({9, 9}), fit({0, 0}, 0.5)));
  EXPECT_TRUE(constrained_dominates(fit({9, 9}, 0.1), fit({0, 0}, 0.5)));
  EXPECT_TRUE(constrained_dominates(fit({9, 9}, 0.5), fit({0, 0}, 0, false)));
  EXPECT_FALSE(constrained_dominates(fit({0, 0}, 0, false), fit({0, 0}, 0, false)));
  // Crowding: the ends are infinite, the inside sums the normalized neighbour gaps.
  const std::vector<Fitness> line = {fit({0, 3}), fit({1, 2}), fit({2, 1}), fit({3, 0})};
  const auto d = crowding_distance(line, {0, 1, 2, 3});
  EXPECT_TRUE(std::isinf(d[0]) && std::isinf(d[3]));
  EXPECT_DOUBLE_EQ(d[1], 4.0 / 3.0);
  EXPECT_DOUBLE_EQ(d[2], 4.0 / 3.0);
  const auto sel = nsga2_select(line, 2);
  EXPECT_EQ(sel, (std::vector<size_t>{0, 3}));
}

TEST(ExploreNsga2, RunsReproduciblyAndResumes) {
  const std::string trace = source_dir() + "/traces/stories260K-short-prompt.kvt";
  if (!std::filesystem::exists(trace)) GTEST_SKIP() << "no default trace";
  json j = json::parse(R"({
    "policies": [{"name": "window", "budget": {"lo": 4, "hi": 400, "scale": "log", "type": "int"}},
                 {"name": "h2o", "params": {"recent_ratio": {"lo": 0, "hi": 1}}, "budget": {"lo": 4, "hi": 400, "scale": "log", "type": "int"}}],
    "objectives": [{"metric": "retained_mass", "goal": "max"}, {"metric": "mean_hbm_entries", "goal": "min"}],
    "constraints": [{"metric": "mean_hbm_entries", "le": 300}],
    "strategy": {"name": "nsga2", "samples": 8, "seed": 2, "generations": 3},
    "max_steps": 6, "bounds": false})");
  j["traces"] = {trace};
  const Spec s = parse_spec(j, "spec.json");
  const Evaluator ev(s);
  std::vector<std::string> tables;
  for (unsigned threads : {1u, 2u}) {
    const std::string db = (std::filesystem::temp_directory_path() /
                            ("explore_nsga2_" + std::to_string(::getpid()) + "_" + std::to_string(threads) + ".db")).string();
    std::filesystem::remove(db);
    {
      Store st(db);
      RunOptions opt;
      opt.threads = threads;
      const RunSummary sum = search(s, ev, st, opt);
      EXPECT_GT(sum.evaluated, 8u);
      EXPECT_LE(sum.proposed, 32u);
      EXPECT_EQ(search(s, ev, st, opt).evaluated, 0u);  // resume: the same generations, all stored
      std::string t;
      for (const auto& r : st.rows()) t += r.hash + r.metrics.dump() + "\n";
      tables.push_back(t);
    }
    std::filesystem::remove(db);
    std::filesystem::remove(db + "-wal");
    std::filesystem::remove(db + "-shm");
  }
  EXPECT_EQ(tables[0], tables[1]);
}

}  // namespace
