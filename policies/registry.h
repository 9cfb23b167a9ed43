#pragma once
// The registered policies, by name (policies/registry.cpp: one line per policy).
#include <string>
#include <vector>

#include "policies/policy.h"

namespace kvscope::policy {

const std::vector<PolicyInfo>& registry();
const PolicyInfo& find(const std::string& name);  // throws Error listing the known names

}  // namespace kvscope::policy
