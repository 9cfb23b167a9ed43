#pragma once
// Points of the search space and the configurations they map to (docs/explore.md).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "explorer/spec.h"

namespace kvscope::explore {

// (trace, policy, hardware) combinations, hardware varying fastest; hardware index -1: none.
struct Combo {
  size_t trace = 0, policy = 0;
  int hardware = -1;
};
std::vector<Combo> combos(const Spec& s);

// A point: a combination and one unit value per dimension of its policy.
struct Point {
  size_t combo = 0;
  std::vector<double> u;
};

// The configuration of a point: everything a replay needs (docs/explore.md). `max_steps`
// overrides the spec's (successive halving's short rungs); UINT32_MAX: the spec's.
nlohmann::json configuration(const Spec& s, const Point& p, uint32_t max_steps = UINT32_MAX);

// The canonical dump (sorted keys, no spaces) and its 64-bit FNV-1a in 16 hex digits.
std::string canonical(const nlohmann::json& config);
uint64_t fnv1a64(const std::string& bytes);
std::string config_hash(const nlohmann::json& config);

}  // namespace kvscope::explore
