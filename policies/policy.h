#pragma once
// The KV-cache policy interface (docs/policies.md). The replay engine (sim/) drives it
// now; a live model run drives the same objects later (the validation issue).
//
// Every policy manages streams: one per (layer, KV head), each a row of positions
// 0..n-1. An entry is in one of three places: HBM (attended), host memory (offloaded:
// kept, not attended until fetched back) or nowhere (evicted, for good). HBM entries are
// stored at 16 bits unless a policy quantized them (8, 4 or 2 bits); HBM use is counted
// in bytes, so a 4-bit entry costs a quarter of a 16-bit one.
//
// The engine owns the loop. At the prefill step, per stream: the prompt's entries are
// appended, observe() sees the prompt queries' column sums (and the last prefill-window
// rows), then — once every stream has been observed — allocate() may redistribute the
// budgets across streams, and plan() brings each stream within its budget.
// At each decode step, per stream:
//   1. the step's new entry is appended (HBM, 16 bit);
//   2. plan(view, plan) says what moves before the step's attention is known, as a real
//      cache must: evict, offload, fetch, quantize. Afterwards the stream's HBM use must
//      be within its budget (in 16-bit-entry units). Query-aware policies see the step's
//      queries here (view.q) and the stream's keys (view.keys);
//   3. the engine measures the step's attention over what is in HBM;
//   4. observe(view) gets that attention renormalised over the HBM entries (what the model
//      really computed), aggregated over the KV head's group of query heads.
// Policies keep per-stream state in flat arrays indexed by position (struct of arrays):
// no allocation and no virtual call per token.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvscope::trace {
class TraceReader;
}

namespace kvscope::policy {

// How the engine combines a KV head's group of query heads into one row (--agg).
enum class GroupAgg : uint8_t { Sum, Max, Mean };

struct Shape {
  uint32_t n_layers = 0, n_kv_heads = 0, max_tokens = 0;
  uint32_t head_dim = 0, group = 1;  // query heads per KV head
  uint32_t page_size = 1;            // 1: token granularity; B > 1: whole pages of B positions
  // Offline policies (oracle-topk, belady) read the future from here; nullptr in a live run.
  const trace::TraceReader* trace = nullptr;
  GroupAgg agg = GroupAgg::Sum;  // how attn / window / future are aggregated over the group
  uint32_t streams() const { return n_layers * n_kv_heads; }
  uint32_t stream(uint32_t layer, uint32_t kv_head) const { return layer * n_kv_heads + kv_head; }
};

enum Where : uint8_t { kEvicted = 0, kHbm = 1, kHost = 2 };

struct StreamView {
  uint32_t step = 0, layer = 0, kv_head = 0, stream = 0;
  bool prefill = false;
  uint32_t n = 0;                     // positions 0..n-1 exist (context length)
  uint32_t page_size = 1;             // as Shape::page_size
  const uint8_t* resident = nullptr;  // [n] 1 when the entry is in HBM (attended)
  const uint8_t* where = nullptr;     // [n] Where
  const uint8_t* bits = nullptr;      // [n] storage bits of HBM entries (16, 8, 4, 2)
  uint32_t n_resident = 0;            // entries in HBM
  double hbm_units = 0;               // HBM use in 16-bit-entry units: sum of bits/16
  uint32_t budget = 0;                // this stream's budget, 16-bit-entry units
  uint32_t head_dim = 0, group = 1;
  // observe(): group-aggregated attention over the HBM entries (prefill: aggregated column
  // sums over the prompt queries).
  const float* attn = nullptr;        // [n]
  const float* lse = nullptr;         // [group] decode: log-sum-exp of each query head's scaled scores
                                      // over the full cache (log p_j + lse = q.k_j / sqrt(d) + const)
  // observe(): the same per query head of the group, not aggregated (decode: renormalised
  // rows; prefill: column sums). Row g starts at head_attn + g * head_stride.
  const float* head_attn = nullptr;
  uint32_t head_stride = 0;
  // observe() at prefill: the last `n_window` prompt rows, aggregated over the group.
  // Row r (the query at position n - n_window + r) starts at window + r * window_stride.
  const float* window = nullptr;
  uint32_t n_window = 0, window_stride = 0;
  // plan(), traces with Q/K only (PolicyInfo::needs & kNeedsQK), nullptr otherwise.
  const float* q = nullptr;           // [group][head_dim] this step's queries
  const float* keys = nullptr;        // [n][head_dim] the stream's keys (all positions)
  // plan(), offline policies only (PolicyInfo::needs & kNeedsFuture): this step's
  // attention over all n positions as the full cache computes it, group-aggregated.
  const float* future = nullptr;      // [n]
};

struct Plan {
  std::vector<uint32_t> evict;    // HBM or host -> gone
  std::vector<uint32_t> offload;  // HBM -> host
  std::vector<uint32_t> fetch;    // host -> HBM (at the bits it was offloaded with)
  std::vector<std::pair<uint32_t, uint8_t>> quantize;  // HBM entry -> bits (8, 4 or 2)
  void clear() { evict.clear(), offload.clear(), fetch.clear(), quantize.clear(); }
};

// What allocate() sees: per-stream budgets to redistribute (sum must not grow).
struct Allocation {
  const Shape* shape = nullptr;
  uint32_t budget = 0;     // the run's uniform budget per stream
  uint32_t prompt_len = 0;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual void reset(const Shape& shape) = 0;
  virtual void observe(const StreamView&) {}
  // Before the step's attention: what moves. The default evicts n_resident - budget
  // entries chosen by victims() (eviction-only policies implement just victims()).
  virtual void plan(const StreamView& v, Plan& plan);
  // Appends at least k resident positions to plan.evict; exactly k at token granularity,
  // whole pages (every resident position of each chosen page) when v.page_size > 1.
  virtual void victims(const StreamView& v, uint32_t k, Plan& plan);
  // After the prefill has been observed on every stream: per-stream budgets
  // ([shape.streams()], all a.budget on entry). Their sum may not grow.
  virtual void allocate(const Allocation&, std::vector<uint32_t>& /*budgets*/) {}
};

// Demand-paged object cache (page-level LRU, FIFO, LFU, ARC, S3-FIFO, Belady): an HBM tier
// of `capacity` pages in front of host memory. Drives kvscope's page-level replay and
// `kvscope sim --page-stream` (libCacheSim oracleGeneral streams) alike.
class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual void reset(uint64_t capacity) = 0;
  // One request. Returns true on a hit; on a miss the object is admitted (evicting as
  // needed). next_access: 1-based index of the next request to the same object, -1 for
  // none (only Belady uses it).
  virtual bool access(uint64_t id, int64_t next_access) = 0;
};

