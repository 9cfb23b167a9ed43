#include "sim/replay.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "kernels/io/error.h"
#include "policies/registry.h"

namespace kvscope::sim {

using nlohmann::json;

json ReplayResult::to_json() const {
  return {{"policy", policy},
          {"params", params},
          {"budget", budget},
          {"steps", steps},
          {"context", context},
          {"rows", rows},
          {"retained_mass", retained_mass},
          {"oracle_topk_mass", oracle_topk_mass},
          {"retained_per_layer", retained_per_layer},
          {"oracle_topk_per_layer", oracle_per_layer},
          {"evictions", evictions},
          {"output_rel_l2", has_output_error ? json(output_rel_l2) : json(nullptr)},
          {"output_rel_l2_per_layer", has_output_error ? json(output_rel_l2_per_layer) : json(nullptr)}};
}

json validate(const trace::TraceReader& tr, const ReplayConfig& cfg) {
  const policy::PolicyInfo& info = policy::find(cfg.policy);
  json params = policy::validate_params(info.params, cfg.params, "policy " + cfg.policy);
  if (tr.n_steps() == 0) throw Error(tr.path() + ": trace has no steps");
  const uint32_t ctx = tr.info().prompt_len + tr.n_steps() - 1;
  if (cfg.policy != "full" && (cfg.budget == 0 || cfg.budget > ctx))
    throw Error("sim: " + cfg.policy + ": budget " + std::to_string(cfg.budget) +
                " must be between 1 and the trace's context of " + std::to_string(ctx) + " tokens");
  return params;
}

ReplayResult replay(const trace::TraceReader& tr, const ReplayConfig& cfg) {
  const json params = validate(tr, cfg);
  const policy::PolicyInfo& info = policy::find(cfg.policy);
  const auto& in = tr.info();
  const uint32_t ctx = in.prompt_len + tr.n_steps() - 1;
  const bool full = cfg.policy == "full";
  const uint32_t budget = full ? ctx : cfg.budget;

  policy::Shape shape{in.n_layers, in.n_kv_heads, ctx};
  auto pol = info.make(params);
  pol->reset(shape);

  std::vector<uint8_t> resident(static_cast<size_t>(shape.streams()) * ctx, 0);
  std::vector<uint32_t> n_res(shape.streams(), 0);
  std::vector<float> row(ctx), agg(ctx), top(ctx);
  std::vector<double> ret_l(in.n_layers, 0), orc_l(in.n_layers, 0), rows_l(in.n_layers, 0), err_l(in.n_layers, 0);
  // V rows of every stream, rebuilt from the step records (each token's V appears once).
  const uint32_t hd = in.head_dim;
  const bool with_v = in.with_qkv;
  std::vector<float> vcache(with_v ? static_cast<size_t>(shape.streams()) * ctx * hd : 0);
  std::vector<double> o_full(hd), o_kept(hd);
  ReplayResult out;
  policy::Plan plan;
  trace::LayerFrame frame;

  auto apply = [&](policy::StreamView& v, uint32_t k) {
    plan.clear();
    pol->victims(v, k, plan);
    if (plan.evict.size() != k)
      throw Error("sim: policy " + cfg.policy + " returned " + std::to_string(plan.evict.size()) + " victims, " +
                  std::to_string(k) + " were asked for");
    uint8_t* res = resident.data() + static_cast<size_t>(v.stream) * ctx;
    for (uint32_t j : plan.evict) {
      if (j >= v.n || !res[j]) throw Error("sim: policy " + cfg.policy + " evicted position " + std::to_string(j) + ", not resident");
      res[j] = 0;
    }
    n_res[v.stream] -= k;
    v.n_resident = n_res[v.stream];
    out.evictions += k;
  };
  auto fold = [&](float* dst, const float* src, uint32_t n, bool first) {
    for (uint32_t j = 0; j < n; ++j) {
      if (first) dst[j] = src[j];
      else if (cfg.agg == Aggregation::Max) dst[j] = std::max(dst[j], src[j]);
      else dst[j] += src[j];
    }
  };
  const float agg_scale = cfg.agg == Aggregation::Mean ? 1.0f / static_cast<float>(in.group) : 1.0f;

  for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci)
    for (uint32_t l = 0; l < in.n_layers; ++l) {
      tr.read_frame(ci, l, frame);
      for (const trace::StepLayerView& sv : frame.steps)
        for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
          policy::StreamView v;
          v.step = sv.step;
          v.layer = l;
          v.kv_head = kvh;
          v.stream = shape.stream(l, kvh);
          v.prefill = sv.kind == trace::StepKind::Prefill;
          v.budget = budget;
          uint8_t* res = resident.data() + static_cast<size_t>(v.stream) * ctx;
          v.resident = res;
          const uint32_t first = sv.first_pos, n = sv.first_pos + sv.n_queries;
          for (uint32_t j = first; j < n; ++j) res[j] = 1;
          n_res[v.stream] += sv.n_queries;
          if (with_v)
            for (uint32_t t = 0; t < sv.n_queries; ++t)
              trace::halves_to_floats(sv.v + (static_cast<size_t>(t) * in.n_kv_heads + kvh) * hd,
                                      vcache.data() + (static_cast<size_t>(v.stream) * ctx + first + t) * hd, hd);
          v.n = n;
          v.n_resident = n_res[v.stream];
          if (v.prefill) {
            for (uint32_t g = 0; g < in.group; ++g)
              fold(agg.data(), sv.colsum + static_cast<size_t>(kvh * in.group + g) * sv.n_queries, n, g == 0);
            for (uint32_t j = 0; j < n; ++j) agg[j] *= agg_scale;
            v.attn = agg.data();
            pol->observe(v);
            if (v.n_resident > budget) apply(v, v.n_resident - budget);
            continue;
          }
          if (v.n_resident > budget) apply(v, v.n_resident - budget);
          for (uint32_t g = 0; g < in.group; ++g) {
            const uint32_t h = kvh * in.group + g;
            const trace::RowView& rv = sv.row(0, h, in.n_heads);
            std::fill(row.begin(), row.begin() + n, 0.0f);
            if (in.mode == trace::Mode::Dense) {
              trace::halves_to_floats(rv.probs, row.data(), rv.n);
            } else {
              for (uint32_t i = 0; i < rv.n; ++i) row[rv.keys[i]] = f16_to_f32(rv.probs[i]);
            }
            double kept = 0;
            for (uint32_t j = 0; j < n; ++j) kept += res[j] ? row[j] : 0.0f;
            std::copy(row.begin(), row.begin() + n, top.begin());
            const uint32_t b = std::min(budget, n);
            std::nth_element(top.begin(), top.begin() + (b - 1), top.begin() + n, std::greater<float>());
            double best = 0;
            for (uint32_t i = 0; i < b; ++i) best += top[i];
            ret_l[l] += kept;
            orc_l[l] += best;
            rows_l[l] += 1;
            if (with_v) {
              const float* V = vcache.data() + static_cast<size_t>(v.stream) * ctx * hd;
              std::fill(o_full.begin(), o_full.end(), 0.0);
              std::fill(o_kept.begin(), o_kept.end(), 0.0);
              double total = 0;
              for (uint32_t j = 0; j < n; ++j) {
                if (row[j] == 0.0f) continue;
                total += row[j];
                for (uint32_t d = 0; d < hd; ++d) {
                  const double x = static_cast<double>(row[j]) * V[static_cast<size_t>(j) * hd + d];
                  o_full[d] += x;
                  if (res[j]) o_kept[d] += x;
                }
              }
              double num = 0, den = 0;
              for (uint32_t d = 0; d < hd; ++d) {
                const double f = o_full[d] / total, k = kept > 0 ? o_kept[d] / kept : 0.0;
                num += (k - f) * (k - f);
                den += f * f;
              }
              err_l[l] += den > 0 ? std::sqrt(num / den) : 0.0;
            }
            // What the model would compute over the resident entries: renormalised.
            const float inv = kept > 0 ? static_cast<float>(1.0 / kept) : 0.0f;
            for (uint32_t j = 0; j < n; ++j) row[j] = res[j] ? row[j] * inv : 0.0f;
            fold(agg.data(), row.data(), n, g == 0);
          }
          for (uint32_t j = 0; j < n; ++j) agg[j] *= agg_scale;
          v.attn = agg.data();
          pol->observe(v);
        }
    }

  out.policy = cfg.policy;
  out.params = params;
  out.budget = budget;
  out.steps = tr.n_steps();
  out.context = ctx;
  double rs = 0, os = 0, n = 0;
  for (uint32_t l = 0; l < in.n_layers; ++l) {
    out.retained_per_layer.push_back(rows_l[l] ? ret_l[l] / rows_l[l] : 1.0);
    out.oracle_per_layer.push_back(rows_l[l] ? orc_l[l] / rows_l[l] : 1.0);
    rs += ret_l[l];
    os += orc_l[l];
    n += rows_l[l];
  }
  out.has_output_error = with_v;
  if (with_v) {
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
  return out;
}

}  // namespace kvscope::sim
