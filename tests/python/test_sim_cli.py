"""kvscope sim end to end: the default spec, JSON/CSV outputs, determinism, bad specs.

Needs only the binary and the committed default trace.
"""
import csv, json, os, subprocess, sys, tempfile

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
if not os.path.exists(kv):
    print(f"SKIP: no kvscope binary at {kv}")
    sys.exit(77)

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


with tempfile.TemporaryDirectory() as d:
    spec = os.path.join(root, "sim", "specs", "default.json")
    outs = []
    for i in range(2):
        o, c = os.path.join(d, f"r{i}.json"), os.path.join(d, f"r{i}.csv")
        subprocess.run([kv, "sim", "--spec", spec, "--out", o, "--csv", c], check=True, cwd=root, capture_output=True)
        outs.append((open(o, "rb").read(), open(c, "rb").read()))
    check(outs[0] == outs[1], "same spec twice gives byte-identical JSON and CSV")
    res = json.loads(outs[0][0])
    n_runs = sum(len(r["budgets"]) for r in json.load(open(spec))["runs"])
    check(len(res) == n_runs, f"one result per (run, budget): {len(res)} vs {n_runs}")
    rows = list(csv.DictReader(open(os.path.join(d, "r0.csv"))))
    check(len(rows) == n_runs, "one CSV row per result")
    for r in res:
        check(r["retained_mass"] <= r["oracle_topk_mass"] + 1e-9, f"{r['policy']} B={r['budget']}: retained <= oracle-topk")
        check(r["synthetic"] is False, "real trace marked as not synthetic")
    by = {(r["policy"], r["budget"]): r for r in res if r["page_size"] == 1 or r["kind"] == "cache"}
    for p in ("window", "h2o", "tova", "snapkv", "quest"):
        ms = [by[(p, b)]["retained_mass"] for b in (32, 64, 128)]
        check(all(a <= b + 1e-12 for a, b in zip(ms, ms[1:])), f"{p}: retained mass grows with the budget: {ms}")
    check(abs(by[("full", 512)]["output_rel_l2"]) == 0.0, "full cache: zero output error")
    # The default spec runs every registered policy.
    listed = subprocess.run([kv, "policies"], check=True, capture_output=True, text=True).stdout.split("\n")
    names = {l.split()[0] for l in listed if l.strip()}
    ran = {r["policy"] for r in res}
    check(names <= ran, f"every registered policy runs in the default spec; missing: {sorted(names - ran)}")
    check(len(names) >= 20, f"at least 20 policies registered: {len(names)}")
    print(f"{len(res)} results, {len(ran)} policies; at B=64: " +
          ", ".join(f"{p} {by[(p, 64)]['retained_mass']:.4f}" for p in sorted(ran) if (p, 64) in by) +
          f"; oracle {by[('h2o', 64)]['oracle_topk_mass']:.4f}")

    bad = {
        "unknown_key.json": ({"trace": "traces/stories260K-short-prompt.kvt", "runz": []}, "runz: unknown key"),
        "bad_policy.json": ({"runs": [{"policy": "h2x", "budgets": [8]}]}, "runs[0].policy: unknown policy 'h2x'"),
        "bad_param.json": ({"runs": [{"policy": "h2o", "params": {"recent_ratio": 2}, "budgets": [8]}]}, "runs[0].params.recent_ratio"),
        "bad_budget.json": ({"runs": [{"policy": "h2o", "budgets": [0]}]}, "runs[0].budgets[0]"),
        "too_big.json": ({"runs": [{"policy": "h2o", "budgets": [4096]}]}, "budget 4096 must be between 1 and the trace's context of 512"),
    }
    for name, (body, expect) in bad.items():
        p = os.path.join(d, name)
        json.dump(body, open(p, "w"))
        r = subprocess.run([kv, "sim", "--spec", p, "-t", "traces/stories260K-short-prompt.kvt"], cwd=root,
                           capture_output=True, text=True)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        ok = r.returncode == 1 and len(lines) == 1 and lines[0].startswith("kvscope: error:") and expect in lines[0] and not r.stdout
        check(ok, f"{name}: exit 1, one error line naming '{expect}', nothing on stdout (got rc={r.returncode}, {r.stderr.strip()!r})")

print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
sys.exit(1 if failures else 0)
