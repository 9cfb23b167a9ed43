#!/usr/bin/env python3
"""kvscope report: a static HTML page from an explore database (docs/report.md).

    python scripts/report.py --db results.db --out report/ [--whatif whatif.json ...]

Usually run through `kvscope report` (cli/cmd_report.cpp), which passes its own path as
--kvscope so that hardware presets can be resolved (`kvscope hw --show`). Writes
OUT/index.html and one PNG per figure beside it; no server, network, JS or external CSS.
Deterministic: the same database and arguments give the same bytes (Agg backend, PNG
metadata without the software version, sorted queries, no wall-clock time).
"""
import argparse
import html
import json
import math
import os
import sqlite3
import subprocess
import sys

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Figure style: fixed so that the page does not depend on a user's matplotlibrc.
matplotlib.rcdefaults()
plt.rcParams.update({
    "svg.hashsalt": "kvscope-report",
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
})
PNG_META = {"Software": None}  # no matplotlib version in the file: identical bytes across runs

TIMING_PARTS = ["compute", "hbm", "launch", "nvlink", "stall"]  # add up to the step total (docs/hardware.md)
TIMING_COLORS = {"compute": "#4c72b0", "hbm": "#55a868", "launch": "#c44e52", "nvlink": "#8172b2", "stall": "#ccb974"}
MAX_WHATIF_GROUPS = 12
MAX_TIMING_BARS = 16
LINESTYLES = ["-", "--", ":", "-."]


# The numbers behind every figure, written as OUT/data.json (tests and notebooks read it).
DATA = {}


class ReportError(Exception):
    pass


# ------------------------------------------------------------------------------------
# small helpers


