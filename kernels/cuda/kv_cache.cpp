#include "kernels/cuda/kv_cache.h"

#include <algorithm>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/io/halfs.h"

namespace kvscope::cuda {

namespace {
constexpr int kHostChunk = 64;  // pinned pool grows by this many pages
}

KVCache::KVCache(int n_layers, int n_kv_heads, int head_dim, int page_size, int max_tokens, cudaStream_t stream)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim), page_size_(page_size), max_tokens_(max_tokens), stream_(stream) {
  if (page_size <= 0 || max_tokens <= 0) throw Error("cuda kv cache: page_size and max_tokens must be positive");
  if (head_dim % 8 != 0) throw Error("cuda kv cache: head_dim must be a multiple of 8 (16-byte rows)");
  pages_per_stream_ = (max_tokens + page_size - 1) / page_size;
  total_pages_ = n_layers * n_kv_heads * pages_per_stream_;
  const size_t rows = static_cast<size_t>(total_pages_) * page_size;
  const size_t n_streams = static_cast<size_t>(n_layers) * n_kv_heads;
  KVS_CUDA(cudaMalloc(&d_k_, rows * head_dim * sizeof(uint16_t)));
  KVS_CUDA(cudaMalloc(&d_v_, rows * head_dim * sizeof(uint16_t)));
  KVS_CUDA(cudaMalloc(&d_pos_, rows * sizeof(int32_t)));
  KVS_CUDA(cudaMalloc(&d_live_, rows));
  KVS_CUDA(cudaMalloc(&d_tables_, n_streams * pages_per_stream_ * sizeof(int32_t)));
  KVS_CUDA(cudaMalloc(&d_n_slots_, n_streams * sizeof(int32_t)));
  KVS_CUDA(cudaMalloc(&d_stage_, 2 * static_cast<size_t>(n_kv_heads) * head_dim * sizeof(float)));
  // Zeroed once so that rows never written hold finite values (the decode kernel loads
  // K/V before it looks at the live flag).
  KVS_CUDA(cudaMemsetAsync(d_k_, 0, rows * head_dim * sizeof(uint16_t), stream_));
  KVS_CUDA(cudaMemsetAsync(d_v_, 0, rows * head_dim * sizeof(uint16_t), stream_));
  KVS_CUDA(cudaMemsetAsync(d_pos_, 0xff, rows * sizeof(int32_t), stream_));
  KVS_CUDA(cudaMemsetAsync(d_live_, 0, rows, stream_));
  streams_.resize(n_streams);
  h_tables_.assign(n_streams * pages_per_stream_, -1);
  h_n_slots_.assign(n_streams, 0);
  clear();
}

KVCache::~KVCache() {
  // Frees without throwing; pending work on the stream finishes first.
  cudaStreamSynchronize(stream_);
  for (void* p : {static_cast<void*>(d_k_), static_cast<void*>(d_v_), static_cast<void*>(d_pos_), static_cast<void*>(d_live_),
                  static_cast<void*>(d_tables_), static_cast<void*>(d_n_slots_), static_cast<void*>(d_rows_), static_cast<void*>(d_stage_)})
    if (p) cudaFree(p);
  for (uint16_t* c : host_chunks_) cudaFreeHost(c);
}

void KVCache::clear() {
  for (auto& s : streams_) s = Stream{};
  free_pages_.resize(total_pages_);
  for (int i = 0; i < total_pages_; ++i) free_pages_[i] = total_pages_ - 1 - i;
  host_free_.clear();
  for (int c = static_cast<int>(host_chunks_.size()) - 1; c >= 0; --c)
    for (int i = kHostChunk - 1; i >= 0; --i) host_free_.push_back(c * kHostChunk + i);
  host_pages_used_ = 0;
  tables_dirty_ = counts_dirty_ = true;
}

int64_t KVCache::reserve_slot(int l, int h, int32_t pos) {
  Stream& s = stream(l, h);
  if (s.n_slots == static_cast<int>(s.pages.size()) * page_size_) {
    if (static_cast<int>(s.pages.size()) >= pages_per_stream_)
      throw Error("cuda kv cache: stream full at layer " + std::to_string(l) + ", position " + std::to_string(pos) +
                  " (max_tokens " + std::to_string(max_tokens_) + ")");
    s.pages.push_back({free_pages_.back(), -1});
    free_pages_.pop_back();
    tables_dirty_ = true;
  }
  if (s.n_slots > 0 && pos <= s.pos[s.n_slots - 1])
    throw Error("cuda kv cache: positions must increase along a stream (got " + std::to_string(pos) + ")");
  const Page& pg = s.pages[s.n_slots / page_size_];
  if (pg.dev < 0) throw Error("cuda kv cache: append into an offloaded page (fetch it first)");
  const int64_t row = static_cast<int64_t>(pg.dev) * page_size_ + s.n_slots % page_size_;
  s.pos.push_back(pos);
  s.live.push_back(1);
  ++s.n_slots;
  ++s.n_live;
  counts_dirty_ = true;
  return row;
}

