//! The native transports of a P2P node: TCP and QUIC, Noise, Yamux, on
//! tokio; mDNS from libp2p's tokio implementation.

use std::time::Duration;

use libp2p::{identity, mdns, noise, tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder};

use crate::error::{Error, Result};
use crate::net::Behaviour;

/// mDNS discovery natively.
pub type Mdns = mdns::tokio::Behaviour;

/// An mDNS behaviour for `peer_id`.
pub fn mdns(peer_id: PeerId) -> Result<Mdns> {
    mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
        .map_err(|e| Error::InvalidOptions(format!("mDNS unavailable: {e}")))
}

/// Addresses mDNS found, to dial.
pub fn mdns_discovered(event: mdns::Event) -> Vec<Multiaddr> {
    match event {
        mdns::Event::Discovered(found) => found.into_iter().map(|(_, addr)| addr).collect(),
        mdns::Event::Expired(_) => Vec::new(),
    }
}

/// A swarm with TCP and QUIC transports for `behaviour`. Needs a tokio
/// runtime (the node's loop runs on it).
pub fn swarm(keypair: identity::Keypair, behaviour: Behaviour) -> Result<Swarm<Behaviour>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::InvalidOptions(
            "P2P needs a tokio runtime natively".into(),
        ));
    }
    let transport = |e: &dyn std::fmt::Display| Error::InvalidOptions(format!("transport: {e}"));
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_behaviour(|_| behaviour)
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}
