//! The sync server's storage: one conformance suite on SQLite and on a
//! real PostgreSQL (the one `scripts/test.sh` starts, named by
//! `PERSIST_TEST_POSTGRES`; each test works in a database of its own),
//! and the server on PostgreSQL end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use persist::host::HostStorage;
use persist::net::server::{ServeOptions, ServerOptions};
use persist::net::P2pOptions;
use serde_json::json;

use crate::p2p::{encrypted_memory_store, pair_into};
use crate::public_node::start_node;

/// A new, empty database on the test PostgreSQL; its URL.
pub(crate) async fn postgres_database() -> String {
    let admin = std::env::var("PERSIST_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "PERSIST_TEST_POSTGRES is not set: run the tests through scripts/test.sh, or \
             `bash scripts/postgres.sh start` and export PERSIST_TEST_POSTGRES=$(bash \
             scripts/postgres.sh url)"
        )
    });
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(connection);
    let mut name = [0u8; 8];
    getrandom::fill(&mut name).expect("random");
    let name = format!("persist_test_{}", hex::encode(name));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

#[tokio::test]
async fn sqlite_storage_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("dir");
    let storage = persist::platform::SqliteHost::open(&dir.path().join("served.db")).expect("open");
    persist::host::conformance::run_all(Arc::new(storage)).await;
}

#[tokio::test]
async fn postgres_storage_passes_the_conformance_suite() {
    let url = postgres_database().await;
    let storage = persist::platform::PostgresHost::connect(&url)
        .await
        .expect("connect");
    persist::host::conformance::run_all(Arc::new(storage)).await;
}

#[tokio::test]
async fn a_file_that_is_not_a_server_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("store.db");
    // A device's store is a SQLite file of another kind.
    let store = persist::Store::open(persist::StoreOptions::new("s").path(&path))
        .await
        .expect("store");
    store.close().await.expect("close");
    let before = std::fs::read(&path).expect("read");
    let err = persist::platform::SqliteHost::open(&path)
        .err()
        .expect("refused");
    assert_eq!(persist::Error::from(err).code(), "STORAGE_CORRUPT");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_io_error() {
    // A port nothing listens on (loopback).
    let err = persist::platform::PostgresHost::connect("postgres://postgres@127.0.0.1:1/none")
        .await
        .err()
        .expect("refused");
    let err = persist::Error::from(err);
    assert_eq!(err.code(), "STORAGE_IO", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_converge_through_a_server_on_postgres_whose_tables_hold_no_plaintext() {
    const MARKER: &str = "postgres-marker-5be1";
    let url = postgres_database().await;
    let storage: Arc<dyn HostStorage> = Arc::new(
        persist::platform::PostgresHost::connect(&url)
            .await
            .expect("connect"),
    );
    let options = ServerOptions {
        serve: Some(ServeOptions::new(storage.clone())),
        ..ServerOptions::default()
    };
    let (server, addr) = start_node(options).await;
    let via = P2pOptions {
        sync_servers: vec![addr],
        ..P2pOptions::loopback()
    };
    let a = encrypted_memory_store("a").await;
    let node_a = a.enable_p2p(via.clone()).await.expect("a");
    let b = encrypted_memory_store("b").await;
    let node_b = pair_into(&b, &node_a, via.clone()).await;
    node_b.shutdown();
    a.records("notes")
        .put("pg", json!({ "text": MARKER }))
        .await
        .expect("put");
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage.stats().await.expect("stats").commits < 1 {
        assert!(
            Instant::now() < deadline,
            "the server never stored A's write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node_a.shutdown();
    let node_b = b.enable_p2p(via).await.expect("b again");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.records("notes").get("pg").await.expect("get").is_none() {
        assert!(Instant::now() < deadline, "B never got A's write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node_b.shutdown();
    server.shutdown().await;

    // Every byte of both tables, as a dump would show them. Control: the
    // store id is there.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let mut bytes = Vec::new();
    for row in client
        .query("SELECT store, founder, log FROM persist_spaces", &[])
        .await
        .expect("spaces")
    {
        for column in 0..3 {
            bytes.extend(row.get::<_, Vec<u8>>(column));
        }
    }
    for row in client
        .query(
            "SELECT author, hash, body, signature FROM persist_commits",
            &[],
        )
        .await
        .expect("commits")
    {
        for column in 0..4 {
            bytes.extend(row.get::<_, Vec<u8>>(column));
        }
    }
    let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(found(a.store_id().as_bytes()), "control: the store id");
    for marker in [MARKER, "notes", "\"pg\""] {
        assert!(
            !found(marker.as_bytes()),
            "{marker} is in the server's tables"
        );
    }
}

#[tokio::test]
async fn a_second_server_process_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("served.db");
    let first = persist::platform::SqliteHost::open(&path).expect("first");
    let err = persist::platform::SqliteHost::open(&path)
        .err()
        .expect("a second owner is refused");
    assert_eq!(persist::Error::from(err).code(), "STORAGE_LOCKED");
    drop(first);
    persist::platform::SqliteHost::open(&path).expect("free again once the first closed");
}

/// Two server processes over one database each cache a store's heads:
/// the one whose cache is stale when it stores commits the other stored
/// first meets the database's refusal, reads the store again and stores
/// only what is new.
#[tokio::test]
async fn a_server_with_a_stale_view_reads_the_store_again_instead_of_failing() {
    use persist::host::{Hosted, Quota};
    use persist::membership::MembershipLog;
    use persist::net::replica::Replica;

    let url = postgres_database().await;
    let device = encrypted_memory_store("a").await;
    for i in 0..3 {
        device
            .kv()
            .set(&format!("k{i}"), json!(i))
            .await
            .expect("write");
    }
    let commits = Replica::commits_missing(&device, Vec::new(), 100, usize::MAX)
        .await
        .expect("commits");
    assert_eq!(commits.len(), 3);
    let wire = Replica::membership_for(&device, None).await.expect("a log");
    let mut log = MembershipLog::founded_by(device.store_id(), wire.founder);
    log.merge_until(&wire, u64::MAX).expect("merge");
    let log = log.to_bytes().expect("bytes");

    // Two processes' storages and views, loaded before either stores.
    let mut views = Vec::new();
    for _ in 0..2 {
        let storage: Arc<dyn HostStorage> = Arc::new(
            persist::platform::PostgresHost::connect(&url)
                .await
                .expect("connect"),
        );
        let (space, stored) = storage
            .create_space(device.store_id(), wire.founder, log.clone(), 10)
            .await
            .expect("create")
            .expect("room");
        views.push(
            Hosted::load(
                storage,
                space,
                &stored,
                persist::Limits::default(),
                Quota::default(),
            )
            .await
            .expect("load"),
        );
    }
    let first = views[0]
        .ingest(commits[..2].to_vec())
        .await
        .expect("first process stores two");
    assert_eq!(first.applied, 2);
    let second = views[1]
        .ingest(commits.clone())
        .await
        .expect("the stale process reads again instead of failing");
    assert_eq!(
        (second.applied, second.duplicates, second.rejected),
        (1, 2, 0)
    );
    assert_eq!(
        views[0].version_vector().await.expect("vv"),
        vec![(device.device_id(), 2)],
        "the first view is stale until it hears"
    );
    assert!(views[0].refresh().await.expect("refresh"));
    assert_eq!(
        views[0].version_vector().await.expect("vv"),
        vec![(device.device_id(), 3)]
    );
}
