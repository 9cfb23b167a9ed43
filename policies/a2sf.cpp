// a2sf: Accumulative Attention Score with Forgetting factor (Jo & Shin, "A2SF: Accumulative
// Attention Scoring with Forgetting Factor for Token Pruning in Transformer Decoder",
// 2024). S_j <- lambda * S_j + a_{t,j} at every observed step, so old attention fades;
// the most recent round(recent_ratio * budget) entries are kept, the smallest S_j among
// the rest are evicted. lambda = 1 is H2O.
#include "policies/builtin.h"

namespace kvscope::policy {

PolicyInfo a2sf_info() {
  return {"a2sf", "score", "accumulated attention with a forgetting factor + recent window",
          {{"lambda", 0.9, 0.0, 1.0, false, "forgetting factor per step"},
           {"recent_ratio", 0.5, 0.0, 1.0, false, "share of the budget kept for the most recent entries"}},
          [](const nlohmann::json& p) {
            return make_accumulated_score(static_cast<float>(p["lambda"].get<double>()), p["recent_ratio"].get<double>());
          }};
}

}  // namespace kvscope::policy
