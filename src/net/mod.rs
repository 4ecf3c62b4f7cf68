//! P2P replication over libp2p: the network behaviour, the sync and
//! pairing protocols and the node's event loop, all target-neutral.
//! Platform code only builds the transports and runs the loop
//! (`platform::native::net`). The wire format is in `docs/sync-protocol.md`.
//!
//! Sync protocol `/persist/sync/2` (request-response, one message each way,
//! length-prefixed `postcard`, at most [`MAX_MESSAGE_BYTES`], pages of at
//! most 8 MiB of commits):
//!
//! ```text
//! Pull { store, have: [(author, seq)], limit, members: digest }
//!                          ->  Commits { commits, more, members: log if the digest differs }
//! Push { store, commits, members: log if the peer's digest differs }
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
//! the handshake, except bootstrap peers and anyone while a pairing is open
//! (who may then speak only `/persist/pair/2`, see [`pairing`]: the sync
//! protocol refuses non-members).

use std::sync::{Arc, Mutex};

use futures::channel::{mpsc, oneshot};
use libp2p::{identity, StreamProtocol};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};

use crate::change::{SignedCommit, StoreId};
use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceIdentity};
use crate::membership::MembershipWire;

pub mod codec;
pub mod gate;
pub mod live;
mod node;
pub mod pairing;
pub mod replica;
pub mod replication;
pub mod server;

pub use codec::Codec;
pub use pairing::{Invite, PairRequest, PairResponse, PairingCode};

/// The sync protocol's name and version.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/sync/2");
/// The pairing protocol's name and version.
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/pair/2");
/// Largest sync message read or written: one commit of the largest size a
/// store accepts by default, plus room for framing.
pub const MAX_MESSAGE_BYTES: usize = crate::names::DEFAULT_MAX_COMMIT_BYTES + (1 << 20);
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
    /// A device signed two different membership entries under one number
    /// (equivocation): it is removed on every replica. Worth telling the
    /// user: a member's key is misused or a device was restored from an
    /// old copy.
    Equivocation(PeerId),
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
        /// Digest of the requester's membership log.
        members: [u8; 32],
    },
    /// Commits the requester believes the responder lacks.
    Push {
        /// The store.
        store: StoreId,
        /// Signed commits, in per-author order.
        commits: Vec<SignedCommit>,
        /// The pusher's membership log, when the responder's differs.
        members: Option<MembershipWire>,
    },
}

/// A response of the sync protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The commits asked for; `more` when the limit cut the answer.
    Commits {
        /// Signed commits, in per-author order.
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
}

pub use behaviour::{Behaviour, BehaviourEvent};

/// The behaviour (its derived event enum is generated without docs).
#[allow(missing_docs)]
mod behaviour {
    use std::sync::{Arc, Mutex};

    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{connection_limits, identify, identity, kad, ping, relay, rendezvous};

    use super::gate::{Gate, GateState};
    use super::{P2pOptions, PairCodec, SyncCodec, PAIR_PROTOCOL, SYNC_PROTOCOL};
    use crate::error::Result;

