// Type declarations for @cuitty/persist (hand-written; checked by tsc in the tests).

/** A JSON value: what records, events and keys hold. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** Error codes every Persist error carries in `code`. */
export type PersistErrorCode =
  | "ADAPTER_UNAVAILABLE"
  | "INVALID_OPTIONS"
  | "INVALID_NAME"
  | "INVALID_VALUE"
  | "VALUE_TOO_LARGE"
  | "CLOSED"
  | "STORE_REPLACED"
  | "KEY_INVALID"
  | "KEY_REQUIRED"
  | "NOT_ENCRYPTED"
  | "DECRYPT_FAILED"
  | "CRYPTO_UNAVAILABLE"
  | "ENCRYPTION_MISMATCH"
  | "STORAGE_CORRUPT"
  | "STORAGE_VERSION_UNSUPPORTED"
  | "STORE_FORMAT_UNSUPPORTED"
  | "STORAGE_IO"
  | "STORAGE_LOCKED"
  | "STORAGE_CONFLICT"
  | "STORAGE_FAILED"
  | "SIGNATURE_INVALID"
  | "WRONG_STORE"
  | "CHANGE_MALFORMED"
  | "CHANGE_CONFLICT"
  | "CHANGE_OUT_OF_ORDER"
  | "CLOCK_SKEW"
  | "NOT_TRUSTED"
  | "PAIRING_CODE_INVALID"
  | "PAIRING_CODE_EXPIRED"
  | "PAIRING_FAILED"
  | "P2P_STOPPED"
  | "P2P_UNAVAILABLE"
  | "P2P_FAILED"
  | "QUOTA_EXCEEDED"
  | "EQUIVOCATION"
  | "PROTOCOL_UNSUPPORTED"
  | "NOT_A_SERVER"
  | "SYNC_REMOTE_UNSET";

/** Every rejected promise rejects with an Error of this shape. */
export interface PersistError extends Error {
  code: PersistErrorCode;
}

export type Adapter = "indexeddb" | "memory" | "sqlite";
export type Strategy = "last-write-wins" | "merge-fields";

export interface StoreOptions {
  name?: string;
  /**
   * Browser default "indexeddb" ("sqlite" is ADAPTER_UNAVAILABLE there);
   * Node.js default "sqlite" ("indexeddb" is ADAPTER_UNAVAILABLE there).
   */
  adapter?: Adapter;
  /** Node.js: the SQLite file (default `data/<name>.db`). Ignored in the browser. */
  path?: string;
  strategy?: Strategy;
  /**
   * Create the store encrypted: values, names, ids and keys are sealed on the
   * device before they reach IndexedDB or the SQLite file (AES-256-GCM). An existing store keeps
   * what it was created with; `true` on an unencrypted one is INVALID_OPTIONS.
   */
  encrypt?: boolean;
  /**
   * A key from `store.crypto.exportKey()` (`persist-key-v1-...`): opens an
   * encrypted store this device has no key for. A mistyped key is
   * KEY_INVALID, a key that does not open the store DECRYPT_FAILED; neither
   * changes anything stored.
   */
  key?: string;
  /**
   * `strategy`: as `strategy` above. `remote`: the sync server(s) to sync
   * with from the moment the store opens (encrypted stores only): an
   * address ending in `/p2p/<its peer id>`, several separated by commas
   * or as a list, or the name of this deployment's server (any other text,
   * such as "postgres"), which the page names in
   * `<meta name="persist-sync-remote" content="ADDRESS">` or
   * `globalThis.PERSIST_SYNC_REMOTE` (natively: the PERSIST_SYNC_REMOTE
   * variable). Nothing named: SYNC_REMOTE_UNSET. In a browser the tab that
   * runs the store's node dials the servers (as `enableP2P({ syncServers })`).
   */
  sync?: { remote?: string | string[]; strategy?: Strategy };
}

export interface ListOptions {
  prefix?: string;
  limit?: number;
  /** The last id of the previous page (exclusive). */
  after?: string;
}

export interface RecordEntry<T extends JsonValue = JsonValue> {
  id: string;
  value: T;
}

export interface RecordChange<T extends JsonValue = JsonValue> {
  id: string;
  /** `undefined` when the record was deleted. */
  value?: T;
  origin: "local" | "remote";
}

export declare class Records {
  private constructor();
  put(id: string, value: JsonValue): Promise<void>;
  /** Many records in one commit and one storage transaction. */
  putMany(entries: [string, JsonValue][]): Promise<void>;
  get<T extends JsonValue = JsonValue>(id: string): Promise<T | undefined>;
  delete(id: string): Promise<void>;
  list<T extends JsonValue = JsonValue>(options?: ListOptions): Promise<RecordEntry<T>[]>;
  /** Returns a function that unsubscribes. */
  subscribe(callback: (changes: RecordChange[]) => void): () => void;
  free(): void;
}

