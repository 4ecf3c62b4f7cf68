//! Finding peers through bootstrap nodes: relay reservations on the nodes
//! that relay, pending codes registered at their meeting points
//! (`/persist/meet/1`, see [`crate::net::meet`]), and the store's devices
//! registered and looked up there.

use std::collections::BTreeMap;

use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{identify, Multiaddr, PeerId};

use super::{now, Node};
use crate::error::Error;
use crate::net::meet::{
    self, pairing_key, place_of, store_key, MeetRequest, MeetResponse, PlaceKind, Refusal,
};

pub(super) use crate::net::meet::is_public;

/// Empty lookups (one per tick) before a code counts as unknown.
const LOOKUPS_BEFORE_GIVING_UP: u32 = 10;
/// The relay protocol a bootstrap node offers when it relays.
const RELAY_HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// How long a registration lasts on a bootstrap node, and how often (in
/// ticks) registrations are renewed and the store's other devices looked
/// up.
const PRESENCE_TTL_S: u32 = 120;
const PRESENCE_TICKS: u32 = 30;

/// What a meeting-point request was for.
pub(super) enum Asked {
    /// Registering this device or one of its codes.
    Register(&'static str),
    /// Withdrawing a code.
    Unregister,
    /// Looking up the store's other devices.
    Members,
    /// Looking up the device that offers the code being joined with.
    Host,
}

/// Whether this device announces `addr` (to meeting points and in
/// identify): public and relayed addresses always; private ones only when
/// no bootstrap node is on a public address (a deployment on one network,
/// or none), so a public node never learns a device's LAN or VPN
/// addresses.
pub(super) fn announces(addr: &Multiaddr, bootstrap: &[Multiaddr]) -> bool {
    is_public(addr) || !bootstrap.iter().any(is_public)
}

impl Node {
    pub(super) fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bootstrap
            .contains(peer)
    }

    /// Connected bootstrap nodes that run a meeting point.
    pub(super) fn connected_meeting_points(&self) -> Vec<PeerId> {
        self.meeting_points
            .iter()
            .filter(|p| self.swarm.is_connected(p))
            .copied()
            .collect()
    }

    /// Sends `request` to the meeting point `server`.
    fn ask(&mut self, server: PeerId, request: MeetRequest, asked: Asked) {
        let id = self
            .swarm
            .behaviour_mut()
            .meet
            .send_request(&server, request);
        self.asked.insert(id, asked);
    }

    /// This device's announced addresses, as a registration carries them.
    fn registered_addrs(&self) -> Vec<Vec<u8>> {
        self.swarm
            .external_addresses()
            .filter(|a| a.as_ref().len() <= meet::MAX_ADDR_BYTES)
            .take(meet::MAX_ADDRS)
            .map(|a| a.to_vec())
            .collect()
    }

