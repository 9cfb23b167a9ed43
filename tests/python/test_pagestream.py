"""Page-access streams (kvscope export) and page caches (kvscope sim --page-stream).

* The exported oracleGeneral records of the default trace (topk:4, mass:0.9, and topk:4
  with --agg max, page size 16) equal a stream re-derived here with numpy from
  traces/kvtrace.py (time, id, size, next); the printed covered mass too. When the
  stories260K model is present, the same on a freshly captured sparse (top-k) trace.
* Miss counts of lru, fifo, lfu, arc, s3fifo and belady-page at several capacities equal
  the small reference implementations below (plain Python: OrderedDict LRU, deque FIFO,
  Belady by next use, LFU by (count, last use), ARC as in the paper's Fig. 4, S3-FIFO as
  documented in policies/s3fifo.cpp), on the exported streams and on hand-made ones with
  closed-form answers.
* A cache policy replayed on the trace (kvscope sim -p lru -b B --page-size P) gives the
  misses of the exported stream at capacity (B / P) * layers * KV heads.
* Bad inputs fail with one `kvscope: error:` line naming the file and offset, the
  parameter, the policy or the value.
"""
import json, os, subprocess, sys, tempfile
from collections import OrderedDict, deque

import numpy as np

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
if not os.path.exists(kv):
    print(f"SKIP: no kvscope binary at {kv}")
    sys.exit(77)
sys.path.insert(0, os.path.join(root, "traces"))
import kvtrace  # noqa: E402

TRACE = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
REC = np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])  # packed, 24 bytes
assert REC.itemsize == 24

failures = []
n_checks = 0


def check(cond, what):
    global n_checks
    n_checks += 1
    if not cond:
        failures.append(what)
        print("FAIL", what)


def run(*args):
    return subprocess.run([kv, *map(str, args)], cwd=root, capture_output=True, text=True)


# ---------------------------------------------------------------------------------------
# Independent derivation of the page stream
# ---------------------------------------------------------------------------------------


