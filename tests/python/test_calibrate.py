"""kvscope calibrate: the calibration file end to end (docs/calibration.md).

Runs `calibrate --quick` (GPU part too when this build has CUDA and a GPU is present) and
`calibrate --quick --no-gpu`, then checks the schema and key order, plausible values, and
that "fits" equals the hardware-model keys recomputed here from the measurements with an
independent fit (numpy.polyfit slope, numpy.average of the residuals with weights 1/t^2). Also the error path (unwritable --out).

Needs only the binary.
"""
import json, os, subprocess, sys, tempfile, time

import numpy as np

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
if not os.path.exists(kv):
    print(f"SKIP: no kvscope binary at {kv}")
    sys.exit(77)

QUICK_LIMIT_S = 20.0
TOP_KEYS = ["format", "version", "date", "command", "quick", "host", "device"]
LISTS = ["h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable", "d2d", "p2p"]
DEVICE_KEYS = ["name", "index", "sm", "driver_version", "runtime_version", "total_mem", "sms", "l2_bytes",
               "clock_khz", "mem_clock_khz", "bus_width"]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


def calibrate(out, *args):
    t0 = time.monotonic()
    r = subprocess.run([kv, "calibrate", "--quick", "--out", out, *args], cwd=root, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"calibrate {args} failed ({r.returncode}): {r.stderr}")
    return dt, r.stderr


def ols_fit(samples):
    """t = overhead + bytes / bandwidth: the slope by least squares, the overhead as the
    1/t^2-weighted mean residual; overhead clamped to >= 0 (then the slope through the origin)."""
    x = np.array([s["bytes"] for s in samples], dtype=np.float64)
    y = np.array([s["seconds"] for s in samples], dtype=np.float64)
    slope = np.polyfit(x, y, 1)[0]
    icpt = float(np.average(y - slope * x, weights=1.0 / y**2))
    if icpt < 0:
        icpt, slope = 0.0, float(np.dot(x, y) / np.dot(x, x))
    return 1.0 / slope, icpt


def expected_fits(d):
    f = {}
    f["host.dram_bandwidth"] = d["host"]["memcpy_bandwidth"]
    fits = [ols_fit(d[k]) for k in ("h2d_pinned", "d2h_pinned") if len(d[k]) >= 2]
    if fits:
        f["pcie.bandwidth"] = min(b for b, _ in fits)
        f["pcie.efficiency"] = 1.0
        f["pcie.transfer_overhead"] = max(o for _, o in fits)
    factors = []
    for pin, pag in (("h2d_pinned", "h2d_pageable"), ("d2h_pinned", "d2h_pageable")):
        common = {s["bytes"] for s in d[pin]} & {s["bytes"] for s in d[pag]}
        if common:
            b = max(common)
            bw = lambda k: next(s["bandwidth"] for s in d[k] if s["bytes"] == b)  # noqa: E731
            factors.append(bw(pag) / bw(pin))
    if factors:
        f["pcie.pageable_factor"] = sum(factors) / len(factors)
    if d["d2d"]:
        f["gpu.hbm_bandwidth"] = max(d["d2d"], key=lambda s: s["bytes"])["bandwidth"]
        f["gpu.hbm_efficiency"] = 1.0
    if d["gemm"]:
        f["gpu.flops_fp16"] = max(g["flops"] for g in d["gemm"])
        f["gpu.gemm_efficiency"] = 1.0
    if d["launch_overhead"]:
        f["gpu.launch_overhead"] = d["launch_overhead"]
    if d["device"]:
        f["gpu.hbm_bytes"] = d["device"]["total_mem"]
        f["gpu.sms"] = d["device"]["sms"]
    return f


def check_samples(name, lst, sizes=None, min_bw=1e6, max_bw=1e14):
    check(isinstance(lst, list), f"{name} is a list")
    for i, s in enumerate(lst):
        check(list(s) == ["bytes", "seconds", "bandwidth"], f"{name}[{i}] keys in order: {list(s)}")
        check(isinstance(s["bytes"], int) and s["bytes"] > 0, f"{name}[{i}].bytes is a positive integer")
        check(s["seconds"] > 0 and min_bw < s["bandwidth"] < max_bw, f"{name}[{i}] plausible: {s}")
    if sizes is not None:
        check([s["bytes"] for s in lst] == sizes, f"{name} sizes {[s['bytes'] for s in lst]}")


