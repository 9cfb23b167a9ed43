#!/usr/bin/env python3
"""Replay-simulator speed, measured side by side in one run; prints ratios.

1. Attention entries per second (one core) for window, H2O, page-LRU and Quest on frames
   decoded beforehand, and end to end from the compressed file (bench_replay), on a dense
   synthetic llama3-8b-shaped trace and on the real default trace (Quest needs Q/K, which
   only the real trace has).
2. Decoded trace bytes consumed per second by the H2O replay vs memcpy of the same bytes.
3. Replay vs re-running the model over the same tokens: `kvscope sim --policy h2o` vs
   `kvscope generate` (same prompt, same number of steps, one thread), wall time of each
   process. stories260K (the default trace) and, when models/smollm2 exists, SmolLM2-135M.
4. The same H2O replay in NumPy (bench/h2o_numpy.py, all streams at once): outputs
   checked equal, time ratio.
5. Two policies on two threads vs one after the other (the machine has 2 cores).

usage: bench/sim_speed.py [--reps 5] [--build build] [--quick]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wall(cmd, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run(cmd)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_replay(exe, trace, reps, specs):
    out = run([exe, trace, str(reps)] + specs)
    return json.loads(out.stdout)


def show_replay(title, r):
    print(f"\n== {title}: {r['trace']} ({'synthetic' if r['synthetic'] else 'real'}, {r['mode']}, "
          f"{r['layers']} layers x {r['heads']} heads, context {r['context']}, {r['steps']} steps)")
    print(f"   decode entries {r['decode_entries']:,}; decoded bytes {r['decoded_bytes']:,}; file {r['file_bytes']:,}")
    memcpy_bps = r["decoded_bytes"] / r["t_memcpy"]
    print(f"   zstd+parse of every frame: {r['t_decode_all']:.3f} s; memcpy of the decoded bytes: {r['t_memcpy']:.4f} s "
          f"({memcpy_bps / 1e9:.2f} GB/s)")
    print(f"   {'policy':<12} {'B':>6} {'page':>4} {'entries/s in memory':>20} {'end to end':>12} "
          f"{'decode share':>12} {'bytes/s vs memcpy':>18}")
    for x in r["runs"]:
        share = 1 - x["t_in_memory"] / x["t_end_to_end"]
        print(f"   {x['policy']:<12} {x['budget']:>6} {x['page_size']:>4} {x['entries_per_s_in_memory']:>20.3e} "
              f"{x['entries_per_s_end_to_end']:>12.3e} {share:>11.0%} {x['decoded_bytes_per_s_in_memory'] / memcpy_bps:>17.1%}")
    for x in r["runs"]:
        if x.get("t_in_memory_timed", -1) > 0:
            print(f"   timing added to {x['policy']} B={x['budget']} (as llama3-8b on h100-sxm): "
                  f"{x['t_in_memory_timed'] / x['t_in_memory']:.3f}x the plain replay's time "
                  f"(+{x['t_in_memory_timed'] / x['t_in_memory'] - 1:.1%})")
    if "scaling" in r:
        s = r["scaling"]
        print(f"   two policies ({' + '.join(s['policies'])}): sequential {s['t_sequential']:.3f} s, two threads "
              f"{s['t_two_threads']:.3f} s -> speed-up {s['t_sequential'] / s['t_two_threads']:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller synthetic trace, fewer reps (smoke test)")
    a = ap.parse_args()
    kv = os.path.join(a.build, "cli", "kvscope")
    exe = os.path.join(a.build, "bench", "bench_replay")
    py = sys.executable
    reps = 2 if a.quick else a.reps
    default = os.path.join(ROOT, "traces", "stories260K-short-prompt.kvt")
    print(f"# bench/sim_speed.py --reps {reps}{' --quick' if a.quick else ''}; medians; one process at a time")
    with tempfile.TemporaryDirectory() as d:
        syn = os.path.join(d, "syn.kvt")
        layers, ctx, steps = ("1", "2048", "64") if a.quick else ("2", "4096", "256")
        run([kv, "synth", "--shape", "llama3-8b", "--layers", layers, "--context", ctx, "--steps", steps, "--mode", "dense",
             "-q", "-o", syn])
        B = str(int(ctx) // 8)
        r = bench_replay(exe, syn, reps, [f"h2o:{B}", f"window:{B}", f"lru:{B}:16", f"tova:{B}"])
        show_replay("1-2. synthetic, dense", r)
        r = bench_replay(exe, default, reps, ["h2o:64", "window:64", "lru:64:16", "quest:64:16"])
        show_replay("1-2. real default trace (with V: the output error is computed too)", r)

        print("\n== 3. replay vs re-running the model over the same tokens (wall time per process, 1 thread)")
        stories = os.path.join(os.environ.get("KVSCOPE_MODELS", os.path.join(ROOT, "..", "shared", "models")),
                               "stories260K", "stories260K.bin")
        cases = []
        if os.path.exists(stories):
            cases.append(("stories260K", stories, os.path.join(ROOT, "traces", "prompts", "stories_short.txt"), 508, default, 64))
        smol = os.path.join(ROOT, "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.exists(smol) and not a.quick:
            st = os.path.join(d, "smol.kvt")
            prompt = os.path.join(ROOT, "bench", "prompts", "smollm2_long.txt")
            run([kv, "trace", "--model", smol, "--prompt-file", prompt, "-n", "64", "--ignore-eos", "--dense", "-t", "2",
                 "-q", "--out", st])
            cases.append(("SmolLM2-135M", smol, prompt, 64, st, 128))
        for name, model, prompt, n, tr, budget in cases:
            t_model = wall([kv, "generate", "--model", model, "--prompt-file", prompt, "-n", str(n), "--ignore-eos", "-t", "1"],
                           reps)
            t_sim = wall([kv, "sim", "-q", "-t", tr, "-p", "h2o", "-b", str(budget)], reps)
            print(f"   {name:<13} model run {t_model:8.3f} s   h2o replay {t_sim:7.3f} s   replay is {t_model / t_sim:8.1f}x faster")

        print("\n== 4. H2O in NumPy (bench/h2o_numpy.py, all streams at once) vs kvscope, same trace, same budget")
        for tr, budget in ((default, 64), (syn, int(B))):
            np_out = json.loads(run([py, os.path.join(ROOT, "bench", "h2o_numpy.py"), tr, "--budget", str(budget), "--reps",
                                     str(min(reps, 3)), "--json"]).stdout)
            kv_out = json.loads(run([kv, "sim", "-q", "-t", tr, "-p", "h2o", "-b", str(budget), "--json"]).stdout)[0]
            same = abs(np_out["retained_mass"] - kv_out["retained_mass"]) < 1e-6 and np_out["evictions"] == kv_out["evictions"]
            rr = bench_replay(exe, tr, reps, [f"h2o:{budget}"])["runs"][0]
            print(f"   {os.path.basename(tr):<32} numpy {np_out['replay_s']:.3f} s, kvscope {rr['t_in_memory']:.3f} s "
                  f"(in memory, bounds off) -> {np_out['replay_s'] / rr['t_in_memory']:.1f}x; outputs equal: {same} "
                  f"(mass {np_out['retained_mass']:.9f} vs {kv_out['retained_mass']:.9f}, evictions "
                  f"{np_out['evictions']} vs {kv_out['evictions']})")


if __name__ == "__main__":
    main()
