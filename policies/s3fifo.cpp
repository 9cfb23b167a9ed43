// s3fifo: S3-FIFO (Yang, Zhang, Qiu, Yue & Vinayak, "FIFO Queues are All You Need for
// Cache Eviction", SOSP 2023).
// Rule: misses enter a small FIFO S (small_ratio of the capacity) unless their id is in the
// ghost FIFO G, in which case they enter the main FIFO M; a hit only bumps a 2-bit counter.
// Evicting from S (when |S| >= its share, or M is empty): the oldest objects move to M
// (counter reset) while they were hit at least move_threshold times in S, until one that
// was not leaves and its id enters G; evicting from M (when |S| is under its share, or S
// drained into M): the oldest object with a counter > 0 is reinserted with the counter
// decremented (CLOCK), the first with 0 leaves.
// Exact variant: capacity c objects; |S| share s = max(1, floor(small_ratio * c)); G holds
// at most floor(ghost_ratio * c) ids (oldest dropped first; a ghost hit removes the id);
// a miss with |S| + |M| = c first frees exactly one slot, as above, then is admitted; the
// counter saturates at 3 and starts at 0 on admission and on promotion.
// libCacheSim's S3FIFO.c differs in two ways: its move-to-main-threshold defaults to 2
// (move_threshold=2 here), and before its first eviction it admits misses into M once S
// is full (fill_main=1 here); with both, the two agree miss for miss (docs/page-caches.md).
#include <algorithm>
#include <cmath>

#include "kernels/io/error.h"
#include "policies/builtin.h"
#include "policies/cache_map.h"

namespace kvscope::policy {
namespace {

using namespace cache;

enum : uint8_t { kS = 0, kM = 1, kG = 2 };

class S3Fifo final : public CachePolicy {
 public:
  S3Fifo(double small_ratio, double ghost_ratio, uint32_t threshold, bool fill_main)
      : small_ratio_(small_ratio), ghost_ratio_(ghost_ratio), threshold_(threshold), fill_main_(fill_main) {}

  void reset(uint64_t capacity) override {
    if (capacity == 0 || capacity > (uint64_t{1} << 30)) throw Error("s3fifo: capacity must be between 1 and 2^30 objects");
    c_ = capacity;
    small_ = std::max<uint64_t>(1, static_cast<uint64_t>(std::floor(small_ratio_ * static_cast<double>(capacity))));
    ghost_ = static_cast<uint64_t>(std::floor(ghost_ratio_ * static_cast<double>(capacity)));
    const uint64_t r = std::min<uint64_t>(capacity + ghost_, 1 << 17);
    map_.reset(r);
    lists_.reset(3, r);
    pool_.reset();
    id_.clear(), where_.clear(), freq_.clear();
    id_.reserve(r), where_.reserve(r), freq_.reserve(r);
    evicted_ = false;
  }

  bool access(uint64_t id, int64_t) override {
    uint32_t s = map_.find(id);
    bool ghost = false;
    if (s != kNone) {
      if (where_[s] != kG) {
        if (freq_[s] < 3) ++freq_[s];
        return true;
      }
      ghost = true;
      lists_.remove(kG, s);
      map_.erase(id);
      pool_.give(s);
    }
    if (lists_.size(kS) + lists_.size(kM) >= c_) evict_one();
    s = pool_.take();
    if (s >= id_.size()) id_.resize(s + 1), where_.resize(s + 1), freq_.resize(s + 1);
    lists_.ensure(s);
    id_[s] = id;
    freq_[s] = 0;
    where_[s] = ghost || (fill_main_ && !evicted_ && lists_.size(kS) >= small_) ? kM : kS;
    lists_.push_head(where_[s], s);
    map_.insert(id, s);
    return false;
  }

 private:
  // Frees one slot. From S when |S| >= its share (or M is empty): S's oldest objects are
  // promoted to M while their counter reaches the threshold, until one leaves for G; if S
  // drains that way, or when |S| is under its share, M evicts (CLOCK, 2-bit counters).
  void evict_one() {
    evicted_ = true;
    if (!lists_.empty(kS) && (lists_.size(kS) >= small_ || lists_.empty(kM))) {
      while (!lists_.empty(kS)) {
        const uint32_t t = lists_.tail(kS);
        if (freq_[t] >= threshold_) {  // promoted: nothing freed yet
          lists_.move_to_head(kS, kM, t);
          where_[t] = kM;
          freq_[t] = 0;
          continue;
        }
        lists_.remove(kS, t);
        if (ghost_ == 0) {
          map_.erase(id_[t]);
          pool_.give(t);
          return;
        }
        if (lists_.size(kG) >= ghost_) {
          const uint32_t g = lists_.tail(kG);
          lists_.remove(kG, g);
          map_.erase(id_[g]);
          pool_.give(g);
        }
        where_[t] = kG;
        lists_.push_head(kG, t);
        return;
      }
    }
    for (;;) {
      const uint32_t t = lists_.tail(kM);
      if (freq_[t] > 0) {
        --freq_[t];
        lists_.move_to_head(kM, kM, t);
        continue;
      }
      lists_.remove(kM, t);
      map_.erase(id_[t]);
      pool_.give(t);
      return;
    }
  }

  double small_ratio_, ghost_ratio_;
  uint32_t threshold_;
  bool fill_main_, evicted_ = false;
  uint64_t c_ = 0, small_ = 1, ghost_ = 0;
  CacheMap map_;
  SlotLists lists_;  // S, M, G; head = newest
  SlotPool pool_;
  std::vector<uint64_t> id_;
  std::vector<uint8_t> where_, freq_;
};

}  // namespace

PolicyInfo s3fifo_info() {
  PolicyInfo info{"s3fifo",
                  "cache",
                  "page cache: S3-FIFO, small probationary FIFO + main FIFO with 2-bit counters + ghost ids",
                  {{"small_ratio", 0.1, 0.0, 1.0, false, "share of the capacity for the small FIFO (at least one object)"},
                   {"ghost_ratio", 0.9, 0.0, 4.0, false, "ghost FIFO length as a share of the capacity"},
                   {"move_threshold", 1, 1, 3, true, "hits in the small FIFO that promote an object to the main FIFO"},
                   {"fill_main", 0, 0, 1, true, "1: before the first eviction, misses that find the small FIFO full go to the main FIFO (libCacheSim)"}}};
  info.make_cache = [](const nlohmann::json& p) -> std::unique_ptr<CachePolicy> {
    return std::make_unique<S3Fifo>(p["small_ratio"].get<double>(), p["ghost_ratio"].get<double>(),
                                    static_cast<uint32_t>(p["move_threshold"].get<double>()), p["fill_main"].get<double>() != 0);
  };
  return info;
}

}  // namespace kvscope::policy
