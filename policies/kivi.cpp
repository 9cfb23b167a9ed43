// kivi: importance-aware mixed precision — quantize rather than evict. The precision split
// follows KIVI (Liu, Yuan, Jin, Zhong, Xu, Braverman, Chen, Hu, "KIVI: A Tuning-Free
// Asymmetric 2bit Quantization for KV Cache", ICML 2024: the newest `residual` tokens stay
// in full precision, older ones at 2 or 4 bits) and the choice of which old entries keep
// full precision follows MiKV (Yang, Kim, Lee, Kim, Lee, Kwon, "No Token Left Behind:
// Reliable KV Cache Compression via Importance-Aware Mixed Precision Quantization", 2024:
// heavy hitters by accumulated attention stay in high precision, the others are kept at
// low precision instead of being evicted).
//   S_j = sum_t a_{t,j}  (as H2O; prefill: column sums)
//   HBM units = sum_{j in HBM} bits_j / 16 <= budget
// When a stream is over budget, outside the window of the newest w = min(residual,
// floor(budget / 2)) entries: (1) the 16-bit entries with the smallest S_j are quantized to
// `bits`, one at a time, until the stream fits; (2) if every entry outside the window is
// already at `bits` and the stream still does not fit, the entries with the smallest S_j
// are evicted (whole pages at page granularity). An entry that (1) would quantize and (2)
// evict in the same step is just evicted. Quantization is irreversible, so the budget
// decides how many entries stay at 16 bits: nothing is quantized while everything fits.
// Quantization itself is the engine's (sim/replay.cpp: asymmetric min/max per V row, the
// per-token scheme KIVI uses for V; K is not modelled, the trace's probabilities are kept).
#include <algorithm>
#include <cmath>

#include "kernels/io/error.h"
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {

class Kivi final : public Policy {
 public:
  Kivi(uint32_t bits, uint32_t residual) : bits_(static_cast<uint8_t>(bits)), residual_(residual) {}

  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    score_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    protect_.assign(stride_, 0);
    full_.assign(stride_, 0);
    quant_.clear();
    quant_.reserve(stride_);
    evict_.clear();
    evict_.reserve(stride_);
    scratch_.clear();
    scratch_.reserve(stride_);
  }

  void observe(const StreamView& v) override {
    float* s = score_.data() + static_cast<size_t>(v.stream) * stride_;
    for (uint32_t j = 0; j < v.n; ++j) s[j] += v.attn[j];
  }

  void plan(const StreamView& v, Plan& plan) override {
    if (v.hbm_units <= v.budget) return;
    const float* S = score_.data() + static_cast<size_t>(v.stream) * stride_;
    const uint32_t n = v.n;
    const uint32_t window = std::min(residual_, v.budget / 2);
    std::fill(protect_.begin(), protect_.begin() + n, 0);
    for (uint32_t j = n, kept = 0; j-- > 0 && kept < window;)
      if (v.resident[j]) protect_[j] = 1, ++kept;
    // (1) quantize the lowest-scored 16-bit entries outside the window.
    const double save_q = 1.0 - bits_ / 16.0, save_e = bits_ / 16.0;
    double excess = v.hbm_units - v.budget;
    uint32_t candidates = 0;
    for (uint32_t j = 0; j < n; ++j) {
      full_[j] = v.resident[j] && v.bits[j] == 16 && !protect_[j];
      candidates += full_[j];
    }
    const uint32_t kq = std::min<uint32_t>(candidates, static_cast<uint32_t>(std::ceil(excess / save_q)));
    quant_.clear();
    if (kq > 0) lowest_k(S, full_.data(), n, kq, nullptr, quant_, scratch_, 1);
    excess -= kq * save_q;
    // (2) still over: evict the lowest-scored entries outside the window (all at `bits` now).
    evict_.clear();
    if (excess > 0) {
      const uint32_t ke = static_cast<uint32_t>(std::ceil(excess / save_e));
      lowest_k(S, v.resident, n, ke, protect_.data(), evict_, scratch_, v.page_size);
    }
    // quant_ and evict_ are ascending: drop from quant_ what is evicted.
    size_t e = 0;
    for (uint32_t j : quant_) {
      while (e < evict_.size() && evict_[e] < j) ++e;
      if (e < evict_.size() && evict_[e] == j) continue;
      plan.quantize.emplace_back(j, bits_);
    }
    plan.evict.insert(plan.evict.end(), evict_.begin(), evict_.end());
  }

 private:
  uint8_t bits_;
  uint32_t residual_;
  uint32_t stride_ = 0;
  std::vector<float> score_;              // [stream][position]: S_j
  std::vector<uint8_t> protect_, full_;   // [position] scratch
  std::vector<uint32_t> quant_, evict_, scratch_;
};

}  // namespace

PolicyInfo kivi_info() {
  return {"kivi",
          "quant",
          "mixed precision: heavy hitters and the newest entries at 16 bits, the rest quantized, evicted last",
          {{"bits", 2, 2, 4, true, "storage bits of the quantized entries (2 or 4)"},
           {"residual", 32, 0, 1e9, true, "newest entries kept at 16 bits (at most half the budget)"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            const double bits = p["bits"].get<double>();
            if (bits != 2 && bits != 4) throw Error("kivi: bits: " + nlohmann::json(bits).dump() + " is not 2 or 4");
            return std::make_unique<Kivi>(static_cast<uint32_t>(bits), static_cast<uint32_t>(p["residual"].get<double>()));
          }};
}

}  // namespace kvscope::policy
