//! The sync server, in one run: its ingest (commits/s) on SQLite and on
//! PostgreSQL against the storage's own batch insert of the same rows into
//! the same database; a fresh device catching up N commits from the server
//! against the same device's verify + insert of them without a network;
//! then the bytes on the wire for one change among N through the server,
//! and the server's storage bytes per commit.
//!
//! Run: `cargo bench --bench server` (`-- --quick` for 20,000 commits).
//! The PostgreSQL rows need `PERSIST_TEST_POSTGRES` (a URL with rights to
//! create a database; `bash scripts/postgres.sh start`, then
//! `export PERSIST_TEST_POSTGRES=$(bash scripts/postgres.sh url)`); without
//! it they are left out, and the run says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use persist::host::{HostStorage, Hosted, HostedCommit, Quota};
use persist::membership::MembershipLog;
use persist::net::replica::Replica;
use persist::net::server::{ServeOptions, Server, ServerBehaviour, ServerOptions};
use persist::net::{ByteCounter, Multiaddr, P2pOptions};
use persist::{Adapter, DeviceIdentity, SignedCommit, Store, StoreId, StoreOptions};
use serde_json::json;

/// Commits per request, as devices push them.
const PAGE: usize = 1000;

async fn encrypted(options: StoreOptions) -> Store {
    Store::open(options.encrypt(true)).await.expect("store")
}

/// A fresh device admitted to `founder`'s store without a network.
async fn joined(founder: &Store, path: &std::path::Path, name: &str) -> Store {
    let device = encrypted(StoreOptions::new(name).path(path)).await;
    let welcome = Replica::admit(founder, device.device_id(), name.into())
        .await
        .expect("admit");
    Replica::join(&device, welcome).await.expect("join");
    device
}

/// The rows a server stores for `commits`.
fn rows(commits: &[SignedCommit]) -> Vec<HostedCommit> {
    commits
        .iter()
        .map(|c| {
            let (author, seq) = c.author_seq().expect("a commit");
            HostedCommit {
                author,
                seq,
                hash: c.hash(),
                commit: c.clone(),
            }
        })
        .collect()
}

/// Server ingest and the storage's own insert of the same rows, on
/// `storage`: (ingest commits/s, insert commits/s).
async fn ingest_vs_insert(
    storage: Arc<dyn HostStorage>,
    store: StoreId,
    log: &MembershipLog,
    commits: &[SignedCommit],
) -> (f64, f64) {
    let log_bytes = log.to_bytes().expect("log");
    // Baseline: the same rows in a space of their own, one transaction
    // per page, no check.
    let mut other = [0u8; 16];
    getrandom::fill(&mut other).expect("random");
    let (raw, _) = storage
        .create_space(
            StoreId::from_bytes(other),
            log.founder(),
            log_bytes.clone(),
            10,
        )
        .await
        .expect("create")
        .expect("room");
    let all = rows(commits);
    let start = Instant::now();
    for page in all.chunks(PAGE) {
        storage.append(raw, page.to_vec()).await.expect("insert");
    }
    let insert = commits.len() as f64 / start.elapsed().as_secs_f64();
    // The server: each page checked (signature, chain, membership) and
    // stored durably, as a push from a device is.
    let (space, stored) = storage
        .create_space(store, log.founder(), log_bytes, 10)
        .await
        .expect("create")
        .expect("room");
    let hosted = Hosted::load(
        storage.clone(),
        space,
        &stored,
        persist::Limits::default(),
        Quota::default(),
    )
    .await
    .expect("load");
    let start = Instant::now();
    for page in commits.chunks(PAGE) {
        let outcome = hosted.ingest(page.to_vec()).await.expect("ingest");
        assert_eq!(outcome.applied, page.len());
    }
    let ingest = commits.len() as f64 / start.elapsed().as_secs_f64();
    (ingest, insert)
}

