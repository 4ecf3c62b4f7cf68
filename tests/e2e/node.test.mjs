// The npm package in Node.js (the native addon): installed from its
// tarball into a fresh project, it runs the JavaScript API's conformance
// file (the same one the browser tests run) and the README's P2P and encryption
// samples as written, with the files on disk checked afterwards. Devices
// talk on loopback only (mDNS off). Run by scripts/test.sh after
// scripts/build-pkg.sh.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { check } from "./conformance.mjs";
import { device, deviceOf, env, finished, installedProject, nodeScript, online, persist, persistDone, root, startNode, useHarness, waitForRecord } from "./harness.mjs";

useHarness();

/** A fresh project with the packed package installed (set in `before`). */
let project;

before(() => {
  project = installedProject();
  copyFileSync(join(root, "tests/e2e/conformance.mjs"), join(project, "conformance.mjs"));
});

/** Writes `source` as `name` into `dir` (default: the project). */
function script(name, source, dir = project) {
  const file = join(dir, name);
  writeFileSync(file, source);
  return file;
}

/** A device: a directory of its own using the installed package. */
const deviceDir = (name) => deviceOf(project, name);

test("installed from its tarball, the package runs the API conformance in Node.js on SQLite files", async () => {
  const file = script("conformance-run.mjs", `
    import { createStore } from "@cuitty/persist";
    import { run } from "./conformance.mjs";
    const out = await run(createStore, (name) => ({ adapter: "sqlite", path: \`./data/\${name}.db\` }));
    console.log(JSON.stringify(out));
  `);
  const lines = await finished(nodeScript(file, { cwd: project }));
  check(assert, JSON.parse(lines.at(-1)));
  assert.ok(existsSync(join(project, "data/conformance.db")), "the store is a file where `path` says");
  const entry = JSON.parse(readFileSync(join(project, "node_modules/@cuitty/persist/package.json"), "utf8")).exports["."];
  assert.equal(entry.node, "./node.js");
  assert.equal(entry.browser, "./index.js");
});

test("the README's P2P sample runs as written in Node.js: two processes pair by code, replicate, list and revoke trust", async () => {
  const { tcp } = await startNode();
  const listen = "/ip4/127.0.0.1/tcp/0"; // the page listens on 0.0.0.0; tests stay on loopback
  const a = deviceDir("device-a");
  const b = deviceDir("device-b");
  const deviceA = nodeScript(script("a.mjs", `
    import { createStore } from "@cuitty/persist";

    const store = await createStore("shared-notes", {
      adapter: "sqlite",
      path: "./notes.db",
    });

    // Enable P2P sync alongside local storage
    await store.enableP2P({
      listenAddrs: [${JSON.stringify(listen)}],
      bootstrapPeers: [process.env.BOOTSTRAP],
    });

    const paired = new Promise((resolve) => store.p2p.on("pair", resolve));
    // On device A: generate a pairing code
    const code = await store.p2p.createPairingCode();
    console.log(\`Pairing code: \${code}\`); // e.g., "ABCD-1234"
    await paired;
    await store.records("notes").put("from-a", { title: "hello from A" });
    for (let i = 0; !(await store.records("notes").get("from-b")); i++) {
      if (i > 300) throw new Error("B's note never came");
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log("got from-b");

    // List trusted peers
    const peers = await store.p2p.trustedPeers();
    console.log(\`trusted: \${peers.length}\`);
    // Revoke trust
    const peerId = peers.find((p) => p !== store.p2p.peerId);
    await store.p2p.revokeTrust(peerId);
    console.log(\`trusted after revoking: \${(await store.p2p.trustedPeers()).length}\`);
    // B writes once more (the test tells it to), then stdin ends.
    await new Promise((r) => process.stdin.on("end", r).resume());
    console.log(\`after-revoke arrived: \${(await store.records("notes").get("after-revoke")) !== undefined}\`);
    await store.close();
  `, a), { cwd: a, vars: { BOOTSTRAP: tcp }, stdin: true });
  const code = (await deviceA.waitFor(/^Pairing code: (\S+)$/))[1];
  const deviceB = nodeScript(script("b.mjs", `
    import { createStore } from "@cuitty/persist";
    const store = await createStore("shared-notes", { adapter: "sqlite", path: "./notes.db" });
    await store.enableP2P({ listenAddrs: [${JSON.stringify(listen)}], bootstrapPeers: [process.env.BOOTSTRAP] });
    // On device B: accept the pairing code
    await store.p2p.pair(process.env.CODE);
    for (let i = 0; !(await store.records("notes").get("from-a")); i++) {
      if (i > 300) throw new Error("A's note never came");
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log("got from-a");
    await store.records("notes").put("from-b", { title: "hello from B" });
    // Revoked, B writes again: A must refuse it.
    for await (const line of (await import("node:readline")).createInterface({ input: process.stdin })) {
      await store.records("notes").put("after-revoke", { title: "written after B was revoked" });
      console.log("wrote after-revoke");
    }
    await store.close();
  `, b), { cwd: b, vars: { BOOTSTRAP: tcp, CODE: code }, stdin: true });
  await deviceA.waitFor(/^trusted after revoking: 1$/);
  deviceB.child.stdin.write("write\n");
  await deviceB.waitFor(/^wrote after-revoke$/);
  await new Promise((r) => setTimeout(r, 2000)); // what B sends now, A refuses
  deviceA.child.stdin.end();
  const linesA = await finished(deviceA);
  deviceB.child.stdin.end();
  const linesB = await finished(deviceB);
  assert.ok(linesA.includes("got from-b") && linesA.includes("trusted: 2"), linesA.join("\n"));
  assert.ok(linesA.includes("after-revoke arrived: false"), linesA.join("\n"));
  assert.ok(linesB.includes("got from-a"), linesB.join("\n"));
  // Both files hold both notes (an unencrypted store keeps JSON in SQLite).
  for (const dir of [a, b]) {
    const bytes = readdirSync(dir).filter((f) => f.startsWith("notes.db")).map((f) => readFileSync(join(dir, f)).toString("latin1")).join("");
    assert.ok(bytes.includes("hello from A") && bytes.includes("hello from B"), `${dir}/notes.db lacks a note`);
  }
});

