"""kvscope report end to end (docs/report.md).

Builds a small results database with `kvscope explore` on the default trace (4 policies,
2 hardware points that differ only in pcie.bandwidth, short replays), writes the report
(a) before any validation table exists: the validation section says so instead of a plot;
(b) after inserting FIXTURE validation rows (made-up but plausible numbers, not
measurements): the Spearman ρ on the page equals the textbook formula computed here;
then checks the numbers behind the figures against independent sources (the front against
`kvscope explore --front`, per-layer sink mass / entropy against `kvscope trace-info --json`,
the what-if points against the stored metrics), that a second run gives identical bytes,
that a missing database is refused naming the file, and finally loads the page in headless
Chromium: no console messages, every <img> decoded (naturalWidth > 0), a screenshot that is
not blank; negative controls show that a broken image and a console error are detected.
Needs the binary and the committed default trace (exit 77 otherwise); the Chromium part
needs `chromium` (scripts/setup.sh installs it) and is skipped with exit 77 without it.
"""
import glob, json, os, re, shutil, sqlite3, subprocess, sys, tempfile, time

from kvtest import check, failures, kv, root, run
trace = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
if not os.path.exists(kv) or not os.path.exists(trace):
    print(f"SKIP: no kvscope binary at {kv} or no default trace")
    sys.exit(77)
t_start = time.time()


B = {"choices": [16, 32, 64, 128]}
spec = {
    "traces": [trace],
    "policies": [
        {"name": "h2o", "budget": B},
        {"name": "streamingllm", "params": {"sinks": {"choices": [4]}}, "budget": B},
        {"name": "window", "budget": B},
        {"name": "quest", "budget": {"choices": [32, 64]}, "page_size": 16},  # fetches from host: PCIe matters
    ],
    "hardware": [{"preset": "h100-sxm"}, {"preset": "h100-sxm", "set": {"pcie.bandwidth": 8e9}}],
    "as": "llama3-8b",
    "objectives": [{"metric": "retained_mass", "goal": "max"}, {"metric": "tpot", "goal": "min"}],
    "strategy": {"name": "grid"},
    "max_steps": 48,
    "bounds": True,
}
tmp = tempfile.mkdtemp(prefix="kvscope-report-")
spec_path = os.path.join(tmp, "spec.json")
db = os.path.join(tmp, "results.db")
with open(spec_path, "w") as f:
    json.dump(spec, f)
run("explore", "--spec", spec_path, "--db", db, "--threads", "2", "-q")
with sqlite3.connect(db) as con:
    n_ok = con.execute("SELECT count(*) FROM metrics WHERE error IS NULL").fetchone()[0]
check(n_ok == 2 * (3 * 4 + 2), f"explore stored {n_ok} error-free results, expected 28")


def report(out, *extra, ok=True):
    return run("report", "--db", db, "--out", out, *extra, ok=ok)


# (a) no validation tables yet.
out_a = os.path.join(tmp, "report-a")
report(out_a)
page_a = open(os.path.join(out_a, "index.html"), encoding="utf-8").read()
check("no validation results yet (run kvscope validate)" in page_a, "(a) validation section without tables")
check(not os.path.exists(os.path.join(out_a, "validation.png")), "(a) no validation figure without results")

