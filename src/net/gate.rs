//! Connection and stream gating. A connection whose PeerId is not a
//! member of the store is refused right after the handshake (before any
//! protocol stream), except configured bootstrap/relay peers, and any peer
//! while a pairing exchange is open. Such a peer may then open only what
//! [`Gated`] lets it: the pairing protocol while this device offers a code,
//! never the sync or live protocols. A refused stream fails at protocol
//! negotiation, before a byte of its payload is read.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use either::Either;
use futures::future;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{
    ConnectionEvent, ConnectionHandlerEvent, FullyNegotiatedInbound, ListenUpgradeError,
    SendWrapper,
};
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionHandler, ConnectionId, FromSwarm, NetworkBehaviour,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
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
    /// Sync servers this device replicates with (they send pushes: the
    /// sync and live protocols admit them like members).
    pub servers: HashSet<PeerId>,
    /// True while a pairing code is pending or an exchange runs.
    pub pairing_open: bool,
    /// True while this device offers a code or hosts an exchange (it then
    /// answers pairing streams).
    pub hosting_pairing: bool,
    /// Connections refused so far.
    pub refused: u64,
}

impl GateState {
    /// True when `peer` may hold a connection.
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.members.contains(peer)
            || self.bootstrap.contains(peer)
            || self.servers.contains(peer)
            || self.pairing_open
    }

    /// True when `peer` may open an inbound stream of a protocol gated
    /// with `admit`.
    pub fn admits_streams(&self, peer: &PeerId, admit: Admit) -> bool {
        match admit {
            Admit::Members => self.members.contains(peer) || self.servers.contains(peer),
            Admit::Pairing => self.hosting_pairing,
        }
    }
}

/// Who may open inbound streams of a gated protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Current members of the store only (sync and live).
    Members,
    /// Anyone, while this device offers a pairing code (pairing).
    Pairing,
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

/// A behaviour whose inbound streams only the peers its [`Admit`] names
/// may open, decided per stream from the shared [`GateState`] (a peer that
/// pairs becomes a member and may then sync on the same connection).
/// Outbound streams are this device's own choice and pass untouched.
pub struct Gated<B> {
    inner: B,
    gate: Arc<Mutex<GateState>>,
    admit: Admit,
}

impl<B> Gated<B> {
    /// `inner`, gated by `gate` with `admit`.
    pub fn new(inner: B, gate: Arc<Mutex<GateState>>, admit: Admit) -> Gated<B> {
        Gated { inner, gate, admit }
    }

    fn handler<H>(&self, inner: H, peer: PeerId) -> GatedHandler<H> {
        GatedHandler {
            inner,
            peer,
            gate: self.gate.clone(),
            admit: self.admit,
        }
    }
}

impl<B> std::ops::Deref for Gated<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Gated<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = GatedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        Ok(self.handler(inner, peer))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        Ok(self.handler(inner, peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// The connection handler of [`Gated`]: offers the inner handler's
/// protocols on inbound streams only while the peer is admitted, and
/// [`DeniedUpgrade`] (no protocol at all) otherwise.
pub struct GatedHandler<H> {
    inner: H,
    peer: PeerId,
    gate: Arc<Mutex<GateState>>,
    admit: Admit,
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = Either<SendWrapper<H::InboundProtocol>, DeniedUpgrade>;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        let admitted = self
            .gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admits_streams(&self.peer, self.admit);
        self.inner.listen_protocol().map_upgrade(|upgrade| {
            if admitted {
                Either::Left(SendWrapper(upgrade))
            } else {
                Either::Right(DeniedUpgrade)
            }
        })
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                match protocol {
                    future::Either::Left(protocol) => {
                        ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                            protocol,
                            info,
                        })
                    }
                    future::Either::Right(never) => match never {},
                }
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                match error {
                    Either::Left(error) => {
                        ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error })
                    }
                    Either::Right(never) => match never {},
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(e) => {
                ConnectionEvent::FullyNegotiatedOutbound(e)
            }
            ConnectionEvent::DialUpgradeError(e) => ConnectionEvent::DialUpgradeError(e),
            ConnectionEvent::AddressChange(e) => ConnectionEvent::AddressChange(e),
            ConnectionEvent::LocalProtocolsChange(e) => ConnectionEvent::LocalProtocolsChange(e),
            ConnectionEvent::RemoteProtocolsChange(e) => ConnectionEvent::RemoteProtocolsChange(e),
            // Events of later libp2p versions: none the handlers here use.
            _ => return,
        };
        self.inner.on_connection_event(event)
    }
}
