// End-to-end tests of the npm package in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core): the package is imported by
// a page as a plain ES module, with no init() call, and exercised the way
// the README shows. Run by scripts/test.sh after scripts/build-pkg.sh.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "../../scripts/serve.mjs";
import { CHROMIUM_ARGS } from "./harness.mjs";
import { check } from "./conformance.mjs";

const root = fileURLToPath(new URL("../..", import.meta.url));

let server;
let browser;

before(async () => {
  server = await serve(root);
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** A fresh page (its own browser context: its own IndexedDB) on the test page. */
async function newPage(context) {
  const ctx = context ?? (await browser.newContext());
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${server.url}/www/e2e.html`);
  return { page, ctx, errors };
}

test("the package imports without init() and runs the README's store calls on IndexedDB", async () => {
  const { page, ctx } = await newPage();
  const result = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    // Seed page "P2P Adapter", with the browser's adapter:
    const store = await createStore("shared-notes", { adapter: "indexeddb", path: "./notes.db" });
    const notes = store.records("notes");
    await notes.put("n1", { title: "hi", body: "..." });
    const got = await notes.get("n1");
    await notes.put("n2", { title: "two", tags: ["a", "b"], n: 1.5, nested: { ok: true } });
    const listed = await notes.list({ prefix: "n", limit: 10 });
    const page2 = await notes.list({ after: "n1" });
    await notes.delete("n1");
    const gone = await notes.get("n1");
    const event = await store.events("audit").append({ action: "login" });
    const events = await store.events("audit").list();
    const sinceNone = await store.events("audit").list({ since: event.id });
    await store.kv.set("theme", "dark");
    const theme = await store.kv.get("theme");
    await store.kv.delete("theme");
    const themeGone = await store.kv.get("theme");
    const second = await createStore({ name: "my-app", adapter: "indexeddb" });
    const defaults = await createStore("defaults");
    const ids = [store.storeId.length, store.deviceId.length, second.name];
    await store.close();
    await second.close();
    await defaults.close();
    return {
      got, listed, page2, gone, event, events, sinceNone, theme, themeGone, ids,
      isPlain: Object.getPrototypeOf(got) === Object.prototype && Array.isArray(listed[1].value.tags),
    };
  });
  assert.deepEqual(result.got, { title: "hi", body: "..." });
  assert.equal(result.isPlain, true, "values come back as plain objects and arrays");
  assert.deepEqual(result.listed.map((r) => r.id), ["n1", "n2"]);
  assert.deepEqual(result.listed[1].value, { title: "two", tags: ["a", "b"], n: 1.5, nested: { ok: true } });
  assert.deepEqual(result.page2.map((r) => r.id), ["n2"]);
  assert.equal(result.gone, undefined);
  assert.equal(typeof result.event.id, "string");
  assert.equal(typeof result.event.at, "number");
  assert.equal(result.events.length, 1);
  assert.deepEqual(result.events[0].value, { action: "login" });
  assert.equal(result.sinceNone.length, 0);
  assert.equal(result.theme, "dark");
  assert.equal(result.themeGone, undefined);
  assert.deepEqual(result.ids, [32, 64, "my-app"]);
  await ctx.close();
});

test("data survives a page reload", async () => {
  const { page, ctx } = await newPage();
  const device = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("reloaded", { adapter: "indexeddb" });
    await store.records("notes").put("kept", { v: 1 });
    await store.kv.set("k", [1, 2, 3]);
    const device = store.deviceId;
    await store.close();
    return device;
  });
  await page.reload();
  const after = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("reloaded");
    const out = { note: await store.records("notes").get("kept"), k: await store.kv.get("k"), device: store.deviceId };
    await store.close();
    return out;
  });
  assert.deepEqual(after, { note: { v: 1 }, k: [1, 2, 3], device });
  await ctx.close();
});

test("subscribe sees local changes and unsubscribes", async () => {
  const { page, ctx } = await newPage();
  const seen = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("subscribed");
    const notes = store.records("notes");
    const seen = [];
    const off = notes.subscribe((changes) => seen.push(...changes.map((c) => [c.id, c.value ?? null, c.origin])));
    await notes.put("a", { v: 1 });
    await notes.delete("a");
    await new Promise((r) => setTimeout(r, 20));
    off();
    await notes.put("b", { v: 2 });
    await new Promise((r) => setTimeout(r, 20));
    await store.close();
    return seen;
  });
  assert.deepEqual(seen, [["a", { v: 1 }, "local"], ["a", null, "local"]]);
  await ctx.close();
});

test("two tabs of one origin see each other's writes within 100 ms", async () => {
  const ctx = await browser.newContext();
  const { page: tabA } = await newPage(ctx);
  const { page: tabB } = await newPage(ctx);
  const open = (page) =>
    page.evaluate(async () => {
      const { createStore } = await import("/pkg/index.js");
      window.store = await createStore("two-tabs");
      window.heard = [];
      window.store.records("notes").subscribe((changes) => {
        for (const c of changes) window.heard.push({ id: c.id, value: c.value ?? null, at: performance.timeOrigin + performance.now() });
      });
      return window.store.deviceId;
    });
  const [deviceA, deviceB] = [await open(tabA), await open(tabB)];
  assert.equal(deviceA, deviceB, "tabs of one origin are one device");
  const sentAt = await tabB.evaluate(async () => {
    const at = performance.timeOrigin + performance.now();
    await window.store.records("notes").put("from-b", { text: "hello from tab B" });
    return at;
  });
  await tabA.waitForFunction(() => window.heard.some((h) => h.id === "from-b"), null, { timeout: 2000 });
  const heard = await tabA.evaluate(() => window.heard.find((h) => h.id === "from-b"));
  assert.deepEqual(heard.value, { text: "hello from tab B" });
  const latency = heard.at - sentAt;
  assert.ok(latency < 100, `tab A heard tab B's write after ${latency.toFixed(1)} ms`);
  // And the other way, with both tabs writing at once.
  await Promise.all([
    tabA.evaluate(() => Promise.all(Array.from({ length: 25 }, (_, i) => window.store.records("notes").put(`a${i}`, { i })))),
    tabB.evaluate(() => Promise.all(Array.from({ length: 25 }, (_, i) => window.store.records("notes").put(`b${i}`, { i })))),
  ]);
  const count = await tabA.evaluate(async () => (await window.store.records("notes").list()).length);
  assert.equal(count, 51);
  await ctx.close();
});

test("the JavaScript API's conformance (the same file runs against the Node.js addon)", async () => {
  const { page, ctx } = await newPage();
  const out = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const { run } = await import("/tests/e2e/conformance.mjs");
    return run(createStore);
  });
  check(assert, out);
  await ctx.close();
});

