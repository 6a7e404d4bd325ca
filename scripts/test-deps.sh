#!/usr/bin/env bash
# What the tests need beyond the venv, from Debian: chromium for the real-browser tests
# (driven by Playwright; never `playwright install`) and PostgreSQL for the store tests
# (each test run starts a throwaway server of its own: tests/_stores.py; the package's
# own cluster is not used) and tinyproxy, the hospital's outbound HTTP proxy in the relay tests. Idempotent; `make test` calls it.
set -euo pipefail
missing=()
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v tinyproxy >/dev/null 2>&1; then
  missing+=(tinyproxy)
fi
if ! command -v ip >/dev/null 2>&1; then
  missing+=(iproute2)
fi
if [ "${#missing[@]}" = 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing ${missing[*]} (the browser tests' browser, the store tests' database server, the relay tests' proxy)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
