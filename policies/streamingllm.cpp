// streamingllm: attention sinks + sliding window (Xiao et al., "Efficient Streaming
// Language Models with Attention Sinks", ICLR 2024): keep the first `sinks` positions and
// the most recent budget - sinks; evict the oldest non-sink entry (at page granularity,
// the pages holding the sinks are kept whole).
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class StreamingLlm final : public Policy {
 public:
  explicit StreamingLlm(uint32_t sinks) : sinks_(sinks) {}
  void reset(const Shape&) override {}
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    // At page granularity the sinks keep their whole first page(s).
    const uint32_t B = v.page_size, keep = (sinks_ + B - 1) / B * B;
    uint32_t taken = 0;
    evict_range(v, keep, v.n, k, plan, taken);
    evict_range(v, 0, keep, k, plan, taken);  // a budget smaller than the sinks
  }

 private:
  uint32_t sinks_;
};
}  // namespace

PolicyInfo streamingllm_info() {
  return {"streamingllm", "baseline", "attention sinks + recent window",
          {{"sinks", 4, 0, 1 << 20, true, "initial positions always kept"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<StreamingLlm>(p["sinks"].get<uint32_t>());
          }};
}

}  // namespace kvscope::policy
