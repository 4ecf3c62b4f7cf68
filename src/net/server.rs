//! The headless node (`persist node`): a bootstrap peer, circuit-relay
//! server and meeting point (`/persist/meet/1`, see [`super::meet`]) for
//! devices and browsers. It is a member of no store and holds no key: what
//! it relays is Noise-encrypted end to end between the two devices (and,
//! for encrypted stores, sealed again under the store's key). Serving
//! ([`ServerOptions::serve`], `persist node --serve`), it also speaks
//! `/persist/sync/2` as a sync server that holds stores' ciphertext
//! (`serve.rs`). Runtime neutral; the platform builds its transports
//! (`platform::native::net::server_swarm`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, StreamExt};
use libp2p::request_response;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};

use super::meet::{Directory, DirectoryStats, MeetLimits, MeetRequest};
use crate::error::{Error, Result};

mod limits;
mod serve;
pub use limits::{IpLimits, SubnetRate};
pub use serve::{ServeCounters, ServeOptions};

/// Limits and addresses of a headless node.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Addresses to listen on (TCP, QUIC, `/ws`, `/webrtc-direct`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Relay reservations held at once, at most.
    pub max_reservations: usize,
    /// Relayed connections open at once, at most.
    pub max_circuits: usize,
    /// Relayed connections per peer, at most.
    pub max_circuits_per_peer: usize,
    /// How long one relayed connection may last (long enough to pair
    /// and to punch a hole; relayed sync needs more).
    pub max_circuit_duration: Duration,
    /// Bytes one relayed connection may carry (each way).
    pub max_circuit_bytes: u64,
    /// Registrations and lookups of the meeting point
    /// (`max_registrations` is the total).
    pub meet: MeetLimits,
    /// Relay reservations and relayed connections per subnet (IPv4 /24,
    /// IPv6 /48): this many at once, then one more every
    /// `subnet_rate_every` (beside libp2p's own rates: per peer 30 at once
    /// then one every 2 minutes, per address 60 then one a minute).
    pub subnet_rate_burst: u32,
    /// See `subnet_rate_burst`.
    pub subnet_rate_every: Duration,
    /// Established connections at most.
    pub max_connections: u32,
    /// Inbound connections from one IP address at most.
    pub max_connections_per_ip: u32,
    /// Inbound connections from one subnet (IPv4 /24, IPv6 /48) at most.
    pub max_connections_per_subnet: u32,
    /// Serve stores (a sync server holding their ciphertext), or not.
    pub serve: Option<ServeOptions>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        let parse = |text: &str| text.parse().ok();
        ServerOptions {
            listen_addrs: [
                "/ip4/0.0.0.0/tcp/4001",
                "/ip4/0.0.0.0/udp/4001/quic-v1",
                "/ip4/0.0.0.0/tcp/4002/ws",
                "/ip4/0.0.0.0/udp/4003/webrtc-direct",
            ]
            .into_iter()
            .filter_map(parse)
            .collect(),
            max_reservations: 1024,
            max_circuits: 256,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(2 * 60),
            max_circuit_bytes: 128 << 10,
            meet: MeetLimits::default(),
            subnet_rate_burst: 240,
            subnet_rate_every: Duration::from_secs(15),
            max_connections: 2048,
            max_connections_per_ip: 16,
            max_connections_per_subnet: 64,
            serve: None,
        }
    }
}

pub use behaviour::{ServerBehaviour, ServerBehaviourEvent};

#[allow(missing_docs)]
mod behaviour {
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{connection_limits, identify, identity, kad, ping, relay};

    use super::{IpLimits, ServerOptions, SubnetRate};
    use crate::net::meet::{MeetCodec, MEET_PROTOCOL};
    use crate::net::{SyncCodec, SYNC_PROTOCOL};

