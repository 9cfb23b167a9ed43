#!/usr/bin/env bash
# bench/gpu.sh: checks and measurements of the CUDA path on a GPU machine (issue 7).
#
#   OUT=/some/folder bash bench/gpu.sh        (from the repository root)
#
# Needs build-gpu/cli/kvscope and build-gpu/tests/kvscope_tests (a CUDA build:
# BUILD_DIR=build-gpu scripts/build.sh -DCMAKE_CUDA_ARCHITECTURES=90 -DKVSCOPE_TESTS=ON)
# and stories260K in .devmodels/stories260K (or $KVSCOPE_MODELS, or ../shared/models).
# Parts (each survives the failure of the others; each command has a time limit, and the
# whole script stays under 6 minutes):
#   e  the GPU unit tests (kvscope_tests --gtest_filter='Cuda*')
#   a  the same prompts traced on cpu and cuda, compared by bench/gpu_compare.py
#      (logits, probabilities, top-k sets), teacher-forced logits from gpu-bench logits
#   b  decode-attention HBM bandwidth, Llama-3-8B layer shape, ctx 4k..32k x batch 1/4/16
#   c  trace emission on vs off (whole run, stories260K; and per kernel, from b)
#   d  tokens/s of the whole traced run, cuda vs cpu
# Writes $OUT/gpu.json (everything), $OUT/gpu.log (this output) and the raw files.
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-$ROOT/out/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
T_START=$(date +%s)
BUDGET=${GPU_SH_BUDGET:-330}  # seconds after which remaining parts are skipped
HARD=${GPU_SH_HARD:-345}      # no command runs past this (the summary follows in seconds)

say() { printf '\n=== %s (t=%ss)\n' "$*" "$(($(date +%s) - T_START))"; }
left() { echo $((BUDGET - ($(date +%s) - T_START))); }
# run LIMIT CMD...: runs with a time limit, logs the command and its exit code.
run() {
  local lim=$1 rem
  shift
  rem=$((HARD - ($(date +%s) - T_START)))
  if [ "$rem" -lt 5 ]; then
    echo "+ (skipped, out of time) $*"
    return 124
  fi
  [ "$rem" -lt "$lim" ] && lim=$rem
  echo "+ $*"
  timeout --kill-after=5 "$lim" "$@"
  local rc=$?
  [ $rc -ne 0 ] && echo "  -> exit code $rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  return $rc
}
status_file() { echo "$2" >"$OUT/status-$1.txt"; }

