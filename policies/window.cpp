// window: sliding window — keep the `budget` most recent entries, evict the oldest.
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Window final : public Policy {
 public:
  void reset(const Shape&) override {}
  void observe(const StreamView&) override {}
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    for (uint32_t j = 0; j < v.n && k > 0; ++j)
      if (v.resident[j]) plan.evict.push_back(j), --k;
  }
};
}  // namespace

PolicyInfo window_info() {
  return {"window", "baseline", "keep the most recent entries", {},
          [](const nlohmann::json&) -> std::unique_ptr<Policy> { return std::make_unique<Window>(); }};
}

}  // namespace kvscope::policy
