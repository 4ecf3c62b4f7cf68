//! Initial sync of N records between two native stores over loopback TCP
//! (SQLite on both sides), against the same commits ingested locally by a
//! fresh replica (signature verification + insert, no network), in one run;
//! then the latency and message bytes of one changed record among N.
//!
//! Run: `cargo bench --bench sync` (optionally `-- --quick`; `-- --goodput`
//! runs only the goodput comparison).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use persist::keys::MemoryKeyStore;
use persist::net::live::LiveMessage;
use persist::net::{Multiaddr, P2p, P2pOptions, SyncRequest};
use persist::platform::native::SqliteStore;
use persist::storage::StorageBackend;
use persist::{DeviceIdentity, Store, StoreOptions};
use serde_json::json;

/// A new SQLite store, paired into the store of `host` (then its node
/// stops): a second device of that store, with nothing yet.
async fn replica(path: &std::path::Path, host: &P2p) -> Store {
    let backend = Arc::new(SqliteStore::open(path).expect("sqlite"));
    let store =
        Store::open(StoreOptions::new("replica").backend(backend as Arc<dyn StorageBackend>))
            .await
            .expect("replica");
    let node = store
        .enable_p2p(P2pOptions::loopback())
        .await
        .expect("node");
    let pending = host.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let (joined, hosted) = tokio::join!(
        node.pair(&code, Some(dial_addr(host).await)),
        pending.paired()
    );
    joined.expect("paired");
    hosted.expect("paired");
    node.shutdown();
    store
}