K=${KVSCOPE_BIN:-$ROOT/build-gpu/cli/kvscope}
TESTS=${KVSCOPE_TESTS_BIN:-$ROOT/build-gpu/tests/kvscope_tests}
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TORCH_CUBLAS=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib
[ -d "$TORCH_CUBLAS" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$TORCH_CUBLAS"
MODELS=""
for d in "$ROOT/.devmodels" "${KVSCOPE_MODELS:-}" "$ROOT/../shared/models"; do
  if [ -n "$d" ] && [ -f "$d/stories260K/stories260K.bin" ]; then MODELS=$d; break; fi
done
export KVSCOPE_MODELS="$MODELS" KVSCOPE_SOURCE_DIR="$ROOT"
M="$MODELS/stories260K/stories260K.bin"
PY=""
for p in /opt/torch/.venv/bin/python "$ROOT/.venv/bin/python" python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c "import numpy" 2>/dev/null; then PY=$p; break; fi
done

say "environment"
echo "root $ROOT; out $OUT; kvscope $K; tests $TESTS; model $M; python ${PY:-none}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 | head -5
[ -x "$K" ] || echo "MISSING: $K"
[ -x "$TESTS" ] || echo "MISSING: $TESTS"
[ -f "$M" ] || echo "MISSING: stories260K ($M)"
ldd "$K" 2>&1 | grep -E "cublas|cudart|not found" || true
run 30 "$K" gpu-bench devices >"$OUT/devices.json"
cat "$OUT/devices.json"

# ---- e: GPU unit tests ---------------------------------------------------------------
say "part e: kvscope_tests --gtest_filter='Cuda*'"
run 100 "$TESTS" --gtest_filter='Cuda*' --gtest_output="json:$OUT/tests.json" >"$OUT/tests.txt" 2>&1
status_file e "$?"
grep -vE "^\[ +(RUN|OK) +\]" "$OUT/tests.txt"

# ---- a: cpu vs cuda traces -----------------------------------------------------------
say "part a: cpu vs cuda traces of stories260K"
for spec in "short 200" "long 84"; do
  set -- $spec
  name=$1 n=$2
  [ "$(left)" -lt 200 ] && { echo "skipping $name: time budget"; continue; }
  for dev in cpu cuda; do
    run 60 "$K" trace -m "$M" --prompt-file "traces/prompts/stories_$name.txt" -n "$n" --ignore-eos --dense --with-qkv -q \
      --device "$dev" --out "$OUT/$name-$dev.kvt" --timing-json "$OUT/$name-$dev-timing.json"
  done
  for dev in cpu cuda; do
    run 60 "$K" gpu-bench logits -m "$M" --trace "$OUT/$name-cpu.kvt" --device "$dev" --out "$OUT/$name-logits-$dev.f32"
  done
  if [ -n "$PY" ]; then
    run 90 "$PY" bench/gpu_compare.py --cpu "$OUT/$name-cpu.kvt" --gpu "$OUT/$name-cuda.kvt" \
      --logits-cpu "$OUT/$name-logits-cpu.f32" --logits-gpu "$OUT/$name-logits-cuda.f32" --json "$OUT/compare-$name.json"
    status_file "a-$name" "$?"
  else
    echo "no python with numpy: comparison skipped"
  fi
done

# ---- b: decode attention bandwidth ----------------------------------------------------
say "part b: decode attention bandwidth (32 q heads, 8 kv heads, head_dim 128, fp16 KV, page 16)"
if [ "$(left)" -gt 60 ]; then
  run 150 "$K" gpu-bench attention --ctx 4096,8192,16384,32768 --batch 1,4,16 --peak-bw 4.8e12 --json "$OUT/attention.json"
  status_file b "$?"
else
  echo "skipped: time budget"
fi

# ---- c, d: emission overhead and tokens/s of whole runs --------------------------------
say "parts c, d: whole runs on stories260K (short prompt, 508 steps: the full 512 context)"
for i in 1 2 3; do
  [ "$(left)" -lt 20 ] && { echo "skipping run $i: time budget"; break; }
  run 60 "$K" trace -m "$M" --prompt-file traces/prompts/stories_short.txt -n 508 --ignore-eos --dense --with-qkv -q \
    --device cuda --out "$OUT/run-cuda.kvt" --timing-json "$OUT/run-cuda-trace-$i.json"
  run 60 "$K" trace -m "$M" --prompt-file traces/prompts/stories_short.txt -n 508 --ignore-eos -q \
    --device cuda --no-trace --timing-json "$OUT/run-cuda-notrace-$i.json"
done
if [ "$(left)" -gt 15 ]; then
  run 90 "$K" trace -m "$M" --prompt-file traces/prompts/stories_short.txt -n 508 --ignore-eos --dense --with-qkv -q \
    --device cpu --out "$OUT/run-cpu.kvt" --timing-json "$OUT/run-cpu-trace-1.json"
  run 60 "$K" trace -m "$M" --prompt-file traces/prompts/stories_short.txt -n 508 --ignore-eos -q \
    --device cpu --no-trace --timing-json "$OUT/run-cpu-notrace-1.json"
fi

# ---- summary ----------------------------------------------------------------------------
say "summary"
if [ -n "$PY" ]; then
  "$PY" - "$OUT" "$(($(date +%s) - T_START))" <<'PYEOF'
import glob, json, os, statistics, sys
out, elapsed = sys.argv[1], int(sys.argv[2])
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except Exception as e:
        return {"error": f"{os.path.basename(p)}: {e}"}
def status(name):
    try:
        return int(open(os.path.join(out, f"status-{name}.txt")).read().strip())
    except Exception:
        return None
r = {"elapsed_s": elapsed, "devices": load(os.path.join(out, "devices.json"))}
# e
t = load(os.path.join(out, "tests.json"))
tests = []
for suite in t.get("testsuites", []):
    for c in suite.get("testsuite", []):
        st = "skipped" if c.get("result") == "SKIPPED" else ("failed" if c.get("failures") else "passed")
        tests.append({"name": f"{suite['name']}.{c['name']}", "status": st,
                      "failures": [x.get("failure", "")[:400] for x in c.get("failures", [])]})
r["tests"] = {"exit_code": status("e"), "cases": tests, "error": t.get("error")}
# a
r["compare"] = {n: load(os.path.join(out, f"compare-{n}.json")) for n in ("short", "long")}
# b
att = load(os.path.join(out, "attention.json"))
r["attention"] = att
# c, d
def runs(pat):
    xs = [load(p) for p in sorted(glob.glob(os.path.join(out, pat)))]
    return [x for x in xs if "total_s" in x]
ct, cn = runs("run-cuda-trace-*.json"), runs("run-cuda-notrace-*.json")
pt, pn = runs("run-cpu-trace-*.json"), runs("run-cpu-notrace-*.json")
med = lambda xs, k: statistics.median(x[k] for x in xs) if xs else None
ov = {"cuda_traced_s": med(ct, "total_s"), "cuda_untraced_s": med(cn, "total_s"),
      "cuda_traced_decode_tok_s": med(ct, "decode_tok_s"), "cuda_untraced_decode_tok_s": med(cn, "decode_tok_s"),
      "emit_wait_s": med(ct, "emit_wait_s")}
if ov["cuda_traced_s"] and ov["cuda_untraced_s"]:
    ov["run_overhead"] = ov["cuda_traced_s"] / ov["cuda_untraced_s"] - 1
pts = [p for p in att.get("points", []) if "us" in p] if isinstance(att, dict) else []
if pts:
    ov["kernel_overhead_max"] = max(p["emit_overhead"] for p in pts)
    ov["kernel_overhead_median"] = statistics.median(p["emit_overhead"] for p in pts)
ov["target"] = 0.15
r["emission_overhead"] = ov
tp = {"cuda_traced_tok_s": med(ct, "tok_s"), "cpu_traced_tok_s": med(pt, "tok_s"),
      "cuda_untraced_tok_s": med(cn, "tok_s"), "cpu_untraced_tok_s": med(pn, "tok_s"),
      "cuda_decode_tok_s": med(ct, "decode_tok_s"), "cpu_decode_tok_s": med(pt, "decode_tok_s")}
if tp["cuda_traced_tok_s"] and tp["cpu_traced_tok_s"]:
    tp["speedup_traced"] = tp["cuda_traced_tok_s"] / tp["cpu_traced_tok_s"]
r["throughput"] = tp
with open(os.path.join(out, "gpu.json"), "w") as f:
    json.dump(r, f, indent=1)
# readable summary
print(f"device: {[d.get('name') for d in r['devices'].get('devices', [])] if isinstance(r['devices'], dict) else r['devices']}")
npass = sum(c["status"] == "passed" for c in tests); nfail = sum(c["status"] == "failed" for c in tests); nskip = sum(c["status"] == "skipped" for c in tests)
print(f"(e) GPU tests: {npass} passed, {nfail} failed, {nskip} skipped (exit {status('e')})")
for c in tests:
    if c["status"] != "passed":
        print(f"      {c['status']}: {c['name']} {' | '.join(c['failures'])[:300]}")
for n, c in r["compare"].items():
    if "checks" in c:
        ch = c["checks"]
        lg = ch.get("logits", {})
        print(f"(a) {n}: same tokens for {c['steps']['same_tokens']}/{c['steps']['cpu']} steps; logits max rel {lg.get('max_rel_diff')} "
              f"[{'PASS' if lg.get('pass') else 'FAIL'}]; probs max {ch['probs']['max_abs_diff']:.3g} [{'PASS' if ch['probs']['pass'] else 'FAIL'}]; "
              f"top-k agree {ch['topk']['agree_share']:.4f} [{'PASS' if ch['topk']['pass'] else 'FAIL'}]")
    else:
        print(f"(a) {n}: {c.get('error')}")
if pts:
    print("(b) decode attention: ctx batch  us/call  GB/s  share of peak")
    for p in pts:
        print(f"      {p['ctx']:6d} {p['batch']:4d} {p['us']:9.2f} {p['bytes_per_s'] / 1e9:8.1f} {100 * p['peak_share']:6.1f}%  "
              f"{'>=70%' if p['peak_share'] >= 0.7 else '<70%'}")
else:
    print(f"(b) decode attention: no results ({att.get('error') if isinstance(att, dict) else att})")
print(f"(c) emission overhead: whole run {ov.get('run_overhead')}, kernel max {ov.get('kernel_overhead_max')} "
      f"median {ov.get('kernel_overhead_median')} (target <= 0.15)")
print(f"(d) tokens/s traced: cuda {tp['cuda_traced_tok_s']}, cpu {tp['cpu_traced_tok_s']}, speedup {tp.get('speedup_traced')}")
print(f"wrote {os.path.join(out, 'gpu.json')} ({elapsed} s)")
PYEOF
else
  echo "{\"error\": \"no python with numpy on this machine\", \"elapsed_s\": $(($(date +%s) - T_START))}" >"$OUT/gpu.json"
fi
echo "done in $(($(date +%s) - T_START)) s"
sleep 1  # let tee flush the log
