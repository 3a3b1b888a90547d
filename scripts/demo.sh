#!/usr/bin/env bash
# Quick start: set up, start the server, and place the demo call: real recordings of
# callers ordering coffee, streamed as 8 kHz G.711 mu-law at real-time pace, answered
# by the coffee_shop agent. Prints the conversation (tool calls and per-turn latency
# included), writes both sides to demo-call.wav and ends with the call's record. The
# supervisors' console is on: open the log-in link it prints to watch the call (set
# VOXLINE_DEMO_STAY=1 to keep the server up afterwards and look at it in the history).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

LOG=$(mktemp -t voxline-serve.XXXX.log)
.venv/bin/voxline serve --port "${VOXLINE_PORT:-0}" \
  --console-port "${VOXLINE_CONSOLE_PORT:-0}" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 180); do
  grep -q "listening on" "$LOG" && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 1
done
grep -E "^(model|voxline|console)" "$LOG"
ADDRESS=$(sed -n 's/.* listening on \([^ ]*\).*/\1/p' "$LOG")

CALL_ID="demo-$(date +%Y%m%dT%H%M%S)"  # no long digit run: the log would redact it
.venv/bin/voxline demo --server "$ADDRESS" --call-id "$CALL_ID" --out demo-call.wav
echo "--- the call's record (voxline calls --call $CALL_ID)"
for _ in $(seq 20); do  # written just after the call ends
  .venv/bin/voxline calls --call "$CALL_ID" 2>/dev/null && break
  sleep 0.5
done
.venv/bin/voxline calls --call "$CALL_ID" >/dev/null
if [ "${VOXLINE_DEMO_STAY:-0}" = 1 ]; then
  echo "--- the server and its console stay up (Ctrl-C ends them):"
  grep -E "^console" "$LOG"
  wait $SERVER
fi
