#include "policies/policy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/simd.h"
#include "kernels/io/error.h"

namespace kvscope::policy {

nlohmann::json validate_params(const std::vector<ParamSpec>& specs, const nlohmann::json& params, const std::string& where) {
  if (!params.is_null() && !params.is_object()) throw Error(where + ": expected an object of parameters");
  nlohmann::json out = nlohmann::json::object();
  if (params.is_object())
    for (auto item = params.begin(); item != params.end(); ++item) {
      const std::string& k = item.key();
      const nlohmann::json& v = item.value();
      auto it = std::find_if(specs.begin(), specs.end(), [&](const ParamSpec& s) { return s.name == k; });
      if (it == specs.end()) {
        std::string known;
        for (auto& s : specs) known += (known.empty() ? "" : ", ") + s.name;
        throw Error(where + "." + k + ": unknown parameter (known: " + (known.empty() ? "none" : known) + ")");
      }
      if (!v.is_number()) throw Error(where + "." + k + ": expected a number");
      const double x = v.get<double>();
      if (it->integer && (x != std::floor(x))) throw Error(where + "." + k + ": expected an integer");
      if (!(x >= it->min && x <= it->max))
        throw Error(where + "." + k + ": " + v.dump() + " outside [" + nlohmann::json(it->min).dump() + ", " +
                    nlohmann::json(it->max).dump() + "]");
      out[k] = x;
    }
  for (auto& s : specs)
    if (!out.contains(s.name)) out[s.name] = s.dflt;
  return out;
}

void Policy::plan(const StreamView& v, Plan& plan) {
  if (v.hbm_units > v.budget) victims(v, static_cast<uint32_t>(std::ceil(v.hbm_units - v.budget)), plan);
}

void Policy::victims(const StreamView&, uint32_t, Plan&) {
  throw Error("policy: victims() is not implemented by this policy (it must override plan())");
}

void lowest_k(const float* score, const uint8_t* resident, uint32_t n, uint32_t k, const uint8_t* protect,
              std::vector<uint32_t>& out, std::vector<uint32_t>& scratch, uint32_t page_size) {
  scratch.clear();
  if (page_size <= 1) {
    for (uint32_t j = 0; j < n; ++j)
      if (resident[j] && !(protect && protect[j])) scratch.push_back(j);
    if (k > scratch.size())
      throw Error("policy: asked for " + std::to_string(k) + " victims among " + std::to_string(scratch.size()) +
                  " evictable entries");
    auto less = [&](uint32_t a, uint32_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); };
    if (k < scratch.size()) std::nth_element(scratch.begin(), scratch.begin() + k, scratch.end(), less);
    std::sort(scratch.begin(), scratch.begin() + k);
    out.insert(out.end(), scratch.begin(), scratch.begin() + k);
    return;
  }
  // Pages: rank by the summed score of their resident entries; a protected entry protects
  // its page. scratch holds the candidate page indices.
  const uint32_t n_pages = (n + page_size - 1) / page_size;
  thread_local std::vector<float> page_score;
  thread_local std::vector<uint32_t> page_count;
  page_score.assign(n_pages, 0.0f);
  page_count.assign(n_pages, 0);
  thread_local std::vector<uint8_t> blocked;
  blocked.assign(n_pages, 0);
  for (uint32_t j = 0; j < n; ++j) {
    if (!resident[j]) continue;
    const uint32_t p = j / page_size;
    if (protect && protect[j]) blocked[p] = 1;
    page_score[p] += score[j];
    ++page_count[p];
  }
  uint64_t available = 0;
  for (uint32_t p = 0; p < n_pages; ++p)
    if (page_count[p] && !blocked[p]) scratch.push_back(p), available += page_count[p];
  if (k > available)
    throw Error("policy: asked for " + std::to_string(k) + " victims among " + std::to_string(available) +
                " evictable entries in whole pages");
  std::sort(scratch.begin(), scratch.end(), [&](uint32_t a, uint32_t b) {
    return page_score[a] < page_score[b] || (page_score[a] == page_score[b] && a < b);
  });
  uint32_t taken = 0;
  size_t m = 0;
  while (taken < k) taken += page_count[scratch[m++]];
  std::sort(scratch.begin(), scratch.begin() + m);
  for (size_t i = 0; i < m; ++i)
    for (uint32_t j = scratch[i] * page_size, e = std::min(n, j + page_size); j < e; ++j)
      if (resident[j]) out.push_back(j);
}

void evict_range(const StreamView& v, uint32_t begin, uint32_t end, uint32_t k, Plan& plan, uint32_t& taken) {
  const uint32_t B = std::max<uint32_t>(1, v.page_size);
  for (uint32_t j = begin; j < end && j < v.n && taken < k; ++j) {
    if (!v.resident[j]) continue;
    if (B == 1) {
      plan.evict.push_back(j), ++taken;
      continue;
    }
    const uint32_t p0 = j / B * B, p1 = std::min(v.n, p0 + B);
    for (uint32_t i = p0; i < p1; ++i)
      if (v.resident[i]) plan.evict.push_back(i), ++taken;
    j = p1 - 1;
  }
}

