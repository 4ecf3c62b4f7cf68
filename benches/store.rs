//! Persist vs raw `rusqlite`, measured in one run on the same machine, with
//! the same data (256-byte JSON values), key order and durability (WAL,
//! `synchronous=FULL`). Prints a Markdown table of ratios for BENCHMARKS.md.
//!
//! Run: `cargo bench --bench store` (optionally `-- --quick`; `-- --json`
//! adds one line of JSON with every row, which `benches/node.mjs` reads to
//! compare the Node.js addon with the Rust API in the same run).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use persist::{ListOptions, Store, StoreOptions};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

struct Sizes {
    batched_rows: usize,
    single_puts: usize,
    concurrent_tasks: usize,
    puts_per_task: usize,
    reads: usize,
    lists: usize,
    repeats: usize,
}

fn value(i: usize) -> Value {
    // {"body":"...","n":i} serialized to exactly 256 bytes, with varied
    // letters so nothing downstream sees trivially repetitive data.
    let n = json!({ "body": "", "n": i }).to_string().len();
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: String = (0..256 - n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    json!({ "body": body, "n": i })
}

fn key(i: usize) -> String {
    format!("k{i:09}")
}

fn raw_open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open raw");
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("full");
    // The page cache Persist's connections use.
    conn.pragma_update(None, "cache_size", -16_384)
        .expect("cache");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS raw (id TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    )
    .expect("table");
    conn
}

async fn persist_open(path: &Path) -> Store {
    Store::open(StoreOptions::new("bench").path(path))
        .await
        .expect("open persist")
}

