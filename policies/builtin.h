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
PolicyInfo keyformer_info(), lazy_info(), snapkv_info(), pyramidkv_info(), adakv_info(), cake_info();  // prefill/allocation/score (docs/policies.md)
PolicyInfo quest_info();        // query-aware, mixed precision and bounds (docs/policies.md)
PolicyInfo infinigen_info();
PolicyInfo kivi_info();
PolicyInfo oracle_topk_info();
PolicyInfo belady_info();
PolicyInfo lru_info();          // page caches (kind "cache", docs/page-caches.md)
PolicyInfo fifo_info();
PolicyInfo lfu_info();
PolicyInfo arc_info();
PolicyInfo s3fifo_info();
PolicyInfo belady_page_info();

}  // namespace kvscope::policy
