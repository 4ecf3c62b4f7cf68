//! The node's event loop: connections, the sync protocol, pairing and the
//! gate's view of the membership. Runtime-neutral (the platform spawns it).
//! Split by concern: `pairing` (codes, invites, the exchange on both
//! sides), `discovery` (bootstrap nodes: relay reservations, meeting points),
//! `sync` (the replication protocol's executor).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use libp2p::request_response::ResponseChannel;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, relay, Multiaddr, PeerId, Swarm};

use super::gate::GateState;
use super::live::{self, LiveMessage};
use super::replica::Replica;
use super::replication::{Replication, Token};
use super::{
    device_of, peer_id_of, Behaviour, BehaviourEvent, Command, P2pEvent, P2pOptions, Subscribers,
    SyncResponse,
};
use crate::error::{Error, Result};
use crate::identity::DeviceId;

mod confirm;
mod discovery;
mod pairing;
mod remote;
mod sync;

use pairing::{HostCode, Hosting, Joining};
use sync::{Done, Link, DONE_QUEUE};

/// How often the loop looks at expiries.
const TICK_MS: u64 = 1_000;

struct Node {
    replica: Arc<dyn Replica>,
    swarm: Swarm<Behaviour>,
    /// The replication protocol's state (sans-IO) and its pending replies.
    replication: Replication<PeerId>,
    replies: HashMap<Token, ResponseChannel<SyncResponse>>,
    next_token: Token,
    /// Where storage tasks report (bounded).
    done: mpsc::Sender<Done>,
    /// Opens live streams.
    control: libp2p_stream::Control,
    /// Live streams that failed (their peer; each writer reports once).
    live_failed: mpsc::Sender<PeerId>,
    gate: Arc<Mutex<GateState>>,
    subscribers: Subscribers,
    /// Live streams of connected peers.
    links: HashMap<PeerId, Link>,
    codes: HashMap<String, HostCode>,
    hosting: HashMap<PeerId, Hosting>,
    joining: Option<Joining>,
    /// Members as the gate last saw them.
    members: BTreeSet<DeviceId>,
    /// Addresses this node dialled its bootstrap peers at.
    bootstrap_addrs: HashMap<PeerId, Multiaddr>,
    /// Relays this node holds (or asked for) a reservation on.
    relays: BTreeSet<PeerId>,
    /// Connected bootstrap nodes that run a meeting point (identify said
    /// so): where codes and the store's devices are registered.
    meeting_points: BTreeSet<PeerId>,
    /// Meeting-point requests awaiting their answer (at most a few per
    /// point and tick; each ends in an answer or a failure).
    asked: HashMap<libp2p::request_response::OutboundRequestId, discovery::Asked>,
    /// Ticks until the store's registration is renewed.
    presence_in: u32,
    /// Connected peers whose identify lists the pairing protocol (a device
    /// lists it only while it offers a code): where a joiner with no host
    /// address may send its first move.
    offering: BTreeSet<PeerId>,
    /// Connected members whose identify lists only another version of the
    /// sync protocol (told once per connection).
    other_versions: BTreeSet<PeerId>,
    /// The configured bootstrap addresses (whether private addresses are
    /// announced depends on them).
    bootstrap_configured: Vec<Multiaddr>,
    /// Hashes of codes this device started an exchange with, newest last
    /// (at most [`pairing::BURNT_CODES`]): a code is tried once.
    burnt: std::collections::VecDeque<[u8; 32]>,
    /// Nameplates of codes this device made that expired or were tried,
    /// with when they are forgotten (at most [`pairing::SPENT_CODES`]).
    spent: std::collections::VecDeque<(String, u64)>,
    /// Joiners that proved a code made with confirmation, waiting for the
    /// user's answer.
    awaiting: HashMap<PeerId, confirm::Awaiting>,
    /// Sources (peer ids, IP addresses) whose exchange failed lately, with
    /// when they may start again (at most [`confirm::COOLING_SOURCES`]).
    cooling: std::collections::VecDeque<confirm::Cooling>,
    /// The IP address of each peer connected directly (not relayed, not
    /// loopback).
    peer_ips: HashMap<PeerId, std::net::IpAddr>,
    /// Sync servers this device replicates with.
    remote: remote::Remote,
    /// Connections the gate no longer admits close at the next tick.
    close_due: bool,
}

/// Starts the loop for `store` on `swarm` in the background.
pub(super) fn run(
    replica: Arc<dyn Replica>,
    mut swarm: Swarm<Behaviour>,
    options: &P2pOptions,
    gate: Arc<Mutex<GateState>>,
    subscribers: Subscribers,
    inbox: mpsc::Receiver<Command>,
) -> Result<()> {
    for addr in &options.listen_addrs {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::InvalidOptions(format!("cannot listen on {addr}: {e}")))?;
    }
    let remote = remote::Remote::new(&options.sync_servers)?;
    {
        let mut gate = gate.lock().unwrap_or_else(|p| p.into_inner());
        gate.servers.extend(remote.peers());
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
    let (live_inbox, live_in) = mpsc::channel(live::LIVE_QUEUE);
    live::accept(&mut control, live_inbox, options.message_timeout)?;
    let (live_failed, failed_in) = mpsc::channel(0);
    let (done, done_in) = mpsc::channel(DONE_QUEUE);
    let mut node = Node {
        replica,
        swarm,
        replication: Replication::new(),
        replies: HashMap::new(),
        next_token: 0,
        done,
        control,
        live_failed,
        gate,
        subscribers,
        links: HashMap::new(),
        codes: HashMap::new(),
        hosting: HashMap::new(),
        joining: None,
        members: BTreeSet::new(),
        bootstrap_addrs: HashMap::new(),
        relays: BTreeSet::new(),
        meeting_points: BTreeSet::new(),
        asked: HashMap::new(),
        presence_in: 0,
        offering: BTreeSet::new(),
        other_versions: BTreeSet::new(),
        bootstrap_configured: options.bootstrap_peers.clone(),
        burnt: std::collections::VecDeque::new(),
        spent: std::collections::VecDeque::new(),
        awaiting: HashMap::new(),
        cooling: std::collections::VecDeque::new(),
        peer_ips: HashMap::new(),
        remote,
        close_due: false,
    };
    node.refresh_members();
    node.dial_servers();
    for addr in &options.bootstrap_peers {
        if let Err(e) = node.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %e, "bootstrap peer not dialled");
        }
    }
    crate::platform::spawn(node.run(inbox, live_in, failed_in, done_in));
    Ok(())
}

