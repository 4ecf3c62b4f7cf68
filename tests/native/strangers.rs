//! What a stranger or a member gone bad can make a device do with raw
//! libp2p clients: a stranger admitted for a pairing window may open the
//! pairing protocol only, and only small messages; a member that trickles
//! a live message or opens live streams without end is cut off; the device
//! keeps pairing and syncing meanwhile; a joiner's code goes only to a
//! device that offers one, once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{PeerId, Swarm};
use persist::net::live::LIVE_PROTOCOL;
use persist::net::pairing::JoinerSession;
use persist::net::SyncResponse;
use persist::net::{
    P2p, P2pOptions, PairCodec, PairRequest, PairResponse, PairingCode, SyncCodec, SyncRequest,
    MAX_SMALL_MESSAGE_BYTES, PAIR_PROTOCOL, SYNC_PROTOCOL,
};
use persist::{Commit, DeviceIdentity, SignedCommit};
use serde_json::json;

use crate::p2p::{arrives, dial_addr, memory_store, new_member, pair_into, wrong_code};
use crate::p2p_trust::{
    ask, ask_at, ask_within, commit_body, empty_pull, member_with, raw_client, raw_swarm, Announce,
};
use crate::public_node::peak_rss_kib;

/// A client that speaks every protocol of a device, as a stranger would.
#[derive(NetworkBehaviour)]
struct Raw {
    sync: request_response::Behaviour<SyncCodec>,
    pair: request_response::Behaviour<Announce>,
    streams: libp2p_stream::Behaviour,
}

fn raw(identity: &DeviceIdentity) -> Swarm<Raw> {
    raw_swarm(
        identity,
        Raw {
            sync: request_response::Behaviour::new(
                [(SYNC_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            ),
            pair: request_response::Behaviour::new(
                [(PAIR_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            ),
            streams: libp2p_stream::Behaviour::new(),
        },
    )
}

/// Drives `client` until `node` is connected.
async fn connect(client: &mut Swarm<Raw>, node: &P2p) {
    client.dial(dial_addr(node).await).expect("dial");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(
            client.select_next_some().await,
            SwarmEvent::ConnectionEstablished { .. }
        ) {}
    })
    .await
    .expect("connected in 10 s");
}

/// What became of a request: `Ok` answered, `Err` the failure.
async fn outcome<E: std::fmt::Debug>(
    client: &mut Swarm<Raw>,
    mut pick: impl FnMut(RawEvent) -> Option<Result<(), E>>,
) -> Result<(), E> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::Behaviour(event) = client.select_next_some().await {
                if let Some(result) = pick(event) {
                    return result;
                }
            }
        }
    })
    .await
    .expect("an outcome in 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_in_a_pairing_window_may_only_pair_and_only_briefly() {
    let a = memory_store("a").await;
    a.records("notes")
        .put("private", json!({ "secret": true }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let pending = node_a.create_pairing_code().await.expect("code");
    let stranger = DeviceIdentity::from_secret(&[66; 32]);
    let mut client = raw(&stranger);
    connect(&mut client, &node_a).await;
    let peer = node_a.peer_id();

    // Sync: refused at protocol negotiation (the stream never reaches the
    // sync protocol's reader).
    let id = client
        .behaviour_mut()
        .sync
        .send_request(&peer, empty_pull(a.store_id()));
    let failure = outcome(&mut client, |event| match event {
        RawEvent::Sync(request_response::Event::OutboundFailure {
            request_id, error, ..
        }) if request_id == id => Some(Err(error.to_string())),
        RawEvent::Sync(request_response::Event::Message { .. }) => Some(Ok(())),
        _ => None,
    })
    .await
    .expect_err("a stranger's pull is refused");
    assert!(failure.contains("protocol"), "{failure}");

    // Live: the same.
    let mut control = client.behaviour().streams.new_control();
    let driver = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let opened = tokio::time::timeout(
        Duration::from_secs(10),
        control.open_stream(peer, LIVE_PROTOCOL),
    )
    .await
    .expect("an answer in 10 s");
    assert!(
        matches!(
            opened,
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))
        ),
        "a stranger opened a live stream: {opened:?}"
    );
    driver.abort();
    let _ = driver.await;

    // Pairing: open while the code is offered, but a move larger than a
    // few KiB is refused on its length.
    let mut client = raw(&stranger);
    connect(&mut client, &node_a).await;
    let id = client
        .behaviour_mut()
        .pair
        .send_request(&peer, (MAX_SMALL_MESSAGE_BYTES + 1) as u32);
    let refused = outcome(&mut client, |event| match event {
        RawEvent::Pair(request_response::Event::OutboundFailure {
            request_id, error, ..
        }) if request_id == id => Some(Err(error.to_string())),
        RawEvent::Pair(request_response::Event::Message { .. }) => Some(Ok(())),
        _ => None,
    })
    .await;
    assert!(refused.is_err(), "an oversize pairing move was answered");

    // The code was not burnt by bytes that were never a move: a device
    // pairs with it, and the window closes.
    let b = memory_store("b").await;
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    let code = pending.code().to_string();
    let (joined, hosted) = tokio::join!(
        node_b.pair(&code, Some(dial_addr(&node_a).await)),
        pending.paired()
    );
    assert_eq!(joined.expect("joined"), peer);
    assert_eq!(hosted.expect("hosted"), node_b.peer_id());
    arrives(&b, "private", &json!({ "secret": true })).await;

    // With no window open the stranger is not even connected.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.select_next_some().await {
                SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == peer => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stranger's connection stayed open");
    let mut late = raw(&stranger);
    late.dial(dial_addr(&node_a).await).expect("dial");
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match late.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {}
                SwarmEvent::ConnectionClosed { .. }
                | SwarmEvent::OutgoingConnectionError { .. } => return true,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(refused, Ok(true));
    node_a.shutdown();
    node_b.shutdown();
}

