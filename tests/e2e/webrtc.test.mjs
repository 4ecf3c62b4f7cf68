// WebRTC-direct between a browser tab and native processes: the tab reaches
// the `persist node` and a native device over `/webrtc-direct` (no TLS
// certificate, the `/certhash/` in the address authenticates the listener).
// WebRTC joins multicast groups on every interface, so this file runs only
// inside a fresh network namespace (scripts/netns.sh; scripts/test.sh does).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { device, env, online, persist, persistDone, startNode, useHarness, waitForRecord, webrtcHost } from "./harness.mjs";

if (!process.env.PERSIST_NETNS_ADDR) {
  throw new Error("webrtc.test.mjs runs inside a network namespace: bash scripts/netns.sh node --test webrtc.test.mjs");
}

useHarness();

test("a tab reaches the node and pairs with a native device over WebRTC-direct; notes flow both ways", async () => {
  const { tcp, webrtc } = await startNode({ webrtc: true });
  const db = join(env.work, "rtc.db");
  await persistDone(["put", "--path", db, "--encrypt", "notes", "n-native", '{"title":"over WebRTC"}']);
  // The device listens on WebRTC-direct only: a browser can reach it no other way.
  const host = persist(["pair", "--path", db, "--bootstrap", tcp, "--listen", `/ip4/${webrtcHost()}/udp/0/webrtc-direct`, "--for", "60"]);
  const code = (await host.waitFor(/^code: (\S+)$/))[1];
  const hostRtc = (await host.waitFor(/^address: (\/ip4\/[\d.]+\/udp\/\d+\/webrtc-direct\/certhash\/[^/]+\/p2p\/[^/\s]+)$/))[1];

  const tab = await device();
  await online(tab.page, "notes", webrtc);
  const nodePeer = webrtc.split("/p2p/")[1];
  await tab.page.waitForFunction((p) => window.persistEvents.some((e) => e.type === "peer:connect" && e.peer === p), nodePeer, { timeout: 30_000, polling: 50 });
  assert.equal(await tab.page.evaluate((code) => window.store.p2p.pair(code), code), hostRtc.split("/p2p/")[1]);
  assert.deepEqual(await waitForRecord(tab.page, "notes", "n-native"), { title: "over WebRTC" });
  await tab.page.evaluate(() => window.store.records("notes").put("n-tab", { title: "from the tab over WebRTC" }));
  await host.waitFor(/^received: \d+ from /);
  await tab.page.evaluate(() => window.store.p2p.stop());
  assert.equal(await host.exited, 0);
  assert.deepEqual(JSON.parse(await persistDone(["get", "--path", db, "notes", "n-tab"])), { title: "from the tab over WebRTC" });
  // libp2p-webrtc-websys 0.5 calls a dropped wasm-bindgen closure when a
  // data channel event arrives after its stream closed (rust-libp2p issue
  // #6551, fix proposed in #6558): an uncaught error in an event handler
  // that changes nothing. Any other page error fails the test.
  const other = tab.errors.filter((e) => !String(e.message).includes("closure invoked recursively or after being dropped"));
  assert.deepEqual(other, []);
  await tab.ctx.close();
});
