//! The sync server (`persist node --serve`) on loopback: devices that are
//! never online together converge through it, it keeps only ciphertext,
//! and it serves a store only to its current members (a stranger holding
//! the store's log, a squatter founding a log of its own under the same
//! store id, and a revoked device each get nothing).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response;
use libp2p::{Multiaddr, PeerId, Swarm};
use persist::membership::MembershipWire;
use persist::net::server::{ServeOptions, Server, ServerOptions};
use persist::net::{P2pEvent, P2pOptions, SyncCodec, SyncRequest, SyncResponse};
use persist::{DeviceIdentity, Store};
use serde_json::json;

use crate::p2p::{encrypted_memory_store, pair_into};
use crate::p2p_trust::{ask_at, empty_pull, member_with, raw_client};
use crate::public_node::start_node;

/// A serving node on loopback keeping its stores in `dir/served.db`.
async fn serving_node(dir: &Path) -> (Server, Multiaddr) {
    let storage = persist::platform::SqliteHost::open(&dir.join("served.db")).expect("storage");
    let options = ServerOptions {
        serve: Some(ServeOptions::new(Arc::new(storage))),
        ..ServerOptions::default()
    };
    start_node(options).await
}

fn via(server: &Multiaddr) -> P2pOptions {
    P2pOptions {
        sync_servers: vec![server.clone()],
        ..P2pOptions::loopback()
    }
}

