#!/usr/bin/env bash
# Does heavy reading stall other sessions? Builds a store with a 1,000,000-message room and 75,000
# rooms (50,000 public channels) from a generated Rocket.Chat dump, starts chatd with one shard on
# core 0, and runs `chatd-load stall` on core 1 for each reader mode, REPS times. Stops only the
# server it started, by pid. Usage: benches/stall.sh [WORK_DIR] [REPS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/chatd-stall}"
REPS="${2:-3}"
SECONDS_PER_PHASE="${3:-20}"
PORT=4190
cargo build --release -q -p chatd -p chatd-bench
BIN=target/release
if [ ! -d "$WORK/data" ]; then
  mkdir -p "$WORK"
  "$BIN/chatd-load" rc-dump --out "$WORK/dump" --users 1000 --rooms 75000 --dms 0 --members 2 --large-channels 0 \
    --messages 1000000 --general-messages 1000000
  "$BIN/chatd" import rocketchat --dump "$WORK/dump" --data-dir "$WORK/data"
fi
CHATD_RATE_LIMITS=off taskset -c 0 "$BIN/chatd" serve --shards 1 --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
  2> "$WORK/server.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.2
done
for rep in $(seq 1 "$REPS"); do
  for mode in history list both; do
    echo "== rep $rep, reader does $mode"
    taskset -c 1 "$BIN/chatd-load" stall --addr "127.0.0.1:$PORT" --seconds "$SECONDS_PER_PHASE" \
      --reader-does "$mode" | tee -a "$WORK/results.jsonl"
  done
done
