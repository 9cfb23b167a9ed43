#include "kernels/cpu/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/io/error.h"

namespace kvscope::cpu {

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
  }
  s.pages.erase(s.pages.begin() + page_index);
  s.n_slots -= used;
  free_pages_.push_back(page);
}

int64_t KVCache::live_tokens() const {
  int64_t n = 0;
  for (const auto& s : streams_) n += s.n_live;
  return n;
}

}  // namespace kvscope::cpu
