//! The node's network behaviour, the same on every target (its derived
//! event enum is generated without docs).
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, identify, identity, kad, ping, relay};

use super::gate::{Admit, Gate, GateState, Gated};
use super::meet::{MeetCodec, MEET_PROTOCOL};
use super::{P2pOptions, PairCodec, SyncCodec, PAIR_PROTOCOL, SYNC_PROTOCOL};
use crate::error::Result;

/// The node's network behaviour, the same on every target (mDNS is the
/// platform's, or nothing where there is none). The gate comes first:
/// it refuses a connection before any other behaviour sees it.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gate: Gate,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    mdns: Toggle<crate::platform::Mdns>,
    /// Reservations on relays (bootstrap nodes) and relayed connections:
    /// how two browsers, or devices behind NATs, reach each other.
    pub(super) relay: relay::client::Behaviour,
    /// Registers at and asks bootstrap nodes' meeting points: finds the
    /// device that offers a pairing code (a browser has no mDNS) and the
    /// store's other devices.
    pub(super) meet: request_response::Behaviour<MeetCodec>,
    /// Members only.
    pub(super) sync: Gated<request_response::Behaviour<SyncCodec>>,
    /// Anyone, while this device offers a code.
    pub(super) pair: Gated<request_response::Behaviour<PairCodec>>,
    /// Members only.
    pub(super) live: Gated<libp2p_stream::Behaviour>,
}

impl Behaviour {
    /// The behaviour for `keypair` with `options`, gated by `gate`, with
    /// the relay client that goes with the swarm's relayed transport.
    pub fn new(
        keypair: &identity::Keypair,
        options: &P2pOptions,
        gate: Arc<Mutex<GateState>>,
        relay: relay::client::Behaviour,
    ) -> Result<Behaviour> {
        let peer_id = keypair.public().to_peer_id();
        let kad = options.dht.then(|| {
            let mut kad = kad::Behaviour::new(peer_id, kad::store::MemoryStore::new(peer_id));
            kad.set_mode(Some(crate::platform::KAD_MODE));
            kad
        });
        let mdns = if options.mdns {
            Some(crate::platform::mdns(peer_id)?)
        } else {
            None
        };
        Ok(Behaviour {
            gate: Gate::new(gate.clone()),
            // Handshake floods and connection hoarding: bounded.
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_pending_incoming(Some(super::MAX_PENDING_INCOMING))
                    .with_max_established_incoming(Some(super::MAX_INCOMING))
                    .with_max_established_per_peer(Some(super::MAX_PER_PEER)),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/persist/1".into(),
                keypair.public(),
            )),
            ping: ping::Behaviour::default(),
            kad: kad.into(),
            mdns: mdns.into(),
            relay,
            // Asks only: a device answers no one's meeting requests.
            meet: request_response::Behaviour::new(
                [(MEET_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(std::time::Duration::from_secs(10)),
            ),
            // A request and its answer within the timeout (a stream that
            // trickles is cut there), a few streams at once per connection
            // (more are dropped unread).
            sync: Gated::new(
                request_response::Behaviour::new(
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(options.message_timeout)
                        .with_max_concurrent_streams(super::SYNC_STREAMS),
                ),
                gate.clone(),
                Admit::Members,
            ),
            pair: Gated::new(
                request_response::Behaviour::new(
                    [(PAIR_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(options.message_timeout)
                        .with_max_concurrent_streams(super::PAIR_STREAMS),
                ),
                gate.clone(),
                Admit::Pairing,
            ),
            live: Gated::new(libp2p_stream::Behaviour::new(), gate, Admit::Members),
        })
    }
}