async fn serving(storage: Arc<dyn HostStorage>) -> (Server, Multiaddr) {
    let options = ServerOptions {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        serve: Some(ServeOptions::new(storage)),
        ..ServerOptions::default()
    };
    let keypair =
        persist::net::keypair(&DeviceIdentity::generate().expect("identity")).expect("keypair");
    let behaviour = ServerBehaviour::new(&keypair, &options);
    let (swarm, _) = persist::platform::server_swarm(keypair, behaviour, None).expect("swarm");
    let server = Server::start(swarm, &options).expect("server");
    loop {
        if let Some(addr) = server
            .listen_addrs()
            .await
            .expect("addrs")
            .into_iter()
            .next()
        {
            return (server, addr);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A new database on the PostgreSQL named by `PERSIST_TEST_POSTGRES`.
async fn postgres_database() -> Option<String> {
    let admin = std::env::var("PERSIST_TEST_POSTGRES").ok()?;
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("PERSIST_TEST_POSTGRES answers");
    tokio::spawn(connection);
    let mut name = [0u8; 8];
    getrandom::fill(&mut name).expect("random");
    let name = format!("persist_bench_{}", hex::encode(name));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    Some(format!("{base}/{name}"))
}

fn row(what: &str, ours: f64, baseline: f64, target: f64) {
    let ratio = ours / baseline;
    let verdict = if ratio >= target { "met" } else { "**MISSED**" };
    println!("| {what} | {ours:.0}/s | {baseline:.0}/s | {ratio:.2}x | >= {target}x ({verdict}) |");
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 20_000 } else { 100_000 };
    let dir = tempfile::tempdir().expect("dir");

    // Device A writes n records, one commit each; B (which catches up
    // from the server) and C (the local baseline) are admitted first.
    let a = encrypted(StoreOptions::new("a").adapter(Adapter::Memory)).await;
    let b = joined(&a, &dir.path().join("b.db"), "b").await;
    let c = joined(&a, &dir.path().join("c.db"), "c").await;
    let records = a.records("notes");
    for i in 0..n {
        records
            .put(
                &format!("k{i:09}"),
                json!({ "body": "x".repeat(100), "n": i }),
            )
            .await
            .expect("write");
    }
    let commits = Replica::commits_missing(&a, Vec::new(), usize::MAX, usize::MAX)
        .await
        .expect("commits");
    assert_eq!(commits.len(), n);
    let wire = Replica::membership_for(&a, None).await.expect("a log");
    let mut log = MembershipLog::founded_by(a.store_id(), wire.founder);
    log.merge_until(&wire, u64::MAX).expect("log");
    let commit_bytes = commits
        .iter()
        .map(|c| c.body.len() + c.signature.len())
        .sum::<usize>() as f64
        / n as f64;

    println!(
        "{n} sealed commits of one author ({commit_bytes:.0} bytes each on average, padded)\n"
    );
    println!("| what | Persist | baseline | ratio | target |");
    println!("|---|---:|---:|---:|---:|");

    // 1. Server ingest against the storage's own insert.
    let sqlite: Arc<dyn HostStorage> = Arc::new(
        persist::platform::SqliteHost::open(&dir.path().join("served.db")).expect("sqlite"),
    );
    let (ingest, insert) = ingest_vs_insert(sqlite.clone(), a.store_id(), &log, &commits).await;
    row(
        "server ingest, SQLite (pages of 1,000; vs the same rows inserted)",
        ingest,
        insert,
        0.5,
    );
    let postgres = match postgres_database().await {
        Some(url) => {
            let storage: Arc<dyn HostStorage> = Arc::new(
                persist::platform::PostgresHost::connect(&url)
                    .await
                    .expect("postgres"),
            );
            let (ingest, insert) =
                ingest_vs_insert(storage.clone(), a.store_id(), &log, &commits).await;
            row(
                "server ingest, PostgreSQL (pages of 1,000; vs the same rows inserted)",
                ingest,
                insert,
                0.5,
            );
            Some(url)
        }
        None => {
            println!(
                "| server ingest, PostgreSQL | left out: PERSIST_TEST_POSTGRES is not set | | | |"
            );
            None
        }
    };

    // 2. A fresh device catching up from the server (SQLite storage,
    // loopback TCP) against its own verify + insert of the same commits.
    let start = Instant::now();
    let report = c.ingest(commits.clone()).await.expect("ingest");
    assert_eq!(report.applied, n);
    let local = n as f64 / start.elapsed().as_secs_f64();
    c.close().await.expect("close");
    let (server, addr) = serving(sqlite.clone()).await;
    let counter_b = ByteCounter::default();
    let target = a.version_vector().await.expect("vv");
    let start = Instant::now();
    let node_b = b
        .enable_p2p(P2pOptions {
            sync_servers: vec![addr.clone()],
            count_bytes: Some(counter_b.clone()),
            ..P2pOptions::loopback()
        })
        .await
        .expect("b");
    while b.version_vector().await.expect("vv") != target {
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "catch-up stalled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let caught_up = n as f64 / start.elapsed().as_secs_f64();
    row(
        "a fresh device catching up from the server (vs its local verify + insert)",
        caught_up,
        local,
        0.7,
    );

    // 3. One change among n through the server: A pushes, the server
    // stores and pushes to B. Every byte of both TCP connections
    // (Noise, Yamux, multistream-select included) once they were quiet.
    let counter_a = ByteCounter::default();
    let node_a = a
        .enable_p2p(P2pOptions {
            sync_servers: vec![addr.clone()],
            count_bytes: Some(counter_a.clone()),
            ..P2pOptions::loopback()
        })
        .await
        .expect("a");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rounds = Vec::new();
    for (round, id) in ["k000000007", "k000000008"].into_iter().enumerate() {
        let before =
            counter_a.read() + counter_a.written() + counter_b.read() + counter_b.written();
        let start = Instant::now();
        records
            .put(id, json!({ "changed": round }))
            .await
            .expect("put");
        while b.records("notes").get(id).await.expect("get") != Some(json!({ "changed": round })) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the change never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = counter_a.read() + counter_a.written() + counter_b.read() + counter_b.written();
        rounds.push((took, after - before));
    }
    let last = Replica::commits_missing(&a, Vec::new(), usize::MAX, usize::MAX)
        .await
        .expect("commits")
        .pop()
        .expect("a commit");
    let size = last.body.len() + last.signature.len();
    let (took, bytes) = rounds[1];
    println!(
        "\none record changed among {n}: on the other device {:.1} ms after the write returned, \
         through the server; {bytes} bytes on the wire in all (A to the server and the server \
         to B, both directions, all framing) for a {size}-byte commit (body and signature): \
         {:.1}x the commit",
        took.as_secs_f64() * 1e3,
        bytes as f64 / size as f64
    );

    // 4. What the server's storage spends per commit.
    node_a.shutdown();
    node_b.shutdown();
    server.shutdown().await;
    let held = sqlite.stats().await.expect("stats");
    drop(server);
    drop(sqlite);
    let mut file_bytes = 0u64;
    for name in ["served.db", "served.db-wal"] {
        if let Ok(meta) = std::fs::metadata(dir.path().join(name)) {
            file_bytes += meta.len();
        }
    }
    println!(
        "storage, SQLite: {held_commits} commits held (both runs above) in {file_bytes} bytes \
         of file and WAL: {:.0} bytes per commit for {:.0} bytes of commit ({:.2}x)",
        file_bytes as f64 / held.commits as f64,
        held.bytes as f64 / held.commits as f64,
        (file_bytes as f64 / held.commits as f64) / (held.bytes as f64 / held.commits as f64),
        held_commits = held.commits
    );
    if let Some(url) = postgres {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT pg_total_relation_size('persist_commits')::BIGINT, count(*), \
                 coalesce(sum(length(body) + length(signature)), 0)::BIGINT FROM persist_commits",
                &[],
            )
            .await
            .expect("sizes");
        let (total, count, payload): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        println!(
            "storage, PostgreSQL: {count} commits in {total} bytes (table, TOAST and index): \
             {:.0} bytes per commit for {:.0} bytes of commit ({:.2}x)",
            total as f64 / count as f64,
            payload as f64 / count as f64,
            total as f64 / payload as f64
        );
    }
}