# (b) FIXTURE validation rows: plausible invented values, not measurements.
fixture = [  # policy, budget, kl, top1, step_ms, sim_retained_mass, sim_tpot (s)
    ("h2o", 32, 0.041, 0.93, 6.9, 0.962, 0.00518),
    ("h2o", 64, 0.012, 0.97, 7.3, 0.991, 0.00519),
    ("window", 32, 0.090, 0.88, 6.6, 0.931, 0.00515),
    ("streamingllm", 32, 0.060, 0.91, 6.8, 0.947, 0.00516),
    ("quest", 64, 0.020, 0.95, 8.4, 0.985, 0.00561),
    ("window", 128, 0.004, 0.99, 7.9, 0.998, 0.00530),
]
with sqlite3.connect(db) as con:
    con.execute("CREATE TABLE validations (hash TEXT, model TEXT, prompts TEXT, device TEXT, policy TEXT, budget INTEGER, "
                "page_size INTEGER, kl REAL, top1 REAL, ppl REAL, ppl_full REAL, step_ms REAL, bytes_offloaded INTEGER, "
                "bytes_fetched INTEGER, sim_retained_mass REAL, sim_output_rel_l2 REAL, sim_tpot REAL, created TEXT, "
                "json TEXT, PRIMARY KEY (hash, model, prompts, device))")
    con.execute("CREATE TABLE validation_summary (id INTEGER PRIMARY KEY, created TEXT, model TEXT, prompts TEXT, "
                "device TEXT, n INTEGER, policies INTEGER, rho_quality REAL, rho_time REAL, quality_predictor TEXT, json TEXT)")
    for i, (pol, b, kl, top1, ms, mass, tpot) in enumerate(fixture):
        con.execute("INSERT INTO validations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (f"fixture{i:02d}", "stories260K", "fixture-prompts", "cpu", pol, b, 1, kl, top1, 9.0 + kl, 9.0, ms,
                     0, 0, mass, 1.0 - mass, tpot, "2026-01-01T00:00:00Z", '{"fixture": true}'))
    con.execute("INSERT INTO validation_summary VALUES (1, '2026-01-01T00:00:00Z', 'stories260K', 'fixture-prompts', "
                "'cpu', 6, 4, 0.9, 0.8, 'sim_retained_mass', '{\"fixture\": true}')")


def textbook_spearman(x, y):  # no ties in the fixture: 1 - 6 sum d^2 / (n (n^2 - 1))
    rank = lambda v: {val: r + 1 for r, val in enumerate(sorted(v))}
    rx, ry = rank(x), rank(y)
    n = len(x)
    d2 = sum((rx[a] - ry[b]) ** 2 for a, b in zip(x, y))
    return 1 - 6 * d2 / (n * (n * n - 1))


out_b = os.path.join(tmp, "report-b")
t0 = time.time()
report(out_b)
t_report = time.time() - t0
page_b = open(os.path.join(out_b, "index.html"), encoding="utf-8").read()
data = json.load(open(os.path.join(out_b, "data.json")))
check("no validation results yet" not in page_b, "(b) validation rows are plotted")
check(os.path.exists(os.path.join(out_b, "validation.png")), "(b) validation figure written")
rq = textbook_spearman([-r[5] for r in fixture], [r[2] for r in fixture])  # sign-aligned: more mass, less KL
rt = textbook_spearman([r[6] for r in fixture], [r[4] for r in fixture])
m = re.search(r'id="rho_quality">([^<]+)<', page_b), re.search(r'id="rho_time">([^<]+)<', page_b)
check(m[0] and abs(float(m[0].group(1)) - rq) < 1e-3, f"rho quality on the page {m[0] and m[0].group(1)} vs {rq}")
check(m[1] and abs(float(m[1].group(1)) - rt) < 1e-3, f"rho time on the page {m[1] and m[1].group(1)} vs {rt}")
check(abs(data["validation"]["rho_quality"] - rq) < 1e-12 and abs(data["validation"]["rho_time"] - rt) < 1e-12,
      "rho in data.json")
check(rq > 0.9 and rt > 0.5, f"fixture correlations have the expected signs ({rq}, {rt})")

# Every figure is a file next to the page, and every <img> names one of them.
pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out_b, "*.png")))
srcs = sorted(re.findall(r'<img src="([^"]+)"', page_b))
expect = {"pareto.png", "retained_vs_budget.png", "heads_0.png", "timing.png", "whatif_db.png", "validation.png"}
check(expect <= set(pngs), f"figures {pngs}")
check(srcs == pngs, f"img tags {srcs} vs files {pngs}")
check(not re.search(r'(src|href)="(https?:)?//', page_b) and "<script" not in page_b, "no external resources, no script")
check(page_b.count("<table") >= 8, f"{page_b.count('<table')} tables on the page")

