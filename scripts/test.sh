#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (native and wasm32), docs,
# the native test suites (conformance, durability, command line, property
# tests, the sync server on SQLite and a PostgreSQL this script starts) and
# the wasm32 build of the library. Used by CI as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# mDNS multicasts on every interface: keep it off the host here.
export PERSIST_MDNS=off

bash scripts/setup.sh chromium chromium-driver iproute2 postgresql

step() { printf '\n== %s\n' "$*"; }

step "rustfmt"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "clippy (native)"
cargo clippy --all-targets --locked -- -D warnings

step "clippy (the Node.js addon)"
cargo clippy --lib --locked --no-default-features --features node -- -D warnings

step "clippy (wasm32)"
cargo clippy --lib --test browser --locked --target wasm32-unknown-unknown -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

step "wasm32 build of the library (and no native imports in it)"
cargo build --lib --locked --target wasm32-unknown-unknown
python3 scripts/check-wasm-imports.py "$CARGO_TARGET_DIR/wasm32-unknown-unknown/debug/persist.wasm"

step "native tests (with a throw-away PostgreSQL on loopback for the sync server's storage)"
bash scripts/postgres.sh start
trap 'bash scripts/postgres.sh stop' EXIT
PERSIST_TEST_POSTGRES="$(bash scripts/postgres.sh url)"
export PERSIST_TEST_POSTGRES
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
  cargo test --doc --locked
else
  cargo test --locked --no-fail-fast
fi

step "fuzz smoke (every decoder, 10 s each; bash scripts/fuzz.sh SECONDS for longer runs)"
bash scripts/fuzz.sh 10

step "browser tests (headless Chromium: IndexedDB and memory conformance)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
CHROMEDRIVER=/usr/bin/chromedriver \
WASM_BINDGEN_TEST_TIMEOUT=120 \
  cargo test --locked --no-default-features --target wasm32-unknown-unknown --test browser

step "npm package @cuitty/persist (release wasm + wasm-bindgen; the Node.js addon, dev profile)"
PERSIST_NODE_PROFILE=dev bash scripts/build-pkg.sh

step "end-to-end tests (playwright-core + headless Chromium, the Node.js addon, native persist processes; node --test)"
# The `persist` binary the native tests built (a plain `cargo build` would
# resolve dependency features without the dev-dependencies and rebuild).
cargo test --no-run --locked --quiet
export PERSIST_BIN="$CARGO_TARGET_DIR/debug/persist"
(cd tests/e2e && npm install --no-audit --no-fund --loglevel=error && npm test)

step "WebRTC-direct and mDNS end to end, inside a network namespace (both multicast)"
bash scripts/netns.sh bash -c "cd tests/e2e && node --test --test-concurrency=1 webrtc.test.mjs node-mdns.test.mjs"