void KVCache::append_device(int layer, int32_t pos0, int T, const float* k_dev, const float* v_dev) {
  if (T <= 0) return;
  h_rows_.resize(static_cast<size_t>(T) * n_kv_heads_);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < n_kv_heads_; ++h) h_rows_[static_cast<size_t>(t) * n_kv_heads_ + h] = static_cast<int32_t>(reserve_slot(layer, h, pos0 + t));
  if (d_rows_cap_ < static_cast<int>(h_rows_.size())) {
    if (d_rows_) KVS_CUDA(cudaFreeAsync(d_rows_, stream_));
    d_rows_cap_ = std::max<int>(static_cast<int>(h_rows_.size()), 2 * d_rows_cap_);
    KVS_CUDA(cudaMallocAsync(&d_rows_, sizeof(int32_t) * d_rows_cap_, stream_));
  }
  // Pageable source: the copy stages it before returning, so h_rows_ may change after.
  KVS_CUDA(cudaMemcpyAsync(d_rows_, h_rows_.data(), sizeof(int32_t) * h_rows_.size(), cudaMemcpyHostToDevice, stream_));
  launch_append_kv(k_dev, v_dev, d_rows_, pos0, T, n_kv_heads_, head_dim_, d_k_, d_v_, d_pos_, d_live_, stream_);
}

void KVCache::reserve_all(int32_t pos0, int T) {
  if (T <= 0) return;
  const size_t per_layer = static_cast<size_t>(T) * n_kv_heads_;
  h_rows_.resize(per_layer * n_layers_);
  for (int l = 0; l < n_layers_; ++l)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < n_kv_heads_; ++h)
        h_rows_[l * per_layer + static_cast<size_t>(t) * n_kv_heads_ + h] = static_cast<int32_t>(reserve_slot(l, h, pos0 + t));
  if (d_rows_cap_ < static_cast<int>(h_rows_.size())) {
    if (d_rows_) KVS_CUDA(cudaFreeAsync(d_rows_, stream_));
    d_rows_cap_ = std::max<int>(static_cast<int>(h_rows_.size()), 2 * d_rows_cap_);
    KVS_CUDA(cudaMallocAsync(&d_rows_, sizeof(int32_t) * d_rows_cap_, stream_));
  }
  KVS_CUDA(cudaMemcpyAsync(d_rows_, h_rows_.data(), sizeof(int32_t) * h_rows_.size(), cudaMemcpyHostToDevice, stream_));
}

void KVCache::append_reserved(int layer, int32_t pos0, int T, const float* k_dev, const float* v_dev) {
  const size_t per_layer = static_cast<size_t>(T) * n_kv_heads_;
  launch_append_kv(k_dev, v_dev, d_rows_ + layer * per_layer, pos0, T, n_kv_heads_, head_dim_, d_k_, d_v_, d_pos_, d_live_, stream_);
}

void KVCache::append(int layer, int32_t pos, const float* k, const float* v) {
  const size_t n = static_cast<size_t>(n_kv_heads_) * head_dim_;
  KVS_CUDA(cudaMemcpyAsync(d_stage_, k, sizeof(float) * n, cudaMemcpyHostToDevice, stream_));
  KVS_CUDA(cudaMemcpyAsync(d_stage_ + n, v, sizeof(float) * n, cudaMemcpyHostToDevice, stream_));
  append_device(layer, pos, 1, d_stage_, d_stage_ + n);
}

bool KVCache::resident(int layer, int kv_head, int slot) const {
  const Stream& s = stream(layer, kv_head);
  return s.live[slot] && s.pages[slot / page_size_].dev >= 0;
}

int KVCache::find(int layer, int kv_head, int32_t p) const {
  const Stream& s = stream(layer, kv_head);
  const auto it = std::lower_bound(s.pos.begin(), s.pos.begin() + s.n_slots, p);
  return (it != s.pos.begin() + s.n_slots && *it == p) ? static_cast<int>(it - s.pos.begin()) : -1;
}

