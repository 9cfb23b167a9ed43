#pragma once
// Search strategies (docs/explore.md): grid, random, Latin hypercube, and the pieces of
// successive halving. Seeded with the explorer's own generator: the same spec gives the
// same points on any machine and compiler.
#include <cstdint>
#include <vector>

#include "explorer/space.h"
#include "explorer/spec.h"
#include "kernels/io/rng.h"

namespace kvscope::explore {

using Rng = Xoshiro256;  // kernels/io/rng.h

// Every combination x the cartesian product of its dimensions' grid levels.
std::vector<Point> grid_points(const Spec& s);
// n uniform points.
std::vector<Point> random_points(const Spec& s, uint64_t n, uint64_t seed);
// A Latin hypercube of n rows and `dims` columns in [0, 1): in each column, each of the
// n strata [k/n, (k+1)/n) holds exactly one row.
std::vector<std::vector<double>> latin_hypercube(uint64_t n, size_t dims, uint64_t seed);
// n points from a Latin hypercube over 1 + max dims columns: column 0 picks the combination.
std::vector<Point> lhs_points(const Spec& s, uint64_t n, uint64_t seed);
// The points of the spec's strategy (grid, random, lhs; halving: its first rung's points).
std::vector<Point> initial_points(const Spec& s);

// The rungs of successive halving: max_steps per rung, the last 0 or the spec's max_steps
// (the full replay). `trace_steps`: decode steps of the shortest trace.
std::vector<uint32_t> halving_rungs(const Spec& s, uint32_t trace_steps);

// NSGA-II (Deb et al. 2002) with constraints as a feasibility-first rule.
struct Fitness {
  bool ok = false;          // false: the evaluation failed or lacks an objective (loses to all)
  std::vector<double> obj;  // objectives, all minimized
  double violation = 0;     // 0: feasible; else the summed relative constraint violation
};
// Constraint-domination: ok beats failed; feasible beats infeasible; two infeasible: the
// smaller violation; two feasible: Pareto dominance.
bool constrained_dominates(const Fitness& a, const Fitness& b);
// Fronts of the non-dominated sort under constrained_dominates, best first; each front's
// indices ascending.
std::vector<std::vector<size_t>> nondominated_sort(const std::vector<Fitness>& f);
// Crowding distance of each member of `front` (same order); the ends of each objective: infinity.
std::vector<double> crowding_distance(const std::vector<Fitness>& f, const std::vector<size_t>& front);
// rank[i] and crowding[i] of every individual.
void rank_and_crowd(const std::vector<Fitness>& f, std::vector<size_t>& rank, std::vector<double>& crowd);
// The best n by (rank, larger crowding, index): NSGA-II's environmental selection.
std::vector<size_t> nsga2_select(const std::vector<Fitness>& f, size_t n);
// n children: binary tournaments by (rank, crowding), uniform crossover of the unit
// values, mutation (a unit value moves by up to +-0.1 with probability 1/dims; the
// combination changes with probability 0.1).
std::vector<Point> nsga2_offspring(const Spec& s, const std::vector<Point>& parents, const std::vector<size_t>& rank,
                                   const std::vector<double>& crowd, size_t n, Rng& rng);

}  // namespace kvscope::explore
