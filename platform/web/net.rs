//! P2P in the browser: not yet (the one-network issue adds WebSocket and
//! WebRTC-direct transports). The behaviour compiles here already; there is
//! no mDNS in a browser.

use libp2p::{identity, swarm::dummy, PeerId, Swarm};

use crate::error::{Error, Result};
use crate::net::Behaviour;

/// No mDNS in a browser.
pub type Mdns = dummy::Behaviour;

/// Always refused: browsers cannot multicast.
pub fn mdns(_: PeerId) -> Result<Mdns> {
    Err(Error::InvalidOptions(
        "there is no mDNS in a browser".into(),
    ))
}

/// Nothing is ever discovered.
pub fn mdns_discovered(event: std::convert::Infallible) -> Vec<libp2p::Multiaddr> {
    match event {}
}

/// Not available yet in the browser.
pub fn swarm(
    _: identity::Keypair,
    _: Behaviour,
    _: &crate::net::P2pOptions,
) -> Result<Swarm<Behaviour>> {
    Err(Error::InvalidOptions(
        "P2P is not available in the browser yet".into(),
    ))
}
