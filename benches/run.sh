#!/usr/bin/env bash
# Benchmark scenarios (see benches/README.md). Each run is bounded in time and connections and
# uses loopback only. Results are appended as JSON lines to $OUT/<scenario>.jsonl.
#
#   bash benches/run.sh s0|s1|s2|s3|s4|s5|s5m|s6|s7|all [chatd] [socketio] [nats]
#
# Environment: RUNS (default 3) repetitions of every measurement, OUT (default benches/results).
#
# Latency scenarios (s0, s3) pin: the server to core SERVER_CORE (default 0) with one shard / one
# process / GOMAXPROCS=1, the load generator to core CLIENT_CORE (default 1), so neither delays the
# other. Throughput scenarios (s1, s2, s4, s5) give the server every core.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/benches/results}
RUNS=${RUNS:-3}
PORT_CHATD=3900
PORT_NGINX=4000
PORT_REDIS=6390
PORT_NATS_WS=4223
PORT_REF=4300
NPROC=$(nproc)
WORK=$(mktemp -d /tmp/chatd-bench.XXXXXX)
LOAD=$ROOT/target/release/chatd-load
CHATD=${CHATD:-$ROOT/target/release/chatd} # CHATD=path measures another build
PIDS=()
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
mkdir -p "$OUT"

# Command prefixes that pin the servers and the load generator (set by pinned, cleared by
# unpinned). Arrays, not functions, so `"${SRV[@]}" cmd &` leaves $! the server's own pid.
SRV=()
CLI=()
pinned() {
  if [ "$NPROC" -lt 2 ]; then
    echo "warning: one core: latency runs cannot pin server and client apart" >&2
    return
  fi
  SRV=(taskset -c "$SERVER_CORE")
  CLI=(taskset -c "$CLIENT_CORE")
}
unpinned() { SRV=(); CLI=(); }
# How many server processes/shards/threads: one when pinned, one per core otherwise.
server_cores() { if [ ${#SRV[@]} -gt 0 ]; then echo 1; else echo "$NPROC"; fi; }

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

build() {
  cargo build --release -q -p chatd -p chatd-bench
}

wait_port() { # bounded wait for a TCP port to accept
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  return 1
}

stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# --- systems ---------------------------------------------------------------------------------

# start_chatd SHARDS USERS ROOMS MEMBERS: seeds a fresh data dir, starts chatd.
start_chatd() {
  local shards=$1 users=$2 rooms=$3 members=$4
  rm -rf "$WORK/data" "$WORK/plan.json"
  "$LOAD" seed --data-dir "$WORK/data" --users "$users" --rooms "$rooms" --members "$members" --plan "$WORK/plan.json"
  CHATD_RATE_LIMITS=off RUST_LOG=warn "${SRV[@]}" "$CHATD" serve --listen 127.0.0.1:$PORT_CHATD --shards "$shards" --data-dir "$WORK/data" \
    >"$WORK/chatd.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  wait_port $PORT_CHATD
  kill -0 $pid 2>/dev/null || { cat "$WORK/chatd.log" >&2; return 1; }
}

start_socketio() {
  local n
  n=$(server_cores)
  "${SRV[@]}" redis-server --port $PORT_REDIS --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  wait_port $PORT_REDIS
  local upstreams=""
  for i in $(seq 1 "$n"); do
    local port=$((PORT_NGINX + i))
    PORT=$port REDIS_URL=redis://127.0.0.1:$PORT_REDIS "${SRV[@]}" node "$ROOT/benches/peers/socketio/relay.js" \
      >"$WORK/relay$i.log" 2>&1 &
    PIDS+=($!)
    upstreams="$upstreams server 127.0.0.1:$port;"
  done
  for i in $(seq 1 "$n"); do wait_port $((PORT_NGINX + i)); done
  mkdir -p "$WORK/nginx/logs"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $n;
worker_rlimit_nofile 20000;
daemon off;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 19000; }
http {
  access_log off;
  upstream relays { least_conn; $upstreams }
  server {
    listen 127.0.0.1:$PORT_NGINX;
    location / {
      proxy_pass http://relays;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
    }
  }
}
EOF
  "${SRV[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
  PIDS+=($!)
  wait_port $PORT_NGINX
}

start_nats() {
  cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:4222
max_connections: 20000
max_payload: 65536
websocket { listen: "127.0.0.1:$PORT_NATS_WS", no_tls: true }
EOF
  GOMAXPROCS=$(server_cores) "${SRV[@]}" nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
  PIDS+=($!)
  wait_port $PORT_NATS_WS
}

start_refrelay() {
  "${SRV[@]}" "$LOAD" ref-relay --listen 127.0.0.1:$PORT_REF >"$WORK/ref-relay.log" 2>&1 &
  PIDS+=($!)
  wait_port $PORT_REF
}

url_of() {
  case $1 in
    refrelay) echo "ws://127.0.0.1:$PORT_REF" ;;
    chatd) echo "ws://127.0.0.1:$PORT_CHATD/websocket" ;;
    socketio) echo "ws://127.0.0.1:$PORT_NGINX/socket.io/?EIO=4&transport=websocket" ;;
    nats) echo "ws://127.0.0.1:$PORT_NATS_WS" ;;
  esac
}