async fn eventually(what: &str, seconds: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits the server holds.
async fn held(server: &Server) -> u64 {
    server
        .stats()
        .await
        .expect("stats")
        .served
        .expect("serving")
        .held
        .commits
}

/// Commits `store` holds, all authors.
async fn commits_of(store: &Store) -> u64 {
    store
        .version_vector()
        .await
        .expect("vv")
        .iter()
        .map(|(_, n)| n)
        .sum()
}

async fn has(store: &Store, id: &str) -> bool {
    store.records("notes").get(id).await.expect("get").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_never_online_together_converge_through_the_server_which_holds_only_ciphertext() {
    const MARKER_A: &str = "marker-written-by-a-7f3c";
    const MARKER_B: &str = "marker-written-by-b-91d2";
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serving_node(dir.path()).await;
    let a = encrypted_memory_store("a").await;
    let node_a = a.enable_p2p(via(&addr)).await.expect("a");
    let b = encrypted_memory_store("b").await;
    let node_b = pair_into(&b, &node_a, via(&addr)).await;
    node_b.shutdown();

    // A writes alone; once the server holds it, A goes.
    a.records("notes")
        .put("from-a", json!({ "text": MARKER_A }))
        .await
        .expect("put");
    let total = commits_of(&a).await;
    eventually("the server holds A's writes", 10, async || {
        held(&server).await >= total
    })
    .await;
    node_a.shutdown();

    // B, alone, writes too and gets A's write from the server.
    b.records("notes")
        .put("from-b", json!({ "text": MARKER_B }))
        .await
        .expect("put");
    let node_b = b.enable_p2p(via(&addr)).await.expect("b");
    eventually("B has A's write", 10, async || has(&b, "from-a").await).await;
    let total = commits_of(&b).await;
    eventually("the server holds B's write", 10, async || {
        held(&server).await >= total
    })
    .await;
    node_b.shutdown();

    // A comes back alone and gets B's.
    let node_a = a.enable_p2p(via(&addr)).await.expect("a again");
    eventually("A has B's write", 10, async || has(&a, "from-b").await).await;
    assert_eq!(
        a.version_vector().await.expect("vv"),
        b.version_vector().await.expect("vv")
    );
    node_a.shutdown();
    server.shutdown().await;

    // What the server wrote holds no plaintext. Control: the store id and
    // A's device id, which the server must know, are found the same way.
    let mut bytes = Vec::new();
    for name in ["served.db", "served.db-wal"] {
        if let Ok(more) = std::fs::read(dir.path().join(name)) {
            bytes.extend(more);
        }
    }
    let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(found(a.store_id().as_bytes()), "control: the store id");
    assert!(found(a.device_id().as_bytes()), "control: A's device id");
    for marker in [MARKER_A, MARKER_B, "from-a", "from-b", "notes"] {
        assert!(
            !found(marker.as_bytes()),
            "{marker} is in the server's files"
        );
    }
}

/// Sends `request` to the server at `addr` and returns its answer.
async fn ask(
    client: &mut Swarm<request_response::Behaviour<SyncCodec>>,
    addr: &Multiaddr,
    server: PeerId,
    request: SyncRequest,
) -> Result<SyncResponse, String> {
    ask_at(client, addr, server, request, Duration::from_secs(10)).await
}

fn refused(response: &Result<SyncResponse, String>) -> Option<&str> {
    match response {
        Ok(SyncResponse::Refused(code)) => Some(code),
        _ => None,
    }
}

fn commits_in(response: Result<SyncResponse, String>) -> usize {
    match response {
        Ok(SyncResponse::Commits { commits, .. }) => commits.len(),
        other => panic!("expected commits, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_squatters_and_revoked_devices_get_nothing_from_the_server() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serving_node(dir.path()).await;
    let a = encrypted_memory_store("a").await;
    let node_a = a.enable_p2p(via(&addr)).await.expect("a");
    let member = member_with(61, &node_a).await;
    a.records("notes")
        .put("secret", json!({ "n": 1 }))
        .await
        .expect("put");
    let total = commits_of(&a).await;
    eventually("the server holds A's writes", 10, async || {
        held(&server).await >= total
    })
    .await;
    let store = a.store_id();
    let log: MembershipWire = a.membership_for(None).await.expect("a log");
    let hello = |log: &MembershipWire| SyncRequest::Hello {
        store,
        log: log.clone(),
    };

    // A stranger that holds the store's log: it is in no entry of it.
    let stranger = DeviceIdentity::generate().expect("identity");
    let mut client = raw_client(&stranger);
    let peer = server.peer_id();
    let answer = ask(&mut client, &addr, peer, hello(&log)).await;
    assert_eq!(refused(&answer), Some("NOT_TRUSTED"), "{answer:?}");
    let answer = ask(&mut client, &addr, peer, empty_pull(store)).await;
    assert_eq!(refused(&answer), Some("NOT_TRUSTED"), "{answer:?}");

    // A squatter founding a log of its own under the store's id gets a
    // space of its own: empty, and none of A's.
    let squat = MembershipWire {
        store,
        founder: stranger.device_id(),
        entries: Vec::new(),
    };
    let answer = ask(&mut client, &addr, peer, hello(&squat)).await;
    assert!(
        matches!(answer, Ok(SyncResponse::Greeted { .. })),
        "{answer:?}"
    );
    assert_eq!(
        commits_in(ask(&mut client, &addr, peer, empty_pull(store)).await),
        0
    );

    // A stranger's hello with no entries (the server knows members by
    // the log it holds) is refused the same way, and tells it nothing.
    let mut client = raw_client(&stranger);
    let short = MembershipWire {
        entries: Vec::new(),
        ..log.clone()
    };
    let answer = ask(&mut client, &addr, peer, hello(&short)).await;
    assert_eq!(refused(&answer), Some("NOT_TRUSTED"), "{answer:?}");

    // The member (control: the same requests succeed for it), greeted
    // with what the server holds of the log: all of A's.
    let mut client = raw_client(&member);
    let answer = ask(&mut client, &addr, peer, hello(&log)).await;
    match answer {
        Ok(SyncResponse::Greeted { members }) => {
            assert_eq!(
                members,
                a.membership_have().await,
                "the server's log is A's"
            );
        }
        other => panic!("expected a greeting, got {other:?}"),
    }
    assert!(commits_in(ask(&mut client, &addr, peer, empty_pull(store)).await) > 0);
    let answer = ask(&mut client, &addr, peer, hello(&short)).await;
    assert!(
        matches!(answer, Ok(SyncResponse::Greeted { .. })),
        "{answer:?}"
    );

    // Revoked: refused on its open connection, and when it greets again
    // with the log it holds (which lacks its removal).
    node_a
        .revoke_trust(persist::net::peer_id_of(&member.device_id()).expect("peer"))
        .await
        .expect("revoke");
    eventually("the server refuses the revoked device", 10, async || {
        refused(&ask(&mut client, &addr, peer, empty_pull(store)).await) == Some("NOT_TRUSTED")
    })
    .await;
    let answer = ask(&mut client, &addr, peer, hello(&log)).await;
    assert_eq!(refused(&answer), Some("NOT_TRUSTED"), "{answer:?}");
    node_a.shutdown();
    server.shutdown().await;
}

/// Stops `node` and waits until its loop has ended (it answers no more),
/// so it sends nothing more.
async fn stop(node: persist::net::P2p) {
    node.shutdown();
    eventually("the node stops", 10, async || {
        node.connected_peers().await.is_err()
    })
    .await;
}

/// What hellos carry. A device the server knows greets it with no
/// entries, then sends only what the server lacks: here a revocation made
/// while the device was away from the server, which must reach it though
/// nothing else changed. A server that never saw the store learns the
/// whole log from the first device that comes, founder or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_carries_only_what_the_server_lacks() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serving_node(dir.path()).await;
    let peer = server.peer_id();
    let a = encrypted_memory_store("a").await;
    let node_a = a.enable_p2p(via(&addr)).await.expect("a");
    let member = member_with(63, &node_a).await;
    let store = a.store_id();
    let hello = SyncRequest::Hello {
        store,
        log: MembershipWire {
            store,
            founder: a.device_id(),
            entries: Vec::new(),
        },
    };
    let mut client = raw_client(&member);
    eventually("the server knows the member", 10, async || {
        let answer = ask(&mut client, &addr, peer, hello.clone()).await;
        matches!(answer, Ok(SyncResponse::Greeted { .. }))
    })
    .await;

    // A revokes it while away from the server: the server has not heard.
    stop(node_a).await;
    a.revoke(member.device_id()).await.expect("revoke");
    let answer = ask(&mut client, &addr, peer, hello.clone()).await;
    assert!(
        matches!(answer, Ok(SyncResponse::Greeted { .. })),
        "{answer:?}"
    );

    // A comes back: the server has the removal by the time it accepts A,
    // before any pull or push (the entries go in A's second hello).
    let node_a = a.enable_p2p(via(&addr)).await.expect("a again");
    let mut events = node_a.events();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(events.next().await, Some(P2pEvent::ServerReady(p)) if p == peer) {}
    })
    .await
    .expect("the server accepts A within 10 s");
    let answer = ask(&mut client, &addr, peer, hello.clone()).await;
    assert_eq!(refused(&answer), Some("NOT_TRUSTED"), "{answer:?}");

    // B, paired with A directly, greets a server that never saw the store.
    let other_dir = tempfile::tempdir().expect("dir");
    let (fresh, fresh_addr) = serving_node(other_dir.path()).await;
    let b = encrypted_memory_store("b").await;
    stop(pair_into(&b, &node_a, P2pOptions::loopback()).await).await;
    b.records("notes")
        .put("from-b", json!({ "n": 1 }))
        .await
        .expect("put");
    let total = commits_of(&b).await;
    let node_b = b.enable_p2p(via(&fresh_addr)).await.expect("b");
    eventually("the fresh server holds B's writes", 10, async || {
        held(&fresh).await >= total
    })
    .await;
    node_b.shutdown();
    node_a.shutdown();
    fresh.shutdown().await;
    server.shutdown().await;
}

/// A store that names its sync server in its options
/// (`createStore({ ..., encrypt: true, sync: { remote } })` in JavaScript,
/// `StoreOptions::sync_remote` here) syncs without an `enable_p2p` call:
/// two devices that paired once and are then never open together
/// converge through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_with_a_sync_remote_syncs_without_enable_p2p() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serving_node(dir.path()).await;
    let remote = addr.to_string();
    let open = |name: &str| {
        Store::open(
            persist::StoreOptions::new(name)
                .path(dir.path().join(format!("{name}.db")))
                .encrypt(true)
                .sync_remote(remote.clone()),
        )
    };
    let (a, b) = (open("a").await.expect("a"), open("b").await.expect("b"));
    assert!(
        a.remote_sync().is_some(),
        "the store runs a node for the server"
    );
    // Pairing takes over the store's node; the server stays.
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    assert!(a.remote_sync().is_none());
    let node_b = pair_into(&b, &node_a, P2pOptions::loopback()).await;
    node_a.shutdown();
    node_b.shutdown();
    b.close().await.expect("close b");

    a.records("notes")
        .put("sample", json!({ "text": "written while b is closed" }))
        .await
        .expect("put");
    a.close().await.expect("close a");
    let a = open("a").await.expect("a again");
    let total = commits_of(&a).await;
    eventually("the server holds A's write", 10, async || {
        held(&server).await >= total
    })
    .await;
    a.close().await.expect("close a");

    let b = open("b").await.expect("b again");
    eventually("B has A's write", 10, async || has(&b, "sample").await).await;
    b.close().await.expect("close b");
    server.shutdown().await;
}

