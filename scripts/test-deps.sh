#!/usr/bin/env bash
# What the tests need beyond the venv: Debian's chromium for the real-browser tests
# (driven by Playwright; never `playwright install`). Idempotent; `make test` calls it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing chromium (the browser tests' browser)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "error: the browser tests need chromium: sudo apt-get install chromium" >&2
  exit 1
fi
