"""kvscope batch end to end: allocation policies on the default trace as llama3-8b on h100-sxm.

Reference: with every request arriving at t = 0 the schedule does not depend on step times,
so a plain-Python re-implementation of docs/batch.md's loop, fed the `full` policy's closed-
form footprint (blocks(t) = streams * ceil((P + t) / 16)), must give the binary's max batch,
preemptions, iterations, swap bytes and recomputed tokens exactly. Also: the printed table,
determinism of seeded Poisson arrivals, and the error contract.

Needs only the binary and the committed default trace.
"""
import json, math, os, subprocess, sys, tempfile

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
if not os.path.exists(kv):
    print(f"SKIP: no kvscope binary at {kv}")
    sys.exit(77)
trace = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
if not os.path.exists(trace):
    print(f"SKIP: no default trace at {trace}")
    sys.exit(77)

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


# llama3-8b: 32 layers x 8 KV heads, head_dim 128. The default trace: 5-token prompt, 508 steps.
STREAMS, P, STEPS, BS = 32 * 8, 5, 508, 16
BLOCK_BYTES = BS * 2 * 128 * 2
FULL = [STREAMS * math.ceil((P + t) / BS) for t in range(STEPS)]


def reference(n, total, alloc, mode, watermark=0.01):
    """docs/batch.md's engine, all arrivals at t = 0."""
    hold = (lambda i, t: max(FULL)) if alloc == "reserve" else (lambda i, t: FULL[t])

    def admit(i, free):
        need = hold(i, nxt[i])
        if need > free:
            return False
        if alloc == "paged-watermark":
            return free - need >= math.ceil(watermark * total - 1e-9)
        return True

    nxt, held, swapped, rec = [0] * n, [0] * n, [0] * n, [False] * n
    waiting, running, free = list(range(n)), [], total
    s = dict(iterations=0, max_batch=0, preemptions=0, bytes_swapped_out=0, bytes_swapped_in=0, recomputed_tokens=0,
             peak_blocks=0)
    done = 0
    while done < n:
        pre = False
        for i in running:
            need = hold(i, nxt[i])
            if need < held[i]:
                free += held[i] - need
                held[i] = need
        k = 0
        while k < len(running):
            i = running[k]
            need = hold(i, nxt[i])
            self_pre = False
            while need > held[i] + free:
                pre = True
                v = running.pop()
                free += held[v]
                if mode == "swap":
                    swapped[v] = held[v]
                    s["bytes_swapped_out"] += held[v] * BLOCK_BYTES
                else:
                    rec[v] = True
                held[v] = 0
                s["preemptions"] += 1
                waiting.append(v)
                waiting.sort()
                if v == i:
                    self_pre = True
                    break
            if self_pre:
                break
            free -= need - held[i]
            held[i] = need
            k += 1
        if not pre:
            while waiting:
                i = waiting[0]
                if not (hold(i, nxt[i]) <= free and (not running or admit(i, free))):
                    break
                waiting.pop(0)
                held[i] = hold(i, nxt[i])
                free -= held[i]
                running.append(i)
                s["bytes_swapped_in"] += swapped[i] * BLOCK_BYTES
                swapped[i] = 0
        s["peak_blocks"] = max(s["peak_blocks"], total - free)
        s["iterations"] += 1
        s["max_batch"] = max(s["max_batch"], len(running))
        still = []
        for i in running:
            if rec[i]:
                s["recomputed_tokens"] += P + nxt[i] - 1
                rec[i] = False
            nxt[i] += 1
            if nxt[i] == STEPS:
                done += 1
                free += held[i]
                held[i] = 0
            else:
                still.append(i)
        running = still
    return s


def batch(*args, cwd=root):
    return subprocess.run([kv, "batch", *args], cwd=cwd, capture_output=True, text=True)


