// mDNS between two Node.js processes (the npm package's native addon):
// they find each other on the LAN with no bootstrap node, pair by code
// and replicate. mDNS multicasts on every interface, so this file runs
// only inside a fresh network namespace (scripts/netns.sh; scripts/test.sh
// does), where listening on 0.0.0.0 (as the README's P2P sample does) is safe.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { deviceOf, finished, installedProject, nodeScript, useHarness } from "./harness.mjs";

if (!process.env.PERSIST_NETNS_ADDR) {
  throw new Error("node-mdns.test.mjs runs inside a network namespace: bash scripts/netns.sh node --test node-mdns.test.mjs");
}

useHarness();

test("two Node.js processes find each other by mDNS alone, pair by code and replicate", async () => {
  const project = installedProject();
  const device = (name, source) => {
    const dir = deviceOf(project, name);
    writeFileSync(join(dir, "device.mjs"), `
      import { createStore } from "@cuitty/persist";
      const store = await createStore("lan-notes", { adapter: "sqlite", path: "./notes.db", encrypt: true });
      await store.enableP2P({ listenAddrs: ["/ip4/0.0.0.0/tcp/0"], discovery: { mdns: true, dht: false } });
      const wait = async (id) => {
        for (let i = 0; !(await store.records("notes").get(id)); i++) {
          if (i > 600) throw new Error(id + " never came");
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      ${source}
    `);
    return dir;
  };
  const a = device("lan-a", `
    const paired = new Promise((resolve) => store.p2p.on("pair", resolve));
    console.log(\`code: \${await store.p2p.createPairingCode()}\`);
    await paired;
    await store.records("notes").put("from-a", { title: "found by mDNS" });
    await wait("from-b");
    console.log("got from-b");
    await store.close();
  `);
  const b = device("lan-b", `
    await store.p2p.pair(process.env.CODE);
    await wait("from-a");
    console.log("got from-a");
    await store.records("notes").put("from-b", { title: "back over the LAN" });
    await new Promise((r) => process.stdin.on("end", r).resume());
    await store.close();
  `);
  const first = nodeScript(join(a, "device.mjs"), { cwd: a });
  const code = (await first.waitFor(/^code: (\S+)$/))[1];
  const second = nodeScript(join(b, "device.mjs"), { cwd: b, vars: { CODE: code }, stdin: true });
  assert.ok((await finished(first)).includes("got from-b"));
  second.child.stdin.end();
  assert.ok((await finished(second)).includes("got from-a"));
});
