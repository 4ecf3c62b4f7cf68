#!/usr/bin/env bash
# Installs what the build and tests need, idempotently: the Debian packages
# named as arguments, the wasm32 target, clippy and rustfmt, and
# wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock (built
# from crates.io: no binary downloads).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "setup: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
for component in clippy rustfmt; do
  if ! rustup component list --installed | grep -q "^$component"; then
    rustup component add "$component"
  fi
done

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ -n "$want" ] && [ "$have" != "$want" ]; then
  echo "setup: building wasm-bindgen-cli $want (have: ${have:-none}); a few minutes on 2 cores"
  cargo install wasm-bindgen-cli --version "$want" --locked
fi

if ! command -v wasm-pack >/dev/null 2>&1; then
  echo "setup: building wasm-pack from crates.io; a few minutes on 2 cores"
  cargo install wasm-pack --locked
fi
