#!/usr/bin/env bash
# Set up fednb on a fresh machine: bubblewrap (the sandbox), a venv, fednb with its dev tools.
# Idempotent; `make` calls it when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing bubblewrap (the sandbox for hospital jobs)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "WARNING: bubblewrap (bwrap) is missing and cannot be installed here." >&2
    echo "         Domains will refuse private runs unless started with --insecure-demo." >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
echo "==> installing fednb and its dev tools into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: a CPU build; letting a dependency pick torch pulls GBs of CUDA
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "==> ready: $VENV/bin/fednb"
