#include "sim/replay.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "kernels/cpu/kv_cache.h"
#include "kernels/cpu/simd.h"
#include "kernels/io/error.h"
#include "policies/registry.h"
#include "sim/ledger.h"
#include "sim/pages.h"

namespace kvscope::sim {

using nlohmann::json;

json ReplayResult::to_json() const {
  json series = json::array();
  for (const StepMetrics& s : per_step)
    series.push_back({{"step", s.step},
                     {"retained_mass", s.retained_mass},
                     {"oracle_topk_mass", s.oracle_topk_mass},
                     {"hbm_entries", s.hbm_entries},
                     {"hbm_bytes", s.hbm_bytes},
                     {"host_entries", s.host_entries},
                     {"bytes_fetched", s.bytes_fetched},
                     {"bytes_offloaded", s.bytes_offloaded},
                     {"evictions", s.evictions}});
  json j = {{"policy", policy},
            {"kind", kind},
            {"params", params},
            {"budget", budget},
            {"page_size", page_size},
            {"steps", steps},
            {"context", context},
            {"rows", rows},
            {"retained_mass", retained_mass},
            {"oracle_topk_mass", oracle_topk_mass},
            {"retained_per_layer", retained_per_layer},
            {"oracle_topk_per_layer", oracle_per_layer},
            {"retained_per_head", retained_per_head},
            {"output_rel_l2", has_output_error ? json(output_rel_l2) : json(nullptr)},
            {"output_rel_l2_per_layer", has_output_error ? json(output_rel_l2_per_layer) : json(nullptr)},
            {"entry_bytes", entry_bytes},
            {"evictions", evictions},
            {"offloads", offloads},
            {"fetches", fetches},
            {"quantized", quantized},
            {"bytes_offloaded", bytes_offloaded},
            {"bytes_fetched", bytes_fetched},
            {"mean_hbm_entries", mean_hbm_entries},
            {"mean_hbm_pages", mean_hbm_pages},
            {"peak_hbm_bytes", peak_hbm_bytes},
            {"quant_rel_l2", quant_rel_l2},
            {"requests", requests},
            {"misses", misses}};
  if (!per_step.empty()) j["per_step"] = series;
  return j;
}

namespace {

uint32_t context_of(const trace::TraceReader& tr) { return tr.info().prompt_len + tr.n_steps() - 1; }

// Quantize-dequantize one V row at `bits` (asymmetric min/max over the row, as KIVI does
// per token for V): cpu::quant_dequant_row, the function the live run stores K and V with.
// Returns ||v - dq|| / ||v||.
double quantize_row(const float* v, float* dq, uint32_t d, uint32_t bits) { return cpu::quant_dequant_row(v, dq, d, bits); }

// sum_j [res_j] x_j in double, branch-free so that it vectorises. Attention rows come from
// fp16 values (multiples of 2^-24, at most 1), whose double sums are exact in any order,
// so the result does not depend on the order. kFromHalves: x is first converted from the
// fp16 row h in the same pass (and stored).
template <bool kFromHalves>
double masked_sum_pass(const uint16_t* h, float* x, const uint8_t* res, uint32_t n) {
  uint32_t j = 0;
  double total = 0;
#ifdef KVSCOPE_AVX2
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (; j + 8 <= n; j += 8) {
    __m256 xv;
    if constexpr (kFromHalves) {
      xv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j)));
      _mm256_storeu_ps(x + j, xv);
    } else {
      xv = _mm256_loadu_ps(x + j);
    }
    const __m256i m8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(res + j)));
    const __m256 v = _mm256_and_ps(xv, _mm256_castsi256_ps(_mm256_cmpgt_epi32(m8, _mm256_setzero_si256())));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
  total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
  for (; j < n; ++j) {
    if constexpr (kFromHalves) x[j] = f16_to_f32(h[j]);
    total += res[j] ? static_cast<double>(x[j]) : 0.0;
  }
  return total;
}

double masked_sum(const float* x, const uint8_t* res, uint32_t n) {
  return masked_sum_pass<false>(nullptr, const_cast<float*>(x), res, n);
}
// masked_sum() fused with the fp16 -> fp32 conversion of the row (stored to dst).
double decode_masked_sum(const uint16_t* h, float* dst, const uint8_t* res, uint32_t n) {
  return masked_sum_pass<true>(h, dst, res, n);
}

