"""kvscope synth: synthetic traces checked with the numpy reader (traces/kvtrace.py).

Determinism (byte-identical files, any thread count), the header's synthetic flag and
parameters, proper rows (sum to 1, top-k residuals), prefill column sums consistent with
the rows, sinks and persistent heavy hitters (an H2O-like selection beats a window), the
shapes' figures, --fit against the real stories260K trace (per-layer sink mass and mean
entropy, computed here independently of the C++), and option errors.

Needs only the binary and the committed default trace.
"""
import json, os, subprocess, sys, tempfile, time

import numpy as np

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
if not os.path.exists(kv):
    print(f"SKIP: no kvscope binary at {kv}")
    sys.exit(77)
sys.path.insert(0, os.path.join(root, "traces"))
import kvtrace  # noqa: E402

REAL = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
# Tolerances of the --fit check, per layer (docs/synth.md states them).
FIT_SINK_TOL = 0.006   # absolute sink mass (keys 0..3)
FIT_ENTROPY_TOL = 0.05  # nats

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


def synth(out, *args):
    r = subprocess.run([kv, "synth", "--out", out, "-q", *args], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"synth {args} failed: {r.stderr}")
    return r


def layer_stats(t):
    """Per-layer mean sink mass (keys 0..3) and entropy over every stored row (dense traces)."""
    L, H = t.info.n_layers, t.info.n_heads
    sink, ent, n = np.zeros(L), np.zeros(L), np.zeros(L)
    for l in range(L):
        for sl in t.iter_layer(l):
            for r in range(sl.n_rows):
                for h in range(H):
                    p = sl.row(r, h).dense().astype(np.float64)
                    sink[l] += p[:4].sum()
                    nz = p[p > 0]
                    ent[l] -= (nz * np.log(nz)).sum()
                    n[l] += 1
    return sink / n, ent / n


