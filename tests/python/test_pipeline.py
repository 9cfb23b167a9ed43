"""The whole flow on the default inputs, as scripts/demo.sh runs it (issue: close the loop).

explore explorer/specs/default.json (210 configurations, 18 policies) -> the results with
budget <= 128 exported as candidates -> validate on stories260K with the default short
prompt (every candidate enforced in the live KV cache) -> report. Checks: >= 10 candidates
over >= 6 live policies were validated; the quality ranking's Spearman rho (simulated
output error vs measured KL) is >= 0.9, the issue's target (measured 0.968, see
docs/validation.md); the database holds one validations row per candidate and one summary;
the report's validation section shows the same rho as the summary. Exits 77 without the
binary, the default trace or the model.
"""
import json, os, re, sqlite3, tempfile, time

from kvtest import check, default_trace, finish, kv, need, root, run

models = os.environ.get("KVSCOPE_MODELS", os.path.join(root, "..", "shared", "models"))
model = os.path.join(models, "stories260K", "stories260K.bin")
need(default_trace, model)

os.chdir(root)  # the default spec names its trace relative to the repository root, as demo.sh runs it
tmp = tempfile.mkdtemp()
db = os.path.join(tmp, "results.db")
cands = os.path.join(tmp, "candidates.json")
t0 = time.time()
run("explore", "--spec", os.path.join(root, "explorer", "specs", "default.json"), "--db", db, "-j", "2", "-q")
t_explore = time.time() - t0
run("explore", "--db", db, "--top", "1000", "--where", "budget <= 128", "--export", cands)
c = json.load(open(cands))
check(all(x["config"]["budget"] <= 128 for x in c), "--where budget <= 128 honoured")
t0 = time.time()
out = os.path.join(tmp, "validation.json")
p = run("validate", "--candidates", cands, "--model", model, "--prompts",
        os.path.join(root, "traces", "prompts", "stories_short.txt"), "--db", db, "--out", out, "-q")
t_validate = time.time() - t0
s = json.load(open(out))["summary"]
print(f"explore {t_explore:.1f} s, validate {t_validate:.1f} s: {s['n']} candidates over {s['policies']} policies, "
      f"rho (output_rel_l2 vs KL) {s['rho_quality']:.4f}, rho (retained_mass vs KL) {s['rho_retained_mass']:.4f}")
check(s["n"] >= 10 and s["policies"] >= 6, f"{s['n']} candidates over {s['policies']} policies")
check(s["rho_quality"] >= 0.9, f"quality rho {s['rho_quality']:.4f} below 0.9")

con = sqlite3.connect(db)
n_rows = con.execute("SELECT COUNT(*) FROM validations").fetchone()[0]
summaries = con.execute("SELECT n, rho_quality FROM validation_summary").fetchall()
con.close()
check(n_rows == s["n"], f"{n_rows} validations rows for {s['n']} candidates")
check(len(summaries) == 1 and abs(summaries[0][1] - s["rho_quality"]) < 1e-12, f"summary rows {summaries}")

rep = os.path.join(tmp, "report")
run("report", "--db", db, "--out", rep)
html = open(os.path.join(rep, "index.html")).read()
m = re.search(r'id="rho_quality">([-\d.]+)<', html)
check(m is not None and abs(float(m.group(1)) - s["rho_quality"]) < 1e-3,
      f"report rho {m.group(1) if m else None} vs validate {s['rho_quality']:.4f}")
check(os.path.exists(os.path.join(rep, "validation.png")), "report has the sim-vs-real figure")
finish()
