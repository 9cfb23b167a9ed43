// tova: Token Omission Via Attention (Oren et al., "Transformers are Multi-State RNNs",
// 2024). Score of entry j = the attention it received at the last observed step; the
// entries with the smallest score are evicted. Entries not yet observed (the newest)
// are kept.
#include "policies/builtin.h"

namespace kvscope::policy {

namespace {
class Tova final : public Policy {
 public:
  void reset(const Shape& s) override {
    stride_ = s.max_tokens;
    score_.assign(static_cast<size_t>(s.streams()) * stride_, 0.0f);
    seen_.assign(s.streams(), 0);
    protect_.assign(stride_, 0);
  }
  void observe(const StreamView& v) override {
    float* s = score_.data() + static_cast<size_t>(v.stream) * stride_;
    for (uint32_t j = 0; j < v.n; ++j) s[j] = v.attn[j];
    seen_[v.stream] = v.n;
  }
  void victims(const StreamView& v, uint32_t k, Plan& plan) override {
    std::fill(protect_.begin(), protect_.begin() + v.n, 0);
    for (uint32_t j = seen_[v.stream]; j < v.n; ++j) protect_[j] = 1;
    lowest_k(score_.data() + static_cast<size_t>(v.stream) * stride_, v.resident, v.n, k, protect_.data(), plan.evict,
             scratch_, v.page_size);
  }

 private:
  uint32_t stride_ = 0;
  std::vector<float> score_;
  std::vector<uint32_t> seen_;
  std::vector<uint8_t> protect_;
  std::vector<uint32_t> scratch_;
};
}  // namespace

PolicyInfo tova_info() {
  return {"tova", "score", "evict the entry with the least attention at the last step", {},
          [](const nlohmann::json&) -> std::unique_ptr<Policy> { return std::make_unique<Tova>(); }};
}

}  // namespace kvscope::policy