names_of() {
  case $1 in
    chatd) echo "--server-name chatd" ;;
    socketio) echo "--server-name node --server-name nginx --server-name redis-server" ;;
    nats) echo "--server-name nats-server" ;;
    refrelay) echo "--server-pid ${PIDS[-1]}" ;;
  esac
}

# start SYSTEM SHARDS USERS ROOMS MEMBERS
start() {
  case $1 in
    chatd) start_chatd "$2" "$3" "$4" "$5" ;;
    socketio) start_socketio ;;
    nats) start_nats ;;
    refrelay) start_refrelay ;;
  esac
}

# load SCENARIO SYSTEM LABEL ARGS...
load() {
  local scenario=$1 system=$2 label=$3
  shift 3
  local plan=() proto=$system
  [ "$system" = chatd ] && plan=(--plan "$WORK/plan.json")
  [ "$system" = refrelay ] && proto=nats
  # shellcheck disable=SC2046
  "${CLI[@]}" "$LOAD" run --proto "$proto" --url "$(url_of "$system")" $(names_of "$system") "${plan[@]}" \
    --label "$label" --out "$OUT/$scenario.jsonl" "$@"
}

# --- scenarios -------------------------------------------------------------------------------

s0() { # calibration: the instrument's own floor against the reference relay and nats-server, at
  # 10,000 and 20,000 deliveries/s (100 rooms x 50), pinned
  pinned
  for system in refrelay nats; do
    for run in $(seq 1 "$RUNS"); do
      for rate in 200 400; do
        start "$system" 1 5000 100 50
        load s0 "$system" "s0/$system/rate$rate/run$run" --rooms 100 --members 50 --rate $rate --duration 8 --procs 1
        stop_all
      done
    done
  done
  unpinned
}

s1() { # idle authenticated connections held, memory per connection
  local n=15000
  for system in "$@"; do
    for run in $(seq 1 "$RUNS"); do
      start "$system" "$NPROC" $n 0 0
      load s1 "$system" "s1/$system/run$run" --mode idle --connections $n --procs 4 --duration 5
      stop_all
    done
  done
}

s2() { # fan-out: 1 room x 1000 members, and 100 rooms x 50 members
  for system in "$@"; do
    for run in $(seq 1 "$RUNS"); do
      start "$system" "$NPROC" 1000 1 1000
      load s2 "$system" "s2/1x1000/$system/run$run" --rooms 1 --members 1000 --rate 40 --duration 10 --procs 2
      stop_all
      start "$system" "$NPROC" 5000 100 50
      load s2 "$system" "s2/100x50/$system/run$run" --rooms 100 --members 50 --rate 800 --duration 10 --procs 2
      stop_all
    done
  done
}

s3() { # latency vs offered load, 10,000 to 160,000 deliveries/s (100 rooms x 50), pinned: the
  # server on one core, the load generator on the other
  pinned
  for system in "$@"; do
    for run in $(seq 1 "$RUNS"); do
      for rate in 200 400 800 1600 3200; do
        start "$system" 1 5000 100 50
        load s3 "$system" "s3/$system/rate$rate/run$run" --rooms 100 --members 50 --rate $rate --duration 8 --procs 1
        stop_all
      done
    done
  done
  unpinned
}

s4() { # core scaling: chatd --shards 1 vs --shards 2, same workload and sweep
  for run in $(seq 1 "$RUNS"); do
    for shards in 1 2; do
      for rate in 400 800 1600 3200; do
        start_chatd $shards 5000 100 50
        load s4 chatd "s4/shards$shards/rate$rate/run$run" --rooms 100 --members 50 --rate $rate --duration 10 --procs 2
        stop_all
      done
    done
  done
}

s5() { # durable writes: acknowledged messages per second and ack latency, 1 / 10 / 100 senders
  for run in $(seq 1 "$RUNS"); do
    for senders in 1 10 100; do
      start_chatd "$NPROC" 100 100 1
      load s5 chatd "s5/senders$senders/run$run" --mode acks --senders $senders --rate 1000000 --duration 10 --procs 1
      stop_all
    done
  done
}

