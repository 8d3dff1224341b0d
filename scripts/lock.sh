#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml (run after changing a dependency):
#   requirements-dev.lock  everything `make setup` and CI install: the runtime, dev, test
#                          and lint extras
#   requirements.lock      the runtime only (deploy/Dockerfile), with the same versions
# Both carry every file hash from PyPI (pip install --require-hashes), so the image and
# CI install exactly what the tests ran. pip-tools comes from the lint extra's venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_COMPILE=${PIP_COMPILE:-.venv/bin/pip-compile}
if [ ! -x "$PIP_COMPILE" ]; then
  echo "error: pip-compile not found; run: .venv/bin/pip install pip-tools==7.6.2" >&2
  exit 1
fi
# PyPI only, whatever this machine's pip configuration adds (local wheel folders).
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL=
common=(--quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
        --index-url https://pypi.org/simple --resolver backtracking)

"$PIP_COMPILE" "${common[@]}" --extra dev --extra test --extra lint \
  --output-file requirements-dev.lock pyproject.toml
# The test extra names provisio[dev] (itself): pip-compile lists the project as a local
# path, which has no hash and is installed separately (pip install --no-deps -e .).
python3 - <<'PY'
import re
from pathlib import Path

lock = Path("requirements-dev.lock")
text = re.sub(r"# WARNING: pip install will require the following package to be hashed\.\n(#.*\n)*"
              r"provisio @ file://\S+\n(    #.*\n)*", "", lock.read_text())
lock.write_text(text)
PY
# The runtime lock takes its versions from the full one: the same packages, same pins.
"$PIP_COMPILE" "${common[@]}" --constraint requirements-dev.lock \
  --output-file requirements.lock pyproject.toml
echo "wrote requirements-dev.lock and requirements.lock"
