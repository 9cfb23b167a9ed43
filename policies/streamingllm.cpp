// streamingllm: attention sinks + sliding window (Xiao et al., "Efficient Streaming
// Language Models with Attention Sinks", ICLR 2024): keep the first `sinks` positions and
// the most recent budget - sinks; evict the oldest non-sink entry.
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class StreamingLlm final : public Policy {
 public:
  explicit StreamingLlm(uint32_t sinks) : sinks_(sinks) {}
  void reset(const Shape&) override {}
  void observe(const StreamView&) override {}
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    for (uint32_t j = sinks_; j < v.n && k > 0; ++j)
      if (v.resident[j]) plan.evict.push_back(j), --k;
    for (uint32_t j = 0; j < sinks_ && j < v.n && k > 0; ++j)  // budget smaller than the sinks
      if (v.resident[j]) plan.evict.push_back(j), --k;
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