async fn dial_addr(node: &P2p) -> Multiaddr {
    loop {
        if let Some(addr) = node.listen_addrs().await.expect("addrs").into_iter().next() {
            return format!("{addr}/p2p/{}", node.peer_id())
                .parse()
                .expect("addr");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 20_000 } else { 100_000 };
    let dir = tempfile::tempdir().expect("dir");
    let a = Store::open(StoreOptions::new("a").path(dir.path().join("a.db")))
        .await
        .expect("a");
    let counter_a = persist::net::ByteCounter::default();
    let counter_b = persist::net::ByteCounter::default();
    let node_a = a
        .enable_p2p(P2pOptions {
            count_bytes: Some(counter_a.clone()),
            ..P2pOptions::loopback()
        })
        .await
        .expect("a");
    // Two more devices of the store, paired before A holds anything.
    let local = replica(&dir.path().join("local.db"), &node_a).await;
    let b = replica(&dir.path().join("b.db"), &node_a).await;
    let records = a.records("notes");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        records
            .put_many(chunk.iter().map(|i| {
                (
                    format!("k{i:09}"),
                    json!({ "body": "x".repeat(230), "n": i }),
                )
            }))
            .await
            .expect("fill");
    }
    if std::env::args().any(|a| a == "--goodput") {
        // Only the goodput comparison (for profiling it).
        goodput(&a).await;
        return;
    }
    let commits = a.commits_missing_from(&[], usize::MAX).await.expect("log");

    // Baseline: verify + insert of the same commits, locally.
    let start = Instant::now();
    let report = local.ingest(commits.clone()).await.expect("ingest");
    let local_rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(report.applied, commits.len());
    local.close().await.expect("close");

    // Over the network.
    let target = a.version_vector().await.expect("vv");
    let mut options = P2pOptions {
        count_bytes: Some(counter_b.clone()),
        ..P2pOptions::loopback()
    };
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let start = Instant::now();
    let node_b = b.enable_p2p(options).await.expect("b");
    while b.version_vector().await.expect("vv") != target {
        assert!(start.elapsed() < Duration::from_secs(600), "sync stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let synced = start.elapsed();
    let sync_rate = n as f64 / synced.as_secs_f64();

    // One record changed among n: time until the other side has it, the
    // push message it took, and every byte both TCP connections carried
    // meanwhile (Noise, Yamux, multistream-select included), after the
    // connection went quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Twice: the first change opens the live stream (Yamux, multistream-select
    // once per connection), the second uses it as every later one does.
    let mut rounds = Vec::new();
    for (round, id) in ["k000000007", "k000000008"].into_iter().enumerate() {
        let before = counter_a.read() + counter_a.written();
        let start = Instant::now();
        records
            .put(id, &json!({ "changed": round }))
            .await
            .expect("put");
        while b.records("notes").get(id).await.expect("get") != Some(json!({ "changed": round })) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "change never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        rounds.push((took, counter_a.read() + counter_a.written() - before));
    }
    let (one_change, wire_bytes) = rounds[1];
    let (first_change, first_bytes) = rounds[0];
    let last = a
        .commits_missing_from(&[], usize::MAX)
        .await
        .expect("log")
        .pop()
        .expect("a commit");
    let push = LiveMessage::Commits {
        commits: vec![last.clone()],
        members: None,
    };
    let push_bytes = 4 + postcard::to_stdvec(&push).expect("encode").len();

    println!("| what | Persist | baseline | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    let ratio = sync_rate / local_rate;
    println!(
        "| initial sync of {n} records over loopback TCP | {sync_rate:.0} records/s ({:.2} s) | {local_rate:.0} records/s (local verify + insert) | {ratio:.2}x | >= 0.7x ({}) |",
        synced.as_secs_f64(),
        if ratio >= 0.7 { "met" } else { "MISSED" }
    );
    println!(
        "\none record changed among {n}: on the other store {:.1} ms after the write returned; live message {push_bytes} bytes for a commit body of {} bytes (+{} bytes: signature, lengths, variant)",
        one_change.as_secs_f64() * 1000.0,
        last.body.len(),
        push_bytes - last.body.len()
    );
    println!(
        "the first change on a connection opens its live stream: {first_bytes} bytes on the wire, {:.1} ms",
        first_change.as_secs_f64() * 1000.0
    );
    let beyond = wire_bytes.saturating_sub(last.body.len() as u64);
    println!(
        "on the wire, both directions, all framing: {wire_bytes} bytes = the {}-byte commit + {beyond} bytes (target <= 300 beyond the change, peers that met: {}), one message on the open live stream, no round trip",
        last.body.len(),
        if beyond <= 300 { "met" } else { "MISSED" }
    );

    // The same with no kept state: B's node restarts (a new connection:
    // Noise handshake, identify, ping) and one record changed meanwhile.
    node_b.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    records
        .put("k000000009", &json!({ "changed": "while apart" }))
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counter_b2 = persist::net::ByteCounter::default();
    let mut options = P2pOptions {
        count_bytes: Some(counter_b2.clone()),
        ..P2pOptions::loopback()
    };
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let start = Instant::now();
    let node_b = b.enable_p2p(options).await.expect("b again");
    while b.records("notes").get("k000000009").await.expect("get")
        != Some(json!({ "changed": "while apart" }))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "change never arrived"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let reconnect = start.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh_bytes = counter_b2.read() + counter_b2.written();
    let have = b.version_vector().await.expect("vv");
    let pull = SyncRequest::Pull {
        store: a.store_id(),
        tips: vec![[0; 32]; have.len()],
        have,
        limit: persist::net::PULL_LIMIT,
        members: persist::membership::MembersHave::default(),
    };
    let pull_bytes = 4 + postcard::to_stdvec(&pull).expect("encode").len();
    println!(
        "
reconnected, one record changed meanwhile: on the other store {:.1} ms after dialling; {fresh_bytes} bytes on the wire both ways for a new connection (Noise handshake, identify, ping included), of which the sync exchange is two pulls of {pull_bytes} bytes (version vector of {} author(s)) and one page with the commit; 1 round trip of sync after the handshake",
        reconnect.as_secs_f64() * 1000.0,
        pull_bytes_authors(&pull),
    );
    node_a.shutdown();
    node_b.shutdown();

    // Round trips from dial to the first synced change: both nodes again,
    // their TCP connections delayed 25 ms each way (RTT 50 ms), one record
    // changed while B was away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one_way = Duration::from_millis(25);
    let delayed = || P2pOptions {
        simulated_latency: Some(one_way),
        ..P2pOptions::loopback()
    };
    let node_a = a.enable_p2p(delayed()).await.expect("a delayed");
    records
        .put("k000000010", &json!({ "changed": "far away" }))
        .await
        .expect("put");
    let mut options = delayed();
    options.bootstrap_peers = vec![dial_addr(&node_a).await];
    let start = Instant::now();
    let node_b = b.enable_p2p(options).await.expect("b delayed");
    while b.records("notes").get("k000000010").await.expect("get")
        != Some(json!({ "changed": "far away" }))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "change never arrived"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    // The delay applies to bytes on established TCP connections: TCP's own
    // handshake (one more round trip) is not delayed, so it is added.
    let rtts = took.as_secs_f64() / (2.0 * one_way.as_secs_f64());
    let total = rtts + 1.0;
    println!(
        "dial to first synced change over TCP with a 50 ms round trip: {:.0} ms = {rtts:.1} round trips after the TCP handshake, {total:.1} with it (target <= 3: {})",
        took.as_secs_f64() * 1000.0,
        if total <= 3.15 { "met" } else { "MISSED" }
    );
    node_a.shutdown();
    node_b.shutdown();

    goodput(&a).await;
}

/// Goodput: A's whole history pulled page by page through the sync
/// protocol by a member that stores nothing, against the same bytes written
/// on a bare libp2p stream; same transport (TCP, Noise, Yamux).
async fn goodput(a: &Store) {
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a again");
    let probe_identity = DeviceIdentity::from_secret(&[77; 32]);
    let probe = Store::open(
        StoreOptions::new("probe")
            .adapter(persist::Adapter::Memory)
            .key_store(Arc::new(MemoryKeyStore::from_identity(&probe_identity))),
    )
    .await
    .expect("probe");
    let probe_node = probe
        .enable_p2p(P2pOptions::loopback())
        .await
        .expect("probe");
    let pending = node_a.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let (joined, _) = tokio::join!(
        probe_node.pair(&code, Some(dial_addr(&node_a).await)),
        pending.paired()
    );
    joined.expect("probe paired");
    probe_node.shutdown();
    let (sync_bytes, sync_time) = pull_everything(&probe_identity, &node_a, a.store_id()).await;
    let (bare_bytes, bare_time) = bare_stream(sync_bytes).await;
    let sync_rate = sync_bytes as f64 / sync_time.as_secs_f64() / 1e6;
    let bare_rate = bare_bytes as f64 / bare_time.as_secs_f64() / 1e6;
    let ratio = sync_rate / bare_rate;
    println!(
        "\n| goodput over loopback TCP: {:.1} MB of commits pulled in pages | {sync_rate:.0} MB/s | bare libp2p stream, same bytes: {bare_rate:.0} MB/s | {ratio:.2}x | >= 0.8x ({}) |",
        sync_bytes as f64 / 1e6,
        if ratio >= 0.8 { "met" } else { "MISSED" }
    );
    node_a.shutdown();
}

/// A raw TCP swarm (Noise, Yamux, lazy protocol selection as a node's).
fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    identity: &DeviceIdentity,
    behaviour: B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(persist::net::keypair(identity).expect("keypair"))
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build()
}

/// Pulls every commit of `node`'s store, page after page, storing nothing:
/// bytes of commits received and the time it took.
async fn pull_everything(
    identity: &DeviceIdentity,
    node: &P2p,
    store: persist::StoreId,
) -> (usize, Duration) {
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use persist::net::{SyncCodec, SyncResponse, SYNC_PROTOCOL};
    let mut client = raw_swarm(
        identity,
        request_response::Behaviour::<SyncCodec>::new(
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(120)),
        ),
    );
    client.dial(dial_addr(node).await).expect("dial");
    while !matches!(
        client.select_next_some().await,
        SwarmEvent::ConnectionEstablished { .. }
    ) {}
    let mut have: std::collections::BTreeMap<persist::DeviceId, u64> = Default::default();
    let mut bytes = 0;
    let start = Instant::now();
    loop {
        let request = SyncRequest::Pull {
            store,
            have: have.iter().map(|(d, s)| (*d, *s)).collect(),
            tips: vec![[0; 32]; have.len()],
            limit: persist::net::PULL_LIMIT,
            members: persist::membership::MembersHave::default(),
        };
        client
            .behaviour_mut()
            .send_request(&node.peer_id(), request);
        let (commits, more) = loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => match response {
                    SyncResponse::Commits { commits, more, .. } => break (commits, more),
                    other => panic!("unexpected answer {other:?}"),
                },
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("pull failed: {error}"),
                _ => {}
            }
        };
        for commit in &commits {
            bytes += commit.body.len() + commit.signature.len();
            if let Some((author, seq)) = commit.author_seq() {
                let entry = have.entry(author).or_insert(0);
                *entry = (*entry).max(seq);
            }
        }
        if !more {
            return (bytes, start.elapsed());
        }
    }
}

