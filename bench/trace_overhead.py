#!/usr/bin/env python3
"""Tracing cost, measured side by side in one run (medians of --reps, interleaved):
decode tokens/s with tracing off (kvscope generate) vs on (kvscope trace) per mode, and
trace bytes per attention entry. Default model: SmolLM2-135M (GGUF), prompt
bench/prompts/smollm2_long.txt, 64 steps.

usage: bench/trace_overhead.py [--model M] [--steps 64] [--reps 3] [--threads 2]
"""
import argparse, json, os, re, statistics, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompt", default=os.path.join(ROOT, "bench", "prompts", "smollm2_long.txt"))
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    kv = os.path.join(a.build, "cli", "kvscope")
    modes = {"off": None, "dense": ["--dense"], "topk64": ["--topk", "64"], "topk64+qkv": ["--topk", "64", "--with-qkv"],
             "dense+qkv": ["--dense", "--with-qkv"]}
    rates = {m: [] for m in modes}
    info = {}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.reps):
            for m, flags in modes.items():
                common = ["--model", a.model, "--prompt-file", a.prompt, "-n", str(a.steps), "--ignore-eos",
                          "--threads", str(a.threads)]
                if flags is None:
                    out = json.loads(subprocess.run([kv, "generate", *common, "--json"], check=True,
                                                    capture_output=True, text=True).stdout)
                    rates[m].append(out["decode_tokens_per_s"])
                else:
                    t = os.path.join(d, m + ".kvt")
                    p = subprocess.run([kv, "trace", *common, *flags, "-q", "--out", t], check=True,
                                       capture_output=True, text=True)
                    rates[m].append(float(re.search(r"decode ([\d.]+) tok/s", p.stderr).group(1)))
                    info[m] = json.loads(subprocess.run([kv, "trace-info", t, "--json"], check=True,
                                                        capture_output=True, text=True).stdout)
    base = statistics.median(rates["off"])
    print(f"# tracing overhead: {os.path.basename(a.model)}, {a.steps} steps, {a.threads} threads, median of {a.reps}")
    print(f"{'mode':<12}{'decode tok/s':>14}{'vs off':>9}{'overhead':>10}{'bytes/entry':>13}")
    for m in modes:
        r = statistics.median(rates[m])
        bpe = f"{info[m]['bytes_per_entry']:.4f}" if m in info else "-"
        print(f"{m:<12}{r:>14.2f}{r / base:>9.3f}{(base / r - 1) * 100:>9.1f}%{bpe:>13}")


if __name__ == "__main__":
    main()