test("the README's encryption samples run as written in Node.js: the file holds no plaintext, the key moves a copy to a new device, rotation keeps the data", async () => {
  const first = deviceDir("laptop");
  const lines = await finished(nodeScript(script("encrypt.mjs", `
    import { createStore } from "@cuitty/persist";

    const store = await createStore({
      name: "my-app",
      adapter: "sqlite",
      path: "./data/my-app.db",
      encrypt: true,
    });
    await store.records("notes").put("secret", { body: "PLAINTEXT-MARKER" });
    // Export the device key (for backup or migration)
    const exportedKey = await store.crypto.exportKey();
    console.log(exportedKey);
    await store.close();
  `, first), { cwd: first }));
  const exportedKey = lines.at(-1);
  assert.match(exportedKey, /^persist-key-v1-/);
  const onDisk = (dir) => readdirSync(join(dir, "data")).map((f) => readFileSync(join(dir, "data", f)).toString("latin1")).join("");
  assert.ok(!onDisk(first).includes("PLAINTEXT-MARKER"), "the file holds ciphertext only");

  // A new device gets a copy of the file and the exported key.
  const second = deviceDir("new-device");
  mkdirSync(join(second, "data"));
  copyFileSync(join(first, "data/my-app.db"), join(second, "data/my-app.db"));
  const after = await finished(nodeScript(script("import.mjs", `
    import { createStore } from "@cuitty/persist";

    const without = await createStore({ name: "my-app", adapter: "sqlite", path: "./data/my-app.db", encrypt: true })
      .then(() => "opened", (e) => e.code);
    console.log(\`without the key: \${without}\`);

    // Import a key on a new device
    const store = await createStore({
      name: "my-app",
      adapter: "sqlite",
      path: "./data/my-app.db",
      encrypt: true,
      key: process.env.KEY,
    });
    console.log(JSON.stringify(await store.records("notes").get("secret")));
    const before = store.crypto.epoch();
    const progress = [];
    await store.crypto.rotateKey({ onProgress: (p) => progress.push(p) });
    console.log(\`epoch +\${store.crypto.epoch() - before}, progress reports: \${progress.length}, last done: \${progress.at(-1)?.done}\`);
    await store.records("notes").put("later", { body: "PLAINTEXT-LATER" });
    console.log(JSON.stringify(await store.records("notes").get("secret")));
    await store.close();
  `, second), { cwd: second, vars: { KEY: exportedKey } }));
  assert.equal(after[0], "without the key: KEY_REQUIRED");
  assert.deepEqual(JSON.parse(after[1]), { body: "PLAINTEXT-MARKER" });
  assert.match(after[2], /^epoch \+1, progress reports: [1-9]\d*, last done: true$/);
  assert.deepEqual(JSON.parse(after[3]), { body: "PLAINTEXT-MARKER" });
  const copy = onDisk(second);
  assert.ok(!copy.includes("PLAINTEXT-MARKER") && !copy.includes("PLAINTEXT-LATER"), "no plaintext after rotation either");
});

