#!/usr/bin/env bash
# Create (or repair) the isolated venv that the PySyft side of the latency
# benchmark runs in: bench/.venv-pysyft with syft==0.9.5.
#
# PySyft lives in its own venv because syft 0.9.5 hard-pins numpy<=1.24.4 and
# ipywidgets==8.1.2 (among others), which must not leak into fednb's .venv.
#
# Idempotent: re-running on a healthy venv is a quick no-op ("Requirement
# already satisfied"); a half-built venv is repaired; a venv made by a
# different Python is rebuilt.  Needs only PyPI.
#
# Environment overrides (mainly for testing the script itself):
#   PYTHON        interpreter to build the venv from     (default: python3)
#   PYSYFT_VENV   where to put the venv                   (default: bench/.venv-pysyft)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PYSYFT_VENV:-$here/.venv-pysyft}"
python="${PYTHON:-python3}"
constraints="$here/pysyft-constraints.txt"

SYFT_VERSION="0.9.5"
# Pins needed on top of syft's own metadata (found by trying on CPython 3.11):
#  - sniffio: kr8s 0.13.5 (a hard dependency of syft 0.9.5) does `import sniffio`
#    without declaring it; it used to arrive via anyio/httpx, whose current
#    releases dropped it, so `import syft` fails with ModuleNotFoundError.
EXTRA_PINS=("sniffio==1.3.1")

die() { echo "setup_pysyft: ERROR: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "no '$python' on PATH (set PYTHON=...)"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
  || die "'$python' does not run"
case "$pyver" in
  3.11) ;;
  3.10|3.12) echo "setup_pysyft: warning: Python $pyver; the pins were worked out on 3.11" >&2 ;;
  *) die "Python $pyver is unsupported by syft $SYFT_VERSION here (need 3.10-3.12, tested on 3.11)" ;;
esac

# A venv built by another interpreter (e.g. after a pyenv upgrade) has a dead
# bin/python or a different minor version; rebuilding is cheaper than debugging it.
if [[ -d "$venv" ]]; then
  venv_ver="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
  if [[ "$venv_ver" != "$pyver" ]]; then
    echo "setup_pysyft: rebuilding $venv (found Python '${venv_ver:-none}', want $pyver)"
    rm -rf -- "$venv"
  fi
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup_pysyft: creating venv at $venv"
  "$python" -m venv "$venv" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
fi

pip_args=(--disable-pip-version-check --no-input)
# The lock keeps syft's otherwise-unpinned tree reproducible; without it pip
# would pick whatever is newest today and the numbers would drift.
[[ -f "$constraints" ]] && pip_args+=(-c "$constraints")

echo "setup_pysyft: installing syft==$SYFT_VERSION ${EXTRA_PINS[*]} into $venv"
"$venv/bin/python" -m pip install -q "${pip_args[@]}" "syft==$SYFT_VERSION" "${EXTRA_PINS[@]}" \
  || die "pip install failed"

# Importing is the real test: pip's resolver is happy with the unpinned tree
# even when `import syft` is not.
got="$("$venv/bin/python" -c 'import syft; print(syft.__version__)' 2>&1 | tail -n 1)" \
  || die "'import syft' fails in $venv: $got"
[[ "$got" == "$SYFT_VERSION" ]] || die "expected syft $SYFT_VERSION in $venv, got '$got'"

echo
echo "setup_pysyft: OK  syft $got  (Python $pyver)"
echo "setup_pysyft: venv:   $venv"
echo "setup_pysyft: python: $venv/bin/python"
