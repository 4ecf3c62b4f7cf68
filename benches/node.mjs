// The Node.js addon in one run on the same machine: against the Rust API
// (benches/store.rs, run first with the same sizes: the binding's cost) and
// against better-sqlite3 doing the raw inserts and selects (the targets the
// native store has against raw rusqlite). Same documents (256-byte JSON),
// ordered keys, WAL with synchronous=FULL and a 16 MiB page cache on every
// side; writes alternate with the baseline transaction by transaction.
// Run: bash scripts/build-pkg.sh && (cd benches && npm install) && node benches/node.mjs [--quick]
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

process.env.PERSIST_KEYCHAIN = "off";
const { createStore } = await import("../pkg/node.js");
const Database = createRequire(import.meta.url)("better-sqlite3");

const quick = process.argv.includes("--quick");
// The sizes of benches/store.rs (and of its --quick).
const sizes = quick
  ? { batched: 20_000, single: 100, reads: 20_000, lists: 500, repeats: 1 }
  : { batched: 200_000, single: 400, reads: 200_000, lists: 5_000, repeats: 3 };
const root = fileURLToPath(new URL("..", import.meta.url));

// 1. The Rust API, same sizes, same machine, now.
const cargo = spawnSync("cargo", ["bench", "--bench", "store", "--", ...(quick ? ["--quick"] : []), "--json"], {
  cwd: root,
  encoding: "utf8",
  stdio: ["ignore", "pipe", "inherit"],
  maxBuffer: 64 * 1024 * 1024,
});
if (cargo.status !== 0) throw new Error(`cargo bench --bench store failed (${cargo.status})`);
const rustRows = JSON.parse(cargo.stdout.split("\n").find((l) => l.startsWith("JSON ")).slice(5));
const rust = (what) => {
  const row = rustRows.find((r) => r.what === what);
  if (!row) throw new Error(`benches/store.rs printed no row "${what}"`);
  return row.ours;
};

// 2. The addon and better-sqlite3.
const dir = mkdtempSync(join(tmpdir(), "persist-node-bench-"));
const key = (i) => `k${String(i).padStart(9, "0")}`;
/** {"body":"<letters>","n":i}, exactly 256 bytes of JSON. */
function value(i) {
  const n = JSON.stringify({ body: "", n: i }).length;
  let state = (i * 2654435761) >>> 0 || 1;
  let body = "";
  for (let k = 0; k < 256 - n; k++) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    body += String.fromCharCode(97 + (state % 26));
  }
  return { body, n: i };
}
const values = Array.from({ length: sizes.batched }, (_, i) => value(i));
const texts = values.map((v) => JSON.stringify(v));
if (texts[0].length !== 256) throw new Error("documents are not 256 bytes");
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now();

function raw(path) {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("cache_size = -16384");
  db.exec("CREATE TABLE IF NOT EXISTS raw (id TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID");
  return db;
}
const open = (name) => createStore(name, { adapter: "sqlite", path: join(dir, `${name}.db`) });

const ours = { batch: [], single: [], get: [], list: [] };
const base = { batch: [], single: [], get: [], list: [] };

for (let round = 0; round < sizes.repeats; round++) {
  const db = raw(join(dir, `raw-batch-${round}.db`));
  const insert = db.prepare("INSERT OR REPLACE INTO raw (id, value) VALUES (?, ?)");
  const many = db.transaction((from, to) => {
    for (let i = from; i < to; i++) insert.run(key(i), texts[i]);
  });
  const store = await open(`batch-${round}`);
  const records = store.records("bench");
  let tRaw = 0;
  let tOurs = 0;
  for (let from = 0; from < sizes.batched; from += 1000) {
    const to = Math.min(from + 1000, sizes.batched);
    let start = now();
    many(from, to);
    tRaw += now() - start;
    const entries = [];
    for (let i = from; i < to; i++) entries.push([key(i), values[i]]);
    start = now();
    await records.putMany(entries);
    tOurs += now() - start;
  }
  base.batch.push((sizes.batched / tRaw) * 1000);
  ours.batch.push((sizes.batched / tOurs) * 1000);
  db.close();
  await store.close();
}

