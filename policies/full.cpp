// full: keeps every entry (the reference every other policy is measured against).
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Full final : public Policy {
 public:
  void reset(const Shape&) override {}
  void observe(const StreamView&) override {}
  void victims(const StreamView&, uint32_t, Plan&) override {}  // never asked: the engine gives it no budget
};
}  // namespace

PolicyInfo full_info() {
  return {"full", "baseline", "keep every entry (budget ignored)", {},
          [](const nlohmann::json&) -> std::unique_ptr<Policy> { return std::make_unique<Full>(); }};
}

}  // namespace kvscope::policy
