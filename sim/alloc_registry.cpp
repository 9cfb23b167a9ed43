// Every allocation policy, registered by name: one line each (docs/batch.md).
// tests/cpp/batch_test.cpp checks that every sim/alloc_<name>.cpp appears here.
#include "kernels/io/error.h"
#include "sim/alloc.h"

namespace kvscope::sim {

const std::vector<AllocInfo>& alloc_registry() {
  static const std::vector<AllocInfo> all = [] {
    std::vector<AllocInfo> v;
    v.push_back(alloc_reserve_info());
    v.push_back(alloc_paged_info());
    v.push_back(alloc_paged_watermark_info());
    return v;
  }();
  return all;
}

const AllocInfo& find_alloc(const std::string& name) {
  for (const auto& a : alloc_registry())
    if (a.name == name) return a;
  std::string known;
  for (const auto& a : alloc_registry()) known += (known.empty() ? "" : ", ") + a.name;
  throw Error("unknown allocation policy '" + name + "' (known: " + known + ")");
}

std::unique_ptr<Allocator> make_alloc(const std::string& name, const nlohmann::json& params) {
  const AllocInfo& a = find_alloc(name);
  return a.make(policy::validate_params(a.params, params, "--alloc-param"));
}

}  // namespace kvscope::sim
