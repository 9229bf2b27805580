#!/usr/bin/env bash
# Installs chatd as a systemd service on this host: the binary, a system user, /etc/chatd with the
# example configuration, and deploy/chatd.service. Run as root from a checkout, after building:
#
#   cargo build --release && sudo bash deploy/install.sh
#
# Idempotent: an existing /etc/chatd/chatd.toml or chatd.env is kept. It does not start the
# service; the last lines printed say how.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${CHATD_BIN:-target/release/chatd}"
PREFIX="${PREFIX:-/usr/local}"
[ "$(id -u)" = 0 ] || { echo "run as root (sudo bash deploy/install.sh)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: run 'cargo build --release' first (or set CHATD_BIN)" >&2; exit 1; }

install -D -m 0755 "$BIN" "$PREFIX/bin/chatd"
if ! getent group chatd >/dev/null; then
  groupadd --system chatd
fi
if ! getent passwd chatd >/dev/null; then
  useradd --system --gid chatd --home-dir /var/lib/chatd --no-create-home --shell /usr/sbin/nologin chatd
fi
install -d -m 0750 -o root -g chatd /etc/chatd
if [ ! -e /etc/chatd/chatd.toml ]; then
  # The example has every key at its default; the unit passes --data-dir /var/lib/chatd.
  install -m 0640 -o root -g chatd deploy/chatd.example.toml /etc/chatd/chatd.toml
fi
if [ ! -e /etc/chatd/chatd.env ]; then
  install -m 0640 -o root -g chatd /dev/null /etc/chatd/chatd.env
  cat > /etc/chatd/chatd.env <<'ENV'
# Environment for chatd.service (as in a Rocket.Chat unit). Examples:
# ROOT_URL=https://chat.example.com
# PORT=3000
# MONGO_URL=mongodb://db1,db2,db3/chatd?replicaSet=rs0
# INSTANCE_IP=10.0.0.5
# CHATD_CLUSTER_SECRET=...   (or [cluster] secret_file in chatd.toml)
ENV
fi
install -D -m 0644 deploy/chatd.service /etc/systemd/system/chatd.service
install -D -m 0644 README.md "$PREFIX/share/doc/chatd/README.md"
install -d -m 0750 -o chatd -g chatd /var/lib/chatd
"$PREFIX/bin/chatd" serve --config /etc/chatd/chatd.toml --data-dir /var/lib/chatd --check-config
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
else
  echo "note: systemd is not running here; run 'systemctl daemon-reload' on the target host"
fi
echo
echo "installed. Next:"
echo "  edit /etc/chatd/chatd.toml and /etc/chatd/chatd.env"
echo "  systemctl enable --now chatd && curl -s localhost:3000/health"
echo "  first admin: sudo -u chatd chatd user add --data-dir /var/lib/chatd --username admin (stop the service first with the embedded store)"
