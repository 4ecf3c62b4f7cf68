//! The browser's transports of a P2P node: WebSocket (`/ws`, `/wss`) and
//! WebRTC-direct (`/webrtc-direct/certhash/...`) dialing, Noise and Yamux
//! over WebSocket, relayed connections through a relay (how two browsers
//! reach each other). A browser cannot listen on a socket or multicast:
//! there is no mDNS, and the DHT runs in client mode.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::{upgrade, Transport};
use libp2p::{identity, noise, swarm::dummy, yamux, PeerId, Swarm, SwarmBuilder};

use crate::error::{Error, Result};
use crate::net::{Behaviour, P2pOptions};

/// A browser answers no DHT queries (nobody can dial it directly).
pub const KAD_MODE: libp2p::kad::Mode = libp2p::kad::Mode::Client;

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

/// A swarm that dials WebSocket and WebRTC-direct addresses and relayed
/// ones, for the behaviour `behaviour` builds around the relay client.
pub fn swarm(
    keypair: identity::Keypair,
    behaviour: impl FnOnce(libp2p::relay::client::Behaviour) -> Result<Behaviour>,
    options: &P2pOptions,
) -> Result<Swarm<Behaviour>> {
    if options.count_bytes.is_some() || options.simulated_latency.is_some() {
        return Err(Error::InvalidOptions(
            "byte counting and simulated latency are native measurement options".into(),
        ));
    }
    let transport = |e: &dyn std::fmt::Display| Error::InvalidOptions(format!("transport: {e}"));
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                libp2p::websocket_websys::Transport::default()
                    .upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))),
            )
        })
        .map_err(|e| transport(&e))?
        .with_other_transport(|key| {
            libp2p::webrtc_websys::Transport::new(libp2p::webrtc_websys::Config::new(key))
        })
        .map_err(|e| transport(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| transport(&e))?
        .with_behaviour(|_, relay| behaviour(relay).map_err(Box::from))
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
                .with_max_negotiating_inbound_streams(crate::net::MAX_NEGOTIATING_STREAMS)
        })
        .build())
}
