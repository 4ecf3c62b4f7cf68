//! The headless node (`persist node`): a bootstrap peer, circuit-relay
//! server and rendezvous point for devices and browsers. It is a member of
//! no store: it speaks none of the store protocols, holds no key, and what
//! it relays is Noise-encrypted end to end between the two devices (and,
//! for encrypted stores, sealed again under the store's key). Runtime
//! neutral; the platform builds its transports
//! (`platform::native::net::server_swarm`).

use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};

use crate::error::{Error, Result};

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
    /// How long one relayed connection may last.
    pub max_circuit_duration: Duration,
    /// Bytes one relayed connection may carry (each way).
    pub max_circuit_bytes: u64,
    /// Pairing-code registrations held at once, at most.
    pub max_registrations: usize,
    /// Established connections at most.
    pub max_connections: u32,
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
            max_circuit_duration: Duration::from_secs(60 * 60),
            max_circuit_bytes: 1 << 30,
            max_registrations: 4096,
            max_connections: 2048,
        }
    }
}

pub use behaviour::{ServerBehaviour, ServerBehaviourEvent};

#[allow(missing_docs)]
mod behaviour {
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{connection_limits, identify, identity, kad, ping, relay, rendezvous};

    use super::ServerOptions;

    /// What a headless node runs: no store protocol, only discovery and
    /// relaying.
    #[derive(NetworkBehaviour)]
    pub struct ServerBehaviour {
        limits: connection_limits::Behaviour,
        identify: identify::Behaviour,
        ping: ping::Behaviour,
        kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) relay: relay::Behaviour,
        pub(super) rendezvous: rendezvous::server::Behaviour,
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
            let relay = relay::Config {
                max_reservations: options.max_reservations,
                max_reservations_per_peer: 4,
                max_circuits: options.max_circuits,
                max_circuits_per_peer: options.max_circuits_per_peer,
                max_circuit_duration: options.max_circuit_duration,
                max_circuit_bytes: options.max_circuit_bytes,
                ..relay::Config::default()
            };
            ServerBehaviour {
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
                rendezvous: rendezvous::server::Behaviour::new(
                    rendezvous::server::Config::default()
                        .with_min_ttl(crate::net::node::MIN_RENDEZVOUS_TTL_S)
                        .with_max_registration_total(options.max_registrations),
                ),
            }
        }
    }
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
    Shutdown(oneshot::Sender<()>),
}

/// A running headless node.
#[derive(Clone)]
pub struct Server {
    peer_id: PeerId,
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
        crate::platform::spawn(run(swarm, inbox, subscribers.clone()));
        Ok(Server {
            peer_id,
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

async fn run(
    mut swarm: Swarm<ServerBehaviour>,
    mut inbox: mpsc::Receiver<ServerCommand>,
    subscribers: super::Subscribers<ServerEvent>,
) {
    let emit = |event: ServerEvent| subscribers.publish(&event);
    let me = *swarm.local_peer_id();
    let done = loop {
        futures::select! {
            command = inbox.next() => match command {
                None => break None,
                Some(ServerCommand::Shutdown(done)) => break Some(done),
                Some(ServerCommand::ListenAddrs(tx)) => {
                    let _ = tx.send(swarm.listeners().map(|a| with_peer(a, me)).collect());
                }
                Some(ServerCommand::Connected(tx)) => {
                    let _ = tx.send(swarm.connected_peers().count());
                }
            },
            event = swarm.select_next_some().fuse() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    // Peers learn the node's addresses from identify.
                    swarm.add_external_address(address.clone());
                    emit(ServerEvent::Listening(with_peer(&address, me)));
                }
                SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                    if num_established.get() == 1 => emit(ServerEvent::PeerConnected(peer_id)),
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    emit(ServerEvent::PeerDisconnected(peer_id));
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