#[tokio::test]
async fn a_sync_remote_naming_the_deployment_needs_its_address() {
    std::env::remove_var(persist::store::SYNC_REMOTE_ENV);
    let err = Store::open(
        persist::StoreOptions::new("seed")
            .adapter(persist::Adapter::Memory)
            .encrypt(true)
            .sync_remote("postgres"),
    )
    .await
    .expect_err("no address");
    assert_eq!(err.code(), "SYNC_REMOTE_UNSET");
    assert!(err.to_string().contains("PERSIST_SYNC_REMOTE"), "{err}");
    // A plain store cannot sync through a server.
    let server = persist::net::peer_id_of(&DeviceIdentity::generate().expect("id").device_id())
        .expect("peer id");
    let err = Store::open(
        persist::StoreOptions::new("plain")
            .adapter(persist::Adapter::Memory)
            .sync_remote(format!("/ip4/127.0.0.1/tcp/9/p2p/{server}")),
    )
    .await
    .expect_err("plain");
    assert_eq!(err.code(), "INVALID_OPTIONS");
    assert!(err.to_string().contains("encrypt"), "{err}");
}

/// Load: 100 devices (20 stores of 5), online at once with the server
/// only, each writing 20 records: every device of a store ends with the
/// same 100 writes, and the server holds all 2,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_devices_converge_through_one_server() {
    const STORES: usize = 20;
    const PER_STORE: usize = 5;
    const WRITES: usize = 20;
    let dir = tempfile::tempdir().expect("dir");
    let storage = persist::platform::SqliteHost::open(&dir.path().join("served.db")).expect("open");
    let options = ServerOptions {
        serve: Some(ServeOptions::new(Arc::new(storage))),
        // Every device dials from 127.0.0.1.
        max_connections_per_ip: 256,
        max_connections_per_subnet: 256,
        ..ServerOptions::default()
    };
    let (server, addr) = start_node(options).await;
    let started = Instant::now();
    let mut stores: Vec<Vec<Store>> = Vec::new();
    for s in 0..STORES {
        let first = encrypted_memory_store(&format!("s{s}d0")).await;
        let host = first.enable_p2p(via(&addr)).await.expect("first");
        let mut group = vec![first];
        for d in 1..PER_STORE {
            let device = encrypted_memory_store(&format!("s{s}d{d}")).await;
            pair_into(&device, &host, via(&addr)).await.shutdown();
            group.push(device);
        }
        host.shutdown();
        stores.push(group);
    }
    let paired = started.elapsed();
    // All 100 online at once, each with the server only, each writing.
    let mut nodes = Vec::new();
    for device in stores.iter().flatten() {
        nodes.push(device.enable_p2p(via(&addr)).await.expect("online"));
    }
    let writes = stores
        .iter()
        .flatten()
        .enumerate()
        .map(|(n, device)| async move {
            for w in 0..WRITES {
                device
                    .records("notes")
                    .put(&format!("d{n}-{w}"), json!({ "w": w }))
                    .await
                    .expect("put");
            }
        });
    futures::future::join_all(writes).await;
    let written = Instant::now();
    let deadline = written + Duration::from_secs(120);
    for group in &stores {
        loop {
            let mut counts = Vec::new();
            for device in group {
                counts.push(
                    device
                        .records("notes")
                        .list(Default::default())
                        .await
                        .expect("list")
                        .len(),
                );
            }
            if counts.iter().all(|&c| c == PER_STORE * WRITES) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not converge: {counts:?}",
                group[0].name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = group[0].version_vector().await.expect("vv");
        for device in &group[1..] {
            assert_eq!(device.version_vector().await.expect("vv"), first);
        }
    }
    let all = (STORES * PER_STORE * WRITES) as u64;
    assert!(held(&server).await >= all, "the server holds every write");
    println!(
        "{} devices paired in {paired:?}; their {all} writes converged {:?} after the last",
        STORES * PER_STORE,
        written.elapsed()
    );
    for node in nodes {
        node.shutdown();
    }
    server.shutdown().await;
}