export interface AppendedEvent {
  /** Sorts in log order (hybrid logical clock, then author). */
  id: string;
  /** Wall-clock milliseconds. */
  at: number;
}

export interface EventEntry<T extends JsonValue = JsonValue> extends AppendedEvent {
  value: T;
}

export interface EventListOptions {
  /** An event id (exclusive) or milliseconds since the epoch (exclusive). */
  since?: string | number;
  limit?: number;
}

export declare class Events {
  private constructor();
  append(value: JsonValue): Promise<AppendedEvent>;
  list<T extends JsonValue = JsonValue>(options?: EventListOptions): Promise<EventEntry<T>[]>;
  free(): void;
}

export declare class Kv {
  private constructor();
  set(key: string, value: JsonValue): Promise<void>;
  get<T extends JsonValue = JsonValue>(key: string): Promise<T | undefined>;
  delete(key: string): Promise<void>;
  free(): void;
}

export interface RotationProgress {
  /** The epoch the store rotated to. */
  epoch: number;
  /** The table being re-encrypted; `null` once done. */
  table: "records" | "events" | "kv" | null;
  scanned: number;
  resealed: number;
  done: boolean;
  /** Milliseconds spent decrypting and re-encrypting (storage excluded). */
  resealMs: number;
}

export declare class StoreCrypto {
  private constructor();
  /** True for an encrypted store (the other methods reject with NOT_ENCRYPTED otherwise). */
  readonly encrypted: boolean;
  /** The key epoch new data is sealed under. */
  epoch(): number;
  /** The current key as checksummed text: whoever holds it can read the store. */
  exportKey(): Promise<string>;
  /**
   * Starts a new key epoch (new writes use it at once) and re-encrypts the
   * stored data in batches, reporting progress; writes continue meanwhile.
   * Interrupted (tab closed, process killed), it resumes when the store next opens.
   */
  rotateKey(options?: { onProgress?: (progress: RotationProgress) => void }): Promise<RotationProgress>;
  /** Finishes an interrupted rotation; `null` when there is none. */
  resumeRotation(options?: { onProgress?: (progress: RotationProgress) => void }): Promise<RotationProgress | null>;
  /**
   * An invite for another device (`invite.code` goes out of band): a long
   * single-use secret and this device's addresses. Needs `enableP2P` first
   * (P2P_UNAVAILABLE otherwise).
   */
  createInvite(options?: { ttlMs?: number }): Promise<{ code: string; expiresAt: number }>;
  /** Joins the store of the device that created `code`; resolves to its peer id. */
  acceptInvite(code: string): Promise<string>;
  free(): void;
}

export interface P2POptions {
  /**
   * Nodes to connect through (`persist node`): WebSocket or WebRTC-direct
   * multiaddrs ending in `/p2p/<peer id>` (Node.js also dials TCP and QUIC).
   * Pairing codes are found there, and their relay makes this device
   * reachable to others.
   */
  bootstrapPeers?: string[];
  /**
   * Node.js listens on TCP, QUIC (`/udp/0/quic-v1`), WebSocket (`/tcp/0/ws`) and WebRTC-direct.
   * A browser cannot listen on sockets: only relayed addresses (`.../p2p-circuit`) are used, others are skipped with a warning.
   */
  listenAddrs?: string[];
  /** mDNS finds devices on the LAN in Node.js; a browser has none (`mdns: true` is skipped with a warning). `dht` defaults to on. */
  discovery?: { dht?: boolean; mdns?: boolean; bootstrapPeers?: string[] };
  /**
   * Sync servers (`persist node --serve`) to replicate with: WebSocket or
   * WebRTC-direct multiaddrs ending in `/p2p/<peer id>`. They hold the
   * store's ciphertext for devices that are never online together
   * (encrypted stores only). Events `server:ready`, `server:refused`.
   */
  syncServers?: string[];
}

export type P2PEventName =
  | "peer:connect" | "peer:disconnect" | "sync" | "pair" | "pair:failed" | "pair:request"
  | "member:add" | "member:remove" | "listen" | "leader" | "alert" | "server:ready"
  | "server:refused" | "*";

