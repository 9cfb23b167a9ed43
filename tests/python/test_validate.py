"""kvscope validate end to end on stories260K (docs/validation.md).

A small explore sweep (>= 10 candidates over >= 6 live policies, plus the full cache and
two offline bounds that validate must skip) on the default trace, shortened to the
validated span (max_steps = --tokens), exported with --top/--export; then validate on
../shared/models/stories260K with the default short prompt. Checks: the full candidate
has KL 0 and top-1 1; every KL finite and >= 0; KL, top-1, perplexities and the Spearman
rho recomputed with numpy from the dumped logits; rows in SQLite, replaced (not
duplicated) by a second run with other threads and equal to the first but for `created`;
clear errors for a bad candidates file, an unknown policy, a missing model and --device
cuda. Needs the binary, the default trace and the model; exits 77 (skip) without them.
"""
import json, os, sqlite3, subprocess, sys, tempfile

import numpy as np

from kvtest import check, default_trace as trace, failures, kv, need, root, run

prompt = os.path.join(root, "traces", "prompts", "stories_short.txt")
models = os.environ.get("KVSCOPE_MODELS", os.path.join(root, "..", "shared", "models"))
model = os.path.join(models, "stories260K")
need(trace, os.path.join(model, "stories260K.bin"))
TOKENS = 64


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def avg_ranks(x):
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    i = 0
    while i < len(x):
        k = i
        while k + 1 < len(x) and x[order[k + 1]] == x[order[i]]:
            k += 1
        r[order[i:k + 1]] = (i + k) / 2 + 1
        i = k + 1
    return r


def spearman(a, b):
    return float(np.corrcoef(avg_ranks(a), avg_ranks(b))[0, 1])