    /// What a headless node runs: discovery and relaying, and the sync
    /// protocol when it serves stores.
    #[derive(NetworkBehaviour)]
    pub struct ServerBehaviour {
        ip_limits: IpLimits,
        limits: connection_limits::Behaviour,
        identify: identify::Behaviour,
        ping: ping::Behaviour,
        kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) relay: relay::Behaviour,
        pub(super) meet: request_response::Behaviour<MeetCodec>,
        /// The sync protocol, when serving stores.
        pub(super) sync: Toggle<request_response::Behaviour<SyncCodec>>,
    }

    impl ServerBehaviour {
        /// The behaviour of a node with `keypair` and `options`.
        pub fn new(keypair: &identity::Keypair, options: &ServerOptions) -> ServerBehaviour {
            let peer_id = keypair.public().to_peer_id();
            // The node is where others bootstrap: it has no one to
            // bootstrap from itself.
            let mut config = kad::Config::new(kad::PROTOCOL_NAME);
            config.set_periodic_bootstrap_interval(None);
            let mut kad =
                kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config);
            kad.set_mode(Some(kad::Mode::Server));
            let mut relay = relay::Config {
                max_reservations: options.max_reservations,
                max_reservations_per_peer: 4,
                max_circuits: options.max_circuits,
                max_circuits_per_peer: options.max_circuits_per_peer,
                max_circuit_duration: options.max_circuit_duration,
                max_circuit_bytes: options.max_circuit_bytes,
                ..relay::Config::default()
            };
            for limiters in [
                &mut relay.reservation_rate_limiters,
                &mut relay.circuit_src_rate_limiters,
            ] {
                let mut rate =
                    SubnetRate::new(options.subnet_rate_burst, options.subnet_rate_every);
                limiters.push(Box::new(
                    move |_: libp2p::PeerId, addr: &libp2p::Multiaddr, now: web_time::Instant| {
                        rate.allow(addr, now)
                    },
                ));
            }
            ServerBehaviour {
                ip_limits: IpLimits::new(
                    options.max_connections_per_ip,
                    options.max_connections_per_subnet,
                ),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(crate::net::MAX_PENDING_INCOMING * 4))
                        .with_max_established(Some(options.max_connections))
                        .with_max_established_per_peer(Some(crate::net::MAX_PER_PEER)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/persist/node/1".into(),
                    keypair.public(),
                )),
                ping: ping::Behaviour::default(),
                kad,
                relay: relay::Behaviour::new(peer_id, relay),
                // Answers only: a node asks no one.
                meet: request_response::Behaviour::new(
                    [(MEET_PROTOCOL, ProtocolSupport::Inbound)],
                    request_response::Config::default()
                        .with_request_timeout(std::time::Duration::from_secs(10))
                        .with_max_concurrent_streams(4),
                ),
                sync: options
                    .serve
                    .as_ref()
                    .map(|_| {
                        request_response::Behaviour::new(
                            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                            request_response::Config::default()
                                .with_request_timeout(crate::net::MESSAGE_TIMEOUT)
                                .with_max_concurrent_streams(crate::net::SYNC_STREAMS),
                        )
                    })
                    .into(),
            }
        }
    }
}

/// What a headless node holds at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connected peers.
    pub peers: usize,
    /// Places with registrations, and registrations, on the meeting point.
    pub directory: DirectoryStats,
    /// Meeting-point requests refused so far (budgets, owned places).
    pub refused_requests: u64,
    /// What a serving node holds and did.
    pub served: Option<ServedStats>,
}

/// What a serving node holds and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServedStats {
    /// Stores held, their commits and bytes.
    pub held: crate::host::HostStats,
    /// Stores loaded now (served since the node started).
    pub loaded: usize,
    /// Hellos accepted, requests refused, commits stored since start.
    pub counters: ServeCounters,
}

/// What a headless node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Listening on an address (with `/p2p/<peer id>`: what peers dial).
    Listening(Multiaddr),
    /// A peer connected.
    PeerConnected(PeerId),
    /// A peer's last connection closed.
    PeerDisconnected(PeerId),
    /// A peer holds a relay reservation: reachable through this node.
    Reserved(PeerId),
    /// A relayed connection opened between two peers.
    CircuitOpened {
        /// The dialling peer.
        from: PeerId,
        /// The reserved peer.
        to: PeerId,
    },
    /// A relayed connection closed.
    CircuitClosed {
        /// The dialling peer.
        from: PeerId,
        /// The reserved peer.
        to: PeerId,
    },
}

