//! Trust over the network: revocation with a new key, and a member's
//! device (or a stranger) sending forged, tampered, untrusted, replayed and
//! oversize messages straight to a node's sync protocol. Loopback only,
//! bounded in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder};
use persist::change::{CommitBody, Op, COMMIT_FORMAT};
use persist::hlc::Hlc;
use persist::keys::MemoryKeyStore;
use persist::net::{
    P2p, P2pEvent, P2pOptions, SyncCodec, SyncRequest, SyncResponse, SYNC_PROTOCOL,
};
use persist::{Adapter, Commit, DeviceIdentity, SignedCommit, Store, StoreOptions};
use serde_json::json;

use crate::p2p::{arrives, dial_addr, encrypted_memory_store, memory_store, new_member, pair_into};

/// Waits (at most 10 s) for `check` to hold.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(node: &P2p, other: &P2p) -> bool {
    node.connected_peers()
        .await
        .expect("peers")
        .contains(&other.peer_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_and_cannot_read_later_writes() {
    let a = encrypted_memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let (b, node_b) = new_member("b", &node_a).await;
    let (c, node_c) = new_member("c", &node_a).await;
    // C writes once while trusted.
    c.records("notes")
        .put("before", json!({ "by": "c" }))
        .await
        .expect("put");
    arrives(&a, "before", &json!({ "by": "c" })).await;
    eventually("B trusts C", async || b.is_trusted(&c.device_id())).await;
    // B and C connect directly too.
    node_c.dial(dial_addr(&node_b).await).await.expect("dial");
    eventually("B and C connected", async || {
        connected(&node_b, &node_c).await
    })
    .await;
    let mut events_b = node_b.events();

    let revoked_at = Instant::now();
    node_a.revoke_trust(node_c.peer_id()).await.expect("revoke");
    assert!(!a.is_trusted(&c.device_id()));
    assert_eq!(
        a.crypto().epoch().expect("epoch"),
        1,
        "A moved to a new key"
    );

    // Every member learns it: B drops C and closes its connection.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events_b.next().await {
            if event == P2pEvent::MemberRemoved(node_c.peer_id()) {
                break;
            }
        }
    })
    .await
    .expect("B hears of the removal");
    eventually("A and B closed C's connections", async || {
        !connected(&node_a, &node_c).await && !connected(&node_b, &node_c).await
    })
    .await;
    // B got the new key (sealed to it); C did not.
    eventually("B holds epoch 1", async || {
        b.crypto().epoch().expect("epoch") == 1
    })
    .await;
    // Every remaining writer (A, B) writes under the new key from here.
    println!(
        "every remaining writer switched to the new key {:?} after the revocation began",
        revoked_at.elapsed()
    );
    assert_eq!(c.crypto().epoch().expect("epoch"), 0);

    // A writes after the revocation: B reads it, C cannot even decrypt
    // the commit if it gets hold of it.
    a.records("notes")
        .put("after", json!({ "secret": true }))
        .await
        .expect("put");
    arrives(&b, "after", &json!({ "secret": true })).await;
    let latest = a
        .commits_missing_from(&[], usize::MAX)
        .await
        .expect("log")
        .into_iter()
        .rfind(|c| c.author_seq().map(|(d, _)| d) == Some(a.device_id()))
        .expect("A's commit");
    assert_eq!(
        c.verify_commit(latest)
            .expect_err("sealed under epoch 1")
            .code(),
        "DECRYPT_FAILED"
    );
    // B writes under the new epoch too.
    b.records("notes")
        .put("from-b", json!({ "epoch": 1 }))
        .await
        .expect("put");
    arrives(&a, "from-b", &json!({ "epoch": 1 })).await;

    // C keeps writing: its node is refused, and its commits are refused
    // by every replica even when handed over directly.
    c.records("notes")
        .put("later", json!({ "by": "revoked c" }))
        .await
        .expect("put");
    let refused_before = node_a.refused_connections();
    node_c.dial(dial_addr(&node_a).await).await.expect("dial");
    eventually("A refuses C", async || {
        node_a.refused_connections() > refused_before
    })
    .await;
    let from_c = c
        .commits_missing_from(&a.version_vector().await.expect("vv"), 100)
        .await
        .expect("log");
    assert!(!from_c.is_empty());
    for replica in [&a, &b] {
        let report = replica.ingest(from_c.clone()).await.expect("ingest");
        assert_eq!(report.applied, 0);
        assert!(report
            .rejected
            .iter()
            .all(|(_, r)| r.code() == "NOT_TRUSTED"));
        assert_eq!(
            replica.records("notes").get("later").await.expect("get"),
            None
        );
        // What C wrote before its removal stays.
        assert_eq!(
            replica.records("notes").get("before").await.expect("get"),
            Some(json!({ "by": "c" }))
        );
    }
    // Revoking twice succeeds (nothing is left to do); revoking oneself is
    // refused.
    let epoch = a.members().epoch;
    node_a.revoke_trust(node_c.peer_id()).await.expect("twice");
    assert_eq!(a.members().epoch, epoch, "no second rotation");
    assert_eq!(
        node_a
            .revoke_trust(node_a.peer_id())
            .await
            .expect_err("self")
            .code(),
        "INVALID_OPTIONS"
    );
    for node in [node_a, node_b, node_c] {
        node.shutdown();
    }
}

