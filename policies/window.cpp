// window: sliding window — keep the `budget` most recent entries, evict the oldest.
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Window final : public Policy {
 public:
  void reset(const Shape&) override {}
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    uint32_t taken = 0;
    evict_range(v, 0, v.n, k, plan, taken);
  }
};
}  // namespace

PolicyInfo window_info() {
  return {"window", "baseline", "keep the most recent entries", {},
          [](const nlohmann::json&) -> std::unique_ptr<Policy> { return std::make_unique<Window>(); }};
}

}  // namespace kvscope::policy