with tempfile.TemporaryDirectory() as d:
    r = batch("--list-alloc")
    names = [l.split()[0] for l in r.stdout.splitlines() if l.strip()]
    check(r.returncode == 0 and {"reserve", "paged", "paged-watermark"} <= set(names), f"--list-alloc lists the policies: {names}")

    # KV memory for two full contexts (2 x 8192 blocks of 8 KiB), 8 requests.
    total = 2 * max(FULL)
    kvmem = str(total * BLOCK_BYTES)
    common = ["--trace", trace, "--repeat", "8", "--policy", "full", "--budget", "512", "--hw", "h100-sxm", "--as", "llama3-8b",
              "--kv-memory", kvmem]
    print(f"{'alloc':16} {'preempt':9} {'max batch':>9} {'preemptions':>11} {'iterations':>10} {'swap MB':>9} {'recomp tok':>10}  ref")
    for mode in ("swap", "recompute"):
        out = os.path.join(d, f"{mode}.json")
        allocs = ["reserve", "paged", "paged-watermark"]
        args = common + ["--preempt", mode, "--json", out, "--alloc-param", "watermark=0.3"]
        for a in allocs:
            args += ["--alloc", a]
        r = batch(*args)
        check(r.returncode == 0, f"{mode}: exit 0 ({r.stderr.strip()})")
        if r.returncode:
            continue
        rows = [l.split() for l in r.stdout.splitlines() if l.split() and l.split()[0] in allocs]
        check([x[0] for x in rows] == allocs, f"{mode}: one table row per --alloc, in order: {rows}")
        doc = json.load(open(out))
        check(doc["shape"] == "llama3-8b" and doc["profiles"][0]["max_blocks"] == max(FULL), "profile: closed-form footprint")
        for res in doc["results"]:
            ref = reference(8, total, res["alloc"], mode, watermark=0.3)
            got = {k: res[k] for k in ref}
            check(got == ref, f"{mode} {res['alloc']}: binary {got} vs reference {ref}")
            check(res["total_blocks"] == total and res["requests"] == 8, f"{mode} {res['alloc']}: pool and requests")
            check(res["generated_tokens"] == 8 * STEPS and res["makespan"] > 0, f"{mode} {res['alloc']}: tokens and time")
            check(abs(res["throughput"] - res["generated_tokens"] / res["makespan"]) <= 1e-9 * res["throughput"],
                  f"{mode} {res['alloc']}: throughput = tokens / makespan")
            print(f"{res['alloc']:16} {mode:9} {res['max_batch']:9} {res['preemptions']:11} {res['iterations']:10} "
                  f"{res['bytes_swapped_out'] / 1e6:9.1f} {res['recomputed_tokens']:10}  {'=' if got == ref else 'DIFFERS'}")
        by = {res["alloc"]: res for res in doc["results"]}
        check(by["reserve"]["max_batch"] == 2 and by["reserve"]["preemptions"] == 0, f"{mode}: reserve admits exactly 2, never preempts")
        check(by["paged"]["max_batch"] == 8 and by["paged"]["preemptions"] > 0, f"{mode}: paged admits all 8 and preempts")

    # Seeded Poisson arrivals: same seed, same bytes; another seed, other arrivals.
    outs = []
    for seed in ("3", "3", "4"):
        o = os.path.join(d, f"poisson{len(outs)}.json")
        r = batch(*common, "--alloc", "paged", "--rate", "20", "--seed", seed, "--json", o)
        check(r.returncode == 0, f"poisson seed {seed}: exit 0 ({r.stderr.strip()})")
        outs.append(open(o, "rb").read() if r.returncode == 0 else b"")
    check(outs[0] == outs[1] and outs[0], "same seed: byte-identical JSON")
    check(outs[0] != outs[2], "another seed: other arrivals")
    if outs[0]:
        arr = [q["arrival"] for q in json.loads(outs[0])["results"][0]["per_request"]]
        check(arr == sorted(arr) and arr[0] > 0, f"arrivals increase from t > 0: {arr[:3]}")

    bad = [
        (["--alloc", "pagd"], "unknown allocation policy 'pagd'"),
        (["--alloc", "paged", "--alloc-param", "watermark=0.5"], "--alloc-param.watermark: unknown parameter"),
        (["--alloc", "paged-watermark", "--alloc-param", "watermark=2"], "--alloc-param.watermark"),
        (["--alloc", "reserve", "--kv-memory", "1M"], "needs 8192 KV blocks"),
    ]
    for extra, expect in bad:
        args = [a for a in common]
        args[args.index("--kv-memory") + 1] = extra[extra.index("--kv-memory") + 1] if "--kv-memory" in extra else kvmem
        extra = [e for k, e in enumerate(extra) if not (e == "--kv-memory" or (k and extra[k - 1] == "--kv-memory"))]
        r = batch(*args, *extra)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        ok = r.returncode == 1 and len(lines) == 1 and lines[0].startswith("kvscope: error:") and expect in lines[0]
        check(ok, f"{extra}: exit 1, one error line naming '{expect}' (got rc={r.returncode}, {r.stderr.strip()!r})")

print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
sys.exit(1 if failures else 0)
