// Points to configurations, canonical dumps and hashes (explorer/space.h).
#include "explorer/space.h"

#include <cstdio>

namespace kvscope::explore {

using nlohmann::json;

std::vector<Combo> combos(const Spec& s) {
  std::vector<Combo> out;
  const int nh = static_cast<int>(s.hardware.size());
  for (size_t t = 0; t < s.traces.size(); ++t)
    for (size_t p = 0; p < s.policies.size(); ++p) {
      if (nh == 0) out.push_back({t, p, -1});
      for (int h = 0; h < nh; ++h) out.push_back({t, p, h});
    }
  return out;
}

json configuration(const Spec& s, const Point& pt, uint32_t max_steps) {
  const Combo c = combos(s).at(pt.combo);
  const PolicySpace& ps = s.policies[c.policy];
  json cfg = json::object();
  cfg["trace"] = s.traces[c.trace];
  cfg["policy"] = ps.name;
  json params = ps.fixed;
  json budget = ps.budget, page_size = ps.page_size;
  for (size_t i = 0; i < ps.dims.size(); ++i) {
    const Dim& d = ps.dims[i];
    const json v = d.at(i < pt.u.size() ? pt.u[i] : 0.0);
    if (d.name == "budget") budget = v;
    else if (d.name == "page_size") page_size = v;
    else params[d.name.substr(7)] = v;  // "params.<key>"
  }
  cfg["params"] = params;
  cfg["budget"] = budget;
  cfg["page_size"] = page_size;
  cfg["max_steps"] = max_steps == UINT32_MAX ? s.max_steps : max_steps;
  cfg["access"] = s.access;
  cfg["aggregation"] = s.aggregation;
  cfg["bounds"] = s.bounds;
  if (c.hardware >= 0) {
    const HardwareSpec& h = s.hardware[static_cast<size_t>(c.hardware)];
    cfg["hardware"] = {{"preset", h.preset}, {"set", h.set}};
    cfg["as"] = s.as.empty() ? "trace" : s.as;
    cfg["coalesce"] = s.coalesce;
  }
  return cfg;
}

std::string canonical(const json& config) { return config.dump(); }

uint64_t fnv1a64(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : bytes) {
    h ^= ch;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string config_hash(const json& config) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fnv1a64(canonical(config))));
  return buf;
}

}  // namespace kvscope::explore
