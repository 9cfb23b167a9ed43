#pragma once
// Building blocks of the page-cache policies (lru, fifo, lfu, arc, s3fifo, belady-page):
//   CacheMap   open-addressing hash map, object id (uint64) -> slot (uint32), linear
//              probing with backward-shift deletion (no tombstones), power-of-two table
//              kept at most half full;
//   SlotLists  intrusive doubly-linked lists over slot indices (prev/next arrays, one
//              sentinel node per list), O(1) push/remove/move without allocation;
//   SlotPool   slot numbers handed out and taken back (free stack).
// Header-only on purpose: tests/cpp/sim_test.cpp expects every policies/*.cpp to be a
// registered policy. Storage grows by doubling while a cache warms up (a capacity far
// larger than the working set costs nothing); once warm, requests allocate nothing.
#include <cstdint>
#include <vector>

namespace kvscope::policy::cache {

inline constexpr uint32_t kNone = UINT32_MAX;

// Object ids of page streams are structured ((stream << 32) | page): mix all bits.
inline uint64_t mix_id(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

class CacheMap {
 public:
  // Empties the map and sizes it for `expected` entries (it still grows past that).
  void reset(uint64_t expected) {
    uint64_t cap = 16;
    while (cap < 2 * expected && cap < (uint64_t{1} << 40)) cap <<= 1;
    keys_.assign(cap, 0);
    vals_.assign(cap, kNone);
    mask_ = cap - 1;
    size_ = 0;
  }
  uint64_t size() const { return size_; }

  // The slot of `key`, or kNone.
  uint32_t find(uint64_t key) const {
    for (uint64_t i = mix_id(key) & mask_;; i = (i + 1) & mask_) {
      const uint32_t v = vals_[i];
      if (v == kNone) return kNone;
      if (keys_[i] == key) return v;
    }
  }
  // `key` must be absent.
  void insert(uint64_t key, uint32_t val) {
    if (2 * (size_ + 1) > keys_.size()) grow();
    place(key, val);
    ++size_;
  }
  // Changes the value of a present key.
  void set(uint64_t key, uint32_t val) {
    for (uint64_t i = mix_id(key) & mask_;; i = (i + 1) & mask_)
      if (vals_[i] != kNone && keys_[i] == key) {
        vals_[i] = val;
        return;
      }
  }
  // Removes `key` when present; returns whether it was.
  bool erase(uint64_t key) {
    uint64_t i = mix_id(key) & mask_;
    for (;; i = (i + 1) & mask_) {
      if (vals_[i] == kNone) return false;
      if (keys_[i] == key) break;
    }
    // Backward-shift: pull later members of the probe run into the hole when their home
    // position does not lie cyclically in (hole, j].
    uint64_t hole = i;
    for (uint64_t j = (i + 1) & mask_; vals_[j] != kNone; j = (j + 1) & mask_) {
      const uint64_t home = mix_id(keys_[j]) & mask_;
      const bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
      if (stays) continue;
      keys_[hole] = keys_[j];
      vals_[hole] = vals_[j];
      hole = j;
    }
    vals_[hole] = kNone;
    --size_;
    return true;
  }

 private:
  void place(uint64_t key, uint32_t val) {
    uint64_t i = mix_id(key) & mask_;
    while (vals_[i] != kNone) i = (i + 1) & mask_;
    keys_[i] = key;
    vals_[i] = val;
  }
  void grow() {
    std::vector<uint64_t> k;
    std::vector<uint32_t> v;
    k.swap(keys_);
    v.swap(vals_);
    const uint64_t cap = k.size() * 2;
    keys_.assign(cap, 0);
    vals_.assign(cap, kNone);
    mask_ = cap - 1;
    for (uint64_t i = 0; i < k.size(); ++i)
      if (v[i] != kNone) place(k[i], v[i]);
  }

  std::vector<uint64_t> keys_;
  std::vector<uint32_t> vals_;
  uint64_t mask_ = 0, size_ = 0;
};

// n_lists lists over slots 0..: nodes 0..n_lists-1 are the lists' sentinels, slot s is
// node n_lists + s, so slots can be added (ensure) without moving the sentinels. A slot
// is on at most one list at a time; the caller remembers which.
class SlotLists {
 public:
  void reset(uint32_t n_lists, uint64_t reserve_slots) {
    lists_ = n_lists;
    prev_.clear();
    next_.clear();
    prev_.reserve(n_lists + reserve_slots);
    next_.reserve(n_lists + reserve_slots);
    for (uint32_t l = 0; l < n_lists; ++l) prev_.push_back(l), next_.push_back(l);
    size_.assign(n_lists, 0);
  }
  // Makes room for slot s (slots are handed out in increasing order by SlotPool).
  void ensure(uint32_t s) {
    while (prev_.size() <= static_cast<size_t>(lists_) + s) prev_.push_back(kNone), next_.push_back(kNone);
  }
  uint64_t size(uint32_t l) const { return size_[l]; }
  bool empty(uint32_t l) const { return size_[l] == 0; }
  // Head = most recently inserted end; tail = the other end (kNone when empty).
  uint32_t head(uint32_t l) const { return size_[l] ? next_[l] - lists_ : kNone; }
  uint32_t tail(uint32_t l) const { return size_[l] ? prev_[l] - lists_ : kNone; }
  // The slot after s towards the tail (kNone at the tail).
  uint32_t toward_tail(uint32_t l, uint32_t s) const {
    const uint32_t n = next_[lists_ + s];
    return n == l ? kNone : n - lists_;
  }
  void push_head(uint32_t l, uint32_t s) { link_after(l, lists_ + s, l); }
  void push_tail(uint32_t l, uint32_t s) { link_after(l, lists_ + s, prev_[l]); }
  // Inserts s right after slot `at` on the head-to-tail order (s goes on the tail side).
  void insert_after(uint32_t l, uint32_t s, uint32_t at) { link_after(l, lists_ + s, lists_ + at); }
  void remove(uint32_t l, uint32_t s) {
    const uint32_t n = lists_ + s;
    next_[prev_[n]] = next_[n];
    prev_[next_[n]] = prev_[n];
    --size_[l];
  }
  void move_to_head(uint32_t from, uint32_t to, uint32_t s) {
    remove(from, s);
    push_head(to, s);
  }

 private:
  void link_after(uint32_t l, uint32_t n, uint32_t at) {
    const uint32_t nx = next_[at];
    prev_[n] = at;
    next_[n] = nx;
    prev_[nx] = n;
    next_[at] = n;
    ++size_[l];
  }
  uint32_t lists_ = 0;
  std::vector<uint32_t> prev_, next_;
  std::vector<uint64_t> size_;
};

// Slot numbers: the lowest never-used one, or one given back.
class SlotPool {
 public:
  void reset() {
    free_.clear();
    used_ = 0;
  }
  uint32_t take() {
    if (!free_.empty()) {
      const uint32_t s = free_.back();
      free_.pop_back();
      return s;
    }
    return used_++;
  }
  void give(uint32_t s) { free_.push_back(s); }
  // Slots ever handed out (arrays indexed by slot need this many entries).
  uint32_t high_water() const { return used_; }

 private:
  std::vector<uint32_t> free_;
  uint32_t used_ = 0;
};

}  // namespace kvscope::policy::cache