    /// The node's network behaviour, the same on every target (mDNS is the
    /// platform's, or nothing where there is none). The gate comes first:
    /// it refuses a connection before any other behaviour sees it.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        gate: Gate,
        limits: connection_limits::Behaviour,
        identify: identify::Behaviour,
        ping: ping::Behaviour,
        kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
        mdns: Toggle<crate::platform::Mdns>,
        /// Reservations on relays (bootstrap nodes) and relayed connections:
        /// how two browsers, or devices behind NATs, reach each other.
        pub(super) relay: relay::client::Behaviour,
        /// Finds the device that offers a pairing code through a bootstrap
        /// node (a browser has no mDNS).
        pub(super) rendezvous: rendezvous::client::Behaviour,
        pub(super) sync: request_response::Behaviour<SyncCodec>,
        pub(super) pair: request_response::Behaviour<PairCodec>,
        pub(super) live: libp2p_stream::Behaviour,
    }

    impl Behaviour {
        /// The behaviour for `keypair` with `options`, gated by `gate`, with
        /// the relay client that goes with the swarm's relayed transport.
        pub fn new(
            keypair: &identity::Keypair,
            options: &P2pOptions,
            gate: Arc<Mutex<GateState>>,
            relay: relay::client::Behaviour,
        ) -> Result<Behaviour> {
            let peer_id = keypair.public().to_peer_id();
            let kad = options.dht.then(|| {
                let mut kad = kad::Behaviour::new(peer_id, kad::store::MemoryStore::new(peer_id));
                kad.set_mode(Some(crate::platform::KAD_MODE));
                kad
            });
            let mdns = if options.mdns {
                Some(crate::platform::mdns(peer_id)?)
            } else {
                None
            };
            Ok(Behaviour {
                gate: Gate::new(gate),
                // Handshake floods and connection hoarding: bounded.
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(super::MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(super::MAX_INCOMING))
                        .with_max_established_per_peer(Some(super::MAX_PER_PEER)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/persist/1".into(),
                    keypair.public(),
                )),
                ping: ping::Behaviour::default(),
                kad: kad.into(),
                mdns: mdns.into(),
                relay,
                rendezvous: rendezvous::client::Behaviour::new(keypair.clone()),
                sync: request_response::Behaviour::new(
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
                pair: request_response::Behaviour::new(
                    [(PAIR_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(std::time::Duration::from_secs(30)),
                ),
                live: libp2p_stream::Behaviour::new(),
            })
        }
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

/// A pairing code this device offers, and the outcome when someone uses it.
pub struct PendingPairing {
    code: Zeroizing<String>,
    expires_at_ms: u64,
    outcome: oneshot::Receiver<Result<PeerId>>,
}

impl std::fmt::Debug for PendingPairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPairing")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

impl PendingPairing {
    /// The code to give the other device (`ABCD-7KQ2`), out of band.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// When the code stops working (wall-clock milliseconds).
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    /// Waits until a device pairs with the code (its peer id), or the code
    /// fails: a wrong guess burns it (`PAIRING_CODE_INVALID`), it expires
    /// (`PAIRING_CODE_EXPIRED`), or the node stops.
    pub async fn paired(self) -> Result<PeerId> {
        self.outcome.await.map_err(|_| stopped())?
    }
}

/// Commands from the [`P2p`] handle to the node's loop.
enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr, oneshot::Sender<Result<()>>),
    CreateCode {
        ttl_ms: u64,
        invite: bool,
        reply: oneshot::Sender<Result<PendingPairing>>,
    },
    Pair {
        code: PairingCode,
        host: Option<Multiaddr>,
        label: String,
        done: oneshot::Sender<Result<PeerId>>,
    },
    Shutdown,
}

/// A running P2P node of a store.
#[derive(Clone)]
pub struct P2p {
    peer_id: PeerId,
    replica: Arc<dyn replica::Replica>,
    commands: mpsc::UnboundedSender<Command>,
    gate: Arc<Mutex<gate::GateState>>,
    /// Event subscribers, shared with the loop: one that subscribes sees
    /// every event emitted after `events()` returned.
    subscribers: Subscribers,
}

/// Where the node's events go.
pub(crate) struct Subscribers<E = P2pEvent>(Arc<Mutex<Vec<mpsc::UnboundedSender<E>>>>);

impl<E> Default for Subscribers<E> {
    fn default() -> Self {
        Subscribers(Arc::default())
    }
}

impl<E> Clone for Subscribers<E> {
    fn clone(&self) -> Self {
        Subscribers(self.0.clone())
    }
}

impl<E: Clone> Subscribers<E> {
    /// A receiver of every event published from now on.
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<E> {
        let (tx, rx) = mpsc::unbounded();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    /// Sends `event` to every subscriber still listening.
    pub(crate) fn publish(&self, event: &E) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.unbounded_send(event.clone()).is_ok());
    }
}

