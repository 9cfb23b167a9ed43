// fifo: first in, first out (Belady, "A study of replacement algorithms for a
// virtual-storage computer", IBM Systems Journal 1966, evaluates it beside MIN).
// Rule: on a miss with the cache full, evict the object admitted longest ago; hits change
// nothing. Capacity in objects (one page = one object).
#include <algorithm>

#include "kernels/io/error.h"
#include "policies/builtin.h"
#include "policies/cache_map.h"

namespace kvscope::policy {
namespace {

using namespace cache;

// A ring of the resident ids in admission order: once full, the oldest sits at `hand_`.
class Fifo final : public CachePolicy {
 public:
  void reset(uint64_t capacity) override {
    if (capacity == 0 || capacity > (uint64_t{1} << 31)) throw Error("fifo: capacity must be between 1 and 2^31 objects");
    cap_ = capacity;
    const uint64_t r = std::min<uint64_t>(capacity, 1 << 16);
    map_.reset(r);
    ring_.clear();
    ring_.reserve(r);
    hand_ = 0;
  }
  bool access(uint64_t id, int64_t) override {
    if (map_.find(id) != kNone) return true;
    if (ring_.size() < cap_) {
      map_.insert(id, static_cast<uint32_t>(ring_.size()));
      ring_.push_back(id);
      return false;
    }
    map_.erase(ring_[hand_]);
    ring_[hand_] = id;
    map_.insert(id, static_cast<uint32_t>(hand_));
    if (++hand_ == cap_) hand_ = 0;
    return false;
  }

 private:
  uint64_t cap_ = 0, hand_ = 0;
  CacheMap map_;
  std::vector<uint64_t> ring_;
};

}  // namespace

PolicyInfo fifo_info() {
  PolicyInfo info{"fifo", "cache", "page cache: evict the page admitted first", {}};
  info.make_cache = [](const nlohmann::json&) -> std::unique_ptr<CachePolicy> { return std::make_unique<Fifo>(); };
  return info;
}

}  // namespace kvscope::policy
