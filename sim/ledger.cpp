// The ledger of a policy run (sim/ledger.h).
#include "sim/ledger.h"

#include "kernels/io/error.h"

namespace kvscope::sim {

Ledger::Ledger(const policy::Shape& shape, uint32_t ctx, std::vector<uint32_t> budgets, std::string who)
    : shape_(shape), ctx_(ctx), who_(std::move(who)), budget_(std::move(budgets)) {
  const uint32_t S = shape.streams();
  const size_t cells = static_cast<size_t>(S) * ctx;
  where_.assign(cells, policy::kEvicted);
  resident_.assign(cells, 0);
  bits_.assign(cells, 16);
  n_res_.assign(S, 0);
  n_host_.assign(S, 0);
  pages_res_.assign(S, 0);
  units_.assign(S, 0.0);
  // Pages with at least one HBM entry: page size B, or 16 at token granularity.
  PB_ = shape.page_size > 1 ? shape.page_size : 16;
  n_pages_ = (ctx + PB_ - 1) / PB_;
  page_count_.assign(static_cast<size_t>(S) * n_pages_, 0);
}

void Ledger::set_hbm(uint32_t s, uint32_t j, bool on) {
  const size_t c = base(s) + j;
  resident_[c] = on;
  uint32_t& pc = page_count_[static_cast<size_t>(s) * n_pages_ + j / PB_];
  if (on) {
    ++n_res_[s], units_[s] += bits_[c] / 16.0;
    if (pc++ == 0) ++pages_res_[s];
  } else {
    --n_res_[s], units_[s] -= bits_[c] / 16.0;
    if (--pc == 0) --pages_res_[s];
  }
}

void Ledger::append(uint32_t s, uint32_t j) {
  const size_t c = base(s) + j;
  where_[c] = policy::kHbm;
  bits_[c] = 16;
  set_hbm(s, j, true);
}

policy::StreamView Ledger::view(uint32_t step, uint32_t layer, uint32_t kv_head, uint32_t n, bool prefill) const {
  policy::StreamView v;
  v.step = step;
  v.layer = layer;
  v.kv_head = kv_head;
  v.stream = shape_.stream(layer, kv_head);
  v.prefill = prefill;
  v.n = n;
  v.page_size = shape_.page_size;
  v.resident = resident_.data() + base(v.stream);
  v.where = where_.data() + base(v.stream);
  v.bits = bits_.data() + base(v.stream);
  v.n_resident = n_res_[v.stream];
  v.hbm_units = units_[v.stream];
  v.budget = budget_[v.stream];
  v.head_dim = shape_.head_dim;
  v.group = shape_.group;
  return v;
}

void Ledger::bad(const policy::StreamView& v, const std::string& what) const {
  throw Error(who_ + " at step " + std::to_string(v.step) + ", layer " + std::to_string(v.layer) + ", KV head " +
              std::to_string(v.kv_head) + ": " + what);
}

void Ledger::apply(policy::StreamView& v, const policy::Plan& plan, Moves& on) {
  const uint32_t s = v.stream;
  uint8_t* where = where_.data() + base(s);
  uint8_t* bits = bits_.data() + base(s);
  for (uint32_t j : plan.evict) {
    if (j >= v.n || where[j] == policy::kEvicted) bad(v, "evicted position " + std::to_string(j) + ", not cached");
    const uint8_t was = where[j];
    if (was == policy::kHbm) set_hbm(s, j, false);
    else --n_host_[s];
    where[j] = policy::kEvicted;
    on.evicted(s, j, was);
  }
  for (uint32_t j : plan.offload) {
    if (j >= v.n || where[j] != policy::kHbm) bad(v, "offloaded position " + std::to_string(j) + ", not in HBM");
    set_hbm(s, j, false);
    where[j] = policy::kHost;
    ++n_host_[s];
    on.offloaded(s, j, bits[j]);
  }
  for (const auto& [j, nb] : plan.quantize) {
    if (j >= v.n || where[j] != policy::kHbm) bad(v, "quantized position " + std::to_string(j) + ", not in HBM");
    if (!(nb == 8 || nb == 4 || nb == 2) || nb >= bits[j])
      bad(v, "quantized position " + std::to_string(j) + " to " + std::to_string(nb) + " bits from " + std::to_string(bits[j]));
    set_hbm(s, j, false);
    bits[j] = nb;
    set_hbm(s, j, true);
    on.quantized(s, j, nb);
  }
  for (uint32_t j : plan.fetch) {
    if (j >= v.n || where[j] != policy::kHost) bad(v, "fetched position " + std::to_string(j) + ", not on host");
    where[j] = policy::kHbm;
    --n_host_[s];
    set_hbm(s, j, true);
    on.fetched(s, j, bits[j]);
  }
  if (units_[s] > budget_[s] + 1e-9)
    bad(v, "left " + std::to_string(units_[s]) + " entries in HBM, over its budget of " + std::to_string(budget_[s]));
  if (shape_.page_size > 1)
    for (const auto* list : {&plan.evict, &plan.offload})
      for (uint32_t j : *list)
        if (page_count_[static_cast<size_t>(s) * n_pages_ + j / PB_] != 0)
          bad(v, "moved position " + std::to_string(j) + " without the rest of its page of " + std::to_string(shape_.page_size));
  v.n_resident = n_res_[s];
  v.hbm_units = units_[s];
}

}  // namespace kvscope::sim
