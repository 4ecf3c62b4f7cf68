//! P2P replication on loopback TCP and QUIC: devices pair with a code,
//! then replicate commits both ways, live, through relays, plain and
//! encrypted; strangers are gated. mDNS stays off (it would multicast on
//! the host's interfaces).

use std::time::{Duration, Instant};

use futures::StreamExt;
use persist::net::{Multiaddr, P2p, P2pEvent, P2pOptions};
use persist::{Adapter, Store, StoreOptions};
use serde_json::{json, Value};

/// An encrypted store in memory.
pub(crate) async fn encrypted_memory_store(name: &str) -> Store {
    Store::open(
        StoreOptions::new(name)
            .adapter(Adapter::Memory)
            .encrypt(true),
    )
    .await
    .expect("encrypted store")
}

/// An encrypted SQLite store at `path`.
async fn encrypted_file_store(name: &str, path: &std::path::Path) -> Store {
    Store::open(StoreOptions::new(name).path(path).encrypt(true))
        .await
        .expect("encrypted store")
}

pub(crate) async fn memory_store(name: &str) -> Store {
    Store::open(StoreOptions::new(name).adapter(Adapter::Memory))
        .await
        .expect("store")
}

/// Pairs `store` (no writes yet) into the store of `host` with a fresh
/// code, through a node of its own started with `options`.
pub(crate) async fn pair_into(store: &Store, host: &P2p, options: P2pOptions) -> P2p {
    let node = store.enable_p2p(options).await.expect("node");
    pair_node(&node, host).await;
    node
}

/// Pairs the device of `node` into the store of `host`.
pub(crate) async fn pair_node(node: &P2p, host: &P2p) {
    let pending = host.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let addr = dial_addr(host).await;
    let (joined, hosted) = tokio::join!(node.pair(&code, Some(addr)), pending.paired());
    assert_eq!(joined.expect("joined"), host.peer_id());
    assert_eq!(hosted.expect("hosted"), node.peer_id());
}

/// A new memory store paired into `host`'s store.
pub(crate) async fn new_member(name: &str, host: &P2p) -> (Store, P2p) {
    let store = memory_store(name).await;
    let node = pair_into(&store, host, P2pOptions::loopback()).await;
    (store, node)
}

/// `code` with the first character of its secret changed: the right
/// nameplate, a wrong secret.
pub(crate) fn wrong_code(code: &str) -> String {
    let (nameplate, secret) = code.split_once('-').expect("ABCD-1234");
    let flipped = if secret.starts_with('0') { "1" } else { "0" };
    format!("{nameplate}-{flipped}{}", &secret[1..])
}

