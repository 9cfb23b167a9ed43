// lfu: least frequently used (the frequency-count replacement of Mattson et al., IBM
// Systems Journal 1970; O(1) with frequency buckets as in Shah, Mitra & Matani, "An O(1)
// algorithm for implementing the LFU cache eviction scheme", 2010).
// Rule: on a miss with the cache full, evict the object with the fewest accesses since it
// was admitted; ties go to the least recently used of those. Counts start at 1 on
// admission and are forgotten on eviction (in-cache LFU). Capacity in objects.
#include <algorithm>

#include "kernels/io/error.h"
#include "policies/builtin.h"
#include "policies/cache_map.h"

namespace kvscope::policy {
namespace {

using namespace cache;

// Buckets, one per access count present, in a list of increasing count. Each bucket lists
// its objects most recent first; an object's last access is when it entered its bucket,
// so the tail of the lowest bucket is the least recent among the least frequent.
class Lfu final : public CachePolicy {
 public:
  void reset(uint64_t capacity) override {
    if (capacity == 0 || capacity > (uint64_t{1} << 31)) throw Error("lfu: capacity must be between 1 and 2^31 objects");
    cap_ = capacity;
    const uint64_t r = std::min<uint64_t>(capacity, 1 << 16);
    map_.reset(r);
    id_.clear(), iprev_.clear(), inext_.clear(), bucket_.clear();
    id_.reserve(r), iprev_.reserve(r), inext_.reserve(r), bucket_.reserve(r);
    count_.clear(), bprev_.clear(), bnext_.clear(), ihead_.clear(), itail_.clear();
    buckets_.reset();
    first_ = kNone;
  }

  bool access(uint64_t id, int64_t) override {
    uint32_t s = map_.find(id);
    if (s != kNone) {
      const uint32_t b = bucket_[s];
      uint32_t nb = bnext_[b];
      if (nb == kNone || count_[nb] != count_[b] + 1) nb = new_bucket(count_[b] + 1, b);
      unlink(s);
      push(nb, s);
      if (ihead_[b] == kNone) drop_bucket(b);
      return true;
    }
    if (id_.size() < cap_) {
      s = static_cast<uint32_t>(id_.size());
      id_.push_back(id), iprev_.push_back(kNone), inext_.push_back(kNone), bucket_.push_back(kNone);
    } else {
      const uint32_t b = first_;
      s = itail_[b];
      unlink(s);
      map_.erase(id_[s]);
      if (ihead_[b] == kNone) drop_bucket(b);
      id_[s] = id;
    }
    map_.insert(id, s);
    const uint32_t b = first_ != kNone && count_[first_] == 1 ? first_ : new_bucket(1, kNone);
    push(b, s);
    return false;
  }

 private:
  // A bucket of count c placed after bucket `after` (kNone: at the front).
  uint32_t new_bucket(uint64_t c, uint32_t after) {
    const uint32_t b = buckets_.take();
    if (b >= count_.size()) count_.push_back(0), bprev_.push_back(kNone), bnext_.push_back(kNone), ihead_.push_back(kNone), itail_.push_back(kNone);
    count_[b] = c;
    ihead_[b] = itail_[b] = kNone;
    const uint32_t nx = after == kNone ? first_ : bnext_[after];
    bprev_[b] = after;
    bnext_[b] = nx;
    if (nx != kNone) bprev_[nx] = b;
    if (after == kNone) first_ = b;
    else bnext_[after] = b;
    return b;
  }
  void drop_bucket(uint32_t b) {
    if (bprev_[b] == kNone) first_ = bnext_[b];
    else bnext_[bprev_[b]] = bnext_[b];
    if (bnext_[b] != kNone) bprev_[bnext_[b]] = bprev_[b];
    buckets_.give(b);
  }
  void push(uint32_t b, uint32_t s) {
    bucket_[s] = b;
    iprev_[s] = kNone;
    inext_[s] = ihead_[b];
    if (ihead_[b] != kNone) iprev_[ihead_[b]] = s;
    else itail_[b] = s;
    ihead_[b] = s;
  }
  void unlink(uint32_t s) {
    const uint32_t b = bucket_[s];
    if (iprev_[s] != kNone) inext_[iprev_[s]] = inext_[s];
    else ihead_[b] = inext_[s];
    if (inext_[s] != kNone) iprev_[inext_[s]] = iprev_[s];
    else itail_[b] = iprev_[s];
  }

  uint64_t cap_ = 0;
  CacheMap map_;
  // Objects, by slot.
  std::vector<uint64_t> id_;
  std::vector<uint32_t> iprev_, inext_, bucket_;
  // Buckets, by bucket number.
  std::vector<uint64_t> count_;
  std::vector<uint32_t> bprev_, bnext_, ihead_, itail_;
  SlotPool buckets_;
  uint32_t first_ = kNone;  // the bucket of the lowest count
};

}  // namespace

PolicyInfo lfu_info() {
  PolicyInfo info{"lfu", "cache", "page cache: evict the least frequently used page (ties: least recent)", {}};
  info.make_cache = [](const nlohmann::json&) -> std::unique_ptr<CachePolicy> { return std::make_unique<Lfu>(); };
  return info;
}

}  // namespace kvscope::policy