bool KVCache::evict_token(int layer, int kv_head, int32_t p) {
  const int slot = find(layer, kv_head, p);
  if (slot < 0) return false;
  Stream& s = stream(layer, kv_head);
  if (!s.live[slot]) return false;
  s.live[slot] = 0;
  --s.n_live;
  const Page& pg = s.pages[slot / page_size_];
  // An offloaded page gets its live flags from the mirror when it is fetched.
  if (pg.dev >= 0) KVS_CUDA(cudaMemsetAsync(d_live_ + static_cast<int64_t>(pg.dev) * page_size_ + slot % page_size_, 0, 1, stream_));
  return true;
}

void KVCache::check_page(const Stream& s, int page_index, const char* what) const {
  if (page_index < 0 || page_index >= static_cast<int>(s.pages.size()))
    throw Error(std::string("cuda kv cache: ") + what + ": page index " + std::to_string(page_index) + " out of range");
}

void KVCache::evict_page(int layer, int kv_head, int page_index) {
  Stream& s = stream(layer, kv_head);
  check_page(s, page_index, "evict_page");
  const Page pg = s.pages[page_index];
  const int first = page_index * page_size_;
  const int used = std::min(page_size_, s.n_slots - first);
  for (int i = 0; i < used; ++i) s.n_live -= s.live[first + i];
  s.pos.erase(s.pos.begin() + first, s.pos.begin() + first + used);
  s.live.erase(s.live.begin() + first, s.live.begin() + first + used);
  s.pages.erase(s.pages.begin() + page_index);
  s.n_slots -= used;
  if (pg.dev >= 0) {
    free_pages_.push_back(pg.dev);
  } else {
    host_free_.push_back(pg.host);
    --host_pages_used_;
  }
  tables_dirty_ = counts_dirty_ = true;
}

int32_t KVCache::alloc_host_page() {
  if (host_free_.empty()) {
    const size_t page_halves = static_cast<size_t>(page_size_) * head_dim_;
    uint16_t* c = nullptr;
    KVS_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&c), 2 * page_halves * kHostChunk * sizeof(uint16_t), cudaHostAllocDefault));
    host_chunks_.push_back(c);
    const int base = (static_cast<int>(host_chunks_.size()) - 1) * kHostChunk;
    for (int i = kHostChunk - 1; i >= 0; --i) host_free_.push_back(base + i);
  }
  const int32_t hp = host_free_.back();
  host_free_.pop_back();
  ++host_pages_used_;
  return hp;
}

uint16_t* KVCache::host_page_k(int32_t hp) const {
  const size_t page_halves = static_cast<size_t>(page_size_) * head_dim_;
  return host_chunks_[hp / kHostChunk] + 2 * page_halves * (hp % kHostChunk);
}
uint16_t* KVCache::host_page_v(int32_t hp) const { return host_page_k(hp) + static_cast<size_t>(page_size_) * head_dim_; }

void KVCache::offload_page(int layer, int kv_head, int page_index) {
  Stream& s = stream(layer, kv_head);
  check_page(s, page_index, "offload_page");
  Page& pg = s.pages[page_index];
  if (pg.dev < 0) throw Error("cuda kv cache: offload_page: page " + std::to_string(page_index) + " is already offloaded");
  const int32_t hp = alloc_host_page();
  const size_t bytes = static_cast<size_t>(page_size_) * head_dim_ * sizeof(uint16_t);
  const int64_t r0 = static_cast<int64_t>(pg.dev) * page_size_ * head_dim_;
  KVS_CUDA(cudaMemcpyAsync(host_page_k(hp), d_k_ + r0, bytes, cudaMemcpyDeviceToHost, stream_));
  KVS_CUDA(cudaMemcpyAsync(host_page_v(hp), d_v_ + r0, bytes, cudaMemcpyDeviceToHost, stream_));
  // The device page is reusable at once: later writes to it are queued after the copies.
  free_pages_.push_back(pg.dev);
  pg = {-1, hp};
  bytes_offloaded_ += 2 * bytes;
  tables_dirty_ = true;
}