/// An operator who lists founders: the listed founder's store is served,
/// and any other founder (a squatter under the same store id included)
/// founds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_listing_founders_serves_only_their_stores() {
    let dir = tempfile::tempdir().expect("dir");
    let a = encrypted_memory_store("a").await;
    let storage = persist::platform::SqliteHost::open(&dir.path().join("served.db")).expect("open");
    let mut serve = ServeOptions::new(Arc::new(storage));
    serve.founders = vec![a.device_id()];
    let options = ServerOptions {
        serve: Some(serve),
        ..ServerOptions::default()
    };
    let (server, addr) = start_node(options).await;
    let store = a.store_id();
    let peer = server.peer_id();

    // The listed founder greets: served.
    let node_a = a.enable_p2p(via(&addr)).await.expect("a");
    a.records("notes")
        .put("listed", json!({ "n": 1 }))
        .await
        .expect("put");
    let total = commits_of(&a).await;
    eventually(
        "the server holds the listed founder's writes",
        10,
        async || held(&server).await >= total,
    )
    .await;

    // Another founder, with a store of its own or squatting A's id.
    let other = DeviceIdentity::generate().expect("identity");
    let mut client = raw_client(&other);
    for store in [store, persist::StoreId::from_bytes([7; 16])] {
        let own = MembershipWire {
            store,
            founder: other.device_id(),
            entries: Vec::new(),
        };
        let answer = ask(
            &mut client,
            &addr,
            peer,
            SyncRequest::Hello { store, log: own },
        )
        .await;
        assert_eq!(refused(&answer), Some("NOT_TRUSTED"), "{answer:?}");
    }
    let stats = server
        .stats()
        .await
        .expect("stats")
        .served
        .expect("serving");
    assert_eq!(stats.held.stores, 1, "only the listed founder's store");
    node_a.shutdown();
    server.shutdown().await;
}