enum ServerCommand {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Connected(oneshot::Sender<usize>),
    Stats(oneshot::Sender<ServerStats>),
    Shutdown(oneshot::Sender<()>),
}

/// A running headless node.
#[derive(Clone)]
pub struct Server {
    peer_id: PeerId,
    storage: Option<std::sync::Arc<dyn crate::host::HostStorage>>,
    commands: mpsc::Sender<ServerCommand>,
    subscribers: super::Subscribers<ServerEvent>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Server {
    /// Starts a node on `swarm` (from the platform's `server_swarm`),
    /// listening on `options.listen_addrs`.
    pub fn start(mut swarm: Swarm<ServerBehaviour>, options: &ServerOptions) -> Result<Server> {
        for addr in &options.listen_addrs {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| Error::InvalidOptions(format!("cannot listen on {addr}: {e}")))?;
        }
        let peer_id = *swarm.local_peer_id();
        let (commands, inbox) = mpsc::channel(super::handle::COMMAND_QUEUE);
        let subscribers = super::Subscribers::default();
        let directory = Directory::new(options.meet.clone());
        let (done, done_in) = mpsc::channel(serve::DONE_QUEUE);
        let serving = options
            .serve
            .clone()
            .map(|serve| serve::Serving::new(serve, done));
        let storage = options.serve.as_ref().map(|serve| serve.storage.clone());
        crate::platform::spawn(run(
            swarm,
            directory,
            serving,
            inbox,
            done_in,
            subscribers.clone(),
        ));
        Ok(Server {
            peer_id,
            storage,
            commands,
            subscribers,
        })
    }

    /// The node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Events from now on.
    pub fn events(&self) -> mpsc::Receiver<ServerEvent> {
        self.subscribers.subscribe()
    }

    /// The addresses the node listens on, each with `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        let (tx, rx) = oneshot::channel();
        self.send(ServerCommand::ListenAddrs(tx)).await?;
        rx.await.map_err(|_| stopped())
    }

    /// How many peers are connected.
    pub async fn connected_peers(&self) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.send(ServerCommand::Connected(tx)).await?;
        rx.await.map_err(|_| stopped())
    }

    /// What the node holds now.
    pub async fn stats(&self) -> Result<ServerStats> {
        let (tx, rx) = oneshot::channel();
        self.send(ServerCommand::Stats(tx)).await?;
        let mut stats = rx.await.map_err(|_| stopped())?;
        if let (Some(storage), Some(served)) = (&self.storage, stats.served.as_mut()) {
            served.held = storage.stats().await?;
        }
        Ok(stats)
    }

    /// Stops the node: closes its listeners and connections.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(ServerCommand::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, command: ServerCommand) -> Result<()> {
        self.commands
            .clone()
            .send(command)
            .await
            .map_err(|_| stopped())
    }
}

use super::{stopped, with_peer};

/// The loop's state besides the swarm.
struct Meeting {
    directory: Directory,
    /// Inbound connections' IP addresses (none for a relayed one).
    sources: HashMap<ConnectionId, Option<IpAddr>>,
    refused: u64,
}

impl Meeting {
    fn request(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        peer: PeerId,
        connection: ConnectionId,
        request: MeetRequest,
        channel: request_response::ResponseChannel<super::meet::MeetResponse>,
    ) {
        let ip = self.sources.get(&connection).copied().flatten();
        let answer = self
            .directory
            .handle(crate::platform::now_ms(), peer, ip, request);
        if matches!(answer, super::meet::MeetResponse::Refused { .. }) {
            self.refused += 1;
        }
        // The asker may have gone; nothing to do then.
        let _ = swarm.behaviour_mut().meet.send_response(channel, answer);
    }
}