pub(super) fn now() -> u64 {
    crate::platform::now_ms()
}

impl Node {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut live_in: mpsc::Receiver<(PeerId, LiveMessage)>,
        mut failed_in: mpsc::Receiver<PeerId>,
        mut done_in: mpsc::Receiver<Done>,
    ) {
        let mut local_changes = self.replica.changes().fuse();
        let mut tick = Box::pin(crate::platform::sleep_ms(TICK_MS).fuse());
        loop {
            futures::select! {
                command = inbox.next() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.command(command).await,
                },
                _ = local_changes.next() => self.local_changes(),
                done = done_in.next() => {
                    if let Some(done) = done {
                        self.done(done);
                    }
                },
                message = live_in.next() => {
                    if let Some((peer, message)) = message {
                        self.live_message(peer, message);
                    }
                },
                peer = failed_in.next() => {
                    if let Some(peer) = peer {
                        self.live_broke(peer);
                    }
                },
                _ = tick => {
                    if self.close_due {
                        self.close_unadmitted();
                    }
                    self.expire();
                    self.dial_servers();
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
        self.update_gate();
        self.close_unadmitted();
    }

    /// [`Node::refresh_members`], leaving connections the gate no longer
    /// admits open until the next tick: a pairing answer just sent (a
    /// refusal) reaches the joiner before its connection closes.
    fn refresh_members_after_answer(&mut self) {
        self.update_gate();
        self.close_due = true;
    }

    fn update_gate(&mut self) {
        let now: BTreeSet<DeviceId> = self.replica.members().current.keys().copied().collect();
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
            gate.hosting_pairing =
                !self.codes.is_empty() || !self.hosting.is_empty() || !self.awaiting.is_empty();
            gate.pairing_open = gate.hosting_pairing || self.joining.is_some();
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
    }

    /// Closes the connections of peers the gate no longer admits.
    fn close_unadmitted(&mut self) {
        self.close_due = false;
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

    async fn command(&mut self, command: Command) {
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
                confirm,
                reply,
            } => {
                let _ = reply.send(self.create_code(ttl_ms, invite, confirm));
            }
            Command::Confirm {
                peer,
                accept,
                reply,
            } => self.confirm(peer, accept, reply).await,
            Command::Pair {
                code,
                host,
                label,
                done,
            } => self.start_joining(code, host, label, done),
        }
    }

    async fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // Where others can reach this node: what meeting-point
                // registrations and identify announce (a private address
                // only when no bootstrap node is public).
                if discovery::announces(&address, &self.bootstrap_configured) {
                    self.swarm.add_external_address(address.clone());
                } else {
                    tracing::debug!(%address, "private address not announced to a public node");
                }
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
                if let Some(ip) = super::meet::source_ip(endpoint.get_remote_address())
                    .filter(|ip| !ip.is_loopback())
                {
                    self.peer_ips.insert(peer, ip);
                }
                if num_established.get() == 1 {
                    self.links.insert(peer, Link::default());
                    self.emit(P2pEvent::PeerConnected(peer));
                    let member = self.is_member(&peer);
                    let actions = self.replication.connected(peer, member);
                    self.execute(actions);
                    self.server_connected(peer);
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
                self.links.remove(&peer);
                self.offering.remove(&peer);
                self.other_versions.remove(&peer);
                self.peer_ips.remove(&peer);
                self.joiner_left(peer);
                self.replication.disconnected(peer);
                self.server_disconnected(&peer);
                self.meeting_points.remove(&peer);
                self.emit(P2pEvent::PeerDisconnected(peer));
                if let Some(hosting) = self.hosting.remove(&peer) {
                    let _ = hosting.outcome.send(Err(Error::PairingFailed(
                        "the other device left the exchange".into(),
                    )));
                    self.refresh_members();
                }
                self.host_left(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.sync_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Pair(event)) => self.pair_event(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Pushed {
                peer_id,
                info,
                ..
            })) => self.note_pairing_offer(peer_id, &info),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.note_pairing_offer(peer_id, &info);
                self.note_sync_version(peer_id, &info);
                self.maybe_reserve(peer_id, &info);
                let meets = info.protocols.contains(&super::meet::MEET_PROTOCOL);
                if meets && self.is_bootstrap(&peer_id) && self.meeting_points.insert(peer_id) {
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
            SwarmEvent::Behaviour(BehaviourEvent::Meet(event)) => self.meet_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => {
                for addr in crate::platform::mdns_discovered(event) {
                    let _ = self.swarm.dial(addr);
                }
            }
            _ => {}
        }
    }
}