s5m() { # durable writes on MongoDB: S5 against the replica set CHATD_TEST_MONGO_URL names, with
  # MONGO_HOSTS (default 1) chatd hosts sharing it, each driven by its own load process with its
  # share of the senders. One line per host: acknowledged sends/s and ack p50/p99; the model to
  # compare with is in deploy/sizing.md.
  if [ -z "${CHATD_TEST_MONGO_URL:-}" ]; then
    echo "*** SKIPPED: s5m needs CHATD_TEST_MONGO_URL (a replica set) ***" >&2
    return 0
  fi
  local hosts=${MONGO_HOSTS:-1}
  for run in $(seq 1 "$RUNS"); do
    for senders in 1 10 100; do
      local db url per h
      db="chatd_bench_${run}_${senders}_$$"
      url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit((p.scheme,p.netloc,"/"+sys.argv[2],p.query,"")))' "$CHATD_TEST_MONGO_URL" "$db")
      rm -rf "$WORK/data" "$WORK/plan.json"
      "$LOAD" seed --data-dir "$WORK/data" --mongo-url "$url" --users 100 --rooms 100 --members 1 --plan "$WORK/plan.json"
      per=$(( (senders + hosts - 1) / hosts ))
      local loads=()
      for h in $(seq 1 "$hosts"); do
        local port=$((PORT_CHATD + h))
        CHATD_RATE_LIMITS=off RUST_LOG=warn "$CHATD" serve --listen 127.0.0.1:$port --data-dir "$WORK/data$h" \
          --mongo-url "$url" >"$WORK/chatd$h.log" 2>&1 &
        PIDS+=($!)
        wait_port $port
      done
      for h in $(seq 1 "$hosts"); do
        "$LOAD" run --proto chatd --url "ws://127.0.0.1:$((PORT_CHATD + h))/websocket" --server-name chatd \
          --plan "$WORK/plan.json" --label "s5m/hosts$hosts/senders$senders/host$h/run$run" --out "$OUT/s5m.jsonl" \
          --mode acks --senders "$per" --rate 1000000 --duration 10 --procs 1 &
        loads+=($!)
      done
      for p in "${loads[@]}"; do wait "$p"; done
      stop_all
      "$LOAD" mongo-drop --mongo-url "$url"
    done
  done
}

s6() { # restart storm: 5,000 clients, SIGTERM, a new server on the same port and data; how long
  # until every client is back with every message, with the server's reconnect spread and without
  for run in $(seq 1 "$RUNS"); do
    for spread in 5000 0; do
      rm -rf "$WORK/storm" "$WORK/storm.toml" "$WORK/storm.log"
      "$LOAD" storm --chatd "$CHATD" --data-dir "$WORK/storm" --clients 5000 --members 50 \
        --shards "$NPROC" --spread-ms "$spread" | tee -a "$OUT/s6.jsonl"
      cp "$WORK/storm.log" "$OUT/s6-server-run$run-spread$spread.log"
    done
  done
}

s7() { # the seed deployment (../shared/seeds/001_*) as a workload: 7,116 users, 49,149 rooms, 2.4
  # million messages imported from a generated Rocket.Chat dump; 1,000 users connected for
  # S7_SECS (default 300) seconds of mixed load (see chatd-load mixed)
  local dump=$WORK/s7dump base=$WORK/s7base data=$WORK/s7data
  "$LOAD" rc-dump --out "$dump" --general-messages 2000
  "$CHATD" import rocketchat --dump "$dump" --data-dir "$base" >"$WORK/import.log" 2>&1
  rm -rf "$dump"
  for run in $(seq 1 "$RUNS"); do
    rm -rf "$data"
    cp -r "$base" "$data"
    CHATD_RATE_LIMITS=off RUST_LOG=warn "$CHATD" serve --listen 127.0.0.1:$PORT_CHATD --data-dir "$data" \
      >"$WORK/chatd.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    wait_port $PORT_CHATD
    "$LOAD" mixed --url "ws://127.0.0.1:$PORT_CHATD/websocket" --server-pid $pid --duration "${S7_SECS:-300}" \
      --seed "$run" | tee -a "$OUT/s7.jsonl"
    stop_all
  done
  rm -rf "$base" "$data"
}

smoke() { # a few seconds per system: checks that every setup works before a long run
  for system in "$@"; do
    start "$system" "$NPROC" 500 10 50
    load smoke "$system" "smoke/$system" --rooms 10 --members 50 --rate 200 --duration 4 --procs 2
    stop_all
  done
}

scenario=${1:-}
shift || true
systems=("$@")
[ ${#systems[@]} -eq 0 ] && systems=(chatd)
build
case $scenario in
  s1 | s2 | s3 | smoke) "$scenario" "${systems[@]}" ;;
  s0 | s4 | s5 | s5m | s6 | s7) "$scenario" ;;
  all)
    s0
    s1 "${systems[@]}"
    s2 "${systems[@]}"
    s3 "${systems[@]}"
    s4
    s5
    s6
    s7
    ;;
  *)
    echo "usage: bash benches/run.sh smoke|s0|s1|s2|s3|s4|s5|s5m|s6|s7|all [chatd] [socketio] [nats]" >&2
    exit 2
    ;;
esac
echo "results in $OUT"
