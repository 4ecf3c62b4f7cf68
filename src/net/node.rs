//! The node's event loop: connections, the sync protocol, pairing and the
//! gate's view of the membership. Runtime-neutral (the platform spawns it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, relay, rendezvous, Multiaddr, PeerId, Swarm};
use zeroize::Zeroizing;

use super::codec::frame;
use super::gate::GateState;
use super::live::{self, LiveMessage};
use super::pairing::{welcome_context, HostSession, Invite, JoinerSession, PairingCode};
use super::{
    advance, device_of, page_of, peer_id_of, Behaviour, BehaviourEvent, Command, P2pEvent,
    P2pOptions, PairRequest, PairResponse, PendingPairing, Subscribers, SyncRequest, SyncResponse,
    PULL_LIMIT,
};
use crate::change::SignedCommit;
use crate::crypto::device_box::{open_once, seal_once};
use crate::error::{Error, RejectReason, Result};
use crate::identity::DeviceId;
use crate::membership::MembershipWire;
use crate::store::{Store, Welcome};

/// How long a started pairing exchange may take.
const EXCHANGE_MS: u64 = 60_000;
/// How often the loop looks at expiries.
const TICK_MS: u64 = 1_000;
/// Empty rendezvous lookups (one per tick) before a code counts as
/// unknown.
const LOOKUPS_BEFORE_GIVING_UP: u32 = 10;
/// The relay protocol a bootstrap node offers when it relays.
const RELAY_HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";
/// Shortest registration rendezvous servers accept from Persist nodes
/// (`persist node` sets its minimum to this).
pub(super) const MIN_RENDEZVOUS_TTL_S: u64 = 60;

/// How long a store registration lasts on a bootstrap node, and how
/// often (in ticks) it is renewed and the store's other devices looked up.
const PRESENCE_TTL_S: u64 = 600;
const PRESENCE_TICKS: u32 = 30;

/// The rendezvous namespace under which the devices of `store` meet on a
/// bootstrap node: a hash of the store id, so the node learns which peers
/// share a store (it sees their connections anyway), not the store id.
fn store_namespace(store: &crate::change::StoreId) -> Option<rendezvous::Namespace> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"persist/rendezvous/store/v1\0")
        .chain_update(store.as_bytes())
        .finalize();
    rendezvous::Namespace::new(format!("persist/store/{}", hex::encode(&digest[..16]))).ok()
}

/// The rendezvous namespace under which a device offering a code with
/// `nameplate` registers (the nameplate is public: it names a pending
/// code, and says nothing of its secret).
fn pairing_namespace(nameplate: &str) -> Option<rendezvous::Namespace> {
    rendezvous::Namespace::new(format!("persist/pair/{nameplate}")).ok()
}

/// What the loop knows of a connected peer.
#[derive(Default)]
struct PeerState {
    /// The peer's version vector as last learnt.
    known: BTreeMap<DeviceId, u64>,
    /// The digest of the peer's membership log as last learnt.
    members: Option<[u8; 32]>,
    /// True once the peer told its version vector (its pull): pushes wait
    /// for it, so a peer that is catching up pulls in pages (with
    /// progress) instead of receiving pushes.
    heard: bool,
    /// True once this node pulled from the peer (a peer that pulls from us
    /// first, such as a device that just joined, is pulled back).
    pulled: bool,
    /// The peer's version vector as it last told it (its pull, an ack or
    /// a `Have`): where `known` restarts when a live stream breaks.
    confirmed: BTreeMap<DeviceId, u64>,
    /// Frames for the live stream to the peer, once opened.
    live: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// The live stream failed on this connection: pushes use
    /// request-response.
    live_failed: bool,
}

/// A code this device offered.
struct HostCode {
    code: PairingCode,
    expires_at: u64,
    outcome: oneshot::Sender<Result<PeerId>>,
}

/// An exchange this device hosts, after the joiner's first move.
struct Hosting {
    session: HostSession,
    label: String,
    expires_at: u64,
    outcome: oneshot::Sender<Result<PeerId>>,
}

/// This device joining another's store.
struct Joining {
    code: Option<PairingCode>,
    /// The host, once known (from the address, or the first peer met).
    host: Option<PeerId>,
    label: String,
    session: Option<JoinerSession>,
    welcome_key: Option<Zeroizing<[u8; 32]>>,
    /// Set when this side found the code wrong: it tells the host (so
    /// both sides report it) before giving up.
    failed: Option<Error>,
    /// Rendezvous lookups of the code's nameplate that found no device.
    lookups_empty: u32,
    expires_at: u64,
    done: oneshot::Sender<Result<PeerId>>,
}

struct Node {
    store: Store,
    swarm: Swarm<Behaviour>,
    /// Opens live streams.
    control: libp2p_stream::Control,
    /// Live streams that failed (their peer).
    live_failed: mpsc::UnboundedSender<PeerId>,
    gate: Arc<Mutex<GateState>>,
    subscribers: Subscribers,
    peers: HashMap<PeerId, PeerState>,
    codes: HashMap<String, HostCode>,
    hosting: HashMap<PeerId, Hosting>,
    joining: Option<Joining>,
    /// Members as the gate last saw them.
    members: BTreeSet<DeviceId>,
    /// Addresses this node dialled its bootstrap peers at.
    bootstrap_addrs: HashMap<PeerId, Multiaddr>,
    /// Relays this node holds (or asked for) a reservation on.
    relays: BTreeSet<PeerId>,
    /// Connected bootstrap nodes that run a rendezvous point (identify
    /// said so): where codes and the store's devices are registered.
    rendezvous_points: BTreeSet<PeerId>,
    /// Ticks until the store's registration is renewed.
    presence_in: u32,
}

