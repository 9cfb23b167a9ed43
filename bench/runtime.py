#!/usr/bin/env python3
"""Model-runtime throughput, measured side by side in one run; prints medians and ratios.

  stories260K: full 512-token context decode, one thread, kvscope vs a minimal C
               forward pass (bench/ref_llama2c.c) built with -O3 and with -Ofast.
  SmolLM2-135M: prefill and decode tokens/s on 1 and 2 threads.

usage: bench/runtime.py [--build build] [--reps 5]
"""
import argparse, json, os, re, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default=os.environ.get("KVSCOPE_MODELS", os.path.join(ROOT, "..", "shared", "models")))
    a = ap.parse_args()
    kv = os.path.join(a.build, "cli", "kvscope")
    stories = os.path.join(a.models, "stories260K", "stories260K.bin")
    print(f"# kvscope runtime benchmark ({a.reps} reps, medians); cpu: {cpu_name()}")
    if os.path.exists(stories):
        rates = {"kvscope (1 thread)": [], "C ref -O3": [], "C ref -Ofast": []}
        for _ in range(a.reps):  # interleaved so that machine noise hits all alike
            out = json.loads(run([kv, "generate", "--model", stories, "--prompt", "", "--max-new-tokens", "511",
                                  "--ignore-eos", "--threads", "1", "--json"]))
            # One prefill token + decode steps: count the forwards and their time.
            n = 1 + out["decode_steps"]
            t = out["prefill_seconds"] + out["decode_seconds"]
            rates["kvscope (1 thread)"].append(n / t)
            for v in ("O3", "Ofast"):
                r = run([os.path.join(a.build, "bench", f"ref_llama2c_{v}"), stories, "512"])
                rates[f"C ref -{v}"].append(float(re.search(r"tok_per_s=([\d.]+)", r).group(1)))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print("\n## stories260K, 512-token context, greedy decode, 1 thread")
        print(f"{'runner':<22}{'tok/s (median)':>16}{'vs C -O3':>10}{'vs C -Ofast':>13}")
        for k, v in med.items():
            print(f"{k:<22}{v:>16.0f}{v / med['C ref -O3']:>10.2f}{v / med['C ref -Ofast']:>13.2f}")
    else:
        print(f"(stories260K not found at {stories}: skipped)")

    smol = os.path.join(ROOT, "models", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(smol):
        prompt = os.path.join(ROOT, "bench", "prompts", "smollm2_long.txt")
        print("\n## SmolLM2-135M (Q4_1 GGUF dequantized to fp32), prompt from bench/prompts/smollm2_long.txt")
        print(f"{'threads':<9}{'prompt tok':>11}{'prefill tok/s':>15}{'decode tok/s':>14}")
        res = {}
        for th in (1, 2):
            pre, dec = [], []
            for _ in range(max(1, a.reps // 2)):
                out = json.loads(run([kv, "generate", "--model", smol, "--prompt-file", prompt, "--max-new-tokens", "64",
                                      "--ignore-eos", "--threads", str(th), "--json"]))
                pre.append(out["prefill_tokens_per_s"])
                dec.append(out["decode_tokens_per_s"])
            res[th] = (statistics.median(pre), statistics.median(dec), len(out["prompt_ids"]))
            print(f"{th:<9}{res[th][2]:>11}{res[th][0]:>15.1f}{res[th][1]:>14.1f}")
        print(f"2-thread speed-up: prefill {res[2][0] / res[1][0]:.2f}x, decode {res[2][1] / res[1][1]:.2f}x")
    else:
        print(f"(SmolLM2 GGUF not found at {smol}: run scripts/setup.sh)")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
