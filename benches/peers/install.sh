#!/usr/bin/env bash
# Installs the benchmark peers from the reachable registries, versions pinned. Never run by the
# test suite. Debian: nginx, redis-server, nats-server; npm: the socket.io relay's packages.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  nginx=1.22.1-9+deb12u11 \
  redis-server=5:7.0.15-1~deb12u10 redis-tools=5:7.0.15-1~deb12u10 \
  nats-server=2.9.10-1+b3 \
  python3-venv
# The distribution's services must not hold the ports; the scenarios start their own instances.
for svc in nginx redis-server nats-server; do
  (systemctl stop "$svc" 2>/dev/null || service "$svc" stop 2>/dev/null || true)
done
# Where no service manager runs, the packages' daemons may still be up: stop exactly those, by the
# pid files the packages configure (never every nginx or redis on the machine).
stop_by_pidfile() {
  local file="$1" name="$2" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill "$pid" 2>/dev/null || true
  fi
}
stop_by_pidfile /run/nginx.pid nginx
stop_by_pidfile /run/redis/redis-server.pid redis-server
command -v node >/dev/null || { echo "node is required (Node.js 20 on this machine)"; exit 1; }
(cd socketio && npm install --no-audit --no-fund --loglevel=error)
# Plotting for RESULTS.md figures.
python3 -m venv ../.plot-venv
../.plot-venv/bin/pip install --quiet --disable-pip-version-check matplotlib==3.9.2
echo "peers installed: $(nginx -v 2>&1), $(redis-server --version | cut -d' ' -f1-3), nats-server $(nats-server --version 2>&1 | tail -1), node $(node --version)"
