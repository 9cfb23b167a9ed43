// The live policy run and the quality measurement (sim/live.h, docs/validation.md).
#include "sim/live.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/io/error.h"
#include "policies/registry.h"

namespace kvscope::sim {

using nlohmann::json;

bool live_supported(const std::string& policy, std::string* why) {
  const policy::PolicyInfo& info = policy::find(policy);
  std::string w;
  if (info.kind == "cache" || !info.make)
    w = "a page-cache policy (kind cache): it replays page-access streams, not cache plans; not runnable live";
  else if (info.needs & policy::kNeedsFuture)
    w = "an offline bound: it reads the future attention from the trace, which a live run does not have";
  if (why) *why = w;
  return w.empty();
}

LiveDriver::LiveDriver(cpu::Runtime& rt, const ReplayConfig& cfg, uint32_t prefill_window, bool quantize_keys)
    : rt_(rt), cfg_(cfg), prefill_window_(prefill_window), quantize_keys_(quantize_keys) {
  std::string why;
  if (!live_supported(cfg.policy, &why)) throw Error("live: policy " + cfg.policy + ": " + why);
  const ModelConfig& mc = rt.model().config;
  const uint32_t L = static_cast<uint32_t>(mc.n_layers), H = static_cast<uint32_t>(mc.n_kv_heads);
  ctx_ = static_cast<uint32_t>(rt.kv().max_tokens());
  params_ = validate_run(cfg, ctx_, L, H, "live: " + cfg.policy + ": ");
  if (cfg.page_size > 1 && static_cast<uint32_t>(rt.kv().page_size()) != cfg.page_size)
    throw Error("live: " + cfg.policy + ": page size " + std::to_string(cfg.page_size) + " needs a cache with pages of " +
                std::to_string(cfg.page_size) + " (the runtime has " + std::to_string(rt.kv().page_size()) + ")");
  if (rt.pos() != 0) throw Error("live: the runtime must be reset before a live run");
  info_ = &policy::find(cfg.policy);
  need_qk_ = info_->needs & policy::kNeedsQK;
  shape_ = policy::Shape{L,
                         H,
                         ctx_,
                         static_cast<uint32_t>(mc.head_dim),
                         static_cast<uint32_t>(mc.group()),
                         cfg.page_size,
                         nullptr,
                         cfg.agg == Aggregation::Max    ? policy::GroupAgg::Max
                         : cfg.agg == Aggregation::Mean ? policy::GroupAgg::Mean
                                                        : policy::GroupAgg::Sum};
  pol_ = info_->make(params_);
  pol_->reset(shape_);
  const uint32_t S = shape_.streams();
  book_ = std::make_unique<Ledger>(shape_, ctx_, stream_budgets(cfg, L, H, cfg.policy == "full" ? ctx_ : cfg.budget),
                                   "live: policy " + cfg.policy);
  const size_t cells = static_cast<size_t>(S) * ctx_;
  if (need_qk_) keys_.assign(cells * shape_.head_dim, 0.0f);
  const uint32_t Hq = static_cast<uint32_t>(mc.n_heads);
  rows_.assign(static_cast<size_t>(Hq) * ctx_, 0.0f);
  lse_.assign(Hq, 0.0f);
  agg_.assign(ctx_, 0.0f);
  rt.set_kv_hook(this);
  rt.set_observer(this);
}

LiveDriver::~LiveDriver() {
  rt_.set_kv_hook(nullptr);
  rt_.set_observer(nullptr);
}

namespace {

// The real cache follows the ledger: every booked move is done to it too.
struct CacheMoves final : Ledger::Moves {
  cpu::KVCache& kv;
  const policy::Shape& shape;
  LiveStats& stats;
  bool quantize_keys;
  CacheMoves(cpu::KVCache& k, const policy::Shape& sh, LiveStats& st, bool qk) : kv(k), shape(sh), stats(st), quantize_keys(qk) {}
  int layer(uint32_t s) const { return static_cast<int>(s / shape.n_kv_heads); }
  int head(uint32_t s) const { return static_cast<int>(s % shape.n_kv_heads); }
  void evicted(uint32_t s, uint32_t j, uint8_t was) override {
    if (was == policy::kHbm) {
      if (!kv.evict_token(layer(s), head(s), static_cast<int32_t>(j)))
        throw Error("live: position " + std::to_string(j) + " of stream " + std::to_string(s) + " not live in the cache");
    } else {
      kv.drop_host_token(layer(s), head(s), static_cast<int32_t>(j));
    }
    ++stats.evictions;
  }
  void offloaded(uint32_t s, uint32_t j, uint8_t bits) override {
    kv.offload_token(layer(s), head(s), static_cast<int32_t>(j));
    ++stats.offloads;
    stats.bytes_offloaded += kv.entry_bytes(bits);
  }
  void quantized(uint32_t s, uint32_t j, uint8_t bits) override {
    kv.quantize_token(layer(s), head(s), static_cast<int32_t>(j), bits, quantize_keys);
    ++stats.quantized;
  }
  void fetched(uint32_t s, uint32_t j, uint8_t bits) override {
    kv.fetch_token(layer(s), head(s), static_cast<int32_t>(j));
    ++stats.fetches;
    stats.bytes_fetched += kv.entry_bytes(bits);
  }
};

}  // namespace

// plan(), then the moves booked and done to the real cache in the replay's order (evict,
// offload, quantize, fetch), checked by the ledger as the replay checks them.
void LiveDriver::run_plan(policy::StreamView& v) {
  plan_.clear();
  pol_->plan(v, plan_);
  const int l = static_cast<int>(v.layer), h = static_cast<int>(v.kv_head);
  cpu::KVCache& kv = rt_.kv();
  CacheMoves moves(kv, shape_, stats_, quantize_keys_);
  book_->apply(v, plan_, moves);
  if (!plan_.evict.empty()) kv.reclaim_dead_pages(l, h);
  if (static_cast<uint32_t>(kv.n_live(l, h)) != book_->n_resident(v.stream))
    book_->bad(v, "the cache holds " + std::to_string(kv.n_live(l, h)) + " live entries, the ledger " +
                      std::to_string(book_->n_resident(v.stream)));
}

std::span<const float> LiveDriver::prefill(std::span<const int32_t> prompt) {
  if (step_ != 0 || rt_.pos() != 0) throw Error("live: prefill twice, or on a runtime that has run already");
  const uint32_t P = static_cast<uint32_t>(prompt.size());
  if (P == 0 || P > ctx_) throw Error("live: a prompt of " + std::to_string(P) + " tokens for a context of " + std::to_string(ctx_));
  prompt_len_ = P;
  const uint32_t Hq = static_cast<uint32_t>(rt_.model().config.n_heads);
  const uint32_t nw = std::min(prefill_window_, P);
  colsum_.assign(static_cast<size_t>(Hq) * P, 0.0);
  window_rows_.assign(static_cast<size_t>(Hq) * nw * P, 0.0f);
  window_agg_.assign(static_cast<size_t>(nw) * ctx_, 0.0f);
  tmp_.assign(static_cast<size_t>(Hq) * P, 0.0f);
  in_prefill_ = true;
  std::span<const float> logits;
  try {
    logits = rt_.forward(prompt);
  } catch (...) {
    in_prefill_ = false;
    throw;
  }
  in_prefill_ = false;
  std::vector<uint32_t> proposed = book_->budgets();
  const policy::Allocation a{&shape_, cfg_.policy == "full" ? ctx_ : cfg_.budget, P};
  pol_->allocate(a, proposed);
  check_allocation("live: policy " + cfg_.policy, book_->budgets(), proposed, ctx_, shape_.page_size);
  book_->budgets() = proposed;
  for (uint32_t l = 0; l < shape_.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
      policy::StreamView v = book_->view(step_, l, kvh, P, true);
      run_plan(v);
    }
  step_ = 1;
  return logits;
}

std::span<const float> LiveDriver::decode(int32_t token) {
  if (step_ == 0) throw Error("live: decode before prefill");
  auto logits = rt_.decode(token);
  ++step_;
  return logits;
}

void LiveDriver::before_attention(int layer, int32_t first_pos, int T, const float* q) {
  if (in_prefill_) return;
  if (T != 1) throw Error("live: a decode step runs one token at a time (got " + std::to_string(T) + ")");
  const uint32_t l = static_cast<uint32_t>(layer), j = static_cast<uint32_t>(first_pos), hd = shape_.head_dim, G = shape_.group;
  const cpu::KVCache& kv = rt_.kv();
  for (uint32_t kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
    const uint32_t s = shape_.stream(l, kvh);
    book_->append(s, j);
    policy::StreamView v = book_->view(step_, l, kvh, j + 1, false);
    if (need_qk_) {
      const int slot = kv.n_slots(layer, static_cast<int>(kvh)) - 1;
      if (slot < 0 || kv.pos(layer, static_cast<int>(kvh), slot) != first_pos) throw Error("live: the new entry is not the stream's last slot");
      const float* k = kv.k(layer, static_cast<int>(kvh), slot);
      std::copy(k, k + hd, keys_.begin() + (static_cast<size_t>(s) * ctx_ + j) * hd);
      v.q = q + static_cast<size_t>(kvh) * G * hd;
      v.keys = keys_.data() + static_cast<size_t>(s) * ctx_ * hd;
    }
    run_plan(v);
  }
}

void LiveDriver::on_attention(const cpu::AttentionRecord& r) {
  const uint32_t h = static_cast<uint32_t>(r.q_head), n = static_cast<uint32_t>(r.probs.size());
  if (in_prefill_) {
    const uint32_t P = prompt_len_, nw = std::min(prefill_window_, P), t = static_cast<uint32_t>(r.query_pos);
    double* cs = colsum_.data() + static_cast<size_t>(h) * P;
    for (uint32_t s = 0; s < n; ++s) cs[r.slot_pos[s]] += r.probs[s];
    if (t + nw >= P) {
      float* w = window_rows_.data() + (static_cast<size_t>(h) * nw + (t + nw - P)) * P;
      for (uint32_t s = 0; s < n; ++s) w[r.slot_pos[s]] = r.probs[s];
    }
    return;
  }
  float* row = rows_.data() + static_cast<size_t>(h) * ctx_;
  std::fill(row, row + r.query_pos + 1, 0.0f);
  for (uint32_t s = 0; s < n; ++s) row[r.slot_pos[s]] = r.probs[s];
  lse_[h] = r.lse;
}

void LiveDriver::after_attention(int layer, int32_t first_pos, int T) {
  const uint32_t l = static_cast<uint32_t>(layer), G = shape_.group, hd = shape_.head_dim;
  if (in_prefill_) {
    const uint32_t P = prompt_len_, nw = std::min(prefill_window_, P);
    const cpu::KVCache& kv = rt_.kv();
    for (size_t i = 0; i < colsum_.size(); ++i) tmp_[i] = static_cast<float>(colsum_[i]);
    for (uint32_t kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
      const uint32_t s = shape_.stream(l, kvh);
      for (uint32_t j = 0; j < P; ++j) book_->append(s, j);
      if (need_qk_)
        for (int slot = 0; slot < kv.n_slots(layer, static_cast<int>(kvh)); ++slot) {
          const float* k = kv.k(layer, static_cast<int>(kvh), slot);
          const size_t p = static_cast<size_t>(kv.pos(layer, static_cast<int>(kvh), slot));
          std::copy(k, k + hd, keys_.begin() + (static_cast<size_t>(s) * ctx_ + p) * hd);
        }
      policy::StreamView v = book_->view(step_, l, kvh, P, true);
      for (uint32_t g = 0; g < G; ++g)
        fold_head(agg_.data(), tmp_.data() + static_cast<size_t>(kvh * G + g) * P, P, g == 0, cfg_.agg);
      scale_group(agg_.data(), P, cfg_.agg, G);
      for (uint32_t r = 0; r < nw; ++r) {
        float* w = window_agg_.data() + static_cast<size_t>(r) * ctx_;
        for (uint32_t g = 0; g < G; ++g)
          fold_head(w, window_rows_.data() + (static_cast<size_t>(kvh * G + g) * nw + r) * P, P, g == 0, cfg_.agg);
        scale_group(w, P, cfg_.agg, G);
      }
      v.attn = agg_.data();
      v.head_attn = tmp_.data() + static_cast<size_t>(kvh) * G * P;
      v.head_stride = P;
      v.window = nw ? window_agg_.data() : nullptr;
      v.n_window = nw;
      v.window_stride = ctx_;
      v.keys = need_qk_ ? keys_.data() + static_cast<size_t>(s) * ctx_ * hd : nullptr;
      pol_->observe(v);
    }
    std::fill(colsum_.begin(), colsum_.end(), 0.0);
    std::fill(window_rows_.begin(), window_rows_.end(), 0.0f);
    return;
  }
  const uint32_t n = static_cast<uint32_t>(first_pos) + 1;
  for (uint32_t kvh = 0; kvh < shape_.n_kv_heads; ++kvh) {
    const uint32_t s = shape_.stream(l, kvh);
    for (uint32_t g = 0; g < G; ++g)
      fold_head(agg_.data(), rows_.data() + static_cast<size_t>(kvh * G + g) * ctx_, n, g == 0, cfg_.agg);
    scale_group(agg_.data(), n, cfg_.agg, G);
    policy::StreamView v = book_->view(step_, l, kvh, n, false);
    v.attn = agg_.data();
    v.lse = lse_.data() + static_cast<size_t>(kvh) * G;
    v.head_attn = rows_.data() + static_cast<size_t>(kvh) * G * ctx_;
    v.head_stride = ctx_;
    pol_->observe(v);
    hbm_sum_ += book_->n_resident(s), hbm_n_ += 1;
  }
  stats_.mean_hbm_entries = hbm_n_ ? hbm_sum_ / hbm_n_ : 0.0;
}

Reference reference_run(const Model& model, std::span<const int32_t> prompt, uint32_t tokens, int threads) {
  cpu::Runtime rt(model, cpu::RuntimeOptions{.threads = threads});
  const uint32_t ctx = static_cast<uint32_t>(rt.kv().max_tokens()), P = static_cast<uint32_t>(prompt.size());
  if (P == 0) throw Error("validate: the prompt encodes to no tokens");
  if (P >= ctx) throw Error("validate: the prompt has " + std::to_string(P) + " tokens, no room left in the context of " + std::to_string(ctx));
  const uint32_t N = std::min(tokens, ctx - P);
  if (N == 0) throw Error("validate: --tokens must be at least 1");
  Reference ref;
  ref.prompt.assign(prompt.begin(), prompt.end());
  ref.vocab = static_cast<uint32_t>(model.config.vocab_size);
  ref.logits.reserve(static_cast<size_t>(N) * ref.vocab);
  auto logits = rt.forward(prompt);
  ref.continuation.push_back(cpu::argmax(logits));
  for (uint32_t s = 1; s <= N; ++s) {
    logits = rt.decode(ref.continuation[s - 1]);
    ref.logits.insert(ref.logits.end(), logits.begin(), logits.end());
    ref.continuation.push_back(cpu::argmax(logits));
  }
  return ref;
}

void score_step(const float* p, const float* q, uint32_t V, int32_t next, Quality& out) {
  double mp = -std::numeric_limits<double>::infinity(), mq = mp;
  uint32_t ap = 0, aq = 0;
  for (uint32_t i = 0; i < V; ++i) {
    if (p[i] > mp) mp = p[i], ap = i;
    if (q[i] > mq) mq = q[i], aq = i;
  }
  double sp = 0, sq = 0;
  for (uint32_t i = 0; i < V; ++i) sp += std::exp(p[i] - mp), sq += std::exp(q[i] - mq);
  const double lzp = mp + std::log(sp), lzq = mq + std::log(sq);
  double kl = 0;
  for (uint32_t i = 0; i < V; ++i) {
    const double lp = p[i] - lzp, lq = q[i] - lzq;
    kl += std::exp(lp) * (lp - lq);
  }
  out.kl += std::max(0.0, kl);
  out.top1 += ap == aq ? 1.0 : 0.0;
  out.nll += lzq - q[next];
  out.nll_full += lzp - p[next];
  ++out.steps;
}

Quality candidate_run(const Model& model, const Reference& ref, const ReplayConfig& cfg, int threads, bool keep_logits,
                      bool quantize_keys) {
  cpu::RuntimeOptions o;
  o.threads = threads;
  o.page_size = cfg.page_size > 1 ? static_cast<int>(cfg.page_size) : 16;
  cpu::Runtime rt(model, o);
  LiveDriver d(rt, cfg, 32, quantize_keys);
  d.prefill(ref.prompt);
  Quality q;
  const uint32_t N = static_cast<uint32_t>(ref.continuation.size()) - 1, V = ref.vocab;
  if (keep_logits) q.logits.reserve(static_cast<size_t>(N) * V);
  using clk = std::chrono::steady_clock;
  for (uint32_t s = 1; s <= N; ++s) {
    const auto t0 = clk::now();
    auto logits = d.decode(ref.continuation[s - 1]);
    q.decode_seconds += std::chrono::duration<double>(clk::now() - t0).count();
    score_step(ref.logits.data() + static_cast<size_t>(s - 1) * V, logits.data(), V, ref.continuation[s], q);
    if (keep_logits) q.logits.insert(q.logits.end(), logits.begin(), logits.end());
  }
  q.stats = d.stats();
  return q;
}

namespace {
std::vector<double> average_ranks(const std::vector<double>& x) {
  std::vector<size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&x](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> r(x.size());
  for (size_t i = 0; i < idx.size();) {
    size_t k = i;
    while (k + 1 < idx.size() && x[idx[k + 1]] == x[idx[i]]) ++k;
    const double avg = (static_cast<double>(i) + static_cast<double>(k)) / 2.0 + 1.0;
    for (size_t m = i; m <= k; ++m) r[idx[m]] = avg;
    i = k + 1;
  }
  return r;
}
}  // namespace

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (a.size() != b.size() || a.size() < 2) return nan;
  const std::vector<double> ra = average_ranks(a), rb = average_ranks(b);
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n, mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  if (saa == 0 || sbb == 0) return nan;
  return sab / std::sqrt(saa * sbb);
}

}  // namespace kvscope::sim
