#pragma once
// Shared by the replay and policy tests: the committed default trace, a one-call replay,
// closed forms and a slow, obvious replay loop to check policies against.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "kernels/io/halfs.h"
#include "policies/registry.h"
#include "sim/replay.h"
#include "traces/reader.h"

namespace kvscope::testing {

inline std::string default_trace() { return std::string(KVSCOPE_SOURCE_DIR) + "/traces/stories260K-short-prompt.kvt"; }
inline std::string long_prompt_trace() { return std::string(KVSCOPE_SOURCE_DIR) + "/traces/stories260K-long-prompt.kvt"; }

inline sim::ReplayResult run(const trace::TraceReader& tr, const std::string& policy, uint32_t budget,
                             nlohmann::json params = nlohmann::json::object(), uint32_t page_size = 1) {
  sim::ReplayConfig c;
  c.policy = policy;
  c.budget = budget;
  c.params = std::move(params);
  c.page_size = page_size;
  return sim::replay(tr, c);
}

// Row of query head h at a decode step (any mode), as floats over positions 0..qpos.
inline std::vector<float> dense_row(const trace::StepLayerView& sv, uint32_t h, uint32_t H) {
  const trace::RowView& r = sv.row(0, h, H);
  std::vector<float> v(sv.first_pos + 1, 0.0f);
  if (r.keys) {
    for (uint32_t i = 0; i < r.n; ++i) v[r.keys[i]] = f16_to_f32(r.probs[i]);
  } else {
    trace::halves_to_floats(r.probs, v.data(), r.n);
  }
  return v;
}

// Mean over decode rows of the mass on the positions `keep(pos, qpos)` says are resident.
inline double closed_form(const trace::TraceReader& tr, const std::function<bool(uint32_t pos, uint32_t qpos)>& keep) {
  const auto& in = tr.info();
  trace::LayerFrame f;
  double sum = 0, rows = 0;
  for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci)
    for (uint32_t l = 0; l < in.n_layers; ++l) {
      tr.read_frame(ci, l, f);
      for (const auto& sv : f.steps) {
        if (sv.kind == trace::StepKind::Prefill) continue;
        for (uint32_t h = 0; h < in.n_heads; ++h) {
          const auto row = dense_row(sv, h, in.n_heads);
          double m = 0;
          for (uint32_t j = 0; j < row.size(); ++j) m += keep(j, sv.first_pos) ? row[j] : 0.0f;
          sum += m;
          rows += 1;
        }
      }
    }
  return sum / rows;
}

// A slow, obvious eviction replay, one stream at a time with std::set, for checking a
// policy's rule. Per stream (layer, kvh): the prefill's entries join `res`; prefill(...)
// sees the group-summed column sums; evict(res, B, step) must shrink res to B; at a
// decode step the new entry joins, evict runs, the retained mass of each query head's
// row is counted, and observe(...) gets the group-summed rows renormalised over res.
struct SlowStream {
  uint32_t layer = 0, kvh = 0;
  std::set<uint32_t> res;
};
struct SlowPolicy {
  std::function<void(SlowStream&)> start = [](SlowStream&) {};
  std::function<void(SlowStream&, const std::vector<float>& agg)> prefill = [](SlowStream&, const std::vector<float>&) {};
  std::function<void(SlowStream&, uint32_t cap, uint32_t step)> evict;
  std::function<void(SlowStream&, const std::vector<float>& agg, uint32_t step)> observe =
      [](SlowStream&, const std::vector<float>&, uint32_t) {};
};
inline double slow_replay(const trace::TraceReader& tr, uint32_t B, const SlowPolicy& p) {
  const auto& in = tr.info();
  double sum = 0, rows = 0;
  trace::LayerFrame f;
  for (uint32_t l = 0; l < in.n_layers; ++l)
    for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
      SlowStream s;
      s.layer = l, s.kvh = kvh;
      p.start(s);
      for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci) {
        tr.read_frame(ci, l, f);
        for (const auto& sv : f.steps) {
          for (uint32_t j = sv.first_pos; j < sv.first_pos + sv.n_queries; ++j) s.res.insert(j);
          std::vector<float> agg(sv.first_pos + sv.n_queries, 0.0f);
          if (sv.kind == trace::StepKind::Prefill) {
            for (uint32_t g = 0; g < in.group; ++g)
              for (uint32_t j = 0; j < sv.n_queries; ++j) agg[j] += sv.colsum[(kvh * in.group + g) * sv.n_queries + j];
            p.prefill(s, agg);
            if (s.res.size() > B) p.evict(s, B, sv.step);
            continue;
          }
          if (s.res.size() > B) p.evict(s, B, sv.step);
          for (uint32_t g = 0; g < in.group; ++g) {
            const auto row = dense_row(sv, kvh * in.group + g, in.n_heads);
            double kept = 0;
            for (uint32_t j : s.res) kept += row[j];
            sum += kept;
            rows += 1;
            const float inv = static_cast<float>(1.0 / kept);
            for (uint32_t j = 0; j < row.size(); ++j) agg[j] += s.res.count(j) ? row[j] * inv : 0.0f;
          }
          p.observe(s, agg, sv.step);
        }
      }
    }
  return sum / rows;
}

}  // namespace kvscope::testing
