// One network, end to end: browser tabs (headless Chromium, each browser
// context its own device) and native `persist` processes pair by code and
// replicate through a `persist node` (bootstrap, relay, rendezvous), all on
// loopback. Run by scripts/test.sh after the native build and
// scripts/build-pkg.sh; PERSIST_BIN names the `persist` binary.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import {
  BIN, WAIT_MS, device, env, ids, online, persist, persistDone, root, startNode, until, useHarness, waitForRecord,
} from "./harness.mjs";

useHarness();

test("a tab pairs with a native device by code through a node; notes flow both ways", async () => {
  const { tcp, ws } = await startNode();
  const db = join(env.work, "native.db");
  await persistDone(["put", "--path", db, "--encrypt", "notes", "n-native", '{"title":"from native"}']);
  const host = persist(["pair", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  const code = (await host.waitFor(/^code: (\S+)$/))[1];

  const a = await device();
  await online(a.page, "notes", ws);
  const hostPeer = await a.page.evaluate((code) => window.store.p2p.pair(code), code);
  assert.match(hostPeer, /^12D3Koo/);
  assert.deepEqual(await waitForRecord(a.page, "notes", "n-native"), { title: "from native" });

  // Written in the tab, received by the native device while connected.
  await a.page.evaluate(() => window.store.records("notes").put("n-tab", { title: "from the tab" }));
  await host.waitFor(/^received: \d+ from /);
  await a.page.evaluate(() => window.store.p2p.stop());
  assert.equal(await host.exited, 0);
  const got = await persistDone(["get", "--path", db, "notes", "n-tab"]);
  assert.deepEqual(JSON.parse(got), { title: "from the tab" });

  // Later: a native write while the tab is away; the tab comes back (a
  // reload: same device, same IndexedDB) and finds the native device
  // through the node.
  await persistDone(["put", "--path", db, "notes", "n-later", '{"title":"written while the tab was away"}']);
  const serving = persist(["sync", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "30"]);
  await serving.waitFor(/^address: /);
  await a.page.reload();
  await online(a.page, "notes", ws);
  assert.deepEqual(await waitForRecord(a.page, "notes", "n-later"), { title: "written while the tab was away" });
  assert.deepEqual(a.errors, []);
  await a.ctx.close();
  serving.child.kill("SIGTERM");
});

test("the reverse: a tab offers a code and a native device joins its store through the node's relay", async () => {
  const { node, tcp, ws } = await startNode();
  const tab = await device();
  // The README's P2P sample as written (a browser skips the TCP
  // listener and mDNS, with a console warning), with a real node address.
  const tabPeer = await tab.page.evaluate(async (node) => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("notes");
    await store.enableP2P({ listenAddrs: ["/ip4/0.0.0.0/tcp/0"], bootstrapPeers: [node] });
    await store.p2p.stop();
    await store.enableP2P({ discovery: { mdns: true, dht: true, bootstrapPeers: [node] } });
    window.persistEvents = [];
    store.p2p.on("*", (e) => window.persistEvents.push(e));
    window.store = store;
    return store.p2p.peerId;
  }, ws);
  await tab.page.evaluate(() => window.store.records("notes").put("from-tab", { title: "the tab's store" }));
  // Reachable through the relay (a reservation) before offering the code.
  await tab.page.evaluate(async () => {
    const until = Date.now() + 30_000;
    while (!(await window.store.p2p.listenAddrs()).some((a) => a.includes("/p2p-circuit"))) {
      if (Date.now() > until) throw new Error("no relay reservation in 30 s");
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  // The tab's user confirms the joining device (its fingerprint shown).
  const code = await tab.page.evaluate(() =>
    window.store.p2p.createPairingCode({
      confirm: (request) => {
        window.pairRequest = request;
        return true;
      },
    }),
  );
  const db = join(env.work, "joiner.db");
  const out = await persistDone(["pair", code, "--path", db, "--bootstrap", tcp, "--for", "30"]);
  assert.match(out, new RegExp(`paired with ${tabPeer}`));
  const fingerprint = out.match(/^this device: fingerprint (\S+)$/m)?.[1];
  const request = await tab.page.evaluate(() => window.pairRequest);
  assert.equal(request.fingerprint, fingerprint);
  assert.match(request.peer, /^12D3Koo/);
  await node.waitFor(new RegExp(`^circuit: \\S+ -> ${tabPeer}$`));
  assert.deepEqual(JSON.parse(await persistDone(["get", "--path", db, "notes", "from-tab"])), { title: "the tab's store" });
  assert.deepEqual(tab.errors, []);
  await tab.ctx.close();
});

test("invites: one tab invites another browser with store.crypto.createInvite, which accepts it", async () => {
  const { ws } = await startNode();
  const a = await device();
  const aPeer = await online(a.page, "vault", ws, { encrypt: true });
  await a.page.evaluate(() => window.store.records("notes").put("sealed", { title: "only for invited devices" }));
  await a.page.evaluate(async () => {
    while (!(await window.store.p2p.listenAddrs()).some((x) => x.includes("/p2p-circuit"))) await new Promise((r) => setTimeout(r, 50));
  });
  const invite = await a.page.evaluate(() => window.store.crypto.createInvite());
  assert.match(invite.code, /^persist-invite-v1-/);
  const b = await device();
  await online(b.page, "vault", ws);
  assert.equal(await b.page.evaluate((code) => window.store.crypto.acceptInvite(code), invite.code), aPeer);
  assert.deepEqual(await waitForRecord(b.page, "notes", "sealed"), { title: "only for invited devices" });
  assert.equal(await b.page.evaluate(() => window.store.crypto.encrypted), true);
  // Single use: a third browser cannot reuse it.
  const c = await device();
  await online(c.page, "vault", ws);
  const reused = await c.page.evaluate((code) => window.store.crypto.acceptInvite(code).then(() => "accepted", (e) => e.code), invite.code);
  assert.match(reused, /^PAIRING_(CODE_INVALID|FAILED)$/);
  // Without P2P there is nothing to carry an invite.
  const d = await device();
  const offline = await d.page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const s = await createStore("alone", { encrypt: true });
    return s.crypto.createInvite().then(() => "created", (e) => e.code);
  });
  assert.equal(offline, "P2P_UNAVAILABLE");
  for (const x of [a, b, c, d]) await x.ctx.close();
});

test("two browsers pair through the relay; writes flow tab <-> tab <-> native, offline and back; revocation; strangers refused", async () => {
  const { node, tcp, ws } = await startNode();
  const db = join(env.work, "laptop.db");
  await persistDone(["put", "--path", db, "--encrypt", "notes", "secret-marker-1", '{"title":"SECRET-MARKER native"}']);
  const host = persist(["pair", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  const nativeCode = (await host.waitFor(/^code: (\S+)$/))[1];

  // Tab A (one browser) joins the native device's encrypted store.
  const a = await device();
  const aPeer = await online(a.page, "notes", ws);
  await a.page.evaluate((code) => window.store.p2p.pair(code), nativeCode);
  await waitForRecord(a.page, "notes", "secret-marker-1");
  await a.page.evaluate(() => window.store.p2p.stop());
  assert.equal(await host.exited, 0);

  // A offers a code; tab B (another browser) finds A through the node and
  // reaches it through the node's relay (a browser cannot listen).
  await a.page.reload();
  await online(a.page, "notes", ws);
  await until(a.page, () => window.persistEvents.some((e) => e.type === "listen" && e.addr.includes("/p2p-circuit")));
  const code = await a.page.evaluate(() => window.store.p2p.createPairingCode());
  const b = await device();
  const bPeer = await online(b.page, "notes", ws);
  assert.equal(await b.page.evaluate((code) => window.store.p2p.pair(code), code), aPeer);
  await node.waitFor(new RegExp(`^circuit: ${bPeer} -> ${aPeer}$`));
  assert.deepEqual(await waitForRecord(b.page, "notes", "secret-marker-1"), { title: "SECRET-MARKER native" });
  assert.deepEqual((await b.page.evaluate(() => window.store.p2p.trustedPeers())).sort(), (await a.page.evaluate(() => window.store.p2p.trustedPeers())).sort());

  // B -> A live, then the native device comes online and meets both
  // through the node (registered under the store's namespace).
  await b.page.evaluate(() => window.store.records("notes").put("from-b", { title: "SECRET-MARKER from B" }));
  await waitForRecord(a.page, "notes", "from-b");
  let laptop = persist(["sync", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  await laptop.waitFor(/^received: /);
  laptop.child.kill("SIGTERM");
  await laptop.exited;
  assert.deepEqual(JSON.parse(await persistDone(["get", "--path", db, "notes", "from-b"])), { title: "SECRET-MARKER from B" });

  // B goes offline; A writes; B comes back and catches up.
  await b.page.evaluate(() => window.store.p2p.stop());
  await a.page.evaluate(() => window.store.records("notes").put("while-b-away", { title: "written while B was offline" }));
  await b.page.reload();
  await online(b.page, "notes", ws);
  assert.deepEqual(await waitForRecord(b.page, "notes", "while-b-away"), { title: "written while B was offline" });

  // The node relayed and stored nothing readable: its folder holds no marker.
  const { spawnSync } = await import("node:child_process");
  const scan = spawnSync("grep", ["-rl", "SECRET-MARKER", env.work], { encoding: "utf8" });
  assert.ok(scan.status === 0 || scan.status === 1, scan.stderr);
  const found = scan.stdout.split("\n").filter(Boolean);
  assert.ok(found.every((f) => !f.includes("/node-")), `the node's files hold plaintext: ${found}`);

  // A stranger (a third browser, never paired) is refused by A, B and the
  // native device, and learns nothing.
  laptop = persist(["sync", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  const laptopWs = (await laptop.waitFor(/^address: (\/ip4\/127\.0\.0\.1\/tcp\/\d+\/ws\/p2p\/[^/\s]+)$/))[1];
  const laptopPeer = laptopWs.split("/p2p/")[1];
  await until(a.page, (p) => window.persistEvents.some((e) => e.type === "peer:connect" && e.peer === p), laptopPeer);
  const s = await device();
  const strangerPeer = await online(s.page, "notes", ws);
  const aCircuit = `${ws}/p2p-circuit/p2p/${aPeer}`;
  const refused = await s.page.evaluate(async ({ targets, ms }) => {
    for (const t of targets) await window.store.p2p.dial(t).catch(() => {});
    await new Promise((r) => setTimeout(r, ms));
    const connected = await window.store.p2p.connectedPeers();
    return { connected, notes: (await window.store.records("notes").list()).length };
  }, { targets: [aCircuit, laptopWs], ms: 2000 });
  assert.ok(!refused.connected.includes(aPeer), "A refused the stranger");
  assert.ok(!refused.connected.includes(laptopPeer), "the native device refused the stranger");
  assert.equal(refused.notes, 0);
  assert.ok(!laptop.lines.some((l) => l.includes(strangerPeer)), "the native device never saw the stranger connected");
  await s.ctx.close();

  // Revoking B on the native device: A learns it and drops B; B can no
  // longer sync, and later writes never reach it.
  laptop.child.kill("SIGTERM");
  await laptop.exited;
  await persistDone(["revoke", "--path", db, bPeer]);
  await persistDone(["put", "--path", db, "notes", "after-revoke", '{"title":"not for B"}']);
  laptop = persist(["sync", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  await waitForRecord(a.page, "notes", "after-revoke");
  await until(a.page, (p) => window.persistEvents.some((e) => e.type === "member:remove" && e.peer === p), bPeer);
  await until(b.page, (p) => window.persistEvents.some((e) => e.type === "peer:disconnect" && e.peer === p), aPeer);
  await a.page.evaluate(() => window.store.records("notes").put("after-revoke-a", { title: "not for B either" }));
  await new Promise((r) => setTimeout(r, 2000));
  const bIds = await ids(b.page, "notes");
  assert.ok(!bIds.includes("after-revoke") && !bIds.includes("after-revoke-a"), `B got writes after its revocation: ${bIds}`);
  assert.ok(!(await a.page.evaluate(() => window.store.p2p.trustedPeers())).includes(bPeer));
  assert.deepEqual([...a.errors, ...b.errors], []);
  laptop.child.kill("SIGTERM");
  await a.ctx.close();
  await b.ctx.close();
});

test("tabs of one origin: one runs the node, the others use it; when it closes another takes over within 2 s and sync continues", async () => {
  const { tcp, ws } = await startNode();
  const db = join(env.work, "desk.db");
  await persistDone(["put", "--path", db, "notes", "desk-1", '{"title":"from the desk"}']);
  const host = persist(["pair", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  const code = (await host.waitFor(/^code: (\S+)$/))[1];

  const ctx = await env.browser.newContext();
  const first = await device(ctx);
  const peer = await online(first.page, "notes", ws);
  await first.page.evaluate((code) => window.store.p2p.pair(code), code);
  await waitForRecord(first.page, "notes", "desk-1");
  assert.equal(await first.page.evaluate(() => window.store.p2p.isLeader), true);

  // A second tab of the same origin: same device, no second node.
  const second = await device(ctx);
  assert.equal(await online(second.page, "notes", ws), peer);
  assert.equal(await second.page.evaluate(() => window.store.p2p.isLeader), false);
  assert.equal((await second.page.evaluate(() => window.store.p2p.trustedPeers())).length, 2, "calls are forwarded to the leader");
  await second.page.evaluate(() => window.store.records("notes").put("from-second-tab", { title: "written in the other tab" }));
  await host.waitFor(/^received: \d+ from /);

  // The leader tab closes: the other one runs the node within 2 s.
  const closedAt = Date.now();
  await first.page.close();
  await until(second.page, () => window.store.p2p.isLeader, undefined, 2_000);
  const tookOverMs = Date.now() - closedAt;
  console.log(`# takeover after the leader tab closed: ${tookOverMs} ms`);
  assert.ok(tookOverMs <= 2_000);
  assert.equal(await host.exited, 0);
  assert.deepEqual(JSON.parse(await persistDone(["get", "--path", db, "notes", "from-second-tab"])), { title: "written in the other tab" });

  // Sync continues from the new leader: both ways.
  await persistDone(["put", "--path", db, "notes", "desk-2", '{"title":"after the takeover"}']);
  const desk = persist(["sync", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  assert.deepEqual(await waitForRecord(second.page, "notes", "desk-2"), { title: "after the takeover" });
  await second.page.evaluate(() => window.store.records("notes").put("from-new-leader", { title: "after the takeover, from the tab" }));
  await desk.waitFor(/^received: \d+ from /);
  assert.deepEqual(second.errors, []);
  desk.child.kill("SIGTERM");
  await ctx.close();
});

test("the README's demo: a page pairs with the native notes device by code and notes replicate both ways, encrypted", async () => {
  const demo = spawn("bash", [join(root, "scripts/demo.sh")], {
    cwd: root,
    env: {
      ...process.env, PERSIST_BIN: BIN, PERSIST_DEMO_PKG: "0", PERSIST_DEMO_PORT: "0",
      PERSIST_DATA: join(env.work, "demo-data"), PERSIST_DEMO_FOR: "120", PERSIST_KEYCHAIN: "off",
    },
    stdio: ["pipe", "pipe", "pipe"],
    detached: true,
  });
  env.processes.push({ kill: (signal) => { try { process.kill(-demo.pid, signal); } catch {} } });
  let out = "";
  let err = "";
  demo.stdout.on("data", (c) => (out += c));
  demo.stderr.on("data", (c) => (err += c));
  const line = async (regex, ms = 120_000) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const m = out.match(regex);
      if (m) return m;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`demo: no ${regex} in ${ms} ms\n${out}\n${err}`);
  };
  const url = (await line(/^open: (\S+)$/m))[1];
  const code = (await line(/^code: (\S+)$/m))[1];
  demo.stdin.write("hello from the terminal\n");
  await line(/^note written: hello from the terminal$/m);

  const { page, ctx, errors } = await device();
  await page.goto(url);
  await until(page, () => document.querySelector("#net")?.textContent.includes("this tab runs the node"));
  await page.fill("#code", code);
  await page.click("#pair button");
  await until(page, () => document.querySelector("#pairing").textContent.startsWith("Paired"));
  await until(page, () => document.querySelector("#notes").textContent.includes("hello from the terminal"));
  assert.match(await page.textContent("#status"), /encrypted/);

  await page.fill("#title", "hello from the page");
  await page.press("#title", "Enter");
  await line(/^note received: hello from the page$/m, WAIT_MS);
  assert.deepEqual(errors, []);
  await ctx.close();
  // Ctrl-C stops it all (bounded: a stuck process fails the test).
  const exited = new Promise((r) => demo.on("exit", (code, signal) => r(code ?? signal)));
  process.kill(-demo.pid, "SIGINT");
  const stopped = await Promise.race([exited, new Promise((r) => setTimeout(() => r("still running"), 10_000).unref())]);
  assert.notEqual(stopped, "still running", `the demo did not stop on Ctrl-C:\n${out}`);
});

/** What a serving node's health endpoint says (its JSON body). */
async function health(addr) {
  const response = await fetch(`http://${addr}/health`);
  return response.json();
}

/** Waits until the serving node holds at least `commits` commits. */
async function holds(addr, commits) {
  const until = Date.now() + WAIT_MS;
  for (;;) {
    const state = await health(addr);
    if (state.commits >= commits) return state.commits;
    if (Date.now() > until) throw new Error(`the server holds ${state.commits} commits, not ${commits}, after ${WAIT_MS} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("a tab and a native device never online together converge through a sync server; the tab opens with createStore({ sync: { remote: 'postgres' } })", async () => {
  const server = persist([
    "node", "--data", join(env.work, "server"), "--for", "300", "--serve",
    "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--health", "127.0.0.1:0",
  ]);
  const tcp = (await server.waitFor(/^listening: (\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\S+)$/))[1];
  const ws = (await server.waitFor(/^listening: (\S+\/ws\/p2p\/[^/\s]+)$/))[1];
  const healthAddr = (await server.waitFor(/^health: http:\/\/(\S+)\/$/))[1];

  // The native device pairs the tab (codes meet at the same node), then
  // both go: from here on they are never online at once.
  const db = join(env.work, "served-native.db");
  await persistDone(["put", "--path", db, "--encrypt", "notes", "n-first", '{"title":"before pairing"}']);
  const host = persist(["pair", "--path", db, "--bootstrap", tcp, "--remote", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "60"]);
  const code = (await host.waitFor(/^code: (\S+)$/))[1];
  const tab = await device();
  await online(tab.page, "notes", ws, { adapter: "indexeddb", encrypt: true });
  await tab.page.evaluate((code) => window.store.p2p.pair(code), code);
  assert.deepEqual(await waitForRecord(tab.page, "notes", "n-first"), { title: "before pairing" });
  await tab.page.evaluate(() => window.store.p2p.stop());
  assert.equal(await host.exited, 0);

  // Native, alone: writes and hands its writes to the server.
  await persistDone(["put", "--path", db, "notes", "n-native", '{"title":"written while the tab was away"}']);
  const before = (await health(healthAddr)).commits;
  const sync = persist(["sync", "--path", db, "--remote", tcp, "--for", "30"]);
  await holds(healthAddr, before + 1);
  sync.child.kill("SIGTERM");
  await sync.exited;

  // The tab, alone, comes back (same device, same IndexedDB), opening its
  // store with `sync: { remote: "postgres" }`: a name, not an address, which
  // the page resolves to the deployment's server (PERSIST_SYNC_REMOTE here;
  // a <meta name="persist-sync-remote"> tag works the same).
  await tab.page.reload();
  await tab.page.evaluate(async (ws) => {
    globalThis.PERSIST_SYNC_REMOTE = ws;
    const { createStore } = await import("/pkg/index.js");
    window.store = await createStore({
      name: "notes", adapter: "indexeddb", encrypt: true,
      sync: { remote: "postgres", strategy: "last-write-wins" },
    });
  }, ws);
  assert.deepEqual(await waitForRecord(tab.page, "notes", "n-native"), { title: "written while the tab was away" });
  const held = (await health(healthAddr)).commits;
  await tab.page.evaluate(() => window.store.records("notes").put("n-tab", { title: "written while native was away" }));
  await holds(healthAddr, held + 1);
  assert.deepEqual(tab.errors, []);
  await tab.ctx.close();

  // Native, alone again, gets the tab's write from the server (a sync
  // runs until quiet; the store file has one owner at a time, so the read
  // follows it).
  let got = "";
  for (let attempt = 0; attempt < 5 && !got.trim(); attempt++) {
    const synced = await persistDone(["sync", "--path", db, "--remote", tcp, "--for", "20"]);
    const read = persist(["get", "--path", db, "notes", "n-tab"]);
    await read.exited;
    got = read.lines.join("\n");
    if (!got.trim() && attempt === 4) throw new Error(`n-tab never reached the native device:\n${synced}`);
  }
  assert.deepEqual(JSON.parse(got), { title: "written while native was away" });

  // Nothing named: a clear code, in the browser as natively.
  const other = await device();
  const refused = await other.page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    try {
      await createStore({ name: "other", encrypt: true, sync: { remote: "postgres" } });
      return "opened";
    } catch (e) {
      return e.code;
    }
  });
  assert.equal(refused, "SYNC_REMOTE_UNSET");
  await other.ctx.close();
  server.child.kill("SIGTERM");
});
