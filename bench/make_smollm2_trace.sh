#!/usr/bin/env bash
# A long-context trace of SmolLM2-135M for benchmarks (not committed: too large):
# ~2,000-token prompt (bench/prompts/smollm2_2k.txt) + 256 steps, sparse top-64 with the
# default prefill window, so the final context is >= 2,048 tokens.
# usage: bench/make_smollm2_trace.sh [OUT]   (default: out/smollm2-2k-top64.kvt)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
OUT=${1:-out/smollm2-2k-top64.kvt}
mkdir -p "$(dirname "$OUT")"
KV=${KVSCOPE_BIN:-build/cli/kvscope}
$KV trace --model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --prompt-file bench/prompts/smollm2_2k.txt \
  -n 256 --ignore-eos --topk 64 --out "$OUT"
$KV trace-info "$OUT"
