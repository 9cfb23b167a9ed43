// Spec loading and validation (explorer/spec.h, docs/explore.md).
#include "explorer/spec.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "hwmodels/hw.h"
#include "kernels/io/error.h"

namespace kvscope::explore {

using nlohmann::json;

namespace {

struct Ctx {
  std::string where;
  [[noreturn]] void bad(const std::string& path, const std::string& what) const { fail(where, path + ": " + what); }
  const json& obj(const json& j, const std::string& path) const {
    if (!j.is_object()) bad(path, "expected an object");
    return j;
  }
  double num(const json& j, const std::string& path) const {
    if (!j.is_number()) bad(path, "expected a number");
    return j.get<double>();
  }
  std::string str(const json& j, const std::string& path) const {
    if (!j.is_string()) bad(path, "expected a string");
    return j.get<std::string>();
  }
  bool boolean(const json& j, const std::string& path) const {
    if (!j.is_boolean()) bad(path, "expected true or false");
    return j.get<bool>();
  }
  uint64_t count(const json& j, const std::string& path, uint64_t lo) const {
    if (!j.is_number_integer() || j.get<int64_t>() < static_cast<int64_t>(lo))
      bad(path, "expected an integer >= " + std::to_string(lo));
    return j.get<uint64_t>();
  }
  void known(const json& j, const std::string& path, std::initializer_list<const char*> keys) const {
    for (auto it = j.begin(); it != j.end(); ++it) {
      bool found = false;
      std::string list;
      for (const char* k : keys) {
        found = found || it.key() == k;
        list += (list.empty() ? "" : ", ") + std::string(k);
      }
      if (!found) bad(path.empty() ? it.key() : path + "." + it.key(), "unknown key (known: " + list + ")");
    }
  }
};

Dim parse_dim(const Ctx& c, const std::string& name, const json& j, const std::string& path) {
  Dim d;
  d.name = name;
  c.obj(j, path);
  if (j.contains("choices")) {
    c.known(j, path, {"choices"});
    const json& ch = j["choices"];
    if (!ch.is_array() || ch.empty()) c.bad(path + ".choices", "expected a non-empty array");
    for (size_t i = 0; i < ch.size(); ++i) {
      if (!ch[i].is_number()) c.bad(path + ".choices[" + std::to_string(i) + "]", "expected a number");
      d.choices.push_back(ch[i]);
    }
    d.choice = true;
    return d;
  }
  c.known(j, path, {"lo", "hi", "scale", "type", "n"});
  if (!j.contains("lo")) c.bad(path + ".lo", "missing (a range needs lo and hi, or give choices)");
  if (!j.contains("hi")) c.bad(path + ".hi", "missing (a range needs lo and hi, or give choices)");
  d.lo = c.num(j["lo"], path + ".lo");
  d.hi = c.num(j["hi"], path + ".hi");
  if (!(d.hi >= d.lo)) c.bad(path + ".hi", "must be >= lo");
  if (j.contains("scale")) {
    const std::string s = c.str(j["scale"], path + ".scale");
    if (s != "lin" && s != "log") c.bad(path + ".scale", "expected \"lin\" or \"log\"");
    d.log = s == "log";
  }
  if (d.log && !(d.lo > 0)) c.bad(path + ".lo", "a log range needs lo > 0");
  if (j.contains("type")) {
    const std::string t = c.str(j["type"], path + ".type");
    if (t != "int" && t != "real") c.bad(path + ".type", "expected \"int\" or \"real\"");
    d.integer = t == "int";
  }
  if (j.contains("n")) d.levels = static_cast<uint32_t>(c.count(j["n"], path + ".n", 1));
  return d;
}

std::string resolve(const std::string& p, const std::string& base_dir) {
  namespace fs = std::filesystem;
  if (fs::path(p).is_absolute() || fs::exists(p) || base_dir.empty()) return p;
  const fs::path alt = fs::path(base_dir) / p;
  return fs::exists(alt) ? alt.string() : p;
}

}  // namespace

json Dim::at(double u) const {
  if (u < 0) u = 0;
  if (choice) {
    if (u >= 1) u = std::nextafter(1.0, 0.0);
    size_t i = static_cast<size_t>(u * static_cast<double>(choices.size()));
    if (i >= choices.size()) i = choices.size() - 1;
    return choices[i];
  }
  double v = u >= 1 ? hi : log ? lo * std::pow(hi / lo, u) : lo + u * (hi - lo);
  if (v > hi) v = hi;
  if (v < lo) v = lo;
  if (integer) return static_cast<int64_t>(std::llround(v));
  return v;
}

std::vector<double> Dim::grid() const {
  std::vector<double> g;
  if (choice) {
    for (size_t i = 0; i < choices.size(); ++i) g.push_back((static_cast<double>(i) + 0.5) / static_cast<double>(choices.size()));
    return g;
  }
  if (levels == 1 || hi == lo) return {0.0};
  // Ends included: u = 1 is hi itself.
  for (uint32_t k = 0; k < levels; ++k) g.push_back(k + 1 == levels ? 1.0 : static_cast<double>(k) / (levels - 1));
  return g;
}

const std::vector<std::string>& metric_names() {
  static const std::vector<std::string> names = {
      "retained_mass", "oracle_topk_mass", "output_rel_l2", "peak_hbm_bytes", "bytes_fetched", "bytes_offloaded",
      "evictions",     "offloads",         "fetches",       "mean_hbm_entries", "mean_hbm_pages", "requests",
      "misses",        "steps",            "ttft",          "tpot",           "tokens_per_s"};
  return names;
}

Spec parse_spec(const json& j, const std::string& where, const std::string& base_dir) {
  Ctx c{where};
  Spec s;
  s.where = where;
  s.raw = j;
  if (!j.is_object()) fail(where, "expected a JSON object");
  c.known(j, "", {"traces", "policies", "hardware", "as", "objectives", "constraints", "strategy", "max_steps", "access",
                  "aggregation", "coalesce", "bounds", "comment"});
  // traces
  if (!j.contains("traces")) c.bad("traces", "missing");
  if (!j["traces"].is_array() || j["traces"].empty()) c.bad("traces", "expected a non-empty array of paths");
  for (size_t i = 0; i < j["traces"].size(); ++i) {
    s.traces.push_back(c.str(j["traces"][i], "traces[" + std::to_string(i) + "]"));
    s.resolved.push_back(resolve(s.traces.back(), base_dir));
  }
  // policies
  if (!j.contains("policies")) c.bad("policies", "missing");
  if (!j["policies"].is_array() || j["policies"].empty()) c.bad("policies", "expected a non-empty array");
  for (size_t i = 0; i < j["policies"].size(); ++i) {
    const std::string p = "policies[" + std::to_string(i) + "]";
    const json& pj = c.obj(j["policies"][i], p);
    c.known(pj, p, {"name", "params", "budget", "page_size"});
    PolicySpace ps;
    if (!pj.contains("name")) c.bad(p + ".name", "missing");
    ps.name = c.str(pj["name"], p + ".name");
    if (pj.contains("params")) {
      const json& pp = c.obj(pj["params"], p + ".params");
      for (auto it = pp.begin(); it != pp.end(); ++it) {
        const std::string kp = p + ".params." + it.key();
        if (it.value().is_number()) ps.fixed[it.key()] = it.value();
        else if (it.value().is_object()) ps.dims.push_back(parse_dim(c, "params." + it.key(), it.value(), kp));
        else c.bad(kp, "expected a number, {\"choices\": [...]} or {\"lo\", \"hi\", ...}");
      }
    }
    for (const char* k : {"budget", "page_size"}) {
      if (!pj.contains(k)) continue;
      const std::string kp = p + "." + k;
      const json& v = pj[k];
      if (v.is_number_integer() && v.get<int64_t>() >= (std::string(k) == "budget" ? 0 : 1)) {
        (std::string(k) == "budget" ? ps.budget : ps.page_size) = v;
      } else if (v.is_object()) {
        Dim d = parse_dim(c, k, v, kp);
        for (size_t ci = 0; ci < d.choices.size(); ++ci)
          if (!d.choices[ci].is_number_integer() || d.choices[ci].get<int64_t>() < 1)
            c.bad(kp + ".choices[" + std::to_string(ci) + "]", "expected a positive integer");
        if (!d.choice) {
          d.integer = true;
          if (d.lo < 1) c.bad(kp + ".lo", "expected >= 1");
        }
        ps.dims.push_back(std::move(d));
      } else {
        c.bad(kp, "expected a positive integer or a dimension");
      }
    }
    s.policies.push_back(std::move(ps));
  }
  // hardware
  if (j.contains("hardware")) {
    if (!j["hardware"].is_array()) c.bad("hardware", "expected an array");
    const auto presets = hw::preset_names();
    for (size_t i = 0; i < j["hardware"].size(); ++i) {
      const std::string p = "hardware[" + std::to_string(i) + "]";
      const json& hj = c.obj(j["hardware"][i], p);
      c.known(hj, p, {"preset", "set"});
      HardwareSpec h;
      if (!hj.contains("preset")) c.bad(p + ".preset", "missing");
      h.preset = c.str(hj["preset"], p + ".preset");
      if (std::find(presets.begin(), presets.end(), h.preset) == presets.end()) {
        std::string list;
        for (const auto& n : presets) list += (list.empty() ? "" : ", ") + n;
        c.bad(p + ".preset", "unknown preset '" + h.preset + "' (known: " + list + ")");
      }
      if (hj.contains("set")) {
        const json& sj = c.obj(hj["set"], p + ".set");
        hw::Hardware probe = hw::preset(h.preset);
        for (auto it = sj.begin(); it != sj.end(); ++it) {
          const double v = c.num(it.value(), p + ".set." + it.key());
          try {
            probe.set(it.key(), v);
          } catch (const Error& e) {
            c.bad(p + ".set." + it.key(), e.what());
          }
          h.set[it.key()] = it.value();
        }
      }
      s.hardware.push_back(std::move(h));
    }
  }
  if (j.contains("as")) s.as = c.str(j["as"], "as");
  // objectives and constraints
  const auto& names = metric_names();
  auto metric = [&](const json& m, const std::string& p) {
    const std::string name = c.str(m, p);
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      c.bad(p, "unknown metric '" + name + "' (known: " + list + ")");
    }
    return name;
  };
  if (!j.contains("objectives")) c.bad("objectives", "missing");
  if (!j["objectives"].is_array() || j["objectives"].empty()) c.bad("objectives", "expected a non-empty array");
  for (size_t i = 0; i < j["objectives"].size(); ++i) {
    const std::string p = "objectives[" + std::to_string(i) + "]";
    const json& oj = c.obj(j["objectives"][i], p);
    c.known(oj, p, {"metric", "goal"});
    if (!oj.contains("metric")) c.bad(p + ".metric", "missing");
    if (!oj.contains("goal")) c.bad(p + ".goal", "missing");
    Objective o;
    o.metric = metric(oj["metric"], p + ".metric");
    const std::string g = c.str(oj["goal"], p + ".goal");
    if (g != "max" && g != "min") c.bad(p + ".goal", "expected \"max\" or \"min\"");
    o.maximize = g == "max";
    s.objectives.push_back(o);
  }
  if (j.contains("constraints")) {
    if (!j["constraints"].is_array()) c.bad("constraints", "expected an array");
    for (size_t i = 0; i < j["constraints"].size(); ++i) {
      const std::string p = "constraints[" + std::to_string(i) + "]";
      const json& cj = c.obj(j["constraints"][i], p);
      c.known(cj, p, {"metric", "le", "ge"});
      if (!cj.contains("metric")) c.bad(p + ".metric", "missing");
      Constraint k;
      k.metric = metric(cj["metric"], p + ".metric");
      if (cj.contains("le")) k.has_le = true, k.le = c.num(cj["le"], p + ".le");
      if (cj.contains("ge")) k.has_ge = true, k.ge = c.num(cj["ge"], p + ".ge");
      if (!k.has_le && !k.has_ge) c.bad(p, "needs le and/or ge");
      s.constraints.push_back(k);
    }
  }
  // strategy
  if (j.contains("strategy")) {
    const json& sj = c.obj(j["strategy"], "strategy");
    c.known(sj, "strategy", {"name", "samples", "seed", "eta", "min_steps", "generations"});
    if (sj.contains("name")) {
      s.strategy.name = c.str(sj["name"], "strategy.name");
      const std::set<std::string> ok = {"grid", "random", "lhs", "halving", "nsga2"};
      if (!ok.count(s.strategy.name))
        c.bad("strategy.name", "unknown strategy '" + s.strategy.name + "' (known: grid, random, lhs, halving, nsga2)");
    }
    if (sj.contains("samples")) s.strategy.samples = c.count(sj["samples"], "strategy.samples", 1);
    if (sj.contains("seed")) s.strategy.seed = c.count(sj["seed"], "strategy.seed", 0);
    if (sj.contains("eta")) s.strategy.eta = static_cast<uint32_t>(c.count(sj["eta"], "strategy.eta", 2));
    if (sj.contains("generations"))
      s.strategy.generations = static_cast<uint32_t>(c.count(sj["generations"], "strategy.generations", 0));
    if (sj.contains("min_steps")) s.strategy.min_steps = static_cast<uint32_t>(c.count(sj["min_steps"], "strategy.min_steps", 1));
  }
  if (j.contains("max_steps")) s.max_steps = static_cast<uint32_t>(c.count(j["max_steps"], "max_steps", 0));
  if (j.contains("access")) s.access = c.str(j["access"], "access");
  if (j.contains("aggregation")) {
    s.aggregation = c.str(j["aggregation"], "aggregation");
    if (s.aggregation != "sum" && s.aggregation != "max" && s.aggregation != "mean")
      c.bad("aggregation", "expected \"sum\", \"max\" or \"mean\"");
  }
  if (j.contains("coalesce")) s.coalesce = c.boolean(j["coalesce"], "coalesce");
  if (j.contains("bounds")) s.bounds = c.boolean(j["bounds"], "bounds");
  return s;
}

Spec load_spec(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path, "cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail(path, std::string("not valid JSON: ") + e.what());
  }
  return parse_spec(j, path, std::filesystem::path(path).parent_path().string());
}

}  // namespace kvscope::explore
