#pragma once
// The project's one pseudo-random generator: xoshiro256** (Blackman & Vigna, "Scrambled
// linear pseudorandom number generators", ACM TOMS 2021) with its state filled by
// splitmix64 (Steele, Lea & Flood, OOPSLA 2014). No std:: distributions anywhere: their
// algorithms differ between standard libraries, and our outputs must be the same bytes
// everywhere. Used by synthetic traces, the explorer's strategies, batch arrivals and
// policies that draw (random, keyformer).
#include <cstdint>

namespace kvscope {

// The splitmix64 output function (a 64-bit finaliser).
inline uint64_t fmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// One splitmix64 step: advances x by the golden-ratio increment and returns its hash.
inline uint64_t splitmix64(uint64_t& x) { return fmix64(x += 0x9e3779b97f4a7c15ULL); }

class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) {
    for (auto& w : s_) w = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t out = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return out;
  }
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1), 53 bits
  uint64_t below(uint64_t n) {  // [0, n), unbiased (rejection)
    if (n <= 1) return 0;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace kvscope
