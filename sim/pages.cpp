// Page-access streams, the oracleGeneral format and the demand-paged cache replay
// (sim/pages.h, docs/page-caches.md).
#include "sim/pages.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "kernels/io/mapped_file.h"

namespace kvscope::sim {

namespace {

constexpr size_t kRecordBytes = 24;

[[noreturn]] void bad_rule(const std::string& text) {
  throw Error("access rule '" + text + "': expected topk:K (an integer K >= 1) or mass:X (0 < X <= 1)");
}

void put_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

AccessRule AccessRule::parse(const std::string& text) {
  AccessRule r;
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon + 1 == text.size()) bad_rule(text);
  const std::string kind = text.substr(0, colon), value = text.substr(colon + 1);
  const char* begin = value.c_str();
  char* end = nullptr;
  errno = 0;
  if (kind == "topk") {
    if (value.find_first_not_of("0123456789") != std::string::npos) bad_rule(text);
    const unsigned long long k = std::strtoull(begin, &end, 10);
    if (errno != 0 || *end != '\0' || k == 0 || k > (1ull << 30)) bad_rule(text);
    r.kind = Kind::TopK;
    r.k = static_cast<uint32_t>(k);
  } else if (kind == "mass") {
    const double x = std::strtod(begin, &end);
    if (errno != 0 || *end != '\0' || !(x > 0.0 && x <= 1.0)) bad_rule(text);
    r.kind = Kind::Mass;
    r.mass = x;
  } else {
    bad_rule(text);
  }
  return r;
}

std::string AccessRule::str() const {
  return kind == Kind::TopK ? "topk:" + std::to_string(k) : "mass:" + nlohmann::json(mass).dump();
}

PageStream build_page_stream(const trace::TraceReader& tr, uint32_t page_size, const AccessRule& rule, Aggregation agg,
                             const std::function<void(double)>& progress) {
  if (page_size == 0) throw Error("page stream: page size must be >= 1");
  const trace::TraceInfo& in = tr.info();
  const uint32_t L = in.n_layers, Hkv = in.n_kv_heads, H = in.n_heads, G = in.group;
  const uint32_t ctx = in.prompt_len + (tr.n_steps() ? tr.n_steps() - 1 : 0);
  const uint32_t max_pages = ctx / page_size + 1;
  PageStream out;
  out.covered_per_layer.assign(L, 0.0);
  std::vector<double> rows_l(L, 0.0);
  // Page masses are sums of f16 probabilities (multiples of 2^-24 below 1) in double:
  // exact, so they do not depend on the order of the additions. Mean selects the same
  // pages as sum (a constant factor), so both sum.
  std::vector<double> mass(max_pages), keymax(static_cast<size_t>(ctx) + 1);
  std::vector<uint32_t> order(max_pages);
  std::vector<uint8_t> chosen(max_pages);
  std::vector<trace::LayerFrame> frames(L);
  const bool use_max = agg == Aggregation::Max;
  const auto& chunks = tr.chunks();
  for (uint32_t ci = 0; ci < chunks.size(); ++ci) {
    for (uint32_t l = 0; l < L; ++l) tr.read_frame(ci, l, frames[l]);
    const size_t n_steps = frames[0].steps.size();
    for (size_t k = 0; k < n_steps; ++k)
      for (uint32_t l = 0; l < L; ++l) {
        const trace::StepLayerView& sv = frames[l].steps[k];
        if (sv.kind != trace::StepKind::Decode) continue;
        for (uint32_t kvh = 0; kvh < Hkv; ++kvh) {
          const uint32_t qpos = sv.row(0, kvh * G, H).qpos;
          if (qpos >= keymax.size()) throw Error(tr.path() + ": step " + std::to_string(sv.step) + ": query position beyond the context");
          const uint32_t n_pages = qpos / page_size + 1;
          std::fill(mass.begin(), mass.begin() + n_pages, 0.0);
          if (use_max) std::fill(keymax.begin(), keymax.begin() + qpos + 1, 0.0);
          for (uint32_t g = 0; g < G; ++g) {
            const trace::RowView& rv = sv.row(0, kvh * G + g, H);
            for (uint32_t i = 0; i < rv.n; ++i) {
              const uint32_t key = in.mode == trace::Mode::Dense ? i : rv.keys[i];
              if (key > qpos) throw Error(tr.path() + ": step " + std::to_string(sv.step) + ": key beyond the query position");
              const double p = f16_to_f32(rv.probs[i]);
              if (use_max) keymax[key] = std::max(keymax[key], p);
              else mass[key / page_size] += p;
            }
          }
          if (use_max)
            for (uint32_t j = 0; j <= qpos; ++j) mass[j / page_size] += keymax[j];
          // Pages by decreasing mass, ties to the lower page.
          for (uint32_t p = 0; p < n_pages; ++p) order[p] = p;
          auto heavier = [&mass](uint32_t a, uint32_t b) { return mass[a] > mass[b] || (mass[a] == mass[b] && a < b); };
          uint32_t n_chosen = 0;
          if (rule.kind == AccessRule::Kind::TopK) {
            n_chosen = std::min(rule.k, n_pages);
            std::nth_element(order.begin(), order.begin() + (n_chosen - 1), order.begin() + n_pages, heavier);
          } else {
            std::sort(order.begin(), order.begin() + n_pages, heavier);
            double total = 0;
            for (uint32_t p = 0; p < n_pages; ++p) total += mass[p];
            const double goal = rule.mass * total;
            double cum = 0;
            while (n_chosen < n_pages && cum < goal) cum += mass[order[n_chosen++]];
          }
          std::sort(order.begin(), order.begin() + n_chosen);
          std::fill(chosen.begin(), chosen.begin() + n_pages, 0);
          const uint64_t stream = static_cast<uint64_t>(l) * Hkv + kvh;
          for (uint32_t i = 0; i < n_chosen; ++i) {
            chosen[order[i]] = 1;
            out.requests.push_back({sv.step, (stream << 32) | order[i], 1, -1});
          }
          // Covered mass: each query head's own probabilities on the accessed pages.
          for (uint32_t g = 0; g < G; ++g) {
            const trace::RowView& rv = sv.row(0, kvh * G + g, H);
            double m = 0;
            for (uint32_t i = 0; i < rv.n; ++i) {
              const uint32_t key = in.mode == trace::Mode::Dense ? i : rv.keys[i];
              if (chosen[key / page_size]) m += f16_to_f32(rv.probs[i]);
            }
            out.covered_per_layer[l] += m;
            rows_l[l] += 1;
          }
        }
      }
    if (progress) progress(0.9 * (ci + 1) / static_cast<double>(chunks.size()));
  }
  double sum = 0, rows = 0;
  for (uint32_t l = 0; l < L; ++l) {
    sum += out.covered_per_layer[l];
    rows += rows_l[l];
    out.covered_per_layer[l] = rows_l[l] > 0 ? out.covered_per_layer[l] / rows_l[l] : 0.0;
  }
  out.rows = static_cast<uint64_t>(rows);
  out.covered_mass = rows > 0 ? sum / rows : 0.0;
  link_next(out.requests);
  if (progress) progress(1.0);
  return out;
}

void link_next(std::vector<Request>& requests) {
  std::unordered_map<uint64_t, int64_t> later;  // id -> 0-based index of its next request
  later.reserve(requests.size() / 4 + 16);
  for (size_t i = requests.size(); i-- > 0;) {
    auto it = later.find(requests[i].id);
    if (it == later.end()) {
      requests[i].next = -1;
      later.emplace(requests[i].id, static_cast<int64_t>(i));
    } else {
      requests[i].next = it->second + 1;
      it->second = static_cast<int64_t>(i);
    }
  }
}

void write_oracle_general(const std::string& path, const std::vector<Request>& requests) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail(path, std::string("cannot open for writing: ") + std::strerror(errno));
  std::vector<uint8_t> buf;
  constexpr size_t kBatch = 1 << 14;
  buf.reserve(kBatch * kRecordBytes);
  bool ok = true;
  for (size_t i = 0; i < requests.size() && ok; i += kBatch) {
    const size_t n = std::min(kBatch, requests.size() - i);
    buf.resize(n * kRecordBytes);
    for (size_t r = 0; r < n; ++r) {
      const Request& q = requests[i + r];
      uint8_t* p = buf.data() + r * kRecordBytes;
      put_le(p, q.time, 4);
      put_le(p + 4, q.id, 8);
      put_le(p + 12, q.size, 4);
      put_le(p + 16, static_cast<uint64_t>(q.next), 8);
    }
    ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  }
  const int e = errno;
  if (std::fclose(f) != 0 || !ok) fail(path, std::string("write failed: ") + std::strerror(ok ? errno : e));
}