def check_file(path, want_gpu):
    d = json.load(open(path))
    keys = list(d)
    check(keys[:len(TOP_KEYS)] == TOP_KEYS, f"top-level key order starts {TOP_KEYS}: {keys}")
    check(keys[-1] == "fits" and keys[-2] == "notes", f"ends with notes, fits: {keys[-3:]}")
    check(d["format"] == "kvscope-calibration" and d["version"] == 1, "format and version")
    check(len(d["date"]) == 20 and d["date"].endswith("Z") and d["date"][10] == "T", f"ISO-8601 UTC date: {d['date']}")
    check("calibrate" in d["command"] and "--quick" in d["command"] and path in d["command"], f"command: {d['command']}")
    check(d["quick"] is True, "quick recorded")

    h = d["host"]
    check(list(h)[:3] == ["cpu", "threads", "memory_bytes"], f"host key order: {list(h)}")
    check(isinstance(h["cpu"], str) and h["cpu"], f"cpu: {h['cpu']!r}")
    check(isinstance(h["threads"], int) and 1 <= h["threads"] <= 4096, f"threads: {h['threads']}")
    check(h["memory_bytes"] > 64 << 20, f"memory_bytes: {h['memory_bytes']}")
    sizes = [4096, 1 << 20, 64 << 20]
    check_samples("host.memcpy", h["memcpy"], sizes, 1e8, 1e13)
    check_samples("host.memcpy_threads", h["memcpy_threads"], sizes, 1e8, 1e13)
    for s in h["memcpy"] + h["memcpy_threads"]:
        check(abs(s["bandwidth"] - s["bytes"] / s["seconds"]) <= 1e-9 * s["bandwidth"], f"memcpy bandwidth = bytes / seconds: {s}")
    large = [s["bandwidth"] for s in h["memcpy"] + h["memcpy_threads"] if s["bytes"] >= 64 << 20]
    check(h["memcpy_bandwidth"] == max(large), "memcpy_bandwidth is the best large-size bandwidth")

    if not want_gpu or d["device"] is None:
        check(d["device"] is None and isinstance(d.get("why"), str) and d["why"], f"device null with a reason: {d.get('why')!r}")
        check(keys.index("why") == keys.index("device") + 1, "why follows device")
        for k in LISTS + ["gemm"]:
            check(d[k] == [], f"{k} empty without a device")
        check(d["launch_overhead"] is None, "launch_overhead null without a device")
        check(list(d["fits"]) == ["host.dram_bandwidth"], f"CPU-only fits: {list(d['fits'])}")
    else:
        dev = d["device"]
        check(list(dev) == DEVICE_KEYS, f"device keys: {list(dev)}")
        check(dev["total_mem"] > 1 << 30 and dev["sms"] > 0, f"device figures: {dev}")
        for k in ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable"):
            check_samples(k, d[k], sizes, 1e6, 1e12)  # PCIe / C2C: < 1 TB/s
        check_samples("d2d", d["d2d"], sizes, 1e6, 1e14)
        check_samples("p2p", d["p2p"], None)
        check(len(d["gemm"]) == 6, f"quick GEMM: 3 M x 1 shape x 2 dtypes, got {len(d['gemm'])}")
        for g in d["gemm"]:
            check(list(g) == ["m", "n", "k", "dtype", "seconds", "flops"], f"gemm keys: {list(g)}")
            check(g["dtype"] in ("bf16", "fp16"), f"gemm dtype {g['dtype']}")
            check(abs(g["flops"] - 2 * g["m"] * g["n"] * g["k"] / g["seconds"]) <= 1e-9 * g["flops"], f"flops = 2mnk/s: {g}")
            check(1e9 < g["flops"] < 1e16, f"gemm flops plausible: {g}")
        check(d["launch_overhead"] is not None and 1e-8 < d["launch_overhead"] < 1e-3, f"launch overhead: {d['launch_overhead']}")
        check(not d.get("errors"), f"no failed GPU steps: {d.get('errors')}")

    want = expected_fits(d)
    check(list(d["fits"]) == list(want), f"fits keys {list(d['fits'])} == {list(want)}")
    for k, v in want.items():
        got = d["fits"].get(k)
        # The C++ fit and numpy.polyfit differ in rounding only.
        tol = 1e-6 * abs(v) + (1e-9 if k == "pcie.transfer_overhead" else 0)
        check(got is not None and abs(got - v) <= tol, f"fits[{k}] = {got}, recomputed {v}")
    return d


with tempfile.TemporaryDirectory() as tmp:
    # Default run: GPU part when the build and the machine have one.
    out = os.path.join(tmp, "cal.json")
    dt, err = calibrate(out)
    d = check_file(out, want_gpu=True)
    check(dt < QUICK_LIMIT_S, f"--quick ran in {dt:.1f} s (< {QUICK_LIMIT_S} s)")
    gpu = d["device"] is not None
    print(f"calibrate --quick: {dt:.1f} s, device: {d['device']['name'] if gpu else None} ({d.get('why', '')})")

    # CPU only.
    out2 = os.path.join(tmp, "cpu.json")
    dt2, err2 = calibrate(out2, "--no-gpu")
    d2 = check_file(out2, want_gpu=False)
    check(d2["device"] is None, "--no-gpu writes device null")
    check("--no-gpu" in d2["why"] or "without CUDA" in d2["why"], f"why names the reason: {d2['why']}")
    check(dt2 < QUICK_LIMIT_S, f"--quick --no-gpu ran in {dt2:.1f} s")

    # Errors: an unwritable path fails with kvscope's error contract and leaves nothing behind.
    bad = os.path.join(tmp, "no-such-dir", "cal.json")
    r = subprocess.run([kv, "calibrate", "--quick", "--no-gpu", "--out", bad], capture_output=True, text=True)
    check(r.returncode == 1 and "kvscope: error:" in r.stderr and bad in r.stderr, f"unwritable --out: rc {r.returncode}, {r.stderr.strip()}")
    r = subprocess.run([kv, "calibrate", "--quick"], capture_output=True, text=True)
    check(r.returncode != 0 and "--out" in r.stderr, "--out is required")

    h = d2["host"]
    print(f"{'host':<10} {h['cpu'][:40]:<40} threads {h['threads']}")
    print(f"{'bytes':>12} {'1 thread GB/s':>14} {'all GB/s':>10}")
    for a, b in zip(h["memcpy"], h["memcpy_threads"]):
        print(f"{a['bytes']:>12} {a['bandwidth'] / 1e9:>14.2f} {b['bandwidth'] / 1e9:>10.2f}")
    for k, v in d["fits"].items():
        print(f"fit {k:<24} {v:.6g}")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("OK")