impl std::fmt::Debug for P2p {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2p")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

/// `addr` ending with `/p2p/<peer>` (once: relayed addresses and
/// addresses from rendezvous records may already end with it).
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

fn stopped() -> Error {
    Error::InvalidOptions("the P2P node has stopped".into())
}

impl P2p {
    /// This node's peer id (the device's Ed25519 public key).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A stream of the node's events from now on.
    pub fn events(&self) -> mpsc::UnboundedReceiver<P2pEvent> {
        self.subscribers.subscribe()
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .unbounded_send(command(tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// The addresses the node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.ask(Command::ListenAddrs).await
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        self.ask(Command::Connected).await
    }

    /// Dials `addr`.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Connections the gate refused so far (non-members).
    pub fn refused_connections(&self) -> u64 {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).refused
    }

    /// A single-use pairing code, valid for 10 minutes: give it to the
    /// device that should join (it calls [`P2p::pair`]).
    pub async fn create_pairing_code(&self) -> Result<PendingPairing> {
        self.create_pairing_code_valid_for(pairing::DEFAULT_CODE_TTL_MS)
            .await
    }

    /// A pairing code valid for `ttl_ms` milliseconds.
    pub async fn create_pairing_code_valid_for(&self, ttl_ms: u64) -> Result<PendingPairing> {
        self.ask(|reply| Command::CreateCode {
            ttl_ms,
            invite: false,
            reply,
        })
        .await?
    }

    /// An invite (`persist-invite-v1-...`): like a pairing code, with a
    /// 130-bit secret, the store id and this device's addresses, for a
    /// device that gets it by copy (a message, a QR code) rather than by
    /// typing. Single-use; valid for `ttl_ms` milliseconds. The joining
    /// device calls [`P2p::accept_invite`]; the keys travel as in pairing,
    /// sealed under the key the exchange agrees.
    pub async fn create_invite(&self, ttl_ms: u64) -> Result<PendingPairing> {
        self.ask(|reply| Command::CreateCode {
            ttl_ms,
            invite: true,
            reply,
        })
        .await?
    }

    /// Joins the store of the device that made `invite` (see
    /// [`P2p::create_invite`]), dialling the addresses it names in turn.
    pub async fn accept_invite(&self, invite: &str) -> Result<PeerId> {
        let invite = pairing::Invite::parse(invite)?;
        let mut last = Error::PairingFailed("the invite names no address".into());
        for addr in &invite.addrs {
            // Relayed addresses already end with the host's id.
            let addr = with_peer(addr, invite.host);
            let label = self.replica.name();
            let code = invite.code.clone();
            match self
                .ask(|done| Command::Pair {
                    code,
                    host: Some(addr),
                    label,
                    done,
                })
                .await?
            {
                Ok(peer) => {
                    if self.replica.store_id() != invite.store {
                        return Err(Error::PairingFailed(
                            "the inviting device offered another store than its invite names"
                                .into(),
                        ));
                    }
                    return Ok(peer);
                }
                // Unreachable at this address: try the next one.
                Err(e @ Error::PairingFailed(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        // Last, the rendezvous points of the bootstrap nodes, where the
        // inviting device registered the invite's nameplate (how a browser,
        // reachable only through a relay, is found).
        let bootstrapped = !self
            .gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bootstrap
            .is_empty();
        if bootstrapped {
            let label = self.replica.name();
            let code = invite.code.clone();
            let peer = self
                .ask(|done| Command::Pair {
                    code,
                    host: None,
                    label,
                    done,
                })
                .await??;
            if peer != invite.host || self.replica.store_id() != invite.store {
                return Err(Error::PairingFailed(
                    "another device than the invite names answered".into(),
                ));
            }
            return Ok(peer);
        }
        Err(last)
    }

    /// Joins the store of the device that created `code`: found at `host`
    /// (its address), or among the peers this node is connected to or
    /// meets (mDNS on a LAN). This device's store must not hold writes of
    /// its own yet: it adopts the other's store id, membership and keys.
    /// Resolves with the host's peer id once this device is a member.
    pub async fn pair(&self, code: &str, host: Option<Multiaddr>) -> Result<PeerId> {
        let code = PairingCode::parse(code)?;
        let label = self.replica.name();
        self.ask(|done| Command::Pair {
            code,
            host,
            label,
            done,
        })
        .await?
    }

    /// The devices trusted to sync the store (this one included).
    pub fn trusted_peers(&self) -> Result<Vec<PeerId>> {
        self.replica
            .members()
            .current
            .keys()
            .map(peer_id_of)
            .collect()
    }

    /// Removes `peer` from the store's membership on every replica, closes
    /// its connections and (encrypted stores) rotates the data key so it
    /// cannot read later writes. See `Store::revoke`.
    pub async fn revoke_trust(&self, peer: PeerId) -> Result<()> {
        let device = device_of(&peer).ok_or_else(|| {
            Error::NotTrusted(format!("{peer} is not the peer id of a Persist device"))
        })?;
        self.replica.revoke(device).await
    }

    /// Stops the node (connections close; the store stays open).
    pub fn shutdown(&self) {
        let _ = self.commands.unbounded_send(Command::Shutdown);
    }
}

/// Starts a node for `store` on `swarm` (built by the platform with a
/// behaviour gated by `gate`); returns the handle at once.
pub(crate) fn start(
    replica: Arc<dyn replica::Replica>,
    swarm: libp2p::Swarm<Behaviour>,
    options: &P2pOptions,
    gate: Arc<Mutex<gate::GateState>>,
) -> Result<P2p> {
    let peer_id = *swarm.local_peer_id();
    let (commands, inbox) = mpsc::unbounded();
    let subscribers = Subscribers::default();
    node::run(
        replica.clone(),
        swarm,
        options,
        gate.clone(),
        subscribers.clone(),
        inbox,
    )?;
    Ok(P2p {
        peer_id,
        replica,
        commands,
        gate,
        subscribers,
    })
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
                members: [0; 32],
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
