#!/usr/bin/env bash
# Page-cache replay speed: exports a trace's page-access stream (libCacheSim oracleGeneral)
# and runs `kvscope sim --page-stream` with lru, fifo, lfu, arc, s3fifo and belady-page at
# a few capacities, printing requests/s (best of REPEAT runs; the loop alone is timed).
# usage: bench/page_cache_speed.sh [TRACE] [PAGE_SIZE] [ACCESS] [CAPACITIES]
#   defaults: traces/stories260K-short-prompt.kvt, page size 1 (one token per page, the
#   largest stream of the default trace: ~615k requests), topk:64, capacities 1000,4000
#   env: KVSCOPE_BIN (default build/cli/kvscope), REPEAT (default 3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
KV=${KVSCOPE_BIN:-build/cli/kvscope}
TRACE=${1:-traces/stories260K-short-prompt.kvt}
PAGE=${2:-1}
ACCESS=${3:-topk:64}
CAPS=${4:-1000,4000}
REPEAT=${REPEAT:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stream="$tmp/pages.oracleGeneral"
echo "# $TRACE, page size $PAGE, access $ACCESS"
$KV export --trace "$TRACE" --page-size "$PAGE" --access "$ACCESS" --format libcachesim --out "$stream" | grep -E '^(requests|objects)'
printf '%-12s %10s %12s %12s %14s\n' policy capacity requests misses "requests/s"
for cap in ${CAPS//,/ }; do
  for p in lru fifo lfu arc s3fifo belady-page; do
    best=0
    line=""
    for _ in $(seq "$REPEAT"); do
      out=$($KV sim --page-stream "$stream" --policy "$p" --param "capacity=$cap" | tail -1)
      rate=$(echo "$out" | awk '{print $6}')
      if awk -v a="$rate" -v b="$best" 'BEGIN{exit !(a > b)}'; then best=$rate; line=$out; fi
    done
    echo "$line" | awk '{printf "%-12s %10s %12s %12s %14.3g\n", $1, $2, $3, $4, $6}'
  done
done
