// One network, measured in one run: a headless Chromium tab and native
// `persist` processes on loopback (and, inside scripts/netns.sh, over
// WebRTC-direct on the namespace's private address).
//   propagation latency tab -> native and native -> tab, one write at a time;
//   initial sync of COUNT one-record commits from a native store into a
//   fresh tab, and the catch-up of COUNT such commits from a sync server
//   (`persist node --serve`) into a tab, both against the same tab's local
//   batched insert (putMany).
// Run: cargo build --bin persist --features test-utils && bash scripts/build-pkg.sh && (cd tests/e2e && npm install)
//      node benches/network.mjs [--quick]                      (WebSocket)
//      bash scripts/netns.sh node benches/network.mjs [--quick] (WebSocket and WebRTC-direct)
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "../tests/e2e/node_modules/playwright-core/index.mjs";
import { serve } from "../scripts/serve.mjs";
import { CHROMIUM_ARGS, device, env, online, persist, root, startNode, waitForRecord, webrtcHost } from "../tests/e2e/harness.mjs";

const quick = process.argv.includes("--quick");
const WRITES = quick ? 100 : 1000;
const COUNT = quick ? 2000 : 10_000;
const now = () => performance.timeOrigin + performance.now();
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

env.work = mkdtempSync(join(tmpdir(), "persist-bench-"));
env.server = await serve(root);
env.browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_ARGS });
const rows = [];
try {
  const transports = ["WebSocket", ...(process.env.PERSIST_NETNS_ADDR ? ["WebRTC-direct"] : [])];
  for (const transport of transports) {
    const rtc = transport !== "WebSocket";
    const { tcp, ws, webrtc } = await startNode({ webrtc: rtc });
    const listen = rtc ? `/ip4/${webrtcHost()}/udp/0/webrtc-direct` : "/ip4/127.0.0.1/tcp/0/ws";
    const desk = persist(["notes", "--path", join(env.work, `desk-${transport}.db`), "--bootstrap", tcp, "--listen", listen, "--for", "900"], { stdin: true });
    const code = (await desk.waitFor(/^code: (\S+)$/))[1];
    const { page, ctx } = await device();
    await online(page, "notes", rtc ? webrtc : ws);
    await page.evaluate((code) => window.store.p2p.pair(code), code);
    await page.evaluate(() => {
      window.arrivals = [];
      window.store.records("notes").subscribe((changes) => {
        const t = performance.timeOrigin + performance.now();
        for (const c of changes) if (c.value && !c.id.startsWith("t2n-")) window.arrivals.push(t - Number(c.value.title));
      });
    });

    // Tab -> native: the tab stamps the note; the native device prints it.
    const toNative = [];
    let waiting = null;
    desk.onLine((line) => {
      const m = line.match(/^note received: (\d+(?:\.\d+)?)$/);
      if (m && waiting) {
        toNative.push(now() - Number(m[1]));
        waiting();
      }
    });
    for (let i = 0; i < WRITES; i++) {
      const arrived = new Promise((r) => (waiting = r));
      await page.evaluate((i) => window.store.records("notes").put(`t2n-${String(i).padStart(6, "0")}`, { title: String(performance.timeOrigin + performance.now()) }), i);
      await arrived;
    }

    // Native -> tab: each line on the device's stdin becomes a note.
    for (let i = 0; i < WRITES; i++) {
      desk.child.stdin.write(`${now()}\n`);
      await page.waitForFunction((n) => window.arrivals.length >= n, i + 1, { polling: 1, timeout: 30_000 });
    }
    const toTab = await page.evaluate(() => window.arrivals);
    rows.push({ transport, direction: "tab -> native", ms: toNative });
    rows.push({ transport, direction: "native -> tab", ms: toTab });
    await ctx.close();
    desk.child.kill("SIGTERM");
  }

  // Initial sync: COUNT commits (one record each) into a fresh tab.
  const { tcp, ws } = await startNode();
  const db = join(env.work, "big.db");
  const fill = persist(["fill", "--path", db, "--encrypt", "--count", String(COUNT)]);
  await fill.waitFor(/^filled: /, 600_000);
  await fill.exited;
  const host = persist(["pair", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "600"]);
  const code = (await host.waitFor(/^code: (\S+)$/))[1];
  const { page, ctx } = await device();
  const local = await page.evaluate(async (count) => {
    const { createStore } = await import("/pkg/index.js");
    const baseline = await createStore("baseline", { encrypt: true });
    const started = performance.now();
    for (let b = 0; b < count / 1000; b++) {
      const entries = [];
      for (let i = 0; i < 1000; i++) entries.push([`fill-${b}-${i}`, { title: `note ${i}`, body: "x".repeat(64) }]);
      await baseline.records("notes").putMany(entries);
    }
    const seconds = (performance.now() - started) / 1000;
    await baseline.close();
    return count / seconds;
  }, COUNT);
  await online(page, "notes", ws);
  const synced = await page.evaluate(async ({ code, count }) => {
    const started = performance.now();
    let applied = 0;
    const done = new Promise((resolve) => window.store.p2p.on("sync", (e) => {
      applied += e.applied;
      if (applied >= count) resolve();
    }));
    await window.store.p2p.pair(code);
    const paired = performance.now();
    await done;
    const end = performance.now();
    return { seconds: (end - started) / 1000, pairing: (paired - started) / 1000, applied };
  }, { code, count: COUNT });
  await ctx.close();
  host.child.kill("SIGTERM");

  // Catch-up from a sync server: the tab is paired while the store holds
  // one record, goes away; the native device writes COUNT one-record
  // commits and hands them to the server, then goes away too; the tab comes
  // back with the server as its only peer.
  const served = persist([
    "node", "--data", join(env.work, "server"), "--for", "900", "--serve",
    "--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--health", "127.0.0.1:0",
  ]);
  const sTcp = (await served.waitFor(/^listening: (\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\S+)$/))[1];
  const sWs = (await served.waitFor(/^listening: (\S+\/ws\/p2p\/[^/\s]+)$/))[1];
  const sHealth = (await served.waitFor(/^health: http:\/\/(\S+)\/$/))[1];
  const held = async () => (await (await fetch(`http://${sHealth}/health`)).json()).commits;
  const sDb = join(env.work, "served.db");
  await persist(["put", "--path", sDb, "--encrypt", "notes", "first", '{"title":"before pairing"}']).exited;
  const sHost = persist(["pair", "--path", sDb, "--bootstrap", sTcp, "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--for", "120"]);
  const sCode = (await sHost.waitFor(/^code: (\S+)$/))[1];
  const away = await device();
  await online(away.page, "notes", sWs, { encrypt: true });
  await away.page.evaluate((code) => window.store.p2p.pair(code), sCode);
  await waitForRecord(away.page, "notes", "first");
  await away.page.evaluate(() => window.store.close());
  await sHost.exited;
  const sFill = persist(["fill", "--path", sDb, "--count", String(COUNT)]);
  await sFill.waitFor(/^filled: /, 600_000);
  await sFill.exited;
  const before = await held();
  const push = persist(["sync", "--path", sDb, "--remote", sTcp, "--for", "600"]);
  const deadline = Date.now() + 600_000;
  while ((await held()) < before + COUNT) {
    if (Date.now() > deadline) throw new Error("the server never held the filled commits");
    await new Promise((r) => setTimeout(r, 100));
  }
  push.child.kill("SIGTERM");
  await push.exited;
  await away.page.reload();
  const fromServer = await away.page.evaluate(async ({ ws, count }) => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("notes", { encrypt: true });
    const started = performance.now();
    let applied = 0;
    const ready = store.enableP2P({ syncServers: [ws] });
    const done = new Promise((resolve) => store.p2p.on("sync", (e) => {
      applied += e.applied;
      if (applied >= count) resolve();
    }));
    await ready;
    await done;
    const seconds = (performance.now() - started) / 1000;
    await store.close();
    return { seconds, applied };
  }, { ws: sWs, count: COUNT });
  await away.ctx.close();
  served.child.kill("SIGTERM");

  console.log(`\nPropagation latency, one write at a time (${WRITES} writes each way; ms)\n`);
  console.log("| transport | direction | p50 | p99 | max | target |");
  console.log("|---|---|---:|---:|---:|---|");
  for (const r of rows) {
    console.log(`| ${r.transport} | ${r.direction} | ${pct(r.ms, 50).toFixed(2)} | ${pct(r.ms, 99).toFixed(2)} | ${Math.max(...r.ms).toFixed(2)} | p50 <= 20, p99 <= 100 |`);
  }
  const rate = synced.applied / synced.seconds;
  console.log(`\nInitial sync into a fresh tab (encrypted store, ${COUNT} one-record commits, pairing included)\n`);
  console.log("| measure | records/s | ratio | target |");
  console.log("|---|---:|---:|---|");
  console.log(`| local batched insert in the same tab (putMany, 1,000 per transaction) | ${local.toFixed(0)} | 1.00 | |`);
  console.log(`| initial sync over WebSocket (${synced.seconds.toFixed(2)} s, of which pairing ${synced.pairing.toFixed(2)} s) | ${rate.toFixed(0)} | ${(rate / local).toFixed(2)} | >= 0.7 |`);
  const serverRate = fromServer.applied / fromServer.seconds;
  console.log(`| catch-up from a sync server over WebSocket (${fromServer.seconds.toFixed(2)} s; no other peer) | ${serverRate.toFixed(0)} | ${(serverRate / local).toFixed(2)} | >= 0.7 |`);
  console.log(`\ncatch-up from the server vs the same commits straight from the native device: ${(serverRate / rate).toFixed(2)}x`);
} finally {
  for (const p of env.processes) p.kill("SIGKILL");
  await env.browser.close();
  await env.server.close();
  rmSync(env.work, { recursive: true, force: true });
}