with tempfile.TemporaryDirectory() as tmp:
    B = {"choices": [8, 32]}
    spec = {
        "traces": [trace],
        "policies": [
            {"name": "full", "budget": {"choices": [16]}},
            {"name": "window", "budget": B},
            {"name": "streamingllm", "params": {"sinks": 4}, "budget": B},
            {"name": "h2o", "budget": {"choices": [8, 32]}},
            {"name": "h2o", "budget": {"choices": [32]}, "page_size": 16},
            {"name": "tova", "budget": B},
            {"name": "quest", "params": {"page": 8}, "budget": {"choices": [16, 32]}},
            {"name": "kivi", "params": {"bits": 2}, "budget": {"choices": [16, 32]}},
            {"name": "snapkv", "budget": B},
            {"name": "belady", "budget": {"choices": [16]}},
            {"name": "oracle-topk", "budget": {"choices": [16]}},
        ],
        "hardware": [{"preset": "h100-sxm"}],
        "as": "llama3-8b",
        "objectives": [{"metric": "retained_mass", "goal": "max"}],
        "strategy": {"name": "grid"},
        "max_steps": TOKENS,
        "bounds": True,
    }
    spec_path, sdb, cands = (os.path.join(tmp, n) for n in ("spec.json", "sim.db", "cands.json"))
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    run("explore", "--spec", spec_path, "--db", sdb, "-q")
    run("explore", "--db", sdb, "--top", "100", "--export", cands)
    cand = json.load(open(cands))
    live = [c for c in cand if c["config"]["policy"] not in ("belady", "oracle-topk")]
    check(len(live) >= 10, f"{len(live)} live candidates, want >= 10")
    check(len({c["config"]["policy"] for c in live} - {"full"}) >= 6, "fewer than 6 live policies")

    vdb, out, dump = (os.path.join(tmp, n) for n in ("val.db", "out.json", "dump"))
    common = ["validate", "--candidates", cands, "--model", model, "--prompts", prompt, "--tokens", str(TOKENS), "--db", vdb, "-q"]
    run(*common, "--out", out, "--dump-logits", dump, "--threads", "1")
    res = json.load(open(out))
    rows, summary = res["candidates"], res["summary"]
    check(len(rows) == len(live), f"{len(rows)} rows for {len(live)} live candidates")
    check(sorted(s["policy"] for s in summary["skipped"]) == ["belady", "oracle-topk"], f"skipped: {summary['skipped']}")
    full = [r for r in rows if r["policy"] == "full"]
    check(len(full) == 1 and full[0]["kl"] == 0.0 and full[0]["top1"] == 1.0, f"full candidate: {full}")
    check(full and abs(full[0]["ppl"] - full[0]["ppl_full"]) == 0.0, "full candidate's ppl differs from ppl_full")
    for r in rows:
        check(np.isfinite(r["kl"]) and r["kl"] >= 0, f"{r['hash']}: kl {r['kl']}")
        check(0 <= r["top1"] <= 1, f"{r['hash']}: top1 {r['top1']}")
        check(r["steps"] == TOKENS, f"{r['hash']}: {r['steps']} steps")
    worst = max(rows, key=lambda r: r["kl"])
    check(worst["kl"] > 1e-3, f"no candidate changes the output (max KL {worst['kl']})")
    by_policy = {r["policy"]: r for r in rows}
    check(by_policy["quest"]["bytes_fetched"] > 0, "quest fetched nothing")
    check(by_policy["window"]["bytes_fetched"] == 0, "window fetched bytes")

    # numpy: KL, top-1 and perplexities of every candidate from the dumped logits.
    toks = json.load(open(os.path.join(dump, "tokens_p0.json")))
    V = toks["vocab"]
    cont = np.array(toks["continuation"])
    lp = log_softmax(np.fromfile(os.path.join(dump, "full_p0.f32"), dtype=np.float32).reshape(-1, V))
    check(lp.shape[0] == TOKENS and len(cont) == TOKENS + 1, "dump shapes")
    check(np.array_equal(lp.argmax(axis=1), cont[1:]), "the continuation is not the full cache's greedy choice")
    for r in rows:
        lq = log_softmax(np.fromfile(os.path.join(dump, r["hash"] + "_p0.f32"), dtype=np.float32).reshape(-1, V))
        kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))
        top1 = float(np.mean(lp.argmax(axis=1) == lq.argmax(axis=1)))
        ppl = float(np.exp(-np.mean(lq[np.arange(TOKENS), cont[1:]])))
        ppl_full = float(np.exp(-np.mean(lp[np.arange(TOKENS), cont[1:]])))
        check(abs(kl - r["kl"]) <= 1e-9 + 1e-7 * kl, f"{r['policy']}: kl {r['kl']} vs numpy {kl}")
        check(top1 == r["top1"], f"{r['policy']}: top1 {r['top1']} vs numpy {top1}")
        check(abs(ppl - r["ppl"]) <= 1e-9 * ppl, f"{r['policy']}: ppl {r['ppl']} vs numpy {ppl}")
        check(abs(ppl_full - r["ppl_full"]) <= 1e-9 * ppl_full, f"{r['policy']}: ppl_full {r['ppl_full']} vs numpy {ppl_full}")
    kls = [r["kl"] for r in rows]
    rho_l2 = spearman([r["sim_output_rel_l2"] for r in rows], kls)
    rho_ret = spearman([-r["sim_retained_mass"] for r in rows], kls)
    check(abs(rho_l2 - summary["rho_output_rel_l2"]) < 1e-12, f"rho l2 {summary['rho_output_rel_l2']} vs numpy {rho_l2}")
    check(abs(rho_ret - summary["rho_retained_mass"]) < 1e-12, f"rho ret {summary['rho_retained_mass']} vs numpy {rho_ret}")
    check(summary["quality_predictor"] == "output_rel_l2" and summary["rho_quality"] == summary["rho_output_rel_l2"], "headline")
    print(f"rho(output_rel_l2, kl) = {rho_l2:.4f}, rho(-retained_mass, kl) = {rho_ret:.4f} over {len(rows)} candidates")

    # SQLite: one row per candidate, replaced by a second run (other thread count: same numbers).
    def table(db):
        con = sqlite3.connect(db)
        v = con.execute("SELECT hash, model, prompts, device, policy, budget, page_size, kl, top1, ppl, ppl_full, "
                        "bytes_offloaded, bytes_fetched, sim_retained_mass, sim_output_rel_l2, sim_tpot FROM validations "
                        "ORDER BY hash").fetchall()
        s = con.execute("SELECT model, prompts, device, n, policies, rho_quality, rho_time, quality_predictor FROM "
                        "validation_summary").fetchall()
        created = con.execute("SELECT COUNT(*) FROM validations WHERE created IS NULL OR json IS NULL").fetchone()[0]
        con.close()
        return v, s, created
    v1, s1, nulls = table(vdb)
    check(len(v1) == len(rows) and nulls == 0, f"{len(v1)} validation rows, {nulls} without created/json")
    check(len(s1) == 1 and s1[0][3] == len(rows) and s1[0][4] == len({r['policy'] for r in rows}), f"summary {s1}")
    check(all(r[1] == "stories260K.bin" and r[2] == "stories_short.txt" and r[3] == "cpu" for r in v1), "model/prompts/device keys")
    row_kl = {r[0]: r[7] for r in v1}
    check(all(row_kl[r["hash"]] == r["kl"] for r in rows), "SQLite kl differs from --out")
    run(*common, "--threads", "2")
    v2, s2, _ = table(vdb)
    check(v2 == v1, "second run (2 threads) changed or duplicated the validations rows")
    # rho_time ranks CPU wall times: the one field besides `created` that may differ.
    check([r[:6] + r[7:] for r in s2] == [r[:6] + r[7:] for r in s1], "second run changed or duplicated the summary")

    # Errors name what is wrong.
    bad = os.path.join(tmp, "bad.json")
    with open(bad, "w") as f:
        f.write("[{\"hash\": \"x\"")
    p = run("validate", "--candidates", bad, "--model", model, "--prompts", prompt, "--db", vdb, ok=False)
    check(p.returncode == 1 and "bad.json" in p.stderr and "JSON" in p.stderr, f"bad JSON: {p.stderr}")
    with open(bad, "w") as f:
        json.dump([{"hash": "x", "config": {"policy": "nope", "budget": 8}, "metrics": {}}], f)
    p = run("validate", "--candidates", bad, "--model", model, "--prompts", prompt, "--db", vdb, ok=False)
    check(p.returncode == 1 and "[0].config.policy" in p.stderr and "nope" in p.stderr, f"unknown policy: {p.stderr}")
    with open(bad, "w") as f:
        json.dump([{"hash": "x", "config": {"policy": "h2o", "budget": 9999}, "metrics": {}}], f)
    p = run("validate", "--candidates", bad, "--model", model, "--prompts", prompt, "--db", vdb, ok=False)
    check(p.returncode == 1 and "[0].config" in p.stderr and "9999" in p.stderr, f"budget over the context: {p.stderr}")
    p = run("validate", "--candidates", cands, "--model", os.path.join(tmp, "no-model.bin"), "--prompts", prompt, "--db", vdb, ok=False)
    check(p.returncode == 1 and "no-model.bin" in p.stderr, f"missing model: {p.stderr}")
    p = run(*common, "--device", "cuda", ok=False)
    check(p.returncode == 1 and "CPU-only" in p.stderr and p.stderr.count("\n") == 1, f"--device cuda: {p.stderr}")

if failures:
    print(f"{len(failures)} failures")
    sys.exit(1)
print("ok")
