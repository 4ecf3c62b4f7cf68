#!/usr/bin/env bash
# Builds the Node.js addon of @cuitty/persist into pkg/ (or $1): the library
# compiled natively with the `node` feature (napi-rs), copied as
# persist.<platform>-<arch>.node, beside node.js (its entry) and the
# package's other files. PERSIST_NODE_PROFILE picks the cargo profile:
# `release` (default, what a package ships) or `dev` (reuses a test
# build's dependencies: what the test script uses).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
out="${1:-pkg}"
profile="${PERSIST_NODE_PROFILE:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "build-node: PERSIST_NODE_PROFILE is release or dev, not $profile" >&2; exit 2 ;;
esac

cargo build --locked --lib --no-default-features --features node --profile "$profile"
mkdir -p "$out"
triple=$(node -p 'process.platform + "-" + process.arch')
# Debug information stays in the build directory (a dev build's is
# hundreds of MB); the package keeps the symbols.
objcopy --strip-debug "$CARGO_TARGET_DIR/$dir/libpersist.so" "$out/persist.$triple.node"
cp js/node.js js/json-check.js "$out/"
echo "built $out/persist.$triple.node ($(stat -c %s "$out/persist.$triple.node") bytes, $profile)"