/// True when the other side closed or reset `stream` within `wait`.
async fn closed_within(stream: &mut libp2p::Stream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the node wrote on a live stream it only reads"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_trickles_or_hoards_live_streams_is_cut_off() {
    let a = memory_store("a").await;
    let options = P2pOptions {
        message_timeout: Duration::from_secs(1),
        ..P2pOptions::loopback()
    };
    let node_a = a.enable_p2p(options).await.expect("a");
    let identity = member_with(44, &node_a).await;
    let mut client = raw(&identity);
    connect(&mut client, &node_a).await;
    let control = client.behaviour().streams.new_control();
    let driver = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let peer: PeerId = node_a.peer_id();
    let open = || {
        let mut control = control.clone();
        async move {
            control
                .open_stream(peer, LIVE_PROTOCOL)
                .await
                .expect("a member opens live streams")
        }
    };

    // Idle streams are fine (a live stream waits for commits), but only
    // two at once: the third is closed at once.
    // (One at a time: libp2p-stream hands the node one inbound stream at
    // a time and drops one that arrives before the previous was taken.)
    let mut first = open().await;
    assert!(!closed_within(&mut first, Duration::from_millis(300)).await);
    let mut second = open().await;
    assert!(!closed_within(&mut second, Duration::from_millis(300)).await);
    let mut third = open().await;
    assert!(closed_within(&mut third, Duration::from_secs(5)).await);
    assert!(!closed_within(&mut first, Duration::from_millis(300)).await);
    assert!(!closed_within(&mut second, Duration::from_millis(300)).await);

    // A message begun and never finished: cut after the timeout.
    first.write_all(&[0, 0, 1]).await.expect("write");
    first.flush().await.expect("flush");
    assert!(!closed_within(&mut first, Duration::from_millis(300)).await);
    assert!(closed_within(&mut first, Duration::from_secs(5)).await);
    // Its slot is free again.
    let mut fourth = open().await;
    assert!(!closed_within(&mut fourth, Duration::from_millis(300)).await);
    driver.abort();

    // Meanwhile the node pairs and syncs.
    let (b, node_b) = new_member("b", &node_a).await;
    a.records("notes")
        .put("alive", json!({ "ok": true }))
        .await
        .expect("put");
    arrives(&b, "alive", &json!({ "ok": true })).await;
    let c = memory_store("c").await;
    let node_c = pair_into(&c, &node_a, P2pOptions::loopback()).await;
    arrives(&c, "alive", &json!({ "ok": true })).await;
    for node in [node_a, node_b, node_c] {
        node.shutdown();
    }
}