test("the browser's own refusals: no SQLite here, no encryption turned on later", async () => {
  const { page, ctx } = await newPage();
  const codes = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const code = (promise) => promise.then(() => "ok", (e) => (e instanceof Error ? e.code + (e.message.includes('"indexeddb"') ? "+names-indexeddb" : "") : "not-an-Error"));
    const out = {};
    out.sqlite = await code(createStore("x", { adapter: "sqlite", path: "./data/x.db" }));
    await (await createStore("plain-then-encrypted")).close();
    out.encrypt = await code(createStore({ name: "plain-then-encrypted", encrypt: true }));
    return out;
  });
  assert.deepEqual(codes, { sqlite: "ADAPTER_UNAVAILABLE+names-indexeddb", encrypt: "INVALID_OPTIONS" });
  await ctx.close();
});

/** Every value of every object store of an IndexedDB database, as text
 * (byte arrays decoded as Latin-1 so ASCII markers inside them show). */
async function rawIndexedDbText(page, name) {
  return page.evaluate(async (name) => {
    const db = await new Promise((resolve, reject) => {
      const request = indexedDB.open(name);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    const text = (value) =>
      value instanceof Uint8Array ? String.fromCharCode(...value) : JSON.stringify(value, (_, v) => (v instanceof Uint8Array ? String.fromCharCode(...v) : v));
    const parts = [];
    for (const storeName of db.objectStoreNames) {
      const rows = await new Promise((resolve, reject) => {
        const out = [];
        const request = db.transaction(storeName).objectStore(storeName).openCursor();
        request.onsuccess = () => {
          const cursor = request.result;
          if (!cursor) return resolve(out);
          out.push(text(cursor.key), text(cursor.value));
          cursor.continue();
        };
        request.onerror = () => reject(request.error);
      });
      parts.push(...rows);
    }
    db.close();
    return parts.join("\n");
  }, name);
}

test("an encrypted store keeps IndexedDB free of plaintext, exports, rotates and imports its key", async () => {
  const { page, ctx, errors } = await newPage();
  const markers = ["MarkerCollection", "MarkerRecordId", "MarkerSecretValue", "MarkerLogName", "MarkerEventValue", "MarkerKvKey", "MarkerKvValue"];
  const write = (name, encrypt) =>
    page.evaluate(
      async ({ name, encrypt }) => {
        const { createStore } = await import("/pkg/index.js");
        const store = await createStore({ name, encrypt });
        await store.records("MarkerCollection").put("MarkerRecordId", { body: "MarkerSecretValue" });
        await store.events("MarkerLogName").append({ e: "MarkerEventValue" });
        await store.kv.set("MarkerKvKey", "MarkerKvValue");
        const bulk = Array.from({ length: 1200 }, (_, i) => [`r${String(i).padStart(5, "0")}`, { i }]);
        await store.records("bulk").putMany(bulk);
        const key = encrypt ? await store.crypto.exportKey() : null;
        await store.close();
        return key;
      },
      { name, encrypt },
    );
  const key = await write("secret-notes", true);
  assert.match(key, /^persist-key-v1-/);
  await write("plain-notes", false);
  const sealed = await rawIndexedDbText(page, "persist:secret-notes");
  const plain = await rawIndexedDbText(page, "persist:plain-notes");
  for (const marker of markers) {
    assert.ok(plain.includes(marker), `the raw scan misses ${marker} in the plain control`);
    assert.ok(!sealed.includes(marker), `${marker} found in the encrypted store's IndexedDB`);
  }
  await page.reload();
  const rotated = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("secret-notes");
    const progress = [];
    const writesDuring = store.records("during").put("w", { ok: true });
    const done = await store.crypto.rotateKey({ onProgress: (p) => progress.push(p) });
    await writesDuring;
    const out = {
      encrypted: store.crypto.encrypted,
      epoch: store.crypto.epoch(),
      done,
      batches: progress.length,
      note: await store.records("MarkerCollection").get("MarkerRecordId"),
      last: await store.records("bulk").get("r01199"),
      count: (await store.records("bulk").list()).length,
      event: (await store.events("MarkerLogName").list())[0].value,
      kv: await store.kv.get("MarkerKvKey"),
      during: await store.records("during").get("w"),
      newKey: await store.crypto.exportKey(),
    };
    await store.close();
    return out;
  });
  assert.equal(rotated.encrypted, true);
  assert.equal(rotated.epoch, 1);
  assert.equal(rotated.done.done, true);
  assert.ok(rotated.done.resealed >= 1203, JSON.stringify(rotated.done));
  assert.ok(rotated.batches >= 3, `progress in batches: ${rotated.batches}`);
  assert.deepEqual(rotated.note, { body: "MarkerSecretValue" });
  assert.deepEqual(rotated.last, { i: 1199 });
  assert.equal(rotated.count, 1200);
  assert.deepEqual(rotated.event, { e: "MarkerEventValue" });
  assert.equal(rotated.kv, "MarkerKvValue");
  assert.deepEqual(rotated.during, { ok: true });
  assert.notEqual(rotated.newKey, key);
  // The device's secrets: a non-extractable WebCrypto key seals the
  // identity and the keyring; nothing of them is stored in the clear.
  const device = await page.evaluate(async () => {
    const db = await new Promise((resolve, reject) => {
      const request = indexedDB.open("persist:secret-notes");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    const get = (key) =>
      new Promise((resolve, reject) => {
        const request = db.transaction("meta").objectStore("meta").get(key);
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
    const key = await get("device_wrap_key");
    const out = {
      isCryptoKey: key instanceof CryptoKey,
      extractable: key.extractable,
      exportRefused: await crypto.subtle.exportKey("raw", key).then(() => false, () => true),
      identitySealed: (await get("device_identity")) instanceof Uint8Array,
      clearIdentity: (await get("device_key")) ?? null,
      keyrings: (await new Promise((resolve) => {
        const request = db.transaction("meta").objectStore("meta").getAllKeys();
        request.onsuccess = () => resolve(request.result);
      })).filter((k) => String(k).startsWith("keyring:")).length,
    };
    db.close();
    return out;
  });
  assert.deepEqual(device, { isCryptoKey: true, extractable: false, exportRefused: true, identitySealed: true, clearIdentity: null, keyrings: 1 });
  const afterRotation = await rawIndexedDbText(page, "persist:secret-notes");
  for (const marker of markers) assert.ok(!afterRotation.includes(marker), `${marker} after rotation`);

  // Another device (its own browser context): a mistyped key, a key of
  // another store, then the right epoch-0 key, which makes the same store.
  const other = await newPage();
  const imported = await other.page.evaluate(
    async ({ key, otherKey }) => {
      const { createStore } = await import("/pkg/index.js");
      const code = (p) => p.then(() => "ok", (e) => e.code);
      // One character of the key changed (never to itself).
      const at = key.length - 2;
      const typo = key.slice(0, at) + (key[at] === "a" ? "b" : "a") + key.slice(at + 1);
      const out = {
        typo: await code(createStore({ name: "imported", encrypt: true, key: typo })),
        garbage: await code(createStore({ name: "imported", key: "persist-key-v1-nonsense" })),
        laterEpochOnEmpty: await code(createStore({ name: "imported-later", key: otherKey })),
      };
      const store = await createStore({ name: "imported", encrypt: true, key });
      out.storeId = store.storeId;
      out.epoch = store.crypto.epoch();
      await store.records("notes").put("n", { on: "second device" });
      out.read = await store.records("notes").get("n");
      await store.close();
      return out;
    },
    { key, otherKey: rotated.newKey },
  );
  assert.equal(imported.typo, "KEY_INVALID");
  assert.equal(imported.garbage, "KEY_INVALID");
  assert.equal(imported.laterEpochOnEmpty, "KEY_INVALID");
  assert.equal(imported.epoch, 0);
  assert.deepEqual(imported.read, { on: "second device" });
  const original = await page.evaluate(async () => {
    const { createStore } = await import("/pkg/index.js");
    const store = await createStore("secret-notes");
    const id = store.storeId;
    await store.close();
    return id;
  });
  assert.equal(imported.storeId, original, "the imported key names the same store");
  assert.deepEqual(errors, []);
  assert.deepEqual(other.errors, []);
  await other.ctx.close();
  await ctx.close();
});

test("tabs of an encrypted store hear each other's writes", async () => {
  const ctx = await browser.newContext();
  const { page: tabA } = await newPage(ctx);
  const { page: tabB } = await newPage(ctx);
  const open = (page) =>
    page.evaluate(async () => {
      const { createStore } = await import("/pkg/index.js");
      window.store = await createStore({ name: "sealed-tabs", encrypt: true });
      window.heard = [];
      window.store.records("notes").subscribe((changes) => window.heard.push(...changes.map((c) => [c.id, c.value ?? null])));
    });
  await open(tabA);
  await open(tabB);
  await tabB.evaluate(() => window.store.records("notes").put("from-b", { secret: "hi" }));
  await tabA.waitForFunction(() => window.heard.some(([id]) => id === "from-b"), null, { timeout: 2000 });
  assert.deepEqual(await tabA.evaluate(() => window.heard), [["from-b", { secret: "hi" }]]);
  // Tab A rotates the key; tab B, still holding the old keyring, reads the
  // re-encrypted rows (it learns the new epoch from the device's keyring)
  // and keeps writing.
  await tabA.evaluate(async () => {
    await window.store.records("bulk").putMany(Array.from({ length: 300 }, (_, i) => [`r${i}`, { i }]));
    await window.store.crypto.rotateKey();
  });
  const afterRotation = await tabB.evaluate(async () => {
    const out = {
      note: await window.store.records("notes").get("from-b"),
      bulk: (await window.store.records("bulk").list()).length,
      last: await window.store.records("bulk").get("r299"),
    };
    await window.store.records("notes").put("after", { ok: 1 });
    out.epoch = window.store.crypto.epoch();
    return out;
  });
  assert.deepEqual(afterRotation, { note: { secret: "hi" }, bulk: 300, last: { i: 299 }, epoch: 1 });
  assert.deepEqual(await tabA.evaluate(() => window.store.records("notes").get("after")), { ok: 1 });
  await ctx.close();
});

test("a Vite build of an app that imports the package works", async () => {
  const here = (path) => fileURLToPath(new URL(path, import.meta.url));
  execFileSync(process.execPath, [here("./node_modules/vite/bin/vite.js"), "build", "--config", here("./vite-app/vite.config.mjs")], { stdio: "inherit" });
  const app = await serve(here("./vite-dist"));
  try {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${app.url}/index.html`);
    await page.waitForFunction(() => window.done === true, null, { timeout: 10000 });
    assert.equal(await page.textContent("#out"), "ok bundled");
    await ctx.close();
  } finally {
    await app.close();
  }
});

test("the TypeScript declarations type-check a client", () => {
  execFileSync(process.execPath, [fileURLToPath(new URL("./node_modules/typescript/bin/tsc", import.meta.url)), "-p", fileURLToPath(new URL("./tsconfig.json", import.meta.url))], {
    stdio: "inherit",
  });
});
