#!/usr/bin/env bash
# Create (or repair) the isolated venv that the Flower side of the rounds benchmark
# (bench/rounds.py -> bench/flower_rounds.py) runs in: bench/.venv-flower with
# flwr[simulation]==1.41.0 (Ray backend), and no torch.
#
# Flower lives in its own venv because it pins its own fastapi/starlette/uvicorn,
# grpcio, protobuf and cryptography, which must not leak into fednb's .venv.
#
# Idempotent: re-running on a healthy venv is a quick no-op; a half-built venv is
# repaired; a venv made by a different Python is rebuilt. Needs only PyPI.
#
# Environment overrides (mainly for testing the script itself):
#   PYTHON        interpreter to build the venv from     (default: python3)
#   FLOWER_VENV   where to put the venv                   (default: bench/.venv-flower)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${FLOWER_VENV:-$here/.venv-flower}"
python="${PYTHON:-python3}"

FLWR_VERSION="1.41.0"
# The full tree, as resolved and verified on CPython 3.11 / Linux x86_64 (2 cores): Flower's
# simulation extra brings ray; everything else is Flower's own metadata. Pinned so that the
# figures do not drift with whatever is newest on PyPI.
PINS=(
  "alembic==1.20.1" "annotated-doc==0.0.7" "annotated-types==0.8.0" "anyio==4.16.0" "attrs==26.1.0"
  "certifi==2026.10.18" "cffi==2.1.1" "charset-normalizer==3.5.2" "click==8.5.1" "cryptography==50.0.2"
  "fastapi==0.138.2" "filelock==4.2.12" "greenlet==3.5.6" "grpcio==1.85.1"
  "grpcio-health-checking==1.81.1" "h11==0.16.0" "httpcore==1.0.9" "httptools==0.9.0" "httpx==0.28.1"
  "idna==3.20" "iterators==0.0.2" "jsonschema==4.26.0" "jsonschema-specifications==2025.9.1"
  "Mako==1.4.3" "markdown-it-py==4.3.0" "MarkupSafe==3.0.4" "mdurl==0.1.2" "msgpack==1.2.4"
  "numpy==2.4.6" "packaging==25.0" "pathspec==1.1.1" "prompt_toolkit==3.0.53" "protobuf==6.33.6"
  "pycparser==3.12" "pycryptodome==3.24.1" "pydantic==2.14.3" "pydantic_core==2.50.4"
  "Pygments==2.21.0" "python-dotenv==1.2.4" "PyYAML==6.0.3" "ray==2.55.1" "referencing==0.37.0"
  "requests==2.34.2" "rich==14.3.4" "rpds-py==2026.9.1" "shellingham==1.5.4" "SQLAlchemy==2.1.9"
  "starlette==1.3.1" "tomli==2.5.0" "tomli_w==1.2.0" "typer==0.20.1" "typing-inspection==0.4.5"
  "typing_extensions==4.16.0" "urllib3==2.8.0" "uv==0.12.24" "uvicorn==0.49.0" "uvloop==0.23.0"
  "watchfiles==1.3.0" "wcwidth==0.9.4" "websockets==17.4"
)

die() { echo "setup_flower: ERROR: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "no '$python' on PATH (set PYTHON=...)"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  || die "'$python' does not run"
case "$pyver" in
  3.11) ;;
  3.10|3.12|3.13) echo "setup_flower: warning: Python $pyver; the pins were worked out on 3.11" >&2 ;;
  *) die "Python $pyver is unsupported by flwr $FLWR_VERSION here (need 3.10-3.13, tested on 3.11)" ;;
esac

# A venv built by another interpreter has a dead bin/python or another minor version.
if [[ -d "$venv" ]]; then
  venv_ver="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
  if [[ "$venv_ver" != "$pyver" ]]; then
    echo "setup_flower: rebuilding $venv (found Python '${venv_ver:-none}', want $pyver)"
    rm -rf -- "$venv"
  fi
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup_flower: creating venv at $venv"
  "$python" -m venv "$venv" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
fi

constraints="$(mktemp)"
trap 'rm -f -- "$constraints"' EXIT
printf '%s\n' "${PINS[@]}" >"$constraints"

echo "setup_flower: installing flwr[simulation]==$FLWR_VERSION into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -c "$constraints" \
  "flwr[simulation]==$FLWR_VERSION" || die "pip install failed"

# Importing is the real test; and torch must not have come in through the back door.
got="$("$venv/bin/python" -c 'import flwr, ray, flwr.simulation; print(flwr.__version__)' 2>&1 | tail -n 1)" \
  || die "'import flwr.simulation' fails in $venv: $got"
[[ "$got" == "$FLWR_VERSION" ]] || die "expected flwr $FLWR_VERSION in $venv, got '$got'"
if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
  die "torch is installed in $venv; it is not needed (remove the venv and re-run)"
fi

echo
echo "setup_flower: OK  flwr $got  (Python $pyver)"
echo "setup_flower: venv:   $venv"
echo "setup_flower: python: $venv/bin/python"
