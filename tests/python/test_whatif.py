"""kvscope whatif / sim --hw / hw end to end on the default trace.

Reference: an independent NumPy re-derivation of the step time of the `full` policy on the
default trace timed as llama3-8b (docs/hardware.md's formulas, written out here from the
shape's figures and the preset's keys): every decode step is bandwidth-bound, so TPOT is
(weights + KV read + KV written) / effective HBM bandwidth, a closed form. Also: the grid's
size and order, the CSV, monotonicity in the swept key, a calibrated description, and the
error contract (an unknown key is named before any replay).

Needs only the binary and the committed default trace.
"""
import csv, json, os, subprocess, sys, tempfile

import numpy as np

from kvtest import check, failures, kv, root, run
if not os.path.exists(kv):
    print(f"SKIP: no kvscope binary at {kv}")
    sys.exit(77)
trace = os.path.join(root, "traces", "stories260K-short-prompt.kvt")


hw = json.loads(run("hw", "--show", "h100-sxm").stdout)
tmp = tempfile.mkdtemp()

# 1. Closed form: full cache, llama3-8b on h100-sxm, no host traffic.
out = os.path.join(tmp, "full.json")
run("whatif", "--trace", trace, "--policy", "full", "--hw", "h100-sxm", "--as", "llama3-8b", "--out", out, "--json")
doc = json.load(open(out))
L, H, KVH, HD, DIM, FF, V = 32, 32, 8, 128, 4096, 14336, 128256
P, steps = 5, 508
bw = hw["gpu"]["hbm_bandwidth"] * hw["gpu"]["hbm_efficiency"]
q, kvd = H * HD, KVH * HD
# Weights read per token: QKV, O, gate+up, down per layer, and the classifier; activations
# (M x K in, M x N out) at 2 bytes, M = 1.
gemms = [(q + 2 * kvd, DIM), (DIM, q), (2 * FF, DIM), (DIM, FF)]
weight_bytes = L * sum(n * k * 2 + (k + n) * 2 for n, k in gemms) + (V * DIM * 2 + V * 4)
entry = 2 * HD * 2
ctx = P + np.arange(1, steps)  # entries resident at decode step t
kv_bytes = L * KVH * entry * (ctx + 1)  # read (ctx) + written (1)
step = weight_bytes / bw + kv_bytes / bw
tpot = float(step.mean())
got = doc["points"][0]["tpot"]
check(abs(got - tpot) <= 1e-9 * tpot, f"full-cache TPOT {got} == closed form {tpot}")
check(doc["points"][0]["decode_mean"]["compute"] == 0, "decode at batch 1 is memory-bound throughout")
check(abs(doc["points"][0]["tokens_per_s"] - 1 / tpot) <= 1e-9 / tpot, "tokens/s = 1 / TPOT at batch 1")

# 2. A grid: two sweeps, last varying fastest; CSV rows; TPOT never rises with PCIe bandwidth.
csv_path = os.path.join(tmp, "grid.csv")
steps_path = os.path.join(tmp, "steps.csv")
p = run("whatif", "--trace", trace, "--policy", "quest", "--budget", "64", "--page-size", "16", "--hw", "h100-sxm",
        "--as", "llama3-8b", "--sweep", "pcie.bandwidth=16e9:128e9:4", "--sweep", "system.prefetch_depth=0,1",
        "--csv", csv_path, "--per-step", steps_path, "--json")
g = json.loads(p.stdout)
pts = g["points"]
check(len(pts) == 8, f"4 x 2 grid: {len(pts)} points")
check([x["point"]["system.prefetch_depth"] for x in pts[:2]] == [0, 1], "the last sweep varies fastest")
rows = list(csv.DictReader(open(csv_path)))
check(len(rows) == 8 and float(rows[3]["tpot_s"]) == pts[3]["tpot"], "CSV rows equal the JSON points")
srows = list(csv.DictReader(open(steps_path)))
check(len(srows) == 8 * 508, f"per-step rows: 8 points x 508 steps = {len(srows)}")
for k in range(8):
    dec = [float(r["total_s"]) for r in srows if r["point"] == str(k) and r["prefill"] == "0"]
    check(abs(sum(dec) / len(dec) - pts[k]["tpot"]) <= 1e-12 * pts[k]["tpot"], f"point {k}: mean of per-step totals = TPOT")
for d in (0, 1):
    t = [x["tpot"] for x in pts if x["point"]["system.prefetch_depth"] == d]
    check(all(b <= a + 1e-15 for a, b in zip(t, t[1:])), f"TPOT non-increasing in PCIe bandwidth (depth {d}): {t}")
for a, b in zip(pts[0::2], pts[1::2]):
    check(b["tpot"] <= a["tpot"] + 1e-15, "prefetching one step ahead never slows a step")
    check(a["decode_mean"]["stall"] > 0, "on-demand fetches stall quest's steps")
    parts = sum(a["decode_mean"][k] for k in ("compute", "hbm", "launch", "nvlink", "stall"))
    check(abs(parts - a["decode_mean"]["total"]) <= 1e-12, "breakdown adds up to the step")

# 3. sim --hw adds a timing object equal to whatif's.
p = run("sim", "--trace", trace, "--policy", "quest", "--budget", "64", "--page-size", "16", "--hw", "h100-sxm",
        "--as", "llama3-8b", "--json", "-q")
r = json.loads(p.stdout)[0]
check("timing" in r and r["timing"]["hardware"] == "h100-sxm" and r["timing"]["shape"] == "llama3-8b", "sim --hw timing object")
p0 = run("whatif", "--trace", trace, "--policy", "quest", "--budget", "64", "--page-size", "16", "--hw", "h100-sxm",
         "--as", "llama3-8b", "--json")
check(abs(json.loads(p0.stdout)["points"][0]["tpot"] - r["timing"]["tpot"]) <= 1e-15, "sim --hw and whatif agree")

# 4. A calibrated description applies measured figures.
cal = json.loads(run("hw", "--show", os.path.join(root, "hwmodels", "calibrations", "h200-measured.json")).stdout)
fits = json.load(open(os.path.join(root, "hwmodels", "calibrations", "h200-2026-11-28.json")))["fits"]
check(cal["pcie"]["bandwidth"] == fits["pcie.bandwidth"], "calibrated PCIe bandwidth")
check("measured" in cal["sources"]["pcie.bandwidth"], "source of a calibrated figure says measured")

# 5. Errors name what is wrong, before the replay.
p = run("whatif", "--trace", trace, "--policy", "full", "--hw", "h100-sxm", "--sweep", "pcie.bandwith=1e9:2e9:2", ok=False)
check(p.returncode != 0 and "pcie.bandwith" in p.stderr and "pcie.bandwidth" in p.stderr, f"unknown key named: {p.stderr.strip()}")
p = run("whatif", "--trace", trace, "--policy", "full", "--hw", "h100-sxm", "--set", "gpu.hbm_bandwidth=3.35", ok=False)
check(p.returncode != 0 and "gpu.hbm_bandwidth" in p.stderr, f"out-of-range value named: {p.stderr.strip()}")
p = run("whatif", "--trace", trace, "--policy", "full", "--hw", "h9000", ok=False)
check(p.returncode != 0 and "h100-sxm" in p.stderr, f"unknown preset lists the presets: {p.stderr.strip()}")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("whatif: all checks passed")