/// A raw client that answers the pairing protocol (it would take a
/// joiner's first move) but does not run identify, so it never says it
/// offers a code.
fn interceptor(identity: &DeviceIdentity) -> Swarm<request_response::Behaviour<PairCodec>> {
    raw_swarm(
        identity,
        request_response::Behaviour::new(
            [(PAIR_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_sends_its_code_only_to_a_device_that_offers_one_and_tries_it_once() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let b = memory_store("b").await;
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");

    // An interceptor B is connected to: it listens, B dials it while
    // joining (the gate admits anyone then).
    let mut evil = interceptor(&DeviceIdentity::from_secret(&[67; 32]));
    evil.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let evil_addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = evil.select_next_some().await {
            break address;
        }
    };
    let pending = node_a.create_pairing_code().await.expect("code");
    let code = pending.code().to_string();
    let joining = {
        let node_b = node_b.clone();
        let code = code.clone();
        tokio::spawn(async move { node_b.pair(&code, None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    node_b.dial(evil_addr).await.expect("dial the interceptor");
    // For two seconds the interceptor, connected, gets no first move.
    let intercepted = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { .. },
                ..
            }) = evil.select_next_some().await
            {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        !intercepted,
        "the joiner sent its code to a device that offers none"
    );

    // The device that offers the code, once connected, gets it.
    node_b
        .dial(dial_addr(&node_a).await)
        .await
        .expect("dial the host");
    let joined = tokio::time::timeout(Duration::from_secs(10), joining)
        .await
        .expect("paired in 10 s")
        .expect("task");
    assert_eq!(joined.expect("joined"), node_a.peer_id());
    assert_eq!(pending.paired().await.expect("hosted"), node_b.peer_id());

    // A code is tried once by a joiner: the same text again is refused at
    // once, before anything is sent.
    let c = memory_store("c").await;
    let node_c = c.enable_p2p(P2pOptions::loopback()).await.expect("c");
    let pending = node_a.create_pairing_code().await.expect("code");
    let wrong = wrong_code(pending.code());
    let addr = dial_addr(&node_a).await;
    let first = node_c.pair(&wrong, Some(addr.clone())).await;
    assert_eq!(
        first.expect_err("wrong code").code(),
        "PAIRING_CODE_INVALID"
    );
    let again = tokio::time::timeout(Duration::from_secs(1), node_c.pair(&wrong, Some(addr)))
        .await
        .expect("refused at once");
    let error = again.expect_err("tried already");
    assert_eq!(error.code(), "PAIRING_CODE_INVALID");
    assert!(error.to_string().contains("already tried"), "{error}");
    for node in [node_a, node_b, node_c] {
        node.shutdown();
    }
}

/// How long the node's loop takes to answer a command, sampled every
/// 20 ms until `stop` is set: the slowest answer.
async fn slowest_answer(node: P2p, stop: Arc<AtomicBool>) -> Duration {
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        node.connected_peers().await.expect("the node answers");
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest
}

/// The loop stall allowed while a member pushes as fast as it can.
const MAX_STALL: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_commits_does_not_stall_the_node() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let identity = member_with(45, &node_a).await;
    let store = a.store_id();
    // An honest member, online throughout.
    let b = memory_store("b").await;
    let node_b = pair_into(&b, &node_a, P2pOptions::loopback()).await;

    // 500,000 tiny commits in one push (about 40 MB, within the frame
    // limit): refused on the list's declared length in its first bytes,
    // before the rest is read (the stream is dropped).
    let junk = SignedCommit {
        body: vec![3; 16],
        signature: [0; 64],
    };
    let flood = SyncRequest::Push {
        store,
        commits: vec![junk; 500_000],
        members: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(slowest_answer(node_a.clone(), stop.clone()));
    // The attacker runs on a thread and runtime of its own, as another
    // process would: the node's runtime is measured, not the attacker's.
    let attacker = {
        let node = node_a.clone();
        // The same member (its identity from the same seed).
        let identity = DeviceIdentity::from_secret(&[45; 32]);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut client = raw_client(&identity);
                let asked = Instant::now();
                let outcome = ask_within(&mut client, &node, flood, Duration::from_secs(60)).await;
                (outcome, asked.elapsed())
            })
        })
    };
    // The honest member writes while the attacker pushes.
    b.records("notes")
        .put("during-the-flood", json!({ "by": "b" }))
        .await
        .expect("put");
    let (outcome, refused_in) = tokio::task::spawn_blocking(move || attacker.join())
        .await
        .expect("join")
        .expect("attacker");
    match outcome {
        Err(failure) => assert!(!failure.contains("no answer"), "{failure}"),
        other => panic!("a push of 500,000 commits was not refused: {other:?}"),
    }

    // 20 pushes of 1,000 valid commits each (a member may write that
    // much): verified off the loop, the node keeps answering.
    let mut prev = [0u8; 32];
    let mut pushes = Vec::new();
    for page in 0..20u64 {
        let mut commits = Vec::new();
        for i in 0..1_000u64 {
            let seq = page * 1_000 + i + 1;
            let mut body = commit_body(store, &identity, seq, &format!("k{seq}"));
            body.prev = prev;
            body.hlc = persist::hlc::Hlc::from_millis(persist::platform::now_ms());
            let commit = Commit::sign(body, &identity, None).expect("sign");
            prev = commit.hash;
            commits.push(commit.signed);
        }
        pushes.push(commits);
    }
    let mut client = raw_client(&identity);
    let started = Instant::now();
    let mut applied = 0;
    for commits in pushes {
        let push = SyncRequest::Push {
            store,
            commits,
            members: None,
        };
        match ask(&mut client, &node_a, push).await {
            Ok(SyncResponse::Ack { applied: n, .. }) => applied += n,
            other => panic!("a valid push was not applied: {other:?}"),
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let slowest = sampler.await.expect("sampler");
    println!(
        "500,000-commit push refused in {refused_in:?}; 20,000 commits applied in {took:?}; \
         slowest loop answer meanwhile {slowest:?}"
    );
    assert_eq!(applied, 20_000);
    assert!(
        slowest <= MAX_STALL,
        "the node's loop stalled {slowest:?} (at most {MAX_STALL:?})"
    );
    // Members kept syncing meanwhile.
    arrives(&a, "during-the-flood", &json!({ "by": "b" })).await;
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_equivocating_over_the_network_raises_an_alert_and_is_removed() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let mut events = node_a.events();
    let identity = member_with(46, &node_a).await;
    let store = a.store_id();
    assert!(a.is_trusted(&identity.device_id()));

    // Two different commits under one number, pushed one after the other.
    let signed = |key: &str| {
        let mut body = commit_body(store, &identity, 1, key);
        body.hlc = persist::hlc::Hlc::from_millis(persist::platform::now_ms());
        Commit::sign(body, &identity, None).expect("sign").signed
    };
    let mut client = raw_client(&identity);
    let push = |commit: SignedCommit| SyncRequest::Push {
        store,
        commits: vec![commit],
        members: None,
    };
    match ask(&mut client, &node_a, push(signed("x"))).await {
        Ok(SyncResponse::Ack { applied: 1, .. }) => {}
        other => panic!("the first version was not applied: {other:?}"),
    }
    // Refused; the node may close the connection of the device it has
    // just removed before its answer leaves.
    match ask(&mut client, &node_a, push(signed("y"))).await {
        Ok(SyncResponse::Ack {
            applied: 0,
            rejected: 1,
            ..
        }) => {}
        Err(closed) if closed.contains("closed") => {}
        other => panic!("the second version was not refused: {other:?}"),
    }

    // The node tells the user, and the member is removed at the fork.
    let member = persist::net::keypair(&identity)
        .expect("keypair")
        .public()
        .to_peer_id();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if event == persist::net::P2pEvent::Equivocation(member) {
                return;
            }
        }
        panic!("the node's events ended");
    })
    .await
    .expect("an equivocation alert within 10 s");
    assert!(!a.is_trusted(&identity.device_id()), "the member stays");
    assert_eq!(a.kv().get("x").await.expect("get"), None);
    assert_eq!(a.kv().get("y").await.expect("get"), None);
    node_a.shutdown();
}

