#!/usr/bin/env bash
# README's test command: builds, then runs every test (C++ GoogleTest + Python reference
# tests) through ctest. Tests that need ../shared/models or the SmolLM2 GGUF skip with a
# message when those are absent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"${JOBS:-2}" "$@"
