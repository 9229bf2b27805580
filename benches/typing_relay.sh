#!/usr/bin/env bash
# Typing relay latency on one host and across two peered hosts on loopback (issue 10, item 7).
# Imports one small generated Rocket.Chat dump into two data directories, starts host A and host B
# (one shard each, both on core 0, B peered to A) and runs `chatd-load typing-relay` on core 1:
# sender and receiver both on A ("one host"), then sender on A and receiver on B ("across
# hosts"), REPS times each, alternating. The difference of the two is the link's own overhead.
# Stops only the servers it started, by pid. Usage: benches/typing_relay.sh [WORK_DIR] [REPS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/chatd-relay}"
REPS="${2:-3}"
COUNT="${3:-5000}"
cargo build --release -q -p chatd -p chatd-bench
BIN=target/release
rm -rf "$WORK" && mkdir -p "$WORK"
"$BIN/chatd-load" rc-dump --out "$WORK/dump" --users 10 --rooms 0 --dms 0 --messages 0 --general-messages 0 >/dev/null
for h in a b; do
  "$BIN/chatd" import rocketchat --dump "$WORK/dump" --data-dir "$WORK/$h" >/dev/null
done
export CHATD_CLUSTER_SECRET="bench-secret-$(date +%s%N)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
wait_log() { for _ in $(seq 1 150); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done; echo "no '$2' in $1" >&2; exit 1; }
CHATD_RATE_LIMITS=off taskset -c 0 "$BIN/chatd" serve --shards 1 --listen 127.0.0.1:0 --data-dir "$WORK/a" \
  --cluster-listen 127.0.0.1:0 2> "$WORK/a.log" &
PIDS+=($!)
wait_log "$WORK/a.log" "chatd listening"
A_CLUSTER=$(grep -o 'cluster port listening addr=[0-9.:]*' "$WORK/a.log" | sed 's/.*addr=//')
A=$(grep -o 'chatd listening addr=[0-9.:]*' "$WORK/a.log" | sed 's/.*addr=//')
CHATD_RATE_LIMITS=off taskset -c 0 "$BIN/chatd" serve --shards 1 --listen 127.0.0.1:0 --data-dir "$WORK/b" \
  --peer "$A_CLUSTER" 2> "$WORK/b.log" &
PIDS+=($!)
wait_log "$WORK/b.log" "chatd listening"
wait_log "$WORK/b.log" "peer link up"
B=$(grep -o 'chatd listening addr=[0-9.:]*' "$WORK/b.log" | sed 's/.*addr=//')
for rep in $(seq 1 "$REPS"); do
  for where in one-host across-hosts; do
    if [ "$where" = one-host ]; then RECV="$A"; else RECV="$B"; fi
    echo "== rep $rep, $where"
    taskset -c 1 "$BIN/chatd-load" typing-relay --sender-addr "$A" --receiver-addr "$RECV" --count "$COUNT" \
      | tee -a "$WORK/results.jsonl"
  done
done