uint32_t argmin_resident(const float* score, const uint8_t* resident, uint32_t n) {
  // Pass 1: the smallest score among resident entries (vectorised); pass 2: the first
  // resident position holding it — the same answer as a scalar scan, ties to the lower.
  float m = std::numeric_limits<float>::infinity();
  uint32_t j = 0;
#ifdef KVSCOPE_AVX2
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 vm = inf;
  for (; j + 8 <= n; j += 8) {
    const __m256i r8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(resident + j)));
    const __m256 on = _mm256_castsi256_ps(_mm256_cmpgt_epi32(r8, _mm256_setzero_si256()));
    vm = _mm256_min_ps(vm, _mm256_blendv_ps(inf, _mm256_loadu_ps(score + j), on));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vm);
  for (float x : lanes) m = std::min(m, x);
#endif
  for (; j < n; ++j)
    if (resident[j]) m = std::min(m, score[j]);
  j = 0;
#ifdef KVSCOPE_AVX2
  const __m256 vmin = _mm256_set1_ps(m);
  for (; j + 8 <= n; j += 8) {
    const __m256i r8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(resident + j)));
    const __m256 on = _mm256_castsi256_ps(_mm256_cmpgt_epi32(r8, _mm256_setzero_si256()));
    const int hit = _mm256_movemask_ps(_mm256_and_ps(on, _mm256_cmp_ps(_mm256_loadu_ps(score + j), vmin, _CMP_EQ_OQ)));
    if (hit) return j + static_cast<uint32_t>(__builtin_ctz(static_cast<unsigned>(hit)));
  }
#endif
  for (; j < n; ++j)
    if (resident[j] && score[j] == m) return j;
  // Only NaN scores or no resident entry get here: fall back to the first resident one.
  for (j = 0; j < n; ++j)
    if (resident[j]) return j;
  return UINT32_MAX;
}

bool keep_without_scores(const StreamView& v, uint32_t units, uint32_t K, uint8_t* keep) {
  std::fill(keep, keep + units, 0);
  if (K >= units) {
    std::fill(keep, keep + units, 1);
    return true;
  }
  if (v.prefill) {
    std::fill(keep + (units - K), keep + units, 1);
    return true;
  }
  return false;
}

void move_to_keep_set(const StreamView& v, const uint8_t* keep, uint32_t unit, Plan& plan) {
  for (uint32_t j = 0; j < v.n; ++j) {
    const bool k = keep[j / unit] != 0;
    if (k && v.where[j] == kHost) plan.fetch.push_back(j);
    else if (!k && v.where[j] == kHbm) plan.offload.push_back(j);
  }
}

void evict_lowest_outside_recent(const StreamView& v, uint32_t k, double recent_ratio, const float* score,
                                 std::vector<uint8_t>& protect, std::vector<uint32_t>& scratch, Plan& plan) {
  const uint32_t recent = static_cast<uint32_t>(std::lround(recent_ratio * v.budget));
  // The protected entries are the last `recent` resident ones: everything from `cut` on.
  uint32_t cut = v.n;
  for (uint32_t kept = 0; cut > 0 && kept < recent;)
    if (v.resident[--cut]) ++kept;
  if (k == 1 && v.page_size <= 1) {  // the common decode case: no scratch, no sort
    const uint32_t best = argmin_resident(score, v.resident, cut);
    if (best == UINT32_MAX) throw Error("policy: asked for 1 victim among 0 evictable entries");
    plan.evict.push_back(best);
    return;
  }
  if (v.page_size > 1) {
    // A protected entry protects its page. When that leaves fewer than k entries to
    // evict (a budget of a page or two), only the newest page stays protected.
    const uint32_t B = v.page_size;
    uint32_t free = 0;
    for (uint32_t j = 0; j < cut / B * B; ++j) free += v.resident[j];
    if (free < k) cut = std::max(cut, (v.n - 1) / B * B);
  }
  std::fill(protect.begin(), protect.begin() + cut, 0);
  std::fill(protect.begin() + cut, protect.begin() + v.n, 1);
  lowest_k(score, v.resident, v.n, k, protect.data(), plan.evict, scratch, v.page_size);
}

namespace {

class AccumulatedScore final : public Policy {
 public:
  AccumulatedScore(float lambda, double recent_ratio) : lambda_(lambda), ratio_(recent_ratio) {}
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    score_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    protect_.assign(stride_, 0);
  }
  void observe(const StreamView& v) override {
    float* s = score_.data() + static_cast<size_t>(v.stream) * stride_;
    for (uint32_t j = 0; j < v.n; ++j) s[j] = lambda_ * s[j] + v.attn[j];
  }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    evict_lowest_outside_recent(v, k, ratio_, score_.data() + static_cast<size_t>(v.stream) * stride_, protect_, scratch_,
                                plan);
  }

 private:
  float lambda_;
  double ratio_;
  uint32_t stride_ = 0;
  std::vector<float> score_;
  std::vector<uint8_t> protect_;
  std::vector<uint32_t> scratch_;
};

}  // namespace

std::unique_ptr<Policy> make_accumulated_score(float lambda, double recent_ratio) {
  return std::make_unique<AccumulatedScore>(lambda, recent_ratio);
}

}  // namespace kvscope::policy