// Parameter declaration: each policy lists its keys; unknown keys and bad values are errors
// that name the key.
struct ParamSpec {
  std::string name;
  double dflt;
  double min, max;
  bool integer;
  std::string help;
};

enum Needs : uint32_t { kNeedsQK = 1, kNeedsV = 2, kNeedsFuture = 4 };

struct PolicyInfo {
  std::string name;
  std::string kind;  // "baseline", "score", "prefill", "query", "cache", "quant", "bound"
  std::string summary;
  std::vector<ParamSpec> params;
  std::unique_ptr<Policy> (*make)(const nlohmann::json& params) = nullptr;
  uint32_t needs = 0;  // Needs bits: checked against the trace before a replay starts
  // kind "cache": the object cache; `make` is then unused (nullptr).
  std::unique_ptr<CachePolicy> (*make_cache)(const nlohmann::json& params) = nullptr;
};

// Validates `params` against `specs` (unknown key, wrong type, out of range -> Error naming
// "<where>.<key>") and returns them with defaults filled in.
nlohmann::json validate_params(const std::vector<ParamSpec>& specs, const nlohmann::json& params, const std::string& where);

// Picks, among resident positions not protected, the k with the smallest score (ties:
// lower position first) and appends them to out. With page_size > 1 it ranks whole pages
// by the sum of their resident entries' scores, skips pages holding a protected entry,
// and appends every resident position of the lowest pages until at least k are chosen.
void lowest_k(const float* score, const uint8_t* resident, uint32_t n, uint32_t k, const uint8_t* protect,
              std::vector<uint32_t>& out, std::vector<uint32_t>& scratch, uint32_t page_size = 1);

// The first resident position among 0..n-1 with the smallest score; UINT32_MAX if none.
uint32_t argmin_resident(const float* score, const uint8_t* resident, uint32_t n);

// Protects the most recent round(recent_ratio * budget) resident entries, then appends the
// k lowest-scored of the others to plan.evict (lowest_k, page-aware). `protect` has room
// for v.n.
void evict_lowest_outside_recent(const StreamView& v, uint32_t k, double recent_ratio, const float* score,
                                 std::vector<uint8_t>& protect, std::vector<uint32_t>& scratch, Plan& plan);

// Scans positions begin..end-1 in order and appends the resident ones to plan.evict until
// `taken` reaches k; at page granularity each chosen position brings its whole page.
// Used by the order-based baselines (window, StreamingLLM).
void evict_range(const StreamView& v, uint32_t begin, uint32_t end, uint32_t k, Plan& plan, uint32_t& taken);

// Reversible selection (the offload policies quest, infinigen, oracle-topk). Units are
// positions (unit 1) or pages of `unit` positions; keep[u] says whether unit u is held in
// HBM this step.
// Sets keep[0..units) when the choice needs no score — all units when the budget holds
// K >= units of them, the newest K at the prefill — and returns true; otherwise clears
// keep and returns false.
bool keep_without_scores(const StreamView& v, uint32_t units, uint32_t K, uint8_t* keep);
// keep[u] = 1 for the `take` units among 0..candidates-1 with the highest score (ties: the
// lower unit).
template <class T>
void keep_top(const T* score, uint32_t candidates, uint32_t take, std::vector<uint32_t>& order, uint8_t* keep) {
  order.clear();
  for (uint32_t u = 0; u < candidates; ++u) order.push_back(u);
  take = std::min(take, candidates);
  if (take == 0) return;
  auto higher = [score](uint32_t a, uint32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
  std::nth_element(order.begin(), order.begin() + (take - 1), order.end(), higher);
  for (uint32_t i = 0; i < take; ++i) keep[order[i]] = 1;
}
// Appends the moves that make HBM hold exactly the kept units' entries: fetch the kept
// ones on the host, offload the others in HBM (evicted entries stay evicted).
void move_to_keep_set(const StreamView& v, const uint8_t* keep, uint32_t unit, Plan& plan);

// Score-based eviction shared by H2O (lambda = 1) and A2SF: S_j <- lambda * S_j + a_j at
// every observed step; the most recent round(recent_ratio * budget) resident entries are
// kept; the smallest S_j among the rest are evicted (ties: lower position).
std::unique_ptr<Policy> make_accumulated_score(float lambda, double recent_ratio);

}  // namespace kvscope::policy
