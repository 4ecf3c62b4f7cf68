// @cuitty/persist: scripts/build-pkg.sh appends this to wasm-bindgen's glue,
// so the package is one module and one fetch before the WebAssembly module.
// Loading on import means callers never call init(). Works as a plain ES
// module in a page and in bundlers (Vite resolves the
// `new URL(..., import.meta.url)` asset).
await __wbg_init({ module_or_path: new URL("./persist_wasm_bg.wasm", import.meta.url) });
// What is a JSON value, decided by the function both builds share
// (js/json-check.js, placed above by scripts/build-pkg.sh).
useJsonCheck(jsonCheck);

// Tabs of one origin share one device identity and one IndexedDB: exactly
// one of them runs a store's P2P node, elected with the Web Locks API (the
// lock `persist-p2p:<store name>` is held by the tab whose node runs, and
// passes to a waiting tab as soon as that tab closes). The other tabs use
// that node over a BroadcastChannel: their calls are forwarded to it, its
// events are repeated to them. Their writes reach the node through the
// shared IndexedDB (the tabs channel tells it to send them on).
const CALL_MS = { pair: 180_000, createPairingCode: 30_000 };

function codedError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

class SharedP2P {
  constructor(handle, options) {
    this._handle = handle;
    this._options = options;
    this._name = handle.name;
    this._listeners = new Set();
    this._calls = new Map();
    this._tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    this._node = null;
    this._leaderPeerId = null;
    this._leaderFingerprint = null;
    this._closed = false;
    this._channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`persist-p2p:${this._name}`) : null;
    if (this._channel) this._channel.onmessage = (m) => this._message(m.data);
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    const locks = globalThis.navigator?.locks;
    if (!locks || !this._channel) {
      this._lead().catch((e) => this._rejectReady(e));
      return;
    }
    locks
      .request(`persist-p2p:${this._name}`, () => (this._closed ? undefined : this._lead()))
      .catch((e) => this._rejectReady(e));
    this._askWho();
  }

  _askWho() {
    if (this._node || this._leaderPeerId || this._closed) return;
    this._post({ t: "who" });
    setTimeout(() => this._askWho(), 500);
  }

  _post(message) {
    try {
      this._channel?.postMessage(message);
    } catch {
      // The channel is closed: nothing to tell.
    }
  }

  /** This tab runs the node until it closes (or the store does). */
  async _lead() {
    const node = await this._handle.enableP2P(this._options);
    this._node = node;
    this._leaderPeerId = node.peerId;
    this._leaderFingerprint = node.fingerprint;
    node.on("*", (event) => {
      this._deliver(event);
      this._post({ t: "event", event });
    });
    this._post({ t: "leader", peerId: node.peerId, fingerprint: node.fingerprint });
    this._deliver({ type: "leader", tab: "this", peer: node.peerId });
    this._resolveReady(this);
    // Held until the store closes; the browser releases it with the tab.
    await new Promise((resolve) => (this._release = resolve));
    node.stop();
  }

  async _message(m) {
    if (!m || typeof m !== "object") return;
    if (m.t === "who" && this._node) {
      this._post({ t: "leader", peerId: this._node.peerId, fingerprint: this._node.fingerprint });
    } else if (m.t === "leader" && !this._node) {
      const first = !this._leaderPeerId;
      this._leaderPeerId = m.peerId;
      this._leaderFingerprint = m.fingerprint;
      if (first) this._resolveReady(this);
      this._deliver({ type: "leader", tab: "other", peer: m.peerId });
    } else if (m.t === "event" && !this._node) {
      this._deliver(m.event);
    } else if (m.t === "call" && this._node) {
      let reply;
      try {
        reply = { t: "reply", id: m.id, to: m.from, ok: true, value: await this._node[m.method](...m.args) };
      } catch (e) {
        reply = { t: "reply", id: m.id, to: m.from, ok: false, code: e?.code ?? "P2P_FAILED", message: String(e?.message ?? e) };
      }
      this._post(reply);
    } else if (m.t === "reply" && m.to === this._tab) {
      const call = this._calls.get(m.id);
      if (!call) return;
      this._calls.delete(m.id);
      clearTimeout(call.timer);
      if (m.ok) call.resolve(m.value);
      else call.reject(codedError(m.code, m.message));
    }
  }

  _deliver(event) {
    for (const l of [...this._listeners]) {
      if (l.event === "*" || l.event === event.type) {
        try {
          l.callback(event);
        } catch (e) {
          console.error("persist: a p2p listener threw", e);
        }
      }
    }
  }

  _call(method, args) {
    if (this._closed) return Promise.reject(codedError("CLOSED", "the store is closed"));
    if (this._node) return this._node[method](...args);
    return new Promise((resolve, reject) => {
      const id = `${this._tab}:${Math.random().toString(36).slice(2)}`;
      const ms = CALL_MS[method] ?? 10_000;
      const timer = setTimeout(() => {
        this._calls.delete(id);
        reject(codedError("P2P_UNAVAILABLE", `the tab running the P2P node did not answer ${method} in ${ms} ms`));
      }, ms);
      this._calls.set(id, { resolve, reject, timer });
      this._post({ t: "call", id, from: this._tab, method, args });
    });
  }

  /** This device's peer id (the same in every tab). */
  get peerId() {
    return this._node?.peerId ?? this._leaderPeerId;
  }

  /** True in the tab that runs the node. */
  get isLeader() {
    return this._node !== null;
  }

  /** This device's fingerprint (`XXXX-XXXX`). */
  get fingerprint() {
    return this._node?.fingerprint ?? this._leaderFingerprint;
  }

  /**
   * A pairing code. With `confirm` a function, the device that proves the
   * code waits for its answer (`true` accepts), given `{ peer, label,
   * fingerprint }`; this tab answers, whichever tab runs the node.
   */
  async createPairingCode(options) {
    const confirm = options?.confirm;
    if (confirm === undefined || confirm === null || typeof confirm === "boolean") {
      return this._call("createPairingCode", [options]);
    }
    if (typeof confirm !== "function") {
      throw codedError("INVALID_OPTIONS", "confirm must be a function (or a boolean)");
    }
    const code = await this._call("createPairingCode", [{ ...options, confirm: true }]);
    const nameplate = code.slice(0, 4);
    const stop = this.on("pair:request", async (event) => {
      if (event.nameplate !== nameplate) return;
      stop();
      clearTimeout(timer);
      let accept = false;
      try {
        accept = (await confirm({ peer: event.peer, label: event.label, fingerprint: event.fingerprint })) === true;
      } catch (e) {
        console.error("persist: a pairing confirmation threw (the device is refused)", e);
      }
      try {
        await this.confirmPairing(event.peer, accept);
      } catch (e) {
        console.error("persist: the pairing answer did not reach the node", e);
      }
    });
    // A code nobody proves stops being listened for once it expired.
    const timer = setTimeout(stop, (options?.ttlMs ?? 600_000) + 60_000);
    return code;
  }

  confirmPairing(peer, accept) {
    return this._call("confirmPairing", [peer, accept]);
  }

  createInvite(options) {
    return this._call("createInvite", [options]);
  }

  pair(code, options) {
    return this._call("pair", [code, options]);
  }

  trustedPeers() {
    return this._call("trustedPeers", []);
  }

  revokeTrust(peer) {
    return this._call("revokeTrust", [peer]);
  }

  connectedPeers() {
    return this._call("connectedPeers", []);
  }

  listenAddrs() {
    return this._call("listenAddrs", []);
  }

  dial(addr) {
    return this._call("dial", [addr]);
  }

  on(event, callback) {
    const listener = { event, callback };
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** Stops this tab's part: its node if it leads (another tab takes over). */
  stop() {
    this._closed = true;
    this._release?.();
    this._node = null;
    for (const [, call] of this._calls) {
      clearTimeout(call.timer);
      call.reject(codedError("CLOSED", "P2P stopped in this tab"));
    }
    this._calls.clear();
    this._channel?.close();
  }
}