/// Starts the loop for `store` on `swarm` in the background.
pub(super) fn run(
    store: Store,
    mut swarm: Swarm<Behaviour>,
    options: &P2pOptions,
    gate: Arc<Mutex<GateState>>,
    subscribers: Subscribers,
    inbox: mpsc::UnboundedReceiver<Command>,
) -> Result<()> {
    for addr in &options.listen_addrs {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::InvalidOptions(format!("cannot listen on {addr}: {e}")))?;
    }
    {
        let mut gate = gate.lock().unwrap_or_else(|p| p.into_inner());
        for addr in &options.bootstrap_peers {
            match addr.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(peer)) => {
                    gate.bootstrap.insert(peer);
                }
                _ => gate.bootstrap_addrs.push(addr.clone()),
            }
        }
    }
    let mut control = swarm.behaviour().live.new_control();
    let (live_inbox, live_in) = mpsc::unbounded();
    live::accept(&mut control, live_inbox)?;
    let (live_failed, failed_in) = mpsc::unbounded();
    let mut node = Node {
        store,
        swarm,
        control,
        live_failed,
        gate,
        subscribers,
        peers: HashMap::new(),
        codes: HashMap::new(),
        hosting: HashMap::new(),
        joining: None,
        members: BTreeSet::new(),
        bootstrap_addrs: HashMap::new(),
        relays: BTreeSet::new(),
        rendezvous_points: BTreeSet::new(),
        presence_in: 0,
    };
    node.refresh_members();
    for addr in &options.bootstrap_peers {
        if let Err(e) = node.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %e, "bootstrap peer not dialled");
        }
    }
    crate::platform::spawn(node.run(inbox, live_in, failed_in));
    Ok(())
}

/// What receiving pushed commits did.
struct Received {
    applied: usize,
    rejected: usize,
    /// This replica's version vector when some commits were refused (the
    /// pusher's idea of it was wrong).
    have: Option<Vec<(DeviceId, u64)>>,
}

/// The membership log to send a peer whose digest is `theirs`, if it
/// differs from ours.
async fn members_for(store: &Store, theirs: Option<[u8; 32]>) -> Option<MembershipWire> {
    let ours = store.membership_digest().await;
    if theirs == Some(ours) {
        None
    } else {
        Some(store.membership().await)
    }
}

/// How many commits a replica with version vector `have` lacks from `store`.
async fn lacking(store: &Store, have: &[(DeviceId, u64)]) -> u64 {
    let have: BTreeMap<DeviceId, u64> = have.iter().copied().collect();
    store
        .version_vector()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(author, seq)| seq.saturating_sub(have.get(&author).copied().unwrap_or(0)))
        .sum()
}

fn now() -> u64 {
    crate::platform::now_ms()
}