// row_j <- res_j ? row_j * inv : 0, and fold the result into agg (copy, sum or max).
void renorm_fold(float* row, const uint8_t* res, float inv, float* agg, uint32_t n, bool first, bool max) {
  uint32_t j = 0;
#ifdef KVSCOPE_AVX2
  const __m256 vinv = _mm256_set1_ps(inv);
  for (; j + 8 <= n; j += 8) {
    const __m256i m8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(res + j)));
    const __m256 mask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(m8, _mm256_setzero_si256()));
    const __m256 r = _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(row + j), vinv), mask);
    _mm256_storeu_ps(row + j, r);
    __m256 a = r;
    if (!first) a = max ? _mm256_max_ps(_mm256_loadu_ps(agg + j), r) : _mm256_add_ps(_mm256_loadu_ps(agg + j), r);
    _mm256_storeu_ps(agg + j, a);
  }
#endif
  for (; j < n; ++j) {
    const float r = res[j] ? row[j] * inv : 0.0f;
    row[j] = r;
    agg[j] = first ? r : max ? std::max(agg[j], r) : agg[j] + r;
  }
}

// The oracle-topk bound alone (for replays that do not run the main loop): per decode row,
// the mass of the `budget` largest entries; mean over rows, overall and per layer.
void oracle_only(const trace::TraceReader& tr, uint32_t budget, ReplayResult& out) {
  const auto& in = tr.info();
  trace::LayerFrame frame;
  std::vector<float> row(context_of(tr));
  double total = 0, n_rows = 0;
  out.oracle_per_layer.assign(in.n_layers, 0.0);
  std::vector<double> rows_l(in.n_layers, 0.0);
  for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci)
    for (uint32_t l = 0; l < in.n_layers; ++l) {
      tr.read_frame(ci, l, frame);
      for (const trace::StepLayerView& sv : frame.steps) {
        if (sv.kind == trace::StepKind::Prefill) continue;
        const uint32_t n = sv.first_pos + 1, b = std::min(budget, n);
        for (uint32_t h = 0; h < in.n_heads; ++h) {
          const trace::RowView& rv = sv.row(0, h, in.n_heads);
          std::fill(row.begin(), row.begin() + n, 0.0f);
          if (in.mode == trace::Mode::Dense) trace::halves_to_floats(rv.probs, row.data(), rv.n);
          else
            for (uint32_t i = 0; i < rv.n; ++i) row[rv.keys[i]] = f16_to_f32(rv.probs[i]);
          std::nth_element(row.begin(), row.begin() + (b - 1), row.begin() + n, std::greater<float>());
          double best = 0;
          for (uint32_t i = 0; i < b; ++i) best += row[i];
          out.oracle_per_layer[l] += best, rows_l[l] += 1, total += best, n_rows += 1;
        }
      }
    }
  for (uint32_t l = 0; l < in.n_layers; ++l) out.oracle_per_layer[l] = rows_l[l] ? out.oracle_per_layer[l] / rows_l[l] : 1.0;
  out.oracle_topk_mass = n_rows ? total / n_rows : 1.0;
}

}  // namespace

std::vector<trace::LayerFrame> decode_all(const trace::TraceReader& tr) {
  const uint32_t L = tr.info().n_layers;
  std::vector<trace::LayerFrame> frames(tr.chunks().size() * L);
  for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci)
    for (uint32_t l = 0; l < L; ++l) tr.read_frame(ci, l, frames[static_cast<size_t>(ci) * L + l]);
  return frames;
}

std::vector<uint32_t> stream_budgets(const ReplayConfig& cfg, uint32_t n_layers, uint32_t n_kv_heads, uint32_t uniform) {
  std::vector<uint32_t> b(static_cast<size_t>(n_layers) * n_kv_heads, uniform);
  if (!cfg.layer_budgets.empty())
    for (uint32_t l = 0; l < n_layers; ++l)
      for (uint32_t h = 0; h < n_kv_heads; ++h) b[l * n_kv_heads + h] = cfg.layer_budgets[l];
  if (!cfg.stream_budgets.empty()) b = cfg.stream_budgets;
  return b;
}

