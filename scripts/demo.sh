#!/usr/bin/env bash
# Quick start: set up, start the server, and place one demo call from a real 8 kHz
# recording (a caller reading out numbers), printing what was heard and said and the
# latency. The agent's reply is written to demo-reply.wav.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

PORT=${VOXLINE_PORT:-50051}
LOG=$(mktemp -t voxline-serve.XXXX.log)
.venv/bin/voxline serve --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  grep -q "listening on" "$LOG" && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 1
done
grep -E "^(model|voxline)" "$LOG"

RECORDING=../shared/data/speech/read_misc/vosk_test_8k.wav
echo "--- demo call: $RECORDING as 8 kHz mu-law, real-time pace"
.venv/bin/voxline call --server "127.0.0.1:$PORT" --codec mulaw --rate 8000 \
  --end-of-turn-ms 1000 --out demo-reply.wav "$RECORDING"