test("invites in Node.js: store.crypto.createInvite on one process, acceptInvite on another, then encrypted sync both ways", async () => {
  const { tcp } = await startNode();
  const host = deviceDir("invite-host");
  const guest = deviceDir("invite-guest");
  const common = `
    import { createStore } from "@cuitty/persist";
    const store = await createStore({ name: "my-app", adapter: "sqlite", path: "./data/my-app.db", encrypt: true });
    await store.enableP2P({ listenAddrs: ["/ip4/127.0.0.1/tcp/0"], bootstrapPeers: [process.env.BOOTSTRAP] });
    const wait = async (id) => {
      for (let i = 0; !(await store.records("notes").get(id)); i++) {
        if (i > 300) throw new Error(id + " never came");
        await new Promise((r) => setTimeout(r, 50));
      }
    };
  `;
  const hosting = nodeScript(script("host.mjs", `${common}
    const paired = new Promise((resolve) => store.p2p.on("pair", resolve));
    // On device A: generate an invite
    const invite = await store.crypto.createInvite();
    console.log(\`invite: \${invite.code}\`);
    await paired;
    await store.records("notes").put("from-host", { body: "sealed from the host" });
    await wait("from-guest");
    console.log("got from-guest");
    await store.close();
  `, host), { cwd: host, vars: { BOOTSTRAP: tcp } });
  const invite = (await hosting.waitFor(/^invite: (\S+)$/))[1];
  assert.match(invite, /^persist-invite-v1-/);
  const joining = nodeScript(script("guest.mjs", `${common}
    // On device B: accept the invite
    await store.crypto.acceptInvite(process.env.INVITE);
    await wait("from-host");
    console.log("got from-host");
    await store.records("notes").put("from-guest", { body: "sealed from the guest" });
    // Online until the test says the host has it (stdin ends).
    await new Promise((r) => process.stdin.on("end", r).resume());
    await store.close();
  `, guest), { cwd: guest, vars: { BOOTSTRAP: tcp, INVITE: invite }, stdin: true });
  assert.ok((await finished(hosting)).includes("got from-guest"));
  joining.child.stdin.end();
  assert.ok((await finished(joining)).includes("got from-host"));
});

test("a Node.js process and a browser tab pair by code and replicate both ways", async () => {
  const { tcp, ws } = await startNode();
  const dir = deviceDir("node-with-tab");
  const host = nodeScript(script("host-tab.mjs", `
    import { createStore } from "@cuitty/persist";
    const store = await createStore("notes", { adapter: "sqlite", path: "./notes.db", encrypt: true });
    await store.records("notes").put("from-node", { title: "written in Node.js" });
    // A tab cannot dial TCP: the node listens on WebSocket too.
    await store.enableP2P({ listenAddrs: ["/ip4/127.0.0.1/tcp/0/ws"], bootstrapPeers: [process.env.BOOTSTRAP] });
    console.log(\`code: \${await store.p2p.createPairingCode()}\`);
    for (let i = 0; !(await store.records("notes").get("from-tab")); i++) {
      if (i > 600) throw new Error("the tab's note never came");
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log(\`got: \${JSON.stringify(await store.records("notes").get("from-tab"))}\`);
    await store.close();
  `, dir), { cwd: dir, vars: { BOOTSTRAP: tcp } });
  const code = (await host.waitFor(/^code: (\S+)$/))[1];
  const tab = await device();
  await online(tab.page, "notes", ws, { encrypt: true });
  await tab.page.evaluate((code) => window.store.p2p.pair(code), code);
  assert.deepEqual(await waitForRecord(tab.page, "notes", "from-node"), { title: "written in Node.js" });
  await tab.page.evaluate(() => window.store.records("notes").put("from-tab", { title: "written in a tab" }));
  const lines = await finished(host);
  assert.ok(lines.includes('got: {"title":"written in a tab"}'), lines.join("\n"));
  assert.deepEqual(tab.errors, []);
  await tab.ctx.close();
});

