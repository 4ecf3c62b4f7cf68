#!/usr/bin/env bash
# The main job: builds `persist` and runs its demo on an embedded SQLite
# store under ./data, then builds the npm package and serves the browser demo
# (a notes app on IndexedDB) at http://127.0.0.1:8080/www/ until Ctrl-C.
# PERSIST_DEMO_WEB=0 skips the browser part; PERSIST_DEMO_PORT changes the port.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
# mDNS multicasts on every interface: keep it off the host here.
export PERSIST_MDNS=off
cargo run --release --locked --bin persist -- demo --data "${PERSIST_DATA:-data}"

if [ "${PERSIST_DEMO_WEB:-1}" != "0" ]; then
  echo
  bash scripts/setup.sh >/dev/null
  bash scripts/build-pkg.sh | tail -n 1
  exec node scripts/serve.mjs "${PERSIST_DEMO_PORT:-8080}"
fi
