#pragma once
// Paged KV cache on the GPU, with the same shape of API as the CPU cache
// (kernels/cpu/kv_cache.h) so that the policy layer can drive either, plus offload of
// whole pages to a pinned host pool and fetch back.
//
// Device storage: one pool of pages; a page holds `page_size` rows of one (layer, KV head)
// stream: K and V in fp16 (head_dim each, RoPE applied to K), the token position and a
// live flag. Each stream has a block table; the device copy of the tables
// ([streams][max_pages], -1 for a page that is not resident) and of the slot counts is
// uploaded lazily by view() when the host bookkeeping changed.
//
// Host bookkeeping is authoritative for positions and live flags (a mirror per logical
// slot), so find(), evict_token() and the trace's slot positions never read the device.
//
//   evict_token(l, h, pos)       the slot stays, marked dead (a hole attention skips).
//   evict_page(l, h, i)          the page leaves the stream; later slots move down.
//   offload_page(l, h, i)        K/V of the page go to the pinned host pool; the page keeps
//                                its place in the stream (logical slots unchanged) but is
//                                not resident: attention never reads it and gives its
//                                slots probability 0.
//   fetch_page(l, h, i)          back into a device page; attention sees it again.
// Every device operation is queued on the cache's stream (the runtime's compute stream),
// so it is ordered with the kernels that read the cache without host synchronisation.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/kernels.h"

namespace kvscope::cuda {

class KVCache {
 public:
  KVCache(int n_layers, int n_kv_heads, int head_dim, int page_size, int max_tokens, cudaStream_t stream = nullptr);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  int n_layers() const { return n_layers_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  int page_size() const { return page_size_; }
  int max_tokens() const { return max_tokens_; }
  int max_pages() const { return pages_per_stream_; }  // per stream
  cudaStream_t stream() const { return stream_; }

  // Appends one token to every KV head of `layer` from host memory: k and v hold
  // n_kv_heads * head_dim floats, head-major (as the CPU cache).
  void append(int layer, int32_t pos, const float* k, const float* v);
  // Appends T tokens at positions pos0.. from device fp32 rows [T][n_kv_heads][head_dim].
  void append_device(int layer, int32_t pos0, int T, const float* k_dev, const float* v_dev);
  // The runtime's form of append_device, in two halves so that a step costs one upload
  // for all layers: reserve_all books T slots at pos0.. in every stream of every layer
  // and uploads their pool rows in one copy; append_reserved then writes one layer's K/V
  // (call it for every layer, with the same pos0 and T, before the next reserve_all).
  void reserve_all(int32_t pos0, int T);
  void append_reserved(int layer, int32_t pos0, int T, const float* k_dev, const float* v_dev);

  int n_slots(int layer, int kv_head) const { return stream(layer, kv_head).n_slots; }
  int n_live(int layer, int kv_head) const { return stream(layer, kv_head).n_live; }
  int n_pages(int layer, int kv_head) const { return static_cast<int>(stream(layer, kv_head).pages.size()); }
  // Device pool page of the stream's i-th page, -1 while it is offloaded.
  int page_id(int layer, int kv_head, int i) const { return stream(layer, kv_head).pages[i].dev; }
  int32_t pos(int layer, int kv_head, int slot) const { return stream(layer, kv_head).pos[slot]; }
  bool live(int layer, int kv_head, int slot) const { return stream(layer, kv_head).live[slot] != 0; }
  const std::vector<int32_t>& slot_positions(int layer, int kv_head) const { return stream(layer, kv_head).pos; }
  bool offloaded(int layer, int kv_head, int page_index) const { return stream(layer, kv_head).pages[page_index].dev < 0; }
  // Live and on the device: what attention reads.
  bool resident(int layer, int kv_head, int slot) const;

  // Slot of the token at `pos`, or -1 when it is not in the stream.
  int find(int layer, int kv_head, int32_t pos) const;
  // Returns false when the token is not in the stream or already dead.
  bool evict_token(int layer, int kv_head, int32_t pos);
  void evict_page(int layer, int kv_head, int page_index);
  void offload_page(int layer, int kv_head, int page_index);
  void fetch_page(int layer, int kv_head, int page_index);

  // Copies one slot's K and V rows to host fp32 (synchronises the stream). Works for
  // offloaded pages too (reads the host pool).
  void read_slot(int layer, int kv_head, int slot, float* k, float* v) const;

  uint64_t bytes_offloaded() const { return bytes_offloaded_; }  // device -> host, K+V
  uint64_t bytes_fetched() const { return bytes_fetched_; }      // host -> device
  int pages_in_use() const { return total_pages_ - static_cast<int>(free_pages_.size()); }
  int host_pages_in_use() const { return host_pages_used_; }
  int total_pages() const { return total_pages_; }
  int64_t live_tokens() const;
  void clear();

  // Device view for the attention kernels; uploads the tables and slot counts first when
  // they changed (queued on the stream).
  PagedKV view();

 private:
  struct Page {
    int32_t dev = -1;   // pool page, -1 when offloaded
    int32_t host = -1;  // host pool page while offloaded
  };
  struct Stream {
    std::vector<Page> pages;
    std::vector<int32_t> pos;   // per logical slot
    std::vector<uint8_t> live;  // per logical slot
    int n_slots = 0;
    int n_live = 0;
  };
  const Stream& stream(int l, int h) const { return streams_[static_cast<size_t>(l) * n_kv_heads_ + h]; }
  Stream& stream(int l, int h) { return streams_[static_cast<size_t>(l) * n_kv_heads_ + h]; }
  void check_page(const Stream& s, int page_index, const char* what) const;
  // Reserves the slot for the next token of (l, h); returns its pool row.
  int64_t reserve_slot(int l, int h, int32_t pos);
  int32_t alloc_host_page();
  uint16_t* host_page_k(int32_t hp) const;
  uint16_t* host_page_v(int32_t hp) const;

  int n_layers_ = 0, n_kv_heads_ = 0, head_dim_ = 0, page_size_ = 16, max_tokens_ = 0;
  int pages_per_stream_ = 0, total_pages_ = 0;
  cudaStream_t stream_ = nullptr;
  std::vector<Stream> streams_;
  std::vector<int32_t> free_pages_;  // LIFO, as the CPU cache
  // device
  uint16_t* d_k_ = nullptr;
  uint16_t* d_v_ = nullptr;
  int32_t* d_pos_ = nullptr;
  uint8_t* d_live_ = nullptr;
  int32_t* d_tables_ = nullptr;
  int32_t* d_n_slots_ = nullptr;
  int32_t* d_rows_ = nullptr;  // append scratch
  int d_rows_cap_ = 0;
  float* d_stage_ = nullptr;  // host append staging (2 * kv_dim floats)
  bool tables_dirty_ = true, counts_dirty_ = true;
  std::vector<int32_t> h_tables_, h_n_slots_;
  std::vector<int32_t> h_rows_;
  // pinned host pool for offloaded pages: chunks of kHostChunk pages, K then V per page
  std::vector<uint16_t*> host_chunks_;
  std::vector<int32_t> host_free_;
  int host_pages_used_ = 0;
  uint64_t bytes_offloaded_ = 0, bytes_fetched_ = 0;
};

}  // namespace kvscope::cuda