# The front: the same configurations as `kvscope explore --front`.
front_cli = set(re.findall(r"^([0-9a-f]{16}) ", run("explore", "--db", db, "--front").stdout, re.M))
check(front_cli and set(data["pareto"]["front"]) == front_cli,
      f"front {sorted(data['pareto']['front'])} vs explore --front {sorted(front_cli)}")

# Heatmaps: per-layer means of the per-head values equal trace-info's per-layer figures.
ti = json.loads(run("trace-info", "--json", trace).stdout)
heads = data["heads"][trace]
for layer, row in enumerate(ti["per_layer"]):
    s = sum(heads["sink_mass"][layer]) / len(heads["sink_mass"][layer])
    e = sum(heads["entropy"][layer]) / len(heads["entropy"][layer])
    check(abs(s - row["sink_mass"]) < 1e-4, f"layer {layer} sink mass {s} vs trace-info {row['sink_mass']}")
    check(abs(e - row["mean_entropy_nats"]) < 1e-4, f"layer {layer} entropy {e} vs trace-info {row['mean_entropy_nats']}")
check(len(ti["per_layer"]) == 5 and len(heads["sink_mass"][0]) == 8, "5 layers x 8 heads")

# Oracle bound: no policy retains more than the oracle top-k at the same budget.
ret = data["retained"][trace]
for pol, vals in ret["best"].items():
    for b, v, o in zip(ret["budgets"], vals, ret["oracle"]):
        check(v is None or o is None or v <= o + 1e-9, f"{pol} B={b}: {v} above the oracle bound {o}")

# Timing: the stacked parts add up to TPOT.
for t in data["timing"]:
    parts = sum(t["decode_mean"][p] for p in ("compute", "hbm", "launch", "nvlink", "stall"))
    check(abs(parts - t["tpot"]) <= 1e-9 * max(1.0, t["tpot"]), f"timing parts {parts} vs tpot {t['tpot']}")

# What-if from the database: x = pcie.bandwidth (the preset's own 63e9 resolved via hw --show, and 8e9),
# 2 points per configuration; quest at B=32 fetches pages, so it is slower on the narrower link.
w = data.get("whatif_db", {})
check(w.get("key") == "pcie.bandwidth", f"what-if key {w.get('key')}")
preset_bw = json.loads(run("hw", "--show", "h100-sxm").stdout)["pcie"]["bandwidth"]
for g in w.get("groups", []):
    check([p[0] for p in g["points"]] == sorted([8e9, preset_bw]), f"{g['label']}: what-if x {g['points']}")
quest = [g for g in w.get("groups", []) if g["label"].startswith("quest")]
# (at B=64 the 48-step replay never exceeds the budget, so nothing moves and both points are equal)
check(len(quest) == 2 and all(g["points"][0][1] >= g["points"][1][1] for g in quest)
      and quest[0]["label"].endswith("B=32 P=16") and quest[0]["points"][0][1] > quest[0]["points"][1][1],
      f"quest B=32 slower at 8 GB/s: {[(g['label'], g['points']) for g in quest]}")
with sqlite3.connect(db) as con:
    for g in w.get("groups", []):
        for (x, tpot_ms), h in zip(g["points"], g["hashes"]):
            stored = con.execute("SELECT tpot FROM metrics WHERE hash = ?", (h,)).fetchone()[0]
            check(abs(stored * 1e3 - tpot_ms) < 1e-9, f"what-if point {h}: {tpot_ms} vs stored {stored}")

# A what-if file from `kvscope whatif --out` adds its curve.
wf = os.path.join(tmp, "whatif.json")
run("whatif", "-t", trace, "-p", "quest", "-b", "64", "--page-size", "16", "--hw", "h100-sxm", "--as", "llama3-8b",
    "--sweep", "pcie.bandwidth=8e9:64e9:4", "--out", wf)
out_w = os.path.join(tmp, "report-w")
report(out_w, "--whatif", wf)
dw = json.load(open(os.path.join(out_w, "data.json")))
check(os.path.exists(os.path.join(out_w, "whatif_file_0.png")) and len(dw["whatif_files"][0]["points"]) == 4,
      "what-if file plotted with its 4 points")

