#pragma once
// The explorer's spec (docs/explore.md): traces, policies with parameter dimensions,
// hardware, objectives, constraints and the search strategy. Validated at load; errors
// name the file and the key path ("spec.json: policies[2].params.recent.lo: ...").
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvscope::explore {

// One searched dimension: a list of choices or a numeric range.
struct Dim {
  std::string name;  // "params.<key>", "budget" or "page_size"
  bool choice = false;
  std::vector<nlohmann::json> choices;
  double lo = 0, hi = 0;
  bool log = false, integer = false;
  uint32_t levels = 3;  // grid levels of a range
  // The value at u in [0, 1).
  nlohmann::json at(double u) const;
  // Grid levels as unit values.
  std::vector<double> grid() const;
};

struct PolicySpace {
  std::string name;
  nlohmann::json fixed = nlohmann::json::object();  // params given as plain values
  std::vector<Dim> dims;                            // params..., budget, page_size (those searched)
  nlohmann::json budget = 64, page_size = 1;        // when not searched
};

struct HardwareSpec {
  std::string preset;
  nlohmann::json set = nlohmann::json::object();  // key -> number
};

struct Objective {
  std::string metric;
  bool maximize = false;
};

struct Constraint {
  std::string metric;
  bool has_le = false, has_ge = false;
  double le = 0, ge = 0;
  bool ok(double v) const { return (!has_le || v <= le) && (!has_ge || v >= ge); }
};

struct Strategy {
  std::string name = "grid";
  uint64_t samples = 100, seed = 1;
  uint32_t eta = 3, min_steps = 32;  // halving
  uint32_t generations = 10;         // nsga2 (the population is `samples`)
};

struct Spec {
  std::string where;                  // the spec's file name, for errors
  std::vector<std::string> traces;    // as written (configurations keep these)
  std::vector<std::string> resolved;  // paths to open
  std::vector<PolicySpace> policies;
  std::vector<HardwareSpec> hardware;
  std::string as;
  std::vector<Objective> objectives;
  std::vector<Constraint> constraints;
  Strategy strategy;
  uint32_t max_steps = 0;
  std::string access = "topk:2", aggregation = "sum";
  bool coalesce = false, bounds = true;
  nlohmann::json raw;  // the spec as given
};

// Names the metrics objectives and constraints may use.
const std::vector<std::string>& metric_names();

// Parses and validates; `where` names the source, `base_dir` resolves relative traces
// (tried after the working directory). Throws Error naming the key path.
Spec parse_spec(const nlohmann::json& j, const std::string& where, const std::string& base_dir = "");
Spec load_spec(const std::string& path);

}  // namespace kvscope::explore
