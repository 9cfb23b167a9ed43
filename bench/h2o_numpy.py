#!/usr/bin/env python3
"""H2O replayed in vectorised NumPy: the same numbers as

    kvscope sim -t TRACE --policy h2o --budget B --param recent_ratio=R

(token granularity, aggregation sum, no oracle bound), and how fast NumPy runs it.

usage: bench/h2o_numpy.py TRACE.kvt --budget B [--recent-ratio 0.5] [--reps 3] [--json]

The trace is read with traces/kvtrace.py and every decode row is decoded up front into
dense float32 arrays (timed apart: "decode"); the replay ("replay", median of --reps) then
handles all (layer, KV head) streams of a step at once as [streams, context] arrays:

* prefill: score = the group's summed column sums (float32, g = 0, 1, ... in order); the
  stream is evicted down to the budget: the last r = round(R * B) positions are kept, the
  P - B smallest scores among the rest go (ties: lower position) -- one stable argsort.
* decode step (cache of n = P + s entries): the new entry is appended with score 0; while
  over budget, one victim per stream = the smallest score among the resident entries
  outside the r most recent resident ones (ties: lower position); the step's full-cache
  row of each query head gives retained mass = sum over resident entries (float64); the
  row is renormalised over the resident entries (row * float32(1 / kept)), the group's
  rows are summed (float32) and added to the scores (float32).

Two facts make the decode step a plain argmin over a prefix:

1. the r most recent resident entries are always positions n - r .. n - 1. After the
   prefill those positions are resident (they were protected, or nothing was evicted);
   each step appends position n - 1 and protects the r most recent resident entries, so
   by induction the window n - r .. n - 1 is resident and is exactly the protected set.
   The candidates are therefore the resident entries among positions 0 .. n - r - 1.
2. an evicted entry never comes back and its score is never read again (the C++ keeps
   adding zero attention to it), so its score is set to +inf: then argmin over
   scores[:, :n - r] skips it with no mask, and returns the first minimum (= the lower
   position on ties), as the C++ comparator does.

Exactness: rows are f16 values (multiples of 2^-24, at most 1), so their float64 sum over
at most 2^20 entries is exact in any order; float32(1 / kept), the float32 products and
the float32 sums follow the C++ (which builds with -ffp-contract=off) operation by
operation, so scores -- and therefore evictions -- are bit-identical to kvscope's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "traces"))
import kvtrace  # noqa: E402


class Decoded:
    """A trace decoded for replay. colsum: float32 [S, G, P] (prefill column sums of each
    stream's query heads); rows[s - 1]: float32 [S, G, P + s], decode step s's full-cache
    rows (stream = layer * H_kv + KV head, query head = KV head * G + g)."""

    def __init__(self, path: str):
        with kvtrace.Trace(path) as t:
            i = t.info
            self.path = path
            self.n_layers, self.n_heads, self.n_kv_heads, self.group = i.n_layers, i.n_heads, i.n_kv_heads, i.group
            kvq = t.header.get("gqa", {}).get("kv_head_of_q_head")
            expect = [h // i.group for h in range(i.n_heads)]
            if kvq is not None and list(kvq) != expect:
                raise SystemExit(f"{path}: query head -> KV head map {kvq} is not h / group")
            if i.n_heads != i.n_kv_heads * i.group:
                raise SystemExit(f"{path}: {i.n_heads} heads is not {i.n_kv_heads} KV heads x group {i.group}")
            if t.n_steps == 0:
                raise SystemExit(f"{path}: trace has no steps")
            self.prompt_len = P = i.prompt_len
            self.n_steps = T = t.n_steps
            self.context = P + T - 1
            L, H = i.n_layers, i.n_heads
            self.streams = L * i.n_kv_heads
            colsum = np.zeros((L, H, P), dtype=np.float32)
            rows = [np.zeros((L, H, P + s), dtype=np.float32) for s in range(1, T)]
            dense = i.mode == "dense"
            seen = np.zeros((T, L), dtype=bool)
            for l in range(L):
                for sl in t.iter_layer(l):
                    seen[sl.step, l] = True
                    if sl.kind_code == kvtrace.PREFILL:
                        if sl.n_queries != P:
                            raise SystemExit(f"{path}: prefill of {sl.n_queries} queries, prompt of {P}")
                        colsum[l] = sl.colsum
                        continue
                    dst = rows[sl.step - 1][l]
                    for h, r in enumerate(sl.rows[:H]):  # decode: one stored row, H heads
                        if dense:
                            dst[h, :r.probs.size] = r.probs
                        else:
                            dst[h, r.keys] = r.probs
            if not seen.all():
                raise SystemExit(f"{path}: missing (step, layer) records")
        S, G = self.streams, self.group
        self.colsum = colsum.reshape(S, G, P)
        self.rows = [r.reshape(S, G, r.shape[-1]) for r in rows]
        # Attention entries of the decode rows: every (layer, query head) row of step s has P + s.
        self.entries = sum(L * H * r.shape[-1] for r in self.rows)
        self.n_rows = len(self.rows) * L * H


def recent_of(recent_ratio: float, budget: int) -> int:
    """std::lround(recent_ratio * budget): halves away from zero (Python's round() would
    round 6.5 to 6)."""
    return int(math.floor(recent_ratio * budget + 0.5))


def replay(d: Decoded, budget: int, recent_ratio: float) -> dict:
    S, G, P, ctx = d.streams, d.group, d.prompt_len, d.context
    recent = recent_of(recent_ratio, budget)
    sidx = np.arange(S)
    scores = np.zeros((S, ctx), dtype=np.float32)  # evicted entries: +inf
    resident = np.zeros((S, ctx), dtype=np.float32)  # 1.0 resident, 0.0 not (yet / any more)
    kept = np.empty((S, G), dtype=np.float64)
    kept_sum = np.zeros((S, G), dtype=np.float64)  # retained mass summed over decode steps
    evictions = 0

    # Prefill: scores = group-summed column sums (float32, in g order), evict to the budget.
    np.copyto(scores[:, :P], d.colsum[:, 0])
    for g in range(1, G):
        scores[:, :P] += d.colsum[:, g]
    resident[:, :P] = 1.0
    n_res = P
    if n_res > budget:
        k = n_res - budget
        cand = n_res - recent  # every prompt entry is resident: the protected ones are the last r
        victims = np.argsort(scores[:, :cand], axis=1, kind="stable")[:, :k]
        scores[sidx[:, None], victims] = np.inf
        resident[sidx[:, None], victims] = 0.0
        evictions += S * k
        n_res = budget
    any_evicted = evictions > 0

    for s, rows in enumerate(d.rows, start=1):
        n = P + s
        resident[:, n - 1] = 1.0  # scores[:, n - 1] is still 0
        n_res += 1
        if n_res > budget:
            head = scores[:, :n - recent]
            for _ in range(n_res - budget):  # 1 in every decode step
                v = head.argmin(axis=1)  # first minimum: ties go to the lower position
                head[sidx, v] = np.inf
                resident[sidx, v] = 0.0
            evictions += S * (n_res - budget)
            n_res = budget
            any_evicted = True
        # The row over the resident entries (+0 elsewhere); all of it while nothing is evicted.
        m = np.multiply(rows, resident[:, None, :n]) if any_evicted else rows
        np.add.reduce(m, axis=2, dtype=np.float64, out=kept)  # exact: f16 values, see above
        kept_sum += kept
        if kept.all():
            inv = (1.0 / kept).astype(np.float32)
        else:  # a row with no mass left on the resident entries renormalises to zeros
            inv = np.divide(1.0, kept, out=np.zeros_like(kept), where=kept > 0).astype(np.float32)
        m = np.multiply(m, inv[:, :, None], out=m if m is not rows else None)  # float32 row * float32(1/kept)
        agg = m[:, 0] + m[:, 1] if G > 1 else m[:, 0].copy()
        for g in range(2, G):
            agg += m[:, g]
        scores[:, :n] += agg  # evicted: inf + 0 = inf
    n_steps = len(d.rows)
    per_head = kept_sum.sum(axis=1) / (n_steps * G) if n_steps else np.ones(S)
    per_head = per_head.reshape(d.n_layers, d.n_kv_heads)
    return {"retained_mass": float(kept_sum.sum()) / d.n_rows if d.n_rows else 1.0,
            "retained_per_layer": per_head.mean(axis=1).tolist(),
            "retained_per_head": per_head.tolist(),
            "evictions": int(evictions), "recent": recent}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="H2O replay in NumPy (matches kvscope sim --policy h2o).")
    ap.add_argument("trace")
    ap.add_argument("--budget", "-b", type=int, required=True)
    ap.add_argument("--recent-ratio", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = ap.parse_args(argv)
    if not (0.0 <= a.recent_ratio <= 1.0):
        ap.error(f"--recent-ratio {a.recent_ratio} outside [0, 1]")
    if a.reps < 1:
        ap.error("--reps must be at least 1")

    t0 = time.perf_counter()
    try:
        d = Decoded(a.trace)
    except kvtrace.TraceError as e:
        print(f"h2o_numpy: error: {e}", file=sys.stderr)
        return 1
    decode_s = time.perf_counter() - t0
    if not (1 <= a.budget <= d.context):
        ap.error(f"budget {a.budget} must be between 1 and the trace's context of {d.context} tokens")

    times, res = [], None
    for _ in range(a.reps):
        t0 = time.perf_counter()
        r = replay(d, a.budget, a.recent_ratio)
        times.append(time.perf_counter() - t0)
        if res is not None and r != res:
            raise SystemExit("h2o_numpy: replay is not deterministic")
        res = r
    replay_s = statistics.median(times)
    out = {
        "trace": a.trace,
        "policy": "h2o",
        "budget": a.budget,
        "recent_ratio": a.recent_ratio,
        "recent": res["recent"],
        "layers": d.n_layers,
        "heads": d.n_heads,
        "kv_heads": d.n_kv_heads,
        "streams": d.streams,
        "prompt_len": d.prompt_len,
        "steps": d.n_steps,
        "context": d.context,
        "rows": d.n_rows,
        "entries": d.entries,
        "retained_mass": res["retained_mass"],
        "evictions": res["evictions"],
        "retained_per_layer": res["retained_per_layer"],
        "retained_per_head": res["retained_per_head"],
        "decode_s": decode_s,
        "replay_s": replay_s,
        "replay_times_s": times,
        "entries_per_s": d.entries / replay_s if replay_s > 0 else None,
        "numpy": np.__version__,
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"trace          {a.trace}: {d.n_layers} layers, {d.n_heads}/{d.n_kv_heads} heads ({d.streams} streams), "
          f"prompt {d.prompt_len}, {d.n_steps} steps, context {d.context}")
    print(f"policy         h2o, budget {a.budget}, recent_ratio {a.recent_ratio} (recent window {res['recent']})")
    print(f"retained_mass  {res['retained_mass']:.12f}  (mean over {d.n_rows} decode rows)")
    print(f"evictions      {res['evictions']}")
    print(f"decode         {decode_s * 1e3:.1f} ms  (read + densify {d.n_rows} rows to float32)")
    print(f"replay         {replay_s * 1e3:.2f} ms  (median of {a.reps}: "
          + ", ".join(f"{x * 1e3:.2f}" for x in times) + ")")
    print(f"entries/s      {d.entries / replay_s / 1e6:.1f} M  ({d.entries} attention entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
