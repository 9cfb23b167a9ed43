"""bench/h2o_numpy.py (H2O replayed in vectorised NumPy) vs kvscope sim --policy h2o.

On the committed short-prompt trace at budgets 16 and 64 (recent_ratio 0.5): the NumPy
replay's retained mass (overall, per layer, per (layer, KV head)) is within 1e-6 of
kvscope's and its eviction count is identical.

Needs the binary (KVSCOPE_BIN), the committed trace and numpy + zstandard; skips (77)
otherwise.
"""
import json, os, subprocess, sys

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
trace = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
bench = os.path.join(root, "bench", "h2o_numpy.py")
for what, path in (("kvscope binary", kv), ("trace", trace), ("bench script", bench)):
    if not os.path.exists(path):
        print(f"SKIP: no {what} at {path}")
        sys.exit(77)
try:
    import numpy  # noqa: F401
    import zstandard  # noqa: F401
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


def close(a, b, tol=1e-6):
    return abs(a - b) <= tol


for budget in (16, 64):
    r = subprocess.run([kv, "sim", "-t", trace, "-p", "h2o", "-b", str(budget), "--param", "recent_ratio=0.5", "--json"],
                       cwd=root, capture_output=True, text=True)
    check(r.returncode == 0, f"B={budget}: kvscope sim exits 0 (got {r.returncode}: {r.stderr.strip()!r})")
    if r.returncode != 0:
        continue
    ref = json.loads(r.stdout)
    ref = ref[0] if isinstance(ref, list) else ref
    r = subprocess.run([sys.executable, bench, trace, "--budget", str(budget), "--recent-ratio", "0.5", "--reps", "1",
                        "--json"], cwd=root, capture_output=True, text=True)
    check(r.returncode == 0, f"B={budget}: h2o_numpy.py exits 0 (got {r.returncode}: {r.stderr.strip()[-400:]!r})")
    if r.returncode != 0:
        continue
    got = json.loads(r.stdout)
    check(close(got["retained_mass"], ref["retained_mass"]),
          f"B={budget}: retained mass {got['retained_mass']!r} vs kvscope {ref['retained_mass']!r}")
    check(got["evictions"] == ref["evictions"], f"B={budget}: evictions {got['evictions']} vs kvscope {ref['evictions']}")
    check(got["rows"] == ref["rows"], f"B={budget}: decode rows {got['rows']} vs kvscope {ref['rows']}")
    lay = list(zip(got["retained_per_layer"], ref["retained_per_layer"]))
    check(len(lay) == len(ref["retained_per_layer"]) and all(close(a, b) for a, b in lay),
          f"B={budget}: per-layer retained mass {got['retained_per_layer']} vs kvscope {ref['retained_per_layer']}")
    heads = [(a, b) for ga, rb in zip(got["retained_per_head"], ref["retained_per_head"]) for a, b in zip(ga, rb)]
    n_ref = sum(len(h) for h in ref["retained_per_head"])
    check(len(heads) == n_ref and all(close(a, b) for a, b in heads),
          f"B={budget}: per-(layer, KV head) retained mass differs from kvscope by up to "
          f"{max((abs(a - b) for a, b in heads), default=float('nan')):.3g}")
    check(got["entries"] > 0 and got["entries_per_s"] and got["entries_per_s"] > 0, f"B={budget}: entries/s reported")
    print(f"B={budget}: retained mass {got['retained_mass']:.12f} (kvscope {ref['retained_mass']:.12f}), "
          f"evictions {got['evictions']} (kvscope {ref['evictions']}); NumPy replay {got['replay_s'] * 1e3:.1f} ms, "
          f"{got['entries_per_s'] / 1e6:.1f} M entries/s")

print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
sys.exit(1 if failures else 0)
