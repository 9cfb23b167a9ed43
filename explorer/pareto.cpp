// Pareto front (explorer/pareto.h).
#include "explorer/pareto.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kvscope::explore {

bool dominates(const std::vector<double>& a, const std::vector<double>& b) {
  bool strict = false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] > b[i]) return false;
    strict = strict || a[i] < b[i];
  }
  return strict;
}

std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& pts) {
  // In lexicographic order a point can only be dominated by points before it, and whoever
  // dominates it is itself dominated by (or is) a front member found earlier: checking
  // against the front so far is exact.
  std::vector<size_t> order(pts.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&pts](size_t a, size_t b) { return pts[a] < pts[b] || (pts[a] == pts[b] && a < b); });
  std::vector<size_t> front;
  for (size_t i : order) {
    bool dominated = false;
    for (size_t f : front)
      if (dominates(pts[f], pts[i])) {
        dominated = true;
        break;
      }
    if (!dominated) front.push_back(i);
  }
  std::sort(front.begin(), front.end());
  return front;
}

bool feasible(const Spec& s, const nlohmann::json& m) {
  for (const auto& c : s.constraints) {
    if (!m.contains(c.metric) || !m[c.metric].is_number()) return false;
    if (!c.ok(m[c.metric].get<double>())) return false;
  }
  return true;
}

std::optional<std::vector<double>> objective_vector(const Spec& s, const nlohmann::json& m) {
  std::vector<double> v;
  for (const auto& o : s.objectives) {
    if (!m.contains(o.metric) || !m[o.metric].is_number()) return std::nullopt;
    const double x = m[o.metric].get<double>();
    if (!std::isfinite(x)) return std::nullopt;
    v.push_back(o.maximize ? -x : x);
  }
  return v;
}

}  // namespace kvscope::explore
