//! P2P replication over libp2p: the network behaviour, the sync and
//! pairing protocols and the node's event loop, all target-neutral.
//! Platform code only builds the transports and runs the loop
//! (`platform::native::net`). The wire format is in `docs/sync-protocol.md`.
//!
//! Sync protocol `/persist/sync/2` (request-response, one message each way,
//! length-prefixed `postcard`, at most [`MAX_MESSAGE_BYTES`] for commits
//! and [`MAX_VECTOR_BYTES`] for a version vector, pages of at most 8 MiB of
//! commits):
//!
//! ```text
//! Pull { store, have: [(author, seq)], limit, members: { digest, tips } }
//!                          ->  Commits { commits, more, members: the entries it lacks }
//! Push { store, commits, members: the entries the peer lacks, as far as known }
//!                          ->  Ack { applied, rejected, have if some were refused }
//! ```
//!
//! On a new connection with a member, each side pulls what it lacks (its
//! version vector says what it has), in pages of [`PULL_LIMIT`] until
//! `more` is false. After a local commit or membership change a node pushes
//! each connected member what it has not seen. Commits travel as their
//! authors signed them (sealed for encrypted stores); every received commit
//! goes through `Store::ingest` (signature, store binding, author a member,
//! order and size) and every membership log through
//! `Store::merge_membership` (same founder, every entry signed), the log
//! before the commits it admits.
//!
//! Trust: the [`gate`] refuses connections from non-members right after
//! the handshake, except bootstrap peers and anyone while a pairing is open;
//! such a peer may open only `/persist/pair/2` streams, and only while this
//! node offers a code ([`gate::Gated`]: other streams fail at negotiation).
//! Each kind of message has a size limit ([`codec::Bounded`]) checked before
//! its body is read.

use libp2p::{identity, StreamProtocol};
use serde::{Deserialize, Serialize};

pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};

use crate::change::{SignedCommit, StoreId};
use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceIdentity};
use crate::membership::{MembersHave, MembershipWire};

mod behaviour;
pub mod codec;
pub mod gate;
mod handle;
pub mod live;
pub mod meet;
mod node;
pub mod pairing;
pub mod replica;
pub mod replication;
pub mod server;

pub use behaviour::{Behaviour, BehaviourEvent};
pub use codec::Codec;
pub(crate) use handle::{start, stopped, Command, Subscribers};
pub use handle::{with_peer, CodeOptions, P2p, PendingPairing, CONFIRM_MS};
pub use pairing::{Invite, PairRequest, PairResponse, PairingCode};

