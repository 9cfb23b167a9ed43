#pragma once
// Declarations of the built-in policies' descriptors; one definition per policy file.
#include "policies/policy.h"

namespace kvscope::policy {

PolicyInfo full_info();
PolicyInfo window_info();
PolicyInfo streamingllm_info();
PolicyInfo h2o_info();
PolicyInfo tova_info();
PolicyInfo random_info();
PolicyInfo a2sf_info();
PolicyInfo scissorhands_info();

}  // namespace kvscope::policy
