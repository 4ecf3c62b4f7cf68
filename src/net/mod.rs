//! P2P replication over libp2p (issue 6, first steps): the network
//! behaviour, the sync protocol and the node's event loop, all
//! target-neutral. Platform code only builds the transports and runs the
//! loop (`platform::native::net`).
//!
//! Sync protocol `/persist/sync/1` (request-response, one message each way,
//! length-prefixed `postcard`, at most [`MAX_MESSAGE_BYTES`], pages of at
//! most 8 MiB of commits):
//!
//! ```text
//! Pull { store, have: [(author, seq)], limit }  ->  Commits { commits, more }
//! Push { store, commits }                         ->  Ack { applied, rejected }
//! ```
//!
//! On a new connection each side pulls what it lacks (its version vector
//! says what it has), in pages of [`PULL_LIMIT`] until `more` is false.
//! After a local commit a node pushes each connected peer the commits it
//! has not seen (what that peer's last pull or push told us it has).
//! Commits travel as their authors signed them (sealed for encrypted
//! stores), and every received commit goes through `Store::ingest`:
//! signature, store binding, order and size are checked before storage.
//! Not yet: membership and pairing (connections from any peer are served),
//! range-based reconciliation for peers that never met, progress events.

use std::collections::{BTreeMap, HashMap};
use std::io;

use futures::channel::{mpsc, oneshot};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};

pub use libp2p::{Multiaddr, PeerId};

use crate::change::{SignedCommit, StoreId};
use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceIdentity};
use crate::store::Store;

/// The sync protocol's name and version.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/sync/1");
/// Largest sync message read or written: one commit of the largest size a
/// store accepts by default, plus room for framing.
pub const MAX_MESSAGE_BYTES: usize = crate::names::DEFAULT_MAX_COMMIT_BYTES + (1 << 20);
/// Commits per pulled page.
pub const PULL_LIMIT: u32 = 1_000;
/// Bytes of commits per message page (a single larger commit goes alone).
const PAGE_BYTES: usize = 8 << 20;

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

