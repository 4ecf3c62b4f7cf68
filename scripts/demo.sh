#!/usr/bin/env bash
# The main job. First the native demo (`persist demo`) on embedded SQLite
# stores under ./data. Then one network, browser and native: it starts a
# `persist node` (bootstrap, relay and rendezvous, loopback only), a native
# notes device on an encrypted SQLite store (`persist notes`, which offers a
# pairing code), serves the browser demo, and prints the page's URL and the
# code. Open the page, type the code: notes replicate both ways, end-to-end
# encrypted (type a line here to write one natively). Ctrl-C stops it all.
# PERSIST_DEMO_WEB=0 keeps to the native part; PERSIST_DEMO_PORT changes the
# page's port; PERSIST_DEMO_FOR stops the network part after that many
# seconds (default: until Ctrl-C). For the end-to-end test of this script:
# PERSIST_BIN runs that `persist` binary instead of a release build, and
# PERSIST_DEMO_PKG=0 uses the package already in pkg/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
# mDNS multicasts on every interface: keep it off the host here.
export PERSIST_MDNS=off
data="${PERSIST_DATA:-data}"
if [ -n "${PERSIST_BIN:-}" ]; then
  persist="$PERSIST_BIN"
else
  cargo build --release --locked --bin persist
  persist="$CARGO_TARGET_DIR/release/persist"
fi
"$persist" demo --data "$data"
[ "${PERSIST_DEMO_WEB:-1}" != "0" ] || exit 0

echo
if [ "${PERSIST_DEMO_PKG:-1}" != "0" ]; then
  bash scripts/setup.sh >/dev/null
  bash scripts/build-pkg.sh --browser-only | tail -n 1
fi
net="$data/network"
mkdir -p "$net"
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
# Waits (at most 10 s) until file $1 has a line matching $2.
wait_for() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
}
trap 'exit 130' INT TERM

# The node listens on loopback only here (a real deployment listens on
# 0.0.0.0 with fixed ports, and adds /udp/PORT/webrtc-direct). Relayed
# connections may carry sync here (an hour, 1 GiB each): the tab reaches
# the native device only through the relay. The default (2 minutes,
# 128 KiB) is sized for pairing and hole punching.
"$persist" node --data "$net/node" --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/tcp/0/ws \
  --max-circuit-seconds 3600 --max-circuit-bytes 1073741824 \
  >"$net/node.log" 2>&1 &
pids+=($!)
wait_for "$net/node.log" '/ws/p2p/'
node_ws=$(sed -n 's|^listening: \(.*/ws/p2p/[^/]*\)$|\1|p' "$net/node.log" | head -n 1)
node_tcp=$(sed -n 's|^listening: \(/ip4/[^/]*/tcp/[0-9]*/p2p/[^/]*\)$|\1|p' "$net/node.log" | head -n 1)
[ -n "$node_ws" ] && [ -n "$node_tcp" ] || { cat "$net/node.log" >&2; echo "demo: the node did not start" >&2; exit 1; }

node scripts/serve.mjs "${PERSIST_DEMO_PORT:-8080}" >"$net/serve.log" 2>&1 &
pids+=($!)
wait_for "$net/serve.log" 'open http'
page=$(sed -n 's|.*open \(http://[^ ]*/www/\).*|\1|p' "$net/serve.log" | head -n 1)
[ -n "$page" ] || { cat "$net/serve.log" >&2; echo "demo: the page server did not start" >&2; exit 1; }
url="$page?bootstrap=$node_ws"

echo
echo "== One network: a browser tab and this native device"
echo "node (bootstrap, relay, rendezvous): $node_ws"
echo "open: $url"
echo "then type the pairing code printed below into the page; notes replicate both ways,"
echo "end-to-end encrypted (the node relays ciphertext). Type a line here to write a note natively."
echo
"$persist" notes --path "$net/desk.db" --encrypt --bootstrap "$node_tcp" \
  --listen /ip4/127.0.0.1/tcp/0/ws --for "${PERSIST_DEMO_FOR:-86400}"