fn per_sec(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

struct Row {
    what: &'static str,
    baseline: &'static str,
    ours: f64,
    base: f64,
    target: f64,
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            batched_rows: 20_000,
            single_puts: 100,
            concurrent_tasks: 64,
            puts_per_task: 4,
            reads: 20_000,
            lists: 500,
            repeats: 1,
        }
    } else {
        Sizes {
            batched_rows: 200_000,
            single_puts: 400,
            concurrent_tasks: 64,
            puts_per_task: 16,
            reads: 200_000,
            lists: 5_000,
            repeats: 3,
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("persist-bench")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir");
    let texts: Vec<String> = (0..sizes.batched_rows)
        .map(|i| value(i).to_string())
        .collect();
    let values: Vec<Value> = (0..sizes.batched_rows).map(value).collect();
    assert_eq!(texts[0].len(), 256);
    let mut rows = Vec::new();

    // 1. Batched puts, 1,000 per transaction, ordered keys. The three
    // writers alternate transaction by transaction so that each sees the
    // same disk (its speed drifts a lot on a shared machine).
    // 1b. The "ceiling" writer is raw SQLite writing the bytes Persist must
    // write: a row of Persist's shape plus a change-log body of the same size.
    let (mut ours, mut base, mut ceiling) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..sizes.repeats {
        let conn = raw_open(&dir.path().join(format!("raw-batch-{round}.db")));
        let shape = raw_open(&dir.path().join(format!("raw-shape-{round}.db")));
        shape
            .execute_batch(
                "CREATE TABLE rec (c TEXT, id TEXT, value TEXT, hlc INTEGER, author INTEGER, fields TEXT,
                                   PRIMARY KEY (c, id)) WITHOUT ROWID;
                 CREATE TABLE log (id INTEGER PRIMARY KEY, hlc INTEGER, body BLOB, sig BLOB);",
            )
            .expect("tables");
        let store = persist_open(&dir.path().join(format!("persist-batch-{round}.db"))).await;
        let records = store.records("bench");
        let (mut t_raw, mut t_shape, mut t_ours) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for (n, chunk) in (0..sizes.batched_rows)
            .collect::<Vec<_>>()
            .chunks(1000)
            .enumerate()
        {
            let start = Instant::now();
            let tx = conn.unchecked_transaction().expect("tx");
            {
                let mut stmt = tx
                    .prepare_cached("INSERT OR REPLACE INTO raw (id, value) VALUES (?1, ?2)")
                    .expect("stmt");
                for &i in chunk {
                    stmt.execute(params![key(i), texts[i]]).expect("insert");
                }
            }
            tx.commit().expect("commit");
            t_raw += start.elapsed();

            let start = Instant::now();
            let tx = shape.unchecked_transaction().expect("tx");
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO rec (c, id, value, hlc, author) VALUES ('bench', ?1, ?2, ?3, 1)",
                    )
                    .expect("stmt");
                let mut body = Vec::with_capacity(chunk.len() * 280);
                for &i in chunk {
                    stmt.execute(params![key(i), texts[i], i as i64])
                        .expect("insert");
                    body.extend_from_slice(texts[i].as_bytes());
                    body.extend_from_slice(key(i).as_bytes());
                }
                tx.execute(
                    "INSERT INTO log (id, hlc, body, sig) VALUES (?1, 0, ?2, zeroblob(64))",
                    params![n as i64 + 1, body],
                )
                .expect("log");
            }
            tx.commit().expect("commit");
            t_shape += start.elapsed();

            let start = Instant::now();
            records
                .put_many(chunk.iter().map(|&i| (key(i), &values[i])))
                .await
                .expect("put_many");
            t_ours += start.elapsed();
        }
        base.push(per_sec(sizes.batched_rows, t_raw));
        ceiling.push(per_sec(sizes.batched_rows, t_shape));
        ours.push(per_sec(sizes.batched_rows, t_ours));
        store.close().await.expect("close");
    }
    let batched_raw = median(base);
    rows.push(Row {
        what: "batched put, 1,000 per transaction",
        baseline: "raw INSERT, 1,000 per transaction",
        ours: median(ours),
        base: batched_raw,
        target: 0.5,
    });
    rows.push(Row {
        what: "(ceiling) raw INSERT of Persist's bytes: row + change-log body",
        baseline: "raw INSERT, 1,000 per transaction",
        ours: median(ceiling),
        base: batched_raw,
        target: 0.0,
    });

    // 2. Single durable puts, one per transaction, alternating rounds.
    let raw_conn = raw_open(&dir.path().join("raw-single.db"));
    let store = persist_open(&dir.path().join("persist-single.db")).await;
    let records = store.records("bench");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 0..sizes.repeats {
        let (mut t_raw, mut t_ours) = (Duration::ZERO, Duration::ZERO);
        for i in round * sizes.single_puts..(round + 1) * sizes.single_puts {
            let start = Instant::now();
            raw_conn
                .execute(
                    "INSERT OR REPLACE INTO raw (id, value) VALUES (?1, ?2)",
                    params![key(i), texts[i % texts.len()]],
                )
                .expect("insert");
            t_raw += start.elapsed();
            let start = Instant::now();
            records
                .put(&key(i), &values[i % values.len()])
                .await
                .expect("put");
            t_ours += start.elapsed();
        }
        base.push(per_sec(sizes.single_puts, t_raw));
        ours.push(per_sec(sizes.single_puts, t_ours));
    }
    let ours_single = median(ours);
    rows.push(Row {
        what: "single durable put (FULL, 1 per tx)",
        baseline: "raw INSERT, 1 per transaction",
        ours: ours_single,
        base: median(base),
        target: 0.8,
    });

    // 3. 64 concurrent writers (group commit) vs the same puts one at a time.
    let store = Arc::new(store);
    let shared_values = Arc::new(values.clone());
    let barrier = Arc::new(tokio::sync::Barrier::new(sizes.concurrent_tasks + 1));
    let mut tasks = Vec::new();
    for t in 0..sizes.concurrent_tasks {
        let store = store.clone();
        let values = shared_values.clone();
        let barrier = barrier.clone();
        let per_task = sizes.puts_per_task;
        tasks.push(tokio::spawn(async move {
            let records = store.records("concurrent");
            barrier.wait().await;
            for j in 0..per_task {
                let i = t * per_task + j;
                records
                    .put(&key(i), &values[i % values.len()])
                    .await
                    .expect("put");
            }
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    for task in tasks {
        task.await.expect("task");
    }
    let concurrent = per_sec(
        sizes.concurrent_tasks * sizes.puts_per_task,
        start.elapsed(),
    );
    rows.push(Row {
        what: "64 concurrent writers, group commit",
        baseline: "Persist single puts one at a time",
        ours: concurrent,
        base: ours_single,
        target: 10.0,
    });
    store.close().await.expect("close");

    // 6. Open a store of `batched_rows` records and read one (no full scan on open).
    let start = Instant::now();
    let store = persist_open(&dir.path().join("persist-batch-0.db")).await;
    let first = store
        .records("bench")
        .get(&key(sizes.batched_rows / 2))
        .await
        .expect("get");
    let open_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(first.is_some());
    store.close().await.expect("close");
    let start = Instant::now();
    let conn = Connection::open(dir.path().join("raw-batch-0.db")).expect("open");
    let _: String = conn
        .query_row(
            "SELECT value FROM raw WHERE id = ?1",
            params![key(sizes.batched_rows / 2)],
            |r| r.get(0),
        )
        .expect("select");
    let raw_open_ms = start.elapsed().as_secs_f64() * 1000.0;
    drop(conn);

    // 4. Point reads and 5. listings on the first round's data.
    let raw_conn = raw_open(&dir.path().join("raw-batch-0.db"));
    let store = persist_open(&dir.path().join("persist-batch-0.db")).await;
    let records = store.records("bench");
    let mut order: Vec<usize> = (0..sizes.reads)
        .map(|i| (i * 7919 + 13) % sizes.batched_rows)
        .collect();
    order.dedup();
    let (mut ours, mut base, mut base_parsed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.repeats {
        let start = Instant::now();
        let mut stmt = raw_conn
            .prepare_cached("SELECT value FROM raw WHERE id = ?1")
            .expect("stmt");
        for &i in &order {
            let text: String = stmt
                .query_row(params![key(i)], |r| r.get(0))
                .expect("select");
            std::hint::black_box(text);
        }
        base.push(per_sec(order.len(), start.elapsed()));
        let start = Instant::now();
        for &i in &order {
            let text: String = stmt
                .query_row(params![key(i)], |r| r.get(0))
                .expect("select");
            let parsed: Value = serde_json::from_str(&text).expect("json");
            std::hint::black_box(parsed);
        }
        base_parsed.push(per_sec(order.len(), start.elapsed()));
        let start = Instant::now();
        for &i in &order {
            std::hint::black_box(records.get(&key(i)).await.expect("get"));
        }
        ours.push(per_sec(order.len(), start.elapsed()));
    }
    let ours_get = median(ours);
    rows.push(Row {
        what: "get (random keys)",
        baseline: "raw SELECT (JSON text)",
        ours: ours_get,
        base: median(base),
        target: 0.7,
    });
    rows.push(Row {
        what: "get (random keys)",
        baseline: "raw SELECT + serde_json parse",
        ours: ours_get,
        base: median(base_parsed),
        target: 0.7,
    });

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..sizes.repeats {
        let start = Instant::now();
        let mut stmt = raw_conn
            .prepare_cached("SELECT id, value FROM raw WHERE id > ?1 ORDER BY id LIMIT 100")
            .expect("stmt");
        for n in 0..sizes.lists {
            let after = key((n * 7919) % (sizes.batched_rows - 200));
            let page: Vec<(String, Value)> = stmt
                .query_map(params![after], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .expect("query")
                .map(|row| {
                    let (id, text) = row.expect("row");
                    (id, serde_json::from_str(&text).expect("json"))
                })
                .collect();
            assert_eq!(page.len(), 100);
        }
        base.push(per_sec(sizes.lists * 100, start.elapsed()));
        let start = Instant::now();
        for n in 0..sizes.lists {
            let after = key((n * 7919) % (sizes.batched_rows - 200));
            let page = records
                .list(ListOptions {
                    after: Some(after),
                    limit: Some(100),
                    ..ListOptions::default()
                })
                .await
                .expect("list");
            assert_eq!(page.len(), 100);
        }
        ours.push(per_sec(sizes.lists * 100, start.elapsed()));
    }
    rows.push(Row {
        what: "list, pages of 100",
        baseline: "raw SELECT ... LIMIT 100 + parse",
        ours: median(ours),
        base: median(base),
        target: 0.7,
    });
    store.close().await.expect("close");

    envelope_rows(&sizes, &mut rows);
    let rotation = encrypted_rows(&sizes, dir.path(), &values, &mut rows).await;

    println!("| what | baseline | Persist /s | baseline /s | ratio | target |");
    println!("|---|---|---:|---:|---:|---:|");
    for row in &rows {
        let ratio = row.ours / row.base;
        let target = match row.target {
            t if t <= 0.0 => "(reference)".to_owned(),
            t if ratio >= t => format!(">= {t}x (met)"),
            t => format!(">= {t}x (MISSED)"),
        };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {target} |",
            row.what, row.baseline, row.ours, row.base, ratio
        );
    }
    println!(
        "\nopen a {}-record store to its first read: {open_ms:.2} ms (raw SQLite open + SELECT: {raw_open_ms:.2} ms; target <= 50 ms)",
        sizes.batched_rows
    );
    println!("\n{rotation}");
    if std::env::args().any(|a| a == "--json") {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| json!({ "what": r.what, "baseline": r.baseline, "ours": r.ours, "base": r.base }))
            .collect();
        println!("\nJSON {}", Value::Array(rows));
    }
    println!(
        "\nrows: {} batched, {} single, {}x{} concurrent, {} reads, {} lists; medians of {} run(s)",
        sizes.batched_rows,
        sizes.single_puts,
        sizes.concurrent_tasks,
        sizes.puts_per_task,
        order.len(),
        sizes.lists,
        sizes.repeats
    );
}

/// The encryption envelope vs raw AES-256-GCM (random 96-bit nonces, same
/// 256-byte values and associated data), in memory: values per second.
fn envelope_rows(sizes: &Sizes, rows: &mut Vec<Row>) {
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::{Aes256Gcm, KeyInit};
    use persist::crypto::envelope::context;
    use persist::crypto::{DataKey, Opener, Sealer};

    let count = sizes.batched_rows.min(100_000);
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| value(i).to_string().into_bytes())
        .collect();
    let aad = context(&[
        &[7u8; 16], b"record", &[1u8; 33], &[2u8; 33], &[3u8; 32], &[0u8; 8],
    ]);
    let key = DataKey::generate().expect("key");
    let raw = Aes256Gcm::new(&(*key.as_bytes()).into());
    let (mut seal_batch, mut seal_single, mut open_batch, mut raw_seal, mut raw_open) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..sizes.repeats {
        let start = Instant::now();
        let mut sealed = Vec::with_capacity(count);
        for chunk in values.chunks(1000) {
            let mut sealer = Sealer::new(&key, 0).expect("sealer");
            for v in chunk {
                sealed.push(sealer.seal(&aad, v).expect("seal"));
            }
        }
        seal_batch.push(per_sec(count, start.elapsed()));

        let start = Instant::now();
        for v in values.iter().take(count / 10) {
            let mut sealer = Sealer::new(&key, 0).expect("sealer");
            std::hint::black_box(sealer.seal(&aad, v).expect("seal"));
        }
        seal_single.push(per_sec(count / 10, start.elapsed()));

        let start = Instant::now();
        let mut opener = Opener::new();
        for e in &sealed {
            std::hint::black_box(opener.open(&key, &aad, e).expect("open"));
        }
        open_batch.push(per_sec(count, start.elapsed()));

        let start = Instant::now();
        let mut raw_sealed = Vec::with_capacity(count);
        for v in &values {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).expect("random");
            let ct = raw
                .encrypt(&nonce.into(), Payload { msg: v, aad: &aad })
                .expect("encrypt");
            raw_sealed.push((nonce, ct));
        }
        raw_seal.push(per_sec(count, start.elapsed()));

        let start = Instant::now();
        for (nonce, ct) in &raw_sealed {
            std::hint::black_box(
                raw.decrypt(&(*nonce).into(), Payload { msg: ct, aad: &aad })
                    .expect("decrypt"),
            );
        }
        raw_open.push(per_sec(count, start.elapsed()));
    }
    let (raw_seal, raw_open) = (median(raw_seal), median(raw_open));
    rows.push(Row {
        what: "envelope seal, 1,000 values per sealer (a batch)",
        baseline: "raw aes-gcm, random nonce",
        ours: median(seal_batch),
        base: raw_seal,
        target: 0.8,
    });
    rows.push(Row {
        what: "envelope seal, one value per sealer (a single put)",
        baseline: "raw aes-gcm, random nonce",
        ours: median(seal_single),
        base: raw_seal,
        target: 0.0,
    });
    rows.push(Row {
        what: "envelope open (a listing: one derivation per batch)",
        baseline: "raw aes-gcm decrypt",
        ours: median(open_batch),
        base: raw_open,
        target: 0.8,
    });
}

/// Encrypted vs plain Persist stores on SQLite (same values, alternating
/// transaction by transaction), and a key rotation of every record with
/// the latency of single puts made while it runs. Returns the rotation line.
async fn encrypted_rows(
    sizes: &Sizes,
    dir: &Path,
    values: &[Value],
    rows: &mut Vec<Row>,
) -> String {
    let plain = persist_open(&dir.join("plain-vs-sealed.db")).await;
    let sealed = Store::open(
        StoreOptions::new("bench")
            .path(dir.join("sealed.db"))
            .encrypt(true),
    )
    .await
    .expect("open encrypted");
    let (p, e) = (plain.records("bench"), sealed.records("bench"));
    let count = sizes.batched_rows;
    let (mut t_plain, mut t_sealed) = (Duration::ZERO, Duration::ZERO);
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let start = Instant::now();
        p.put_many(chunk.iter().map(|&i| (key(i), &values[i])))
            .await
            .expect("plain put_many");
        t_plain += start.elapsed();
        let start = Instant::now();
        e.put_many(chunk.iter().map(|&i| (key(i), &values[i])))
            .await
            .expect("sealed put_many");
        t_sealed += start.elapsed();
    }
    rows.push(Row {
        what: "encrypted batched put, 1,000 per transaction",
        baseline: "Persist unencrypted, same",
        ours: per_sec(count, t_sealed),
        base: per_sec(count, t_plain),
        target: 0.8,
    });
    // The same with random ids (UUID-like): both stores then insert at
    // random places in their B-trees, as an encrypted store always does
    // (hashed ids keep no order).
    let random_id = |i: usize| {
        format!(
            "{:016x}",
            (i as u64 ^ 0x5bd1_e995).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    };
    let (p_random, e_random) = (plain.records("random"), sealed.records("random"));
    let (mut t_plain, mut t_sealed) = (Duration::ZERO, Duration::ZERO);
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let start = Instant::now();
        p_random
            .put_many(chunk.iter().map(|&i| (random_id(i), &values[i])))
            .await
            .expect("plain put_many");
        t_plain += start.elapsed();
        let start = Instant::now();
        e_random
            .put_many(chunk.iter().map(|&i| (random_id(i), &values[i])))
            .await
            .expect("sealed put_many");
        t_sealed += start.elapsed();
    }
    rows.push(Row {
        what: "encrypted batched put, random ids",
        baseline: "Persist unencrypted, random ids",
        ours: per_sec(count, t_sealed),
        base: per_sec(count, t_plain),
        target: 0.8,
    });
    let (mut t_plain, mut t_sealed) = (Duration::ZERO, Duration::ZERO);
    let singles = sizes.single_puts * sizes.repeats;
    for i in 0..singles {
        let start = Instant::now();
        p.put(&format!("s{i}"), &values[i % values.len()])
            .await
            .expect("plain put");
        t_plain += start.elapsed();
        let start = Instant::now();
        e.put(&format!("s{i}"), &values[i % values.len()])
            .await
            .expect("sealed put");
        t_sealed += start.elapsed();
    }
    rows.push(Row {
        what: "encrypted single durable put",
        baseline: "Persist unencrypted, same",
        ours: per_sec(singles, t_sealed),
        base: per_sec(singles, t_plain),
        target: 0.8,
    });
    let order: Vec<usize> = (0..sizes.reads.min(count))
        .map(|i| (i * 7919 + 13) % count)
        .collect();
    let (mut t_plain, mut t_sealed) = (Duration::ZERO, Duration::ZERO);
    for chunk in order.chunks(1000) {
        let start = Instant::now();
        for &i in chunk {
            std::hint::black_box(p.get(&key(i)).await.expect("get"));
        }
        t_plain += start.elapsed();
        let start = Instant::now();
        for &i in chunk {
            std::hint::black_box(e.get(&key(i)).await.expect("get"));
        }
        t_sealed += start.elapsed();
    }
    rows.push(Row {
        what: "encrypted get (random keys)",
        baseline: "Persist unencrypted, same",
        ours: per_sec(order.len(), t_sealed),
        base: per_sec(order.len(), t_plain),
        target: 0.8,
    });
    let pages = (sizes.lists / 10).max(20);
    // The first listing of an encrypted collection reads and decrypts all of
    // it to build the in-memory name index; later pages use the index.
    let start = Instant::now();
    std::hint::black_box(
        e.list(ListOptions {
            limit: Some(100),
            ..ListOptions::default()
        })
        .await
        .expect("list"),
    );
    let first_listing_ms = start.elapsed().as_secs_f64() * 1000.0;
    std::hint::black_box(
        p.list(ListOptions {
            limit: Some(100),
            ..ListOptions::default()
        })
        .await
        .expect("list"),
    );
    let (mut t_plain, mut t_sealed) = (Duration::ZERO, Duration::ZERO);
    for n in 0..pages {
        let options = || ListOptions {
            after: Some(key((n * 7919) % (count - 200))),
            limit: Some(100),
            ..ListOptions::default()
        };
        let start = Instant::now();
        assert_eq!(p.list(options()).await.expect("list").len(), 100);
        t_plain += start.elapsed();
        let start = Instant::now();
        assert_eq!(e.list(options()).await.expect("list").len(), 100);
        t_sealed += start.elapsed();
    }
    rows.push(Row {
        what: "encrypted list, pages of 100 after a cursor",
        baseline: "Persist unencrypted, same",
        ours: per_sec(pages * 100, t_sealed),
        base: per_sec(pages * 100, t_plain),
        target: 0.7,
    });
    plain.close().await.expect("close");

    // Rotation of every stored row while a writer keeps writing.
    let stored = 2 * count + singles;
    let crypto = sealed.crypto();
    let rotation = tokio::spawn(async move {
        let start = Instant::now();
        let done = crypto.rotate_key(|_| {}).await.expect("rotates");
        (done, start.elapsed())
    });
    let mut latencies = Vec::new();
    let mut n = 0usize;
    while !rotation.is_finished() && n < 100_000 {
        let start = Instant::now();
        e.put(&format!("during{n}"), &values[n % values.len()])
            .await
            .expect("put during rotation");
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        n += 1;
    }
    let (done, took) = rotation.await.expect("rotation task");
    sealed.close().await.expect("close");
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    format!(
        "first listing of an encrypted collection of {count} records (builds its name index): {first_listing_ms:.1} ms\n\n\
         key rotation of {stored} stored records: {:.2} s ({:.0} rows/s re-encrypted, {} rows); \
         {} single puts meanwhile: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        took.as_secs_f64(),
        done.resealed as f64 / took.as_secs_f64(),
        done.resealed,
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0)
    )
}
