#!/usr/bin/env python3
"""Compares a CPU and a CUDA capture of the same run (bench/gpu.sh, part a).

Reads both traces with traces/kvtrace.py (numpy; the `zstandard` module, or, where it is
missing, a ctypes shim over libzstd.so.1, which the kvscope binary links anyway) and the
teacher-forced logits files of `kvscope gpu-bench logits` ([steps][vocab] float32).

Checks (fp16 tolerance: the CUDA path runs fp16 weights and activations with fp32
accumulation, the CPU path fp32 throughout; the trace stores probabilities in fp16):
  logits   max |gpu - cpu| / max(1, max |cpu|) per step          <= 2e-2
  probs    max |gpu - cpu| over stored attention entries          <= 1e-2
  top-k    the k largest keys of each (step, layer, head) row agree on >= 99 % of rows;
           a swap between keys whose CPU probabilities are within 2e-3 of the k-th
           largest (a near tie) counts as agreement, strict set equality is reported too
Rows are compared only while both runs produced the same tokens (greedy decoding can
diverge at a near tie; the step where it happens is reported).
Prints a summary, writes JSON (--json), exits 0 when every check passes, 1 otherwise.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zstd_shim():
    """A stand-in for the few `zstandard` calls kvtrace makes, over libzstd's C API."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    lib = ctypes.CDLL(name)
    lib.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
    lib.ZSTD_getFrameContentSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    m = types.ModuleType("zstandard")

    class ZstdError(Exception):
        pass

    def frame_content_size(src):
        src = bytes(src)
        n = lib.ZSTD_getFrameContentSize(src, len(src))
        if n >= (1 << 64) - 2:  # ZSTD_CONTENTSIZE_UNKNOWN / _ERROR
            return -1
        return n

    class ZstdDecompressor:
        def decompress(self, src, max_output_size=0):
            src = bytes(src)
            buf = ctypes.create_string_buffer(max(1, max_output_size))
            n = lib.ZSTD_decompress(buf, max_output_size, src, len(src))
            if lib.ZSTD_isError(n):
                raise ZstdError(lib.ZSTD_getErrorName(n).decode())
            return buf.raw[:n]

    m.ZstdError = ZstdError
    m.frame_content_size = frame_content_size
    m.ZstdDecompressor = ZstdDecompressor
    m.__version__ = "ctypes-shim"
    return m


def load_kvtrace():
    try:
        import zstandard  # noqa: F401
    except ImportError:
        sys.modules["zstandard"] = zstd_shim()
    sys.path.insert(0, os.path.join(ROOT, "traces"))
    import kvtrace
    return kvtrace