/// A raw TCP swarm (Noise, Yamux) with `identity` and `behaviour`: a
/// client that does what a node would not.
pub(crate) fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    identity: &DeviceIdentity,
    behaviour: B,
) -> Swarm<B> {
    SwarmBuilder::with_existing_identity(persist::net::keypair(identity).expect("keypair"))
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// A raw libp2p client speaking `/persist/sync/2` with a given identity.
pub(crate) fn raw_client(
    identity: &DeviceIdentity,
) -> Swarm<request_response::Behaviour<SyncCodec>> {
    raw_swarm(
        identity,
        request_response::Behaviour::new(
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
        ),
    )
}

/// A pull of everything (an empty version vector) from `store`.
pub(crate) fn empty_pull(store: persist::StoreId) -> SyncRequest {
    SyncRequest::Pull {
        store,
        have: Vec::new(),
        tips: Vec::new(),
        limit: 10,
        members: persist::membership::MembersHave::default(),
    }
}

/// A one-operation commit body of `author` for `store`.
pub(crate) fn commit_body(
    store: persist::StoreId,
    author: &DeviceIdentity,
    seq: u64,
    key: &str,
) -> CommitBody {
    CommitBody {
        format: COMMIT_FORMAT,
        store,
        author: author.device_id(),
        seq,
        prev: [0; 32],
        hlc: Hlc::from_millis(1_800_000_000_000),
        ops: vec![Op::KvSet {
            key: key.into(),
            value: "1".into(),
        }],
    }
}

/// Three commits a member might pass on, each to be refused: its own with
/// the signature altered, its own with a byte of the body flipped, and one
/// signed by a device that is not a member.
fn bad_commits(store: persist::StoreId, member: &DeviceIdentity) -> [SignedCommit; 3] {
    let sign = |author: &DeviceIdentity, key: &str| {
        Commit::sign(commit_body(store, author, 1, key), author, None)
            .expect("sign")
            .signed
    };
    let mut forged = sign(member, "forged");
    forged.signature[10] ^= 1;
    let mut flipped = sign(member, "flipped");
    let last = flipped.body.len() - 1;
    flipped.body[last] ^= 0x40;
    let stranger = DeviceIdentity::from_secret(&[7; 32]);
    [forged, flipped, sign(&stranger, "untrusted")]
}

/// A member the test holds the identity of, paired into `host`'s store
/// (its node stopped again).
pub(crate) async fn member_with(seed: u8, host: &P2p) -> DeviceIdentity {
    let identity = DeviceIdentity::from_secret(&[seed; 32]);
    let store = Store::open(
        StoreOptions::new("member")
            .adapter(Adapter::Memory)
            .key_store(Arc::new(MemoryKeyStore::from_identity(&identity))),
    )
    .await
    .expect("member");
    let node = pair_into(&store, host, P2pOptions::loopback()).await;
    node.shutdown();
    identity
}

/// Sends `request` to `node` and returns the answer (or the failure).
pub(crate) async fn ask(
    client: &mut Swarm<request_response::Behaviour<SyncCodec>>,
    node: &P2p,
    request: SyncRequest,
) -> Result<SyncResponse, String> {
    ask_within(client, node, request, Duration::from_secs(10)).await
}

/// [`ask`], waiting at most `deadline` for the answer.
pub(crate) async fn ask_within(
    client: &mut Swarm<request_response::Behaviour<SyncCodec>>,
    node: &P2p,
    request: SyncRequest,
    deadline: Duration,
) -> Result<SyncResponse, String> {
    let addr = dial_addr(node).await;
    ask_at(client, &addr, node.peer_id(), request, deadline).await
}

/// Sends `request` to `peer` at `addr` (dialled unless connected) from a
/// raw client of any request-response protocol, and returns the answer
/// (or the failure) within `deadline`.
pub(crate) async fn ask_at<C>(
    client: &mut Swarm<request_response::Behaviour<C>>,
    addr: &Multiaddr,
    peer: PeerId,
    request: C::Request,
    deadline: Duration,
) -> Result<C::Response, String>
where
    C: request_response::Codec + Clone + Send + 'static,
{
    if !client.is_connected(&peer) {
        client.dial(addr.clone()).map_err(|e| e.to_string())?;
    }
    let id = client.behaviour_mut().send_request(&peer, request);
    tokio::time::timeout(deadline, async {
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) if request_id == id => return Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer in {deadline:?}")))
}

fn rejected(response: Result<SyncResponse, String>) -> u32 {
    match response {
        Ok(SyncResponse::Ack {
            applied: 0,
            rejected,
            ..
        }) => rejected,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A codec whose request announces a message of `len` bytes (the request),
/// starts it with tag 0, sends 1 KiB of junk, and then waits for an
/// answer's length: an oversize message on any protocol.
#[derive(Clone, Default)]
pub(crate) struct Announce;

impl request_response::Codec for Announce {
    type Protocol = StreamProtocol;
    type Request = u32;
    type Response = ();

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<u32> {
        Ok(0)
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<()> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        len: u32,
    ) -> std::io::Result<()> {
        io.write_all(&len.to_be_bytes()).await?;
        // Tag 0: a `Start`.
        io.write_all(&[0]).await?;
        io.write_all(&[0xAB; 1024]).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_untrusted_replayed_and_oversize_messages_are_refused() {
    let a = memory_store("a").await;
    a.records("notes")
        .put("keep", json!({ "safe": true }))
        .await
        .expect("put");
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    // M: a member whose identity the test holds (its own device).
    let identity = member_with(42, &node_a).await;
    let before = a.version_vector().await.expect("vv");

    let store = a.store_id();
    let push = |commits| SyncRequest::Push {
        store,
        commits,
        members: None,
    };
    let mut client = raw_client(&identity);

    // A forged signature, a flipped byte, a commit by a device that is not
    // a member (relayed by a member): each refused.
    for bad in bad_commits(store, &identity) {
        assert_eq!(
            rejected(ask(&mut client, &node_a, push(vec![bad])).await),
            1
        );
    }
    // A replay of a commit A already holds: nothing applied twice.
    let replay = a.commits_missing_from(&[], 10).await.expect("log");
    match ask(&mut client, &node_a, push(replay)).await {
        Ok(SyncResponse::Ack { applied: 0, .. }) => {}
        other => panic!("a replay was applied: {other:?}"),
    }
    // A push for another store.
    let other = SyncRequest::Push {
        store: persist::StoreId::from_bytes([9; 16]),
        commits: Vec::new(),
        members: None,
    };
    assert!(matches!(
        ask(&mut client, &node_a, other).await,
        Ok(SyncResponse::Refused(code)) if code == "WRONG_STORE"
    ));

    // An oversize message: the stream is dropped, the node lives on.
    let mut evil = raw_swarm(
        &identity,
        request_response::Behaviour::<Announce>::new(
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    );
    evil.dial(dial_addr(&node_a).await).expect("dial");
    let id = evil
        .behaviour_mut()
        .send_request(&node_a.peer_id(), u32::MAX);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::Behaviour(event) = evil.select_next_some().await {
                match event {
                    request_response::Event::OutboundFailure { request_id, .. }
                        if request_id == id =>
                    {
                        return "refused";
                    }
                    request_response::Event::Message { .. } => return "answered",
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("an outcome in 10 s");
    assert_eq!(outcome, "refused");

    // A stranger's raw client is refused at the connection: no stream.
    let mut outsider = raw_client(&DeviceIdentity::from_secret(&[7; 32]));
    let pull = empty_pull(store);
    assert!(ask(&mut outsider, &node_a, pull.clone()).await.is_err());

    // Nothing was stored, nothing lost, and the node still serves members.
    assert_eq!(a.version_vector().await.expect("vv"), before);
    for key in ["forged", "flipped", "untrusted"] {
        assert_eq!(a.kv().get(key).await.expect("get"), None);
    }
    assert_eq!(
        a.records("notes").get("keep").await.expect("get"),
        Some(json!({ "safe": true }))
    );
    match ask(&mut client, &node_a, pull).await {
        Ok(SyncResponse::Commits { commits, .. }) => assert!(!commits.is_empty()),
        other => panic!("the node stopped serving members: {other:?}"),
    }
    node_a.shutdown();
}

/// The same attacks on the live stream a member's node opens for pushes:
/// every bad commit refused, an oversize frame ends the stream, and the
/// node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_on_the_live_stream_are_refused() {
    use persist::net::live::{LiveMessage, LIVE_PROTOCOL};
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let identity = member_with(43, &node_a).await;
    let before = a.version_vector().await.expect("vv");
    let mut events = node_a.events();

    let mut client = raw_swarm(&identity, libp2p_stream::Behaviour::new());
    let mut control = client.behaviour().new_control();
    client.dial(dial_addr(&node_a).await).expect("dial");
    while !matches!(
        client.select_next_some().await,
        SwarmEvent::ConnectionEstablished { .. }
    ) {}
    tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let mut stream = control
        .open_stream(node_a.peer_id(), LIVE_PROTOCOL)
        .await
        .expect("live stream");
    let frame = |message: &LiveMessage| {
        let body = postcard::to_stdvec(message).expect("encode");
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    let store = a.store_id();
    for commit in bad_commits(store, &identity) {
        let message = LiveMessage::Commits {
            commits: vec![commit],
            members: None,
        };
        stream.write_all(&frame(&message)).await.expect("write");
        stream.flush().await.expect("flush");
    }
    // Each was received and refused.
    let mut refused = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let P2pEvent::Synced {
                applied, rejected, ..
            } = event
            {
                assert_eq!(applied, 0);
                refused += rejected;
                if refused == 3 {
                    break;
                }
            }
        }
    })
    .await
    .expect("three refusals");
    // An oversize frame: the node drops the stream.
    stream
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    let _ = stream.write_all(&[0u8; 1024]).await;
    let _ = stream.flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.version_vector().await.expect("vv"), before);
    for key in ["forged", "flipped", "untrusted"] {
        assert_eq!(a.kv().get(key).await.expect("get"), None);
    }
    // The node still replicates with members.
    let (b, node_b) = new_member("b", &node_a).await;
    a.records("notes")
        .put("still", json!({ "alive": true }))
        .await
        .expect("put");
    arrives(&b, "still", &json!({ "alive": true })).await;
    node_a.shutdown();
    node_b.shutdown();
}

/// A handshake flood: 100 TCP connections that never speak. The node caps
/// them (at most 32 in their handshake), stays up, and serves members once
/// they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_capped_and_the_node_survives() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let addr = dial_addr(&node_a).await;
    let port = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("tcp port");
    let mut flood = Vec::new();
    for _ in 0..100 {
        if let Ok(socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            flood.push(socket);
        }
    }
    assert!(!flood.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still listening, still pairing and replicating.
    let (b, node_b) = new_member("b", &node_a).await;
    a.records("notes")
        .put("after-flood", json!({ "ok": true }))
        .await
        .expect("put");
    arrives(&b, "after-flood", &json!({ "ok": true })).await;
    assert!(node_a
        .connected_peers()
        .await
        .expect("peers")
        .contains(&node_b.peer_id()));
    node_a.shutdown();
    node_b.shutdown();
}

/// A member speaking the previous version of the sync protocol finds no
/// common protocol: its request fails before any byte of it is read as
/// the current version, and the node goes on serving the current one.
#[tokio::test]
async fn a_peer_of_another_protocol_version_is_refused_cleanly() {
    let a = memory_store("a").await;
    let node_a = a.enable_p2p(P2pOptions::loopback()).await.expect("a");
    let identity = member_with(43, &node_a).await;
    let old = libp2p::StreamProtocol::new("/persist/sync/1");
    let mut client = raw_swarm(
        &identity,
        request_response::Behaviour::<SyncCodec>::new(
            [(old.clone(), ProtocolSupport::Full)],
            request_response::Config::default(),
        ),
    );
    let mut events = node_a.events();
    let pull = empty_pull(a.store_id());
    let error = ask(&mut client, &node_a, pull.clone())
        .await
        .expect_err("no common protocol");
    assert!(error.contains("protocol"), "{error}");
    drop(client);
    // A device of that version says so in identify: the user hears of it
    // (an alert, once), not only the log.
    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct OldVersion {
        identify: libp2p::identify::Behaviour,
        sync: request_response::Behaviour<SyncCodec>,
    }
    let keypair = persist::net::keypair(&identity).expect("keypair");
    let mut client = raw_swarm(
        &identity,
        OldVersion {
            identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                "/persist/node/1".into(),
                keypair.public(),
            )),
            sync: request_response::Behaviour::<SyncCodec>::new(
                [(old, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
        },
    );
    client.dial(dial_addr(&node_a).await).expect("dial");
    let old_member = *client.local_peer_id();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                _ = client.select_next_some() => {}
                event = events.next() => match event {
                    Some(P2pEvent::ProtocolUnsupported(peer)) if peer == old_member => break,
                    Some(_) => {}
                    None => panic!("the node's events ended"),
                },
            }
        }
    })
    .await
    .expect("an alert within 10 s");
    // The current version is served to the same member.
    let mut current = raw_client(&identity);
    assert!(matches!(
        ask(&mut current, &node_a, pull).await,
        Ok(SyncResponse::Commits { .. })
    ));
    node_a.shutdown();
}
