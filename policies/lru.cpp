// lru: least recently used, the classic demand-paging baseline (Mattson, Gecsei, Slutz &
// Traiger, "Evaluation techniques for storage hierarchies", IBM Systems Journal 1970).
// Rule: on a miss with the cache full, evict the object whose last access is oldest; a
// hit makes the object the most recent. Capacity in objects (one page = one object).
#include <algorithm>

#include "kernels/io/error.h"
#include "policies/builtin.h"
#include "policies/cache_map.h"

namespace kvscope::policy {
namespace {

using namespace cache;

class Lru final : public CachePolicy {
 public:
  void reset(uint64_t capacity) override {
    if (capacity == 0 || capacity > (uint64_t{1} << 31)) throw Error("lru: capacity must be between 1 and 2^31 objects");
    cap_ = capacity;
    const uint64_t r = std::min<uint64_t>(capacity, 1 << 16);
    map_.reset(r);
    lists_.reset(1, r);
    id_.clear();
    id_.reserve(r);
  }
  bool access(uint64_t id, int64_t) override {
    uint32_t s = map_.find(id);
    if (s != kNone) {
      lists_.move_to_head(0, 0, s);
      return true;
    }
    if (id_.size() < cap_) {
      s = static_cast<uint32_t>(id_.size());
      id_.push_back(id);
      lists_.ensure(s);
    } else {
      s = lists_.tail(0);
      lists_.remove(0, s);
      map_.erase(id_[s]);
      id_[s] = id;
    }
    map_.insert(id, s);
    lists_.push_head(0, s);
    return false;
  }

 private:
  uint64_t cap_ = 0;
  CacheMap map_;
  SlotLists lists_;  // head: most recent
  std::vector<uint64_t> id_;
};

}  // namespace

PolicyInfo lru_info() {
  PolicyInfo info{"lru", "cache", "page cache: evict the least recently used page", {}};
  info.make_cache = [](const nlohmann::json&) -> std::unique_ptr<CachePolicy> { return std::make_unique<Lru>(); };
  return info;
}

}  // namespace kvscope::policy