# Deterministic: a second run writes the same bytes (PNG included).
out_c = os.path.join(tmp, "report-c")
report(out_c)
for name in sorted(os.listdir(out_b)):
    same = open(os.path.join(out_b, name), "rb").read() == open(os.path.join(out_c, name), "rb").read()
    check(same, f"{name} differs between two runs")
check(sorted(os.listdir(out_b)) == sorted(os.listdir(out_c)), "same files in both runs")

# Errors name the file.
p = run("report", "--db", os.path.join(tmp, "nope.db"), "--out", os.path.join(tmp, "x"), ok=False)
check(p.returncode != 0 and "nope.db" in p.stderr and not os.path.exists(os.path.join(tmp, "x")),
      f"missing db: rc {p.returncode}, {p.stderr.strip()}")
bad = os.path.join(tmp, "bad.db")
open(bad, "w").write("not a database")
p = run("report", "--db", bad, "--out", os.path.join(tmp, "y"), ok=False)
check(p.returncode != 0 and "bad.db" in p.stderr, f"bad db: rc {p.returncode}, {p.stderr.strip()}")
print(f"report: {t_report:.1f} s; non-browser part {time.time() - t_start:.1f} s")

# ---- headless Chromium ------------------------------------------------------------------
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    print("SKIP (browser part): no chromium in PATH (scripts/setup.sh installs the Debian package)")
    if failures:
        raise SystemExit(f"{len(failures)} failures (files kept in {tmp})")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(77)

CHECKER = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, bad = [];
  for (var i = 0; i < imgs.length; i++)
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad.push(imgs[i].getAttribute("src"));
  document.title = "KVCHECK imgs=" + imgs.length + " bad=" + bad.length;
});
</script>"""


def browse(page_html, name, screenshot=None):
    """Loads page_html (written into out_b, next to the figures) in headless Chromium; returns
    (title, console lines)."""
    path = os.path.join(out_b, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page_html.replace("</body>", CHECKER + "</body>"))
    profile = tempfile.mkdtemp(dir=tmp)
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
            "--window-size=1280,2400"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    p = subprocess.run(args + ["file://" + path], capture_output=True, text=True, timeout=90)
    os.remove(path)
    console = [l for l in p.stderr.splitlines() if ":CONSOLE" in l]
    t = re.search(r"<title>([^<]*)</title>", p.stdout)
    return (t.group(1) if t else None), console, p


n_img = len(srcs)
title, console, p = browse(page_b, "check.html")
check(title == f"KVCHECK imgs={n_img} bad=0", f"browser: {title!r} (expected {n_img} images, none broken)")
check(not console, f"browser console: {console}")
# Negative controls: the checks can fail.
title, _, _ = browse(page_b.replace('src="timing.png"', 'src="missing.png"'), "check_bad.html")
check(title == f"KVCHECK imgs={n_img} bad=1", f"broken-image control: {title!r}")
_, console, _ = browse(page_b.replace("</body>", '<script>console.error("control")</script></body>'), "check_err.html")
check(any("control" in l for l in console), f"console control not seen: {console}")
shot = os.path.join(tmp, "shot.png")
_, _, p = browse(page_b, "check_shot.html", screenshot=shot)
if os.path.exists(shot):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    px = mpimg.imread(shot)
    check(px.ndim == 3 and px.shape[0] >= 600 and px.shape[1] >= 600, f"screenshot shape {px.shape}")
    gray = px[..., :3].mean(axis=2)
    check(float(gray.std()) > 0.05 and float((gray < 0.5).mean()) > 0.005, f"screenshot looks blank (std {gray.std():.4f})")
else:
    check(False, f"no screenshot written: {p.stderr[-500:]}")

print(f"total {time.time() - t_start:.1f} s")
if failures:
    raise SystemExit(f"{len(failures)} failures (files kept in {tmp})")
shutil.rmtree(tmp, ignore_errors=True)
print("ok")
