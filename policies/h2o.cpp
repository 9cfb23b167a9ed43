// h2o: Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023). Score of entry j = attention it
// has received so far, S_j = sum_t a_t,j (prefill: column sums over the prompt queries).
// The most recent r = round(recent_ratio * budget) entries are always kept; among the
// rest, the entries with the smallest S_j are evicted. (make_accumulated_score, lambda 1.)
#include "policies/builtin.h"

namespace kvscope::policy {

PolicyInfo h2o_info() {
  return {"h2o", "score", "accumulated attention (heavy hitters) + recent window",
          {{"recent_ratio", 0.5, 0.0, 1.0, false, "share of the budget kept for the most recent entries"}},
          [](const nlohmann::json& p) { return make_accumulated_score(1.0f, p["recent_ratio"].get<double>()); }};
}

}  // namespace kvscope::policy
