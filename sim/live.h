#pragma once
// The live policy run (docs/validation.md): the real model on the CPU runtime with one
// policy enforced in its real KV cache, through the same policy objects and the same calls
// the replay makes (policies/policy.h) — entries evicted from the cache, offloaded to a
// host copy and fetched back, stored at fewer bits — and the quality measurement of a
// candidate against the full-cache run on the same tokens.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/runtime.h"
#include "policies/policy.h"
#include "sim/ledger.h"
#include "sim/replay.h"

namespace kvscope::sim {

// Whether a policy can run live; when not, `why` says so (offline bounds read the future
// from a trace; page-cache policies replay page-access streams, not cache plans).
bool live_supported(const std::string& policy, std::string* why);

struct LiveStats {
  uint64_t evictions = 0, offloads = 0, fetches = 0, quantized = 0;
  uint64_t bytes_offloaded = 0, bytes_fetched = 0;  // at storage bits, as the replay counts
  double mean_hbm_entries = 0;                      // per stream, over observed decode steps
};

// Drives one policy on a runtime's cache. Construct on a reset runtime; it installs itself
// as the runtime's KV hook and attention observer and removes itself when destroyed.
// Uses ReplayConfig's policy, params, budget, page_size, agg, layer/stream budgets. The
// runtime's cache page size must be the run's page size when that is > 1.
class LiveDriver final : public cpu::KVHook, public cpu::AttentionObserver {
 public:
  // quantize_keys = false: quantized entries keep their K at full precision (diagnostic:
  // the replay models only V's quantization error).
  LiveDriver(cpu::Runtime& rt, const ReplayConfig& cfg, uint32_t prefill_window = 32, bool quantize_keys = true);
  ~LiveDriver() override;
  LiveDriver(const LiveDriver&) = delete;
  LiveDriver& operator=(const LiveDriver&) = delete;

  // Step 0: the prompt with the full cache, then observe / allocate / plan on every stream.
  std::span<const float> prefill(std::span<const int32_t> prompt);
  // Decode step: one token, the policy acting per layer before its attention.
  std::span<const float> decode(int32_t token);

  const LiveStats& stats() const { return stats_; }
  const nlohmann::json& params() const { return params_; }
  // Bookkeeping of one stream: entries in HBM and their 16-bit units.
  uint32_t n_resident(uint32_t layer, uint32_t kv_head) const { return book_->n_resident(shape_.stream(layer, kv_head)); }
  double hbm_units(uint32_t layer, uint32_t kv_head) const { return book_->units(shape_.stream(layer, kv_head)); }
  uint32_t budget(uint32_t layer, uint32_t kv_head) const { return book_->budgets()[shape_.stream(layer, kv_head)]; }

  void before_attention(int layer, int32_t first_pos, int T, const float* q) override;
  void after_attention(int layer, int32_t first_pos, int T) override;
  void on_attention(const cpu::AttentionRecord& r) override;

 private:
  void run_plan(policy::StreamView& v);

  cpu::Runtime& rt_;
  ReplayConfig cfg_;
  nlohmann::json params_;
  const policy::PolicyInfo* info_ = nullptr;
  std::unique_ptr<policy::Policy> pol_;
  policy::Shape shape_;
  policy::Plan plan_;
  uint32_t ctx_ = 0, prefill_window_ = 32, prompt_len_ = 0, step_ = 0;
  bool in_prefill_ = false, need_qk_ = false, quantize_keys_ = true;
  std::unique_ptr<Ledger> book_;  // where every entry is, as the replay books it
  std::vector<float> keys_;               // [S][ctx][hd] (query-aware policies)
  std::vector<double> colsum_;            // prefill: [H][P]
  std::vector<float> window_rows_;        // prefill: [H][nw][P]
  std::vector<float> rows_, agg_, lse_, tmp_;  // decode: rows_ [H][ctx], lse_ [H]
  std::vector<float> window_agg_;         // [nw][ctx]
  LiveStats stats_;
  double hbm_sum_ = 0, hbm_n_ = 0;
};

// The quality measurement (docs/validation.md). The reference: the full cache greedily
// generates `tokens` + 1 tokens after the prompt; decode step s feeds continuation token s.
struct Reference {
  std::vector<int32_t> prompt, continuation;  // continuation: tokens + 1
  std::vector<float> logits;                  // [tokens][vocab] of decode steps 1..tokens
  uint32_t vocab = 0;
};
Reference reference_run(const Model& model, std::span<const int32_t> prompt, uint32_t tokens, int threads);

struct Quality {
  double kl = 0, top1 = 0, nll = 0, nll_full = 0;  // sums over steps (divide by steps)
  uint64_t steps = 0;
  double decode_seconds = 0;
  LiveStats stats;
  std::vector<float> logits;  // [steps][vocab] when keep_logits
};
// Teacher-forces the reference's continuation through a live run of `cfg`.
Quality candidate_run(const Model& model, const Reference& ref, const ReplayConfig& cfg, int threads, bool keep_logits = false,
                      bool quantize_keys = true);
// Adds one step's comparison of candidate logits q against full logits p (vocab V) and
// the next token's NLL under both.
void score_step(const float* p, const float* q, uint32_t V, int32_t next, Quality& out);

// Spearman rank correlation, ties given their average rank; NaN when either side is
// constant or fewer than 2 values.
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace kvscope::sim
