// paged: blocks on demand (vLLM's PagedAttention). A request holds the blocks its KV
// needs after the step it runs, and is admitted as soon as its next step's blocks fit.
// When a running request needs a block and none is free, the engine preempts.
#include "sim/alloc.h"

namespace kvscope::sim {

namespace {
class Paged final : public Allocator {
 public:
  uint64_t hold(const AllocRequest& r, uint32_t step) const override { return (*r.blocks)[step]; }
  bool admit(const AllocRequest& r, uint32_t step, uint64_t free_blocks, uint64_t) const override {
    return (*r.blocks)[step] <= free_blocks;
  }
};
}  // namespace

AllocInfo alloc_paged_info() {
  return {"paged", "blocks on demand (vLLM); admit when the next step's blocks fit; preempt the youngest when short", {},
          [](const nlohmann::json&) -> std::unique_ptr<Allocator> { return std::make_unique<Paged>(); }};
}

}  // namespace kvscope::sim
