// The hardware presets (docs/hardware.md, "Presets").
//
// Every figure a preset sets goes through fig(), which stores the value with Hardware::set
// (so a mistyped key or an out-of-range value fails here, naming the key) and records where
// it comes from in `sources`. The source text starts with the key of docs/hardware.md's
// source list (the same keys as ../shared/hardware-facts.md): "MLE-C", "RRZE", ...;
// "(derived)" marks arithmetic on cited figures, "assumed:" a choice the sources do not
// make for us, with the reason. tests/cpp/hw_presets_test.cpp checks that every active
// figure has a source.
//
// Conventions (hw.h): SI units, decimal prefixes as the datasheets print them (an "80 GB"
// part is 80e9 bytes, though its usable capacity is 80 GiB); link bandwidths per direction;
// gpu.flops_fp16 is the dense (no 2:4 sparsity) bf16/fp16 tensor peak with fp32
// accumulation; gpu.hbm_efficiency is the measured copy/scale stream fraction (one read and
// one write per element, the same counting as the calibration's D2D copy).
#include <string>
#include <vector>

#include "hwmodels/hw.h"
#include "kernels/io/error.h"

namespace kvscope::hw {

namespace {

void fig(Hardware& h, const char* key, double value, std::string source) {
  h.set(key, value);
  h.sources[key] = std::move(source);
}

// ---- pieces shared by several presets -------------------------------------------------

// PCIe figures common to one generation. Theoretical per direction:
// 16 lanes x GT/s x 128/130 / 8 (hardware-facts caveat g).
void pcie_gen4(Hardware& h, const std::string& gpu_source) {
  fig(h, "pcie.generation", 4, gpu_source + ": PCIe Gen4 x16");
  fig(h, "pcie.lanes", 16, gpu_source + ": x16");
  fig(h, "pcie.bandwidth", 31.5e9, "(derived) Gen4 x16: 16 x 16 GT/s x 128/130 / 8 = 31.5 GB/s per direction");
  fig(h, "pcie.efficiency", 0.83,
      "GI: pinned H2D/D2H 26.1 GB/s of 31.5 on DGX-A100 (83 %); JDH: 26.2 GB/s on A100 PCIe");
  fig(h, "pcie.pageable_factor", 0.49, "GI: pageable 12.7 vs pinned 26.1 GB/s on DGX-A100 (derived 0.49)");
}

void pcie_gen5(Hardware& h, const std::string& gpu_source) {
  fig(h, "pcie.generation", 5, gpu_source + ": PCIe Gen5 x16");
  fig(h, "pcie.lanes", 16, gpu_source + ": x16");
  fig(h, "pcie.bandwidth", 63e9,
      "(derived) Gen5 x16: 16 x 32 GT/s x 128/130 / 8 = 63 GB/s per direction (NVIDIA prints 128 GB/s bidirectional)");
  fig(h, "pcie.efficiency", 0.88,
      "MLE-N: pinned copy-engine H2D 55.43, D2H 55.06 GB/s of 63 on 8x H200 (88 %/87 %); AZ measured 51/52 GB/s on ND H100 v5");
  fig(h, "pcie.pageable_factor", 0.3,
      "assumed: no Gen5 pageable measurement; pageable copies are bound by the driver's staging memcpy, which does not "
      "double with the link: Gen4 pageable runs at 12.3-12.9 GB/s (GI, OX), taken as ~16 GB/s on a newer host over "
      "55 GB/s pinned (MLE-N)");
}

// Per-copy costs measured on Gen4 hosts; no Gen5 small-copy figures exist in the sources.
void pcie_costs(Hardware& h, double transfer_overhead, const std::string& overhead_source) {
  fig(h, "pcie.pinned", 1,
      "assumed: KV offload pools are pinned host memory (as vLLM and SGLang allocate them); set 0 for pageable");
  fig(h, "pcie.latency", 3e-6,
      "DS3: small-copy latency 2.5-3.3 us by GPU events (2.2-2.8 us by CPU) on 8x A100-SXM4-80GB; 3 us taken");
  fig(h, "pcie.transfer_overhead", transfer_overhead, overhead_source);
}

const char* const kOverheadServer =
    "assumed: no per-copy figure for this host; 8 us lies between the two Gen4 derivations: JDH A100 PCIe 1 MB vs "
    "100 MB pinned gives 14 us (H2D) / 25 us (D2H) per copy beyond bandwidth, OX RTX 4090 1 MiB vs 16 MiB gives "
    "2.9 / 2.0 us (derived)";

// An 8-GPU HGX/DGX baseboard: every GPU reaches the others through NVSwitch.
void nvlink_hgx8(Hardware& h, double per_dir, const std::string& bw_source, double eff, const std::string& eff_source) {
  fig(h, "nvlink.bandwidth", per_dir, bw_source);
  fig(h, "nvlink.efficiency", eff, eff_source);
  fig(h, "nvlink.latency", 3e-6,
      "assumed: DS3 gives 2.5-3.3 us for a small same-GPU copy and 23-25 us cross-GPU without P2P, but no P2P "
      "(NVLink) latency; a one-hop NVLink copy is taken as one small-copy latency, 3 us");
  fig(h, "nvlink.gpus", 8,
      h.name == "b200" ? "BW datasheet: HGX B200 holds 8 GPUs on NVSwitch"
                       : "assumed: the HGX/DGX 8-GPU baseboard on NVSwitch, the usual system for SXM parts");
}

void no_nvlink(Hardware& h, const std::string& source) {
  fig(h, "nvlink.bandwidth", 0, source + ": no NVLink");
  fig(h, "nvlink.gpus", 1, source + ": no NVLink, so a tensor-parallel group has one GPU");
}

// ---- the presets ----------------------------------------------------------------------

Hardware a100(bool big) {
  Hardware h;
  h.name = big ? "a100-80gb" : "a100-40gb";
  h.description = big ? "NVIDIA A100 SXM4 80 GB HBM2e, 8-GPU HGX/DGX A100 (NVLink3), PCIe Gen4 host"
                      : "NVIDIA A100 SXM4 40 GB HBM2, 8-GPU HGX/DGX A100 (NVLink3), PCIe Gen4 host";
  if (big) {
    fig(h, "gpu.hbm_bytes", 80e9, "GK-A, MLE-C datasheet: 80 GB HBM2e");
    fig(h, "gpu.hbm_bandwidth", 2.039e12, "GK-A, MLE-C datasheet: 2.039 TB/s");
    fig(h, "gpu.hbm_efficiency", 0.852,
        "RRZE gpu-stream: scale 1737 GB/s of 2039 (85 %; triad 1794, 88 %); AZ BabelStream copy 1.61 TB/s (79 %)");
  } else {
    fig(h, "gpu.hbm_bytes", 40e9, "GK-A, FZ datasheet: 40 GB HBM2");
    fig(h, "gpu.hbm_bandwidth", 1.555e12, "GK-A, FZ datasheet: 1.555 TB/s");
    fig(h, "gpu.hbm_efficiency", 0.889,
        "RRZE gpu-stream: scale 1382 GB/s of 1555 (89 %; triad 1358, 87 %); GI memcpy 1311 GB/s (84 %)");
  }
  fig(h, "gpu.flops_fp32", 19.5e12, "MLE-C: A100 SXM FP32 19.5 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 312e12, "GK-A, MLE-C datasheet: BF16/FP16 tensor 312 TF dense (624 sparse)");
  fig(h, "gpu.flops_fp8", 0, "MLE-C: A100 has no FP8 tensor cores");
  fig(h, "gpu.gemm_efficiency", 0.869,
      std::string("MLE-C: best cuBLAS BF16 GEMM 271.2 TF of 312 (86.9 %) on A100 SXM") +
          (big ? "; AZ: 4096^3 FP16 cuBLASLt 228 TF (73 %) on A100 80GB" : ""));
  fig(h, "gpu.launch_overhead", 2.6e-6, "RRZE gpu-small-kernels (derived): 2.6 us per back-to-back launch on A100-80GB");
  fig(h, "gpu.sms", 108, "GK-A datasheet: 108 SMs");
  fig(h, "gpu.l2_bytes", 40e6, "GK-A datasheet: 40 MB L2");
  fig(h, "host.dram_bytes", big ? 2e12 : 1e12,
      big ? "assumed: DGX A100 640GB host memory, 2 TB" : "assumed: DGX A100 320GB host memory, 1 TB");
  fig(h, "host.dram_bandwidth", 409.6e9,
      "assumed: DGX A100 host, 2x AMD EPYC 7742 with 8 channels DDR4-3200 each = 2 x 204.8 GB/s (theoretical)");
  pcie_gen4(h, big ? "GK-A, MLE-C" : "GK-A, GI");
  pcie_costs(h, 14e-6,
             "JDH (derived): A100 PCIe bandwidthTest H2D 18.0 GB/s at 1 MB, 24.1 at 100 MB: a two-point fit gives "
             "14 us per copy beyond bandwidth (D2H 25 us)");
  nvlink_hgx8(h, 300e9, "GK-A datasheet: NVLink3 600 GB/s bidirectional, 300 GB/s per direction (12 links)", 0.87,
              "GI: NVLink3 P2P copy-engine 237-248 GiB/s per direction, about 261 GB/s of 300 (87 %) on DGX-A100");
  return h;
}

Hardware h100_sxm() {
  Hardware h;
  h.name = "h100-sxm";
  h.description = "NVIDIA H100 SXM5 80 GB HBM3, 8-GPU HGX/DGX H100 (NVLink4), PCIe Gen5 host";
  fig(h, "gpu.hbm_bytes", 80e9, "H100T datasheet: 80 GB HBM3");
  fig(h, "gpu.hbm_bandwidth", 3.35e12, "H100T, MLE-C datasheet: 3.35 TB/s");
  fig(h, "gpu.hbm_efficiency", 0.866, "AZ: BabelStream copy 2.90 TB/s of 3.35 (87 %; triad 2.97, 89 %) on ND H100 v5");
  fig(h, "gpu.flops_fp32", 67e12, "MLE-C: H100 SXM FP32 67 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 989e12, "H100T, MLE-C datasheet: BF16/FP16 tensor 989 TF dense (1979 sparse)");
  fig(h, "gpu.flops_fp8", 1979e12, "H100T, MLE-C datasheet: FP8 tensor 1979 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.803,
      "MLE-C: best cuBLAS BF16 GEMM 794.5 TF of 989 (80.3 %); XLA: 4096^3 BF16 783.3 TF (79 %)");
  fig(h, "gpu.launch_overhead", 2.4e-6,
      "RRZE gpu-small-kernels (derived): 2.4 us per back-to-back launch on H200, the same GH100 die");
  fig(h, "gpu.sms", 132, "H100T datasheet: 132 SMs");
  fig(h, "gpu.l2_bytes", 50e6, "H100T datasheet: 50 MB L2");
  fig(h, "host.dram_bytes", 2e12, "assumed: DGX H100 host memory, 2 TB");
  fig(h, "host.dram_bandwidth", 614.4e9,
      "assumed: DGX H100 host, 2x Xeon Platinum 8480C with 8 channels DDR5-4800 each = 2 x 307.2 GB/s (theoretical)");
  pcie_gen5(h, "H100T, MLE-N");
  pcie_costs(h, 8e-6, kOverheadServer);
  nvlink_hgx8(h, 450e9, "H100T datasheet: NVLink4 900 GB/s bidirectional, 450 GB/s per direction (18 links)", 0.83,
              "NCCL1264: NVLink4 P2P 371-377 GB/s per direction of 450 (83 %) on HGX H100");
  return h;
}

Hardware h100_pcie() {
  Hardware h;
  h.name = "h100-pcie";
  h.description = "NVIDIA H100 PCIe 80 GB HBM2e, NVLink bridge pairing 2 cards, PCIe Gen5 host";
  fig(h, "gpu.hbm_bytes", 80e9, "H100T, H100P datasheet: 80 GB HBM2e");
  fig(h, "gpu.hbm_bandwidth", 2.0e12, "H100T, H100P datasheet: 2.0 TB/s");
  fig(h, "gpu.hbm_efficiency", 0.852, "RRZE gpu-stream: scale 1704 GB/s of 2000 (85 %; triad 1832, 92 %)");
  fig(h, "gpu.flops_fp32", 51e12, "MLE-C: H100 PCIe FP32 51 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 756e12, "H100T, MLE-C datasheet: BF16/FP16 tensor 756 TF dense (1513 sparse)");
  fig(h, "gpu.flops_fp8", 1513e12, "H100T, MLE-C datasheet: FP8 tensor 1513 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.803,
      "assumed: no H100 PCIe GEMM measurement; the H100 SXM fraction, MLE-C best BF16 794.5 of 989 TF (80.3 %)");
  fig(h, "gpu.launch_overhead", 2.4e-6,
      "RRZE gpu-small-kernels (derived): 2.4 us per back-to-back launch on H200, the same GH100 die");
  fig(h, "gpu.sms", 114, "H100T datasheet: 114 SMs");
  fig(h, "gpu.l2_bytes", 50e6, "H100T datasheet: 50 MB L2");
  fig(h, "host.dram_bytes", 1e12, "assumed: 2-socket PCIe server with 16 x 64 GB DDR5, 1 TB");
  fig(h, "host.dram_bandwidth", 614.4e9,
      "assumed: 2-socket Sapphire Rapids server, 8 channels DDR5-4800 per socket = 2 x 307.2 GB/s (theoretical)");
  pcie_gen5(h, "H100T");
  pcie_costs(h, 8e-6, kOverheadServer);
  fig(h, "nvlink.bandwidth", 300e9, "H100T datasheet: NVLink bridge 600 GB/s bidirectional, 300 GB/s per direction");
  fig(h, "nvlink.efficiency", 0.83,
      "assumed: no bridge measurement; the NVLink4 P2P fraction of NCCL1264, 371-377 of 450 GB/s (83 %)");
  fig(h, "nvlink.latency", 3e-6,
      "assumed: DS3 gives 2.5-3.3 us for a small same-GPU copy but no P2P (NVLink) latency; 3 us taken");
  fig(h, "nvlink.gpus", 2, "H100T: the NVLink bridge connects a pair of H100 PCIe cards");
  return h;
}

Hardware h200() {
  Hardware h;
  h.name = "h200";
  h.description = "NVIDIA H200 SXM 141 GB HBM3e, 8-GPU HGX/DGX H200 (NVLink4), PCIe Gen5 host";
  fig(h, "gpu.hbm_bytes", 141e9, "MLE-C, GK-H datasheet: 141 GB HBM3e");
  fig(h, "gpu.hbm_bandwidth", 4.8e12, "MLE-C, GK-H datasheet: 4.8 TB/s");
  fig(h, "gpu.hbm_efficiency", 0.835, "AZ: BabelStream copy 4.01 TB/s of 4.8 (84 %; triad 4.15, 86 %) on ND H200 v5");
  fig(h, "gpu.flops_fp32", 67e12, "MLE-C: H200 SXM FP32 67 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 989e12, "MLE-C, MLP: BF16/FP16 tensor 989 TF dense (1979 sparse)");
  fig(h, "gpu.flops_fp8", 1979e12, "MLE-C: FP8 tensor 1979 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.803,
      "assumed: no H200 BF16 GEMM measurement; the H100 SXM fraction (same die and peak), MLE-C best BF16 794.5 of "
      "989 TF (80.3 %); H200 FP8 reaches 73.4 % (MLE-C best), 63 % at 4096^3 (AZ)");
  fig(h, "gpu.launch_overhead", 2.4e-6, "RRZE gpu-small-kernels (derived): 2.4 us per back-to-back launch on H200");
  fig(h, "gpu.sms", 132, "MLE-C, GK-H: 132 SMs (H100 die)");
  fig(h, "gpu.l2_bytes", 50e6, "GK-H: 50 MB L2 (H100 die)");
  fig(h, "host.dram_bytes", 2e12, "assumed: DGX H200 host memory, 2 TB");
  fig(h, "host.dram_bandwidth", 614.4e9,
      "assumed: DGX H200 host, 2x Xeon Platinum 8480C with 8 channels DDR5-4800 each = 2 x 307.2 GB/s (theoretical)");
  pcie_gen5(h, "MLE-C, MLE-N");
  pcie_costs(h, 8e-6, kOverheadServer);
  nvlink_hgx8(h, 450e9, "MLE-C, GK-H datasheet: NVLink4 900 GB/s bidirectional, 450 GB/s per direction", 0.88,
              "MLE-N: nvbandwidth NVLink4 P2P 396.4 GB/s per direction of 450 (88 %) on 8x H200");
  return h;
}

Hardware b200() {
  Hardware h;
  h.name = "b200";
  h.description = "NVIDIA B200 (HGX) 180 GB HBM3e, 8-GPU HGX/DGX B200 (NVLink5), PCIe Gen5 host";
  fig(h, "gpu.hbm_bytes", 180e9, "BW datasheet (HGX B200): 180 GB HBM3e usable (192 GB physical)");
  fig(h, "gpu.hbm_bandwidth", 7.7e12, "BW datasheet (HGX B200): 7.7 TB/s (early documents: 8)");
  fig(h, "gpu.hbm_efficiency", 0.85,
      "assumed: no B200 stream measurement; the default 0.85, within the measured HBM3/HBM3e copy fractions "
      "0.79-0.87 of Hopper parts (AZ, RRZE)");
  fig(h, "gpu.flops_fp32", 75e12, "BW datasheet (HGX B200): FP32 75 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 2250e12, "BW, MLE-C datasheet: BF16/FP16 tensor 2250 TF dense (4500 sparse)");
  fig(h, "gpu.flops_fp8", 4500e12, "BW, MLE-C datasheet: FP8 tensor 4500 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.776, "MLE-C: best cuBLAS BF16 GEMM 1745 TF of 2250 (77.6 %)");
  fig(h, "gpu.launch_overhead", 2.4e-6,
      "assumed: no B200 launch measurement; RRZE's H200 figure, 2.4 us per back-to-back launch (derived)");
  fig(h, "gpu.sms", 148, "BW, AO, MLE-C (facts table, B200 row): 148 SMs");
  fig(h, "gpu.l2_bytes", 126.5e6, "BW, AO, MLE-C (facts table, B200 row): 126.5 MB L2");
  fig(h, "host.dram_bytes", 2e12, "assumed: DGX B200 host memory, 2 TB (4 TB optional)");
  fig(h, "host.dram_bandwidth", 716.8e9,
      "assumed: DGX B200 host, 2x Xeon Platinum 8570 with 8 channels DDR5-5600 each = 2 x 358.4 GB/s (theoretical)");
  pcie_gen5(h, "BW (NVIDIA datasheet; GK lists Gen6)");
  pcie_costs(h, 8e-6, kOverheadServer);
  nvlink_hgx8(h, 900e9, "BW datasheet: NVLink5 1.8 TB/s bidirectional, 900 GB/s per direction", 0.85,
              "assumed: no NVLink5 P2P measurement; the default 0.85, between the NVLink4 fractions 0.83 (NCCL1264) "
              "and 0.88 (MLE-N)");
  return h;
}

Hardware gh200() {
  Hardware h;
  h.name = "gh200";
  h.description =
      "NVIDIA GH200 Grace Hopper, 96 GB HBM3 + 480 GB LPDDR5X over NVLink-C2C, one superchip per node";
  fig(h, "gpu.hbm_bytes", 96e9, "GHD datasheet: 96 GB HBM3");
  fig(h, "gpu.hbm_bandwidth", 4.0e12, "GHD datasheet: up to 4 TB/s (HBM3 part)");
  fig(h, "gpu.hbm_efficiency", 0.794,
      "RRZE gpu-stream: scale 3174 GB/s of 4000 (79 %; triad 3783, 95 %; 4.0 TB/s SKU assumed by the facts file)");
  fig(h, "gpu.flops_fp32", 67e12, "GHD datasheet: FP32 67 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 990e12, "GHD datasheet: BF16/FP16 tensor 990 TF dense (1979 sparse)");
  fig(h, "gpu.flops_fp8", 1979e12, "GHD datasheet: FP8 tensor 1979 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.838, "MLE-C: best cuBLAS BF16 GEMM 828.6 TF (83.8 %)");
  fig(h, "gpu.launch_overhead", 2.4e-6,
      "assumed: no GH200 launch measurement; RRZE's H200 figure (same GH100 die, x86 host), 2.4 us (derived)");
  fig(h, "gpu.sms", 132, "GHD, PB: 132 SMs (H100 die)");
  fig(h, "gpu.l2_bytes", 50e6, "GHD: 50 MB L2 (H100 die)");
  fig(h, "host.dram_bytes", 480e9, "GHD datasheet: 480 GB LPDDR5X (120 and 240 GB SKUs exist)");
  fig(h, "host.dram_bandwidth", 512e9,
      "GHD datasheet: LPDDR5X up to 512 GB/s (384 GB/s on the smaller SKUs; PB whitepaper figure 546 GB/s)");
  fig(h, "c2c.bandwidth", 450e9, "GHD datasheet: NVLink-C2C 900 GB/s bidirectional, 450 GB/s per direction");
  fig(h, "c2c.efficiency", 0.77,
      "NVB23: nvbandwidth H2D copy-engine 346 GB/s (SM 342) of 450 (77 %) on GH200 480 GB + 96 GB HBM3; D2H about "
      "15 % lower; both directions at once reach about half of peak (NVB41)");
  fig(h, "c2c.latency", 1e-6,
      "assumed: no C2C latency in the sources; a coherent chip-to-chip link without a PCIe root complex, taken "
      "below the 2.5-3.3 us PCIe small-copy latency (DS3)");
  fig(h, "pcie.generation", 0,
      "GHD: the Hopper GPU reaches the host over NVLink-C2C, not PCIe (Grace's 4x Gen5 x16 serve NICs and storage)");
  fig(h, "pcie.lanes", 0, "GHD: no PCIe link between the GPU and its host (NVLink-C2C instead)");
  fig(h, "pcie.bandwidth", 0, "GHD: no PCIe host link; host copies use c2c.*");
  fig(h, "nvlink.bandwidth", 0,
      "assumed: a single-superchip server, as in the measured systems (NVB23, RRZE); GH200 NVL32 or 4-superchip "
      "nodes add NVLink4 between superchips (set nvlink.*)");
  fig(h, "nvlink.gpus", 1, "assumed: a single-superchip server (NVB23, RRZE)");
  return h;
}

Hardware l40s() {
  Hardware h;
  h.name = "l40s";
  h.description = "NVIDIA L40S 48 GB GDDR6 (PCIe card, no NVLink), PCIe Gen4 host";
  fig(h, "gpu.hbm_bytes", 48e9, "L40S datasheet: 48 GB GDDR6 with ECC");
  fig(h, "gpu.hbm_bandwidth", 864e9, "L40S datasheet: 864 GB/s");
  fig(h, "gpu.hbm_efficiency", 0.85,
      "assumed: no L40S stream measurement; the default 0.85, within the measured copy fractions 0.79-0.89 (RRZE, AZ)");
  fig(h, "gpu.flops_fp32", 91.6e12, "MLE-C: L40S FP32 91.6 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 362e12, "L40S, MLE-C datasheet: BF16/FP16 tensor 362 TF dense (733 sparse)");
  fig(h, "gpu.flops_fp8", 733e12, "L40S, MLE-C datasheet: FP8 tensor 733 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.8,
      "assumed: no Ada GEMM measurement; 0.8, the middle of the best-BF16 fractions 0.78-0.87 of MLE-C");
  fig(h, "gpu.launch_overhead", 1.6e-6,
      "RRZE gpu-small-kernels (derived): 1.6 us per back-to-back launch on L40 (same AD102 die)");
  fig(h, "gpu.sms", 142, "L40S datasheet: 18176 CUDA cores / 128 = 142 SMs");
  fig(h, "gpu.l2_bytes", 96e6,
      "RRZE: 96 MB L2 measured on L40 (same AD102 die); not sourced for L40S, some listings say 48 MB");
  fig(h, "host.dram_bytes", 1e12, "assumed: 2-socket PCIe server with 16 x 64 GB DDR5, 1 TB");
  fig(h, "host.dram_bandwidth", 614.4e9,
      "assumed: 2-socket Sapphire Rapids server, 8 channels DDR5-4800 per socket = 2 x 307.2 GB/s (theoretical)");
  pcie_gen4(h, "L40S");
  pcie_costs(h, 8e-6, kOverheadServer);
  no_nvlink(h, "L40S datasheet");
  return h;
}

Hardware rtx4090() {
  Hardware h;
  h.name = "rtx4090";
  h.description = "NVIDIA GeForce RTX 4090 24 GB GDDR6X in a desktop, PCIe Gen4 host";
  fig(h, "gpu.hbm_bytes", 24e9, "4090 spec: 24 GB GDDR6X");
  fig(h, "gpu.hbm_bandwidth", 1.008e12, "4090 spec: 1.008 TB/s");
  fig(h, "gpu.hbm_efficiency", 0.85,
      "assumed: no RTX 4090 stream measurement in the sources; the default 0.85, within the measured copy fractions "
      "0.79-0.89 (RRZE, AZ)");
  fig(h, "gpu.flops_fp32", 82.6e12,
      "(derived) 4090 spec: 16384 CUDA cores x 2 flop x 2.52 GHz boost = 82.6 TF (non-tensor)");
  fig(h, "gpu.flops_fp16", 165.2e12,
      "4090, SSM: BF16/FP16 tensor with FP32 accumulation 165.2 TF dense (FP16 accumulation: 330)");
  fig(h, "gpu.flops_fp8", 330e12, "4090, SSM: FP8 tensor 330 TF dense");
  fig(h, "gpu.gemm_efficiency", 0.8,
      "assumed: no Ada GEMM measurement; 0.8, the middle of the best-BF16 fractions 0.78-0.87 of MLE-C");
  fig(h, "gpu.launch_overhead", 1.6e-6,
      "RRZE gpu-small-kernels (derived): 1.6 us per back-to-back launch on L40 (same AD102 die)");
  fig(h, "gpu.sms", 128, "4090, SSM: 128 SMs");
  fig(h, "gpu.l2_bytes", 72e6, "4090, SSM: 72 MB L2");
  fig(h, "host.dram_bytes", 64e9, "assumed: desktop with 2 x 32 GB DDR5, 64 GB");
  fig(h, "host.dram_bandwidth", 89.6e9,
      "assumed: desktop with dual-channel DDR5-5600 = 2 x 44.8 GB/s (theoretical)");
  pcie_gen4(h, "4090");
  fig(h, "pcie.pageable_factor", 0.5,
      "OX (derived): on RTX 4090, pageable H2D 12.9 GB/s (64 MiB) and D2H 12.3 (16 MiB) vs pinned 23.9/26.6, about 0.5");
  pcie_costs(h, 2.9e-6,
             "OX (derived): RTX 4090 pinned H2D 22.5 GB/s at 1 MiB, 23.9 at 16 MiB: a two-point fit gives 2.9 us per "
             "copy beyond bandwidth (D2H 2.0 us)");
  no_nvlink(h, "4090 spec");
  return h;
}

struct Entry {
  const char* name;
  Hardware (*make)();
};

const Entry kPresets[] = {
    {"a100-40gb", [] { return a100(false); }},
    {"a100-80gb", [] { return a100(true); }},
    {"h100-sxm", h100_sxm},
    {"h100-pcie", h100_pcie},
    {"h200", h200},
    {"b200", b200},
    {"gh200", gh200},
    {"l40s", l40s},
    {"rtx4090", rtx4090},
};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const Entry& e : kPresets) out.emplace_back(e.name);
  return out;
}

Hardware preset(const std::string& name) {
  for (const Entry& e : kPresets)
    if (name == e.name) return e.make();
  std::string list;
  for (const Entry& e : kPresets) list += (list.empty() ? "" : ", ") + std::string(e.name);
  throw Error("hardware: unknown preset '" + name + "'; presets: " + list);
}

}  // namespace kvscope::hw