/// Options of [`Store::enable_p2p`].
#[derive(Debug, Clone)]
pub struct P2pOptions {
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/tcp/0`,
    /// `/ip4/0.0.0.0/udp/0/quic-v1`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers to dial at start (with `/p2p/<peer id>` to also seed the DHT).
    pub bootstrap_peers: Vec<Multiaddr>,
    /// Find peers on the local network with mDNS (multicast on every
    /// interface: keep it off outside a network namespace in tests). Off by
    /// default (`PERSIST_MDNS=on` turns the default on) until connection
    /// gating lands.
    pub mdns: bool,
    /// Run a Kademlia DHT.
    pub dht: bool,
    /// Count the bytes of TCP connections (natively; QUIC is then off).
    pub count_bytes: Option<ByteCounter>,
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
            // Off until connection gating lands (a node serves any peer that
            // names its store); then on, with PERSIST_MDNS=off to keep
            // multicast off the host in tests and the demo.
            mdns: matches!(
                std::env::var("PERSIST_MDNS").as_deref(),
                Ok("1") | Ok("on") | Ok("true")
            ),
            dht: true,
            count_bytes: None,
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
        /// Commits refused (invalid, or not yet in order).
        rejected: usize,
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
        /// At most this many commits.
        limit: u32,
    },
    /// Commits the requester believes the responder lacks.
    Push {
        /// The store.
        store: StoreId,
        /// Signed commits, in per-author order.
        commits: Vec<SignedCommit>,
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
    /// The request was refused (another store, a malformed request).
    Refused(String),
}

/// Length-prefixed `postcard` messages, bounded.
#[derive(Debug, Clone, Default)]
pub struct SyncCodec;

async fn read_message<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync message of {len} bytes exceeds {MAX_MESSAGE_BYTES}"),
        ));
    }
    // Grown as bytes arrive: a peer announcing a large message and sending
    // little costs little memory.
    let mut bytes = Vec::with_capacity(len.min(64 << 10));
    (&mut *io).take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "sync message shorter than its length",
        ));
    }
    postcard::from_bytes(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_message<T, M>(io: &mut T, message: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let bytes =
        postcard::to_stdvec(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sync message too large",
        ));
    }
    // One write: one encrypted transport frame for the whole message.
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    io.write_all(&framed).await?;
    io.close().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &response).await
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

/// The behaviour (its derived event enum is generated without docs).
#[allow(missing_docs)]
mod behaviour {
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{identify, identity, kad, ping};

    use super::{P2pOptions, SyncCodec, SYNC_PROTOCOL};
    use crate::error::Result;

    /// The node's network behaviour, the same on every target (mDNS is the
    /// platform's, or nothing where there is none).
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        identify: identify::Behaviour,
        ping: ping::Behaviour,
        kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
        mdns: Toggle<crate::platform::Mdns>,
        pub(super) sync: request_response::Behaviour<SyncCodec>,
    }

    impl Behaviour {
        /// The behaviour for `keypair` with `options`.
        pub fn new(keypair: &identity::Keypair, options: &P2pOptions) -> Result<Behaviour> {
            let peer_id = keypair.public().to_peer_id();
            let kad = options.dht.then(|| {
                let mut kad = kad::Behaviour::new(peer_id, kad::store::MemoryStore::new(peer_id));
                kad.set_mode(Some(kad::Mode::Server));
                kad
            });
            let mdns = if options.mdns {
                Some(crate::platform::mdns(peer_id)?)
            } else {
                None
            };
            Ok(Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/persist/1".into(),
                    keypair.public(),
                )),
                ping: ping::Behaviour::default(),
                kad: kad.into(),
                mdns: mdns.into(),
                sync: request_response::Behaviour::new(
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
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

/// Commands from the [`P2p`] handle to the node's loop.
enum Command {
    Subscribe(mpsc::UnboundedSender<P2pEvent>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr, oneshot::Sender<Result<()>>),
    Shutdown,
}

/// A running P2P node of a store.
#[derive(Clone)]
pub struct P2p {
    peer_id: PeerId,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for P2p {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2p")
            .field("peer_id", &self.peer_id)
            .finish()
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
        let (tx, rx) = mpsc::unbounded();
        let _ = self.commands.unbounded_send(Command::Subscribe(tx));
        rx
    }

    /// The addresses the node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .unbounded_send(Command::ListenAddrs(tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .unbounded_send(Command::Connected(tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Dials `addr`.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .unbounded_send(Command::Dial(addr, tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops the node (connections close; the store stays open).
    pub fn shutdown(&self) {
        let _ = self.commands.unbounded_send(Command::Shutdown);
    }
}

/// Records in `known` that the peer will hold `commits` (optimistic: its
/// next pull or ack corrects it).
fn advance(known: &mut BTreeMap<DeviceId, u64>, commits: &[SignedCommit]) {
    for (author, seq) in commits.iter().filter_map(SignedCommit::author_seq) {
        let entry = known.entry(author).or_insert(0);
        *entry = (*entry).max(seq);
    }
}

/// Sends `event` to every subscriber still listening.
fn emit(subscribers: &mut Vec<mpsc::UnboundedSender<P2pEvent>>, event: P2pEvent) {
    subscribers.retain(|s| s.unbounded_send(event.clone()).is_ok());
}

/// What the loop knows of each connected peer.
#[derive(Default)]
struct PeerState {
    /// The peer's version vector as last learnt.
    known: BTreeMap<DeviceId, u64>,
}

/// Runs a node for `store` on `swarm` (built by the platform) until
/// shutdown; returns the handle at once.
pub(crate) fn start(
    store: Store,
    mut swarm: Swarm<Behaviour>,
    options: &P2pOptions,
) -> Result<P2p> {
    for addr in &options.listen_addrs {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::InvalidOptions(format!("cannot listen on {addr}: {e}")))?;
    }
    for addr in &options.bootstrap_peers {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %e, "bootstrap peer not dialled");
        }
    }
    let peer_id = *swarm.local_peer_id();
    let (commands, mut inbox) = mpsc::unbounded();
    let mut local_commits = store.commit_notifications();
    crate::platform::spawn(async move {
        let mut subscribers: Vec<mpsc::UnboundedSender<P2pEvent>> = Vec::new();
        let mut peers: HashMap<PeerId, PeerState> = HashMap::new();
        let mut pulls: HashMap<OutboundRequestId, PeerId> = HashMap::new();
        loop {
            futures::select! {
                command = inbox.next() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(Command::Subscribe(tx)) => subscribers.push(tx),
                    Some(Command::ListenAddrs(tx)) => {
                        let _ = tx.send(swarm.listeners().cloned().collect());
                    }
                    Some(Command::Connected(tx)) => {
                        let _ = tx.send(swarm.connected_peers().copied().collect());
                    }
                    Some(Command::Dial(addr, tx)) => {
                        let result = swarm
                            .dial(addr.clone())
                            .map_err(|e| Error::InvalidOptions(format!("cannot dial {addr}: {e}")));
                        let _ = tx.send(result);
                    }
                },
                _ = local_commits.next() => {
                    // Push each peer what it has not seen.
                    let targets: Vec<(PeerId, Vec<(DeviceId, u64)>)> = peers
                        .iter()
                        .map(|(p, s)| (*p, s.known.iter().map(|(d, n)| (*d, *n)).collect()))
                        .collect();
                    for (peer, known) in targets {
                        match store.commits_missing_from(&known, PULL_LIMIT as usize).await {
                            Ok(commits) if !commits.is_empty() => {
                                // A peer far behind catches up by pulling.
                                let (commits, _) = page_of(commits);
                                if let Some(state) = peers.get_mut(&peer) {
                                    advance(&mut state.known, &commits);
                                }
                                let request = SyncRequest::Push { store: store.store_id(), commits };
                                swarm.behaviour_mut().sync.send_request(&peer, request);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(%peer, code = e.code(), "cannot read commits to push"),
                        }
                    }
                },
                event = swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        emit(&mut subscribers, P2pEvent::Listening(address));
                    }
                    SwarmEvent::ConnectionEstablished { peer_id: peer, num_established, .. }
                        if num_established.get() == 1 =>
                    {
                        peers.insert(peer, PeerState::default());
                        emit(&mut subscribers, P2pEvent::PeerConnected(peer));
                        if let Ok(have) = store.version_vector().await {
                            let request = SyncRequest::Pull { store: store.store_id(), have, limit: PULL_LIMIT };
                            let id = swarm.behaviour_mut().sync.send_request(&peer, request);
                            pulls.insert(id, peer);
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id: peer, num_established: 0, .. } => {
                        peers.remove(&peer);
                        emit(&mut subscribers, P2pEvent::PeerDisconnected(peer));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => {
                        handle_sync(&store, &mut swarm, &mut peers, &mut pulls, &mut subscribers, event).await;
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => {
                        for addr in crate::platform::mdns_discovered(event) {
                            let _ = swarm.dial(addr);
                        }
                    }
                    _ => {}
                },
            }
        }
        tracing::debug!(peer = %swarm.local_peer_id(), "P2P node stopped");
    });
    Ok(P2p { peer_id, commands })
}

async fn handle_sync(
    store: &Store,
    swarm: &mut Swarm<Behaviour>,
    peers: &mut HashMap<PeerId, PeerState>,
    pulls: &mut HashMap<OutboundRequestId, PeerId>,
    subscribers: &mut Vec<mpsc::UnboundedSender<P2pEvent>>,
    event: request_response::Event<SyncRequest, SyncResponse>,
) {
    use request_response::{Event, Message};
    let mut emit = |event: P2pEvent| emit(subscribers, event);
    match event {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            let response = match request {
                SyncRequest::Pull { store: id, .. } | SyncRequest::Push { store: id, .. }
                    if id != store.store_id() =>
                {
                    SyncResponse::Refused("another store".into())
                }
                SyncRequest::Pull { have, limit, .. } => {
                    if let Some(state) = peers.get_mut(&peer) {
                        state.known = have.iter().copied().collect();
                    }
                    let limit = limit.min(PULL_LIMIT) as usize;
                    match store.commits_missing_from(&have, limit + 1).await {
                        Ok(mut commits) => {
                            let over_count = commits.len() > limit;
                            commits.truncate(limit);
                            let (commits, over_bytes) = page_of(commits);
                            if let Some(state) = peers.get_mut(&peer) {
                                advance(&mut state.known, &commits);
                            }
                            SyncResponse::Commits {
                                commits,
                                more: over_count || over_bytes,
                            }
                        }
                        Err(e) => SyncResponse::Refused(e.to_string()),
                    }
                }
                SyncRequest::Push { commits, .. } => {
                    // The pusher has what it pushed: never echo it back.
                    if let Some(state) = peers.get_mut(&peer) {
                        advance(&mut state.known, &commits);
                    }
                    match store.ingest(commits).await {
                        Ok(report) => {
                            emit(P2pEvent::Synced {
                                peer,
                                applied: report.applied,
                                rejected: report.rejected.len(),
                            });
                            let have = store.version_vector().await.unwrap_or_default();
                            // Pushed commits that skip some of their author's
                            // (the pusher thought we had them): pull the gap.
                            if report
                                .rejected
                                .iter()
                                .any(|(_, r)| matches!(r, crate::error::RejectReason::Gap { .. }))
                            {
                                let request = SyncRequest::Pull {
                                    store: store.store_id(),
                                    have: have.clone(),
                                    limit: PULL_LIMIT,
                                };
                                let id = swarm.behaviour_mut().sync.send_request(&peer, request);
                                pulls.insert(id, peer);
                            }
                            SyncResponse::Ack {
                                applied: report.applied as u32,
                                rejected: report.rejected.len() as u32,
                                have: (!report.rejected.is_empty()).then_some(have),
                            }
                        }
                        Err(e) => SyncResponse::Refused(e.to_string()),
                    }
                }
            };
            let _ = swarm.behaviour_mut().sync.send_response(channel, response);
        }
        Event::Message {
            peer,
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => match response {
            SyncResponse::Commits { commits, more } => {
                pulls.remove(&request_id);
                if let Some(state) = peers.get_mut(&peer) {
                    advance(&mut state.known, &commits);
                }
                let count = commits.len();
                match store.ingest(commits).await {
                    Ok(report) => {
                        if count > 0 {
                            emit(P2pEvent::Synced {
                                peer,
                                applied: report.applied,
                                rejected: report.rejected.len(),
                            });
                        }
                        // Keep paging while pages make progress (duplicates
                        // count: a relay may have delivered them first).
                        if more && report.applied + report.duplicates > 0 {
                            if let Ok(have) = store.version_vector().await {
                                let request = SyncRequest::Pull {
                                    store: store.store_id(),
                                    have,
                                    limit: PULL_LIMIT,
                                };
                                let id = swarm.behaviour_mut().sync.send_request(&peer, request);
                                pulls.insert(id, peer);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(%peer, code = e.code(), "pulled commits not applied"),
                }
            }
            SyncResponse::Ack {
                have: Some(have), ..
            } => {
                if let Some(state) = peers.get_mut(&peer) {
                    state.known = have.into_iter().collect();
                }
            }
            SyncResponse::Ack { have: None, .. } => {}
            SyncResponse::Refused(reason) => {
                pulls.remove(&request_id);
                tracing::warn!(%peer, %reason, "sync request refused");
            }
        },
        Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            pulls.remove(&request_id);
            tracing::debug!(%peer, %error, "sync request failed");
        }
        Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "sync request not answered");
        }
        Event::ResponseSent { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

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
                limit: 10,
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