void KVCache::fetch_page(int layer, int kv_head, int page_index) {
  Stream& s = stream(layer, kv_head);
  check_page(s, page_index, "fetch_page");
  Page& pg = s.pages[page_index];
  if (pg.dev >= 0) throw Error("cuda kv cache: fetch_page: page " + std::to_string(page_index) + " is resident");
  const int32_t dp = free_pages_.back();
  free_pages_.pop_back();
  const size_t bytes = static_cast<size_t>(page_size_) * head_dim_ * sizeof(uint16_t);
  const int64_t r0 = static_cast<int64_t>(dp) * page_size_;
  KVS_CUDA(cudaMemcpyAsync(d_k_ + r0 * head_dim_, host_page_k(pg.host), bytes, cudaMemcpyHostToDevice, stream_));
  KVS_CUDA(cudaMemcpyAsync(d_v_ + r0 * head_dim_, host_page_v(pg.host), bytes, cudaMemcpyHostToDevice, stream_));
  // Positions and live flags come from the host mirror (evictions may have happened
  // while the page was away).
  const int first = page_index * page_size_;
  const int used = std::min(page_size_, s.n_slots - first);
  std::vector<int32_t> pos(page_size_, -1);
  std::vector<uint8_t> live(page_size_, 0);
  for (int i = 0; i < used; ++i) {
    pos[i] = s.pos[first + i];
    live[i] = s.live[first + i];
  }
  KVS_CUDA(cudaMemcpyAsync(d_pos_ + r0, pos.data(), sizeof(int32_t) * page_size_, cudaMemcpyHostToDevice, stream_));
  KVS_CUDA(cudaMemcpyAsync(d_live_ + r0, live.data(), page_size_, cudaMemcpyHostToDevice, stream_));
  // The host page may be reused by a later offload only after these copies ran: the
  // offload's D2H is queued on the same stream, after them.
  host_free_.push_back(pg.host);
  --host_pages_used_;
  pg = {dp, -1};
  bytes_fetched_ += 2 * bytes;
  tables_dirty_ = true;
}

void KVCache::read_slot(int layer, int kv_head, int slot, float* k, float* v) const {
  const Stream& s = stream(layer, kv_head);
  if (slot < 0 || slot >= s.n_slots) throw Error("cuda kv cache: read_slot: slot out of range");
  const Page& pg = s.pages[slot / page_size_];
  std::vector<uint16_t> hk(head_dim_), hv(head_dim_);
  KVS_CUDA(cudaStreamSynchronize(stream_));
  if (pg.dev >= 0) {
    const int64_t r = (static_cast<int64_t>(pg.dev) * page_size_ + slot % page_size_) * head_dim_;
    KVS_CUDA(cudaMemcpy(hk.data(), d_k_ + r, head_dim_ * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    KVS_CUDA(cudaMemcpy(hv.data(), d_v_ + r, head_dim_ * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  } else {
    const size_t off = static_cast<size_t>(slot % page_size_) * head_dim_;
    std::copy_n(host_page_k(pg.host) + off, head_dim_, hk.data());
    std::copy_n(host_page_v(pg.host) + off, head_dim_, hv.data());
  }
  for (int d = 0; d < head_dim_; ++d) {
    k[d] = f16_to_f32(hk[d]);
    v[d] = f16_to_f32(hv[d]);
  }
}

int64_t KVCache::live_tokens() const {
  int64_t n = 0;
  for (const auto& s : streams_) n += s.n_live;
  return n;
}

PagedKV KVCache::view() {
  if (tables_dirty_) {
    std::fill(h_tables_.begin(), h_tables_.end(), -1);
    for (size_t i = 0; i < streams_.size(); ++i)
      for (size_t p = 0; p < streams_[i].pages.size(); ++p) h_tables_[i * pages_per_stream_ + p] = streams_[i].pages[p].dev;
    KVS_CUDA(cudaMemcpyAsync(d_tables_, h_tables_.data(), sizeof(int32_t) * h_tables_.size(), cudaMemcpyHostToDevice, stream_));
    tables_dirty_ = false;
  }
  if (counts_dirty_) {
    for (size_t i = 0; i < streams_.size(); ++i) h_n_slots_[i] = streams_[i].n_slots;
    KVS_CUDA(cudaMemcpyAsync(d_n_slots_, h_n_slots_.data(), sizeof(int32_t) * h_n_slots_.size(), cudaMemcpyHostToDevice, stream_));
    counts_dirty_ = false;
  }
  PagedKV v;
  v.k = d_k_;
  v.v = d_v_;
  v.pos = d_pos_;
  v.live = d_live_;
  v.tables = d_tables_;
  v.n_slots = d_n_slots_;
  v.max_pages = pages_per_stream_;
  v.page_size = page_size_;
  v.head_dim = head_dim_;
  return v;
}

}  // namespace kvscope::cuda