test("a Node.js process and a native persist process pair by code and replicate both ways", async () => {
  const { tcp } = await startNode();
  const db = join(env.work, "native-peer.db");
  await persistDone(["put", "--path", db, "--encrypt", "notes", "from-native", '{"title":"written by persist"}']);
  const native = persist(["notes", "--path", db, "--bootstrap", tcp, "--listen", "/ip4/127.0.0.1/tcp/0", "--for", "120"], { stdin: true });
  const code = (await native.waitFor(/^code: (\S+)$/))[1];
  const dir = deviceDir("node-with-native");
  const joining = nodeScript(script("join-native.mjs", `
    import { createStore } from "@cuitty/persist";
    const store = await createStore("notes", { adapter: "sqlite", path: "./notes.db", encrypt: true });
    await store.enableP2P({ listenAddrs: ["/ip4/127.0.0.1/tcp/0"], bootstrapPeers: [process.env.BOOTSTRAP] });
    await store.p2p.pair(process.env.CODE);
    for (let i = 0; !(await store.records("notes").get("from-native")); i++) {
      if (i > 600) throw new Error("the native note never came");
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log(\`got: \${JSON.stringify(await store.records("notes").get("from-native"))}\`);
    await store.records("notes").put("from-node", { title: "written in Node.js" });
    await new Promise((r) => process.stdin.on("end", r).resume());
    await store.close();
  `, dir), { cwd: dir, vars: { BOOTSTRAP: tcp, CODE: code }, stdin: true });
  await joining.waitFor(/^got: \{"title":"written by persist"\}$/);
  await native.waitFor(/^note received: written in Node\.js$/);
  joining.child.stdin.end();
  await finished(joining);
  native.child.kill("SIGTERM");
});

test("the README's sync sample (`sync: { remote }`) runs as written in Node.js: `remote: \"postgres\"` names the deployment's sync server, and two processes never online together converge through it", async () => {
  const server = persist([
    "node", "--data", join(env.work, "sync-server"), "--for", "300", "--serve",
    "--listen", "/ip4/127.0.0.1/tcp/0", "--health", "127.0.0.1:0",
  ]);
  const tcp = (await server.waitFor(/^listening: (\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/\S+)$/))[1];
  const health = (await server.waitFor(/^health: http:\/\/(\S+)\/$/))[1];
  const held = async () => (await (await fetch(`http://${health}/health`)).json()).commits;
  const sample = (source) => `
    import { createStore } from "@cuitty/persist";

    const store = await createStore({
      name: "my-app",
      adapter: "sqlite",
      path: "./data/my-app.db",
      encrypt: true,
      sync: {
        remote: "postgres",
        strategy: "last-write-wins",
      },
    });
    ${source}
  `;
  const vars = { PERSIST_SYNC_REMOTE: tcp };
  // The laptop founds the store and pairs the phone (both online once).
  const laptop = deviceDir("sync-laptop");
  const phone = deviceDir("sync-phone");
  const { tcp: meeting } = await startNode();
  const pairing = nodeScript(script("pair.mjs", sample(`
    await store.enableP2P({ listenAddrs: ["/ip4/127.0.0.1/tcp/0"], bootstrapPeers: [process.env.MEET] });
    const paired = new Promise((resolve) => store.p2p.on("pair", resolve));
    console.log(\`code: \${await store.p2p.createPairingCode()}\`);
    await paired;
    await store.close();
  `), laptop), { cwd: laptop, vars: { ...vars, MEET: meeting } });
  const code = (await pairing.waitFor(/^code: (\S+)$/))[1];
  await finished(nodeScript(script("join.mjs", sample(`
    await store.enableP2P({ listenAddrs: ["/ip4/127.0.0.1/tcp/0"], bootstrapPeers: [process.env.MEET] });
    await store.p2p.pair(process.env.CODE);
    await store.close();
  `), phone), { cwd: phone, vars: { ...vars, MEET: meeting, CODE: code } }));
  await finished(pairing);

  // The laptop alone writes; the server takes it.
  const before = await held();
  const writing = nodeScript(script("write.mjs", sample(`
    await store.records("notes").put("from-laptop", { title: "written while the phone slept" });
    console.log("written");
    await new Promise((r) => process.stdin.on("end", r).resume());
    await store.close();
  `), laptop), { cwd: laptop, vars, stdin: true });
  await writing.waitFor(/^written$/);
  for (let i = 0; (await held()) <= before; i++) {
    if (i > 600) throw new Error("the server never held the laptop's write");
    await new Promise((r) => setTimeout(r, 50));
  }
  writing.child.stdin.end();
  await finished(writing);

  // The phone alone reads it from the server.
  const reading = await finished(nodeScript(script("read.mjs", sample(`
    for (let i = 0; !(await store.records("notes").get("from-laptop")); i++) {
      if (i > 600) throw new Error("the laptop's note never came through the server");
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log(JSON.stringify(await store.records("notes").get("from-laptop")));
    await store.close();
  `), phone), { cwd: phone, vars }));
  assert.deepEqual(JSON.parse(reading.at(-1)), { title: "written while the phone slept" });

  // With nothing naming the server: a clear code.
  const unset = deviceDir("sync-unset");
  const refused = await finished(nodeScript(script("unset.mjs", `
    import { createStore } from "@cuitty/persist";
    const code = await createStore({ name: "x", adapter: "sqlite", path: "./x.db", encrypt: true, sync: { remote: "postgres" } })
      .then(() => "opened", (e) => e.code);
    console.log(code);
  `, unset), { cwd: unset, vars: { PERSIST_SYNC_REMOTE: "" } }));
  assert.equal(refused.at(-1), "SYNC_REMOTE_UNSET");
  server.child.kill("SIGTERM");
});

