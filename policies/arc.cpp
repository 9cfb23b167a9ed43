// arc: Adaptive Replacement Cache (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead
// Replacement Cache", FAST 2003).
// Rule: resident objects seen once (T1) or more (T2), each LRU, plus ghost lists B1/B2 of
// ids recently evicted from T1/T2 (directory of at most 2c ids); a ghost hit in B1 (B2)
// raises (lowers) the target size p of T1, and REPLACE evicts T1's LRU into B1 when
// |T1| > p (or = p on a B2 hit), else T2's LRU into B2. As the paper's Fig. 4, with p
// real-valued (delta = max(1, |B2|/|B1|) or max(1, |B1|/|B2|), real division).
// Capacity c in objects (one page = one object).
#include <algorithm>

#include "kernels/io/error.h"
#include "policies/builtin.h"
#include "policies/cache_map.h"

namespace kvscope::policy {
namespace {

using namespace cache;

enum : uint8_t { kT1 = 0, kT2 = 1, kB1 = 2, kB2 = 3 };

class Arc final : public CachePolicy {
 public:
  void reset(uint64_t capacity) override {
    if (capacity == 0 || capacity > (uint64_t{1} << 30)) throw Error("arc: capacity must be between 1 and 2^30 objects");
    c_ = capacity;
    p_ = 0;
    const uint64_t r = std::min<uint64_t>(2 * capacity, 1 << 17);
    map_.reset(r);
    lists_.reset(4, r);
    pool_.reset();
    id_.clear(), where_.clear();
    id_.reserve(r), where_.reserve(r);
  }

  bool access(uint64_t id, int64_t) override {
    const uint32_t s = map_.find(id);
    if (s != kNone) {
      const uint8_t w = where_[s];
      if (w == kT1 || w == kT2) {  // Case I: hit
        to(s, kT2);
        return true;
      }
      const double b1 = static_cast<double>(lists_.size(kB1)), b2 = static_cast<double>(lists_.size(kB2));
      if (w == kB1) {  // Case II: ghost hit in B1, favour recency
        p_ = std::min(static_cast<double>(c_), p_ + (b1 >= b2 ? 1.0 : b2 / b1));
        replace(false);
      } else {  // Case III: ghost hit in B2, favour frequency
        p_ = std::max(0.0, p_ - (b2 >= b1 ? 1.0 : b1 / b2));
        replace(true);
      }
      to(s, kT2);
      return false;
    }
    // Case IV: not in the directory.
    const uint64_t t1 = lists_.size(kT1), l1 = t1 + lists_.size(kB1);
    if (l1 == c_) {
      if (t1 < c_) {
        drop(lists_.tail(kB1));
        replace(false);
      } else {
        drop(lists_.tail(kT1));
      }
    } else {
      const uint64_t total = l1 + lists_.size(kT2) + lists_.size(kB2);
      if (total >= c_) {
        if (total == 2 * c_) drop(lists_.tail(kB2));
        replace(false);
      }
    }
    const uint32_t n = pool_.take();
    if (n >= id_.size()) id_.resize(n + 1), where_.resize(n + 1);
    lists_.ensure(n);
    id_[n] = id;
    where_[n] = kT1;
    lists_.push_head(kT1, n);
    map_.insert(id, n);
    return false;
  }

 private:
  // REPLACE(x, p): T1's LRU to B1 when |T1| >= 1 and (|T1| > p, or |T1| = p and x in B2),
  // else T2's LRU to B2 (an empty list hands the choice to the other one).
  void replace(bool in_b2) {
    const double t1 = static_cast<double>(lists_.size(kT1));
    bool from_t1 = t1 >= 1 && ((in_b2 && t1 == p_) || t1 > p_);
    if (lists_.empty(kT2)) from_t1 = true;
    if (from_t1 && lists_.empty(kT1)) return;
    const uint32_t v = lists_.tail(from_t1 ? kT1 : kT2);
    to(v, from_t1 ? kB1 : kB2);
  }
  void to(uint32_t s, uint8_t list) {
    lists_.move_to_head(where_[s], list, s);
    where_[s] = list;
  }
  void drop(uint32_t s) {
    lists_.remove(where_[s], s);
    map_.erase(id_[s]);
    pool_.give(s);
  }

  uint64_t c_ = 0;
  double p_ = 0;  // target size of T1
  CacheMap map_;
  SlotLists lists_;  // T1, T2, B1, B2; head = MRU
  SlotPool pool_;
  std::vector<uint64_t> id_;
  std::vector<uint8_t> where_;
};

}  // namespace

PolicyInfo arc_info() {
  PolicyInfo info{"arc", "cache", "page cache: ARC, recency and frequency lists balanced by ghost hits", {}};
  info.make_cache = [](const nlohmann::json&) -> std::unique_ptr<CachePolicy> { return std::make_unique<Arc>(); };
  return info;
}

}  // namespace kvscope::policy
