// belady-page: Belady's MIN, the offline optimum for demand paging (Belady, "A study of
// replacement algorithms for a virtual-storage computer", IBM Systems Journal 1966).
// Rule: on a miss with the cache full, evict the resident object whose next access is
// farthest in the future (never again counts as farthest; ties among those are arbitrary
// and cannot change the miss count). Reads the future from the stream's next-access field
// (1-based index of the next request to the object, -1 = never). Every miss is admitted,
// as in libCacheSim's Belady. Capacity in objects (one page = one object).
#include <algorithm>
#include <climits>

#include "kernels/io/error.h"
#include "policies/builtin.h"
#include "policies/cache_map.h"

namespace kvscope::policy {
namespace {

using namespace cache;

// An indexed binary max-heap of the resident slots keyed by next access.
class BeladyPage final : public CachePolicy {
 public:
  void reset(uint64_t capacity) override {
    if (capacity == 0 || capacity > (uint64_t{1} << 31)) throw Error("belady-page: capacity must be between 1 and 2^31 objects");
    cap_ = capacity;
    const uint64_t r = std::min<uint64_t>(capacity, 1 << 16);
    map_.reset(r);
    id_.clear(), key_.clear(), pos_.clear(), heap_.clear();
    id_.reserve(r), key_.reserve(r), pos_.reserve(r), heap_.reserve(r);
  }

  bool access(uint64_t id, int64_t next_access) override {
    const int64_t key = next_access < 0 ? INT64_MAX : next_access;
    uint32_t s = map_.find(id);
    if (s != kNone) {
      const int64_t old = key_[s];
      key_[s] = key;
      if (key > old) up(pos_[s]);
      else down(pos_[s]);
      return true;
    }
    if (heap_.size() < cap_) {
      s = static_cast<uint32_t>(id_.size());
      id_.push_back(id), key_.push_back(key), pos_.push_back(static_cast<uint32_t>(heap_.size()));
      heap_.push_back(s);
      up(pos_[s]);
    } else {
      s = heap_[0];  // farthest next access
      map_.erase(id_[s]);
      id_[s] = id;
      key_[s] = key;
      down(0);
    }
    map_.insert(id, s);
    return false;
  }

 private:
  void up(uint32_t i) {
    const uint32_t s = heap_[i];
    while (i > 0) {
      const uint32_t parent = (i - 1) / 2;
      if (key_[heap_[parent]] >= key_[s]) break;
      heap_[i] = heap_[parent];
      pos_[heap_[i]] = i;
      i = parent;
    }
    heap_[i] = s;
    pos_[s] = i;
  }
  void down(uint32_t i) {
    const uint32_t s = heap_[i], n = static_cast<uint32_t>(heap_.size());
    for (;;) {
      uint32_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && key_[heap_[c + 1]] > key_[heap_[c]]) ++c;
      if (key_[heap_[c]] <= key_[s]) break;
      heap_[i] = heap_[c];
      pos_[heap_[i]] = i;
      i = c;
    }
    heap_[i] = s;
    pos_[s] = i;
  }

  uint64_t cap_ = 0;
  CacheMap map_;
  std::vector<uint64_t> id_;
  std::vector<int64_t> key_;
  std::vector<uint32_t> pos_, heap_;
};

}  // namespace

PolicyInfo belady_page_info() {
  PolicyInfo info{"belady-page", "cache", "page cache: offline optimum, evict the page whose next access is farthest (bound)", {}};
  info.make_cache = [](const nlohmann::json&) -> std::unique_ptr<CachePolicy> { return std::make_unique<BeladyPage>(); };
  return info;
}

}  // namespace kvscope::policy