json validate_run(const ReplayConfig& cfg, uint32_t ctx, uint32_t n_layers, uint32_t n_kv_heads, const std::string& who) {
  const policy::PolicyInfo& info = policy::find(cfg.policy);
  json params = policy::validate_params(info.params, cfg.params, "policy " + cfg.policy);
  if (cfg.policy != "full" && (cfg.budget == 0 || cfg.budget > ctx))
    throw Error(who + "budget " + std::to_string(cfg.budget) + " must be between 1 and the trace's context of " +
                std::to_string(ctx) + " tokens");
  if (cfg.page_size == 0 || cfg.page_size > ctx)
    throw Error(who + "page size " + std::to_string(cfg.page_size) + " must be between 1 and the context (" +
                std::to_string(ctx) + ")");
  if (cfg.page_size > 1 && cfg.policy != "full" && cfg.budget < cfg.page_size)
    throw Error(who + "budget " + std::to_string(cfg.budget) + " is smaller than one page of " + std::to_string(cfg.page_size));
  const size_t S = static_cast<size_t>(n_layers) * n_kv_heads;
  if (!cfg.layer_budgets.empty() && cfg.layer_budgets.size() != n_layers)
    throw Error(who + "layer budgets: " + std::to_string(cfg.layer_budgets.size()) + " values for " +
                std::to_string(n_layers) + " layers");
  if (!cfg.stream_budgets.empty() && cfg.stream_budgets.size() != S)
    throw Error(who + "head budgets: " + std::to_string(cfg.stream_budgets.size()) + " values for " + std::to_string(S) +
                " (layer, KV head) streams");
  if (!cfg.stream_weights.empty() && cfg.stream_weights.size() != S)
    throw Error(who + "stream weights: " + std::to_string(cfg.stream_weights.size()) + " values for " + std::to_string(S) +
                " (layer, KV head) streams");
  for (double w : cfg.stream_weights)
    if (!(w >= 0)) throw Error(who + "stream weights must be >= 0");
  for (uint32_t b : cfg.layer_budgets)
    if (b == 0 || b > ctx) throw Error(who + "layer budget " + std::to_string(b) + " outside 1.." + std::to_string(ctx));
  for (uint32_t b : cfg.stream_budgets)
    if (b == 0 || b > ctx) throw Error(who + "head budget " + std::to_string(b) + " outside 1.." + std::to_string(ctx));
  return params;
}

void check_allocation(const std::string& who, const std::vector<uint32_t>& given, const std::vector<uint32_t>& proposed,
                      uint32_t ctx, uint32_t page_size) {
  uint64_t before = 0, after = 0;
  for (uint32_t b : given) before += b;
  for (uint32_t b : proposed) after += b;
  if (proposed.size() != given.size() || after > before)
    throw Error(who + " allocated " + std::to_string(after) + " entries of budget, more than the " + std::to_string(before) +
                " it was given");
  for (size_t s = 0; s < proposed.size(); ++s)
    if (proposed[s] == 0 || proposed[s] > ctx || (page_size > 1 && proposed[s] < page_size))
      throw Error(who + " allocated a budget of " + std::to_string(proposed[s]) + " to stream " + std::to_string(s) +
                  " (must be at least one page and at most the context)");
}

json validate(const trace::TraceReader& tr, const ReplayConfig& cfg) {
  const policy::PolicyInfo& info = policy::find(cfg.policy);
  const auto& in = tr.info();
  if (tr.n_steps() == 0) throw Error(tr.path() + ": trace has no steps");
  const uint32_t ctx = context_of(tr);
  const std::string who = "sim: " + cfg.policy + ": ";
  json params = validate_run(cfg, ctx, in.n_layers, in.n_kv_heads, who);
  if ((info.needs & (policy::kNeedsQK | policy::kNeedsV)) && !in.with_qkv)
    throw Error(who + "needs the trace's " + std::string(info.needs & policy::kNeedsQK ? "Q and K" : "V") + ", and " +
                tr.path() + " was captured without them (capture with --with-qkv)");
  if (info.kind == "cache" && cfg.max_steps)
    throw Error(who + "a shortened replay (max_steps) is not available for cache policies");
  if (info.kind == "cache") {
    const AccessRule rule = AccessRule::parse(cfg.access);
    const uint32_t B = std::max<uint32_t>(1, cfg.page_size);
    // Demand paging needs a step's accessed pages in HBM at once.
    if (rule.kind == AccessRule::Kind::TopK && static_cast<uint64_t>(rule.k) * B > cfg.budget)
      throw Error(who + "access " + rule.str() + " touches " + std::to_string(rule.k) + " pages of " + std::to_string(B) +
                  " per step, more than the budget of " + std::to_string(cfg.budget) + " entries holds");
  }
  return params;
}

