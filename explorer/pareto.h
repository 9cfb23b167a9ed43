#pragma once
// The exact Pareto front of evaluated points (docs/explore.md).
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "explorer/spec.h"

namespace kvscope::explore {

// a dominates b (all objectives minimized): a <= b everywhere and a < b somewhere.
bool dominates(const std::vector<double>& a, const std::vector<double>& b);
// Indices of the non-dominated points (all minimized), in increasing index order. Equal
// points do not dominate each other: all of them are on the front.
std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& points);

// The constraints hold (every constrained metric present and within bounds).
bool feasible(const Spec& s, const nlohmann::json& metrics);
// The objectives as a vector to minimize (maximized ones negated); nullopt when a metric
// is missing or not finite.
std::optional<std::vector<double>> objective_vector(const Spec& s, const nlohmann::json& metrics);

}  // namespace kvscope::explore
