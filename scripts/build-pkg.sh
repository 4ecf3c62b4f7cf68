#!/usr/bin/env bash
# Builds the npm package @cuitty/persist into pkg/ with wasm-pack: the
# library for wasm32-unknown-unknown (release), wasm-bindgen's ES-module glue
# (`--mode no-install`: the installed wasm-bindgen-cli, same version as
# Cargo.lock; nothing is downloaded; no wasm-opt, see Cargo.toml), then the
# loader that needs no init() call, hand-written TypeScript declarations, and
# package.json generated from pkg.json.template.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
out="${1:-pkg}"

rm -rf "$out"
wasm-pack --quiet build --release --target web --mode no-install --no-pack \
  --out-dir "$out" --out-name persist_wasm . -- --locked --no-default-features
rm -f "$out/.gitignore" "$out/README.md"
cp js/index.js js/index.d.ts "$out/"
version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
sed "s/@VERSION@/$version/" pkg.json.template > "$out/package.json"
python3 scripts/check-wasm-imports.py "$out/persist_wasm_bg.wasm"
raw=$(stat -c %s "$out/persist_wasm_bg.wasm")
gz=$(gzip -9 -c "$out/persist_wasm_bg.wasm" | wc -c)
echo "built $out: persist_wasm_bg.wasm $raw bytes ($gz gzip)"
