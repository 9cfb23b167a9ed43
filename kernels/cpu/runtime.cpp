#include "kernels/cpu/runtime.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/io/error.h"

namespace kvscope::cpu {

namespace {

int default_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Rotates one head of head_dim values at position p with the precomputed table row.
void rope_head(float* x, const float* cs, const float* sn, int head_dim, RopeLayout layout) {
  const int half = head_dim / 2;
  if (layout == RopeLayout::Interleaved) {
    for (int i = 0; i < half; ++i) {
      const float a = x[2 * i], b = x[2 * i + 1];
      x[2 * i] = a * cs[i] - b * sn[i];
      x[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  } else {
    for (int i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * cs[i] - b * sn[i];
      x[i + half] = a * sn[i] + b * cs[i];
    }
  }
}

}  // namespace

Runtime::Runtime(const Model& model, RuntimeOptions opt)
    : model_(model), c_(model.config), threads_(default_threads(opt.threads)) {
  const int max_tokens = opt.max_tokens > 0 ? opt.max_tokens : c_.max_seq_len;
  kv_ = KVCache(c_.n_layers, c_.n_kv_heads, c_.head_dim, opt.page_size, max_tokens);
  const int half = c_.head_dim / 2;
  rope_cos_.resize(static_cast<size_t>(max_tokens) * half);
  rope_sin_.resize(static_cast<size_t>(max_tokens) * half);
  for (int p = 0; p < max_tokens; ++p)
    for (int i = 0; i < half; ++i) {
      // freq_i = theta^(-2i/head_dim), angle in double for accuracy at long contexts.
      const double freq = std::pow(static_cast<double>(c_.rope_theta), -2.0 * i / c_.head_dim);
      const double a = p * freq;
      rope_cos_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(a));
      rope_sin_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(a));
    }
}

void Runtime::reset() {
  kv_.clear();
  pos_ = 0;
}

void Runtime::attention(int layer, int T, const float* q, float* out, const float* k_new, const float* v_new) {
  const int hd = c_.head_dim, H = c_.n_heads, group = c_.group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int B = kv_.page_size();
  const int max_slots = kv_.max_tokens() + B;
  const int pairs = T * H;
  const int64_t slots = kv_.n_slots(layer, 0);
  // Without an observer each thread reuses one score row. With one, a block of rows is
  // computed in parallel and kept, then reported in (query, head) order on this thread.
  const int block = observer_ ? std::max(1, std::min(pairs, (1 << 22) / max_slots)) : pairs;
  if (observer_) {
    slot_pos_.resize(max_slots);
    lse_.resize(block);
  }
  for (int b0 = 0; b0 < pairs; b0 += block) {
    const int nb = std::min(block, pairs - b0);
    const int nt = (threads_ > 1 && static_cast<int64_t>(nb) * slots * hd >= (1 << 15)) ? std::min(threads_, nb) : 1;
    scores_.resize(static_cast<size_t>(observer_ ? nb : nt) * max_slots);

    parallel_for(nb, nt, [&](int i) {
      const int pi = b0 + i;
      const int t = pi / H, h = pi % H, kvh = h / group;
      const int32_t qpos = pos_ + t;
      const float* qh = q + static_cast<size_t>(t) * H * hd + static_cast<size_t>(h) * hd;
      const int row = observer_ ? i : thread_index();
      float* sc = scores_.data() + static_cast<size_t>(row) * max_slots;
      const int n = kv_.n_slots(layer, kvh);
      // Pass 1: scores of live, causal slots; -inf elsewhere.
      const int n_pages = kv_.n_pages(layer, kvh);
      float mx = -INFINITY;
      for (int pg = 0; pg < n_pages; ++pg) {
        const KVCache::PageView pv = kv_.page(layer, kvh, pg);
        float* sp = sc + static_cast<size_t>(pg) * B;
        int j = 0;
        for (; j + 8 <= pv.n; j += 8) simd::dot_rows8(qh, pv.k + static_cast<size_t>(j) * hd, hd, sp + j);
        for (; j < pv.n; ++j) sp[j] = simd::dot(qh, pv.k + static_cast<size_t>(j) * hd, hd);
        for (j = 0; j < pv.n; ++j) {
          const float v = (pv.live[j] && pv.pos[j] <= qpos) ? sp[j] * scale : -INFINITY;
          sp[j] = v;
          mx = v > mx ? v : mx;
        }
      }
      // Pass 2: softmax (an empty set of usable slots gives zero output and lse = -inf).
      const double sum = mx == -INFINITY ? 0.0 : simd::exp_shift_sum(sc, n, mx);
      const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
      // Pass 3: weights-weighted V rows, page by page, then one scale by 1/sum. An
      // observer gets normalised probabilities.
      float* o = out + static_cast<size_t>(t) * H * hd + static_cast<size_t>(h) * hd;
      std::fill(o, o + hd, 0.0f);
      for (int pg = 0; pg < n_pages; ++pg) {
        const KVCache::PageView pv = kv_.page(layer, kvh, pg);
        simd::weighted_rows(sc + static_cast<size_t>(pg) * B, pv.v, pv.n, hd, o);
      }
      for (int d = 0; d < hd; ++d) o[d] *= inv;
      if (observer_)
        for (int s = 0; s < n; ++s) sc[s] *= inv;
      if (observer_) lse_[i] = sum > 0 ? mx + static_cast<float>(std::log(sum)) : -INFINITY;
    });
    if (!observer_) continue;
    for (int pi = b0; pi < b0 + nb; ++pi) {
      const int t = pi / H, h = pi % H, kvh = h / group;
      const int n = kv_.n_slots(layer, kvh);
      for (int s = 0; s < n; ++s) slot_pos_[s] = kv_.pos(layer, kvh, s);
      AttentionRecord r;
      r.layer = layer;
      r.q_head = h;
      r.kv_head = kvh;
      r.query_pos = pos_ + t;
      r.probs = {scores_.data() + static_cast<size_t>(pi - b0) * max_slots, static_cast<size_t>(n)};
      r.slot_pos = {slot_pos_.data(), static_cast<size_t>(n)};
      r.lse = lse_[pi - b0];
      r.q = q + static_cast<size_t>(t) * H * hd + static_cast<size_t>(h) * hd;
      r.k = k_new + static_cast<size_t>(t) * c_.kv_dim() + static_cast<size_t>(kvh) * hd;
      r.v = v_new + static_cast<size_t>(t) * c_.kv_dim() + static_cast<size_t>(kvh) * hd;
      observer_->on_attention(r);
    }
  }
}

std::span<const float> Runtime::forward(std::span<const int32_t> tokens, bool all_logits) {
  const int T = static_cast<int>(tokens.size());
  if (T == 0) throw Error("forward: no tokens");
  if (pos_ + T > kv_.max_tokens())
    throw Error("forward: positions " + std::to_string(pos_) + ".." + std::to_string(pos_ + T - 1) +
                " exceed the context of " + std::to_string(kv_.max_tokens()) + " tokens");
  const int d = c_.dim, hd = c_.head_dim, qd = c_.q_dim(), kvd = c_.kv_dim(), hid = c_.hidden_dim, V = c_.vocab_size;
  const Weights& w = model_.weights;
  x_.resize(static_cast<size_t>(T) * d);
  xb_.resize(static_cast<size_t>(T) * std::max(d, qd));
  q_.resize(static_cast<size_t>(T) * qd);
  k_.resize(static_cast<size_t>(T) * kvd);
  v_.resize(static_cast<size_t>(T) * kvd);
  att_out_.resize(static_cast<size_t>(T) * std::max(qd, d));
  gate_.resize(static_cast<size_t>(T) * hid);
  up_.resize(static_cast<size_t>(T) * hid);

  for (int t = 0; t < T; ++t) {
    const int32_t tok = tokens[t];
    if (tok < 0 || tok >= V) throw Error("forward: token id " + std::to_string(tok) + " outside the vocabulary");
    std::memcpy(&x_[static_cast<size_t>(t) * d], &w.tok_embedding[static_cast<size_t>(tok) * d], sizeof(float) * d);
  }
  const int half = hd / 2;
  for (int l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    for (int t = 0; t < T; ++t) rmsnorm(&x_[static_cast<size_t>(t) * d], lw.attn_norm.data(), &xb_[static_cast<size_t>(t) * d], d, c_.norm_eps);
    matmul(lw.wq.data(), xb_.data(), q_.data(), T, d, qd, threads_);
    matmul(lw.wk.data(), xb_.data(), k_.data(), T, d, kvd, threads_);
    matmul(lw.wv.data(), xb_.data(), v_.data(), T, d, kvd, threads_);
    for (int t = 0; t < T; ++t) {
      const size_t p = static_cast<size_t>(pos_ + t) * half;
      for (int h = 0; h < c_.n_heads; ++h)
        rope_head(&q_[static_cast<size_t>(t) * qd + static_cast<size_t>(h) * hd], &rope_cos_[p], &rope_sin_[p], hd, c_.rope);
      for (int h = 0; h < c_.n_kv_heads; ++h)
        rope_head(&k_[static_cast<size_t>(t) * kvd + static_cast<size_t>(h) * hd], &rope_cos_[p], &rope_sin_[p], hd, c_.rope);
      kv_.append(l, pos_ + t, &k_[static_cast<size_t>(t) * kvd], &v_[static_cast<size_t>(t) * kvd]);
    }
    if (hook_) hook_->before_attention(l, pos_, T, q_.data());
    attention(l, T, q_.data(), att_out_.data(), k_.data(), v_.data());
    if (hook_) hook_->after_attention(l, pos_, T);
    matmul(lw.wo.data(), att_out_.data(), xb_.data(), T, qd, d, threads_);
    for (size_t i = 0; i < static_cast<size_t>(T) * d; ++i) x_[i] += xb_[i];

    for (int t = 0; t < T; ++t) rmsnorm(&x_[static_cast<size_t>(t) * d], lw.ffn_norm.data(), &xb_[static_cast<size_t>(t) * d], d, c_.norm_eps);
    matmul(lw.w_gate.data(), xb_.data(), gate_.data(), T, d, hid, threads_);
    matmul(lw.w_up.data(), xb_.data(), up_.data(), T, d, hid, threads_);
    swiglu(gate_.data(), up_.data(), T * hid);
    matmul(lw.w_down.data(), gate_.data(), xb_.data(), T, hid, d, threads_);
    for (size_t i = 0; i < static_cast<size_t>(T) * d; ++i) x_[i] += xb_[i];
  }
  pos_ += T;

  const int first = all_logits ? 0 : T - 1;
  const int n_out = T - first;
  for (int t = first; t < T; ++t)
    rmsnorm(&x_[static_cast<size_t>(t) * d], w.final_norm.data(), &xb_[static_cast<size_t>(t - first) * d], d, c_.norm_eps);
  logits_.resize(static_cast<size_t>(n_out) * V);
  matmul(w.classifier().data(), xb_.data(), logits_.data(), n_out, d, V, threads_);
  return logits_;
}

int32_t argmax(std::span<const float> v) {
  int32_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = static_cast<int32_t>(i);
  return best;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (temperature_ <= 0.0f) return argmax(logits);
  const size_t n = logits.size();
  buf_.resize(n);
  float mx = -INFINITY;
  for (float l : logits) mx = std::max(mx, l);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    const float p = std::exp((logits[i] - mx) / temperature_);
    buf_[i] = {p, static_cast<int32_t>(i)};
    sum += p;
  }
  // Nucleus: highest probabilities first (ties by id), keep the smallest prefix with mass >= top_p.
  std::sort(buf_.begin(), buf_.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  size_t keep = n;
  double acc = 0, kept = 0;
  if (top_p_ < 1.0f) {
    for (size_t i = 0; i < n; ++i) {
      acc += buf_[i].first / sum;
      if (acc >= top_p_) {
        keep = i + 1;
        break;
      }
    }
  }
  for (size_t i = 0; i < keep; ++i) kept += buf_[i].first;
  // 53 random bits -> uniform double in [0, 1): the same on every platform.
  const double u = static_cast<double>(rng_() >> 11) * 0x1p-53 * kept;
  double c = 0;
  for (size_t i = 0; i < keep; ++i) {
    c += buf_[i].first;
    if (u < c) return buf_[i].second;
  }
  return buf_[keep - 1].second;
}

}  // namespace kvscope::cpu
