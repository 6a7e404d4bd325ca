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
# torch first, pinned to 2.13.0 so that no dependency picks another. Which build that is
# depends on pip's index: PyPI's Linux wheel is the CUDA build (GBs); for the CPU build set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (2.13.0+cpu satisfies fednb[dpsgd]'s
# pin). This project's machines carry a CPU build in their own index, so it is not forced here:
# an index a machine cannot reach would fail the install.
"$VENV/bin/python" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "==> ready: $VENV/bin/fednb"

# The JupyterLab extension: built from labextension/ (TypeScript) when node is here, then
# linked into the venv the way the wheel installs it (share/jupyter/labextensions and the
# server extension's config). Without node, JupyterLab simply runs without the sidebar.
if command -v node >/dev/null 2>&1; then
  echo "==> building the JupyterLab extension (labextension/)"
  (cd labextension && PATH="$PWD/../$VENV/bin:$PATH" ../"$VENV"/bin/jlpm install --immutable >/dev/null \
    && PATH="$PWD/../$VENV/bin:$PATH" ../"$VENV"/bin/jlpm build >/dev/null)
  mkdir -p "$VENV/share/jupyter/labextensions" "$VENV/etc/jupyter/jupyter_server_config.d"
  ln -sfn "$PWD/fednb/labextensions/fednb-labextension" "$VENV/share/jupyter/labextensions/fednb-labextension"
  cp jupyter-config/server-config/fednb.json "$VENV/etc/jupyter/jupyter_server_config.d/fednb.json"
else
  echo "note: node is missing: the JupyterLab extension is not built (see DEVELOPERS.md)" >&2
fi
