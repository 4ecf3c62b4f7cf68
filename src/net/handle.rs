//! The handle of a running node (`P2p`), the commands it sends the loop,
//! and where the loop's events go.

use std::sync::{Arc, Mutex};

use futures::channel::{mpsc, oneshot};
use futures::SinkExt;
use zeroize::Zeroizing;

use super::{
    device_of, gate, node, pairing, peer_id_of, replica, Behaviour, Multiaddr, P2pEvent,
    P2pOptions, PairingCode, PeerId, Protocol,
};
use crate::error::{Error, Result};

/// A pairing code this device offers, and the outcome when someone uses it.
pub struct PendingPairing {
    pub(super) code: Zeroizing<String>,
    pub(super) expires_at_ms: u64,
    pub(super) outcome: oneshot::Receiver<Result<PeerId>>,
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

/// How long a device that proved a code waits for the user's answer
/// before it is refused (within the joiner's request timeout).
pub const CONFIRM_MS: u64 = 50_000;

/// How a pairing code works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeOptions {
    /// How long the code is valid, in milliseconds.
    pub ttl_ms: u64,
    /// Whether the user accepts the joining device (label and fingerprint
    /// shown) before it receives the store's keys.
    pub confirm: bool,
}

impl Default for CodeOptions {
    fn default() -> CodeOptions {
        CodeOptions {
            ttl_ms: pairing::DEFAULT_CODE_TTL_MS,
            confirm: false,
        }
    }
}

/// Commands from the [`P2p`] handle to the node's loop.
pub(crate) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Connected(oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr, oneshot::Sender<Result<()>>),
    CreateCode {
        ttl_ms: u64,
        invite: bool,
        confirm: bool,
        reply: oneshot::Sender<Result<PendingPairing>>,
    },
    Confirm {
        peer: PeerId,
        accept: bool,
        reply: oneshot::Sender<Result<()>>,
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
    commands: mpsc::Sender<Command>,
    gate: Arc<Mutex<gate::GateState>>,
    /// Event subscribers, shared with the loop: one that subscribes sees
    /// every event emitted after `events()` returned.
    subscribers: Subscribers,
}

/// Commands waiting for the node's loop, at most (callers then wait).
pub(crate) const COMMAND_QUEUE: usize = 32;
/// Events waiting for one subscriber, at most: a subscriber that does not
/// keep up misses the events past this (and a warning says so) instead of
/// growing a queue without end.
pub(crate) const EVENT_QUEUE: usize = 1_024;

/// Where the node's events go.
pub(crate) struct Subscribers<E = P2pEvent>(Arc<Mutex<Vec<mpsc::Sender<E>>>>);

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
    pub(crate) fn subscribe(&self) -> mpsc::Receiver<E> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    /// Sends `event` to every subscriber still listening (one whose queue
    /// is full misses it).
    pub(crate) fn publish(&self, event: &E) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_mut(|s| match s.try_send(event.clone()) {
                Ok(()) => true,
                Err(e) if e.is_full() => {
                    tracing::warn!(
                        "an event subscriber keeps more than {EVENT_QUEUE} events unread: \
                         this event is dropped for it"
                    );
                    true
                }
                Err(_) => false,
            });
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
/// addresses found at meeting points may already end with it).
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

pub(crate) fn stopped() -> Error {
    Error::P2pStopped
}

impl P2p {
    /// This node's peer id (the device's Ed25519 public key).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A stream of the node's events from now on.
    pub fn events(&self) -> mpsc::Receiver<P2pEvent> {
        self.subscribers.subscribe()
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .clone()
            .send(command(tx))
            .await
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
        self.create_pairing_code_with(CodeOptions {
            ttl_ms,
            ..CodeOptions::default()
        })
        .await
    }

    /// A pairing code with `options`: its lifetime, and whether the user
    /// confirms the joining device before it receives anything (see
    /// [`P2pEvent::PairingRequest`](crate::net::P2pEvent::PairingRequest)).
    pub async fn create_pairing_code_with(&self, options: CodeOptions) -> Result<PendingPairing> {
        self.ask(|reply| Command::CreateCode {
            ttl_ms: options.ttl_ms,
            invite: false,
            confirm: options.confirm,
            reply,
        })
        .await?
    }

    /// Accepts (or refuses) the device that proved a code made with
    /// [`CodeOptions::confirm`]: accepted, it receives the store's keys
    /// and membership; refused, it gets `PAIRING_FAILED` and may not try
    /// again from its address for a while. `PAIRING_FAILED` here when no
    /// device with that peer id waits.
    pub async fn confirm_pairing(&self, peer: PeerId, accept: bool) -> Result<()> {
        self.ask(|reply| Command::Confirm {
            peer,
            accept,
            reply,
        })
        .await?
    }

    /// This device's fingerprint (`XXXX-XXXX`, from its peer id): what the
    /// device offering a code with confirmation shows its user for this one.
    pub fn fingerprint(&self) -> String {
        pairing::fingerprint(&self.peer_id)
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
            confirm: false,
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
        // Last, the meeting points of the bootstrap nodes, where the
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
        // A sender's first message always has room: the loop gets this
        // even when callers fill the queue.
        let _ = self.commands.clone().try_send(Command::Shutdown);
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
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
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
