#!/usr/bin/env bash
# Builds the npm package @cuitty/persist into pkg/ with wasm-pack: the
# library for wasm32-unknown-unknown (release), wasm-bindgen's ES-module glue
# (`--mode no-install`: the installed wasm-bindgen-cli, same version as
# Cargo.lock; nothing is downloaded; no wasm-opt, see Cargo.toml), then one
# module, index.js = the glue + js/json-check.js + js/index.js (loads the WebAssembly on import,
# so no init() call), hand-written TypeScript declarations, and package.json
# generated from pkg.json.template; then the Node.js addon
# (scripts/build-node.sh) unless `--browser-only` comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/persist-target}"
node_addon=yes
if [ "${1:-}" = "--browser-only" ]; then
  node_addon=no
  shift
fi
out="${1:-pkg}"

rm -rf "$out"
wasm-pack --quiet build --profile wasm-release --target web --mode no-install --no-pack \
  --out-dir "$out" --out-name persist_wasm . -- --locked --no-default-features
rm -f "$out/.gitignore" "$out/README.md"
# The glue's own init exports are dropped: importing the package initializes it.
exports='export { initSync, __wbg_init as default };'
grep -qxF "$exports" "$out/persist_wasm.js" || { echo "build-pkg: wasm-bindgen glue changed shape (no '$exports')" >&2; exit 1; }
# js/json-check.js (the JSON check both builds share; Node.js imports it)
# goes in as a plain function, so the page still fetches one module.
check=$(sed 's/^export function jsonCheck(/function jsonCheck(/' js/json-check.js)
grep -q '^function jsonCheck(' <<<"$check" || { echo "build-pkg: js/json-check.js changed shape (no 'export function jsonCheck(')" >&2; exit 1; }
{ grep -vxF "$exports" "$out/persist_wasm.js"; printf '%s\n' "$check"; cat js/index.js; } > "$out/index.js"
rm "$out/persist_wasm.js" "$out/persist_wasm.d.ts"
cp js/index.d.ts "$out/"
version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
sed "s/@VERSION@/$version/" pkg.json.template > "$out/package.json"
python3 scripts/check-wasm-imports.py "$out/persist_wasm_bg.wasm"
raw=$(stat -c %s "$out/persist_wasm_bg.wasm")
gz=$(gzip -9 -c "$out/persist_wasm_bg.wasm" | wc -c)
echo "built $out: persist_wasm_bg.wasm $raw bytes ($gz gzip)"
if [ "$node_addon" = yes ]; then
  bash scripts/build-node.sh "$out"
fi
