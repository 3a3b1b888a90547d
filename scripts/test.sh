#!/usr/bin/env bash
# Set up (if needed), lint, and run the tests with the real default models.
#   scripts/test.sh          everything (what CI runs); the external-engine tests last
#                            (both tiers also lint and build and check the docs)
#   scripts/test.sh quick    unit and single-server tests only (development; < 5 min)
# Further arguments go to pytest (e.g. scripts/test.sh quick -k barge).
set -euo pipefail
cd "$(dirname "$0")/.."
TIER=all
if [ "${1:-}" = quick ]; then TIER=quick; shift; fi
scripts/setup.sh
# Real clients and servers from Debian, for both tiers (the quick tier's SIP tests call
# baresip and SIPp too): redis-server (the replica tests), baresip (a SIP phone) and
# sip-tester (SIPp, SIP load) for the telephony tests, prometheus (prometheus and
# promtool: the dashboard and alerting rules test).
NEED=()
command -v redis-server >/dev/null || NEED+=(redis-server)
command -v baresip >/dev/null || NEED+=(baresip)
command -v sipp >/dev/null || NEED+=(sip-tester)
# chromium and chromium-driver (one Debian version, so no driver is downloaded): the
# supervisor console's browser tests.
command -v chromium >/dev/null || NEED+=(chromium)
command -v chromedriver >/dev/null || NEED+=(chromium-driver)
command -v prometheus >/dev/null || NEED+=(prometheus)
if [ ${#NEED[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q "${NEED[@]}" >/dev/null \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${NEED[@]}" >/dev/null; }
fi
if [ $TIER = all ]; then
  # The Riva tests run Riva's offline script with the newest client release too, beside
  # the pinned one (which the project itself uses).
  NEWEST=.venv/riva-client-newest
  if [ ! -f "$NEWEST/.installed-2.28.0" ]; then
    rm -rf "$NEWEST"
    .venv/bin/python -m pip --disable-pip-version-check -q install --no-deps \
      --target "$NEWEST" "nvidia-riva-client==2.28.0"
    touch "$NEWEST/.installed-2.28.0"
  fi
fi
.venv/bin/ruff check .
# The documentation site: broken links, missing pages and bad anchors fail the build
# (mkdocs.yml sets strict); the generated references are built from the code here.
SITE=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$SITE"
rm -rf "$SITE"
# Every command the quick start and the getting-started page show is one the CLI accepts.
.venv/bin/python scripts/docs/check_commands.py
# Two test processes, a whole module each (its servers start once): the suite mostly
# waits on audio streamed in real time, so one process leaves a core idle.
PYTEST=(.venv/bin/python -m pytest -q -n "${VOXLINE_TEST_PROCESSES:-2}" --dist loadfile)
if [ $TIER = quick ]; then
  exec "${PYTEST[@]}" -m "not external and not own_server" "$@"
fi
exec "${PYTEST[@]}" "$@"
