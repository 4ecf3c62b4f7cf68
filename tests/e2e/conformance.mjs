// The JavaScript API's conformance, one file for both builds: `run` takes
// the package's `createStore` and runs the same calls in a browser tab
// (imported from the test page) or in Node.js (the native addon), then
// `check` asserts the outcome in the test process. `place(name)` gives the
// options that put a store where the build keeps stores (a file path in
// Node, nothing in a browser).

/** Runs every call; returns plain data only (it crosses into the test). */
export async function run(createStore, place = () => ({})) {
  const code = (promise) =>
    promise.then(
      () => "ok",
      (e) => (e instanceof Error ? (typeof e.code === "string" ? e.code : `no code: ${e.message}`) : "not-an-Error"),
    );
  const out = {};

  // Records, events and key-value data, as the README uses them.
  const store = await createStore("conformance", place("conformance"));
  const notes = store.records("notes");
  const seen = [];
  const off = notes.subscribe((changes) => seen.push(...changes.map((c) => [c.id, c.value ?? null, c.origin])));
  await notes.put("n1", { title: "hi", body: "..." });
  out.got = await notes.get("n1");
  out.isPlain = Object.getPrototypeOf(out.got) === Object.prototype;
  await notes.put("n2", { title: "two", tags: ["a", "b"], n: 1.5, nested: { ok: true }, none: null });
  out.listed = await notes.list({ prefix: "n", limit: 10 });
  out.arrayIsArray = Array.isArray(out.listed[1].value.tags);
  out.after = (await notes.list({ after: "n1" })).map((r) => r.id);
  out.limited = (await notes.list({ limit: 1 })).map((r) => r.id);
  await notes.putMany([["m1", { v: 1 }], ["m2", { v: 2 }]]);
  out.many = (await notes.list({ prefix: "m" })).map((r) => [r.id, r.value]);
  await notes.delete("n1");
  out.gone = await notes.get("n1");
  out.missing = await notes.get("never-written");
  await new Promise((r) => setTimeout(r, 50));
  off();
  await notes.put("after-off", { v: 0 });
  await new Promise((r) => setTimeout(r, 50));
  out.seen = seen;

  const audit = store.events("audit");
  const first = await audit.append({ action: "login" });
  const second = await audit.append({ action: "logout" });
  out.eventShape = [typeof first.id, typeof first.at, first.id < second.id];
  out.events = (await audit.list()).map((e) => e.value);
  out.since = (await audit.list({ since: first.id })).map((e) => e.value);

  await store.kv.set("theme", "dark");
  await store.kv.set("list", [1, 2, 3]);
  out.kv = [await store.kv.get("theme"), await store.kv.get("list")];
  await store.kv.delete("theme");
  out.kvGone = await store.kv.get("theme");
  out.ids = [store.name, store.storeId.length, store.deviceId.length];

  // Refused input: an Error with a stable code, and nothing stored changes.
  await notes.put("keep", { v: "original" });
  out.codes = {
    func: await code(notes.put("keep", () => 1)),
    nestedFunc: await code(notes.put("keep", { v: "changed", f() {} })),
    undef: await code(notes.put("keep", undefined)),
    nestedUndef: await code(notes.put("keep", { v: "changed", u: undefined })),
    arrayUndef: await code(notes.put("keep", { v: [1, undefined] })),
    symbol: await code(notes.put("keep", { v: Symbol("s") })),
    bigint: await code(notes.put("keep", { n: 2n ** 70n })),
    nan: await code(notes.put("keep", { n: NaN })),
    infinity: await code(notes.put("keep", { n: Infinity })),
    map: await code(notes.put("keep", { m: new Map([["a", 1]]) })),
    set: await code(notes.put("keep", { s: new Set([1]) })),
    cycle: await code(notes.put("keep", (() => { const o = {}; o.o = o; return o; })())),
    manyFunc: await code(notes.putMany([["keep", { v: "changed" }], ["other", () => 1]])),
    eventFunc: await code(audit.append({ f() {} })),
    kvUndef: await code(store.kv.set("k", { u: undefined })),
    big: await code(notes.put("keep", { v: "x".repeat(2 * 1024 * 1024) })),
    badCollection: await code(store.records("no/slash").put("x", 1)),
    badLog: await code(store.events("").append(1)),
    badId: await code(notes.put("", 1)),
    badLimit: await code(notes.list({ limit: -1 })),
    badStoreName: await code(createStore("bad name", place("bad-name"))),
  };
  out.kept = await notes.get("keep");
  out.otherKept = await notes.get("other");
  out.dateIsText = await notes.put("date", { at: new Date(0) }).then(() => notes.get("date"));
  await store.close();
  out.closed = [await code(notes.put("keep", { v: "after close" })), await code(notes.get("keep"))];

  // Reopened: what was written is there, under the same device.
  const again = await createStore("conformance", place("conformance"));
  out.reopened = [await again.records("notes").get("keep"), await again.kv.get("list"), again.deviceId === store.deviceId];
  await again.close();
  return out;
}