/// `total` bytes written on one bare libp2p stream between two raw swarms
/// (64 KiB writes), timed until the reader has them all.
async fn bare_stream(total: usize) -> (usize, Duration) {
    use futures::{AsyncReadExt, AsyncWriteExt};
    const BARE: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/bench/bare/1");
    let reader_id = DeviceIdentity::from_secret(&[88; 32]);
    let writer_id = DeviceIdentity::from_secret(&[99; 32]);
    let mut reader = raw_swarm(&reader_id, libp2p_stream::Behaviour::new());
    let mut writer = raw_swarm(&writer_id, libp2p_stream::Behaviour::new());
    let mut incoming = reader
        .behaviour()
        .new_control()
        .accept(BARE)
        .expect("accept");
    reader
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            reader.select_next_some().await
        {
            break address;
        }
    };
    let reader_peer = *reader.local_peer_id();
    writer.dial(addr).expect("dial");
    let mut control = writer.behaviour().new_control();
    tokio::spawn(async move {
        loop {
            reader.select_next_some().await;
        }
    });
    while !matches!(
        writer.select_next_some().await,
        libp2p::swarm::SwarmEvent::ConnectionEstablished { .. }
    ) {}
    tokio::spawn(async move {
        loop {
            writer.select_next_some().await;
        }
    });
    let received = tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.expect("a stream");
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                return got;
            }
            got += n;
        }
    });
    let start = Instant::now();
    let mut stream = control.open_stream(reader_peer, BARE).await.expect("open");
    let chunk = vec![0xA5u8; 64 << 10];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        stream.write_all(&chunk[..n]).await.expect("write");
        sent += n;
    }
    stream.close().await.expect("close");
    let got = received.await.expect("reader");
    (got, start.elapsed())
}

fn pull_bytes_authors(pull: &SyncRequest) -> usize {
    match pull {
        SyncRequest::Pull { have, .. } => have.len(),
        SyncRequest::Push { .. } | SyncRequest::Hello { .. } => 0,
    }
}