/// Sends a pairing move to `host` at `addr` from a raw client and returns
/// the answer (or the failure) within 10 s.
async fn pair_ask(
    client: &mut Swarm<request_response::Behaviour<PairCodec>>,
    addr: &libp2p::Multiaddr,
    host: PeerId,
    request: PairRequest,
) -> Result<PairResponse, String> {
    ask_at(client, addr, host, request, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_drops_its_exchange_or_probes_nameplates_waits() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    let host = node_a.peer_id();
    let refused_for_a_while = |answer: Result<PairResponse, String>| match answer {
        Ok(PairResponse::Refused { code, reason }) => {
            assert_eq!(code, "PAIRING_FAILED");
            assert!(reason.contains("recent attempt"), "{reason}");
        }
        other => panic!("a waiting source was answered {other:?}"),
    };

    // A guess at an offered code: the attacker reads the host's challenge
    // (enough to learn its guess was wrong) and drops the exchange,
    // sending neither Finish nor Abort.
    let guesser = DeviceIdentity::from_secret(&[68; 32]);
    let start = |code: &str, who: &Swarm<request_response::Behaviour<PairCodec>>| {
        let guess = PairingCode::parse(code).expect("a code");
        JoinerSession::start(guess, &host.to_bytes(), &who.local_peer_id().to_bytes()).1
    };
    let first = node_a.create_pairing_code().await.expect("code");
    let mut evil = interceptor(&guesser);
    let guess = start(&wrong_code(first.code()), &evil);
    match pair_ask(&mut evil, &addr, host, guess).await {
        Ok(PairResponse::Challenge { .. }) => {}
        other => panic!("no challenge: {other:?}"),
    }
    drop(evil);
    // Its next start, at the next code, is refused before it burns it.
    let second = node_a.create_pairing_code().await.expect("code");
    let mut evil = interceptor(&guesser);
    let guess = start(&wrong_code(second.code()), &evil);
    refused_for_a_while(pair_ask(&mut evil, &addr, host, guess).await);
    // The code still works for the device it was made for.
    let b = memory_store("b").await;
    let node_b = b.enable_p2p(P2pOptions::loopback()).await.expect("b");
    let joined = node_b.pair(second.code(), Some(addr.clone())).await;
    assert_eq!(joined.expect("the honest device pairs"), host);

    // Probing a nameplate that names no code costs the same wait (while a
    // code is offered: otherwise a stranger is not even let in).
    let third = node_a.create_pairing_code().await.expect("code");
    let mut prober = interceptor(&DeviceIdentity::from_secret(&[69; 32]));
    let probe = start("ZZZZ-1234", &prober);
    match pair_ask(&mut prober, &addr, host, probe).await {
        Ok(PairResponse::Refused { code, .. }) => assert_eq!(code, "PAIRING_CODE_INVALID"),
        other => panic!("an unknown nameplate was answered {other:?}"),
    }
    let probe = start(third.code(), &prober);
    refused_for_a_while(pair_ask(&mut prober, &addr, host, probe).await);
    node_a.shutdown();
    node_b.shutdown();
}

/// A push carrying a membership log of `n` entries, each signed by a
/// throw-away key (never added) adding another.
fn junk_push(store: persist::StoreId, founder: persist::DeviceId, n: u32) -> SyncRequest {
    use persist::membership::{MemberChange, MemberEntry, MembershipWire, MEMBER_ENTRY_FORMAT};
    let now = persist::hlc::Hlc::from_millis(persist::platform::now_ms());
    let entries = (0..n)
        .map(|i| {
            let mut secret = [48u8; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            let key = DeviceIdentity::from_secret(&secret);
            secret[4] = 49;
            MemberEntry {
                format: MEMBER_ENTRY_FORMAT,
                store,
                author: key.device_id(),
                seq: 1,
                prev: [0; 32],
                hlc: now,
                change: MemberChange::Add {
                    device: DeviceIdentity::from_secret(&secret).device_id(),
                    label: "junk".into(),
                },
            }
            .sign(&key)
            .expect("signs")
        })
        .collect();
    SyncRequest::Push {
        store,
        commits: Vec::new(),
        members: Some(MembershipWire {
            store,
            founder,
            entries,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_pushing_a_log_of_junk_entries_stores_none_and_the_loop_keeps_answering() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let identity = member_with(47, &node_a).await;
    let store = a.store_id();
    let held = a.membership().await.entries.len();

    // 4,000 entries (about the log's cap), each signed by a throw-away key
    // adding another, with the member's push.
    let push = junk_push(store, a.device_id(), 4_000);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(slowest_answer(node_a.clone(), stop.clone()));
    let mut client = raw_client(&identity);
    let asked = Instant::now();
    let answer = ask(&mut client, &node_a, push).await;
    let answered_in = asked.elapsed();
    stop.store(true, Ordering::SeqCst);
    let slowest = sampler.await.expect("sampler");
    println!(
        "a 4,000-entry junk log answered {answer:?} in {answered_in:?}; slowest loop answer \
         meanwhile {slowest:?}"
    );
    assert!(
        matches!(answer, Ok(SyncResponse::Ack { applied: 0, .. })),
        "{answer:?}"
    );
    assert_eq!(
        a.membership().await.entries.len(),
        held,
        "junk entries were stored"
    );
    assert!(
        slowest <= MAX_STALL,
        "the node's loop stalled {slowest:?} (at most {MAX_STALL:?})"
    );
    node_a.shutdown();
}

/// Drives `client` until each request in `asked` is answered or failed
/// (within `within`): how many were answered, how many failed.
async fn settle(
    client: &mut Swarm<request_response::Behaviour<SyncCodec>>,
    asked: &std::collections::HashSet<request_response::OutboundRequestId>,
    within: Duration,
) -> (usize, usize) {
    let (mut answered, mut failed) = (0, 0);
    tokio::time::timeout(within, async {
        while answered + failed < asked.len() {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, .. },
                    ..
                }) if asked.contains(&request_id) => answered += 1,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    ..
                }) if asked.contains(&request_id) => failed += 1,
                _ => {}
            }
        }
    })
    .await
    .expect("every request answered or failed in time");
    (answered, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_opening_hundreds_of_sync_streams_is_capped_and_the_node_keeps_answering() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let identity = member_with(50, &node_a).await;
    let b = memory_store("b").await;
    let node_b = pair_into(&b, &node_a, P2pOptions::loopback()).await;
    let store = a.store_id();

    // 300 pulls at once on one connection (the node serves 16 streams per
    // connection at a time and refuses the rest).
    const STREAMS: usize = 300;
    let mut client = raw_swarm(
        &identity,
        request_response::Behaviour::<SyncCodec>::new(
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                .with_max_concurrent_streams(STREAMS),
        ),
    );
    client.dial(dial_addr(&node_a).await).expect("dial");
    let asked: std::collections::HashSet<_> = (0..STREAMS)
        .map(|_| {
            client
                .behaviour_mut()
                .send_request(&node_a.peer_id(), empty_pull(store))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(slowest_answer(node_a.clone(), stop.clone()));
    b.records("notes")
        .put("during-the-streams", json!({ "by": "b" }))
        .await
        .expect("put");
    let (answered, failed) = settle(&mut client, &asked, Duration::from_secs(60)).await;
    stop.store(true, Ordering::SeqCst);
    let slowest = sampler.await.expect("sampler");
    println!(
        "{STREAMS} sync streams at once from one member: {answered} answered, {failed} \
         refused; slowest loop answer meanwhile {slowest:?}"
    );
    assert!(answered > 0, "the node served none");
    assert!(
        slowest <= MAX_STALL,
        "the node's loop stalled {slowest:?} (at most {MAX_STALL:?})"
    );
    arrives(&a, "during-the-streams", &json!({ "by": "b" })).await;
    node_a.shutdown();
    node_b.shutdown();
}

/// The bound on what a member's attacks may add to a device's peak memory.
/// Measured in a debug build: about 5.4 MB for all three (the junk log's
/// entries are left out before the rebuild; it cost about 24 MB before).
const DEVICE_RSS_BOUND_KIB: u64 = 16 * 1024;

/// The attacker of `a_member_attacking_a_device_costs_it_bounded_memory`,
/// run by that test in a process of its own (this test binary again), so
/// that the device's memory is measured without the attacker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the attacking process of a_member_attacking_a_device_costs_it_bounded_memory"]
async fn attacker_process() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name}: run by the memory test"))
    };
    let addr: libp2p::Multiaddr = var("PERSIST_ATTACK_ADDR").parse().expect("addr");
    let node = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => peer,
        _ => panic!("the address names no peer"),
    };
    let seed: u8 = var("PERSIST_ATTACK_SEED").parse().expect("seed");
    let store_bytes: [u8; 16] = hex::decode(var("PERSIST_ATTACK_STORE"))
        .expect("hex")
        .try_into()
        .expect("16 bytes");
    let store = persist::StoreId::from_bytes(store_bytes);
    let identity = DeviceIdentity::from_secret(&[seed; 32]);
    let mut client = raw_client(&identity);
    let deadline = Duration::from_secs(60);
    // 500,000 tiny commits in one push.
    let flood = SyncRequest::Push {
        store,
        commits: vec![
            SignedCommit {
                body: vec![3; 16],
                signature: [0; 64],
            };
            500_000
        ],
        members: None,
    };
    let flooded = crate::p2p_trust::ask_at(&mut client, &addr, node, flood, deadline).await;
    assert!(flooded.is_err(), "the flood was answered: {flooded:?}");
    // A log of 4,000 junk entries.
    let founder = persist::DeviceId::from_bytes(
        hex::decode(var("PERSIST_ATTACK_FOUNDER"))
            .expect("hex")
            .try_into()
            .expect("32 bytes"),
    );
    let push = junk_push(store, founder, 4_000);
    let answered = crate::p2p_trust::ask_at(&mut client, &addr, node, push, deadline).await;
    assert!(
        answered.is_ok(),
        "the junk log was not answered: {answered:?}"
    );
    // 300 pulls at once.
    let asked: std::collections::HashSet<_> = (0..300)
        .map(|_| {
            client
                .behaviour_mut()
                .send_request(&node, empty_pull(store))
        })
        .collect();
    let (answered, _) = settle(&mut client, &asked, deadline).await;
    assert!(
        answered > 0,
        "no pull was answered: the attacks did not reach the node"
    );
    println!("attacker: done");
}