def topk_agree(pc, pg, k, tie):
    n = len(pc)
    k = min(k, n)
    order_c = np.lexsort((np.arange(n), -pc))[:k]
    order_g = np.lexsort((np.arange(n), -pg))[:k]
    sc, sg = set(order_c.tolist()), set(order_g.tolist())
    if sc == sg:
        return True, True
    kth = pc[order_c[-1]]
    diff = sc.symmetric_difference(sg)
    return False, all(abs(pc[j] - kth) <= tie for j in diff)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--logits-cpu")
    ap.add_argument("--logits-gpu")
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--tie", type=float, default=2e-3)
    ap.add_argument("--json")
    a = ap.parse_args()
    res = {"cpu": a.cpu, "gpu": a.gpu, "checks": {}}
    ok = True
    kvtrace = load_kvtrace()
    import zstandard
    res["zstd"] = getattr(zstandard, "__version__", "?")
    tc, tg = kvtrace.Trace(a.cpu), kvtrace.Trace(a.gpu)
    info = tc.info
    vocab = tc.header["model"]["vocab_size"]
    res["gpu_trace_complete"] = bool(tg.complete)
    if list(tc.header["prompt_ids"]) != list(tg.header["prompt_ids"]) or tc.info.n_heads != tg.info.n_heads:
        print("the traces are not of the same prompt and model")
        res["pass"] = False
        res["error"] = "different prompt or model"
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
        return 1
    # Tokens: compare while they agree.
    toks_c, toks_g = tc.tokens(), tg.tokens()
    P = info.prompt_len
    n_steps = min(tc.n_steps, tg.n_steps)
    same = 0
    for s in range(n_steps):
        if s == 0 or (P + s - 1 < len(toks_c) and P + s - 1 < len(toks_g) and toks_c[P + s - 1] == toks_g[P + s - 1]):
            same = s + 1
        else:
            break
    res["steps"] = {"cpu": tc.n_steps, "gpu": tg.n_steps, "same_tokens": same}
    # Logits (teacher-forced on the CPU trace's tokens: every step comparable).
    if a.logits_cpu and a.logits_gpu and os.path.exists(a.logits_cpu) and os.path.exists(a.logits_gpu):
        lc = np.fromfile(a.logits_cpu, dtype=np.float32).reshape(-1, vocab)
        lg = np.fromfile(a.logits_gpu, dtype=np.float32).reshape(-1, vocab)
        n = min(len(lc), len(lg))
        lc, lg = lc[:n], lg[:n]
        rel = np.abs(lg - lc).max(axis=1) / np.maximum(1.0, np.abs(lc).max(axis=1))
        am = float((lc.argmax(axis=1) == lg.argmax(axis=1)).mean())
        passed = bool(rel.max() <= 2e-2) and n > 0
        res["checks"]["logits"] = {"steps": int(n), "max_rel_diff": float(rel.max()), "mean_rel_diff": float(rel.mean()),
                                   "argmax_agree": am, "tolerance": 2e-2, "pass": passed}
        ok &= passed
    else:
        res["checks"]["logits"] = {"pass": False, "error": "logits files missing"}
        ok = False
    # Attention rows.
    max_p, rows, strict, tol_agree = 0.0, 0, 0, 0
    diffs = []
    max_lse, max_cs = 0.0, 0.0
    for s in range(same):
        for layer in range(info.n_layers):
            a_sl, b_sl = tc.step_layer(s, layer), tg.step_layer(s, layer)
            if a_sl.colsum is not None and b_sl.colsum is not None:
                max_cs = max(max_cs, float(np.abs(a_sl.colsum - b_sl.colsum).max()))
            for r in range(a_sl.n_rows):
                for h in range(info.n_heads):
                    ra, rb = a_sl.row(r, h), b_sl.row(r, h)
                    pc = ra.dense().astype(np.float64)
                    pg = rb.dense().astype(np.float64)
                    d = float(np.abs(pc - pg).max())
                    max_p = max(max_p, d)
                    diffs.append(d)
                    max_lse = max(max_lse, abs(float(ra.lse) - float(rb.lse)))
                    st, tl = topk_agree(pc, pg, a.topk, a.tie)
                    rows += 1
                    strict += st
                    tol_agree += tl
    share = tol_agree / rows if rows else 0.0
    res["checks"]["probs"] = {"rows": rows, "max_abs_diff": max_p, "p99_abs_diff": float(np.percentile(diffs, 99)) if diffs else None,
                              "max_lse_diff": max_lse, "max_colsum_diff": max_cs, "tolerance": 1e-2,
                              "pass": bool(rows > 0 and max_p <= 1e-2)}
    res["checks"]["topk"] = {"k": a.topk, "rows": rows, "agree_share": share, "strict_share": strict / rows if rows else 0.0,
                             "tie_tolerance": a.tie, "target": 0.99, "pass": bool(rows > 0 and share >= 0.99)}
    ok &= res["checks"]["probs"]["pass"] and res["checks"]["topk"]["pass"]
    res["pass"] = bool(ok)
    lg_ = res["checks"]["logits"]
    print(f"compare {os.path.basename(a.cpu)} vs {os.path.basename(a.gpu)}: steps cpu {tc.n_steps}, gpu {tg.n_steps}, same tokens for {same}")
    if "max_rel_diff" in lg_:
        print(f"  logits: max rel diff {lg_['max_rel_diff']:.3g} (tol 2e-2), argmax agree {lg_['argmax_agree']:.3f}  {'PASS' if lg_['pass'] else 'FAIL'}")
    else:
        print(f"  logits: {lg_.get('error')}  FAIL")
    pr, tk = res["checks"]["probs"], res["checks"]["topk"]
    print(f"  probs: {rows} rows, max |diff| {max_p:.3g} (tol 1e-2), lse max diff {max_lse:.3g}, colsum max diff {max_cs:.3g}  {'PASS' if pr['pass'] else 'FAIL'}")
    print(f"  top-{a.topk}: agree {share:.4f} (strict {tk['strict_share']:.4f}), target 0.99  {'PASS' if tk['pass'] else 'FAIL'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # a missing or broken trace: say so in the JSON, keep the run going
        import traceback
        traceback.print_exc()
        args = sys.argv
        if "--json" in args and args.index("--json") + 1 < len(args):
            with open(args[args.index("--json") + 1], "w") as f:
                json.dump({"pass": False, "error": f"{type(e).__name__}: {e}"}, f, indent=1)
        sys.exit(1)
