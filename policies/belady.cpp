// belady: Belady's MIN at token level, offline and irreversible (Belady, "A study of
// replacement algorithms for a virtual-storage computer", IBM Systems Journal 1966), with
// the attention an entry will receive standing in for its next reference.
//   R_j(t) = sum_{s >= t} a~_{s,j},   a~_{s,j} = sum_g p_{s,g,j}   (full-cache attention, group sum)
// When the stream is over budget at decode step t (before the step's attention), the
// entries with the smallest R_j(t) are evicted for good (ties: lower position); at the
// prefill, R_j = the attention of every decode step. The totals are read from the trace in
// reset() (Shape::trace) and each step's `future` row is subtracted once the step's plan is
// made. An optional window keeps the `recent` newest entries (default 0). It is the
// irreversible counterpart of oracle-topk (which may bring an entry back; belady may not).
// The totals aggregate the group as the run does (Shape::agg: sum, max or mean), the same
// way as the engine's `future` rows that are subtracted.
// Page granularity: whole pages with the smallest summed R_j (lowest_k).
#include <algorithm>
#include <cmath>

#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "policies/builtin.h"
#include "traces/reader.h"

namespace kvscope::policy {

namespace {

class Belady final : public Policy {
 public:
  explicit Belady(uint32_t recent) : recent_(recent) {}

  void reset(const Shape& s) override {
    if (!s.trace) throw Error("belady: an offline policy: it needs the trace (Shape::trace) to read the future");
    stride_ = s.max_tokens;
    P_ = std::max<uint32_t>(1, s.page_size);
    remaining_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0);
    protect_.assign(stride_, 0);
    fscore_.assign(stride_, 0.0f);
    order_.clear();
    order_.reserve(stride_);
    scratch_.clear();
    scratch_.reserve(stride_);
    // Totals over the decode steps of the group-summed full-cache rows (the engine's `future`).
    const trace::TraceReader& tr = *s.trace;
    const auto& in = tr.info();
    std::vector<float> row(stride_), sum(stride_);
    trace::LayerFrame frame;
    for (uint32_t ci = 0; ci < tr.chunks().size(); ++ci)
      for (uint32_t l = 0; l < in.n_layers; ++l) {
        tr.read_frame(ci, l, frame);
        for (const trace::StepLayerView& sv : frame.steps) {
          if (sv.kind == trace::StepKind::Prefill) continue;
          const uint32_t n = std::min(stride_, sv.first_pos + 1);
          for (uint32_t kvh = 0; kvh < in.n_kv_heads; ++kvh) {
            for (uint32_t g = 0; g < in.group; ++g) {
              const trace::RowView& rv = sv.row(0, kvh * in.group + g, in.n_heads);
              float* dst = g == 0 ? sum.data() : row.data();
              std::fill(dst, dst + n, 0.0f);
              if (in.mode == trace::Mode::Dense) trace::halves_to_floats(rv.probs, dst, std::min(rv.n, n));
              else
                for (uint32_t i = 0; i < rv.n; ++i)
                  if (rv.keys[i] < n) dst[rv.keys[i]] = f16_to_f32(rv.probs[i]);
              if (g > 0 && s.agg == GroupAgg::Max)
                for (uint32_t j = 0; j < n; ++j) sum[j] = std::max(sum[j], row[j]);
              else if (g > 0)
                for (uint32_t j = 0; j < n; ++j) sum[j] += row[j];
            }
            if (s.agg == GroupAgg::Mean)
              for (uint32_t j = 0; j < n; ++j) sum[j] *= 1.0f / static_cast<float>(in.group);
            double* R = remaining_.data() + static_cast<size_t>(s.stream(l, kvh)) * stride_;
            for (uint32_t j = 0; j < n; ++j) R[j] += sum[j];
          }
        }
      }
  }

  void plan(const StreamView& v, Plan& plan) override {
    double* R = remaining_.data() + static_cast<size_t>(v.stream) * stride_;
    if (v.hbm_units > v.budget) evict(v, static_cast<uint32_t>(std::ceil(v.hbm_units - v.budget)), R, plan);
    if (v.future)  // this step's attention is now in the past
      for (uint32_t j = 0; j < v.n; ++j) R[j] -= v.future[j];
  }

 private:
  void evict(const StreamView& v, uint32_t k, const double* R, Plan& plan) {
    // The window: the newest `recent` resident entries, within the budget (and, at page
    // granularity, leaving room for the two partial pages the window may block).
    const uint32_t slack = P_ > 1 ? 2 * (P_ - 1) : 0;
    const uint32_t window = std::min(recent_, v.budget > slack ? v.budget - slack : 0);
    std::fill(protect_.begin(), protect_.begin() + v.n, 0);
    for (uint32_t j = v.n, kept = 0; j-- > 0 && kept < window;)
      if (v.resident[j]) protect_[j] = 1, ++kept;
    if (P_ > 1) {
      for (uint32_t j = 0; j < v.n; ++j) fscore_[j] = static_cast<float>(R[j]);
      lowest_k(fscore_.data(), v.resident, v.n, k, protect_.data(), plan.evict, scratch_, P_);
      return;
    }
    order_.clear();
    for (uint32_t j = 0; j < v.n; ++j)
      if (v.resident[j] && !protect_[j]) order_.push_back(j);
    if (k > order_.size())
      throw Error("belady: asked for " + std::to_string(k) + " victims among " + std::to_string(order_.size()) +
                  " evictable entries");
    auto lower = [R](uint32_t a, uint32_t b) { return R[a] < R[b] || (R[a] == R[b] && a < b); };
    if (k < order_.size()) std::nth_element(order_.begin(), order_.begin() + k, order_.end(), lower);
    std::sort(order_.begin(), order_.begin() + k);
    plan.evict.insert(plan.evict.end(), order_.begin(), order_.begin() + k);
  }

  uint32_t recent_;
  uint32_t stride_ = 0, P_ = 1;
  std::vector<double> remaining_;  // [stream][position]: attention still to come, R_j
  std::vector<uint8_t> protect_;   // [position] scratch
  std::vector<float> fscore_;      // [position] scratch (page granularity)
  std::vector<uint32_t> order_, scratch_;
};

}  // namespace

PolicyInfo belady_info() {
  return {"belady",
          "bound",
          "offline: evict the entry with the least attention still to come (irreversible)",
          {{"recent", 0, 0, 1e9, true, "newest entries always kept"}},
          [](const nlohmann::json& p) -> std::unique_ptr<Policy> {
            return std::make_unique<Belady>(static_cast<uint32_t>(p["recent"].get<double>()));
          },
          kNeedsFuture};
}

}  // namespace kvscope::policy