    /// Reserves a slot on a bootstrap node that relays, so that peers that
    /// cannot dial this node (a browser cannot listen) reach it there.
    pub(super) fn maybe_reserve(&mut self, peer: PeerId, info: &identify::Info) {
        if self.relays.contains(&peer)
            || !self.is_bootstrap(&peer)
            || !info.protocols.iter().any(|p| p.as_ref() == RELAY_HOP)
        {
            return;
        }
        let Some(addr) = self.bootstrap_addrs.get(&peer) else {
            return;
        };
        let circuit = crate::net::with_peer(addr, peer).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                self.relays.insert(peer);
                tracing::info!(%circuit, "asking for a relay reservation");
            }
            Err(e) => tracing::warn!(%circuit, %e, "cannot listen through the relay"),
        }
    }

    /// Registers every pending code's nameplate with the connected
    /// bootstrap nodes (again when this node's addresses change, and on
    /// each presence renewal), so a device that only knows the code finds
    /// this one.
    pub(super) fn announce_codes(&mut self) {
        let addrs = self.registered_addrs();
        if self.codes.is_empty() || addrs.is_empty() {
            return;
        }
        let servers = self.connected_meeting_points();
        let now = now();
        let codes: Vec<(String, u64)> = self
            .codes
            .iter()
            .map(|(n, c)| (n.clone(), c.expires_at))
            .collect();
        for (nameplate, expires_at) in codes {
            let ttl_s =
                (expires_at.saturating_sub(now) / 1000).clamp(1, u64::from(meet::MAX_TTL_S));
            for server in &servers {
                let request = MeetRequest::Register {
                    key: pairing_key(&nameplate),
                    kind: PlaceKind::Pairing,
                    addrs: addrs.clone(),
                    ttl_s: ttl_s as u32,
                };
                self.ask(*server, request, Asked::Register("pairing code"));
            }
        }
    }

    /// Registers this device under its store's place on the connected
    /// bootstrap nodes and looks up the store's other devices there (how
    /// devices that cannot find each other on a local network, browsers
    /// first, meet again after pairing). Renews the codes' registrations.
    pub(super) fn announce_presence(&mut self) {
        let servers = self.connected_meeting_points();
        // While joining, the store is about to change id: its devices are
        // met once it has.
        if servers.is_empty() || self.joining.is_some() {
            return;
        }
        self.presence_in = PRESENCE_TICKS;
        let key = store_key(&self.replica.store_id());
        let addrs = self.registered_addrs();
        for server in servers {
            if !addrs.is_empty() {
                let request = MeetRequest::Register {
                    key,
                    kind: PlaceKind::Store,
                    addrs: addrs.clone(),
                    ttl_s: PRESENCE_TTL_S,
                };
                self.ask(server, request, Asked::Register("store presence"));
            }
            let place = place_of(&key);
            self.ask(server, MeetRequest::Lookup { place }, Asked::Members);
        }
        self.announce_codes();
    }

    /// Dials the store's members a bootstrap node knows addresses of.
    pub(super) fn meet_members(&mut self, found: Vec<(PeerId, Vec<Multiaddr>)>) {
        let me = *self.swarm.local_peer_id();
        for (peer, addrs) in found {
            if peer == me || !self.is_member(&peer) || self.swarm.is_connected(&peer) {
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
    pub(super) fn withdraw_code(&mut self, nameplate: &str) {
        if !self.codes.contains_key(nameplate) {
            return;
        }
        let place = place_of(&pairing_key(nameplate));
        for server in self.connected_meeting_points() {
            self.ask(server, MeetRequest::Unregister { place }, Asked::Unregister);
        }
    }

    /// Asks the connected bootstrap nodes which device offers the code
    /// this node is joining with (when no address named the host).
    pub(super) fn look_up_host(&mut self) {
        let Some(joining) = self.joining.as_ref() else {
            return;
        };
        if joining.host.is_some() || joining.session.is_some() {
            return;
        }
        let Some(nameplate) = joining.code.as_ref().map(|c| c.nameplate().to_owned()) else {
            return;
        };
        let place = place_of(&pairing_key(&nameplate));
        for server in self.connected_meeting_points() {
            self.ask(server, MeetRequest::Lookup { place }, Asked::Host);
        }
    }

    pub(super) fn meet_event(&mut self, event: request_response::Event<MeetRequest, MeetResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(asked) = self.asked.remove(&request_id) {
                    self.meet_answer(peer, asked, response);
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.asked.remove(&request_id);
                tracing::debug!(%peer, %error, "meeting point unreachable");
            }
            _ => {}
        }
    }

    fn meet_answer(&mut self, server: PeerId, asked: Asked, response: MeetResponse) {
        match (asked, response) {
            (Asked::Register(what), MeetResponse::Refused { refusal }) => match refusal {
                Refusal::Taken => tracing::warn!(
                    %server,
                    "another device holds this code's nameplate on the bootstrap node: \
                     a device that only has the code cannot find this one there (make a new code)"
                ),
                other => {
                    tracing::warn!(%server, ?other, "{what} not registered on the bootstrap node")
                }
            },
            (Asked::Members, MeetResponse::Found { peers }) => {
                self.meet_members(found(peers).into_iter().collect());
            }
            (Asked::Host, MeetResponse::Found { peers }) => self.host_found(found(peers)),
            (_, MeetResponse::Refused { refusal }) => {
                tracing::debug!(%server, ?refusal, "meeting point refused a request");
            }
            _ => {}
        }
    }

    /// What a lookup of the code's nameplate found.
    fn host_found(&mut self, offers: BTreeMap<PeerId, Vec<Multiaddr>>) {
        let me = *self.swarm.local_peer_id();
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        if joining.host.is_some() || joining.session.is_some() {
            return;
        }
        let offers: Vec<_> = offers.into_iter().filter(|(p, _)| *p != me).collect();
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
                "several devices offer a code with this nameplate: create a new code".into(),
            ))),
        }
    }
}

/// The devices of a lookup's answer, by PeerId (entries that do not decode
/// are skipped: the node is not trusted for them, only for finding).
fn found(peers: Vec<meet::MeetPeer>) -> BTreeMap<PeerId, Vec<Multiaddr>> {
    let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
    for entry in peers.into_iter().take(meet::MAX_FOUND) {
        let Ok(peer) = PeerId::from_bytes(&entry.peer) else {
            continue;
        };
        let addrs = entry
            .addrs
            .into_iter()
            .take(meet::MAX_ADDRS)
            .filter_map(|bytes| Multiaddr::try_from(bytes).ok());
        by_peer.entry(peer).or_default().extend(addrs);
    }
    by_peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    #[test]
    fn private_addresses_are_announced_only_without_a_public_node() {
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.9/udp/1/quic-v1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert!(!is_public(&addr(private)), "{private}");
        }
        for public in [
            "/ip4/203.0.114.7/tcp/1",
            "/ip6/2a00:1450::1/tcp/1",
            "/dns4/node.example.org/tcp/1",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWCRS8kJRpAFAWPwU41G2XE3SqknHTEDmjWRyyZ8d5JGtL/p2p-circuit",
        ] {
            assert!(is_public(&addr(public)), "{public}");
        }
        let lan = addr("/ip4/192.168.1.9/tcp/4001");
        assert!(announces(&lan, &[]));
        assert!(announces(&lan, &[addr("/ip4/127.0.0.1/tcp/4001")]));
        assert!(!announces(&lan, &[addr("/dns4/node.example.org/tcp/4001")]));
        assert!(announces(
            &addr("/ip4/203.0.114.7/tcp/1"),
            &[addr("/dns4/node.example.org/tcp/4001")]
        ));
    }
}