def fmt(v, digits=4):
    """A deterministic short text for a table cell."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def table(headers, rows, cls=""):
    out = [f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    out += [f"<th>{html.escape(str(h))}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def note(text):
    return f'<p class="note">{html.escape(text)}</p>'


def save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, format="png", metadata=PNG_META)
    plt.close(fig)
    return f'<img src="{html.escape(name)}" alt="{html.escape(name)}">'


def spearman(x, y):
    """Spearman's rank correlation (ties get their mean rank); nan below 2 points or
    when either side is constant."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 2 or x.size != y.size:
        return float("nan")

    def ranks(a):
        order = np.argsort(a, kind="mergesort")
        r = np.empty(a.size, dtype=float)
        sa = a[order]
        i = 0
        while i < a.size:
            j = i
            while j + 1 < a.size and sa[j + 1] == sa[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2.0 + 1.0
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float("nan") if den == 0 else float((rx * ry).sum()) / den


def policy_colors(names):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^vD<>pPX*h"
    return {n: (cycle[i % len(cycle)], markers[(i // len(cycle)) % len(markers)]) for i, n in enumerate(sorted(names))}


def param_text(params):
    return ",".join(f"{k}={fmt(v)}" for k, v in sorted(params.items())) if params else ""


def label_of(c):
    p = param_text(c["params"])
    return f'{c["policy"]}{"(" + p + ")" if p else ""} B={c["budget"]}' + (f' P={c["page_size"]}' if c["page_size"] != 1 else "")


def hw_text(h):
    if not h:
        return "–"
    s = h.get("preset", "?")
    sets = h.get("set") or {}
    if sets:
        s += " " + ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(sets.items()))
    return s


# ------------------------------------------------------------------------------------
# reading the database


def open_db(path):
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such database")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.Error as e:
        raise ReportError(f"{path}: not a readable SQLite database ({e})") from None
    return con


def has_table(con, name):
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def load_results(con, db_path):
    for t in ("runs", "configs", "metrics"):
        if not has_table(con, t):
            raise ReportError(f"{db_path}: table '{t}' missing (not a kvscope explore database?)")
    run = con.execute("SELECT id, started, finished, spec, threads, evaluated, skipped, failed, status "
                      "FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    spec = None
    if run is not None:
        try:
            spec = json.loads(run[3])
        except (TypeError, ValueError) as e:
            raise ReportError(f"{db_path}: runs.spec of run {run[0]} is not JSON ({e})") from None
    results = []
    q = ("SELECT c.hash, c.json, c.trace, c.policy, c.budget, c.page_size, c.partial, m.error, m.json "
         "FROM configs c JOIN metrics m ON m.hash = c.hash ORDER BY c.hash")
    for h, cj, trace, pol, budget, page, partial, err, mj in con.execute(q):
        try:
            cfg = json.loads(cj)
            met = json.loads(mj) if mj else {}
        except ValueError as e:
            raise ReportError(f"{db_path}: configuration {h}: stored JSON does not parse ({e})") from None
        results.append({
            "hash": h, "config": cfg, "trace": trace, "policy": pol, "budget": budget, "page_size": page,
            "partial": bool(partial), "error": err, "metrics": met, "params": cfg.get("params", {}),
            "hardware": cfg.get("hardware"),
        })
    return run, spec, results


def metric(r, name):
    v = r["metrics"].get(name)
    return float(v) if isinstance(v, (int, float)) else None


# ------------------------------------------------------------------------------------
# sections


def section_summary(db_path, run, spec, results):
    rows = []
    if run:
        rows = [["last run", run[0]], ["started", run[1]], ["finished", run[2]], ["status", run[8]],
                ["threads", run[4]], ["evaluated", run[5]], ["skipped (already stored)", run[6]], ["failed", run[7]]]
    n_err = sum(1 for r in results if r["error"])
    n_part = sum(1 for r in results if r["partial"])
    rows += [["stored configurations", len(results)], ["failed configurations", n_err],
             ["short rungs (partial)", n_part],
             ["policies", len({r["policy"] for r in results})],
             ["traces", len({r["trace"] for r in results})]]
    body = table(["", ""], rows)
    if spec is not None:
        body += "<details><summary>spec of the last run</summary><pre>" + html.escape(
            json.dumps(spec, indent=1, sort_keys=True)) + "</pre></details>"
    return "Database", f"<p><code>{html.escape(db_path)}</code></p>" + body


def usable(results):
    """Full-length, error-free configurations (the ones the front considers)."""
    return [r for r in results if not r["partial"] and not r["error"]]


def feasible(r, constraints):
    for c in constraints:
        v = metric(r, c.get("metric", ""))
        if v is None:
            return False
        if "le" in c and not v <= c["le"]:
            return False
        if "ge" in c and not v >= c["ge"]:
            return False
    return True


def pareto(points, goals):
    """Indices of the non-dominated points; goals: +1 maximise, -1 minimise per column."""
    a = np.asarray(points, dtype=float) * np.asarray(goals, dtype=float)  # all maximised
    keep = []
    for i in range(a.shape[0]):
        ge = np.all(a >= a[i], axis=1)
        gt = np.any(a > a[i], axis=1)
        if not np.any(ge & gt):
            keep.append(i)
    return keep


def section_pareto(out, spec, results):
    title = "Pareto front"
    if spec is None:
        return title, note("no run recorded in the database (runs table empty): no objectives to plot")
    objs = spec.get("objectives") or []
    if not objs:
        return title, note("the last run's spec has no objectives")
    names = [o["metric"] for o in objs]
    goals = [1 if o.get("goal") == "max" else -1 for o in objs]
    cons = spec.get("constraints") or []
    cand = [r for r in usable(results) if all(metric(r, m) is not None for m in names)]
    feas = [r for r in cand if feasible(r, cons)]
    if not feas:
        return title, note(f"no full-length, error-free, feasible configuration has all of {', '.join(names)}")
    pts = [[metric(r, m) for m in names] for r in feas]
    front = sorted(pareto(pts, goals), key=lambda i: (pts[i][0], feas[i]["hash"]))
    xm = names[0]
    ym = names[1] if len(names) > 1 else "budget"

    def yval(r):
        return metric(r, ym) if ym != "budget" else float(r["budget"])

    colors = policy_colors({r["policy"] for r in feas})
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for pol in sorted(colors):
        rs = [r for r in feas if r["policy"] == pol]
        col, mk = colors[pol]
        ax.scatter([metric(r, xm) for r in rs], [yval(r) for r in rs], s=18, color=col, marker=mk, alpha=0.55, label=pol)
    fx = [metric(feas[i], xm) for i in front]
    fy = [yval(feas[i]) for i in front]
    ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black", linewidths=1.2, label="Pareto front", zorder=3)
    if len(names) == 2:
        ax.plot(fx, fy, color="black", linewidth=0.8, drawstyle="steps-post" if goals[0] == goals[1] else "default")
    ax.set_xlabel(f"{xm} ({objs[0].get('goal')})")
    ax.set_ylabel(f"{ym} ({objs[1].get('goal')})" if len(names) > 1 else "budget")
    if ym == "tpot" or ym == "ttft":
        ax.set_ylabel(f"{ym} [s] ({objs[1].get('goal')})")
    ax.set_title(f"{len(feas)} feasible configurations, {len(front)} on the front")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    img = save(fig, out, "pareto.png")
    obj_text = ", ".join(f"{m} ({o.get('goal')})" for m, o in zip(names, objs))
    text = note(f"Objectives of the last run's spec: {obj_text}"
                + (f"; constraints: {json.dumps(cons, sort_keys=True)}" if cons else "")
                + ". Points: full-length, error-free configurations that meet the constraints"
                + (f"; the front is computed on all {len(names)} objectives and drawn on the first two." if len(names) > 2 else "."))
    DATA["pareto"] = {"objectives": objs, "feasible": len(feas), "front": [feas[i]["hash"] for i in front]}
    rows = [[feas[i]["hash"], feas[i]["policy"], param_text(feas[i]["params"]), feas[i]["budget"], feas[i]["page_size"],
             hw_text(feas[i]["hardware"])] + pts[i] for i in front]
    tab = table(["hash", "policy", "params", "budget", "page size", "hardware"] + names, rows)
    dropped = len(cand) - len(feas)
    extra = note(f"{dropped} configurations fail the constraints.") if dropped else ""
    return title, text + img + extra + "<h3>Front</h3>" + tab


def section_retained(out, results):
    title = "Retained attention mass vs budget"
    rs = [r for r in usable(results) if metric(r, "retained_mass") is not None]
    if not rs:
        return title, note("no full-length, error-free results with retained_mass")
    traces = sorted({r["trace"] for r in rs})
    policies = sorted({r["policy"] for r in rs})
    colors = policy_colors(policies)
    fig, axes = plt.subplots(1, len(traces), figsize=(7.5 * len(traces), 4.8), squeeze=False)
    body = ""
    for ti, tr in enumerate(traces):
        ax = axes[0][ti]
        sub = [r for r in rs if r["trace"] == tr]
        budgets = sorted({r["budget"] for r in sub})
        best = {}  # (policy, budget) -> best retained mass over params / page sizes / hardware
        for r in sub:
            k = (r["policy"], r["budget"])
            best[k] = max(best.get(k, -1.0), metric(r, "retained_mass"))
        oracle = {}
        for r in sub:
            o = metric(r, "oracle_topk_mass")
            if o is not None and r["page_size"] == 1:
                oracle[r["budget"]] = max(oracle.get(r["budget"], -1.0), o)
        for pol in policies:
            bs = [b for b in budgets if (pol, b) in best]
            if not bs:
                continue
            col, mk = colors[pol]
            ax.plot(bs, [best[(pol, b)] for b in bs], marker=mk, color=col, label=pol, markersize=4, linewidth=1)
        if oracle:
            ob = sorted(oracle)
            ax.plot(ob, [oracle[b] for b in ob], color="black", linestyle="--", linewidth=1.5, label="oracle top-k bound")
        if len(budgets) > 1 and budgets[0] > 0 and budgets[-1] / budgets[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (entries per layer and KV head)")
        ax.set_ylabel("retained attention mass")
        ax.set_title(os.path.basename(tr), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        DATA.setdefault("retained", {})[tr] = {
            "budgets": budgets, "oracle": [oracle.get(b) for b in budgets],
            "best": {pol: [best.get((pol, b)) for b in budgets] for pol in policies}}
        header = ["policy"] + [f"B={b}" for b in budgets]
        rows = [[pol] + [best.get((pol, b)) for b in budgets] for pol in policies if any((pol, b) in best for b in budgets)]
        if oracle:
            rows.append(["oracle top-k bound"] + [oracle.get(b) for b in budgets])
        body += f"<h3>{html.escape(tr)}</h3>" + table(header, rows)
    fig.tight_layout()
    img = save(fig, out, "retained_vs_budget.png")
    text = note("Per policy and budget, the best retained mass over the policy's parameters, page sizes and "
                "hardware points (retained mass does not depend on the hardware). The oracle bound is "
                "metrics.oracle_topk_mass of the token-granularity configurations (page size 1).")
    return title, text + img + body


def resolve_trace(path, db_path):
    if os.path.isabs(path):
        return path if os.path.isfile(path) else None
    for base in (os.getcwd(), os.path.dirname(os.path.abspath(db_path)), ROOT):
        p = os.path.join(base, path)
        if os.path.isfile(p):
            return p
    return None


def head_stats(trace_path, sink_keys):
    """Per (layer, head): mean sink mass (probability on keys 0..sink_keys-1) and mean row
    entropy (nats) over every stored row (prefill window rows and decode rows), as
    `kvscope trace-info` computes per layer. Top-k rows: the residual is spread evenly over
    the keys not kept for the entropy, and only kept sink keys count toward the sink mass."""
    sys.path.insert(0, os.path.join(ROOT, "traces"))
    import kvtrace  # noqa: E402

    with kvtrace.Trace(trace_path) as t:
        info = t.info
        L, H = info.n_layers, info.n_heads
        sink = np.zeros((L, H))
        ent = np.zeros((L, H))
        count = np.zeros((L, H))
        for layer in range(L):
            for sl in t.iter_layer(layer):
                for row in sl.rows:
                    p = row.probs.astype(np.float64)
                    nz = p[p > 0]
                    h = -float((nz * np.log(nz)).sum())
                    keys = row.keys
                    s = float(p[keys < sink_keys].sum())
                    rest = row.qpos + 1 - row.n
                    if info.mode == "topk" and row.residual > 0 and rest > 0:
                        h -= row.residual * math.log(row.residual / rest)
                    sink[layer, row.head] += s
                    ent[layer, row.head] += h
                    count[layer, row.head] += 1
        n_steps = t.n_steps
    count[count == 0] = 1
    return sink / count, ent / count, info, n_steps


def section_heads(out, results, db_path, sink_keys):
    title = "Attention per layer and head: sink mass and entropy"
    traces = sorted({r["trace"] for r in results if r["trace"]})
    if not traces:
        return title, note("no trace named in configs.trace")
    body = note(f"From the trace files named in configs.trace, read with traces/kvtrace.py. Sink mass: "
                f"the attention probability on keys 0..{sink_keys - 1}; entropy: of each attention row, in nats. "
                "Both are means over every stored row (the prefill's stored window rows and every decode step), "
                "the per-head version of `kvscope trace-info`. A relative trace path is looked up from the working "
                "directory, the database's directory and the source tree.")
    for i, tr in enumerate(traces):
        p = resolve_trace(tr, db_path)
        if p is None:
            body += f"<h3>{html.escape(tr)}</h3>" + note(f"trace file not found: {tr}")
            continue
        try:
            sink, ent, info, n_steps = head_stats(p, sink_keys)
        except Exception as e:  # a damaged trace names itself and the offset in the message
            body += f"<h3>{html.escape(tr)}</h3>" + note(f"cannot read the trace: {e}")
            continue
        L, H = sink.shape
        DATA.setdefault("heads", {})[tr] = {"sink_keys": sink_keys, "sink_mass": sink.tolist(), "entropy": ent.tolist()}
        fig, axes = plt.subplots(1, 2, figsize=(max(7.5, 1.0 + 0.9 * H * 2), 0.5 * L + 2.2))
        for ax, data, name, cmap in ((axes[0], sink, "sink mass", "viridis"), (axes[1], ent, "entropy (nats)", "magma")):
            im = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
            ax.set_xlabel("query head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(H))
            ax.set_yticks(range(L))
            ax.grid(False)
            ax.set_title(name)
            for (li, hi), v in np.ndenumerate(data):
                ax.text(hi, li, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < (data.min() + data.max()) / 2 else "black")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"{os.path.basename(tr)}: {n_steps} steps, {info.mode}", fontsize=9)
        fig.tight_layout()
        img = save(fig, out, f"heads_{i}.png")
        hdr = ["layer"] + [f"head {h}" for h in range(H)] + ["layer mean"]
        body += (f"<h3>{html.escape(tr)}</h3>" + img + "<h4>sink mass</h4>"
                 + table(hdr, [[li] + list(sink[li]) + [float(sink[li].mean())] for li in range(L)])
                 + "<h4>entropy (nats)</h4>"
                 + table(hdr, [[li] + list(ent[li]) + [float(ent[li].mean())] for li in range(L)]))
    return title, body


def section_timing(out, spec, results):
    title = "Timing breakdown (mean decode step)"
    rs = [r for r in usable(results) if isinstance(r["metrics"].get("timing"), dict)
          and isinstance(r["metrics"]["timing"].get("decode_mean"), dict)]
    if not rs:
        return title, note("no timing in the stored metrics (no full-length, error-free configuration was timed: the spec needs \"hardware\"): nothing to break down")
    # Which bars: the Pareto-front configurations when there is a front, else the fastest ones.
    chosen = rs
    objs = (spec or {}).get("objectives") or []
    names = [o["metric"] for o in objs]
    why = "the fastest configurations"
    if names:
        cand = [r for r in rs if all(metric(r, m) is not None for m in names) and feasible(r, (spec or {}).get("constraints") or [])]
        if cand:
            pts = [[metric(r, m) for m in names] for r in cand]
            chosen = [cand[i] for i in pareto(pts, [1 if o.get("goal") == "max" else -1 for o in objs])]
            why = "the Pareto-front configurations"
    chosen = sorted(chosen, key=lambda r: (r["metrics"]["timing"]["decode_mean"].get("total", 0.0), r["hash"]))
    omitted = max(0, len(chosen) - MAX_TIMING_BARS)
    chosen = chosen[:MAX_TIMING_BARS]
    DATA["timing"] = [{"hash": r["hash"], "tpot": r["metrics"]["timing"].get("tpot"),
                       "decode_mean": {p: r["metrics"]["timing"]["decode_mean"].get(p, 0.0) for p in TIMING_PARTS + ["pcie"]}}
                      for r in chosen]
    labels = [f'{label_of(r)}\n{hw_text(r["hardware"])}' for r in chosen]
    fig, ax = plt.subplots(figsize=(max(7.5, 0.65 * len(chosen) + 2), 5.2))
    x = np.arange(len(chosen))
    bottom = np.zeros(len(chosen))
    for part in TIMING_PARTS:
        v = np.array([r["metrics"]["timing"]["decode_mean"].get(part, 0.0) * 1e3 for r in chosen])
        ax.bar(x, v, 0.6, bottom=bottom, label=part, color=TIMING_COLORS[part])
        bottom += v
    pcie = np.array([r["metrics"]["timing"]["decode_mean"].get("pcie", 0.0) * 1e3 for r in chosen])
    ax.scatter(x, pcie, marker="_", s=300, color="black", zorder=3, label="pcie copy time (copy stream)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("ms per decode step")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    img = save(fig, out, "timing.png")
    text = note(f"metrics.json → timing.decode_mean of {why}, sorted by step time"
                + (f" (first {MAX_TIMING_BARS}; {omitted} more not drawn)" if omitted else "")
                + ". The stacked parts add up to the mean decode step (TPOT): compute + hbm + launch + nvlink + stall "
                "(docs/hardware.md); host-link copies run on their own stream, so their time is drawn as a marker and "
                "reaches the step only through stall. This is the stored mean per part; per-step timing is not "
                "stored in the database (kvscope whatif --per-step writes it).")
    hdr = ["hash", "configuration", "hardware", "ttft [ms]", "tpot [ms]"] + [f"{p} [ms]" for p in TIMING_PARTS + ["pcie"]]
    rows = []
    for r in chosen:
        t = r["metrics"]["timing"]
        d = t["decode_mean"]
        rows.append([r["hash"], label_of(r), hw_text(r["hardware"]), t.get("ttft", 0) * 1e3, t.get("tpot", 0) * 1e3]
                    + [d.get(p, 0.0) * 1e3 for p in TIMING_PARTS + ["pcie"]])
    return title, text + img + table(hdr, rows)


class PresetResolver:
    """Hardware key values of a preset, via `kvscope hw --show` (None without the binary)."""

    def __init__(self, kvscope):
        self.kvscope = kvscope
        self.cache = {}

    def value(self, preset, key):
        if preset not in self.cache:
            doc = None
            if self.kvscope:
                p = subprocess.run([self.kvscope, "hw", "--show", preset], capture_output=True, text=True)
                if p.returncode == 0:
                    try:
                        doc = json.loads(p.stdout)
                    except ValueError:
                        doc = None
            self.cache[preset] = doc
        doc = self.cache[preset]
        for part in key.split("."):
            if not isinstance(doc, dict) or part not in doc:
                return None
            doc = doc[part]
        return float(doc) if isinstance(doc, (int, float)) else None


def section_whatif(out, results, whatif_files, resolver):
    title = "Hardware what-if"
    body = ""
    # (a) from the database: configurations that differ only in their hardware.
    groups = {}
    for r in usable(results):
        if not r["hardware"] or metric(r, "tpot") is None:
            continue
        key = json.dumps({k: v for k, v in r["config"].items() if k != "hardware"}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    groups = {k: v for k, v in groups.items() if len({json.dumps(r["hardware"], sort_keys=True) for r in v}) > 1}
    made_db_plot = False
    if groups:
        variants = {}
        for rs in groups.values():
            for r in rs:
                variants[json.dumps(r["hardware"], sort_keys=True)] = r["hardware"]
        presets = sorted({h.get("preset", "") for h in variants.values()})
        set_keys = sorted({k for h in variants.values() for k in (h.get("set") or {})})
        # Values of every set key at every variant (the preset's own value where not set).
        vals = {}
        numeric_key = None
        if len(presets) == 1:
            for vk, h in variants.items():
                vals[vk] = {k: (h.get("set") or {}).get(k, resolver.value(h.get("preset", ""), k)) for k in set_keys}
            varying = [k for k in set_keys if len({vals[vk][k] for vk in variants}) > 1]
            if len(varying) == 1 and all(vals[vk][varying[0]] is not None for vk in variants):
                numeric_key = varying[0]
        ordered = sorted(groups.items(), key=lambda kv: (kv[1][0]["policy"], kv[1][0]["budget"], kv[0]))
        omitted = max(0, len(ordered) - MAX_WHATIF_GROUPS)
        ordered = ordered[:MAX_WHATIF_GROUPS]
        fig, ax = plt.subplots(figsize=(9.5, 4.8))
        if numeric_key:
            xs_all = sorted({vals[vk][numeric_key] for vk in variants})
        else:
            cats = sorted(variants, key=lambda vk: hw_text(variants[vk]))
            cat_pos = {vk: i for i, vk in enumerate(cats)}
        table_rows = []
        for gi, (_, rs) in enumerate(ordered):
            pts = []
            for r in rs:
                vk = json.dumps(r["hardware"], sort_keys=True)
                x = vals[vk][numeric_key] if numeric_key else cat_pos[vk]
                pts.append((x, metric(r, "tpot") * 1e3, r))
            pts.sort(key=lambda p: (p[0], p[2]["hash"]))
            DATA.setdefault("whatif_db", {"key": numeric_key, "groups": []})["groups"].append(
                {"label": label_of(rs[0]), "points": [[p[0], p[1]] for p in pts], "hashes": [p[2]["hash"] for p in pts]})
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1, label=label_of(rs[0]),
                    linestyle=LINESTYLES[(gi // 10) % len(LINESTYLES)])
            for x, y, r in pts:
                table_rows.append([label_of(r), hw_text(r["hardware"]), x if numeric_key else hw_text(r["hardware"]), y,
                                   metric(r, "tokens_per_s"), r["hash"]])
        if numeric_key:
            ax.set_xlabel(numeric_key)
            if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 8:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels([hw_text(variants[vk]) for vk in cats], rotation=30, ha="right", fontsize=6)
            ax.set_xlabel("hardware")
        ax.set_ylabel("TPOT [ms]")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        body += "<h3>From the database</h3>" + note(
            "Configurations that differ only in their hardware (same trace, policy, parameters, budget, page size, "
            "replay length, shape), TPOT against "
            + (f"the one hardware key that varies, {numeric_key} (a preset's own value resolved with `kvscope hw --show`)"
               if numeric_key else "each hardware point (presets or several keys vary, so the axis is categorical)")
            + (f"; first {MAX_WHATIF_GROUPS} groups by policy and budget, {omitted} more in no plot." if omitted else "."))
        body += save(fig, out, "whatif_db.png")
        body += table(["configuration", "hardware", numeric_key or "point", "tpot [ms]", "tokens/s", "hash"], table_rows)
        made_db_plot = True
    # (b) files written by `kvscope whatif --out F`.
    for i, path in enumerate(whatif_files):
        try:
            with open(path) as f:
                doc = json.load(f)
            points = doc["points"]
            if not isinstance(points, list) or not points:
                raise KeyError("points")
            keys = list(points[0].get("point", {}).keys())
        except FileNotFoundError:
            raise ReportError(f"{path}: no such what-if file") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ReportError(f"{path}: not a `kvscope whatif --out` file (missing or bad {e})") from None
        if not keys:
            body += f"<h3>{html.escape(path)}</h3>" + note("the file has no swept key (whatif without --sweep)")
            continue
        xk = keys[-1]  # the fastest-varying sweep on the x axis, one line per value of the others
        lines = {}
        for p in points:
            other = tuple((k, p["point"][k]) for k in keys[:-1])
            lines.setdefault(other, []).append((float(p["point"][xk]), p["tpot"] * 1e3, p))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        for other, pts in sorted(lines.items()):
            pts.sort(key=lambda q: q[0])
            lab = ",".join(f"{k}={fmt(v)}" for k, v in other) or "tpot"
            axes[0].plot([q[0] for q in pts], [q[1] for q in pts], marker="o", markersize=3, label=lab)
        # Breakdown of the mean decode step along the x key (first line only).
        first = sorted(lines.items())[0][1]
        xs = [q[0] for q in first]
        bottom = np.zeros(len(first))
        for part in TIMING_PARTS:
            v = np.array([q[2]["decode_mean"].get(part, 0.0) * 1e3 for q in first])
            axes[1].fill_between(xs, bottom, bottom + v, step=None, alpha=0.8, label=part, color=TIMING_COLORS[part])
            bottom += v
        for ax in axes:
            ax.set_xlabel(xk)
            if xs[0] > 0 and xs[-1] / xs[0] >= 8:
                ax.set_xscale("log")
        axes[0].set_ylabel("TPOT [ms]")
        axes[1].set_ylabel("ms per decode step")
        axes[1].set_title("mean decode step by part" + (f" ({', '.join(f'{k}={fmt(v)}' for k, v in sorted(lines)[0])})"
                                                        if len(keys) > 1 else ""), fontsize=8)
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
        hwn = doc.get("hardware", {}).get("name", "?") if isinstance(doc.get("hardware"), dict) else "?"
        axes[0].set_title(f'{doc.get("policy", "?")} B={doc.get("budget", "?")} on {hwn} as {doc.get("shape", "?")}', fontsize=8)
        fig.tight_layout()
        img = save(fig, out, f"whatif_file_{i}.png")
        DATA.setdefault("whatif_files", []).append(
            {"file": path, "key": xk, "points": [[p["point"][k] for k in keys] + [p["tpot"]] for p in points]})
        rows = [[*(p["point"][k] for k in keys), p.get("ttft", 0) * 1e3, p["tpot"] * 1e3, p.get("tokens_per_s")]
                + [p["decode_mean"].get(x, 0.0) * 1e3 for x in TIMING_PARTS + ["pcie"]] for p in points]
        body += (f"<h3>{html.escape(path)}</h3>"
                 + note(f"kvscope whatif --out: {doc.get('policy')} budget {doc.get('budget')}, page size "
                        f"{doc.get('page_size')}, retained mass {fmt(doc.get('retained_mass'))}; one replay timed at every point.")
                 + img + table(keys + ["ttft [ms]", "tpot [ms]", "tokens/s"] + [f"{x} [ms]" for x in TIMING_PARTS + ["pcie"]], rows))
    if not made_db_plot and not whatif_files:
        body += note("The database has no configurations that differ only in their hardware (one hardware point, or no "
                     "hardware in the spec). Add hardware points to the spec, or pass --whatif FILE written by "
                     "`kvscope whatif --sweep KEY=lo:hi:n --out FILE`.")
    return title, body


def section_validation(out, con):
    title = "Simulated vs real (kvscope validate)"
    empty = note("no validation results yet (run kvscope validate)")
    if not has_table(con, "validations"):
        return title, empty
    cols = [r[1] for r in con.execute("PRAGMA table_info(validations)")]
    need = ["hash", "model", "prompts", "device", "policy", "budget", "kl", "top1", "step_ms", "sim_retained_mass",
            "sim_output_rel_l2", "sim_tpot"]
    missing = [c for c in need if c not in cols]
    if missing:
        return title, note(f"the validations table lacks columns {', '.join(missing)}; cannot plot")
    rows = con.execute("SELECT hash, model, prompts, device, policy, budget, page_size, kl, top1, ppl, ppl_full, step_ms, "
                       "sim_retained_mass, sim_output_rel_l2, sim_tpot FROM validations "
                       "ORDER BY model, prompts, device, policy, budget, hash").fetchall()
    if not rows:
        return title, empty
    summary = []
    if has_table(con, "validation_summary"):
        summary = con.execute("SELECT id, created, model, prompts, device, n, policies, rho_quality, rho_time, "
                              "quality_predictor FROM validation_summary ORDER BY id").fetchall()
    pred = "sim_retained_mass"
    if summary and summary[-1][9]:  # kvscope validate names it without the sim_ prefix
        named = summary[-1][9] if summary[-1][9].startswith("sim_") else "sim_" + summary[-1][9]
        if named in ("sim_retained_mass", "sim_output_rel_l2"):
            pred = named
    pi = {"sim_retained_mass": 12, "sim_output_rel_l2": 13}[pred]
    q = [(r[pi], r[7], r) for r in rows if r[pi] is not None and r[7] is not None]
    t = [(r[14], r[11], r) for r in rows if r[14] is not None and r[11] is not None]
    # Sign-aligned as kvscope validate reports it: more retained mass should mean less KL.
    sign = -1.0 if pred == "sim_retained_mass" else 1.0
    rho_q = spearman([sign * a for a, _, _ in q], [b for _, b, _ in q])
    rho_t = spearman([a for a, _, _ in t], [b for _, b, _ in t])
    pols = policy_colors({r[4] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, pts, xl, yl, rho, scale in ((axes[0], q, pred, "KL(full ‖ policy) measured", rho_q, 1.0),
                                        (axes[1], t, "simulated TPOT [ms]", "measured step [ms]", rho_t, 1e3)):
        for pol in sorted(pols):
            sel = [(a, b) for a, b, r in pts if r[4] == pol]
            if sel:
                col, mk = pols[pol]
                ax.scatter([a * scale for a, _ in sel], [b for _, b in sel], color=col, marker=mk, s=22, label=pol)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"Spearman ρ = {fmt(rho, 3)} (n = {len(pts)})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    img = save(fig, out, "validation.png")
    DATA["validation"] = {"predictor": pred, "rho_quality": rho_q, "rho_time": rho_t, "n_quality": len(q), "n_time": len(t)}
    rho_html = (f'<p class="rho">Spearman ρ computed here: quality <span id="rho_quality">{fmt(rho_q, 4)}</span> '
                f'(n = {len(q)}), time <span id="rho_time">{fmt(rho_t, 4)}</span> (n = {len(t)})</p>')
    text = note(f"Each point is one validated configuration (validations table). Quality: {pred} (the predictor "
                "named by the latest validation_summary, else retained mass) against the measured KL divergence; "
                "time: the simulated TPOT against the measured step time. ρ is computed here from the rows shown "
                "(ties get mean ranks).")
    body = text + rho_html + img
    if summary:
        body += "<h3>validation_summary</h3>" + table(
            ["id", "created", "model", "prompts", "device", "n", "policies", "ρ quality", "ρ time", "quality predictor"],
            summary)
    body += "<h3>validations</h3>" + table(
        ["hash", "model", "prompts", "device", "policy", "budget", "page size", "kl", "top1", "ppl", "ppl full",
         "step [ms]", "sim retained", "sim output rel l2", "sim tpot [s]"], rows)
    return title, body


# ------------------------------------------------------------------------------------

CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; } nav a { margin-right: 1em; }
pre { font-size: 0.75em; background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
"""


def build(args):
    out = args.out
    DATA.clear()
    con = open_db(args.db)
    try:
        run, spec, results = load_results(con, args.db)
        os.makedirs(out, exist_ok=True)
        resolver = PresetResolver(args.kvscope)
        sections = [
            section_summary(args.db, run, spec, results),
            section_pareto(out, spec, results),
            section_retained(out, results),
            section_heads(out, results, args.db, args.sink_keys),
            section_timing(out, spec, results),
            section_whatif(out, results, args.whatif, resolver),
            section_validation(out, con),
        ]
    finally:
        con.close()
    ids = [f"s{i}" for i in range(len(sections))]
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            "<title>kvscope report</title>", f"<style>{CSS}</style></head><body>",
            "<h1>kvscope report</h1>",
            "<nav>" + "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, (t, _) in zip(ids, sections))
            + '<a href="data.json">data.json</a></nav>']
    for i, (t, b) in zip(ids, sections):
        page.append(f'<section id="{i}"><h2>{html.escape(t)}</h2>\n{b}\n</section>')
    page.append("</body></html>\n")
    with open(os.path.join(out, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(page))
    with open(os.path.join(out, "data.json"), "w", encoding="utf-8") as f:
        json.dump(DATA, f, indent=1, sort_keys=True, allow_nan=True)
        f.write("\n")
    return os.path.join(out, "index.html")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="kvscope report", description="Static HTML report of an explore database")
    ap.add_argument("--db", required=True, help="results database (kvscope explore)")
    ap.add_argument("--out", required=True, help="output folder (index.html and PNG figures)")
    ap.add_argument("--whatif", action="append", default=[], help="a `kvscope whatif --out` JSON file (repeatable)")
    ap.add_argument("--sink-keys", type=int, default=4, help="keys 0..N-1 count as sinks (default 4, as trace-info)")
    ap.add_argument("--kvscope", default=None, help="kvscope binary, to resolve hardware presets (hw --show)")
    args = ap.parse_args(argv)
    if args.sink_keys < 1:
        ap.error("--sink-keys must be >= 1")
    try:
        path = build(args)
    except ReportError as e:
        print(f"kvscope report: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kvscope report: error: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
