#!/usr/bin/env bash
# Install lora_pipeline into ./.venv. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "lora_pipeline needs Python 3.11 or newer (found $("$PYTHON" --version))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch first, pinned: the plain requirement would pull a multi-GB CUDA build on a CPU machine.
# On a GPU machine install the CUDA build of the same version before running this script.
.venv/bin/python -c 'import torch' 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"

# Browser tests drive Debian's Chromium (Playwright's own browser download cannot be used).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Wait for another apt run (e.g. a second setup at the same time) instead of failing.
    apt_wait=(-o DPkg::Lock::Timeout=300)
    apt-get "${apt_wait[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium for the browser tests (they skip without it)" >&2
  fi
fi

stamp=.venv/.lora_pipeline_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  # faces: insightface, so that the tests run its shot-split path too.
  "${PIP[@]}" install -e ".[dev,faces]"
  touch "$stamp"
fi
echo "lora_pipeline installed in $(pwd)/.venv"
