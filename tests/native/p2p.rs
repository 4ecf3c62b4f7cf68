//! P2P replication on loopback TCP (first step of the P2P issue): stores of
//! one store id connect through a bootstrap address and replicate commits
//! both ways, live, through a relay, plain and encrypted. mDNS stays off
//! (it would multicast on the host's interfaces).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use persist::net::{Multiaddr, P2p, P2pEvent, P2pOptions};
use persist::storage::{MemoryStore, StorageBackend, WriteBatch};
use persist::{Adapter, Store, StoreId, StoreOptions};
use serde_json::{json, Value};

fn loopback() -> P2pOptions {
    P2pOptions {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap_peers: Vec::new(),
        mdns: false,
        dht: false,
        count_bytes: None,
    }
}

/// A memory store that already carries `id` (a second device of that store).
async fn replica_of(id: StoreId, name: &str) -> Store {
    let backend = Arc::new(MemoryStore::new());
    backend
        .write(WriteBatch {
            store_id: Some(id),
            ..WriteBatch::default()
        })
        .await
        .expect("store id");
    Store::open(StoreOptions::new(name).backend(backend as Arc<dyn StorageBackend>))
        .await
        .expect("replica")
}

/// The node's first listen address with its peer id, to dial.
async fn dial_addr(node: &P2p) -> Multiaddr {
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
async fn arrives(store: &Store, id: &str, value: &Value) {
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
    let b = replica_of(a.store_id(), "b").await;

    let node_a = a.enable_p2p(loopback()).await.expect("p2p a");
    let mut events_a = node_a.events();
    let mut options = loopback();
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let node_b = b.enable_p2p(options).await.expect("p2p b");
    assert_ne!(node_a.peer_id(), node_b.peer_id());
    // PeerIds are the devices' Ed25519 keys: one identity for commits and peers.
    assert_eq!(
        node_a.peer_id(),
        persist::net::peer_id_of(&a.device_id()).expect("peer id")
    );

    // A hears B connect; B pulls A's history.
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events_a.next().await {
            if event == P2pEvent::PeerConnected(node_b.peer_id()) {
                return true;
            }
        }
        false
    })
    .await
    .expect("B connects within 10 s");
    assert!(connected);
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
}

#[tokio::test]
async fn writes_reach_a_third_store_through_a_relaying_peer() {
    let a = Store::open(StoreOptions::new("a").adapter(Adapter::Memory))
        .await
        .expect("a");
    let b = replica_of(a.store_id(), "b").await;
    let c = replica_of(a.store_id(), "c").await;
    let node_a = a.enable_p2p(loopback()).await.expect("a");
    let mut to_a = loopback();
    to_a.bootstrap_peers = vec![dial_addr(&node_a).await];
    let node_b = b.enable_p2p(to_a).await.expect("b");
    let mut to_b = loopback();
    to_b.bootstrap_peers = vec![dial_addr(&node_b).await];
    let node_c = c.enable_p2p(to_b).await.expect("c");
    // C is connected to B only.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_c.connected_peers().await.expect("peers").is_empty() {
        assert!(Instant::now() < deadline, "C never connected");
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
    let a = Store::open(
        StoreOptions::new("a")
            .path(dir.path().join("a.db"))
            .encrypt(true),
    )
    .await
    .expect("a");
    a.records("notes")
        .put("secret", json!({ "pin": 1234 }))
        .await
        .expect("put");
    let key = a.crypto().export_key().expect("key");
    let b = Store::open(
        StoreOptions::new("b")
            .path(dir.path().join("b.db"))
            .key(key.as_str()),
    )
    .await
    .expect("b");
    let node_a = a.enable_p2p(loopback()).await.expect("a");
    let mut options = loopback();
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let node_b = b.enable_p2p(options).await.expect("b");
    arrives(&b, "secret", &json!({ "pin": 1234 })).await;
    b.records("notes")
        .put("reply", json!({ "ok": true }))
        .await
        .expect("put");
    arrives(&a, "reply", &json!({ "ok": true })).await;
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test]
async fn stores_sync_over_quic() {
    let quic = || P2pOptions {
        listen_addrs: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")],
        ..loopback()
    };
    let a = Store::open(StoreOptions::new("a").adapter(Adapter::Memory))
        .await
        .expect("a");
    a.records("notes")
        .put("over-quic", json!({ "udp": true }))
        .await
        .expect("put");
    let b = replica_of(a.store_id(), "b").await;
    let node_a = a.enable_p2p(quic()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    assert!(addr.to_string().contains("/quic-v1/"), "{addr}");
    let mut options = quic();
    options.bootstrap_peers = vec![addr];
    let node_b = b.enable_p2p(options).await.expect("b");
    arrives(&b, "over-quic", &json!({ "udp": true })).await;
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test]
async fn a_peer_of_another_store_gets_nothing() {
    let a = Store::open(StoreOptions::new("a").adapter(Adapter::Memory))
        .await
        .expect("a");
    a.records("notes")
        .put("private", json!({ "x": 1 }))
        .await
        .expect("put");
    let other = Store::open(StoreOptions::new("other").adapter(Adapter::Memory))
        .await
        .expect("other");
    let node_a = a.enable_p2p(loopback()).await.expect("a");
    let mut options = loopback();
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let node_o = other.enable_p2p(options).await.expect("other");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_o.connected_peers().await.expect("peers").is_empty() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both ask; each refuses the other store's requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        other.records("notes").get("private").await.expect("get"),
        None
    );
    assert!(other.version_vector().await.expect("vv").is_empty());
    node_a.shutdown();
    node_o.shutdown();
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
    for i in 1..3 {
        stores.push(replica_of(first.store_id(), &format!("r{i}")).await);
    }
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
                (None, true) => nodes[i] = Some(store.enable_p2p(loopback()).await.expect("node")),
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
            nodes[i] = Some(store.enable_p2p(loopback()).await.expect("node"));
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
    let b = replica_of(a.store_id(), "b").await;
    let node_a = a.enable_p2p(loopback()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    let mut options = loopback();
    options.bootstrap_peers = vec![addr.clone()];
    let node_b = b.enable_p2p(options.clone()).await.expect("b");
    let mut events = node_b.events();
    // Cut B off as soon as it applied something.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if matches!(event, P2pEvent::Synced { applied, .. } if applied > 0) {
                break;
            }
        }
    })
    .await
    .expect("a first page within 10 s");
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