test("createPairingCode({ confirm }) in Node.js: the host's function sees the joining device and decides (a promise of true admits, false refuses)", async () => {
  const { tcp } = await startNode();
  const host = deviceDir("confirm-host");
  const common = `
    import { createStore } from "@cuitty/persist";
    const store = await createStore("confirmed", { adapter: "sqlite", path: "./notes.db" });
    await store.enableP2P({ listenAddrs: ["/ip4/127.0.0.1/tcp/0"], bootstrapPeers: [process.env.BOOTSTRAP] });
  `;
  const hosting = nodeScript(script("confirm-host.mjs", `${common}
    let answer = false;
    for (const round of ["refuse", "admit"]) {
      const code = await store.p2p.createPairingCode({
        confirm: async (request) => {
          console.log(\`asked: \${typeof request.peer} \${/^[0-9A-Z]{4}-[0-9A-Z]{4}$/.test(request.fingerprint)}\`);
          return answer;
        },
      });
      console.log(\`code \${round}: \${code}\`);
      await new Promise((r) => process.stdin.once("data", r));
      answer = true;
    }
    console.log(\`trusted: \${(await store.p2p.trustedPeers()).length}\`);
    await store.close();
  `), { cwd: host, vars: { BOOTSTRAP: tcp }, stdin: true });
  const join = (name, code) => {
    const dir = deviceDir(name);
    return finished(nodeScript(script("confirm-join.mjs", `${common}
      const outcome = await store.p2p.pair(process.env.CODE).then(() => "paired", (e) => e.code);
      console.log(outcome);
      await store.close();
    `, dir), { cwd: dir, vars: { BOOTSTRAP: tcp, CODE: code } }));
  };
  const refusedCode = (await hosting.waitFor(/^code refuse: (\S+)$/))[1];
  const refused = await join("confirm-refused", refusedCode);
  hosting.child.stdin.write("next\n");
  const admittedCode = (await hosting.waitFor(/^code admit: (\S+)$/))[1];
  const admitted = await join("confirm-admitted", admittedCode);
  hosting.child.stdin.end("done\n");
  const lines = await finished(hosting);
  assert.notEqual(refused.at(-1), "paired", "a device the host's confirm refused is not admitted");
  assert.match(refused.at(-1), /^PAIRING_/);
  assert.equal(admitted.at(-1), "paired");
  assert.equal(lines.filter((l) => l === "asked: string true").length, 2, lines.join("\n"));
  assert.ok(lines.includes("trusted: 2"), lines.join("\n"));
});