def derive(path, page_size, rule, agg="sum"):
    """Records (time, id, size, next) and the mean covered mass, from the numpy reader."""
    t = kvtrace.Trace(path)
    L, Hkv, G = t.info.n_layers, t.info.n_kv_heads, t.info.group
    kind, arg = rule.split(":")
    per = {}  # (step, layer) -> [(page ids in ascending order)], covered masses
    covered = []
    for layer in range(L):
        for sl in t.iter_layer(layer):
            if sl.kind != "decode":
                continue
            out = []
            for kvh in range(Hkv):
                rows = [sl.row(0, kvh * G + g) for g in range(G)]
                qpos = rows[0].qpos
                n_pages = qpos // page_size + 1
                if agg == "max":
                    d = np.zeros(qpos + 1)
                    for r in rows:
                        k = r.keys.astype(np.int64)
                        d[k] = np.maximum(d[k], r.probs.astype(np.float64))
                    mass = np.bincount(np.arange(qpos + 1) // page_size, weights=d, minlength=n_pages)
                else:  # sum and mean choose the same pages
                    mass = sum(np.bincount(r.keys.astype(np.int64) // page_size, weights=r.probs.astype(np.float64),
                                           minlength=n_pages) for r in rows)
                order = sorted(range(n_pages), key=lambda p: (-mass[p], p))
                if kind == "topk":
                    chosen = order[:int(arg)]
                else:
                    goal, cum, chosen = float(arg) * float(mass.sum()), 0.0, []
                    for p in order:
                        if cum >= goal:
                            break
                        cum += mass[p]
                        chosen.append(p)
                chosen = sorted(chosen)
                stream = layer * Hkv + kvh
                out.append([(stream << 32) | p for p in chosen])
                for r in rows:
                    on = np.isin(r.keys.astype(np.int64) // page_size, chosen)
                    covered.append(float(r.probs.astype(np.float64)[on].sum()))
            per[(sl.step, layer)] = out
    times, ids = [], []
    for (step, layer) in sorted(per):
        for pages in per[(step, layer)]:
            for i in pages:
                times.append(step)
                ids.append(i)
    recs = np.zeros(len(ids), dtype=REC)
    recs["time"], recs["id"], recs["size"] = times, ids, 1
    recs["next"] = next_of(ids)
    return recs, float(np.mean(covered))


def next_of(ids):
    """1-based index of the next request to the same id, -1 for none (libCacheSim traceConv)."""
    nxt, later = [-1] * len(ids), {}
    for i in range(len(ids) - 1, -1, -1):
        nxt[i] = later.get(ids[i], -1)
        later[ids[i]] = i + 1
    return nxt


def write_stream(path, ids, sizes=None):
    recs = np.zeros(len(ids), dtype=REC)
    recs["time"] = np.arange(len(ids))
    recs["id"] = ids
    recs["size"] = 1 if sizes is None else sizes
    recs["next"] = next_of(list(ids))
    recs.tofile(path)


# ---------------------------------------------------------------------------------------
# Reference caches: the obvious implementations (capacity in objects)
# ---------------------------------------------------------------------------------------


def ref_lru(ids, nxt, c):
    cache, misses = OrderedDict(), 0
    for x in ids:
        if x in cache:
            cache.move_to_end(x)
            continue
        misses += 1
        if len(cache) >= c:
            cache.popitem(last=False)
        cache[x] = True
    return misses


def ref_fifo(ids, nxt, c):
    q, s, misses = deque(), set(), 0
    for x in ids:
        if x in s:
            continue
        misses += 1
        if len(q) >= c:
            s.discard(q.popleft())
        q.append(x)
        s.add(x)
    return misses


def ref_belady(ids, nxt, c):
    inf = float("inf")
    cache, misses = {}, 0  # id -> next use
    for x, n in zip(ids, nxt):
        n = inf if n < 0 else n
        if x in cache:
            cache[x] = n
            continue
        misses += 1
        if len(cache) >= c:
            del cache[max(cache, key=lambda o: cache[o])]
        cache[x] = n
    return misses


def ref_lfu(ids, nxt, c):
    cache, misses = {}, 0  # id -> (count, last use); the count is forgotten on eviction
    for t, x in enumerate(ids):
        if x in cache:
            cache[x] = (cache[x][0] + 1, t)
            continue
        misses += 1
        if len(cache) >= c:
            del cache[min(cache, key=lambda o: cache[o])]
        cache[x] = (1, t)
    return misses


def ref_arc(ids, nxt, c):
    T1, T2, B1, B2 = OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict()  # LRU first
    p, misses = 0.0, 0

    def replace(in_b2):
        if T1 and ((in_b2 and len(T1) == p) or len(T1) > p) or not T2:
            if T1:
                B1[T1.popitem(last=False)[0]] = True
        else:
            B2[T2.popitem(last=False)[0]] = True

    for x in ids:
        if x in T1:
            del T1[x]
            T2[x] = True
            continue
        if x in T2:
            T2.move_to_end(x)
            continue
        misses += 1
        if x in B1:
            p = min(float(c), p + (1.0 if len(B1) >= len(B2) else len(B2) / len(B1)))
            replace(False)
            del B1[x]
            T2[x] = True
        elif x in B2:
            p = max(0.0, p - (1.0 if len(B2) >= len(B1) else len(B1) / len(B2)))
            replace(True)
            del B2[x]
            T2[x] = True
        else:
            if len(T1) + len(B1) == c:
                if len(T1) < c:
                    B1.popitem(last=False)
                    replace(False)
                else:
                    T1.popitem(last=False)
            else:
                total = len(T1) + len(T2) + len(B1) + len(B2)
                if total >= c:
                    if total == 2 * c:
                        B2.popitem(last=False)
                    replace(False)
            T1[x] = True
    return misses


def ref_s3fifo(ids, nxt, c, small_ratio=0.1, ghost_ratio=0.9, threshold=1, fill_main=0):
    small_cap = max(1, int(small_ratio * c))
    ghost_cap = int(ghost_ratio * c)
    S, M, Gh = deque(), deque(), OrderedDict()  # oldest on the left
    freq, where, misses = {}, {}, 0
    evicted = [False]

    def evict():
        if S and (len(S) >= small_cap or not M):
            while S:
                t = S.popleft()
                if freq[t] >= threshold:
                    M.append(t)
                    where[t], freq[t] = "M", 0
                    continue
                del where[t], freq[t]
                if ghost_cap > 0:
                    if len(Gh) >= ghost_cap:
                        Gh.popitem(last=False)
                    Gh[t] = True
                return
        while True:
            t = M.popleft()
            if freq[t] > 0:
                freq[t] -= 1
                M.append(t)
                continue
            del where[t], freq[t]
            return

    for x in ids:
        if x in where:
            freq[x] = min(freq[x] + 1, 3)
            continue
        misses += 1
        ghost = x in Gh
        if ghost:
            del Gh[x]
        if len(S) + len(M) >= c:
            evicted[0] = True
            evict()
        to_main = ghost or (fill_main and not evicted[0] and len(S) >= small_cap)
        freq[x] = 0
        where[x] = "M" if to_main else "S"
        (M if to_main else S).append(x)
    return misses


REFS = {"lru": ref_lru, "fifo": ref_fifo, "belady-page": ref_belady, "lfu": ref_lfu, "arc": ref_arc, "s3fifo": ref_s3fifo}


def sim_stream(path, policy, capacity, *params):
    r = run("sim", "--page-stream", path, "--policy", policy, "--param", f"capacity={capacity}",
            *[a for p in params for a in ("--param", p)], "--json")
    if r.returncode != 0:
        return None, r.stderr.strip()
    return json.loads(r.stdout), None


def expect_error(args, needles, what):
    r = run(*args)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith("kvscope: error:") and not r.stdout
          and all(n in lines[0] for n in needles))
    check(ok, f"{what}: exit 1, one error line naming {needles}, nothing on stdout "
              f"(got rc={r.returncode}, {r.stderr.strip()!r}, stdout {r.stdout[:80]!r})")


with tempfile.TemporaryDirectory() as d:
    # --- 1. exported streams equal the numpy derivation ------------------------------
    streams = {}
    for name, rule, agg in (("topk4", "topk:4", "sum"), ("mass09", "mass:0.9", "sum"), ("topk4max", "topk:4", "max")):
        out = os.path.join(d, f"{name}.oracleGeneral")
        r = run("export", "--trace", TRACE, "--page-size", 16, "--access", rule, "--format", "libcachesim", "--out", out,
                "--agg", agg)
        check(r.returncode == 0, f"export {rule} --agg {agg}: exit 0 ({r.stderr.strip()})")
        if r.returncode != 0:
            continue
        got = np.fromfile(out, dtype=REC)
        want, cov = derive(TRACE, 16, rule, agg)
        same = got.shape == want.shape and all(np.array_equal(got[f], want[f]) for f in REC.names)
        if not same and got.shape == want.shape:
            bad = np.nonzero(got != want)[0]
            print(f"  {name}: {bad.size} records differ, first at {bad[0]}: got {got[bad[0]]}, want {want[bad[0]]}")
        check(same, f"export {rule} --agg {agg}: {got.size} records equal the numpy derivation ({want.size})")
        info = dict(l.split(" ", 1) for l in r.stdout.splitlines() if l.split(" ", 1)[0] in ("requests", "objects"))
        check(int(info.get("requests", -1)) == want.size, f"export {rule}: prints the number of requests")
        check(int(info.get("objects", -1)) == np.unique(want["id"]).size, f"export {rule}: prints the number of objects")
        printed = [l for l in r.stdout.splitlines() if l.startswith("covered mass ")]
        check(printed and abs(float(printed[0].split()[-1]) - cov) < 2e-6,
              f"export {rule}: covered mass {printed} vs numpy {cov:.6f}")
        streams[name] = (out, want)
        print(f"{name}: {want.size} requests, {np.unique(want['id']).size} objects, covered mass {cov:.4f}")
    if "topk4" in streams and "mass09" in streams:
        # mean picks the same pages as sum
        out = os.path.join(d, "topk4mean.oracleGeneral")
        run("export", "--trace", TRACE, "--page-size", 16, "--access", "topk:4", "--out", out, "--agg", "mean")
        check(open(out, "rb").read() == open(streams["topk4"][0], "rb").read(), "--agg mean exports the --agg sum stream")

    # A sparse (top-k) trace, captured now when the model is at hand.
    models = os.environ.get("KVSCOPE_MODELS", os.path.join(os.path.dirname(root), "shared", "models"))
    model = os.path.join(models, "stories260K", "stories260K.bin")
    if os.path.exists(model):
        tk = os.path.join(d, "topk.kvt")
        r = run("trace", "--model", model, "--prompt", "Once upon a time", "-n", 80, "--topk", 12, "--out", tk)
        check(r.returncode == 0, f"capture a top-k trace ({r.stderr.strip()[-200:]})")
        for rule, agg in (("topk:3", "sum"), ("mass:0.8", "max")):
            out = os.path.join(d, "tk.oracleGeneral")
            r = run("export", "--trace", tk, "--page-size", 4, "--access", rule, "--out", out, "--agg", agg)
            want, cov = derive(tk, 4, rule, agg)
            got = np.fromfile(out, dtype=REC) if r.returncode == 0 else np.zeros(0, REC)
            same = got.shape == want.shape and all(np.array_equal(got[f], want[f]) for f in REC.names)
            check(same, f"top-k trace, export {rule} --agg {agg}: {got.size} records equal the numpy derivation ({want.size})")
    else:
        print(f"note: {model} absent, top-k trace check skipped")

    # --- 2. miss counts against the reference caches -----------------------------------
    for name in ("topk4", "mass09"):
        if name not in streams:
            continue
        path, recs = streams[name]
        ids, nxt = [int(x) for x in recs["id"]], [int(x) for x in recs["next"]]
        n_obj = len(set(ids))
        for policy in ("lru", "fifo", "belady-page", "lfu", "arc", "s3fifo"):
            for cap in (40, 200, 480):
                j, err = sim_stream(path, policy, cap)
                want = REFS[policy](ids, nxt, cap)
                check(j is not None and j["misses"] == want and j["requests"] == len(ids),
                      f"{name} {policy} capacity {cap}: misses {j and j['misses']} vs reference {want} ({err})")
            j, _ = sim_stream(path, policy, n_obj)
            check(j is not None and j["misses"] == n_obj, f"{name} {policy}: capacity >= objects misses once per object")
        lines = []
        for cap in (40, 200, 480):
            ms = {p: sim_stream(path, p, cap)[0]["misses"] for p in REFS}
            lines.append(f"c={cap}: " + " ".join(f"{p} {m}" for p, m in ms.items()))
            check(all(ms["belady-page"] <= m for m in ms.values()), f"{name} c={cap}: belady-page misses least: {ms}")
        print(f"{name} ({len(ids)} requests) misses " + "; ".join(lines))
        # S3-FIFO parameters reach the policy
        for params in (("move_threshold=2",), ("small_ratio=0.25", "ghost_ratio=0.5"), ("move_threshold=2", "fill_main=1"),
                       ("ghost_ratio=0",)):
            kw = {k: (int(v) if k == "move_threshold" else float(v)) for k, v in (p.split("=") for p in params)}
            kw = {{"move_threshold": "threshold"}.get(k, k): v for k, v in kw.items()}
            j, err = sim_stream(path, "s3fifo", 200, *params)
            want = ref_s3fifo(ids, nxt, 200, **kw)
            check(j is not None and j["misses"] == want, f"{name} s3fifo {params}: misses {j and j['misses']} vs {want} ({err})")

    # --- 3. hand-made streams with closed-form answers ---------------------------------
    hand = os.path.join(d, "hand.oracleGeneral")
    C, R = 7, 5
    cyc = [i % (C + 1) for i in range(R * (C + 1))]  # C+1 objects in a cycle
    write_stream(hand, cyc)
    for p in ("lru", "fifo"):
        j, err = sim_stream(hand, p, C)
        check(j is not None and j["misses"] == R * (C + 1), f"cyclic C+1 objects, {p} capacity C misses every time ({j and j['misses']})")
    j, _ = sim_stream(hand, "belady-page", C)
    # MIN on a cycle of C+1: misses at requests 0..C (cold), then at 2C, 3C, ... (it evicts
    # the object needed last, so each miss buys C - 1 hits)
    want = C + (len(cyc) - 1) // C
    check(j is not None and j["misses"] == want == ref_belady(cyc, next_of(cyc), C),
          f"cyclic, belady-page misses {j and j['misses']} vs closed form {want}")
    for p in REFS:
        j, _ = sim_stream(hand, p, C + 1)
        check(j is not None and j["misses"] == C + 1, f"cyclic, {p} with room for all: only cold misses")
    rep = [5] * 10 + [6] * 10
    write_stream(hand, rep)
    for p in REFS:
        j, _ = sim_stream(hand, p, 1)
        check(j is not None and j["misses"] == 2, f"immediate repeats hit under {p} (capacity 1)")
    # LFU keeps the frequent object: a hot object among a scan, capacity 2
    scan = []
    for i in range(50):
        scan += [1000, 1000, i]
    write_stream(hand, scan)
    j, _ = sim_stream(hand, "lfu", 2)
    check(j is not None and j["misses"] == 51, f"lfu keeps the hot object: {j and j['misses']} misses (51)")
    # S3-FIFO: a one-hit scan does not flush a reused working set out of the main queue
    ws = list(range(8))
    seq = ws * 3 + list(range(100, 400)) + ws * 2
    write_stream(hand, seq)
    j_s3, _ = sim_stream(hand, "s3fifo", 10)
    j_lru, _ = sim_stream(hand, "lru", 10)
    check(j_s3 is not None and j_lru is not None and j_s3["misses"] < j_lru["misses"] and
          j_s3["misses"] == ref_s3fifo(seq, next_of(seq), 10),
          f"s3fifo resists a scan: {j_s3 and j_s3['misses']} < lru {j_lru and j_lru['misses']}")
    # ARC adapts: the same scan-resistance test (ARC keeps the twice-used set in T2)
    j_arc, _ = sim_stream(hand, "arc", 10)
    check(j_arc is not None and j_arc["misses"] < j_lru["misses"] and j_arc["misses"] == ref_arc(seq, next_of(seq), 10),
          f"arc resists a scan: {j_arc and j_arc['misses']} < lru {j_lru and j_lru['misses']}")
    # text output
    r = run("sim", "--page-stream", hand, "--policy", "lru", "--param", "capacity=10")
    check(r.returncode == 0 and "requests/s" in r.stdout and "miss ratio" in r.stdout, f"text output: {r.stdout!r}")

    # --- 4. a cache policy through the trace replay (sim/pages.cpp replay_cache) -------
    if "topk4" in streams:
        path, recs = streams["topk4"]
        r = run("sim", "-t", TRACE, "-p", "lru", "-b", 64, "--page-size", 16, "--access", "topk:4", "--json")
        if r.returncode == 0:
            res = json.loads(r.stdout)
            res = res[0] if isinstance(res, list) else res
            cap = (64 // 16) * 5 * 4
            j, _ = sim_stream(path, "lru", cap)
            check(res["requests"] == recs.size and res["misses"] == j["misses"] and res["fetches"] == j["misses"],
                  f"sim -p lru -b 64 --page-size 16: requests/misses {res['requests']}/{res['misses']} = page stream at "
                  f"capacity {cap}: {recs.size}/{j['misses']}")
            check(res["bytes_fetched"] == j["misses"] * 16 * 2 * 8 * 2, "bytes fetched = misses x page x K,V fp16 rows")
            _, cov = derive(TRACE, 16, "topk:4")
            check(abs(res["retained_mass"] - cov) < 1e-9, f"retained mass = covered mass {res['retained_mass']} vs {cov}")
        else:
            check(False, f"sim -p lru on the trace: {r.stderr.strip()}")
        expect_error(["sim", "-t", TRACE, "-p", "lru", "-b", 8, "--page-size", 16], ["budget 8"], "budget under one page")
        expect_error(["sim", "-t", TRACE, "-p", "lru", "-b", 64, "--page-size", 16, "--access", "top:4"], ["top:4"],
                     "bad access rule")

    # --- 5. bad inputs ----------------------------------------------------------------
    trunc = os.path.join(d, "trunc.oracleGeneral")
    write_stream(trunc, [1, 2, 3])
    with open(trunc, "ab") as f:
        f.write(b"\0" * 5)
    expect_error(["sim", "--page-stream", trunc, "--policy", "lru", "--param", "capacity=4"], [trunc, "offset 72", "24"],
                 "truncated file")
    zero = os.path.join(d, "zero.oracleGeneral")
    write_stream(zero, [1, 2, 3], sizes=[1, 0, 1])
    expect_error(["sim", "--page-stream", zero, "--policy", "lru", "--param", "capacity=4"], [zero, "offset 24", "size 0"],
                 "object size 0")
    expect_error(["sim", "--page-stream", hand, "--policy", "lru"], ["capacity"], "capacity missing")
    expect_error(["sim", "--page-stream", hand, "--policy", "lru", "--param", "capacity=0"], ["capacity"], "capacity 0")
    expect_error(["sim", "--page-stream", hand, "--policy", "lru", "--param", "capacity=2.5"], ["capacity"], "capacity 2.5")
    expect_error(["sim", "--page-stream", hand, "--policy", "h2o", "--param", "capacity=4"], ["'h2o'", "lru", "s3fifo"],
                 "non-cache policy")
    expect_error(["sim", "--page-stream", hand, "--policy", "lruu", "--param", "capacity=4"], ["lruu"], "unknown policy")
    expect_error(["sim", "--page-stream", hand, "--policy", "s3fifo", "--param", "capacity=4", "--param", "small=0.2"],
                 ["small"], "unknown cache parameter")
    expect_error(["sim", "--page-stream", hand, "--policy", "lru", "--param", "capacity=4", "-b", 8], ["--budget"],
                 "--budget with --page-stream")
    expect_error(["sim", "--page-stream", os.path.join(d, "missing.og"), "--policy", "lru", "--param", "capacity=4"],
                 ["missing.og"], "missing file")
    expect_error(["export", "--trace", TRACE, "--out", os.path.join(d, "x"), "--format", "csv"], ["'csv'"], "unknown format")
    expect_error(["export", "--trace", TRACE, "--out", os.path.join(d, "x"), "--access", "topk:0"], ["topk:0"], "topk:0")
    expect_error(["export", "--trace", TRACE, "--out", os.path.join(d, "x"), "--access", "mass:1.5"], ["mass:1.5"], "mass:1.5")

print(f"{n_checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
