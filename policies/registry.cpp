// Every policy, registered by name: one line each. tests/cpp/sim_test.cpp checks that
// every policies/*.cpp file that defines a policy appears here.
#include "policies/registry.h"

#include "kernels/io/error.h"
#include "policies/builtin.h"

namespace kvscope::policy {

const std::vector<PolicyInfo>& registry() {
  static const std::vector<PolicyInfo> all = [] {
    std::vector<PolicyInfo> v;
    v.push_back(full_info());
    v.push_back(window_info());
    v.push_back(streamingllm_info());
    v.push_back(h2o_info());
    v.push_back(tova_info());
    v.push_back(random_info());
    v.push_back(a2sf_info());
    v.push_back(scissorhands_info());
    for (auto* f : {&keyformer_info, &lazy_info, &snapkv_info, &pyramidkv_info, &adakv_info, &cake_info}) v.push_back(f());
    v.push_back(quest_info());
    v.push_back(infinigen_info());
    v.push_back(kivi_info());
    v.push_back(oracle_topk_info());
    v.push_back(belady_info());
    v.push_back(lru_info());
    v.push_back(fifo_info());
    v.push_back(lfu_info());
    v.push_back(arc_info());
    v.push_back(s3fifo_info());
    v.push_back(belady_page_info());
    return v;
  }();
  return all;
}

const PolicyInfo& find(const std::string& name) {
  for (const auto& p : registry())
    if (p.name == name) return p;
  std::string known;
  for (const auto& p : registry()) known += (known.empty() ? "" : ", ") + p.name;
  throw Error("unknown policy '" + name + "' (known: " + known + ")");
}

}  // namespace kvscope::policy