std::vector<Request> read_oracle_general(const std::string& path) {
  MappedFile file(path);
  const size_t size = file.size();
  if (size % kRecordBytes != 0)
    fail_at(path, size - size % kRecordBytes,
            "truncated record: file size " + std::to_string(size) + " is not a multiple of the 24-byte oracleGeneral record");
  const size_t n = size / kRecordBytes;
  std::vector<Request> out(n);
  const uint8_t* d = file.data();
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = d + i * kRecordBytes;
    Request& q = out[i];
    q.time = static_cast<uint32_t>(get_le(p, 4));
    q.id = get_le(p + 4, 8);
    q.size = static_cast<uint32_t>(get_le(p + 12, 4));
    q.next = static_cast<int64_t>(get_le(p + 16, 8));
    const uint64_t off = i * kRecordBytes;
    if (q.size == 0) fail_at(path, off, "record " + std::to_string(i) + ": object size 0 (must be >= 1)");
    if (q.next == INT64_MAX) q.next = -1;  // libCacheSim reads both as "no next access"
    if (q.next < -1 || (q.next >= 0 && static_cast<uint64_t>(q.next) <= i + 1))
      fail_at(path, off, "record " + std::to_string(i) + ": next access " + std::to_string(q.next) +
                             " is neither -1 nor the 1-based index of a later record");
  }
  return out;
}