/** Asserts what `run` returned (node:assert/strict passed in). */
export function check(assert, out) {
  assert.deepEqual(out.got, { title: "hi", body: "..." });
  assert.equal(out.isPlain, true, "values come back as plain objects");
  assert.equal(out.arrayIsArray, true, "arrays come back as arrays");
  assert.deepEqual(out.listed.map((r) => r.id), ["n1", "n2"]);
  assert.deepEqual(out.listed[1].value, { title: "two", tags: ["a", "b"], n: 1.5, nested: { ok: true }, none: null });
  assert.deepEqual(out.after, ["n2"]);
  assert.deepEqual(out.limited, ["n1"]);
  assert.deepEqual(out.many, [["m1", { v: 1 }], ["m2", { v: 2 }]]);
  assert.equal(out.gone, undefined);
  assert.equal(out.missing, undefined);
  assert.deepEqual(out.seen, [
    ["n1", { title: "hi", body: "..." }, "local"],
    ["n2", { title: "two", tags: ["a", "b"], n: 1.5, nested: { ok: true }, none: null }, "local"],
    ["m1", { v: 1 }, "local"],
    ["m2", { v: 2 }, "local"],
    ["n1", null, "local"],
  ]);
  assert.deepEqual(out.eventShape, ["string", "number", true]);
  assert.deepEqual(out.events, [{ action: "login" }, { action: "logout" }]);
  assert.deepEqual(out.since, [{ action: "logout" }]);
  assert.deepEqual(out.kv, ["dark", [1, 2, 3]]);
  assert.equal(out.kvGone, undefined);
  assert.deepEqual(out.ids, ["conformance", 32, 64]);
  assert.deepEqual(out.codes, {
    func: "INVALID_VALUE",
    nestedFunc: "INVALID_VALUE",
    undef: "INVALID_VALUE",
    nestedUndef: "INVALID_VALUE",
    arrayUndef: "INVALID_VALUE",
    symbol: "INVALID_VALUE",
    bigint: "INVALID_VALUE",
    nan: "INVALID_VALUE",
    infinity: "INVALID_VALUE",
    map: "INVALID_VALUE",
    set: "INVALID_VALUE",
    cycle: "INVALID_VALUE",
    manyFunc: "INVALID_VALUE",
    eventFunc: "INVALID_VALUE",
    kvUndef: "INVALID_VALUE",
    big: "VALUE_TOO_LARGE",
    badCollection: "INVALID_NAME",
    badLog: "INVALID_NAME",
    badId: "INVALID_NAME",
    badLimit: "INVALID_OPTIONS",
    badStoreName: "INVALID_NAME",
  });
  assert.deepEqual(out.kept, { v: "original" }, "refused writes change nothing");
  assert.equal(out.otherKept, undefined, "a refused batch writes none of its entries");
  assert.deepEqual(out.dateIsText, { at: "1970-01-01T00:00:00.000Z" }, "toJSON applies, as in JSON.stringify");
  assert.deepEqual(out.closed, ["CLOSED", "CLOSED"]);
  assert.deepEqual(out.reopened, [{ v: "original" }, [1, 2, 3], true]);
}