/// Runs test `name` of this binary in a process of its own (libtest, one
/// thread), with `env`, and returns its output; fails unless it ran and
/// passed (a filter that matches nothing would pass with no test run).
fn run_alone(name: &str, ignored: bool, env: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    let mut command = std::process::Command::new(exe);
    command.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    if ignored {
        command.arg("--ignored");
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in a process of its own: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_attacking_a_device_costs_it_bounded_memory() {
    // A process's peak memory is the device's only when no other test
    // shares the process: nextest gives each test one; otherwise (plain
    // `cargo test`) this test runs itself again, alone.
    if std::env::var_os("NEXTEST").is_none() && std::env::var_os("PERSIST_ALONE").is_none() {
        let out = run_alone(
            "strangers::a_member_attacking_a_device_costs_it_bounded_memory",
            false,
            &[("PERSIST_ALONE", "1".into())],
        );
        print!("{out}");
        return;
    }
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let seed = 53u8;
    member_with(seed, &node_a).await;
    let addr = dial_addr(&node_a).await;
    // The peak so far is reset: what follows is the attacks' (Linux: 5 in
    // clear_refs resets VmHWM to the current RSS).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = peak_rss_kib(std::process::id());
    // The attacker: this test binary again, running only its attacker.
    let env = vec![
        ("PERSIST_ATTACK_ADDR", addr.to_string()),
        ("PERSIST_ATTACK_SEED", seed.to_string()),
        ("PERSIST_ATTACK_STORE", hex::encode(a.store_id().as_bytes())),
        (
            "PERSIST_ATTACK_FOUNDER",
            hex::encode(a.device_id().as_bytes()),
        ),
    ];
    let said =
        tokio::task::spawn_blocking(move || run_alone("strangers::attacker_process", true, &env))
            .await
            .expect("join");
    assert!(said.contains("attacker: done"), "{said}");
    let after = peak_rss_kib(std::process::id());
    println!(
        "device: peak RSS {before} KiB before, {after} KiB after a member's 41 MB push of \
         500,000 commits, a 4,000-entry junk log and 300 pulls at once (bound: \
         {DEVICE_RSS_BOUND_KIB} KiB more)"
    );
    assert!(
        after.saturating_sub(before) <= DEVICE_RSS_BOUND_KIB,
        "the attacks grew the device's peak memory by {} KiB",
        after - before
    );
    // The device still answers and still serves members.
    node_a.connected_peers().await.expect("the node answers");
    node_a.shutdown();
}