ReplayResult replay(const trace::TraceReader& tr, const ReplayConfig& cfg) {
  const json params = validate(tr, cfg);
  const policy::PolicyInfo& info = policy::find(cfg.policy);
  if (info.kind == "cache") {
    ReplayResult r = replay_cache(tr, cfg, info, params);
    oracle_only(tr, cfg.budget, r);
    return r;
  }

  const auto& in = tr.info();
  const uint32_t ctx = context_of(tr);
  const bool full = cfg.policy == "full";
  const uint32_t B = cfg.page_size;
  const uint32_t hd = in.head_dim, G = in.group;
  policy::Shape shape{in.n_layers, in.n_kv_heads, ctx, hd, G, B, &tr,
                      cfg.agg == Aggregation::Max    ? policy::GroupAgg::Max
                      : cfg.agg == Aggregation::Mean ? policy::GroupAgg::Mean
                                                     : policy::GroupAgg::Sum};
  const uint32_t S = shape.streams();
  auto pol = info.make(params);
  pol->reset(shape);

  // Where every entry lives, per stream (sim/ledger.h).
  const size_t cells = static_cast<size_t>(S) * ctx;
  Ledger book(shape, ctx, stream_budgets(cfg, in.n_layers, in.n_kv_heads, full ? ctx : cfg.budget), "sim: policy " + cfg.policy);
  const uint64_t entry_bytes = 2ull * hd * 2;  // K and V at 16 bits
  auto bytes_at = [&](uint8_t b) { return entry_bytes * b / 16; };
  auto weight = [&](uint32_t s) { return cfg.stream_weights.empty() ? 1.0 : cfg.stream_weights[s]; };
  // Copies a list of moved positions takes: distinct pages (entries at page size 1) and
  // runs of adjacent ones.
  std::vector<uint32_t> moved;
  auto count_moves = [&](const std::vector<uint32_t>& pos, double w, double& pages, double& runs) {
    if (pos.empty()) return;
    moved.assign(pos.begin(), pos.end());
    for (uint32_t& j : moved) j /= B;
    std::sort(moved.begin(), moved.end());
    uint32_t n_pages_moved = 0, n_runs = 0;
    for (size_t i = 0; i < moved.size(); ++i) {
      if (i > 0 && moved[i] == moved[i - 1]) continue;
      ++n_pages_moved;
      if (i == 0 || moved[i] != moved[i - 1] + 1) ++n_runs;
    }
    pages += w * n_pages_moved, runs += w * n_runs;
  };

  const bool with_v = in.with_qkv, need_qk = info.needs & policy::kNeedsQK, need_future = info.needs & policy::kNeedsFuture;
  // Q and K are kept when the policy reads them, and whenever the trace has them: the
  // output error of a quantized entry includes its key's error (the score moves).
  const bool keep_qk = need_qk || with_v;
  std::vector<float> vcache(with_v ? cells * hd : 0), vdq, kdq, kcache(keep_qk ? cells * hd : 0), qbuf(keep_qk ? G * hd : 0);
  const double score_scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<float> rows(static_cast<size_t>(G) * ctx), agg(ctx), top(ctx), future(need_future ? ctx : 0), lse(G);
  std::vector<float> window(static_cast<size_t>(in.prefill_window) * ctx);
  std::vector<double> o_full(hd), o_kept(hd);
  std::vector<double> ret_l(in.n_layers, 0), orc_l(in.n_layers, 0), rows_l(in.n_layers, 0), err_l(in.n_layers, 0);
  std::vector<double> ret_h(S, 0), rows_h(S, 0);
  std::vector<StepMetrics> steps(tr.n_steps());
  std::vector<double> step_ret(tr.n_steps(), 0), step_orc(tr.n_steps(), 0), step_rows(tr.n_steps(), 0);
  for (uint32_t s = 0; s < tr.n_steps(); ++s) steps[s].step = s;
  double quant_err = 0, hbm_entries_sum = 0, hbm_pages_sum = 0, stream_steps = 0;
  ReplayResult out;
  out.entry_bytes = entry_bytes;
  policy::Plan plan;
  trace::LayerFrame frame;

  auto fold = [&](float* dst, const float* src, uint32_t n, bool first) { fold_head(dst, src, n, first, cfg.agg); };
  auto scale = [&](float* x, uint32_t n) { scale_group(x, n, cfg.agg, G); };
  // Row of one query head (dense or top-k) into dst[0..n), zeros elsewhere.
  auto decode_row = [&](const trace::RowView& rv, float* dst, uint32_t n) {
    if (in.mode == trace::Mode::Dense && rv.n == n) {
      trace::halves_to_floats(rv.probs, dst, n);
      return;
    }
    std::fill(dst, dst + n, 0.0f);
    if (in.mode == trace::Mode::Dense) trace::halves_to_floats(rv.probs, dst, rv.n);
    else
      for (uint32_t i = 0; i < rv.n; ++i) dst[rv.keys[i]] = f16_to_f32(rv.probs[i]);
  };

  // What a move costs beyond the ledger: counters, bytes, and quantized K/V rows.
  struct Costs final : Ledger::Moves {
    ReplayResult& out;
    StepMetrics* m = nullptr;
    double w = 1;
    std::function<uint64_t(uint8_t)> bytes;
    std::function<void(uint32_t, uint32_t, uint8_t)> quantize_rows;
    explicit Costs(ReplayResult& o) : out(o) {}
    void evicted(uint32_t, uint32_t, uint8_t) override { ++out.evictions, ++m->evictions; }
    void offloaded(uint32_t, uint32_t, uint8_t bits) override {
      const uint64_t b = bytes(bits);
      out.bytes_offloaded += b, m->bytes_offloaded += b, ++out.offloads;
      m->t_offload_units += w * bits / 16.0;
    }
    void quantized(uint32_t s, uint32_t j, uint8_t bits) override {
      ++out.quantized;
      quantize_rows(s, j, bits);
    }
    void fetched(uint32_t, uint32_t, uint8_t bits) override {
      const uint64_t b = bytes(bits);
      out.bytes_fetched += b, m->bytes_fetched += b, ++out.fetches;
      m->t_fetch_units += w * bits / 16.0;
    }
  } costs(out);
  costs.bytes = bytes_at;
  costs.quantize_rows = [&](uint32_t s, uint32_t j, uint8_t nb) {
    if (!with_v) return;
    if (vdq.empty()) vdq.assign(cells * hd, 0.0f), kdq.assign(cells * hd, 0.0f);
    const size_t c = static_cast<size_t>(s) * ctx + j;
    quant_err += quantize_row(vcache.data() + c * hd, vdq.data() + c * hd, hd, nb);
    quantize_row(kcache.data() + c * hd, kdq.data() + c * hd, hd, nb);
  };
  // Runs plan() on one stream and applies it through the ledger (which checks it).
  auto run_plan = [&](policy::StreamView& v) {
    plan.clear();
    pol->plan(v, plan);
    StepMetrics& m = steps[v.step];
    costs.m = &m, costs.w = weight(v.stream);
    book.apply(v, plan, costs);
    count_moves(plan.offload, costs.w, m.t_offload_pages, m.t_offload_runs);
    count_moves(plan.fetch, costs.w, m.t_fetch_pages, m.t_fetch_runs);
  };

  const size_t n_chunks = tr.chunks().size();
  if (cfg.frames && cfg.frames->size() != n_chunks * in.n_layers)
    throw Error("sim: pre-decoded frames do not match " + tr.path());
  auto frame_of = [&](uint32_t ci, uint32_t l) -> const trace::LayerFrame& {
    if (cfg.frames) return (*cfg.frames)[static_cast<size_t>(ci) * in.n_layers + l];
    tr.read_frame(ci, l, frame);
    return frame;
  };
  auto report = [&](double done) {
    if (cfg.progress) cfg.progress(done);
  };

  // Prefill (step 0): every stream observes the prompt, then budgets are allocated, then
  // every stream is brought within its budget.
  for (uint32_t l = 0; l < in.n_layers; ++l) {
    const trace::StepLayerView& sv = frame_of(0, l).steps.at(0);
    if (sv.kind != trace::StepKind::Prefill) throw Error(tr.path() + ": step 0 is not a prefill step");
    const uint32_t n = sv.first_pos + sv.n_queries, nw = sv.n_rows;
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      const uint32_t s = shape.stream(l, kvh);
      for (uint32_t j = sv.first_pos; j < n; ++j) book.append(s, j);
      for (uint32_t t = 0; t < sv.n_queries; ++t) {
        const size_t c = static_cast<size_t>(s) * ctx + sv.first_pos + t;
        if (with_v) trace::halves_to_floats(sv.v + (static_cast<size_t>(t) * in.n_kv_heads + kvh) * hd, vcache.data() + c * hd, hd);
        if (keep_qk) trace::halves_to_floats(sv.k + (static_cast<size_t>(t) * in.n_kv_heads + kvh) * hd, kcache.data() + c * hd, hd);
      }
      policy::StreamView v = book.view(0, l, kvh, n, true);
      for (uint32_t g = 0; g < G; ++g) fold(agg.data(), sv.colsum + static_cast<size_t>(kvh * G + g) * sv.n_queries, n, g == 0);
      scale(agg.data(), n);
      for (uint32_t r = 0; r < nw; ++r) {
        float* w = window.data() + static_cast<size_t>(r) * ctx;
        for (uint32_t g = 0; g < G; ++g) {
          decode_row(sv.row(r, kvh * G + g, in.n_heads), rows.data(), n);
          fold(w, rows.data(), n, g == 0);
        }
        scale(w, n);
      }
      v.attn = agg.data();
      v.head_attn = sv.colsum + static_cast<size_t>(kvh) * G * sv.n_queries;
      v.head_stride = sv.n_queries;
      v.window = nw ? window.data() : nullptr;
      v.n_window = nw;
      v.window_stride = ctx;
      v.keys = need_qk ? kcache.data() + static_cast<size_t>(s) * ctx * hd : nullptr;
      pol->observe(v);
    }
  }
  {
    std::vector<uint32_t> proposed = book.budgets();
    policy::Allocation a{&shape, full ? ctx : cfg.budget, in.prompt_len};
    pol->allocate(a, proposed);
    check_allocation("sim: policy " + cfg.policy, book.budgets(), proposed, ctx, B);
    book.budgets() = proposed;
  }
  for (uint32_t l = 0; l < in.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      policy::StreamView v = book.view(0, l, kvh, in.prompt_len, true);
      run_plan(v);
      const uint32_t s = v.stream;
      steps[0].hbm_entries += book.n_resident(s);
      steps[0].hbm_bytes += static_cast<uint64_t>(std::llround(book.units(s) * static_cast<double>(entry_bytes)));
      steps[0].host_entries += book.n_host(s);
      steps[0].t_entries += weight(s) * book.n_resident(s), steps[0].t_units += weight(s) * book.units(s);
    }
  report(1.0 / static_cast<double>(n_chunks + 1));

  // Decode steps.
  for (uint32_t ci = 0; ci < n_chunks; ++ci) {
    if (cfg.max_steps && tr.chunks()[ci].first_step > cfg.max_steps) break;
    for (uint32_t l = 0; l < in.n_layers; ++l) {
      for (const trace::StepLayerView& sv : frame_of(ci, l).steps) {
        if (sv.kind == trace::StepKind::Prefill || (cfg.max_steps && sv.step > cfg.max_steps)) continue;
        const uint32_t n = sv.first_pos + 1, j_new = sv.first_pos;
        StepMetrics& m = steps[sv.step];
        for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
          const uint32_t s = shape.stream(l, kvh);
          const size_t base = static_cast<size_t>(s) * ctx;
          book.append(s, j_new);
          if (with_v) trace::halves_to_floats(sv.v + static_cast<size_t>(kvh) * hd, vcache.data() + (base + j_new) * hd, hd);
          if (keep_qk) {
            trace::halves_to_floats(sv.k + static_cast<size_t>(kvh) * hd, kcache.data() + (base + j_new) * hd, hd);
            for (uint32_t g = 0; g < G; ++g)
              trace::halves_to_floats(sv.q + static_cast<size_t>(kvh * G + g) * hd, qbuf.data() + static_cast<size_t>(g) * hd, hd);
          }
          // Rows are decoded before the plan only when the policy reads this step's
          // attention there (offline bounds); otherwise decoding is fused with the
          // retained-mass sum below.
          for (uint32_t g = 0; g < G; ++g) {
            const trace::RowView& rv = sv.row(0, kvh * G + g, in.n_heads);
            if (need_future) decode_row(rv, rows.data() + static_cast<size_t>(g) * ctx, n);
            lse[g] = rv.lse;
          }
          policy::StreamView v = book.view(sv.step, l, kvh, n, false);
          if (need_future) {
            for (uint32_t g = 0; g < G; ++g) fold(future.data(), rows.data() + static_cast<size_t>(g) * ctx, n, g == 0);
            scale(future.data(), n);
            v.future = future.data();
          }
          if (need_qk) {
            v.q = qbuf.data();
            v.keys = kcache.data() + base * hd;
          }
          run_plan(v);
          v.q = nullptr, v.keys = nullptr, v.future = nullptr;
          const uint8_t* res = book.resident(s);
          const uint32_t b_oracle = std::min(n, std::max(book.budgets()[s], book.n_resident(s)));
          for (uint32_t g = 0; g < G; ++g) {
            float* row = rows.data() + static_cast<size_t>(g) * ctx;
            double kept;
            const trace::RowView& rv = sv.row(0, kvh * G + g, in.n_heads);
            if (!need_future && in.mode == trace::Mode::Dense && rv.n == n) {
              kept = decode_masked_sum(rv.probs, row, res, n);
            } else {
              if (!need_future) decode_row(rv, row, n);
              kept = masked_sum(row, res, n);
            }
            double best = 0;
            if (cfg.bounds && b_oracle >= n) {
              for (uint32_t j = 0; j < n; ++j) best += row[j];
            } else if (cfg.bounds) {
              std::copy(row, row + n, top.begin());
              std::nth_element(top.begin(), top.begin() + (b_oracle - 1), top.begin() + n, std::greater<float>());
              for (uint32_t i = 0; i < b_oracle; ++i) best += top[i];
            }
            ret_l[l] += kept, orc_l[l] += best, rows_l[l] += 1;
            ret_h[s] += kept, rows_h[s] += 1;
            step_ret[sv.step] += kept, step_orc[sv.step] += best, step_rows[sv.step] += 1;
            if (with_v && cfg.output_error) {
              const float* V = vcache.data() + base * hd;
              const float* VQ = vdq.empty() ? nullptr : vdq.data() + base * hd;
              const uint8_t* bt = book.bits(s);
              const float* K = kcache.data() + base * hd;
              const float* KQ = kdq.empty() ? nullptr : kdq.data() + base * hd;
              const float* q = qbuf.data() + static_cast<size_t>(g) * hd;
              std::fill(o_full.begin(), o_full.end(), 0.0);
              std::fill(o_kept.begin(), o_kept.end(), 0.0);
              double total = 0, kept_w = 0;
              for (uint32_t j = 0; j < n; ++j) {
                if (row[j] == 0.0f) continue;
                total += row[j];
                const float* vj = V + static_cast<size_t>(j) * hd;
                const bool quant = res[j] && bt[j] < 16;
                const float* vk = quant ? VQ + static_cast<size_t>(j) * hd : vj;
                // A quantized key moves the score by q.(k^ - k)/sqrt(d): its weight by exp of that.
                double w = row[j];
                if (quant) {
                  const float *kj = K + static_cast<size_t>(j) * hd, *kq = KQ + static_cast<size_t>(j) * hd;
                  double dz = 0;
                  for (uint32_t d = 0; d < hd; ++d) dz += static_cast<double>(q[d]) * (kq[d] - kj[d]);
                  w *= std::exp(dz * score_scale);
                }
                if (res[j]) kept_w += w;
                for (uint32_t d = 0; d < hd; ++d) {
                  o_full[d] += static_cast<double>(row[j]) * vj[d];
                  if (res[j]) o_kept[d] += w * vk[d];
                }
              }
              double num = 0, den = 0;
              for (uint32_t d = 0; d < hd; ++d) {
                const double f = o_full[d] / total, k = kept_w > 0 ? o_kept[d] / kept_w : 0.0;
                num += (k - f) * (k - f);
                den += f * f;
              }
              err_l[l] += den > 0 ? std::sqrt(num / den) : 0.0;
            }
            // What the model would compute over the HBM entries: renormalised.
            const float inv = kept > 0 ? static_cast<float>(1.0 / kept) : 0.0f;
            renorm_fold(row, res, inv, agg.data(), n, g == 0, cfg.agg == Aggregation::Max);
          }
          scale(agg.data(), n);
          v.attn = agg.data();
          v.lse = lse.data();
          v.head_attn = rows.data();
          v.head_stride = ctx;
          pol->observe(v);
          m.hbm_entries += book.n_resident(s);
          m.hbm_bytes += static_cast<uint64_t>(std::llround(book.units(s) * static_cast<double>(entry_bytes)));
          m.host_entries += book.n_host(s);
          m.t_entries += weight(s) * book.n_resident(s), m.t_units += weight(s) * book.units(s);
          hbm_entries_sum += book.n_resident(s), hbm_pages_sum += book.pages_resident(s), stream_steps += 1;
        }
      }
    }
    report(static_cast<double>(ci + 2) / static_cast<double>(n_chunks + 1));
  }

  out.policy = cfg.policy;
  out.kind = info.kind;
  out.params = params;
  out.budget = full ? ctx : cfg.budget;
  out.page_size = B;
  out.steps = tr.n_steps();
  out.context = ctx;
  double rs = 0, os = 0, n = 0;
  for (uint32_t l = 0; l < in.n_layers; ++l) {
    out.retained_per_layer.push_back(rows_l[l] ? ret_l[l] / rows_l[l] : 1.0);
    out.oracle_per_layer.push_back(rows_l[l] ? orc_l[l] / rows_l[l] : 1.0);
    std::vector<double> heads;
    for (uint32_t h = 0; h < in.n_kv_heads; ++h) {
      const uint32_t s = shape.stream(l, h);
      heads.push_back(rows_h[s] ? ret_h[s] / rows_h[s] : 1.0);
    }
    out.retained_per_head.push_back(heads);
    rs += ret_l[l], os += orc_l[l], n += rows_l[l];
  }
  out.has_output_error = with_v && cfg.output_error;
  if (out.has_output_error) {
    double es = 0;
    for (uint32_t l = 0; l < in.n_layers; ++l) {
      out.output_rel_l2_per_layer.push_back(rows_l[l] ? err_l[l] / rows_l[l] : 0.0);
      es += err_l[l];
    }
    out.output_rel_l2 = n ? es / n : 0.0;
  }
  out.rows = static_cast<uint64_t>(n);
  out.retained_mass = n ? rs / n : 1.0;
  out.oracle_topk_mass = n ? os / n : 1.0;
  out.quant_rel_l2 = out.quantized && with_v ? quant_err / static_cast<double>(out.quantized) : 0.0;
  out.mean_hbm_entries = stream_steps ? hbm_entries_sum / stream_steps : 0.0;
  out.mean_hbm_pages = stream_steps ? hbm_pages_sum / stream_steps : 0.0;
  for (uint32_t s = 0; s < tr.n_steps(); ++s) {
    steps[s].retained_mass = step_rows[s] ? step_ret[s] / step_rows[s] : 1.0;
    steps[s].oracle_topk_mass = step_rows[s] ? step_orc[s] / step_rows[s] : 1.0;
    out.peak_hbm_bytes = std::max(out.peak_hbm_bytes, steps[s].hbm_bytes);
  }
  if (cfg.per_step) out.per_step = std::move(steps);
  return out;
}

}  // namespace kvscope::sim