{
  const db = raw(join(dir, "raw-single.db"));
  const insert = db.prepare("INSERT OR REPLACE INTO raw (id, value) VALUES (?, ?)");
  const store = await open("single");
  const records = store.records("bench");
  for (let round = 0; round < sizes.repeats; round++) {
    let tRaw = 0;
    let tOurs = 0;
    for (let i = round * sizes.single; i < (round + 1) * sizes.single; i++) {
      let start = now();
      insert.run(key(i), texts[i % texts.length]);
      tRaw += now() - start;
      start = now();
      await records.put(key(i), values[i % values.length]);
      tOurs += now() - start;
    }
    base.single.push((sizes.single / tRaw) * 1000);
    ours.single.push((sizes.single / tOurs) * 1000);
  }
  db.close();
  await store.close();
}

{
  const db = raw(join(dir, "raw-batch-0.db"));
  const select = db.prepare("SELECT value FROM raw WHERE id = ?").pluck();
  const page = db.prepare("SELECT id, value FROM raw WHERE id > ? ORDER BY id LIMIT 100");
  const store = await open("batch-0");
  const records = store.records("bench");
  const order = [];
  for (let i = 0; i < sizes.reads; i++) {
    const k = (i * 7919 + 13) % sizes.batched;
    if (order.at(-1) !== k) order.push(k);
  }
  for (let round = 0; round < sizes.repeats; round++) {
    let start = now();
    for (const i of order) JSON.parse(select.get(key(i)));
    base.get.push((order.length / (now() - start)) * 1000);
    start = now();
    for (const i of order) await records.get(key(i));
    ours.get.push((order.length / (now() - start)) * 1000);

    start = now();
    for (let n = 0; n < sizes.lists; n++) {
      const rows = page.all(key((n * 7919) % (sizes.batched - 200))).map((r) => ({ id: r.id, value: JSON.parse(r.value) }));
      if (rows.length !== 100) throw new Error("short page");
    }
    base.list.push(((sizes.lists * 100) / (now() - start)) * 1000);
    start = now();
    for (let n = 0; n < sizes.lists; n++) {
      const rows = await records.list({ after: key((n * 7919) % (sizes.batched - 200)), limit: 100 });
      if (rows.length !== 100) throw new Error("short page");
    }
    ours.list.push(((sizes.lists * 100) / (now() - start)) * 1000);
  }
  db.close();
  await store.close();
}
rmSync(dir, { recursive: true, force: true });

const verdict = (ratio, target) => `>= ${target}x (${ratio >= target ? "met" : "MISSED"})`;
const rows = [
  ["batched put, 1,000 per transaction (putMany)", "batch", "batched put, 1,000 per transaction", 0.5],
  ["single durable put (FULL, 1 per tx)", "single", "single durable put (FULL, 1 per tx)", 0.8],
  ["get (random keys)", "get", "get (random keys)", 0.7],
  ["list, pages of 100", "list", "list, pages of 100", 0.7],
];
console.log(`\nNode.js addon vs the Rust API (same sizes, same run; medians of ${sizes.repeats})\n`);
console.log("| what | Node.js /s | Rust API /s | ratio | target |");
console.log("|---|---:|---:|---:|---:|");
for (const [what, k, rustWhat] of rows) {
  const ratio = median(ours[k]) / rust(rustWhat);
  console.log(`| ${what} | ${median(ours[k]).toFixed(0)} | ${rust(rustWhat).toFixed(0)} | ${ratio.toFixed(2)}x | ${verdict(ratio, 0.8)} |`);
}
console.log("\nNode.js addon vs better-sqlite3 (raw INSERT / SELECT + JSON.parse, same data and durability)\n");
console.log("| what | Persist /s | better-sqlite3 /s | ratio | target |");
console.log("|---|---:|---:|---:|---:|");
for (const [what, k, , target] of rows) {
  const ratio = median(ours[k]) / median(base[k]);
  console.log(`| ${what} | ${median(ours[k]).toFixed(0)} | ${median(base[k]).toFixed(0)} | ${ratio.toFixed(2)}x | ${verdict(ratio, target)} |`);
}
console.log(`\nrows: ${sizes.batched} batched, ${sizes.single} single, ${sizes.reads} reads, ${sizes.lists} lists of 100`);