/// The node's first listen address with its peer id, to dial.
pub(crate) async fn dial_addr(node: &P2p) -> Multiaddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(addr) = node.listen_addrs().await.expect("addrs").into_iter().next() {
            return format!("{addr}/p2p/{}", node.peer_id())
                .parse()
                .expect("multiaddr");
        }
        assert!(Instant::now() < deadline, "the node never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 10 s) until `store` holds `value` under notes/`id`.
pub(crate) async fn arrives(store: &Store, id: &str, value: &Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if store.records("notes").get(id).await.expect("get").as_ref() == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "notes/{id} never reached {}",
            store.name()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_stores_sync_history_and_live_writes_both_ways() {
    let a = Store::open(StoreOptions::new("a").adapter(Adapter::Memory))
        .await
        .expect("a");
    for i in 0..3 {
        a.records("notes")
            .put(&format!("old{i}"), json!({ "i": i }))
            .await
            .expect("put");
    }
    a.events("log")
        .append(json!({ "e": 1 }))
        .await
        .expect("event");
    a.kv().set("theme", json!("dark")).await.expect("kv");

    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("p2p a");
    let mut events_a = node_a.events();
    let (b, node_b) = new_member("b", &node_a).await;
    assert_eq!(b.store_id(), a.store_id(), "the joiner adopts the store id");
    assert_ne!(node_a.peer_id(), node_b.peer_id());
    // PeerIds are the devices' Ed25519 keys: one identity for commits and peers.
    assert_eq!(
        node_a.peer_id(),
        persist::net::peer_id_of(&a.device_id()).expect("peer id")
    );

    // A hears B connect and join; B pulls A's history.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events_a.next().await {
            seen.push(event);
            if seen.contains(&P2pEvent::PeerConnected(node_b.peer_id()))
                && seen.contains(&P2pEvent::Paired(node_b.peer_id()))
                && seen.contains(&P2pEvent::MemberAdded(node_b.peer_id()))
            {
                return;
            }
        }
    })
    .await
    .expect("B connects and joins within 10 s");
    let mut trusted = node_b.trusted_peers().expect("trusted");
    trusted.sort();
    let mut expected = vec![node_a.peer_id(), node_b.peer_id()];
    expected.sort();
    assert_eq!(trusted, expected);
    arrives(&b, "old2", &json!({ "i": 2 })).await;
    assert_eq!(b.kv().get("theme").await.expect("kv"), Some(json!("dark")));
    assert_eq!(
        b.events("log")
            .list(Default::default())
            .await
            .expect("events")
            .len(),
        1
    );

    // Live, both ways.
    a.records("notes")
        .put("live-a", json!({ "from": "a" }))
        .await
        .expect("put");
    arrives(&b, "live-a", &json!({ "from": "a" })).await;
    b.records("notes")
        .put("live-b", json!({ "from": "b" }))
        .await
        .expect("put");
    arrives(&a, "live-b", &json!({ "from": "b" })).await;
    assert_eq!(
        a.version_vector().await.expect("vv"),
        b.version_vector().await.expect("vv")
    );
    node_a.shutdown();
    node_b.shutdown();
    // A call on a stopped node says so, with a code of its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match node_a.connected_peers().await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the node never stopped"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(err.code(), "P2P_STOPPED", "{err}");
}

#[tokio::test]
async fn pairing_a_b_and_a_c_lets_b_relay_between_a_and_c() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let (b, node_b) = new_member("b", &node_a).await;
    let (c, node_c) = new_member("c", &node_a).await;
    // B learns of C from A's membership log, without a second pairing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.is_trusted(&c.device_id()) {
        assert!(Instant::now() < deadline, "B never learnt of C");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // C keeps a connection to B only: B relays.
    node_c.shutdown();
    let mut to_b = P2pOptions::loopback();
    to_b.bootstrap_peers = vec![dial_addr(&node_b).await];
    let node_c = c.enable_p2p(to_b).await.expect("c");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_c
        .connected_peers()
        .await
        .expect("peers")
        .contains(&node_b.peer_id())
    {
        assert!(Instant::now() < deadline, "C never connected to B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!node_c
        .connected_peers()
        .await
        .expect("peers")
        .contains(&node_a.peer_id()));
    a.records("notes")
        .put("relayed", json!({ "hops": 2 }))
        .await
        .expect("put");
    arrives(&c, "relayed", &json!({ "hops": 2 })).await;
    c.records("notes")
        .put("back", json!({ "hops": 2 }))
        .await
        .expect("put");
    arrives(&a, "back", &json!({ "hops": 2 })).await;
    for node in [node_a, node_b, node_c] {
        node.shutdown();
    }
}

#[tokio::test]
async fn encrypted_stores_sync_ciphertext_they_can_open() {
    let dir = tempfile::tempdir().expect("dir");
    let a = encrypted_file_store("a", &dir.path().join("a.db")).await;
    a.records("notes")
        .put("secret", json!({ "pin": 1234 }))
        .await
        .expect("put");
    // B is a new, unencrypted store: pairing hands it the keyring (sealed
    // under the pairing key), and it stores ciphertext from then on.
    let b = Store::open(StoreOptions::new("b").path(dir.path().join("b.db")))
        .await
        .expect("b");
    assert!(!b.crypto().is_encrypted());
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let node_b = pair_into(&b, &node_a, P2pOptions::loopback()).await;
    assert!(b.crypto().is_encrypted());
    assert_eq!(b.crypto().epoch().expect("epoch"), 0);
    arrives(&b, "secret", &json!({ "pin": 1234 })).await;
    b.records("notes")
        .put("reply", json!({ "ok": true }))
        .await
        .expect("put");
    arrives(&a, "reply", &json!({ "ok": true })).await;
    node_a.shutdown();
    node_b.shutdown();
}

