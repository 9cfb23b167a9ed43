#pragma once
// CPU model runtime: prefill and incremental decode of a Llama-family model over an
// explicit paged KV cache (kernels/cpu/kv_cache.h). The reference the GPU path and the
// trace capture are checked against.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "kernels/cpu/kv_cache.h"
#include "kernels/model/model.h"

namespace kvscope::cpu {

// One query head's attention at one query position, as the attention loop computed it.
// probs[s] is the probability of stream slot s (dead slots and slots after the query
// position: 0); slot_pos[s] is that slot's token position.
struct AttentionRecord {
  int layer = 0;
  int q_head = 0;
  int kv_head = 0;
  int32_t query_pos = 0;
  std::span<const float> probs;
  std::span<const int32_t> slot_pos;
  float lse = 0;                 // log-sum-exp of the scaled scores of the live, causal slots
  const float* q = nullptr;      // head_dim floats, RoPE applied
  const float* k = nullptr;      // this token's K row of kv_head (RoPE applied)
  const float* v = nullptr;      // this token's V row of kv_head
};

// Receives every AttentionRecord in (layer, query position, q_head) order, on the
// calling thread. Called once per head and query, never per token.
class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  virtual void on_attention(const AttentionRecord& r) = 0;
};

// Lets a driver act on the KV cache at the right moment of each layer (the live policy
// run, sim/live.h): before_attention() is called once the batch's K/V rows of `layer` are
// in the cache and before its attention; after_attention() once the attention (and every
// AttentionRecord of the layer) is done. q: [T][n_heads][head_dim], RoPE applied;
// positions first_pos..first_pos+T-1. Called on the calling thread.
class KVHook {
 public:
  virtual ~KVHook() = default;
  virtual void before_attention(int layer, int32_t first_pos, int T, const float* q) = 0;
  virtual void after_attention(int layer, int32_t first_pos, int T) {}
};

struct RuntimeOptions {
  int threads = 0;       // 0: all hardware threads
  int page_size = 16;    // KV cache page size (tokens)
  int max_tokens = 0;    // KV capacity per stream; 0: the model's max_seq_len
};

class Runtime {
 public:
  Runtime(const Model& model, RuntimeOptions opt = {});

  // Runs `tokens` at positions pos()..pos()+n-1, appending their K/V to the cache.
  // Returns the logits of the last token (vocab floats), or of every token
  // ([n][vocab]) when all_logits is set.
  std::span<const float> forward(std::span<const int32_t> tokens, bool all_logits = false);
  std::span<const float> prefill(std::span<const int32_t> tokens) { return forward(tokens, false); }
  std::span<const float> decode(int32_t token) { return forward({&token, 1}, false); }

  int32_t pos() const { return pos_; }
  void reset();
  KVCache& kv() { return kv_; }
  const KVCache& kv() const { return kv_; }
  const Model& model() const { return model_; }
  int threads() const { return threads_; }
  void set_observer(AttentionObserver* o) { observer_ = o; }
  void set_kv_hook(KVHook* h) { hook_ = h; }

 private:
  void attention(int layer, int T, const float* q, float* out, const float* k_new, const float* v_new);

  const Model& model_;
  const ModelConfig& c_;
  int threads_;
  KVCache kv_;
  int32_t pos_ = 0;
  AttentionObserver* observer_ = nullptr;
  KVHook* hook_ = nullptr;
  std::vector<float> rope_cos_, rope_sin_;  // [max_tokens][head_dim/2]
  // Activations, resized to the batch of the current call.
  std::vector<float> x_, xb_, q_, k_, v_, att_out_, gate_, up_, logits_, scores_;
  std::vector<int32_t> slot_pos_;
  std::vector<float> lse_;
};

// Greedy when temperature == 0; otherwise softmax(logits / T) restricted to the top-p
// nucleus, sampled with a 64-bit Mersenne Twister (own uniform mapping: portable bytes).
class Sampler {
 public:
  Sampler(float temperature, float top_p, uint64_t seed) : temperature_(temperature), top_p_(top_p), rng_(seed) {}
  int32_t sample(std::span<const float> logits);

 private:
  float temperature_, top_p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> buf_;
};

int32_t argmax(std::span<const float> v);

}  // namespace kvscope::cpu
