// Compiled by tsc (no emit) against the package's declarations: the API as
// the README shows it must type-check, and misuse must not.
import { createStore, type PersistError, type Store } from "@cuitty/persist";

export async function sample(): Promise<Store> {
  const store = await createStore("shared-notes", { adapter: "indexeddb" });
  const store2 = await createStore({ name: "my-app", adapter: "indexeddb", strategy: "merge-fields" });
  await store.records("notes").put("n1", { title: "hi", body: "..." });
  const note = await store.records("notes").get<{ title: string; body: string }>("n1");
  const title: string | undefined = note?.title;
  await store.records("notes").putMany([["a", 1], ["b", { c: [true, null] }]]);
  await store.records("notes").delete("n1");
  const page = await store.records("notes").list({ prefix: "n", limit: 10, after: "n0" });
  const ids: string[] = page.map((r) => r.id);
  const off: () => void = store.records("notes").subscribe((changes) => changes.forEach((c) => c.origin));
  off();
  const event = await store.events("audit").append({ action: "login" });
  const at: number = event.at;
  await store.events("audit").list({ since: event.id });
  await store.events("audit").list({ since: at, limit: 5 });
  await store.kv.set("theme", "dark");
  const theme = await store.kv.get<string>("theme");
  await store.kv.delete("theme");
  try {
    await createStore("x", { adapter: "sqlite" });
  } catch (e) {
    const code: string = (e as PersistError).code;
    void code;
  }
  // @ts-expect-error: values must be JSON
  await store.records("notes").put("bad", () => 1);
  // @ts-expect-error: unknown adapter
  await createStore("y", { adapter: "postgres" });
  // The encryption page's calls.
  const vault = await createStore({ name: "my-app", adapter: "indexeddb", encrypt: true });
  const exportedKey: string = await vault.crypto.exportKey();
  const copy = await createStore({ name: "my-app-copy", encrypt: true, key: exportedKey });
  await vault.crypto.rotateKey();
  const done = await copy.crypto.rotateKey({ onProgress: (p) => console.log(p.epoch, p.resealed, p.table) });
  const epoch: number = done.epoch + vault.crypto.epoch();
  // @ts-expect-error: a key is text
  await createStore({ name: "bad", key: 42 });
  // The P2P page's calls.
  const p2p = await store.enableP2P({ listenAddrs: ["/ip4/0.0.0.0/tcp/0"], bootstrapPeers: ["/dns4/node.example.com/tcp/443/wss/p2p/12D3KooW"] });
  await store.enableP2P({ discovery: { mdns: true, dht: true, bootstrapPeers: ["..."] } });
  const code: string = await store.p2p!.createPairingCode();
  const host: string = await p2p.pair(code);
  const peers: string[] = await p2p.trustedPeers();
  await p2p.revokeTrust(peers[0]);
  const stopListening: () => void = p2p.on("sync", (e) => console.log(e.peer, e.applied, e.remaining));
  stopListening();
  const invite = await store.crypto.createInvite();
  const inviter: string = await store.crypto.acceptInvite(invite.code);
  void inviter;
  // @ts-expect-error: an unknown event
  p2p.on("nope", () => {});
  void [title, ids, theme, store2, epoch, host, p2p.peerId, p2p.isLeader];
  return store;
}