/// The sync protocol's name and version.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/sync/2");
/// The pairing protocol's name and version.
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/pair/2");
/// Largest sync message read or written: one commit of the largest size a
/// store accepts by default, plus room for framing.
pub const MAX_MESSAGE_BYTES: usize = crate::names::DEFAULT_MAX_COMMIT_BYTES + (1 << 20);
/// The largest version vector a message can carry: one entry per device
/// that was ever a member (each needs an entry of the membership log),
/// with its sequence number and tip hash, and (in a pull) the same again
/// for the membership log, plus room for the message.
pub const MAX_VECTOR_BYTES: usize = 1024 + (crate::membership::MAX_MEMBER_ENTRIES + 1) * 160;
/// The largest message of a kind that carries neither commits nor a
/// version vector (pairing moves, refusals).
pub const MAX_SMALL_MESSAGE_BYTES: usize = 4 << 10;
/// By default, a request and its answer, or a live message once begun,
/// complete within this (a stream that trickles is cut here): see
/// [`P2pOptions::message_timeout`].
pub const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Sync streams open at once per connection, at most (more are dropped
/// unread).
pub const SYNC_STREAMS: usize = 16;
/// Pairing streams open at once per connection, at most.
pub const PAIR_STREAMS: usize = 2;
/// Inbound streams still negotiating their protocol per connection, at
/// most (a stream flood waits here instead of growing).
pub const MAX_NEGOTIATING_STREAMS: usize = 16;
/// Incoming connections still in their handshake, at most (a flood of
/// handshakes is cut here; the gate refuses non-members after theirs).
pub const MAX_PENDING_INCOMING: u32 = 32;
/// Established incoming connections, at most.
pub const MAX_INCOMING: u32 = 256;
/// Established connections per peer, at most.
pub const MAX_PER_PEER: u32 = 4;
/// Commits per pulled page.
pub const PULL_LIMIT: u32 = 1_000;
/// Bytes of commits per message page (a single larger commit goes alone).
const PAGE_BYTES: usize = 8 << 20;

/// The sync protocol's codec.
pub type SyncCodec = Codec<SyncRequest, SyncResponse>;
/// The pairing protocol's codec.
pub type PairCodec = Codec<PairRequest, PairResponse>;

/// The longest prefix of `commits` within [`PAGE_BYTES`] (at least one
/// commit: a single commit is bounded by the store's commit limit), and
/// whether some were left out.
fn page_of(mut commits: Vec<SignedCommit>) -> (Vec<SignedCommit>, bool) {
    let mut total = 0;
    let keep = commits
        .iter()
        .position(|c| {
            total += c.body.len() + 80;
            total > PAGE_BYTES
        })
        .unwrap_or(commits.len())
        .max(1)
        .min(commits.len());
    let cut = keep < commits.len();
    commits.truncate(keep);
    (commits, cut)
}

/// Bytes a node's TCP connections carried, framing included (Noise,
/// Yamux, multistream-select): for measurements.
#[derive(Debug, Clone, Default)]
pub struct ByteCounter {
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ByteCounter {
    /// Bytes received so far.
    pub fn read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes sent so far.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `n` bytes received.
    pub fn add_read(&self, n: usize) {
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts `n` bytes sent.
    pub fn add_written(&self, n: usize) {
        self.written
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Options of `Store::enable_p2p`.
#[derive(Debug, Clone)]
pub struct P2pOptions {
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/tcp/0`,
    /// `/ip4/0.0.0.0/udp/0/quic-v1`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers to dial at start (with `/p2p/<peer id>` to also seed the DHT).
    pub bootstrap_peers: Vec<Multiaddr>,
    /// Find peers on the local network with mDNS (multicast on every
    /// interface). On by default; `PERSIST_MDNS=off` turns the default off
    /// (tests and the demo keep multicast off the host's interfaces).
    pub mdns: bool,
    /// Run a Kademlia DHT.
    pub dht: bool,
    /// Count the bytes of TCP connections (natively; QUIC is then off).
    /// For measurements.
    pub count_bytes: Option<ByteCounter>,
    /// Delay every byte received on TCP connections by this much (a
    /// simulated one-way latency, natively; QUIC is then off). For
    /// measurements of round trips.
    pub simulated_latency: Option<std::time::Duration>,
    /// A request and its answer, or a message on a live stream once its
    /// first byte arrived, must complete within this; a stream that
    /// trickles bytes slower is cut. [`MESSAGE_TIMEOUT`] by default.
    pub message_timeout: std::time::Duration,
    /// Sync servers (`persist node --serve`) to replicate with, each
    /// address ending with `/p2p/<server's peer id>`: the device greets
    /// each with the store's membership log, then pushes every durable
    /// batch and pulls what it lacks, as with any member (the server holds
    /// only ciphertext). Redialled with backoff while unreachable.
    pub sync_servers: Vec<Multiaddr>,
}

impl P2pOptions {
    /// Listening on loopback TCP only (an ephemeral port), with no mDNS, no
    /// DHT and no bootstrap peers: for tests, demos and measurements on one
    /// machine, which must not multicast on its interfaces.
    pub fn loopback() -> P2pOptions {
        let localhost: Multiaddr = std::net::Ipv4Addr::LOCALHOST.into();
        P2pOptions {
            listen_addrs: vec![localhost.with(libp2p::multiaddr::Protocol::Tcp(0))],
            bootstrap_peers: Vec::new(),
            mdns: false,
            dht: false,
            count_bytes: None,
            simulated_latency: None,
            message_timeout: MESSAGE_TIMEOUT,
            sync_servers: Vec::new(),
        }
    }
}

impl Default for P2pOptions {
    fn default() -> P2pOptions {
        let parse = |text: &str| text.parse().ok();
        P2pOptions {
            listen_addrs: ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
                .into_iter()
                .filter_map(parse)
                .collect(),
            bootstrap_peers: Vec::new(),
            mdns: !matches!(
                std::env::var("PERSIST_MDNS").as_deref(),
                Ok("0") | Ok("off") | Ok("false")
            ),
            dht: true,
            count_bytes: None,
            simulated_latency: None,
            message_timeout: MESSAGE_TIMEOUT,
            sync_servers: Vec::new(),
        }
    }
}

/// What a node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum P2pEvent {
    /// Listening on an address.
    Listening(Multiaddr),
    /// A connection to a peer is open.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// Commits received from a peer were applied.
    Synced {
        /// From whom.
        peer: PeerId,
        /// Commits stored.
        applied: usize,
        /// Commits refused (invalid, untrusted, or not yet in order).
        rejected: usize,
        /// Commits the peer said it still has for us after this batch
        /// (progress of a long initial sync; 0 when done).
        remaining: u64,
    },
    /// A device joined the store (paired here or on another member).
    MemberAdded(PeerId),
    /// A device was removed from the store (here or on another member).
    MemberRemoved(PeerId),
    /// A pairing exchange with `peer` completed (either side).
    Paired(PeerId),
    /// A pairing exchange failed, with the error's stable code.
    PairingFailed(&'static str),
    /// A device proved it holds a code made with confirmation
    /// ([`CodeOptions::confirm`]): it receives nothing of the store until
    /// [`P2p::confirm_pairing`] accepts it (refused after
    /// [`CONFIRM_MS`] without an answer). Show the user its label and
    /// fingerprint ([`pairing::fingerprint`]; the joining device shows its
    /// own with [`P2p::fingerprint`]).
    PairingRequest {
        /// The joining device.
        peer: PeerId,
        /// The name it gave itself.
        label: String,
        /// The nameplate of the code it proved (which code, when several
        /// are offered).
        nameplate: String,
    },
    /// A device signed two different commits or membership entries under
    /// one number (equivocation): it is removed on every replica. Worth
    /// telling the user: a member's key is misused or a device was restored
    /// from an old copy.
    Equivocation(PeerId),
    /// A member's device speaks another version of the sync protocol (its
    /// identify lists that version and not this one): the two do not sync
    /// until one of them is updated. Said once per connection.
    ProtocolUnsupported(PeerId),
    /// A sync server ([`P2pOptions::sync_servers`]) accepted this device
    /// as a member of the store: replication with it begins.
    ServerReady(PeerId),
    /// A sync server refused this device or the store, with a stable code
    /// (`NOT_TRUSTED`, `QUOTA_EXCEEDED`, `NOT_A_SERVER`, ...); it is asked
    /// again after a while.
    ServerRefused {
        /// The server.
        peer: PeerId,
        /// Why.
        code: String,
    },
}

/// A request of the sync protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Send me what I lack: `have` is my version vector.
    Pull {
        /// The store both sides replicate.
        store: StoreId,
        /// The requester's version vector.
        have: Vec<(DeviceId, u64)>,
        /// The hash of the requester's commit at each entry of `have`, in
        /// the same order: a responder that holds another commit there
        /// sends its own, and the requester holds both (an equivocation,
        /// proven).
        tips: Vec<[u8; 32]>,
        /// At most this many commits.
        limit: u32,
        /// What the requester holds of the membership log: the
        /// responder sends the entries it lacks.
        members: MembersHave,
    },
    /// Commits the requester believes the responder lacks.
    Push {
        /// The store.
        store: StoreId,
        /// Signed commits, in per-author order.
        #[serde(deserialize_with = "codec::at_most_a_page")]
        commits: Vec<SignedCommit>,
        /// The pusher's membership log, when the responder's differs.
        members: Option<MembershipWire>,
    },
    /// To a sync server, first on each connection: the store and its
    /// founder, with no entries (the server may know the requester as a
    /// member already), then, as the server's answer asks, the entries it
    /// lacks or the requester's whole log, which proves it a member of the
    /// store this log founds. Answered `Greeted` (the server holds the
    /// store for it: pulls and pushes follow) or `Refused`. Devices refuse
    /// it.
    Hello {
        /// The store.
        store: StoreId,
        /// The store's founder and the entries sent (none, the ones the
        /// server lacks, or all).
        log: MembershipWire,
    },
}

/// A response of the sync protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The commits asked for; `more` when the limit cut the answer.
    Commits {
        /// Signed commits, in per-author order.
        #[serde(deserialize_with = "codec::at_most_a_page")]
        commits: Vec<SignedCommit>,
        /// More remain.
        more: bool,
        /// How many commits the requester still lacks after this page.
        remaining: u64,
        /// The responder's membership log, when the requester's differs.
        members: Option<MembershipWire>,
    },
    /// What a push did.
    Ack {
        /// Commits stored.
        applied: u32,
        /// Commits refused.
        rejected: u32,
        /// The responder's version vector afterwards, when some commits
        /// were refused (the pusher's idea of it was wrong).
        have: Option<Vec<(DeviceId, u64)>>,
    },
    /// The request was refused (another store, not a member, malformed),
    /// with a stable code.
    Refused(String),
    /// A sync server's answer to a `Hello` that shows the requester a
    /// member: what the server holds of the membership log, so the
    /// requester sends only the entries it lacks.
    Greeted {
        /// What the server holds of the log.
        members: MembersHave,
    },
}

impl codec::Bounded for SyncRequest {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            0 => MAX_VECTOR_BYTES,  // Pull
            1 => MAX_MESSAGE_BYTES, // Push
            2 => MAX_MESSAGE_BYTES, // Hello
            _ => 0,
        }
    }

    fn check_head(head: &[u8]) -> std::result::Result<(), String> {
        codec::page_after::<StoreId>(head, 1) // Push
    }
}

impl codec::Bounded for SyncResponse {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            0 => MAX_MESSAGE_BYTES,       // Commits
            1 => MAX_VECTOR_BYTES,        // Ack
            2 => MAX_SMALL_MESSAGE_BYTES, // Refused
            3 => MAX_VECTOR_BYTES,        // Greeted
            _ => 0,
        }
    }

    fn check_head(head: &[u8]) -> std::result::Result<(), String> {
        codec::page_after::<()>(head, 0) // Commits
    }
}