async fn run(
    mut swarm: Swarm<ServerBehaviour>,
    directory: Directory,
    mut serving: Option<serve::Serving>,
    mut inbox: mpsc::Receiver<ServerCommand>,
    mut done_in: mpsc::Receiver<serve::Done>,
    subscribers: super::Subscribers<ServerEvent>,
) {
    let emit = |event: ServerEvent| subscribers.publish(&event);
    let me = *swarm.local_peer_id();
    let mut meeting = Meeting {
        directory,
        sources: HashMap::new(),
        refused: 0,
    };
    // Other server processes over the same storage (none without one).
    let mut changes = match serving.as_ref() {
        Some(serving) => serving.changes(),
        None => Box::pin(futures::stream::pending()),
    }
    .fuse();
    let done = loop {
        futures::select! {
            changed = changes.next() => {
                if let (Some(changed), Some(serving)) = (changed, serving.as_mut()) {
                    serving.changed(changed);
                }
            },
            command = inbox.next() => match command {
                None => break None,
                Some(ServerCommand::Shutdown(done)) => break Some(done),
                Some(ServerCommand::ListenAddrs(tx)) => {
                    let _ = tx.send(swarm.listeners().map(|a| with_peer(a, me)).collect());
                }
                Some(ServerCommand::Connected(tx)) => {
                    let _ = tx.send(swarm.connected_peers().count());
                }
                Some(ServerCommand::Stats(tx)) => {
                    let _ = tx.send(ServerStats {
                        peers: swarm.connected_peers().count(),
                        directory: meeting.directory.stats(),
                        refused_requests: meeting.refused,
                        served: serving.as_ref().map(|s| ServedStats {
                            held: crate::host::HostStats::default(),
                            loaded: s.loaded(),
                            counters: s.counters,
                        }),
                    });
                }
            },
            done = done_in.next() => {
                if let (Some(done), Some(serving)) = (done, serving.as_mut()) {
                    serving.done(&mut swarm, done);
                }
            },
            event = swarm.select_next_some().fuse() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    // Peers learn the node's addresses from identify.
                    swarm.add_external_address(address.clone());
                    emit(ServerEvent::Listening(with_peer(&address, me)));
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                    let ip = match &endpoint {
                        libp2p::core::ConnectedPoint::Listener { send_back_addr, .. } => {
                            super::meet::source_ip(send_back_addr)
                        }
                        libp2p::core::ConnectedPoint::Dialer { address, .. } => {
                            super::meet::source_ip(address)
                        }
                    };
                    meeting.sources.insert(connection_id, ip);
                    if num_established.get() == 1 {
                        emit(ServerEvent::PeerConnected(peer_id));
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                    meeting.sources.remove(&connection_id);
                    if num_established == 0 {
                        // Registrations last while their device is connected.
                        meeting.directory.disconnected(&peer_id);
                        if let Some(serving) = serving.as_mut() {
                            serving.disconnected(&peer_id);
                        }
                        emit(ServerEvent::PeerDisconnected(peer_id));
                    }
                }
                SwarmEvent::Behaviour(ServerBehaviourEvent::Meet(
                    request_response::Event::Message {
                        peer,
                        connection_id,
                        message: request_response::Message::Request { request, channel, .. },
                    },
                )) => meeting.request(&mut swarm, peer, connection_id, request, channel),
                SwarmEvent::Behaviour(ServerBehaviourEvent::Sync(event)) => {
                    if let Some(serving) = serving.as_mut() {
                        serving.sync_event(&mut swarm, event);
                    }
                }
                SwarmEvent::Behaviour(ServerBehaviourEvent::Relay(event)) => {
                    use libp2p::relay::Event;
                    match event {
                        Event::ReservationReqAccepted { src_peer_id, .. } => {
                            emit(ServerEvent::Reserved(src_peer_id));
                        }
                        Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                            emit(ServerEvent::CircuitOpened { from: src_peer_id, to: dst_peer_id });
                        }
                        Event::CircuitClosed { src_peer_id, dst_peer_id, .. } => {
                            emit(ServerEvent::CircuitClosed { from: src_peer_id, to: dst_peer_id });
                        }
                        other => tracing::debug!(?other, "relay"),
                    }
                }
                other => tracing::trace!(?other, "node event"),
            },
        }
    };
    // Listeners close with the swarm.
    let listeners: Vec<_> = swarm.listeners().cloned().collect();
    tracing::info!(peer = %me, listeners = listeners.len(), "node stopped");
    drop(swarm);
    if let Some(done) = done {
        let _ = done.send(());
    }
}
