// window: sliding window — keep the `budget` most recent entries, evict the oldest.
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Window final : public Policy {
 public:
  void reset(const Shape& s) override { oldest_.assign(s.streams(), 0); }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    // Everything below oldest_ was evicted by this policy: start the scan there.
    uint32_t taken = 0;
    const size_t first = plan.evict.size();
    evict_range(v, oldest_[v.stream], v.n, k, plan, taken);
    if (plan.evict.size() > first) oldest_[v.stream] = plan.evict.back() + 1;
  }

 private:
  std::vector<uint32_t> oldest_;  // per stream: no resident entry below it
};
}  // namespace

PolicyInfo window_info() {
  return {"window", "baseline", "keep the most recent entries", {},
          [](const nlohmann::json&) -> std::unique_ptr<Policy> { return std::make_unique<Window>(); }};
}

}  // namespace kvscope::policy