with tempfile.TemporaryDirectory() as d:
    P = lambda name: os.path.join(d, name)  # noqa: E731

    # ---- determinism and the header -------------------------------------------------
    base = ["--shape", "llama3-8b", "--layers", "2", "--context", "1024", "--steps", "96", "--seed", "5"]
    synth(P("a.kvt"), *base, "--threads", "1")
    synth(P("b.kvt"), *base, "--threads", "2")
    synth(P("c.kvt"), *base[:-1], "6")
    a, b, c = (open(P(x), "rb").read() for x in ("a.kvt", "b.kvt", "c.kvt"))
    check(a == b, "same arguments and seed (1 vs 2 threads) give byte-identical files")
    check(a != c, "another seed gives another file")
    t = kvtrace.Trace(P("a.kvt"))
    hd = t.header
    check(t.complete and t.verify() is None, "the synthetic trace is complete and every frame verifies")
    check(hd["synthetic"] is True and t.info.synthetic, "header marks synthetic: true")
    sy = hd.get("synth", {})
    check(sy.get("shape") == "llama3-8b" and sy.get("seed") == 5 and sy.get("fit") is None, f"synth parameters recorded: {list(sy)}")
    check(len(sy.get("per_layer", [])) == 2 and "m_sink" in sy["per_layer"][0], "per-layer model parameters recorded")
    check((t.info.n_layers, t.info.n_heads, t.info.n_kv_heads, t.info.head_dim) == (2, 32, 8, 128), f"llama3-8b geometry with --layers 2: {t.info}")
    check(t.info.prompt_len == 1024 - 96 + 1 and t.n_steps == 96, f"P = C - N + 1 prompt tokens, N steps: {t.info.prompt_len}, {t.n_steps}")
    last = t.step_layer(t.n_steps - 1, 0)
    check(last.row(0, 0).qpos == 1023, "the last decode step's query is at position C - 1")
    check(not t.info.with_qkv and t.info.mode == "dense", "dense, no Q/K/V")
    info = subprocess.run([kv, "trace-info", P("a.kvt")], capture_output=True, text=True)
    check(info.returncode == 0 and "(SYNTHETIC)" in info.stdout and "synthetic    yes" in info.stdout and '"llama3-8b"' in info.stdout,
          f"trace-info says synthetic: {info.stdout[:300]!r}")
    ij = json.loads(subprocess.run([kv, "trace-info", P("a.kvt"), "--json"], capture_output=True, text=True, check=True).stdout)
    check(ij["synthetic"] is True and ij["complete"] is True, "trace-info --json: synthetic, complete")

    # ---- rows: proper distributions, the C++ reader agrees ------------------------------
    worst, neg, bad_lse = 0.0, False, False
    for step in range(0, t.n_steps, 5):
        for l in range(2):
            sl = t.step_layer(step, l)
            for r in range(sl.n_rows):
                for h in range(0, 32, 3):
                    row = sl.row(r, h)
                    p = row.dense().astype(np.float64)
                    worst = max(worst, abs(p.sum() - 1))
                    neg |= bool((p < 0).any()) or len(p) != row.qpos + 1
                    bad_lse |= not np.isfinite(row.lse)
    check(worst < 2e-3, f"every row sums to 1 (fp16 rounding): worst |sum - 1| = {worst:.2e}")
    check(not neg and not bad_lse, "rows are non-negative over keys 0..q with a finite lse")
    dump = json.loads(subprocess.run([kv, "trace-dump", P("a.kvt"), "--step", "40", "--layer", "1", "--head", "7", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    check(np.array_equal(np.array(dump["rows"][0]["probs"], np.float32), t.dense_row(40, 1, 7)), "trace-dump and kvtrace agree")

    # ---- sinks and heavy hitters that persist -----------------------------------------
    # Layer 1 of 2 is "late" (sinks drawn for every head). H2O-like selection at budget B:
    # B/2 most recent keys + the B/2 keys with the most accumulated attention so far
    # (prefill colsum + earlier decode rows); window: the B most recent keys.
    B = 64
    h2o, win, p0, pmid = [], [], [], []
    for l in range(2):
        pre = t.step_layer(0, l)
        for h in range(0, 32, 2):
            acc = np.zeros(1024)
            acc[:pre.n_queries] = pre.colsum[h]  # every prefill query's attention (stored rows included)
            for step in range(1, t.n_steps):
                p = t.dense_row(step, l, h).astype(np.float64)
                q = len(p) - 1
                recent = np.arange(q + 1 - B // 2, q + 1)
                older = acc[:q + 1 - B // 2]
                keep = np.concatenate([recent, np.argsort(-older, kind="stable")[:B // 2]])
                h2o.append(p[keep].sum())
                win.append(p[q + 1 - B:].sum())
                if l == 1:
                    p0.append(p[0])
                    pmid.append(p[200:q - 200].mean())
                acc[:q + 1] += p
    h2o, win = float(np.mean(h2o)), float(np.mean(win))
    print(f"B={B}: H2O-like retained mass {h2o:.3f}, window {win:.3f}")
    check(h2o > win + 0.1, f"heavy hitters persist: H2O-like {h2o:.3f} beats the window {win:.3f} by > 0.1")
    check(np.mean(p0) > 20 * np.mean(pmid), f"sink: key 0 gets {np.mean(p0):.4f}, a middle key {np.mean(pmid):.6f}")

    # ---- prefill column sums vs the rows ------------------------------------------------
    small = ["--shape", "smollm2-135m", "--layers", "2", "--context", "400", "--steps", "16", "--seed", "3"]
    synth(P("all.kvt"), *small, "--prefill-window", "385")   # every prefill row stored: colsum = their sum
    synth(P("few.kvt"), *small, "--prefill-window", "4")     # closed form for the rows before the window
    ta, tf = kvtrace.Trace(P("all.kvt")), kvtrace.Trace(P("few.kvt"))
    for l in range(2):
        sa, sf = ta.step_layer(0, l), tf.step_layer(0, l)
        Pn = sa.n_queries
        rows = np.zeros((9, Pn))
        for r in range(sa.n_rows):
            for h in range(9):
                d_ = sa.row(r, h).dense().astype(np.float64)
                rows[h, :len(d_)] += d_
        check(np.abs(rows - sa.colsum).max() < 5e-3, f"layer {l}: colsum = sum of the stored rows when all are stored")
        check(np.allclose(sf.colsum.sum(1), Pn, rtol=1e-3), f"layer {l}: closed-form colsum totals P = {Pn}: {sf.colsum.sum(1)[:3]}")
        # Per key the materialised sums carry the rows' noise and focus draws (few rows see
        # the late keys); over blocks of 16 keys they must agree with the expectation.
        rel = np.abs(sa.colsum - sf.colsum).sum(1) / Pn
        nb = Pn // 16 * 16
        ba, bf = sa.colsum[:, :nb].reshape(9, -1, 16).sum(2), sf.colsum[:, :nb].reshape(9, -1, 16).sum(2)
        brel = np.abs(ba - bf).sum(1) / ba.sum(1)
        corr = min(np.corrcoef(sa.colsum[h], sf.colsum[h])[0, 1] for h in range(9))
        print(f"layer {l}: closed-form vs materialised colsum: relative L1 per key {rel.mean():.3f} (max {rel.max():.3f}), "
              f"per 16-key block {brel.mean():.3f} (max {brel.max():.3f}), min correlation {corr:.3f}")
        check(brel.max() < 0.15 and corr > 0.8, f"layer {l}: closed-form colsum matches the materialised rows up to noise")
        check(np.array_equal(ta.step_layer(5, l).row(0, 2).dense(), tf.step_layer(5, l).row(0, 2).dense()),
              f"layer {l}: decode rows do not depend on the prefill window")

    # ---- top-k mode ---------------------------------------------------------------------
    synth(P("k.kvt"), "--shape", "qwen2.5-7b", "--layers", "1", "--context", "700", "--steps", "20", "--topk", "32")
    tk = kvtrace.Trace(P("k.kvt"))
    check(tk.info.mode == "topk" and tk.info.topk == 32, "--topk implies top-k mode")
    ok = True
    for step in (1, 10, 19):
        sl = tk.step_layer(step, 0)
        for h in range(28):
            row = sl.row(0, h)
            ok &= len(row.keys) == 32 and abs(float(row.probs.astype(np.float64).sum()) + row.residual - 1) < 5e-3
    check(ok, "top-k rows: 32 keys, kept + residual = 1")

    # ---- shapes (figures from the models' config.json) -----------------------------------
    shapes = {"llama3-8b": (32, 32, 8, 128), "llama3-70b": (80, 64, 8, 128), "mistral-7b": (32, 32, 8, 128),
              "qwen2.5-7b": (28, 28, 4, 128), "smollm2-135m": (30, 9, 3, 64), "stories260K": (5, 8, 4, 8)}
    for name, (L, H, G, hd_) in shapes.items():
        synth(P("s.kvt"), "--shape", name, "--context", "16", "--steps", "2", "--layers", "1")
        m = kvtrace.Trace(P("s.kvt")).header["model"]
        got = (kvtrace.Trace(P("s.kvt")).header["synth"]["shape_layers"], m["n_heads"], m["n_kv_heads"], m["head_dim"])
        check(got == (L, H, G, hd_), f"shape {name}: {got} == {(L, H, G, hd_)}")

    # ---- --fit ---------------------------------------------------------------------------
    real = kvtrace.Trace(REAL)
    n = real.n_steps
    ctx = real.info.prompt_len + n - 1
    t0 = time.time()
    synth(P("fit.kvt"), "--shape", "stories260K", "--context", str(ctx), "--steps", str(n), "--fit", REAL)
    print(f"fit + synth of {ctx} tokens: {time.time() - t0:.1f} s")
    tf = kvtrace.Trace(P("fit.kvt"))
    fit = tf.header["synth"]["fit"]
    check(fit is not None and fit["trace"] == REAL and len(fit["per_head"]) == 40, "header records the fitted trace and 40 heads")
    rs, re = layer_stats(real)
    fs, fe = layer_stats(tf)
    for l in range(5):
        print(f"layer {l}: sink mass real {rs[l]:.4f} synth {fs[l]:.4f}; entropy real {re[l]:.3f} synth {fe[l]:.3f}")
    check(np.all(np.abs(rs - fs) <= FIT_SINK_TOL), f"--fit: per-layer sink mass within {FIT_SINK_TOL}: {np.abs(rs - fs).max():.4f}")
    check(np.all(np.abs(re - fe) <= FIT_ENTROPY_TOL), f"--fit: per-layer entropy within {FIT_ENTROPY_TOL} nats: {np.abs(re - fe).max():.4f}")

    # ---- speed (the bench case): prints the time, fails only if grossly slow ------------
    t0 = time.time()
    synth(P("bench.kvt"), "--shape", "llama3-8b", "--layers", "2", "--context", "4096", "--steps", "256")
    secs = time.time() - t0
    print(f"llama3-8b --layers 2 --context 4096 --steps 256 dense: {secs:.1f} s, {os.path.getsize(P('bench.kvt')) / 1e6:.1f} MB")
    check(secs < 120, f"bench synth took {secs:.1f} s")
    os.remove(P("bench.kvt"))

    # ---- option errors --------------------------------------------------------------------
    bad = {
        ("--steps", "0"): "--steps",
        ("--context", "10", "--steps", "11"): "--steps",
        ("--context", "0"): "--context",
        ("--shape", "gpt-5"): "--shape",
        ("--mode", "sparse"): "--mode",
        ("--mode", "dense", "--topk", "8"): "--topk",
        ("--topk", "0"): "--topk",
        ("--layers", "0"): "--layers",
        ("--prefill-window", "-1"): "--prefill-window",
        ("--zstd-level", "40"): "--zstd-level",
        ("--fit", os.path.join(d, "missing.kvt")): "--fit",
        ("--fit", os.path.join(root, "README.md")): "--fit",
    }
    for args, opt in bad.items():
        out = P("bad.kvt")
        r = subprocess.run([kv, "synth", "--out", out, *args], capture_output=True, text=True)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        ok = r.returncode == 1 and len(lines) == 1 and lines[0].startswith("kvscope: error:") and opt in lines[0] and not r.stdout
        check(ok, f"{' '.join(args)}: exit 1, one 'kvscope: error:' line naming {opt} (got rc={r.returncode}, {r.stderr.strip()!r})")
        check(not os.path.exists(out), f"{' '.join(args)}: no output file left")

print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
sys.exit(1 if failures else 0)
