// @cuitty/persist: scripts/build-pkg.sh appends this to wasm-bindgen's glue,
// so the package is one module and one fetch before the WebAssembly module.
// Loading on import means callers never call init(). Works as a plain ES
// module in a page and in bundlers (Vite resolves the
// `new URL(..., import.meta.url)` asset).
await __wbg_init({ module_or_path: new URL("./persist_wasm_bg.wasm", import.meta.url) });