/// The libp2p keypair of a device: its Ed25519 identity (PeerId = device).
pub fn keypair(device: &DeviceIdentity) -> Result<identity::Keypair> {
    let mut secret = device.secret();
    identity::Keypair::ed25519_from_bytes(&mut secret[..])
        .map_err(|e| Error::KeyInvalid(format!("device key as a libp2p key: {e}")))
}

/// The peer id of a device (its Ed25519 public key, as libp2p encodes it).
pub fn peer_id_of(device: &DeviceId) -> Result<PeerId> {
    let public = identity::ed25519::PublicKey::try_from_bytes(device.as_bytes())
        .map_err(|e| Error::KeyInvalid(format!("device id as a libp2p key: {e}")))?;
    Ok(identity::PublicKey::from(public).to_peer_id())
}

/// The device of a peer id (Ed25519 keys are inlined in their peer ids);
/// `None` for peer ids of other key types.
pub fn device_of(peer: &PeerId) -> Option<DeviceId> {
    let hash = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    let public = identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    Some(DeviceId::from_bytes(ed25519.to_bytes()))
}

#[cfg(test)]
mod tests {
    use std::io;

    use futures::io::Cursor;

    use super::codec::{read_message, write_message};

    use super::*;

    fn framed(len: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn messages_round_trip() {
        futures::executor::block_on(async {
            let request = SyncRequest::Pull {
                store: StoreId::from_bytes([1; 16]),
                have: vec![(DeviceIdentity::from_secret(&[2; 32]).device_id(), 7)],
                tips: vec![[3; 32]],
                limit: 10,
                members: MembersHave::default(),
            };
            let mut out = Cursor::new(Vec::new());
            write_message(&mut out, &request).await.expect("writes");
            let mut input = Cursor::new(out.into_inner());
            let read: SyncRequest = read_message(&mut input).await.expect("reads");
            assert!(matches!(read, SyncRequest::Pull { limit: 10, .. }));
        });
    }

    #[test]
    fn oversize_truncated_and_garbage_messages_are_refused() {
        futures::executor::block_on(async {
            // A length above the limit is refused before anything is read
            // or allocated.
            let mut input = Cursor::new(framed(u32::MAX, &[]));
            let err = read_message::<_, SyncRequest>(&mut input)
                .await
                .expect_err("oversize");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            // A body shorter than its length.
            let mut input = Cursor::new(framed(100, &[0; 10]));
            assert!(read_message::<_, SyncRequest>(&mut input).await.is_err());
            // Bytes that are not a request.
            let mut input = Cursor::new(framed(5, &[9, 9, 9, 9, 9]));
            assert!(read_message::<_, SyncRequest>(&mut input).await.is_err());
            // An empty stream.
            let mut input = Cursor::new(Vec::new());
            assert!(read_message::<_, SyncResponse>(&mut input).await.is_err());
        });
    }

    /// The largest message of each bounded kind fits its limit (the
    /// limits are what the messages can need, no less).
    #[test]
    fn the_largest_messages_fit_their_limits() {
        use crate::membership::{MAX_LABEL_BYTES, MAX_MEMBER_ENTRIES};
        let authors: Vec<(DeviceId, u64)> = (0..=MAX_MEMBER_ENTRIES)
            .map(|i| {
                let mut bytes = [0xFF; 32];
                bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
                (DeviceId::from_bytes(bytes), u64::MAX)
            })
            .collect();
        let pull = SyncRequest::Pull {
            store: StoreId::from_bytes([0xFF; 16]),
            have: authors.clone(),
            tips: vec![[0xFF; 32]; authors.len()],
            limit: u32::MAX,
            members: MembersHave {
                digest: [0xFF; 32],
                tips: authors.iter().map(|(d, n)| (*d, *n, [0xFF; 32])).collect(),
            },
        };
        let ack = SyncResponse::Ack {
            applied: u32::MAX,
            rejected: u32::MAX,
            have: Some(authors.clone()),
        };
        let have = live::LiveMessage::Have { have: authors };
        codec::frame(&pull).expect("the largest pull");
        codec::frame(&ack).expect("the largest ack");
        codec::frame(&have).expect("the largest have");
        let start = PairRequest::Start {
            nameplate: "ZZZZ".into(),
            pake: vec![0xFF; 33],
            label: "\u{10FFFF}".repeat(MAX_LABEL_BYTES / 4),
        };
        codec::frame(&start).expect("the largest start");
        // One more author than can exist does not fit.
        let mut too_many = Vec::new();
        if let SyncRequest::Pull { have, .. } = &pull {
            too_many = have.clone();
        }
        too_many.extend(too_many.clone());
        let pull = SyncRequest::Pull {
            store: StoreId::from_bytes([0; 16]),
            tips: vec![[0xFF; 32]; too_many.len()],
            members: MembersHave {
                digest: [0xFF; 32],
                tips: too_many.iter().map(|(d, n)| (*d, *n, [0xFF; 32])).collect(),
            },
            have: too_many,
            limit: 0,
        };
        assert!(codec::frame(&pull).is_err());
    }

    #[test]
    fn a_message_over_its_kinds_limit_is_refused_before_its_body() {
        futures::executor::block_on(async {
            // A pull (tag 0) announced one byte over the vector limit: only
            // its head was sent, and the error is the limit, not the end.
            let mut head = ((MAX_VECTOR_BYTES + 1) as u32).to_be_bytes().to_vec();
            head.push(0);
            let err = read_message::<_, SyncRequest>(&mut Cursor::new(head))
                .await
                .expect_err("over the limit");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            // The same length for a push (tag 1) is within its limit: the
            // reader waits for the body (here: the stream ends).
            let mut head = ((MAX_VECTOR_BYTES + 1) as u32).to_be_bytes().to_vec();
            head.push(1);
            let err = read_message::<_, SyncRequest>(&mut Cursor::new(head))
                .await
                .expect_err("short");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            // A pairing move is a few KiB at most; a tag that is no
            // variant has no room at all.
            for (len, tag) in [(MAX_SMALL_MESSAGE_BYTES + 1, 0), (2, 7)] {
                let mut head = (len as u32).to_be_bytes().to_vec();
                head.push(tag);
                let err = read_message::<_, PairRequest>(&mut Cursor::new(head))
                    .await
                    .expect_err("refused");
                assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            }
            // Bytes after the end of a message.
            let mut framed_abort = codec::frame(&PairRequest::Abort).expect("frame");
            framed_abort[3] += 1;
            framed_abort.push(0);
            let err = read_message::<_, PairRequest>(&mut Cursor::new(framed_abort))
                .await
                .expect_err("trailing bytes");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }

    #[test]
    fn a_message_of_more_commits_than_a_page_does_not_decode() {
        let push = |n: usize| SyncRequest::Push {
            store: StoreId::from_bytes([1; 16]),
            commits: vec![
                SignedCommit {
                    body: vec![3],
                    signature: [0; 64],
                };
                n
            ],
            members: None,
        };
        let page = PULL_LIMIT as usize;
        let framed = codec::frame(&push(page)).expect("frame");
        assert!(codec::decode::<SyncRequest>(&framed).is_ok());
        let framed = codec::frame(&push(page + 1)).expect("frame");
        assert!(codec::decode::<SyncRequest>(&framed).is_err());
    }

    #[test]
    fn a_commit_list_longer_than_a_page_is_refused_before_its_body_arrives() {
        let huge = |message: Vec<u8>| {
            // The first bytes of a 41 MB message, and nothing more: a reader
            // that waited for the body would fail on the missing bytes.
            let head = &message[4..4 + codec::HEAD_BYTES];
            framed(41_000_000, head)
        };
        let commit = SignedCommit {
            body: vec![3; 16],
            signature: [0; 64],
        };
        let push = SyncRequest::Push {
            store: StoreId::from_bytes([1; 16]),
            commits: vec![commit.clone(); 500_000],
            members: None,
        };
        let commits = SyncResponse::Commits {
            commits: vec![commit.clone(); 500_000],
            more: false,
            remaining: 0,
            members: None,
        };
        let live = live::LiveMessage::Commits {
            commits: vec![commit; 500_000],
            members: None,
        };
        fn encode<T: Serialize>(message: &T) -> Vec<u8> {
            let body = postcard::to_stdvec(message).expect("encode");
            framed(body.len() as u32, &body)
        }
        futures::executor::block_on(async {
            let refused = |err: io::Error| {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                assert!(err.to_string().contains("500000 commits"), "{err}");
            };
            let mut input = Cursor::new(huge(encode(&push)));
            refused(
                read_message::<_, SyncRequest>(&mut input)
                    .await
                    .expect_err("push"),
            );
            let mut input = Cursor::new(huge(encode(&commits)));
            refused(
                read_message::<_, SyncResponse>(&mut input)
                    .await
                    .expect_err("commits"),
            );
            let mut input = Cursor::new(huge(encode(&live)));
            refused(
                read_message::<_, live::LiveMessage>(&mut input)
                    .await
                    .expect_err("live"),
            );
        });
    }

    #[test]
    fn pages_stay_within_the_message_limit() {
        let commit = |len: usize| SignedCommit {
            body: vec![0; len],
            signature: [0; 64],
        };
        let (page, cut) = page_of(vec![commit(3 << 20), commit(3 << 20), commit(3 << 20)]);
        assert_eq!(page.len(), 2);
        assert!(cut);
        // One commit larger than a page still goes alone (the store's commit
        // limit bounds it).
        let (page, cut) = page_of(vec![commit(10 << 20), commit(10)]);
        assert_eq!(page.len(), 1);
        assert!(cut);
        let (page, cut) = page_of(vec![commit(10), commit(10)]);
        assert_eq!((page.len(), cut), (2, false));
    }

    #[test]
    fn peer_ids_are_device_keys() {
        let device = DeviceIdentity::from_secret(&[5; 32]);
        let from_keypair = keypair(&device).expect("keypair").public().to_peer_id();
        assert_eq!(
            peer_id_of(&device.device_id()).expect("peer id"),
            from_keypair
        );
    }
}
