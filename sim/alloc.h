#pragma once
// Allocation policies for the multi-request replay (docs/batch.md): how a request's KV
// blocks are set aside in the device pool. The engine (sim/batch.cpp) owns the loop, the
// pool and preemption; a policy answers two read-only questions about one request.
// One file per policy (sim/alloc_<name>.cpp), one line each in sim/alloc_registry.cpp.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "policies/policy.h"  // ParamSpec, validate_params

namespace kvscope::sim {

// What a policy sees of a request.
struct AllocRequest {
  const std::vector<uint64_t>* blocks = nullptr;  // blocks held after each trace step
  uint64_t max_blocks = 0;                        // largest of them
  uint32_t steps() const { return static_cast<uint32_t>(blocks->size()); }
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Blocks r must hold to run its step `step` (0 <= step < steps()).
  virtual uint64_t hold(const AllocRequest& r, uint32_t step) const = 0;
  // May r, waiting with next step `step`, join the batch now, given the pool? The engine
  // checks that hold(r, step) <= free_blocks itself; a policy may ask for more headroom.
  virtual bool admit(const AllocRequest& r, uint32_t step, uint64_t free_blocks, uint64_t total_blocks) const = 0;
};

struct AllocInfo {
  std::string name;
  std::string summary;
  std::vector<policy::ParamSpec> params;
  std::unique_ptr<Allocator> (*make)(const nlohmann::json& params) = nullptr;
};

// One per sim/alloc_<name>.cpp.
AllocInfo alloc_reserve_info();
AllocInfo alloc_paged_info();
AllocInfo alloc_paged_watermark_info();

const std::vector<AllocInfo>& alloc_registry();
const AllocInfo& find_alloc(const std::string& name);  // throws Error listing the known names
// find_alloc(name), validate_params, make.
std::unique_ptr<Allocator> make_alloc(const std::string& name, const nlohmann::json& params);

}  // namespace kvscope::sim