impl Node {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        mut live_in: mpsc::UnboundedReceiver<(PeerId, LiveMessage)>,
        mut failed_in: mpsc::UnboundedReceiver<PeerId>,
    ) {
        let mut local_changes = self.store.commit_notifications();
        let mut tick = Box::pin(crate::platform::sleep_ms(TICK_MS).fuse());
        loop {
            futures::select! {
                command = inbox.next() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.command(command),
                },
                _ = local_changes.next() => {
                    self.refresh_members();
                    self.push_to_peers().await;
                },
                message = live_in.next() => {
                    if let Some((peer, message)) = message {
                        self.live_message(peer, message).await;
                    }
                },
                peer = failed_in.next() => {
                    if let Some(peer) = peer {
                        self.live_broke(peer).await;
                    }
                },
                _ = tick => {
                    self.expire();
                    self.look_up_host();
                    self.presence_in = self.presence_in.saturating_sub(1);
                    if self.presence_in == 0 {
                        self.announce_presence();
                    }
                    tick = Box::pin(crate::platform::sleep_ms(TICK_MS).fuse());
                },
                event = self.swarm.select_next_some() => self.swarm_event(event).await,
            }
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "P2P node stopped");
    }

    fn emit(&mut self, event: P2pEvent) {
        self.subscribers.publish(&event);
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        device_of(peer).is_some_and(|d| self.members.contains(&d))
    }

    /// Brings the gate up to date with the membership and pairing state,
    /// and closes connections it no longer admits.
    fn refresh_members(&mut self) {
        let now: BTreeSet<DeviceId> = self.store.members().current.keys().copied().collect();
        let added: Vec<DeviceId> = now.difference(&self.members).copied().collect();
        let removed: Vec<DeviceId> = self.members.difference(&now).copied().collect();
        let first = self.members.is_empty();
        self.members = now;
        {
            let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            gate.members = self
                .members
                .iter()
                .filter_map(|d| peer_id_of(d).ok())
                .collect();
            gate.pairing_open =
                !self.codes.is_empty() || !self.hosting.is_empty() || self.joining.is_some();
        }
        if !first {
            for device in added {
                if let Ok(peer) = peer_id_of(&device) {
                    self.emit(P2pEvent::MemberAdded(peer));
                }
            }
            for device in removed {
                if let Ok(peer) = peer_id_of(&device) {
                    self.emit(P2pEvent::MemberRemoved(peer));
                }
            }
        }
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let refused: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| !gate.admits(p))
            .copied()
            .collect();
        drop(gate);
        for peer in refused {
            tracing::info!(%peer, "closing the connections of a peer that is not a member");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Shutdown => {}
            Command::ListenAddrs(tx) => {
                let _ = tx.send(self.swarm.listeners().cloned().collect());
            }
            Command::Connected(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Dial(addr, tx) => {
                let result = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| Error::InvalidOptions(format!("cannot dial {addr}: {e}")));
                let _ = tx.send(result);
            }
            Command::CreateCode {
                ttl_ms,
                invite,
                reply,
            } => {
                let _ = reply.send(self.create_code(ttl_ms, invite));
            }
            Command::Pair {
                code,
                host,
                label,
                done,
            } => self.start_joining(code, host, label, done),
        }
    }

    fn create_code(&mut self, ttl_ms: u64, invite: bool) -> Result<PendingPairing> {
        let generate = if invite {
            PairingCode::generate_long
        } else {
            PairingCode::generate
        };
        let mut code = generate()?;
        while self.codes.contains_key(code.nameplate()) {
            code = generate()?;
        }
        let expires_at = now().saturating_add(ttl_ms);
        let (outcome_tx, outcome) = oneshot::channel();
        let text = if invite {
            Invite {
                code: code.clone(),
                store: self.store.store_id(),
                host: *self.swarm.local_peer_id(),
                addrs: self.swarm.listeners().cloned().collect(),
            }
            .to_text()
        } else {
            code.text()
        };
        tracing::info!(nameplate = code.nameplate(), "pairing code created");
        self.codes.insert(
            code.nameplate().to_string(),
            HostCode {
                code,
                expires_at,
                outcome: outcome_tx,
            },
        );
        self.refresh_members();
        self.announce_codes();
        Ok(PendingPairing {
            code: text,
            expires_at_ms: expires_at,
            outcome,
        })
    }

    fn start_joining(
        &mut self,
        code: PairingCode,
        host: Option<Multiaddr>,
        label: String,
        done: oneshot::Sender<Result<PeerId>>,
    ) {
        if self.joining.is_some() {
            let _ = done.send(Err(Error::PairingFailed(
                "another pairing is in progress".into(),
            )));
            return;
        }
        let host_peer = host.as_ref().and_then(|addr| match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
            _ => None,
        });
        self.joining = Some(Joining {
            code: Some(code),
            host: host_peer,
            label,
            session: None,
            welcome_key: None,
            failed: None,
            lookups_empty: 0,
            expires_at: now().saturating_add(EXCHANGE_MS),
            done,
        });
        self.refresh_members();
        match host {
            Some(addr) => {
                // A fresh connection: one the gate is about to close (an
                // earlier attempt) would cut the exchange.
                if let Some(peer) = host_peer.filter(|p| self.swarm.is_connected(p)) {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                let opts = match host_peer {
                    Some(peer) => DialOpts::peer_id(peer)
                        .condition(PeerCondition::Always)
                        .addresses(vec![addr.clone()])
                        .build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                if let Err(e) = self.swarm.dial(opts) {
                    self.finish_joining(Err(Error::PairingFailed(format!(
                        "cannot dial {addr}: {e}"
                    ))));
                }
            }
            None => {
                // A bootstrap node may know who offers the code.
                self.look_up_host();
                // A peer already connected may be the host.
                let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in connected {
                    self.maybe_send_start(peer);
                }
            }
        }
    }

    /// Sends the joiner's first move to `peer` if it may be the host.
    fn maybe_send_start(&mut self, peer: PeerId) {
        if self.is_bootstrap(&peer) {
            return;
        }
        let me = *self.swarm.local_peer_id();
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        if joining.session.is_some() || joining.host.is_some_and(|h| h != peer) {
            return;
        }
        let Some(code) = joining.code.take() else {
            return;
        };
        let (session, mut request) = JoinerSession::start(code, &peer.to_bytes(), &me.to_bytes());
        if let PairRequest::Start { label, .. } = &mut request {
            *label = joining.label.clone();
        }
        joining.session = Some(session);
        joining.host = Some(peer);
        self.swarm.behaviour_mut().pair.send_request(&peer, request);
    }

    /// The host of a started exchange went away (closed the connection,
    /// or never answered).
    fn host_left(&mut self, peer: PeerId) {
        let Some(joining) = self.joining.as_ref() else {
            return;
        };
        if joining.host != Some(peer)
            || (joining.session.is_none()
                && joining.welcome_key.is_none()
                && joining.failed.is_none())
        {
            return;
        }
        let error = if let Some(failed) = self.joining.as_mut().and_then(|j| j.failed.take()) {
            failed
        } else if self
            .joining
            .as_ref()
            .is_some_and(|j| j.welcome_key.is_none())
        {
            // Refused before any answer: the gate of a device with no
            // pending code closes the connection.
            Error::PairingCodeInvalid(
                "the other device has no pending pairing code (mistyped, used, expired or \
                 cancelled)"
                    .into(),
            )
        } else {
            Error::PairingFailed("the other device closed the connection".into())
        };
        self.finish_joining(Err(error));
    }

    fn finish_joining(&mut self, result: Result<PeerId>) {
        if let Some(joining) = self.joining.take() {
            match &result {
                Ok(peer) => self.emit(P2pEvent::Paired(*peer)),
                Err(e) => {
                    tracing::warn!(code = e.code(), %e, "pairing failed");
                    self.emit(P2pEvent::PairingFailed(e.code()));
                }
            }
            let _ = joining.done.send(result);
            // Meet the store's devices (under its new id after a join).
            self.announce_presence();
        }
        self.refresh_members();
    }

    /// Ends codes and exchanges past their time.
    fn expire(&mut self) {
        let now = now();
        let expired: Vec<String> = self
            .codes
            .iter()
            .filter(|(_, c)| c.expires_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = !expired.is_empty();
        for nameplate in expired {
            self.withdraw_code(&nameplate);
            if let Some(code) = self.codes.remove(&nameplate) {
                tracing::info!(nameplate = code.code.nameplate(), "pairing code expired");
                let _ = code.outcome.send(Err(Error::PairingCodeExpired));
            }
        }
        let stale: Vec<PeerId> = self
            .hosting
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(p, _)| *p)
            .collect();
        changed |= !stale.is_empty();
        for peer in stale {
            if let Some(hosting) = self.hosting.remove(&peer) {
                let _ = hosting.outcome.send(Err(Error::PairingFailed(
                    "the other device did not finish the exchange".into(),
                )));
            }
        }
        if self.joining.as_ref().is_some_and(|j| j.expires_at <= now) {
            self.finish_joining(Err(Error::PairingFailed(
                "no device answered with this code in time".into(),
            )));
        } else if changed {
            self.refresh_members();
        }
    }

    async fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // Where others can reach this node: what rendezvous
                // registrations and identify announce.
                self.swarm.add_external_address(address.clone());
                self.emit(P2pEvent::Listening(address));
                self.announce_codes();
                self.announce_presence();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id: peer,
                num_established,
                endpoint,
                ..
            } => {
                if self.is_bootstrap(&peer) && endpoint.is_dialer() {
                    self.bootstrap_addrs
                        .insert(peer, endpoint.get_remote_address().clone());
                }
                if num_established.get() == 1 {
                    self.peers.insert(peer, PeerState::default());
                    self.emit(P2pEvent::PeerConnected(peer));
                    if self.is_member(&peer) {
                        self.pull(peer).await;
                    }
                }
                self.maybe_send_start(peer);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !matches!(error, libp2p::swarm::DialError::Aborted)
                && !self.swarm.is_connected(&peer)
                && self
                    .joining
                    .as_ref()
                    .is_some_and(|j| j.host == Some(peer) && j.session.is_none()) =>
            {
                self.finish_joining(Err(Error::PairingFailed(format!(
                    "cannot reach the other device: {error}"
                ))));
            }
            SwarmEvent::ConnectionClosed {
                peer_id: peer,
                num_established: 0,
                ..
            } => {
                self.peers.remove(&peer);
                self.rendezvous_points.remove(&peer);
                self.emit(P2pEvent::PeerDisconnected(peer));
                if let Some(hosting) = self.hosting.remove(&peer) {
                    let _ = hosting.outcome.send(Err(Error::PairingFailed(
                        "the other device left the exchange".into(),
                    )));
                    self.refresh_members();
                }
                self.host_left(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.sync_event(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Pair(event)) => self.pair_event(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.maybe_reserve(peer_id, &info);
                let meets = info.protocols.contains(&rendezvous::PROTOCOL_NAME);
                if meets && self.is_bootstrap(&peer_id) && self.rendezvous_points.insert(peer_id) {
                    self.announce_codes();
                    self.look_up_host();
                    self.announce_presence();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => match event {
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } => {
                    tracing::info!(relay = %relay_peer_id, "reachable through a relay");
                }
                other => tracing::debug!(?other, "relay client"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(event)) => {
                self.rendezvous_event(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => {
                for addr in crate::platform::mdns_discovered(event) {
                    let _ = self.swarm.dial(addr);
                }
            }
            _ => {}
        }
    }

    fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bootstrap
            .contains(peer)
    }

    /// Connected bootstrap nodes that run a rendezvous point.
    fn connected_rendezvous_points(&self) -> Vec<PeerId> {
        self.rendezvous_points
            .iter()
            .filter(|p| self.swarm.is_connected(p))
            .copied()
            .collect()
    }

    /// Reserves a slot on a bootstrap node that relays, so that peers that
    /// cannot dial this node (a browser cannot listen) reach it there.
    fn maybe_reserve(&mut self, peer: PeerId, info: &identify::Info) {
        if self.relays.contains(&peer)
            || !self.is_bootstrap(&peer)
            || !info.protocols.iter().any(|p| p.as_ref() == RELAY_HOP)
        {
            return;
        }
        let Some(addr) = self.bootstrap_addrs.get(&peer) else {
            return;
        };
        let circuit = super::with_peer(addr, peer).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                self.relays.insert(peer);
                tracing::info!(%circuit, "asking for a relay reservation");
            }
            Err(e) => tracing::warn!(%circuit, %e, "cannot listen through the relay"),
        }
    }

    /// Registers every pending code's nameplate with the connected
    /// bootstrap nodes (again when this node's addresses change), so a
    /// device that only knows the code finds this one.
    fn announce_codes(&mut self) {
        if self.codes.is_empty() || self.swarm.external_addresses().next().is_none() {
            return;
        }
        let servers = self.connected_rendezvous_points();
        let now = now();
        let codes: Vec<(String, u64)> = self
            .codes
            .iter()
            .map(|(n, c)| (n.clone(), c.expires_at))
            .collect();
        for (nameplate, expires_at) in codes {
            let Some(namespace) = pairing_namespace(&nameplate) else {
                continue;
            };
            let ttl = (expires_at.saturating_sub(now) / 1000).max(MIN_RENDEZVOUS_TTL_S);
            for server in &servers {
                if let Err(e) = self.swarm.behaviour_mut().rendezvous.register(
                    namespace.clone(),
                    *server,
                    Some(ttl),
                ) {
                    tracing::debug!(%server, %e, "pairing code not registered");
                }
            }
        }
    }

    /// Registers this device under its store's namespace on the connected
    /// bootstrap nodes and looks up the store's other devices there (how
    /// devices that cannot find each other on a local network, browsers
    /// first, meet again after pairing).
    fn announce_presence(&mut self) {
        let servers = self.connected_rendezvous_points();
        // While joining, the store is about to change id: its devices are
        // met once it has (and every empty lookup answered meanwhile is
        // the code's, which counts them).
        if servers.is_empty() || self.joining.is_some() {
            return;
        }
        self.presence_in = PRESENCE_TICKS;
        let Some(namespace) = store_namespace(&self.store.store_id()) else {
            return;
        };
        let reachable = self.swarm.external_addresses().next().is_some();
        for server in servers {
            let rendezvous = &mut self.swarm.behaviour_mut().rendezvous;
            if reachable {
                if let Err(e) = rendezvous.register(namespace.clone(), server, Some(PRESENCE_TTL_S))
                {
                    tracing::debug!(%server, %e, "store presence not registered");
                }
            }
            rendezvous.discover(Some(namespace.clone()), None, Some(64), server);
        }
    }

    /// Dials the store's members a bootstrap node knows addresses of.
    fn meet_members(&mut self, found: Vec<(PeerId, Vec<Multiaddr>)>) {
        for (peer, addrs) in found {
            if !self.is_member(&peer) || self.swarm.is_connected(&peer) {
                continue;
            }
            tracing::debug!(%peer, "dialling a member found on a bootstrap node");
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    /// Takes a used or expired code's nameplate off the bootstrap nodes.
    fn withdraw_code(&mut self, nameplate: &str) {
        if !self.codes.contains_key(nameplate) {
            return;
        }
        let Some(namespace) = pairing_namespace(nameplate) else {
            return;
        };
        for server in self.connected_rendezvous_points() {
            self.swarm
                .behaviour_mut()
                .rendezvous
                .unregister(namespace.clone(), server);
        }
    }

    /// Asks the connected bootstrap nodes which device offers the code
    /// this node is joining with (when no address named the host).
    fn look_up_host(&mut self) {
        let Some(joining) = self.joining.as_ref() else {
            return;
        };
        if joining.host.is_some() || joining.session.is_some() {
            return;
        }
        let Some(namespace) = joining
            .code
            .as_ref()
            .and_then(|c| pairing_namespace(c.nameplate()))
        else {
            return;
        };
        for server in self.connected_rendezvous_points() {
            self.swarm.behaviour_mut().rendezvous.discover(
                Some(namespace.clone()),
                None,
                Some(8),
                server,
            );
        }
    }

    fn rendezvous_event(&mut self, event: rendezvous::client::Event) {
        match event {
            rendezvous::client::Event::Discovered { registrations, .. } => {
                let me = *self.swarm.local_peer_id();
                let ours = store_namespace(&self.store.store_id());
                let (members, registrations): (Vec<_>, Vec<_>) = registrations
                    .into_iter()
                    .partition(|r| Some(&r.namespace) == ours.as_ref());
                self.meet_members(
                    members
                        .into_iter()
                        .filter(|r| r.record.peer_id() != me)
                        .map(|r| (r.record.peer_id(), r.record.addresses().to_vec()))
                        .collect(),
                );
                let Some(joining) = self.joining.as_mut() else {
                    return;
                };
                if joining.host.is_some() || joining.session.is_some() {
                    return;
                }
                let mut offers: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for registration in registrations {
                    let record = &registration.record;
                    if record.peer_id() != me {
                        offers
                            .entry(record.peer_id())
                            .or_default()
                            .extend(record.addresses().iter().cloned());
                    }
                }
                match offers.len() {
                    0 => {
                        joining.lookups_empty += 1;
                        if joining.lookups_empty >= LOOKUPS_BEFORE_GIVING_UP {
                            self.finish_joining(Err(Error::PairingCodeInvalid(
                                "no device offers this code (mistyped, used or expired)".into(),
                            )));
                        }
                    }
                    1 => {
                        let Some((host, addrs)) = offers.into_iter().next() else {
                            return;
                        };
                        joining.host = Some(host);
                        tracing::info!(%host, "found the device offering the code");
                        if self.swarm.is_connected(&host) {
                            self.maybe_send_start(host);
                        } else {
                            let opts = DialOpts::peer_id(host).addresses(addrs).build();
                            if let Err(e) = self.swarm.dial(opts) {
                                self.finish_joining(Err(Error::PairingFailed(format!(
                                    "cannot reach the device offering the code: {e}"
                                ))));
                            }
                        }
                    }
                    _ => self.finish_joining(Err(Error::PairingFailed(
                        "several devices offer a code with this nameplate: create a new code"
                            .into(),
                    ))),
                }
            }
            rendezvous::client::Event::DiscoverFailed { error, .. } => {
                tracing::debug!(?error, "rendezvous lookup failed");
            }
            rendezvous::client::Event::RegisterFailed {
                namespace, error, ..
            } => tracing::warn!(%namespace, ?error, "not registered on the rendezvous point"),
            other => tracing::debug!(?other, "rendezvous"),
        }
    }

    async fn pull(&mut self, peer: PeerId) {
        if let Ok(have) = self.store.version_vector().await {
            let request = SyncRequest::Pull {
                store: self.store.store_id(),
                have,
                limit: PULL_LIMIT,
                members: self.store.membership_digest().await,
            };
            self.swarm.behaviour_mut().sync.send_request(&peer, request);
            if let Some(state) = self.peers.get_mut(&peer) {
                state.pulled = true;
            }
        }
    }

    /// Merges a peer's membership log before the commits it came with.
    async fn merge_members(&mut self, peer: PeerId, members: Option<MembershipWire>) {
        let Some(wire) = members else {
            return;
        };
        match self.store.merge_membership(&wire).await {
            Ok(update) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.members = None;
                }
                if update.changed {
                    self.refresh_members();
                }
            }
            Err(e) => tracing::warn!(%peer, code = e.code(), %e, "membership log refused"),
        }
    }

    /// Pushes each connected member the commits and membership it lacks.
    async fn push_to_peers(&mut self) {
        let ours = self.store.membership_digest().await;
        type Target = (PeerId, Vec<(DeviceId, u64)>, Option<[u8; 32]>);
        let targets: Vec<Target> = self
            .peers
            .iter()
            .filter(|(p, s)| s.heard && self.is_member(p))
            .map(|(p, s)| {
                (
                    *p,
                    s.known.iter().map(|(d, n)| (*d, *n)).collect(),
                    s.members,
                )
            })
            .collect();
        for (peer, known, their_members) in targets {
            let members = if their_members == Some(ours) {
                None
            } else {
                Some(self.store.membership().await)
            };
            match self
                .store
                .commits_missing_within(&known, PULL_LIMIT as usize, super::PAGE_BYTES)
                .await
            {
                Ok(commits) if !commits.is_empty() || members.is_some() => {
                    // A peer far behind catches up by pulling.
                    let (commits, _) = page_of(commits);
                    if let Some(state) = self.peers.get_mut(&peer) {
                        advance(&mut state.known, &commits);
                        state.members = Some(ours);
                    }
                    self.send(peer, commits, members);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%peer, code = e.code(), "cannot read commits to push")
                }
            }
        }
    }

    /// Sends commits (and the membership log) to `peer`: on its live
    /// stream, or as a request when that stream failed.
    fn send(&mut self, peer: PeerId, commits: Vec<SignedCommit>, members: Option<MembershipWire>) {
        let message = LiveMessage::Commits { commits, members };
        if self.send_live(peer, &message) {
            return;
        }
        if let LiveMessage::Commits { commits, members } = message {
            let request = SyncRequest::Push {
                store: self.store.store_id(),
                commits,
                members,
            };
            self.swarm.behaviour_mut().sync.send_request(&peer, request);
        }
    }

    /// Queues `message` on the live stream to `peer` (opening it first);
    /// false when there is none.
    fn send_live(&mut self, peer: PeerId, message: &LiveMessage) -> bool {
        let control = self.control.clone();
        let failed = self.live_failed.clone();
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        if state.live_failed {
            return false;
        }
        let frames = state
            .live
            .get_or_insert_with(|| live::open(control, peer, failed));
        match frame(message) {
            Ok(bytes) => frames.unbounded_send(bytes).is_ok(),
            Err(e) => {
                tracing::warn!(%peer, %e, "cannot frame a live message");
                false
            }
        }
    }

    /// A live stream failed: later pushes to that peer go as requests,
    /// starting again from what the peer last confirmed having.
    async fn live_broke(&mut self, peer: PeerId) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.live = None;
            state.live_failed = true;
            state.known = state.confirmed.clone();
            self.push_to_peers().await;
        }
    }

    /// What arrived on a peer's live stream.
    async fn live_message(&mut self, peer: PeerId, message: LiveMessage) {
        if !self.is_member(&peer) {
            tracing::info!(%peer, "live message from a non-member dropped");
            return;
        }
        match message {
            LiveMessage::Have { have } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.known = have.iter().copied().collect();
                    state.confirmed = state.known.clone();
                }
            }
            LiveMessage::Commits { commits, members } => {
                if let Ok(Received {
                    have: Some(have), ..
                }) = self.receive(peer, commits, members).await
                {
                    self.send_live(peer, &LiveMessage::Have { have });
                }
            }
        }
    }

    /// Commits (and the membership log) a peer pushed, on its live stream
    /// or as a request: the log merged first, the commits ingested, a gap
    /// pulled at once.
    async fn receive(
        &mut self,
        peer: PeerId,
        commits: Vec<SignedCommit>,
        members: Option<MembershipWire>,
    ) -> Result<Received> {
        self.merge_members(peer, members).await;
        // The pusher has what it pushed: never echo it back.
        if let Some(state) = self.peers.get_mut(&peer) {
            advance(&mut state.known, &commits);
        }
        let report = self.store.ingest(commits).await.inspect_err(|e| {
            tracing::warn!(%peer, code = e.code(), "pushed commits not applied");
        })?;
        self.emit(P2pEvent::Synced {
            peer,
            applied: report.applied,
            rejected: report.rejected.len(),
            remaining: 0,
        });
        // Commits that skip some of their author's (the pusher thought we
        // had them): pull the gap.
        if report
            .rejected
            .iter()
            .any(|(_, r)| matches!(r, RejectReason::Gap { .. }))
        {
            self.pull(peer).await;
        }
        let have = if report.rejected.is_empty() {
            None
        } else {
            Some(self.store.version_vector().await?)
        };
        Ok(Received {
            applied: report.applied,
            rejected: report.rejected.len(),
            have,
        })
    }

    async fn sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = self.sync_request(peer, request).await;
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response);
                // A member that pulled from us before we pulled from it.
                if self.is_member(&peer) && self.peers.get(&peer).is_some_and(|s| !s.pulled) {
                    self.pull(peer).await;
                }
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => self.sync_response(peer, response).await,
            Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "sync request failed");
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "sync request not answered");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    async fn sync_request(&mut self, peer: PeerId, request: SyncRequest) -> SyncResponse {
        if !self.is_member(&peer) {
            tracing::info!(%peer, "sync request refused: not a member");
            return SyncResponse::Refused("NOT_TRUSTED".into());
        }
        match request {
            SyncRequest::Pull { store: id, .. } | SyncRequest::Push { store: id, .. }
                if id != self.store.store_id() =>
            {
                SyncResponse::Refused("WRONG_STORE".into())
            }
            SyncRequest::Pull {
                have,
                limit,
                members,
                ..
            } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.known = have.iter().copied().collect();
                    state.confirmed = state.known.clone();
                    state.members = Some(members);
                    state.heard = true;
                }
                let members = members_for(&self.store, Some(members)).await;
                let limit = limit.min(PULL_LIMIT) as usize;
                match self
                    .store
                    .commits_missing_within(&have, limit + 1, super::PAGE_BYTES)
                    .await
                {
                    Ok(mut commits) => {
                        let over_count = commits.len() > limit;
                        commits.truncate(limit);
                        let (commits, over_bytes) = page_of(commits);
                        let remaining = lacking(&self.store, &have)
                            .await
                            .saturating_sub(commits.len() as u64);
                        if let Some(state) = self.peers.get_mut(&peer) {
                            advance(&mut state.known, &commits);
                            if members.is_some() {
                                state.members = Some(self.store.membership_digest().await);
                            }
                        }
                        SyncResponse::Commits {
                            commits,
                            more: over_count || over_bytes,
                            remaining,
                            members,
                        }
                    }
                    Err(e) => SyncResponse::Refused(e.code().into()),
                }
            }
            SyncRequest::Push {
                commits, members, ..
            } => match self.receive(peer, commits, members).await {
                Ok(received) => SyncResponse::Ack {
                    applied: received.applied as u32,
                    rejected: received.rejected as u32,
                    have: received.have,
                },
                Err(e) => SyncResponse::Refused(e.code().into()),
            },
        }
    }

    async fn sync_response(&mut self, peer: PeerId, response: SyncResponse) {
        match response {
            SyncResponse::Commits {
                commits,
                more,
                remaining,
                members,
            } => {
                self.merge_members(peer, members).await;
                if let Some(state) = self.peers.get_mut(&peer) {
                    advance(&mut state.known, &commits);
                }
                let count = commits.len();
                match self.store.ingest(commits).await {
                    Ok(report) => {
                        if count > 0 {
                            self.emit(P2pEvent::Synced {
                                peer,
                                applied: report.applied,
                                rejected: report.rejected.len(),
                                remaining,
                            });
                        }
                        // Keep paging while pages make progress (duplicates
                        // count: a relay may have delivered them first).
                        if more && report.applied + report.duplicates > 0 {
                            self.pull(peer).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%peer, code = e.code(), "pulled commits not applied")
                    }
                }
            }
            SyncResponse::Ack {
                have: Some(have), ..
            } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.known = have.into_iter().collect();
                    state.confirmed = state.known.clone();
                }
            }
            SyncResponse::Ack { have: None, .. } => {}
            SyncResponse::Refused(reason) => {
                tracing::warn!(%peer, %reason, "sync request refused");
            }
        }
    }

    async fn pair_event(&mut self, event: request_response::Event<PairRequest, PairResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = self.host_request(peer, request).await;
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .pair
                    .send_response(channel, response);
                self.refresh_members();
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => self.joiner_response(peer, response).await,
            Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "pairing request failed");
                self.host_left(peer);
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    /// The host's side of `/persist/pair/1`.
    async fn host_request(&mut self, peer: PeerId, request: PairRequest) -> PairResponse {
        let refuse = |e: &Error| PairResponse::Refused {
            code: e.code().to_string(),
            reason: e.to_string(),
        };
        match request {
            PairRequest::Start {
                nameplate,
                pake,
                label,
            } => {
                // Burnt by the first try, right or wrong.
                self.withdraw_code(&nameplate);
                let Some(offered) = self.codes.remove(&nameplate) else {
                    return refuse(&Error::PairingCodeInvalid(
                        "no pending code with this nameplate (mistyped, used or expired)".into(),
                    ));
                };
                let result = if offered.expires_at <= now() {
                    Err(Error::PairingCodeExpired)
                } else if device_of(&peer)
                    .is_none_or(|d| self.store.members().removed.contains_key(&d))
                {
                    Err(Error::NotTrusted(
                        "this device was removed from the store".into(),
                    ))
                } else {
                    let me = self.swarm.local_peer_id().to_bytes();
                    HostSession::respond(&offered.code, &me, &peer.to_bytes(), &pake)
                };
                match result {
                    Ok((session, pake, confirm)) => {
                        self.hosting.insert(
                            peer,
                            Hosting {
                                session,
                                label,
                                expires_at: now().saturating_add(EXCHANGE_MS),
                                outcome: offered.outcome,
                            },
                        );
                        PairResponse::Challenge { pake, confirm }
                    }
                    Err(e) => {
                        tracing::warn!(%peer, code = e.code(), "pairing refused");
                        self.emit(P2pEvent::PairingFailed(e.code()));
                        let response = refuse(&e);
                        let _ = offered.outcome.send(Err(e));
                        response
                    }
                }
            }
            PairRequest::Finish { confirm } => {
                let Some(hosting) = self.hosting.remove(&peer) else {
                    return refuse(&Error::PairingFailed("no exchange in progress".into()));
                };
                let result = match hosting.session.finish(&confirm) {
                    Ok(key) => self.welcome(peer, &hosting.label, &key).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(sealed) => {
                        tracing::info!(%peer, "device paired");
                        self.emit(P2pEvent::Paired(peer));
                        let _ = hosting.outcome.send(Ok(peer));
                        PairResponse::Welcome { sealed }
                    }
                    Err(e) => {
                        tracing::warn!(%peer, code = e.code(), "pairing failed");
                        self.emit(P2pEvent::PairingFailed(e.code()));
                        let response = refuse(&e);
                        let _ = hosting.outcome.send(Err(e));
                        response
                    }
                }
            }
            PairRequest::Abort => {
                if let Some(hosting) = self.hosting.remove(&peer) {
                    let e = Error::PairingCodeInvalid("the other device typed another code".into());
                    tracing::warn!(%peer, code = e.code(), "pairing aborted by the other device");
                    self.emit(P2pEvent::PairingFailed(e.code()));
                    let _ = hosting.outcome.send(Err(e));
                }
                PairResponse::Aborted
            }
        }
    }

    /// Adds the joiner and seals its welcome.
    async fn welcome(&mut self, peer: PeerId, label: &str, key: &[u8; 32]) -> Result<Vec<u8>> {
        let device = device_of(&peer)
            .ok_or_else(|| Error::PairingFailed("the peer id is not an Ed25519 key".into()))?;
        let welcome = self.store.admit_device(device, label).await?;
        self.refresh_members();
        let plain = Zeroizing::new(
            postcard::to_stdvec(&welcome)
                .map_err(|e| Error::PairingFailed(format!("welcome: {e}")))?,
        );
        let context = welcome_context(&self.swarm.local_peer_id().to_bytes(), &peer.to_bytes());
        Ok(seal_once(key, &context, &plain)?)
    }

    /// The joiner's side of `/persist/pair/1`.
    async fn joiner_response(&mut self, peer: PeerId, response: PairResponse) {
        let me = self.swarm.local_peer_id().to_bytes();
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        if joining.host != Some(peer) {
            return;
        }
        match response {
            PairResponse::Challenge { pake, confirm } => {
                let Some(session) = joining.session.take() else {
                    return;
                };
                match session.confirm(&pake, &confirm) {
                    Ok((proof, key)) => {
                        joining.welcome_key = Some(key);
                        self.swarm
                            .behaviour_mut()
                            .pair
                            .send_request(&peer, PairRequest::Finish { confirm: proof });
                    }
                    Err(e) => {
                        // Tell the host, then report (on its answer).
                        joining.failed = Some(e);
                        self.swarm
                            .behaviour_mut()
                            .pair
                            .send_request(&peer, PairRequest::Abort);
                    }
                }
            }
            PairResponse::Welcome { sealed } => {
                let result = match joining.welcome_key.take() {
                    Some(key) => self.adopt(peer, &me, &key, &sealed).await,
                    None => Err(Error::PairingFailed("a welcome out of turn".into())),
                };
                let ok = result.is_ok();
                self.finish_joining(result.map(|()| peer));
                if ok {
                    self.pull(peer).await;
                }
            }
            PairResponse::Refused { code, reason } => {
                let e = match code.as_str() {
                    "PAIRING_CODE_INVALID" => Error::PairingCodeInvalid(reason),
                    "PAIRING_CODE_EXPIRED" => Error::PairingCodeExpired,
                    "NOT_TRUSTED" => Error::NotTrusted(reason),
                    _ => Error::PairingFailed(reason),
                };
                self.finish_joining(Err(e));
            }
            PairResponse::Aborted => {
                let error = joining
                    .failed
                    .take()
                    .unwrap_or_else(|| Error::PairingFailed("aborted".into()));
                self.finish_joining(Err(error));
            }
        }
    }

    async fn adopt(
        &mut self,
        host: PeerId,
        me: &[u8],
        key: &[u8; 32],
        sealed: &[u8],
    ) -> Result<()> {
        let plain = open_once(key, &welcome_context(&host.to_bytes(), me), sealed)?;
        let welcome: Welcome = postcard::from_bytes(&plain)
            .map_err(|e| Error::PairingFailed(format!("unreadable welcome: {e}")))?;
        self.store.join(welcome).await
    }
}
