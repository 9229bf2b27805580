#!/usr/bin/env bash
# kill -9 soak: CYCLES (default 100) cycles of SIGKILL during pipelined writes from CLIENTS
# (default 4) clients, a restart after each, then every acknowledged message checked to be stored
# exactly once. Prints acked / lost / duplicated and exits 1 on any loss or duplicate. First
# checks the checker (`--self-check`: one acknowledged message deleted must be reported lost).
# Loopback only; stops only the chatd processes it started. Usage: benches/soak.sh [CYCLES] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES="${1:-100}"
CLIENTS="${2:-4}"
cargo build --release -q -p chatd -p chatd-bench
BIN=target/release
WORK=$(mktemp -d /tmp/chatd-soak.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== self-check of the checker (3 cycles)"
"$BIN/chatd-load" soak --chatd "$BIN/chatd" --data-dir "$WORK/check" --cycles 3 --self-check
echo "== soak: $CYCLES cycles, $CLIENTS clients"
"$BIN/chatd-load" soak --chatd "$BIN/chatd" --data-dir "$WORK/data" --cycles "$CYCLES" --clients "$CLIENTS"
