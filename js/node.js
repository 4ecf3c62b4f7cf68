// @cuitty/persist in Node.js: the native addon (SQLite files, a key file
// or the OS keychain, TCP, QUIC, WebSocket and WebRTC-direct listeners,
// mDNS, sync servers) behind the same API and TypeScript declarations as
// the browser build. Stores live in files: `path`, or `data/<name>.db`
// under the working directory.
import { createRequire } from "node:module";
import { jsonCheck } from "./json-check.js";

const require = createRequire(import.meta.url);
const platform = `${process.platform}-${process.arch}`;

function load() {
  try {
    return require(`./persist.${platform}.node`);
  } catch (e) {
    const error = new Error(
      `@cuitty/persist has no native addon for ${platform} in this package (${e.message}); ` +
        "build it from the sources with bash scripts/build-node.sh",
    );
    error.code = "ADAPTER_UNAVAILABLE";
    throw error;
  }
}

const addon = load();
addon.useJsonCheck(jsonCheck);

export const { Store, Records, Events, Kv, StoreCrypto, P2P } = addon;

/**
 * Opens (or creates) a store: `createStore("name", { adapter: "sqlite",
 * path, encrypt, key, strategy, sync: { remote } })` or
 * `createStore({ name, ... })`.
 */
export async function createStore(nameOrOptions, options) {
  return addon.openStore(nameOrOptions, options);
}
