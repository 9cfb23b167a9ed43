#!/usr/bin/env python3
"""Explorer speed, measured side by side in one run (docs/performance.md, "Explorer").

A 100-point random sweep over explorer/specs/default.json's policies on the default trace
(timed on h100-sxm as llama3-8b), into a fresh database each time, run
  1 thread, 2 threads, and under mpirun with 2 worker ranks (-np 3: rank 0 only hands out
  work and writes SQLite),
each `--repeat` times in rotation. Prints configurations per second (median), the speed-ups
against 1 thread, and SQLite's share of the wall time (kvscope's own summary line).

  python3 bench/explore_speed.py [--bin build/cli/kvscope] [--repeat 3] [--samples 100]
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=os.path.join(root, "build", "cli", "kvscope"))
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--samples", type=int, default=100)
ap.add_argument("--seed", type=int, default=1)
a = ap.parse_args()

spec = json.load(open(os.path.join(root, "explorer", "specs", "default.json")))
spec["traces"] = [os.path.join(root, "traces", "stories260K-short-prompt.kvt")]
spec["strategy"] = {"name": "random", "samples": a.samples, "seed": a.seed}
tmp = tempfile.mkdtemp(prefix="kvscope-explore-bench-")
spec_path = os.path.join(tmp, "spec.json")
json.dump(spec, open(spec_path, "w"))

have_mpi = shutil.which("mpirun") and "(mpi)" in subprocess.run([a.bin, "--version"], capture_output=True, text=True).stdout
modes = {"1 thread": ([], ["--threads", "1"]), "2 threads": ([], ["--threads", "2"])}
if have_mpi:
    modes["2 MPI ranks"] = (["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "3"], [])
else:
    print("(no mpirun or kvscope built without MPI: the MPI row is missing)")

summary = re.compile(r"(\d+) evaluated .*?; ([\d.]+) s, ([\d.]+) cfg/s, SQLite ([\d.]+)%")
rate = {m: [] for m in modes}
sqlite_share = {m: [] for m in modes}
wall = {m: [] for m in modes}
for r in range(a.repeat):
    for m, (pre, args) in modes.items():
        db = os.path.join(tmp, f"r{r}-{m.replace(' ', '_')}.db")
        t0 = time.time()
        p = subprocess.run(pre + [a.bin, "explore", "--spec", spec_path, "--db", db] + args, capture_output=True, text=True)
        wall[m].append(time.time() - t0)
        if p.returncode != 0:
            sys.exit(f"{m}: kvscope failed: {p.stderr[-1000:]}")
        s = summary.search(p.stdout)
        if not s:
            sys.exit(f"{m}: no summary line in: {p.stdout}")
        n, secs, cfg_s, share = int(s.group(1)), float(s.group(2)), float(s.group(3)), float(s.group(4))
        rate[m].append(cfg_s)
        sqlite_share[m].append(share)
        print(f"  run {r + 1}/{a.repeat} {m:12s}: {n} configurations, {secs:.2f} s, {cfg_s:.2f} cfg/s, SQLite {share:.2f}%")

base = statistics.median(rate["1 thread"])
print(f"\n{a.samples}-point random sweep, default trace; medians of {a.repeat} ({os.cpu_count()} cores)")
print(f"{'mode':14s} {'cfg/s':>8s} {'speed-up':>9s} {'SQLite %':>9s} {'process wall s':>15s}")
for m in modes:
    med = statistics.median(rate[m])
    print(f"{m:14s} {med:8.2f} {med / base:8.2f}x {statistics.median(sqlite_share[m]):9.2f} {statistics.median(wall[m]):15.2f}")
shutil.rmtree(tmp)
