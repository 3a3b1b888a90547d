#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite with the real default models.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The replica tests start a real redis-server (Debian's package).
if ! command -v redis-server >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q redis-server >/dev/null \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q redis-server >/dev/null; }
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