/**
 * `store.crypto`: key export and rotation (the store's own), and the
 * invites (`createInvite()`, `acceptInvite(code)`), which
 * run over the store's P2P node: an invite carries a long secret and this
 * device's addresses, and accepting it runs the same PAKE exchange as a
 * pairing code.
 */
class StoreCrypto {
  #handle;
  #store;

  constructor(handle, store) {
    this.#handle = handle;
    this.#store = store;
  }

  get encrypted() {
    return this.#handle.encrypted;
  }

  epoch() {
    return this.#handle.epoch();
  }

  exportKey() {
    return this.#handle.exportKey();
  }

  rotateKey(options) {
    return this.#handle.rotateKey(options);
  }

  resumeRotation(options) {
    return this.#handle.resumeRotation(options);
  }

  async createInvite(options) {
    return this.#node().createInvite(options);
  }

  async acceptInvite(code) {
    return this.#node().pair(code);
  }

  #node() {
    const node = this.#store.p2p;
    if (!node) throw codedError("P2P_UNAVAILABLE", "invites travel over P2P: call store.enableP2P({ bootstrapPeers }) first");
    return node;
  }

  free() {
    this.#handle.free();
  }
}

/**
 * An open store: its data through the Rust handle, its P2P node shared by
 * the origin's tabs (`SharedP2P`), its `crypto` with invites.
 */
