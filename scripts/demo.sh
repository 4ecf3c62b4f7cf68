#!/usr/bin/env bash
# The main job: builds the `persist` command and runs its demo on an
# embedded SQLite store under ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
cargo run --release --locked --bin persist -- demo --data "${PERSIST_DATA:-data}"
