#pragma once
// Paged KV cache of the CPU runtime, built so that policies can act on it for real.
//
// Storage: one pool of pages; a page holds `page_size` token slots of one (layer, KV head)
// stream: K rows and V rows (head_dim floats each, RoPE already applied to K), the token
// position of each slot and a live flag. Each stream has its own block table (ordered
// list of page ids), so eviction is per KV head, as the policies of the literature decide.
//
// Addressing: a stream's logical slot s lives in page table[s / page_size] at offset
// s % page_size. Tokens are appended in position order, so slot positions increase along
// the stream and a token is found by binary search on its position.
//   evict_token(l, h, pos)  — the slot stays (a hole), marked dead; attention skips it.
//   evict_page(l, h, i)     — the i-th page of the stream goes back to the pool; later
//                             slots move down by page_size (logical indices are transient).
//   offload_token(l, h, pos) — K/V rows copied to a host-side array, zeroed in the pool,
//                             slot not live (attention skips it); fetch_token copies back.
//   quantize_token(l, h, pos, b) — K and V rows stored at b bits (quant_dequant_row): the
//                             pool holds what a b-bit store gives back on dequantization.
// Byte counters count an entry as K and V, head_dim values each, at its storage bits (16
// unless quantized), as the replay simulator does (docs/validation.md).
#include <cstdint>
#include <algorithm>
#include <span>
#include <vector>

namespace kvscope::cpu {

// Quantize-dequantize one row of d values at `bits` (asymmetric min/max over the row:
// scale = (max - min) / (2^bits - 1), q = round((x - min) / scale), out = min + q * scale).
// Returns ||x - out|| / ||x|| (0 for a zero row). out may alias x.
double quant_dequant_row(const float* x, float* out, uint32_t d, uint32_t bits);

class KVCache {
 public:
  KVCache() = default;
  KVCache(int n_layers, int n_kv_heads, int head_dim, int page_size, int max_tokens);

  int n_layers() const { return n_layers_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  int page_size() const { return page_size_; }
  int max_tokens() const { return max_tokens_; }

  // Appends one token to every KV head of `layer`: k and v hold n_kv_heads * head_dim
  // floats, head-major. Throws Error when a stream is full.
  void append(int layer, int32_t pos, const float* k, const float* v);

  // Slots of a stream (including dead ones): the attention loop runs s in [0, n_slots).
  int n_slots(int layer, int kv_head) const { return stream(layer, kv_head).n_slots; }
  int n_live(int layer, int kv_head) const { return stream(layer, kv_head).n_live; }
  int n_pages(int layer, int kv_head) const { return static_cast<int>(stream(layer, kv_head).pages.size()); }
  int page_id(int layer, int kv_head, int i) const { return stream(layer, kv_head).pages[i]; }

  const float* k(int layer, int kv_head, int slot) const { return k_pool_.data() + row(layer, kv_head, slot) * head_dim_; }
  const float* v(int layer, int kv_head, int slot) const { return v_pool_.data() + row(layer, kv_head, slot) * head_dim_; }
  int32_t pos(int layer, int kv_head, int slot) const { return pos_pool_[row(layer, kv_head, slot)]; }
  bool live(int layer, int kv_head, int slot) const { return live_pool_[row(layer, kv_head, slot)] != 0; }

  // The slots of the stream's i-th page, contiguous: n = slots used in it.
  struct PageView {
    const float* k;
    const float* v;
    const int32_t* pos;
    const uint8_t* live;
    int n;
  };
  PageView page(int layer, int kv_head, int i) const {
    const Stream& s = stream(layer, kv_head);
    const int64_t r0 = static_cast<int64_t>(s.pages[i]) * page_size_;
    const int n = std::min(page_size_, s.n_slots - i * page_size_);
    return {k_pool_.data() + r0 * head_dim_, v_pool_.data() + r0 * head_dim_, pos_pool_.data() + r0, live_pool_.data() + r0, n};
  }

  // Slot of the token at `pos`, or -1 when it is not in the stream (never stored or page evicted).
  int find(int layer, int kv_head, int32_t pos) const;

  // Returns false when the token is not resident.
  bool evict_token(int layer, int kv_head, int32_t pos);
  void evict_page(int layer, int kv_head, int page_index);

  // Offload / fetch / quantize one live (offload, quantize) or offloaded (fetch) token.
  // Throw Error naming the layer, head and position when the slot is not in that state.
  void offload_token(int layer, int kv_head, int32_t pos);
  void fetch_token(int layer, int kv_head, int32_t pos);
  // keys = false leaves the K row at full precision (a diagnostic: what the replay models).
  void quantize_token(int layer, int kv_head, int32_t pos, int bits, bool keys = true);
  // Drops an offloaded token's host copy (eviction from the host tier).
  void drop_host_token(int layer, int kv_head, int32_t pos);
  bool on_host(int layer, int kv_head, int slot) const { return !host_pool_.empty() && host_pool_[row(layer, kv_head, slot)] != 0; }
  int bits(int layer, int kv_head, int slot) const { return bits_pool_[row(layer, kv_head, slot)]; }
  // Returns the stream's fully dead pages (no live and no offloaded slot, every slot used)
  // to the pool. Returns how many.
  int reclaim_dead_pages(int layer, int kv_head);
  uint64_t bytes_offloaded() const { return bytes_offloaded_; }
  uint64_t bytes_fetched() const { return bytes_fetched_; }
  uint64_t entry_bytes(int bits) const { return 2ull * head_dim_ * bits / 8; }

  int pages_in_use() const { return total_pages_ - static_cast<int>(free_pages_.size()); }
  int total_pages() const { return total_pages_; }
  int64_t live_tokens() const;
  void clear();

 private:
  struct Stream {
    std::vector<int32_t> pages;
    int n_slots = 0;
    int n_live = 0;
  };
  const Stream& stream(int l, int h) const { return streams_[static_cast<size_t>(l) * n_kv_heads_ + h]; }
  Stream& stream(int l, int h) { return streams_[static_cast<size_t>(l) * n_kv_heads_ + h]; }
  int64_t row(int l, int h, int slot) const {
    const Stream& s = stream(l, h);
    return static_cast<int64_t>(s.pages[slot / page_size_]) * page_size_ + slot % page_size_;
  }

  int n_layers_ = 0, n_kv_heads_ = 0, head_dim_ = 0, page_size_ = 16, max_tokens_ = 0, total_pages_ = 0;
  std::vector<Stream> streams_;
  std::vector<int32_t> free_pages_;  // LIFO
  std::vector<float> k_pool_, v_pool_;
  std::vector<int32_t> pos_pool_;
  std::vector<uint8_t> live_pool_;
  std::vector<uint8_t> bits_pool_;                 // storage bits of each slot (16 unless quantized)
  std::vector<uint8_t> host_pool_;                 // 1: offloaded (allocated on first offload)
  std::vector<float> host_k_, host_v_;             // host copies, indexed like the pool
  uint64_t bytes_offloaded_ = 0, bytes_fetched_ = 0;
  int64_t slot_row(int layer, int kv_head, int32_t pos, const char* what) const;
};

}  // namespace kvscope::cpu