class Store {
  #handle;
  #p2p = null;

  /** Not for applications: `createStore` makes stores. */
  constructor(handle) {
    this.#handle = handle;
  }

  records(collection) {
    return this.#handle.records(collection);
  }

  events(log) {
    return this.#handle.events(log);
  }

  get kv() {
    return this.#handle.kv;
  }

  get name() {
    return this.#handle.name;
  }

  get storeId() {
    return this.#handle.storeId;
  }

  get deviceId() {
    return this.#handle.deviceId;
  }

  get crypto() {
    return new StoreCrypto(this.#handle.crypto, this);
  }

  /** Starts (or joins, from another tab) the store's P2P node. */
  enableP2P(options) {
    if (!this.#p2p || this.#p2p._closed) this.#p2p = new SharedP2P(this.#handle, options ?? {});
    return this.#p2p.ready;
  }

  get p2p() {
    return this.#p2p && !this.#p2p._closed ? this.#p2p : null;
  }

  close() {
    this.#p2p?.stop();
    return this.#handle.close();
  }

  free() {
    this.#handle.free();
  }
}

export { Store, StoreCrypto, SharedP2P as P2P };

// `sync: { remote }`: the store syncs through the sync server(s) from the
// moment it opens, over the tab's node (the tab that runs the store's node
// dials them). `remote` is an address (`/dns4/.../tcp/443/wss/p2p/...`,
// `/ip4/.../udp/4003/webrtc-direct/certhash/.../p2p/...`; several
// separated by commas, or a list), or the name of the deployment's server
// (any other text, such as "postgres"), which the page names in
// `<meta name="persist-sync-remote" content="ADDRESS[,ADDRESS]">` or
// `globalThis.PERSIST_SYNC_REMOTE`.
function syncServers(remote) {
  const list = Array.isArray(remote) ? remote : [remote];
  if (list.length === 0 || list.some((r) => typeof r !== "string")) {
    throw codedError("INVALID_OPTIONS", "sync.remote is a sync server's address, a list of them, or the name of this deployment's server");
  }
  const split = (text) => String(text).split(",").map((a) => a.trim()).filter(Boolean);
  const servers = [];
  for (const r of list) {
    if (r.trim().startsWith("/")) {
      servers.push(...split(r));
      continue;
    }
    const configured = globalThis.PERSIST_SYNC_REMOTE
      ?? globalThis.document?.querySelector?.('meta[name="persist-sync-remote"]')?.content;
    const found = Array.isArray(configured) ? configured.flatMap(split) : split(configured ?? "");
    if (found.length === 0) {
      throw codedError("SYNC_REMOTE_UNSET", `sync remote "${r}" names this deployment's sync server: name its address in the page (<meta name="persist-sync-remote" content="/dns4/.../tcp/443/wss/p2p/..."> or globalThis.PERSIST_SYNC_REMOTE), or give the address itself`);
    }
    servers.push(...found);
  }
  return servers;
}

export async function createStore(nameOrOptions, options) {
  const given = typeof nameOrOptions === "string" ? options : nameOrOptions;
  const remote = given?.sync?.remote;
  const servers = remote === undefined ? null : syncServers(remote);
  const store = new Store(await openStore(nameOrOptions, options));
  if (servers) {
    try {
      await store.enableP2P({ syncServers: servers });
    } catch (e) {
      await store.close();
      throw e;
    }
  }
  return store;
}
