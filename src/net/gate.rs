//! Connection gating: a connection whose PeerId is not a member of the
//! store is refused right after the handshake (before any protocol
//! stream), except configured bootstrap/relay peers, and any peer while a
//! pairing exchange is open (such peers may speak only the pairing
//! protocol: the sync protocol refuses non-members).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Who may connect, shared by the node's loop and its [`Gate`].
#[derive(Debug, Default)]
pub struct GateState {
    /// Members of the store.
    pub members: HashSet<PeerId>,
    /// Bootstrap/relay peers (by id, when their address named it).
    pub bootstrap: HashSet<PeerId>,
    /// Bootstrap/relay addresses without a peer id (admitted when dialled).
    pub bootstrap_addrs: Vec<Multiaddr>,
    /// True while a pairing code is pending or an exchange runs.
    pub pairing_open: bool,
    /// Connections refused so far.
    pub refused: u64,
}

impl GateState {
    /// True when `peer` may hold a connection.
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.members.contains(peer) || self.bootstrap.contains(peer) || self.pairing_open
    }
}

/// The error of a refused connection.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not a member of this store")]
pub struct NotAMember(PeerId);

/// The gating behaviour (first in the node's behaviour, so it decides
/// before any other).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    state: Arc<Mutex<GateState>>,
}

impl Gate {
    /// A gate over `state`.
    pub fn new(state: Arc<Mutex<GateState>>) -> Gate {
        Gate { state }
    }

    fn check(
        &self,
        peer: PeerId,
        dialled: Option<&Multiaddr>,
    ) -> Result<dummy::ConnectionHandler, ConnectionDenied> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bootstrap_addr = dialled.is_some_and(|addr| {
            let mut addr = addr.clone();
            if matches!(
                addr.iter().last(),
                Some(libp2p::multiaddr::Protocol::P2p(_))
            ) {
                addr.pop();
            }
            state.bootstrap_addrs.contains(&addr)
        });
        if bootstrap_addr {
            // Known by its id from now on (the loop treats it as a
            // bootstrap and relay node, and the gate keeps admitting it).
            state.bootstrap.insert(peer);
        }
        if state.admits(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        state.refused += 1;
        tracing::info!(%peer, "connection refused: not a member of the store");
        Err(ConnectionDenied::new(NotAMember(peer)))
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, None)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, Some(addr))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
