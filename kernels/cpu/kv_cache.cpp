#include "kernels/cpu/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/io/error.h"

namespace kvscope::cpu {

double quant_dequant_row(const float* x, float* out, uint32_t d, uint32_t bits) {
  if (d == 0) return 0.0;
  float lo = x[0], hi = x[0];
  for (uint32_t i = 1; i < d; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  const float levels = static_cast<float>((1u << bits) - 1);
  const float scale = hi > lo ? (hi - lo) / levels : 0.0f;
  double num = 0, den = 0;
  for (uint32_t i = 0; i < d; ++i) {
    const float q = scale > 0 ? std::nearbyint((x[i] - lo) / scale) : 0.0f;
    const float y = lo + q * scale;
    num += static_cast<double>(y - x[i]) * (y - x[i]);
    den += static_cast<double>(x[i]) * x[i];
    out[i] = y;
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

KVCache::KVCache(int n_layers, int n_kv_heads, int head_dim, int page_size, int max_tokens)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim), page_size_(page_size), max_tokens_(max_tokens) {
  if (page_size <= 0 || max_tokens <= 0) throw Error("kv cache: page_size and max_tokens must be positive");
  const int pages_per_stream = (max_tokens + page_size - 1) / page_size;
  total_pages_ = n_layers * n_kv_heads * pages_per_stream;
  const size_t slots = static_cast<size_t>(total_pages_) * page_size;
  k_pool_.assign(slots * head_dim, 0.0f);
  v_pool_.assign(slots * head_dim, 0.0f);
  pos_pool_.assign(slots, -1);
  live_pool_.assign(slots, 0);
  bits_pool_.assign(slots, 16);
  streams_.resize(static_cast<size_t>(n_layers) * n_kv_heads);
  clear();
}

void KVCache::clear() {
  for (auto& s : streams_) s = Stream{};
  free_pages_.resize(total_pages_);
  // LIFO with page 0 on top: a fresh cache hands out pages 0, 1, 2, ...
  for (int i = 0; i < total_pages_; ++i) free_pages_[i] = total_pages_ - 1 - i;
  std::fill(live_pool_.begin(), live_pool_.end(), 0);
  std::fill(pos_pool_.begin(), pos_pool_.end(), -1);
  std::fill(bits_pool_.begin(), bits_pool_.end(), 16);
  std::fill(host_pool_.begin(), host_pool_.end(), 0);
  bytes_offloaded_ = bytes_fetched_ = 0;
}

void KVCache::append(int layer, int32_t pos, const float* k, const float* v) {
  for (int h = 0; h < n_kv_heads_; ++h) {
    Stream& s = stream(layer, h);
    if (s.n_slots == static_cast<int>(s.pages.size()) * page_size_) {
      if (static_cast<int>(s.pages.size()) >= (max_tokens_ + page_size_ - 1) / page_size_)
        throw Error("kv cache: stream full at layer " + std::to_string(layer) + ", position " + std::to_string(pos) +
                    " (max_tokens " + std::to_string(max_tokens_) + ")");
      s.pages.push_back(free_pages_.back());
      free_pages_.pop_back();
    }
    if (s.n_slots > 0 && pos <= pos_pool_[row(layer, h, s.n_slots - 1)])
      throw Error("kv cache: positions must increase along a stream (got " + std::to_string(pos) + ")");
    const int64_t r = row(layer, h, s.n_slots);
    std::memcpy(k_pool_.data() + r * head_dim_, k + static_cast<int64_t>(h) * head_dim_, sizeof(float) * head_dim_);
    std::memcpy(v_pool_.data() + r * head_dim_, v + static_cast<int64_t>(h) * head_dim_, sizeof(float) * head_dim_);
    pos_pool_[r] = pos;
    live_pool_[r] = 1;
    bits_pool_[r] = 16;
    if (!host_pool_.empty()) host_pool_[r] = 0;
    ++s.n_slots;
    ++s.n_live;
  }
}

int KVCache::find(int layer, int kv_head, int32_t p) const {
  const Stream& s = stream(layer, kv_head);
  int lo = 0, hi = s.n_slots;  // positions increase with the slot index
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (pos_pool_[row(layer, kv_head, mid)] < p) lo = mid + 1;
    else hi = mid;
  }
  return (lo < s.n_slots && pos_pool_[row(layer, kv_head, lo)] == p) ? lo : -1;
}

bool KVCache::evict_token(int layer, int kv_head, int32_t p) {
  const int slot = find(layer, kv_head, p);
  if (slot < 0) return false;
  const int64_t r = row(layer, kv_head, slot);
  if (!live_pool_[r]) return false;
  live_pool_[r] = 0;
  --stream(layer, kv_head).n_live;
  return true;
}

void KVCache::evict_page(int layer, int kv_head, int page_index) {
  Stream& s = stream(layer, kv_head);
  if (page_index < 0 || page_index >= static_cast<int>(s.pages.size()))
    throw Error("kv cache: evict_page: page index " + std::to_string(page_index) + " out of range");
  const int page = s.pages[page_index];
  const int first = page_index * page_size_;
  const int used = std::min(page_size_, s.n_slots - first);
  for (int i = 0; i < used; ++i) {
    const int64_t r = static_cast<int64_t>(page) * page_size_ + i;
    if (live_pool_[r]) --s.n_live;
    live_pool_[r] = 0;
    pos_pool_[r] = -1;
    bits_pool_[r] = 16;
    if (!host_pool_.empty()) host_pool_[r] = 0;
  }
  s.pages.erase(s.pages.begin() + page_index);
  s.n_slots -= used;
  free_pages_.push_back(page);
}

int64_t KVCache::slot_row(int layer, int kv_head, int32_t p, const char* what) const {
  if (layer < 0 || layer >= n_layers_ || kv_head < 0 || kv_head >= n_kv_heads_)
    throw Error(std::string("kv cache: ") + what + ": layer " + std::to_string(layer) + ", KV head " + std::to_string(kv_head) +
                " outside the cache");
  const int slot = find(layer, kv_head, p);
  if (slot < 0)
    throw Error(std::string("kv cache: ") + what + ": position " + std::to_string(p) + " is not in the stream of layer " +
                std::to_string(layer) + ", KV head " + std::to_string(kv_head));
  return row(layer, kv_head, slot);
}

void KVCache::offload_token(int layer, int kv_head, int32_t p) {
  const int64_t r = slot_row(layer, kv_head, p, "offload");
  if (!live_pool_[r])
    throw Error("kv cache: offload: position " + std::to_string(p) + " of layer " + std::to_string(layer) + ", KV head " +
                std::to_string(kv_head) + " is not live");
  if (host_pool_.empty()) {
    host_pool_.assign(live_pool_.size(), 0);
    host_k_.assign(k_pool_.size(), 0.0f);
    host_v_.assign(v_pool_.size(), 0.0f);
  }
  const size_t o = static_cast<size_t>(r) * head_dim_;
  std::memcpy(host_k_.data() + o, k_pool_.data() + o, sizeof(float) * head_dim_);
  std::memcpy(host_v_.data() + o, v_pool_.data() + o, sizeof(float) * head_dim_);
  // Zeroed so that a read of an offloaded slot cannot go unnoticed.
  std::fill(k_pool_.begin() + o, k_pool_.begin() + o + head_dim_, 0.0f);
  std::fill(v_pool_.begin() + o, v_pool_.begin() + o + head_dim_, 0.0f);
  live_pool_[r] = 0;
  host_pool_[r] = 1;
  --stream(layer, kv_head).n_live;
  bytes_offloaded_ += entry_bytes(bits_pool_[r]);
}

void KVCache::fetch_token(int layer, int kv_head, int32_t p) {
  const int64_t r = slot_row(layer, kv_head, p, "fetch");
  if (host_pool_.empty() || !host_pool_[r])
    throw Error("kv cache: fetch: position " + std::to_string(p) + " of layer " + std::to_string(layer) + ", KV head " +
                std::to_string(kv_head) + " is not on the host");
  const size_t o = static_cast<size_t>(r) * head_dim_;
  std::memcpy(k_pool_.data() + o, host_k_.data() + o, sizeof(float) * head_dim_);
  std::memcpy(v_pool_.data() + o, host_v_.data() + o, sizeof(float) * head_dim_);
  live_pool_[r] = 1;
  host_pool_[r] = 0;
  ++stream(layer, kv_head).n_live;
  bytes_fetched_ += entry_bytes(bits_pool_[r]);
}

void KVCache::drop_host_token(int layer, int kv_head, int32_t p) {
  const int64_t r = slot_row(layer, kv_head, p, "drop");
  if (host_pool_.empty() || !host_pool_[r])
    throw Error("kv cache: drop: position " + std::to_string(p) + " of layer " + std::to_string(layer) + ", KV head " +
                std::to_string(kv_head) + " is not on the host");
  host_pool_[r] = 0;
}

void KVCache::quantize_token(int layer, int kv_head, int32_t p, int b, bool keys) {
  const int64_t r = slot_row(layer, kv_head, p, "quantize");
  if (!live_pool_[r])
    throw Error("kv cache: quantize: position " + std::to_string(p) + " of layer " + std::to_string(layer) + ", KV head " +
                std::to_string(kv_head) + " is not live");
  if (!(b == 8 || b == 4 || b == 2) || b >= bits_pool_[r])
    throw Error("kv cache: quantize: position " + std::to_string(p) + " to " + std::to_string(b) + " bits from " +
                std::to_string(bits_pool_[r]) + " (8, 4 or 2, and fewer than now)");
  const size_t o = static_cast<size_t>(r) * head_dim_;
  if (keys) quant_dequant_row(k_pool_.data() + o, k_pool_.data() + o, head_dim_, b);
  quant_dequant_row(v_pool_.data() + o, v_pool_.data() + o, head_dim_, b);
  bits_pool_[r] = static_cast<uint8_t>(b);
}

int KVCache::reclaim_dead_pages(int layer, int kv_head) {
  Stream& s = stream(layer, kv_head);
  int freed = 0;
  for (int i = static_cast<int>(s.pages.size()) - 1; i >= 0; --i) {
    const int first = i * page_size_;
    if (s.n_slots - first < page_size_) continue;  // the page still being filled
    const int64_t r0 = static_cast<int64_t>(s.pages[i]) * page_size_;
    bool dead = true;
    for (int k = 0; k < page_size_ && dead; ++k)
      dead = !live_pool_[r0 + k] && (host_pool_.empty() || !host_pool_[r0 + k]);
    if (!dead) continue;
    evict_page(layer, kv_head, i);
    ++freed;
  }
  return freed;
}

int64_t KVCache::live_tokens() const {
  int64_t n = 0;
  for (const auto& s : streams_) n += s.n_live;
  return n;
}

}  // namespace kvscope::cpu
