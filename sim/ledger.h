#pragma once
// The engine's ledger of a policy run (docs/policies.md, "The engine"): for every stream
// (layer, KV head) and position, where the entry is (HBM, host, gone) and at how many bits,
// with per-stream counts, HBM units and budgets. The replay (sim/replay.cpp) and the live
// run (sim/live.cpp) keep one each and apply every Plan through apply(), so a policy is
// checked the same way in both: moves of entries that are not where the move says, bits
// that do not go down, HBM use over the budget, pages moved in part. What a move does
// beyond the ledger — counters, quantized rows, the real cache — the caller does in Moves.
#include <cstdint>
#include <string>
#include <vector>

#include "policies/policy.h"

namespace kvscope::sim {

class Ledger {
 public:
  // Called by apply() for each move, after it was checked and booked.
  struct Moves {
    virtual ~Moves() = default;
    virtual void evicted(uint32_t s, uint32_t j, uint8_t was_where) {}
    virtual void offloaded(uint32_t s, uint32_t j, uint8_t bits) {}
    virtual void quantized(uint32_t s, uint32_t j, uint8_t bits) {}
    virtual void fetched(uint32_t s, uint32_t j, uint8_t bits) {}
  };

  // `who` starts every error ("sim: policy h2o"); budgets: one per stream.
  Ledger(const policy::Shape& shape, uint32_t ctx, std::vector<uint32_t> budgets, std::string who);

  // A new entry in HBM at 16 bits.
  void append(uint32_t s, uint32_t j);
  // The stream's view for plan() / observe() (the ledger's arrays; no attention).
  policy::StreamView view(uint32_t step, uint32_t layer, uint32_t kv_head, uint32_t n, bool prefill) const;
  // Checks and books `plan` (evict, offload, quantize, fetch, in that order), calling
  // `on` per move; then the budget and, at page granularity, that pages moved whole.
  // Updates v's counts.
  void apply(policy::StreamView& v, const policy::Plan& plan, Moves& on);
  [[noreturn]] void bad(const policy::StreamView& v, const std::string& what) const;

  const uint8_t* resident(uint32_t s) const { return resident_.data() + base(s); }
  const uint8_t* bits(uint32_t s) const { return bits_.data() + base(s); }
  uint32_t n_resident(uint32_t s) const { return n_res_[s]; }
  uint32_t n_host(uint32_t s) const { return n_host_[s]; }
  uint32_t pages_resident(uint32_t s) const { return pages_res_[s]; }
  double units(uint32_t s) const { return units_[s]; }
  std::vector<uint32_t>& budgets() { return budget_; }

 private:
  size_t base(uint32_t s) const { return static_cast<size_t>(s) * ctx_; }
  void set_hbm(uint32_t s, uint32_t j, bool on);

  policy::Shape shape_;
  uint32_t ctx_, PB_, n_pages_;
  std::string who_;
  std::vector<uint8_t> where_, resident_, bits_;
  std::vector<uint32_t> n_res_, n_host_, pages_res_, page_count_, budget_;
  std::vector<double> units_;
};

}  // namespace kvscope::sim