CacheRun run_cache(policy::CachePolicy& cache, const std::vector<Request>& requests, uint64_t capacity) {
  cache.reset(capacity);
  CacheRun r;
  r.requests = requests.size();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t hits = 0;
  for (const Request& q : requests) hits += cache.access(q.id, q.next) ? 1 : 0;
  const auto t1 = std::chrono::steady_clock::now();
  r.misses = r.requests - hits;
  r.seconds = std::chrono::duration<double>(t1 - t0).count();
  return r;
}

ReplayResult replay_cache(const trace::TraceReader& tr, const ReplayConfig& cfg, const policy::PolicyInfo& info,
                          const nlohmann::json& params) {
  if (!info.make_cache) throw Error("sim: policy " + info.name + " is not a page cache (kind " + info.kind + ")");
  if (cfg.page_size == 0) throw Error("sim: " + cfg.policy + ": page size must be >= 1");
  const AccessRule rule = AccessRule::parse(cfg.access);
  const trace::TraceInfo& in = tr.info();
  const uint64_t per_stream = cfg.budget / cfg.page_size;
  if (per_stream == 0)
    throw Error("sim: " + cfg.policy + ": budget " + std::to_string(cfg.budget) + " is less than one page of " +
                std::to_string(cfg.page_size) + " positions per (layer, KV head)");
  const uint64_t capacity = per_stream * in.n_layers * in.n_kv_heads;
  std::function<void(double)> progress;
  if (cfg.progress) progress = [&cfg](double x) { cfg.progress(0.9 * x); };
  const PageStream ps = build_page_stream(tr, cfg.page_size, rule, cfg.agg, progress);
  auto cache = info.make_cache(params);
  const CacheRun run = run_cache(*cache, ps.requests, capacity);

  ReplayResult r;
  r.policy = cfg.policy;
  r.kind = info.kind;
  r.params = params;
  r.budget = cfg.budget;
  r.page_size = cfg.page_size;
  r.steps = tr.n_steps();
  r.context = in.prompt_len + (tr.n_steps() ? tr.n_steps() - 1 : 0);
  r.requests = run.requests;
  r.misses = run.misses;
  r.fetches = run.misses;
  r.entry_bytes = 2ull * in.head_dim * 2;  // K and V, fp16
  r.bytes_fetched = run.misses * cfg.page_size * r.entry_bytes;
  r.rows = ps.rows;
  r.retained_mass = ps.covered_mass;  // demand paging serves every access
  r.retained_per_layer = ps.covered_per_layer;
  if (cfg.progress) cfg.progress(1.0);
  return r;
}

}  // namespace kvscope::sim
