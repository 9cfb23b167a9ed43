// The hardware presets (hwmodels/presets.cpp): they load and validate, their headline
// figures are those of ../shared/hardware-facts.md, every figure they set says where it
// comes from, and docs/hardware.md's preset table shows the same numbers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "hwmodels/hw.h"
#include "kernels/io/error.h"

using kvscope::hw::Hardware;
using kvscope::hw::Param;
using kvscope::hw::params;
using kvscope::hw::preset;
using kvscope::hw::preset_names;

namespace {

const std::vector<std::string> kExpected = {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200",
                                            "b200",      "gh200",     "l40s",     "rtx4090"};

std::string group_of(const std::string& key) { return key.substr(0, key.find('.')); }

// Whether a figure takes part in the model: a link's efficiency or latency does not when
// the link is absent (bandwidth 0), the third tier only when it exists, and system.* are
// run settings rather than hardware figures.
bool active(const Hardware& h, const std::string& key) {
  const std::string g = group_of(key);
  if (g == "system") return false;
  if (g == "pcie") return h.pcie_bandwidth > 0;
  if (g == "c2c") return h.c2c_bandwidth > 0;
  if (g == "tier") return h.tier_bandwidth > 0;
  if (key == "nvlink.efficiency" || key == "nvlink.latency") return h.nvlink_bandwidth > 0;
  return true;
}

// Keys that need a source and lack one: every figure the preset changed from a
// default-constructed Hardware, and every non-zero figure that takes part in the model
// (a default the preset silently kept is a claim about that machine too).
std::vector<std::string> unsourced(const Hardware& h) {
  const Hardware d;
  std::vector<std::string> out;
  for (const Param& p : params()) {
    const double v = h.*(p.field), dv = d.*(p.field);
    const bool needs = v != dv || (v != 0 && active(h, p.key));
    if (!needs) continue;
    auto it = h.sources.find(p.key);
    if (it == h.sources.end() || it->second.empty()) out.emplace_back(p.key);
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

TEST(HwPresets, NamesAreTheNineOfTheIssueInOrder) { EXPECT_EQ(preset_names(), kExpected); }

TEST(HwPresets, EveryPresetLoadsValidatesAndRoundTripsThroughJson) {
  for (const std::string& name : preset_names()) {
    SCOPED_TRACE(name);
    const Hardware h = preset(name);
    EXPECT_EQ(h.name, name);
    EXPECT_FALSE(h.description.empty());
    EXPECT_EQ(h.description.find('\n'), std::string::npos) << "description is one line";
    EXPECT_NO_THROW(h.validate());
    // The same preset through load() and through its own JSON form.
    const Hardware l = kvscope::hw::load(name);
    const Hardware j = kvscope::hw::from_json(h.to_json(), "roundtrip.json");
    for (const Param& p : params()) {
      EXPECT_EQ(l.*(p.field), h.*(p.field)) << p.key;
      EXPECT_EQ(j.*(p.field), h.*(p.field)) << p.key;
    }
    EXPECT_EQ(j.sources, h.sources);
  }
}

// Headline figures against ../shared/hardware-facts.md (section numbers in the comments).
TEST(HwPresets, SpotFiguresEqualTheFactsFile) {
  const Hardware a40 = preset("a100-40gb"), a80 = preset("a100-80gb"), hs = preset("h100-sxm"),
                 hp = preset("h100-pcie"), h2 = preset("h200"), b = preset("b200"), gh = preset("gh200"),
                 l = preset("l40s"), r = preset("rtx4090");
  // 1. datasheet
  EXPECT_DOUBLE_EQ(hs.gpu_hbm_bandwidth, 3.35e12);
  EXPECT_DOUBLE_EQ(hs.gpu_flops_fp16, 989e12);
  EXPECT_DOUBLE_EQ(h2.gpu_hbm_bytes, 141e9);
  EXPECT_DOUBLE_EQ(h2.gpu_hbm_bandwidth, 4.8e12);
  EXPECT_DOUBLE_EQ(a40.gpu_hbm_bandwidth, 1.555e12);
  EXPECT_DOUBLE_EQ(a80.gpu_hbm_bandwidth, 2.039e12);
  EXPECT_DOUBLE_EQ(a80.gpu_flops_fp16, 312e12);
  EXPECT_DOUBLE_EQ(b.gpu_hbm_bytes, 180e9);
  EXPECT_DOUBLE_EQ(b.gpu_flops_fp16, 2250e12);
  EXPECT_DOUBLE_EQ(b.nvlink_bandwidth, 900e9);
  EXPECT_DOUBLE_EQ(gh.gpu_hbm_bytes, 96e9);
  EXPECT_DOUBLE_EQ(gh.c2c_bandwidth, 450e9);
  EXPECT_DOUBLE_EQ(gh.host_dram_bandwidth, 512e9);
  EXPECT_DOUBLE_EQ(l.gpu_hbm_bandwidth, 864e9);
  EXPECT_DOUBLE_EQ(r.gpu_flops_fp16, 165.2e12);  // fp32 accumulation, not the 330 of fp16 accumulation
  EXPECT_DOUBLE_EQ(hp.nvlink_bandwidth, 300e9);
  EXPECT_EQ(hp.nvlink_gpus, 2);
  EXPECT_EQ(hp.gpu_sms, 114);
  // 2. measured HBM fractions (copy / scale)
  EXPECT_NEAR(h2.gpu_hbm_efficiency, 4.01 / 4.8, 1e-3);
  EXPECT_NEAR(hs.gpu_hbm_efficiency, 2.90 / 3.35, 1e-3);
  EXPECT_NEAR(a40.gpu_hbm_efficiency, 1382.0 / 1555, 1e-3);
  // 3. links and launches
  EXPECT_NEAR(h2.pcie_efficiency, 55.43 / 63, 5e-3);
  EXPECT_NEAR(a40.pcie_efficiency, 26.1 / 31.5, 5e-3);
  EXPECT_NEAR(a40.pcie_pageable_factor, 12.7 / 26.1, 5e-3);
  EXPECT_NEAR(h2.nvlink_efficiency, 396.4 / 450, 5e-3);
  EXPECT_NEAR(gh.c2c_efficiency, 346.0 / 450, 5e-3);
  EXPECT_DOUBLE_EQ(a80.gpu_launch_overhead, 2.6e-6);
  EXPECT_DOUBLE_EQ(h2.gpu_launch_overhead, 2.4e-6);
  EXPECT_DOUBLE_EQ(l.gpu_launch_overhead, 1.6e-6);
  // 4. GEMM: best BF16 / dense peak
  EXPECT_NEAR(hs.gpu_gemm_efficiency, 794.5 / 989, 1e-3);
  EXPECT_NEAR(b.gpu_gemm_efficiency, 1745.0 / 2250, 1e-3);
  EXPECT_NEAR(gh.gpu_gemm_efficiency, 828.6 / 990, 2e-3);
}

// Conventions of hw.h that a mistyped preset would break.
TEST(HwPresets, FiguresFollowTheConventions) {
  for (const std::string& name : preset_names()) {
    SCOPED_TRACE(name);
    const Hardware h = preset(name);
    EXPECT_GT(h.gpu_flops_fp16, h.gpu_flops_fp32) << "tensor peak above the non-tensor one";
    // Dense fp8 is twice dense fp16 (L40S: 733 vs 362, the datasheet's rounding).
    if (h.gpu_flops_fp8 > 0) {
      EXPECT_NEAR(h.gpu_flops_fp8 / h.gpu_flops_fp16, 2.0, 0.03);
    }
    // Per-direction PCIe: 31.5 GB/s for Gen4 x16, doubling per generation.
    if (h.pcie_generation > 0) {
      EXPECT_NEAR(h.pcie_bandwidth, 31.5e9 * std::pow(2.0, h.pcie_generation - 4) * h.pcie_lanes / 16, 1e6);
    } else {
      EXPECT_EQ(h.pcie_bandwidth, 0);
    }
    // A host link exists and the one the model uses is below its theoretical figure.
    EXPECT_GT(h.host_link_bw(), 0);
    EXPECT_LT(h.host_link_bw(), std::max(h.pcie_bandwidth, h.c2c_bandwidth));
    // NVLink: 8-GPU boards for SXM parts; no NVLink means one GPU per tensor-parallel group.
    if (h.nvlink_bandwidth == 0) {
      EXPECT_EQ(h.nvlink_gpus, 1);
    }
    if (name == "a100-40gb" || name == "a100-80gb" || name == "h100-sxm" || name == "h200" || name == "b200") {
      EXPECT_EQ(h.nvlink_gpus, 8);
    }
    EXPECT_GT(h.host_dram_bytes, h.gpu_hbm_bytes);
    EXPECT_GT(h.gpu_sms, 0);
    EXPECT_GT(h.gpu_l2_bytes, 0);
  }
}

TEST(HwPresets, EveryActiveFigureHasASource) {
  for (const std::string& name : preset_names()) {
    const Hardware h = preset(name);
    EXPECT_EQ(unsourced(h), std::vector<std::string>{}) << name << " lacks sources for: " << join(unsourced(h));
    for (const auto& [key, text] : h.sources) {
      EXPECT_NO_THROW(kvscope::hw::param(key)) << name << ": source for unknown key " << key;
      EXPECT_FALSE(text.empty()) << name << ": " << key;
    }
  }
}

// The check above would pass on a checker that looks at nothing; show it catches the
// two ways a preset can go unsourced.
TEST(HwPresets, SourceCheckCatchesAMissingSource) {
  Hardware h = preset("h100-sxm");
  ASSERT_TRUE(unsourced(h).empty());
  h.sources.erase("gpu.hbm_bandwidth");  // a datasheet figure with its citation dropped
  EXPECT_EQ(unsourced(h), std::vector<std::string>{"gpu.hbm_bandwidth"});

  Hardware k = preset("rtx4090");
  k.sources.erase("gpu.launch_overhead");  // a kept default is still a claim
  EXPECT_EQ(unsourced(k), std::vector<std::string>{"gpu.launch_overhead"});

  Hardware g = preset("gh200");
  g.sources.erase("pcie.lanes");  // set to 0 (no PCIe host link): differs from the default
  EXPECT_EQ(unsourced(g), std::vector<std::string>{"pcie.lanes"});
  g = preset("gh200");
  g.sources.erase("pcie.efficiency");  // inactive: the GPU has no PCIe host link
  EXPECT_TRUE(unsourced(g).empty());
}

// Each citation names a source of docs/hardware.md's list, or says it is derived or assumed.
TEST(HwPresets, SourcesCiteTheSourceList) {
  const std::vector<std::string> keys = {"AO",   "AZ",    "BW",    "CUT1139", "CUT1176", "DS3",      "FZ",
                                         "GHD",  "GI",    "GK-A",  "GK-H",    "H100P",   "H100T",    "JDH",
                                         "L40S", "MLE-C", "MLE-N", "MLP",     "NCCL1264", "NT149",   "NVB23",
                                         "NVB24", "NVB41", "NVB48", "OCL",    "OX",      "PB",       "PC",
                                         "RRZE", "SSM",   "VX",    "XLA",     "4090"};
  auto cites = [&](const std::string& text) {
    if (text.rfind("assumed:", 0) == 0 || text.rfind("(derived)", 0) == 0) return true;
    for (const auto& k : keys) {
      for (size_t at = text.find(k); at != std::string::npos; at = text.find(k, at + 1)) {
        const bool left = at == 0 || !std::isalnum(static_cast<unsigned char>(text[at - 1]));
        const size_t end = at + k.size();
        const bool right = end == text.size() || !std::isalnum(static_cast<unsigned char>(text[end]));
        if (left && right) return true;
      }
    }
    return false;
  };
  for (const std::string& name : preset_names())
    for (const auto& [key, text] : preset(name).sources) EXPECT_TRUE(cites(text)) << name << " " << key << ": " << text;
}

TEST(HwPresets, UnknownNameErrorListsThePresets) {
  for (const char* bad : {"h100", "H100-SXM", ""}) {
    try {
      preset(bad);
      ADD_FAILURE() << "no error for '" << bad << "'";
    } catch (const kvscope::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
      for (const std::string& n : kExpected) EXPECT_NE(msg.find(n), std::string::npos) << n << " missing from: " << msg;
    }
  }
}

// docs/hardware.md's two preset tables are written by hand; they must show the presets' figures.
TEST(HwPresets, DocTablesShowThePresetFigures) {
  std::ifstream in(std::string(KVSCOPE_SOURCE_DIR) + "/docs/hardware.md");
  ASSERT_TRUE(in) << "docs/hardware.md";
  // heading -> preset -> cells of its row (rows start with "| `name`").
  std::map<std::string, std::map<std::string, std::vector<std::string>>> tables;
  std::string line, heading;
  while (std::getline(in, line)) {
    if (line.rfind('#', 0) == 0) heading = line;
    if (line.rfind("| `", 0) != 0) continue;
    std::vector<std::string> cells;
    std::stringstream ss(line.substr(1));
    for (std::string c; std::getline(ss, c, '|');) {
      const size_t a = c.find_first_not_of(' '), z = c.find_last_not_of(' ');
      cells.push_back(a == std::string::npos ? "" : c.substr(a, z - a + 1));
    }
    const size_t tick = cells[0].find('`', 1);
    tables[heading][cells[0].substr(1, tick - 1)] = cells;
  }
  auto num = [](const std::string& cell) { return cell == "–" ? 0.0 : std::stod(cell); };
  const auto& main = tables["## Presets"];
  const auto& costs = tables["### Measured fractions and costs"];
  EXPECT_EQ(main.size(), preset_names().size()) << "one row per preset in the Presets table";
  EXPECT_EQ(costs.size(), preset_names().size()) << "one row per preset in the costs table";
  for (const std::string& name : preset_names()) {
    SCOPED_TRACE(name);
    const Hardware h = preset(name);
    ASSERT_TRUE(main.count(name) && costs.count(name)) << "no row for the preset";
    // | preset | GPU | HBM GB | HBM TB/s | BF16 TF dense | host link | host GB/s/dir | NVLink GB/s/dir | NVLink GPUs |
    const auto& c = main.at(name);
    ASSERT_EQ(c.size(), 9u);
    const bool c2c = h.c2c_bandwidth > 0;
    EXPECT_NEAR(num(c[2]), h.gpu_hbm_bytes / 1e9, 1e-9);
    EXPECT_NEAR(num(c[3]), h.gpu_hbm_bandwidth / 1e12, 1e-9);
    EXPECT_NEAR(num(c[4]), h.gpu_flops_fp16 / 1e12, 1e-9);
    const std::string link = c2c ? "NVLink-C2C" : "PCIe Gen" + std::to_string(int(h.pcie_generation)) + " x16";
    EXPECT_EQ(c[5], link);
    EXPECT_NEAR(num(c[6]), (c2c ? h.c2c_bandwidth : h.pcie_bandwidth) / 1e9, 1e-9);
    EXPECT_NEAR(num(c[7]), h.nvlink_bandwidth / 1e9, 1e-9);  // "300 (bridge)" reads as 300
    EXPECT_NEAR(num(c[8]), h.nvlink_gpus, 1e-9);
    // | preset | HBM eff. | GEMM eff. | launch µs | host link eff. | pageable factor | per-copy µs | NVLink eff. |
    //   host DRAM GB | host DRAM GB/s |
    const auto& k = costs.at(name);
    ASSERT_EQ(k.size(), 10u);
    EXPECT_NEAR(num(k[1]), h.gpu_hbm_efficiency, 1e-9);
    EXPECT_NEAR(num(k[2]), h.gpu_gemm_efficiency, 1e-9);
    EXPECT_NEAR(num(k[3]), h.gpu_launch_overhead * 1e6, 1e-9);
    EXPECT_NEAR(num(k[4]), c2c ? h.c2c_efficiency : h.pcie_efficiency, 1e-9);
    EXPECT_NEAR(num(k[5]), c2c ? 0 : h.pcie_pageable_factor, 1e-9);
    EXPECT_NEAR(num(k[6]), c2c ? 0 : h.pcie_transfer_overhead * 1e6, 1e-9);
    EXPECT_NEAR(num(k[7]), h.nvlink_bandwidth > 0 ? h.nvlink_efficiency : 0, 1e-9);
    EXPECT_NEAR(num(k[8]), h.host_dram_bytes / 1e9, 1e-9);
    EXPECT_NEAR(num(k[9]), h.host_dram_bandwidth / 1e9, 1e-9);
  }
}
