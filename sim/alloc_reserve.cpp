// reserve: static reservation (FasterTransformer-style). At admission a request sets
// aside the largest footprint it will reach over its whole run and keeps it until it
// finishes, so a running request never needs another block and nothing is preempted.
// The length is known here (the trace), which makes this the kindest static scheme; a
// real one reserves for the maximum sequence length.
#include "sim/alloc.h"

namespace kvscope::sim {

namespace {
class Reserve final : public Allocator {
 public:
  uint64_t hold(const AllocRequest& r, uint32_t) const override { return r.max_blocks; }
  bool admit(const AllocRequest& r, uint32_t, uint64_t free_blocks, uint64_t) const override { return r.max_blocks <= free_blocks; }
};
}  // namespace

AllocInfo alloc_reserve_info() {
  return {"reserve", "reserve the request's largest footprint at admission; never preempts", {},
          [](const nlohmann::json&) -> std::unique_ptr<Allocator> { return std::make_unique<Reserve>(); }};
}

}  // namespace kvscope::sim
