#!/usr/bin/env bash
# Regenerates the default traces committed in traces/ — byte for byte (the capture is
# deterministic: greedy decoding, fixed zstd level, results independent of the thread
# count). Both are dense fp16 with Q/K/V and fill stories260K's whole 512-token context:
#   short prompt: 5 prompt tokens (BOS + "Once upon a time"), 508 steps -> context 512
#   long prompt:  429 prompt tokens, 84 steps -> context 512
# usage: scripts/make_default_traces.sh [OUT_DIR]   (default: traces/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
OUT=${1:-traces}
KV=${KVSCOPE_BIN:-build/cli/kvscope}
MODEL=${KVSCOPE_MODELS:-$root/../shared/models}/stories260K/stories260K.bin
$KV trace --model "$MODEL" --prompt-file traces/prompts/stories_short.txt -n 508 --ignore-eos \
  --dense --with-qkv --zstd-level 19 -q --out "$OUT/stories260K-short-prompt.kvt"
$KV trace --model "$MODEL" --prompt-file traces/prompts/stories_long.txt -n 84 --ignore-eos \
  --dense --with-qkv --zstd-level 19 -q --out "$OUT/stories260K-long-prompt.kvt"
