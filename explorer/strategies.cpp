// Strategies (explorer/strategies.h).
#include "explorer/strategies.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/io/error.h"

namespace kvscope::explore {

namespace {

size_t max_dims(const Spec& s) {
  size_t d = 0;
  for (const auto& p : s.policies) d = std::max(d, p.dims.size());
  return d;
}

}  // namespace

std::vector<Point> grid_points(const Spec& s) {
  std::vector<Point> out;
  const auto cs = combos(s);
  for (size_t c = 0; c < cs.size(); ++c) {
    const PolicySpace& ps = s.policies[cs[c].policy];
    std::vector<std::vector<double>> levels;
    size_t n = 1;
    for (const auto& d : ps.dims) {
      levels.push_back(d.grid());
      n *= levels.back().size();
    }
    for (size_t i = 0; i < n; ++i) {
      Point p{c, std::vector<double>(levels.size())};
      size_t rest = i;
      for (size_t k = levels.size(); k-- > 0;) {  // the last dimension varies fastest
        p.u[k] = levels[k][rest % levels[k].size()];
        rest /= levels[k].size();
      }
      out.push_back(std::move(p));
    }
  }
  return out;
}

std::vector<Point> random_points(const Spec& s, uint64_t n, uint64_t seed) {
  Rng rng(seed);
  const auto cs = combos(s);
  std::vector<Point> out;
  for (uint64_t i = 0; i < n; ++i) {
    Point p;
    p.combo = static_cast<size_t>(rng.below(cs.size()));
    p.u.resize(s.policies[cs[p.combo].policy].dims.size());
    for (auto& u : p.u) u = rng.unit();
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<std::vector<double>> latin_hypercube(uint64_t n, size_t dims, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<double>> m(n, std::vector<double>(dims));
  std::vector<uint64_t> perm(n);
  for (size_t d = 0; d < dims; ++d) {
    for (uint64_t i = 0; i < n; ++i) perm[i] = i;
    for (uint64_t i = n; i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);  // Fisher-Yates
    for (uint64_t i = 0; i < n; ++i) {
      double u = (static_cast<double>(perm[i]) + rng.unit()) / static_cast<double>(n);
      // Rounding may not leave the stratum: clamp to it.
      const double lo = static_cast<double>(perm[i]) / static_cast<double>(n);
      if (u < lo) u = lo;
      if (u >= static_cast<double>(perm[i] + 1) / static_cast<double>(n)) u = lo;
      m[i][d] = u;
    }
  }
  return m;
}

std::vector<Point> lhs_points(const Spec& s, uint64_t n, uint64_t seed) {
  const auto cs = combos(s);
  const auto m = latin_hypercube(n, 1 + max_dims(s), seed);
  std::vector<Point> out;
  for (const auto& row : m) {
    Point p;
    p.combo = std::min(cs.size() - 1, static_cast<size_t>(row[0] * static_cast<double>(cs.size())));
    p.u.assign(row.begin() + 1, row.begin() + 1 + static_cast<long>(s.policies[cs[p.combo].policy].dims.size()));
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<Point> initial_points(const Spec& s) {
  const Strategy& st = s.strategy;
  if (st.name == "grid") return grid_points(s);
  if (st.name == "random") return random_points(s, st.samples, st.seed);
  if (st.name == "lhs" || st.name == "halving" || st.name == "nsga2") return lhs_points(s, st.samples, st.seed);
  fail(s.where, "strategy.name: unknown strategy '" + st.name + "'");
}

std::vector<uint32_t> halving_rungs(const Spec& s, uint32_t trace_steps) {
  const uint32_t full = s.max_steps > 0 ? std::min(s.max_steps, trace_steps) : trace_steps;
  std::vector<uint32_t> rungs;
  for (uint64_t m = s.strategy.min_steps; m < full; m *= s.strategy.eta) rungs.push_back(static_cast<uint32_t>(m));
  rungs.push_back(s.max_steps);  // the full replay, with the spec's own max_steps (its hash is the plain sweep's)
  return rungs;
}

}  // namespace kvscope::explore

namespace kvscope::explore {

bool constrained_dominates(const Fitness& a, const Fitness& b) {
  if (a.ok != b.ok) return a.ok;
  if (!a.ok) return false;
  const bool fa = a.violation <= 0, fb = b.violation <= 0;
  if (fa != fb) return fa;
  if (!fa) return a.violation < b.violation;
  bool strict = false;
  for (size_t i = 0; i < a.obj.size(); ++i) {
    if (a.obj[i] > b.obj[i]) return false;
    strict = strict || a.obj[i] < b.obj[i];
  }
  return strict;
}

std::vector<std::vector<size_t>> nondominated_sort(const std::vector<Fitness>& f) {
  const size_t n = f.size();
  std::vector<std::vector<size_t>> dominated(n);
  std::vector<size_t> count(n, 0);
  std::vector<std::vector<size_t>> fronts(1);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      if (i == j) continue;
      if (constrained_dominates(f[i], f[j])) dominated[i].push_back(j);
      else if (constrained_dominates(f[j], f[i])) ++count[i];
    }
  for (size_t i = 0; i < n; ++i)
    if (count[i] == 0) fronts[0].push_back(i);
  while (!fronts.back().empty()) {
    std::vector<size_t> next;
    for (size_t i : fronts.back())
      for (size_t j : dominated[i])
        if (--count[j] == 0) next.push_back(j);
    std::sort(next.begin(), next.end());
    fronts.push_back(std::move(next));
  }
  fronts.pop_back();
  return fronts;
}

std::vector<double> crowding_distance(const std::vector<Fitness>& f, const std::vector<size_t>& front) {
  const size_t m = front.size();
  std::vector<double> d(m, 0.0);
  if (m == 0) return d;
  const size_t k = f[front[0]].ok ? f[front[0]].obj.size() : 0;
  if (k == 0 || m <= 2) {
    std::fill(d.begin(), d.end(), std::numeric_limits<double>::infinity());
    return d;
  }
  std::vector<size_t> order(m);
  for (size_t o = 0; o < k; ++o) {
    for (size_t i = 0; i < m; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&f, &front, o](size_t a, size_t b) { return f[front[a]].obj[o] < f[front[b]].obj[o]; });
    const double lo = f[front[order[0]]].obj[o], hi = f[front[order[m - 1]]].obj[o];
    d[order[0]] = d[order[m - 1]] = std::numeric_limits<double>::infinity();
    if (!(hi > lo)) continue;
    for (size_t i = 1; i + 1 < m; ++i)
      d[order[i]] += (f[front[order[i + 1]]].obj[o] - f[front[order[i - 1]]].obj[o]) / (hi - lo);
  }
  return d;
}

void rank_and_crowd(const std::vector<Fitness>& f, std::vector<size_t>& rank, std::vector<double>& crowd) {
  rank.assign(f.size(), 0);
  crowd.assign(f.size(), 0.0);
  const auto fronts = nondominated_sort(f);
  for (size_t r = 0; r < fronts.size(); ++r) {
    const auto d = crowding_distance(f, fronts[r]);
    for (size_t i = 0; i < fronts[r].size(); ++i) {
      rank[fronts[r][i]] = r;
      crowd[fronts[r][i]] = d[i];
    }
  }
}

std::vector<size_t> nsga2_select(const std::vector<Fitness>& f, size_t n) {
  std::vector<size_t> rank;
  std::vector<double> crowd;
  rank_and_crowd(f, rank, crowd);
  std::vector<size_t> order(f.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&rank, &crowd](size_t a, size_t b) {
    if (rank[a] != rank[b]) return rank[a] < rank[b];
    if (crowd[a] != crowd[b]) return crowd[a] > crowd[b];
    return a < b;
  });
  if (order.size() > n) order.resize(n);
  return order;
}

std::vector<Point> nsga2_offspring(const Spec& s, const std::vector<Point>& parents, const std::vector<size_t>& rank,
                                   const std::vector<double>& crowd, size_t n, Rng& rng) {
  const auto cs = combos(s);
  auto better = [&rank, &crowd](size_t a, size_t b) {
    if (rank[a] != rank[b]) return rank[a] < rank[b] ? a : b;
    if (crowd[a] != crowd[b]) return crowd[a] > crowd[b] ? a : b;
    return std::min(a, b);
  };
  auto tournament = [&]() { return better(rng.below(parents.size()), rng.below(parents.size())); };
  std::vector<Point> kids;
  while (kids.size() < n) {
    const Point& a = parents[tournament()];
    const Point& b = parents[tournament()];
    Point c = a;
    for (size_t i = 0; i < c.u.size(); ++i)
      if (i < b.u.size() && rng.below(2)) c.u[i] = b.u[i];
    if (rng.unit() < 0.1) {
      c.combo = static_cast<size_t>(rng.below(cs.size()));
      const size_t dims = s.policies[cs[c.combo].policy].dims.size();
      while (c.u.size() < dims) c.u.push_back(rng.unit());
      c.u.resize(dims);
    }
    const double pm = c.u.empty() ? 0.0 : 1.0 / static_cast<double>(c.u.size());
    for (auto& u : c.u)
      if (rng.unit() < pm) u = std::clamp(u + (rng.unit() - 0.5) * 0.2, 0.0, std::nextafter(1.0, 0.0));
    kids.push_back(std::move(c));
  }
  return kids;
}

}  // namespace kvscope::explore
