// @cuitty/persist: loads the WebAssembly module on import, so callers never
// call init(). Works as a plain ES module in a page and in bundlers (Vite
// resolves the `new URL(..., import.meta.url)` asset).
import init, { createStore as createStoreWasm, Store, Records, Events, Kv } from "./persist_wasm.js";

await init({ module_or_path: new URL("./persist_wasm_bg.wasm", import.meta.url) });

/**
 * Opens a store: `createStore("name", { adapter: "indexeddb" })` or
 * `createStore({ name, adapter, strategy })`.
 */
export function createStore(nameOrOptions, options) {
  return createStoreWasm(nameOrOptions, options);
}

export { Store, Records, Events, Kv };
