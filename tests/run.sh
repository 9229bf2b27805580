#!/usr/bin/env bash
# The one command that runs every test (README "Run the tests"). Safe on a fresh machine:
# it creates the Python virtualenv with the real published Rocket.Chat clients, then runs
# formatting, lints and the whole Rust test suite (unit, shards, integration, compatibility).
# It also installs the published Rocket.Chat bot SDKs 0.2 and 1.x from the npm registry (needs node, npm).
# The web client's browser tests need Debian's chromium and chromium-driver (`.ci/run` installs
# them; by hand: apt-get install chromium chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CHATD_TEST_VENV:-$PWD/target/test-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import rocketchat_async, rocketchat_API, prometheus_client, yaml, selenium' 2>/dev/null; then
  echo "== creating test virtualenv at $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
fi
export CHATD_TEST_PYTHON="$VENV/bin/python"

# The published Rocket.Chat bot SDKs, 0.2 (hubot-rocketchat's driver, with the asteroid fork
# it names, vendored) and 1.x, pinned by their lock file.
NODE_DIR="${CHATD_TEST_NODE_DIR:-$PWD/target/test-node}"
if [ ! -d "$NODE_DIR/node_modules/rocketchat-sdk-1" ] || ! cmp -s tests/compat/sdk/package-lock.json "$NODE_DIR/package-lock.json"; then
  echo "== installing the Rocket.Chat SDKs 0.2 and 1.x at $NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp -r tests/compat/sdk/package.json tests/compat/sdk/package-lock.json tests/compat/sdk/vendor "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
export CHATD_TEST_NODE_MODULES="$NODE_DIR/node_modules"
export CHATD_REQUIRE_COMPAT=1

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "tests/run.sh: the web client's browser tests need Debian's chromium and chromium-driver:" >&2
  echo "  apt-get install chromium chromium-driver   (.ci/run installs them)" >&2
  exit 1
fi
export CHATD_REQUIRE_BROWSER=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
if [ -z "${CHATD_TEST_MONGO_URL:-}" ]; then
  echo "== NOTE: CHATD_TEST_MONGO_URL is not set: the MongoDB backend's conformance and cluster tests will be SKIPPED"
  echo "         (set it to a replica set, e.g. mongodb://127.0.0.1:27017/?replicaSet=rs0, to run them)"
fi
echo "== cargo test"
# Bounded: a hang fails the run within half an hour, with its output, instead of running out CI's clock.
timeout --kill-after=30 "${CHATD_TEST_TIMEOUT_SECS:-1800}" \
  cargo test --workspace --locked -- --test-threads="${CHATD_TEST_THREADS:-4}"
