// keyformer: Gumbel-regularised accumulated score (Adnan, Arunkumar, Jain, Nair,
// Soloveychik, Kamath, "Keyformer: KV Cache Reduction through Key Tokens Selection for
// Efficient Generative Inference", MLSys 2024). At decode step t, for each query head g of
// the KV head's group, with x_j = log p_{t,g,j} + lse_{t,g} (the scaled logits q.k_j/sqrt(d),
// recovered from the stored row and its log-sum-exp) over the resident entries:
//   f_{t,g,j} = exp((x_j + s zeta_{t,g,j}) / tau_t) / sum_{i resident} exp((x_i + s zeta_{t,g,i}) / tau_t)
//   S_j      += sum_g f_{t,g,j}
//   tau_t     = tau_init + (tau_end - tau_init) t / T           (T = decode steps, Delta tau = (tau_end - tau_init)/T)
// zeta ~ Gumbel(0, 1) = -log(-log u), u from a counter-based hash of (seed, stream, step,
// head, position) (no std distribution: the same on every platform). The rows are
// renormalised over the resident entries, so log p_j differs from the logits by a constant per
// head; softmax is shift-invariant, so f is the same (with s = 0 and tau = 1, f = p and the
// score is H2O's). The most recent round(recent_ratio * budget) entries are kept; the
// smallest S_j among the rest are evicted (ties: lower position). The prefill seeds S_j with
// the prompt's column sums (the trace keeps no per-query logits for the prompt, so the
// prompt phase is the noise-free tau = 1 score). The decode score always sums the group's
// query heads; the prefill seed is aggregated by the run's --agg.
#include <cmath>

#include "kernels/io/rng.h"
#include "policies/builtin.h"
#include "policies/snapkv_select.h"

namespace kvscope::policy {

namespace {

uint64_t mix64(uint64_t x) { return splitmix64(x); }  // a hash of x (kernels/io/rng.h)

class Keyformer final : public Policy {
 public:
  Keyformer(double ratio, double tau_init, double tau_end, double noise, uint64_t seed, uint32_t gen_len)
      : ratio_(ratio), tau_init_(tau_init), tau_end_(tau_end), noise_(noise), seed_(seed), gen_len_(gen_len) {}
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    score_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    z_.assign(stride_, 0.0);
    protect_.assign(stride_, 0);
    page_blocked_.assign(stride_ + 1, 0);
    steps_ = 0;
  }
  void observe(const StreamView& v) override {
    float* s = score_.data() + static_cast<size_t>(v.stream) * stride_;
    if (v.prefill) {
      for (uint32_t j = 0; j < v.n; ++j) s[j] += v.attn[j];
      if (steps_ == 0) steps_ = gen_len_ ? gen_len_ : std::max<uint32_t>(1, stride_ - v.n);
      return;
    }
    const double tau = tau_init_ + (tau_end_ - tau_init_) * std::min<double>(v.step, steps_) / steps_;
    for (uint32_t g = 0; g < v.group; ++g) {
      const float* p = v.head_attn + static_cast<size_t>(g) * v.head_stride;
      const double lse = v.lse ? v.lse[g] : 0.0;
      double zmax = -INFINITY;
      for (uint32_t j = 0; j < v.n; ++j) {
        if (!v.resident[j] || p[j] <= 0.0f) {
          z_[j] = -INFINITY;
          continue;
        }
        double x = std::log(static_cast<double>(p[j])) + lse;
        if (noise_ != 0.0) x += noise_ * gumbel(v.stream, v.step, g, j);
        z_[j] = x / tau;
        zmax = std::max(zmax, z_[j]);
      }
      if (zmax == -INFINITY) continue;
      double sum = 0;
      for (uint32_t j = 0; j < v.n; ++j)
        if (z_[j] != -INFINITY) sum += (z_[j] = std::exp(z_[j] - zmax));
      for (uint32_t j = 0; j < v.n; ++j)
        if (z_[j] != -INFINITY) s[j] += static_cast<float>(z_[j] / sum);
    }
  }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    const uint32_t recent = static_cast<uint32_t>(std::lround(ratio_ * v.budget));
    sel::protect_recent(v, recent, k, protect_, page_blocked_);
    lowest_k(score_.data() + static_cast<size_t>(v.stream) * stride_, v.resident, v.n, k, protect_.data(), plan.evict,
             scratch_, v.page_size);
  }

 private:
  // Gumbel(0, 1) from (seed, stream, step, head, position); u in (0, 1).
  double gumbel(uint32_t stream, uint32_t step, uint32_t g, uint32_t j) const {
    uint64_t h = mix64(seed_ ^ 0x6b65796f726d6572ull);
    h = mix64(h ^ stream);
    h = mix64(h ^ step);
    h = mix64(h ^ g);
    h = mix64(h ^ j);
    const double u = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
    return -std::log(-std::log(u));
  }

  double ratio_, tau_init_, tau_end_, noise_;
  uint64_t seed_;
  uint32_t gen_len_, steps_ = 0;
  uint32_t stride_ = 0;
  std::vector<float> score_;
  std::vector<double> z_;
  std::vector<uint8_t> protect_, page_blocked_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo keyformer_info() {
  return {"keyformer", "score", "accumulated Gumbel-softmax of the logits with an annealed temperature + recent window",
          {{"recent_ratio", 0.3, 0.0, 1.0, false, "share of the budget kept for the most recent entries (paper: 20-30%)"},
           {"tau_init", 1.0, 0.01, 100.0, false, "temperature at the first decode step"},
           {"tau_end", 2.0, 0.01, 100.0, false, "temperature at the last decode step"},
           {"noise", 1.0, 0.0, 100.0, false, "scale of the Gumbel noise (0: none)"},
           {"seed", 0, 0, 4294967295.0, true, "seed of the Gumbel noise"},
           {"gen_len", 0, 0, 1 << 30, true, "decode steps T of the temperature schedule (0: the trace's)"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<Keyformer>(p["recent_ratio"].get<double>(), p["tau_init"].get<double>(),
                                               p["tau_end"].get<double>(), p["noise"].get<double>(),
                                               p["seed"].get<uint64_t>(), p["gen_len"].get<uint32_t>());
          }};
}

}  // namespace kvscope::policy
