#pragma once
// Page-access streams (docs/page-caches.md, "Page caches and libCacheSim"): which pages of
// each (layer, KV head) a decode step touches, as a stream of requests in libCacheSim's
// oracleGeneral format, and the demand-paged cache replay over such a stream.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "policies/policy.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::sim {

// When a page counts as accessed at a step: among the KV head's k pages with the most
// (group-aggregated) attention mass ("topk:K", ties to the lower page; all pages when
// fewer than K exist), or in the smallest set of pages, by decreasing mass, whose mass
// reaches a share x of the total ("mass:X", 0 < X <= 1).
struct AccessRule {
  enum class Kind { TopK, Mass } kind = Kind::TopK;
  uint32_t k = 8;
  double mass = 0.9;
  static AccessRule parse(const std::string& text);  // "topk:8", "mass:0.9"; Error names the text
  std::string str() const;
};

// One oracleGeneral record: packed 24 bytes little-endian on disk (libCacheSim
// traceReader/customizedReader/oracle/oracleGeneralBin.h: uint32 clock_time, uint64
// obj_id, uint32 obj_size, int64 next_access_vtime).
struct Request {
  uint32_t time = 0;   // decode step
  uint64_t id = 0;     // (layer * n_kv_heads + kv_head) << 32 | page
  uint32_t size = 1;   // >= 1
  int64_t next = -1;   // 1-based index in the stream of the next request to id, -1: none
                       // (libCacheSim traceConv's convention for next_access_vtime)
};

struct PageStream {
  std::vector<Request> requests;
  uint64_t rows = 0;             // query-head rows seen (decode steps x layers x heads)
  double covered_mass = 0;       // mean over rows of the attention mass on the accessed pages
  std::vector<double> covered_per_layer;
};

// The stream of a trace (decode steps only), requests ordered by step, layer, KV head,
// page; `next` filled in. Page p of a stream holds positions [p * page_size, (p + 1) *
// page_size); page_size >= 1 (1: one token per page). Page mass = sum over its positions
// of the group's per-position sum (sum, mean) or max (max) of the query heads'
// probabilities; mean selects the same pages as sum. Top-k traces: only the kept keys
// count (the residual is in no page). `progress`, when set, gets the share done (0..1).
PageStream build_page_stream(const trace::TraceReader& tr, uint32_t page_size, const AccessRule& rule, Aggregation agg,
                             const std::function<void(double)>& progress = nullptr);

// Fills in `next` for every request (1-based, -1 for none).
void link_next(std::vector<Request>& requests);

void write_oracle_general(const std::string& path, const std::vector<Request>& requests);
// Errors name the file and the byte offset (a size that is not a multiple of 24, size 0).
std::vector<Request> read_oracle_general(const std::string& path);

struct CacheRun {
  uint64_t requests = 0, misses = 0;
  double seconds = 0;
};
// reset(capacity), then every request in order; `seconds` is the loop alone (steady clock).
CacheRun run_cache(policy::CachePolicy& cache, const std::vector<Request>& requests, uint64_t capacity);

// sim::replay() for kind "cache" policies: the page stream of the trace under cfg.access,
// one cache of (budget / page_size) * streams pages shared by all streams (Error naming
// the budget when that is under one page per stream). retained_mass is the covered mass
// (demand paging serves every access); oracle_topk_mass is left 0 for the caller.
ReplayResult replay_cache(const trace::TraceReader& tr, const ReplayConfig& cfg, const policy::PolicyInfo& info,
                          const nlohmann::json& params);

}  // namespace kvscope::sim