/// Pairing and replication over another transport: `listen` is where the
/// first device listens (and the second dials).
async fn pair_and_sync_over(listen: &str, marker: &str) {
    let options = || P2pOptions {
        listen_addrs: vec![listen.parse().expect("addr")],
        ..P2pOptions::loopback()
    };
    let a = memory_store("a").await;
    a.records("notes")
        .put("over", json!({ "transport": listen }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(options()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    assert!(addr.to_string().contains(marker), "{addr}");
    let b = memory_store("b").await;
    let node_b = pair_into(&b, &node_a, options()).await;
    arrives(&b, "over", &json!({ "transport": listen })).await;
    b.records("notes")
        .put("back", json!({ "live": true }))
        .await
        .expect("put");
    arrives(&a, "back", &json!({ "live": true })).await;
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test]
async fn stores_pair_and_sync_over_quic() {
    pair_and_sync_over("/ip4/127.0.0.1/udp/0/quic-v1", "/quic-v1/").await;
}

/// WebSocket: the listener browsers will dial.
#[tokio::test]
async fn stores_pair_and_sync_over_websocket() {
    pair_and_sync_over("/ip4/127.0.0.1/tcp/0/ws", "/ws/").await;
}

#[tokio::test]
async fn a_stranger_is_refused_right_after_the_handshake() {
    let a = memory_store("a").await;
    a.records("notes")
        .put("private", json!({ "x": 1 }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let mut events_a = node_a.events();
    // Another store's device dials A: A's gate closes the connection.
    let other = memory_store("other").await;
    let mut options = P2pOptions::loopback();
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let node_o = other.enable_p2p(options).await.expect("other");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_a.refused_connections() == 0 {
        assert!(Instant::now() < deadline, "the stranger was never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!node_a
        .connected_peers()
        .await
        .expect("peers")
        .contains(&node_o.peer_id()));
    assert_eq!(
        other.records("notes").get("private").await.expect("get"),
        None
    );
    assert!(other.version_vector().await.expect("vv").is_empty());
    // A never saw the stranger as a connected peer.
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(50), events_a.next()).await
    {
        assert_ne!(event, P2pEvent::PeerConnected(node_o.peer_id()));
    }
    node_a.shutdown();
    node_o.shutdown();
}

#[tokio::test]
async fn a_wrong_code_burns_the_code_on_both_sides() {
    let a = memory_store("a").await;
    a.records("notes")
        .put("private", json!({ "x": 1 }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let b = memory_store("b").await;
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    let pending = node_a.create_pairing_code().await.expect("code");
    let right = pending.code().to_string();
    // Same nameplate, one secret character changed.
    let mut wrong: Vec<char> = right.chars().collect();
    wrong[8] = if wrong[8] == 'A' { 'B' } else { 'A' };
    let wrong: String = wrong.into_iter().collect();
    let addr = dial_addr(&node_a).await;
    let (joined, hosted) = tokio::join!(node_b.pair(&wrong, Some(addr.clone())), pending.paired());
    assert_eq!(
        joined.expect_err("wrong code").code(),
        "PAIRING_CODE_INVALID"
    );
    assert_eq!(hosted.expect_err("burnt").code(), "PAIRING_CODE_INVALID");
    // The right code no longer works: one guess per code.
    let again = node_b.pair(&right, Some(addr)).await;
    assert_eq!(again.expect_err("burnt").code(), "PAIRING_CODE_INVALID");
    assert!(!a.is_trusted(&b.device_id()));
    assert_ne!(b.store_id(), a.store_id());
    // After the exchange the stranger's connection is closed and nothing
    // synced.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_a
        .connected_peers()
        .await
        .expect("peers")
        .contains(&node_b.peer_id())
    {
        assert!(Instant::now() < deadline, "the stranger stayed connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.records("notes").get("private").await.expect("get"), None);
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test]
async fn expired_and_reused_codes_are_refused() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    // Expired.
    let pending = node_a.create_pairing_code_valid_for(1).await.expect("code");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = memory_store("b").await;
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    let code = pending.code().to_string();
    let err = node_b
        .pair(&code, Some(addr.clone()))
        .await
        .expect_err("expired");
    assert!(
        matches!(err.code(), "PAIRING_CODE_EXPIRED" | "PAIRING_CODE_INVALID"),
        "{err}"
    );
    assert_eq!(
        pending.paired().await.expect_err("expired").code(),
        "PAIRING_CODE_EXPIRED"
    );
    // Used once by B, then presented again by C.
    let pending = node_a.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let (joined, _) = tokio::join!(node_b.pair(&code, Some(addr.clone())), pending.paired());
    joined.expect("B pairs");
    let c = memory_store("c").await;
    let node_c = c.enable_p2p(P2pOptions::loopback()).await.expect("c");
    let err = node_c.pair(&code, Some(addr)).await.expect_err("reused");
    assert_eq!(err.code(), "PAIRING_CODE_INVALID");
    assert!(!a.is_trusted(&c.device_id()));
    // A malformed code never leaves the device.
    assert_eq!(
        node_c.pair("ABCD", None).await.expect_err("short").code(),
        "PAIRING_CODE_INVALID"
    );
    for node in [node_a, node_b, node_c] {
        node.shutdown();
    }
}

#[tokio::test]
async fn a_store_with_writes_of_its_own_keeps_them_when_it_joins() {
    let a = encrypted_memory_store("a").await;
    a.records("notes")
        .put("theirs", json!({ "by": "a" }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    // B wrote before pairing, encrypted: records (one deleted, one
    // written twice), a key, events.
    let dir = tempfile::tempdir().expect("dir");
    let b = encrypted_file_store("b", &dir.path().join("b.db")).await;
    let notes = b.records("notes");
    notes.put("mine", json!({ "v": 1 })).await.expect("put");
    notes.put("mine", json!({ "v": 2 })).await.expect("put");
    notes.put("gone", json!({})).await.expect("put");
    notes.delete("gone").await.expect("delete");
    b.kv().set("theme", json!("dark")).await.expect("kv");
    b.events("log")
        .append(json!({ "e": 1 }))
        .await
        .expect("event");
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    let pending = node_a.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let addr = dial_addr(&node_a).await;
    let (joined, _) = tokio::join!(node_b.pair(&code, Some(addr)), pending.paired());
    joined.expect("joins, keeping its data");
    assert_eq!(b.store_id(), a.store_id());
    // Its own key is replaced by the joined store's.
    assert_eq!(
        b.crypto().export_key().expect("key").as_str(),
        a.crypto().export_key().expect("key").as_str()
    );
    // B keeps what it had, now as its commits in A's store; both sides
    // hold both.
    arrives(&a, "mine", &json!({ "v": 2 })).await;
    arrives(&b, "theirs", &json!({ "by": "a" })).await;
    assert_eq!(
        notes.get("mine").await.expect("get"),
        Some(json!({ "v": 2 }))
    );
    assert_eq!(notes.get("gone").await.expect("get"), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.kv().get("theme").await.expect("kv") != Some(json!("dark"))
        || a.events("log")
            .list(Default::default())
            .await
            .expect("events")
            .len()
            != 1
    {
        assert!(
            Instant::now() < deadline,
            "B's key and event never reached A"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node_a.shutdown();
    node_b.shutdown();
}

/// Everything a replica holds, comparable across replicas.
async fn state(
    store: &Store,
) -> (
    Vec<(String, Value)>,
    Vec<(String, Value)>,
    Vec<(String, Value)>,
) {
    let records = store
        .records("notes")
        .list(Default::default())
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.id, r.value))
        .collect();
    let kv = store
        .kv()
        .list(Default::default())
        .await
        .expect("kv")
        .into_iter()
        .map(|r| (r.id, r.value))
        .collect();
    let events = store
        .events("log")
        .list(Default::default())
        .await
        .expect("events")
        .into_iter()
        .map(|e| (e.id, e.value))
        .collect();
    (records, kv, events)
}

/// Random writes on three replicas while the network is cut into random
/// partitions (nodes stopped and restarted, links dialled or not); once
/// everyone is back online and linked in a ring, all replicas hold the
/// same state. Bounded: 4 rounds, 10 writes per replica per round, 20 s to
/// converge. The seed is printed (PERSIST_TEST_SEED replays a schedule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_after_random_partitions() {
    let (mut rng, seed) = crate::Rng::seeded();
    eprintln!("p2p partition test: seed {seed}");
    let first = Store::open(StoreOptions::new("r0").adapter(Adapter::Memory))
        .await
        .expect("r0");
    let mut stores = vec![first.clone()];
    let host = first.enable_p2p(P2pOptions::loopback()).await.expect("r0");
    for i in 1..3 {
        let (store, node) = new_member(&format!("r{i}"), &host).await;
        node.shutdown();
        stores.push(store);
    }
    host.shutdown();
    let mut nodes: Vec<Option<P2p>> = vec![None, None, None];
    let mut writes = 0;
    for round in 0..4 {
        // Each replica is online or not; online ones may link to others.
        for (i, store) in stores.iter().enumerate() {
            let online = rng.below(3) != 0;
            match (&nodes[i], online) {
                (Some(node), false) => {
                    node.shutdown();
                    nodes[i] = None;
                }
                (None, true) => {
                    nodes[i] = Some(
                        store
                            .enable_p2p(P2pOptions::loopback())
                            .await
                            .expect("node"),
                    )
                }
                _ => {}
            }
        }
        let online: Vec<usize> = (0..3).filter(|i| nodes[*i].is_some()).collect();
        for &i in &online {
            for &j in &online {
                if i < j && rng.below(2) == 0 {
                    let (Some(from), Some(to)) = (&nodes[i], &nodes[j]) else {
                        continue;
                    };
                    from.dial(dial_addr(to).await).await.expect("dial");
                }
            }
        }
        for (i, store) in stores.iter().enumerate() {
            for n in 0..10 {
                let key = format!("k{}", rng.below(6));
                match rng.below(4) {
                    0 => store
                        .records("notes")
                        .put(&key, json!({ "by": i, "round": round, "n": n }))
                        .await
                        .map(|_| ()),
                    1 => store.records("notes").delete(&key).await.map(|_| ()),
                    2 => store.kv().set(&key, json!([i, round, n])).await.map(|_| ()),
                    _ => store
                        .events("log")
                        .append(json!({ "by": i, "n": n }))
                        .await
                        .map(|_| ()),
                }
                .expect("write");
                writes += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80))).await;
    }
    // Heal: everyone online, linked in a ring.
    for (i, store) in stores.iter().enumerate() {
        if nodes[i].is_none() {
            nodes[i] = Some(
                store
                    .enable_p2p(P2pOptions::loopback())
                    .await
                    .expect("node"),
            );
        }
    }
    let live: Vec<P2p> = nodes.iter().flatten().cloned().collect();
    for i in 0..live.len() {
        let next = &live[(i + 1) % live.len()];
        live[i].dial(dial_addr(next).await).await.expect("dial");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut vectors = Vec::new();
        for store in &stores {
            vectors.push(store.version_vector().await.expect("vv"));
        }
        if vectors.iter().all(|v| *v == vectors[0]) && vectors[0].len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: replicas did not converge: {vectors:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = state(&stores[0]).await;
    for store in &stores[1..] {
        assert_eq!(
            state(store).await,
            expected,
            "seed {seed}: {} differs",
            store.name()
        );
    }
    eprintln!("p2p partition test: {writes} writes on 3 replicas converged");
    for node in live {
        node.shutdown();
    }
}

/// A sync cut after its first page resumes where it stopped: the next
/// connection pulls only what is still missing.
#[tokio::test]
async fn an_interrupted_initial_sync_resumes() {
    let a = Store::open(StoreOptions::new("a").adapter(Adapter::Memory))
        .await
        .expect("a");
    // 60 commits of 1,000 records (~15 MB): two 8 MiB pages.
    for chunk in 0..60 {
        a.records("notes")
            .put_many((0..1000).map(|i| {
                (
                    format!("c{chunk:02}-{i:04}"),
                    json!({ "pad": "x".repeat(200) }),
                )
            }))
            .await
            .expect("fill");
    }
    let b = memory_store("b").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    let mut options = P2pOptions::loopback();
    options.bootstrap_peers = vec![addr.clone()];
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    let mut events = node_b.events();
    pair_node(&node_b, &node_a).await;
    // Cut B off as soon as it applied something; the page says how much
    // is left (progress).
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let P2pEvent::Synced {
                applied, remaining, ..
            } = event
            {
                if applied > 0 {
                    return remaining;
                }
            }
        }
        0
    })
    .await
    .expect("a first page within 10 s");
    assert!(left > 0, "the first page reports what remains");
    node_b.shutdown();
    let partial: u64 = b
        .version_vector()
        .await
        .expect("vv")
        .iter()
        .map(|(_, s)| s)
        .sum();
    assert!(partial > 0, "nothing arrived before the cut");
    assert!(
        partial < 60,
        "the first page carried everything: no cut to resume from"
    );
    // Reconnect: the rest arrives, nothing twice.
    let node_b = b.enable_p2p(options).await.expect("b again");
    let target = a.version_vector().await.expect("vv");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.version_vector().await.expect("vv") != target {
        assert!(Instant::now() < deadline, "the sync did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = b
        .records("notes")
        .list(Default::default())
        .await
        .expect("list");
    assert_eq!(listed.len(), 60 * 1000);
    eprintln!("interrupted sync: {partial} of 60 commits before the cut, the rest after");
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test]
async fn an_invite_joins_an_encrypted_store_once() {
    let dir = tempfile::tempdir().expect("dir");
    let a = encrypted_file_store("a", &dir.path().join("a.db")).await;
    a.records("notes")
        .put("secret", json!({ "pin": 4321 }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    dial_addr(&node_a).await;
    let pending = node_a.create_invite(60_000).await.expect("invite");
    let text = pending.code().to_string();
    assert!(text.starts_with("persist-invite-v1-"), "{text}");
    // A damaged invite is refused before anything is sent.
    let b = Store::open(StoreOptions::new("b").path(dir.path().join("b.db")))
        .await
        .expect("b");
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    assert_eq!(
        node_b
            .accept_invite(&text[..text.len() - 3])
            .await
            .expect_err("damaged")
            .code(),
        "PAIRING_CODE_INVALID"
    );
    let (joined, hosted) = tokio::join!(node_b.accept_invite(&text), pending.paired());
    assert_eq!(joined.expect("joined"), node_a.peer_id());
    assert_eq!(hosted.expect("hosted"), node_b.peer_id());
    assert_eq!(b.store_id(), a.store_id());
    assert!(b.crypto().is_encrypted());
    arrives(&b, "secret", &json!({ "pin": 4321 })).await;
    // Single use.
    let c = memory_store("c").await;
    let node_c = c.enable_p2p(P2pOptions::loopback()).await.expect("c");
    assert_eq!(
        node_c.accept_invite(&text).await.expect_err("used").code(),
        "PAIRING_CODE_INVALID"
    );
    assert!(!a.is_trusted(&c.device_id()));
    for node in [node_a, node_b, node_c] {
        node.shutdown();
    }
}

/// Five devices, paired through one: records, events and keys written on
/// each reach all (the first relays for the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_devices_replicate_records_events_and_keys() {
    let first = memory_store("d0").await;
    let hub = first.enable_p2p(P2pOptions::loopback()).await.expect("d0");
    let mut stores = vec![first];
    let mut nodes = vec![hub.clone()];
    for i in 1..5 {
        let (store, node) = new_member(&format!("d{i}"), &hub).await;
        stores.push(store);
        nodes.push(node);
    }
    for (i, store) in stores.iter().enumerate() {
        store
            .records("notes")
            .put(&format!("from-{i}"), json!({ "device": i }))
            .await
            .expect("put");
        store
            .events("log")
            .append(json!({ "device": i }))
            .await
            .expect("append");
        store
            .kv()
            .set(&format!("k{i}"), json!(i))
            .await
            .expect("kv");
    }
    for store in &stores {
        for i in 0..5 {
            arrives(store, &format!("from-{i}"), &json!({ "device": i })).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let expected = loop {
        let expected = state(&stores[0]).await;
        let mut same = expected.2.len() == 5 && expected.1.len() == 5;
        for store in &stores[1..] {
            same &= state(store).await == expected;
        }
        if same {
            break expected;
        }
        assert!(Instant::now() < deadline, "five devices did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(expected.0.len(), 5);
    for store in &stores {
        assert_eq!(store.members().current.len(), 5, "{}", store.name());
    }
    for node in nodes {
        node.shutdown();
    }
}