export interface P2PEvent {
  type: Exclude<P2PEventName, "*">;
  /** The peer concerned (all events but `listen` and `pair:failed`). */
  peer?: string;
  /** `sync`: commits stored, refused, and still to come from that peer. */
  applied?: number;
  rejected?: number;
  remaining?: number;
  /** `pair:failed`: the error's stable code. `alert`: what was seen
   *  (`"EQUIVOCATION"`: `peer` signed two different commits or membership entries
   *  under one number and is removed on every replica; `"PROTOCOL_UNSUPPORTED"`:
   *  `peer` speaks another version of the sync protocol, no sync until one is updated). */
  code?: string;
  /** `listen`: the address. */
  addr?: string;
  /** `leader` (browser only): whether this tab or another one runs the node now. */
  tab?: "this" | "other";
  /** `pair:request`: the joining device's name, its fingerprint, and which code it proved. */
  label?: string;
  fingerprint?: string;
  nameplate?: string;
}

/** A device that proved a code made with `confirm`, waiting for the answer. */
export interface PairingRequest {
  /** Its peer id. */
  peer: string;
  /** The name it gave itself. */
  label: string;
  /** `XXXX-XXXX`: compare with `p2p.fingerprint` on the joining device. */
  fingerprint: string;
}

/**
 * The store's P2P node (`store.enableP2P(...)`, then `store.p2p`). In a
 * browser, tabs of one origin share it: one tab runs the node (a Web Locks
 * leader; another takes over when it closes), the others forward calls to
 * it and hear its events over a BroadcastChannel. In Node.js the process
 * runs it, and a running node keeps the process alive until `stop()`.
 */
export declare class P2P {
  private constructor();
  /** This device's peer id (its Ed25519 key; the same in every tab of a browser). */
  readonly peerId: string;
  /** True in the tab that runs the node (always true in Node.js). */
  readonly isLeader: boolean;
  /** This device's fingerprint (`XXXX-XXXX`), what a host asking its user to confirm this device shows. */
  readonly fingerprint: string;
  /**
   * Offers a short pairing code (`ABCD-7KQ2`) for another device to type;
   * single use, expires after `ttlMs` (default 10 minutes). The outcome
   * arrives as a `pair` or `pair:failed` event. With `confirm`, the device
   * that proves the code receives nothing until `confirm` resolves to
   * `true` (refused otherwise, or after 50 s without an answer).
   */
  createPairingCode(options?: {
    ttlMs?: number;
    confirm?: (request: PairingRequest) => boolean | Promise<boolean>;
  }): Promise<string>;
  /** Answers a `pair:request` event yourself (what `confirm` does for you). */
  confirmPairing(peerId: string, accept: boolean): Promise<void>;
  /** Offers an invite (`persist-invite-v1-...`: a long secret and this device's addresses). */
  createInvite(options?: { ttlMs?: number }): Promise<{ code: string; expiresAt: number }>;
  /**
   * Joins the store of the device that offered `code` (a code or an invite);
   * resolves to its peer id. Rejects with PAIRING_CODE_INVALID,
   * PAIRING_CODE_EXPIRED or PAIRING_FAILED.
   */
  pair(code: string, options?: { peer?: string }): Promise<string>;
  /** Peer ids of the devices trusted to sync the store (this one included). */
  trustedPeers(): Promise<string[]>;
  /** Removes a device: its later writes are refused everywhere; an encrypted store re-keys. */
  revokeTrust(peerId: string): Promise<void>;
  connectedPeers(): Promise<string[]>;
  listenAddrs(): Promise<string[]>;
  dial(addr: string): Promise<void>;
  /** Calls `callback` on each such event; returns a function that stops it. */
  on(event: P2PEventName, callback: (event: P2PEvent) => void): () => void;
  /**
   * Stops the node (in a browser, this tab's part: if it ran the node,
   * another tab takes over). The store stays open.
   */
  stop(): void;
}

export declare class Store {
  private constructor();
  /** Starts this store's P2P node (once; later calls resolve to the same node). */
  enableP2P(options?: P2POptions): Promise<P2P>;
  /** The P2P node, `null` until `enableP2P`. */
  readonly p2p: P2P | null;
  /** Key export and rotation of an encrypted store. */
  readonly crypto: StoreCrypto;
  readonly name: string;
  /** Random id fixed at creation (hex). */
  readonly storeId: string;
  /** This device's Ed25519 public key (hex). */
  readonly deviceId: string;
  records(collection: string): Records;
  events(log: string): Events;
  readonly kv: Kv;
  close(): Promise<void>;
  free(): void;
}

export declare function createStore(name: string, options?: StoreOptions): Promise<Store>;
export declare function createStore(options: StoreOptions & { name: string }): Promise<Store>;
