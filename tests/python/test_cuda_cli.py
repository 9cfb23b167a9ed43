"""The CLI side of the CUDA path, which must behave on machines without a GPU too.

* `kvscope trace --device cuda` without a usable GPU (or in a build without the CUDA
  path) fails with exit 1 and one clear line: "kvscope: error: trace: --device cuda: ...".
* `--device auto` picks cuda when a GPU is present, else cpu; the trace header says which.
* `--no-trace` runs without --out; `--timing-json` writes the run's timings.
* `kvscope gpu-bench` exists in every build; without the CUDA path it says so.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refmodel as R  # noqa: E402

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def main():
    model = R.models_dir() / "stories260K" / "stories260K.bin"
    if not model.exists():
        print(f"SKIP: stories260K not found at {model}")
        sys.exit(R.SKIP)
    tmp = R.scratch_dir("kvscope-cuda-cli-")
    dev = R.run_kvscope(["gpu-bench", "devices"], check=False)
    cuda_build = "no CUDA path" not in dev.stderr
    if not cuda_build:
        check(dev.returncode == 1 and dev.stderr.strip().startswith("kvscope: error: gpu-bench: this build has no CUDA path"),
              f"gpu-bench without the CUDA path says so: {dev.stderr.strip()!r}")
        gpu = False
    else:
        check(dev.returncode == 0, f"gpu-bench devices runs (rc {dev.returncode})")
        d = json.loads(dev.stdout)
        gpu = len(d["devices"]) > 0
        check(gpu or bool(d["why"]), f"no device comes with a reason: {d['why']!r}")
    print(f"CUDA build: {cuda_build}, GPU: {gpu}")

    base = ["trace", "--model", model, "--prompt", "Once upon a time", "-n", 12, "-q"]
    out = tmp / "cuda.kvt"
    p = R.run_kvscope(base + ["--device", "cuda", "--out", out], check=False)
    if gpu:
        check(p.returncode == 0, f"--device cuda with a GPU works (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    else:
        lines = p.stderr.strip().splitlines()
        check(p.returncode == 1, f"--device cuda without a GPU exits 1 (rc {p.returncode})")
        check(len(lines) == 1 and lines[0].startswith("kvscope: error: trace: --device cuda: "), f"one clear error line: {lines}")
        want = "no CUDA device" if cuda_build else "this build has no CUDA path"
        check(want in p.stderr, f"the error says why ({want!r})")
        check(not out.exists() or out.stat().st_size == 0, "no trace file is written")

    auto = tmp / "auto.kvt"
    timing = tmp / "timing.json"
    p = R.run_kvscope(base + ["--device", "auto", "--out", auto, "--timing-json", timing], check=False)
    check(p.returncode == 0, f"--device auto works (rc {p.returncode}: {p.stderr.strip()[-300:]})")
    if p.returncode == 0:
        info = json.loads(R.run_kvscope(["trace-info", auto, "--json"]).stdout)
        want = "cuda" if gpu else "cpu"
        check(info["capture"]["device"] == want, f"auto picked {info['capture']['device']} (want {want})")
        check(info["complete"], "the auto trace is complete")
        t = json.loads(timing.read_text())
        for k in ("device", "traced", "steps", "prompt_tokens", "prefill_s", "decode_s", "total_s", "tok_s", "decode_tok_s"):
            check(k in t, f"timing JSON has {k}")
        check(t.get("traced") is True and t.get("steps") == 12, f"timing: traced, 12 steps ({t.get('steps')})")

    p = R.run_kvscope(["trace", "--model", model, "--prompt", "Once", "-n", 5, "-q", "--no-trace", "--timing-json", timing],
                      check=False)
    check(p.returncode == 0 and "ran (no trace)" in p.stderr, f"--no-trace runs without --out ({p.stderr.strip()[-200:]})")
    check(json.loads(timing.read_text()).get("traced") is False, "timing says traced: false")
    p = R.run_kvscope(["trace", "--model", model, "--prompt", "Once", "-n", 5, "-q"], check=False)
    check(p.returncode != 0 and "--out is required" in (p.stderr + p.stdout), "--out is still required when tracing")

    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
