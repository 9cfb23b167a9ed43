// paged-watermark: blocks on demand as `paged`, but a request is admitted only while the
// pool keeps `watermark` of its blocks free after it (vLLM's admission watermark, 1% by
// default there): the headroom lets running requests grow before anyone is preempted.
#include <cmath>

#include "sim/alloc.h"

namespace kvscope::sim {

namespace {
class PagedWatermark final : public Allocator {
 public:
  explicit PagedWatermark(double watermark) : watermark_(watermark) {}
  uint64_t hold(const AllocRequest& r, uint32_t step) const override { return (*r.blocks)[step]; }
  bool admit(const AllocRequest& r, uint32_t step, uint64_t free_blocks, uint64_t total_blocks) const override {
    const uint64_t need = (*r.blocks)[step];
    if (need > free_blocks) return false;
    const auto keep = static_cast<uint64_t>(std::ceil(watermark_ * static_cast<double>(total_blocks) - 1e-9));
    return free_blocks - need >= keep;
  }

 private:
  double watermark_;
};
}  // namespace

AllocInfo alloc_paged_watermark_info() {
  return {"paged-watermark",
          "as paged, but admit only while the free blocks after admission stay at or above watermark x total",
          {{"watermark", 0.01, 0.0, 0.99, false, "share of the pool kept free at admission"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Allocator> {
            return std::make_unique<PagedWatermark>(p.at("watermark").get<double>());
          }};
}

}  // namespace kvscope::sim
