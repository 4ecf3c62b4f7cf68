//! Finding peers through bootstrap nodes: relay reservations on the nodes
//! that relay, pending codes registered at their rendezvous points, and the
//! store's devices registered and looked up there.

use std::collections::BTreeMap;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{identify, rendezvous, Multiaddr, PeerId};

use super::{now, Node};
use crate::error::Error;

/// Empty rendezvous lookups (one per tick) before a code counts as
/// unknown.
const LOOKUPS_BEFORE_GIVING_UP: u32 = 10;
/// The relay protocol a bootstrap node offers when it relays.
const RELAY_HOP: &str = "/libp2p/circuit/relay/0.2.0/hop";
/// Shortest registration rendezvous servers accept from Persist nodes
/// (`persist node` sets its minimum to this).
pub(in crate::net) const MIN_RENDEZVOUS_TTL_S: u64 = 60;

/// How long a store registration lasts on a bootstrap node, and how
/// often (in ticks) it is renewed and the store's other devices looked up.
const PRESENCE_TTL_S: u64 = 600;
const PRESENCE_TICKS: u32 = 30;

/// The rendezvous namespace under which the devices of `store` meet on a
/// bootstrap node: a hash of the store id, so the node learns which peers
/// share a store (it sees their connections anyway), not the store id.
pub(super) fn store_namespace(store: &crate::change::StoreId) -> Option<rendezvous::Namespace> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"persist/rendezvous/store/v1\0")
        .chain_update(store.as_bytes())
        .finalize();
    rendezvous::Namespace::new(format!("persist/store/{}", hex::encode(&digest[..16]))).ok()
}

/// The rendezvous namespace under which a device offering a code with
/// `nameplate` registers (the nameplate is public: it names a pending
/// code, and says nothing of its secret).
pub(super) fn pairing_namespace(nameplate: &str) -> Option<rendezvous::Namespace> {
    rendezvous::Namespace::new(format!("persist/pair/{nameplate}")).ok()
}

/// True for an address anyone on the Internet could dial: a public IP, a
/// DNS name (the operator's choice), or a relayed address. Loopback,
/// private (RFC 1918, unique-local), link-local, shared (CGNAT) and
/// unspecified addresses are not.
pub(super) fn is_public(addr: &Multiaddr) -> bool {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return true;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let shared = ip.octets()[0] == 100 && (ip.octets()[1] & 0xC0) == 64;
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || shared)
        }
        Some(Protocol::Ip6(ip)) => {
            let segments = ip.segments();
            let unique_local = (segments[0] & 0xFE00) == 0xFC00;
            let link_local = (segments[0] & 0xFFC0) == 0xFE80;
            !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => {
            true
        }
        _ => false,
    }
}

/// Whether this device announces `addr` (to rendezvous points and in
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

    /// Connected bootstrap nodes that run a rendezvous point.
    pub(super) fn connected_rendezvous_points(&self) -> Vec<PeerId> {
        self.rendezvous_points
            .iter()
            .filter(|p| self.swarm.is_connected(p))
            .copied()
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
    /// bootstrap nodes (again when this node's addresses change), so a
    /// device that only knows the code finds this one.
    pub(super) fn announce_codes(&mut self) {
        if self.codes.is_empty() || self.swarm.external_addresses().next().is_none() {
            return;
        }
        let servers = self.connected_rendezvous_points();
        let now = now();
        let codes: Vec<(String, u64)> = self
            .codes
            .iter()
            .map(|(n, c)| (n.clone(), c.expires_at))
            .collect();
        for (nameplate, expires_at) in codes {
            let Some(namespace) = pairing_namespace(&nameplate) else {
                continue;
            };
            let ttl = (expires_at.saturating_sub(now) / 1000).max(MIN_RENDEZVOUS_TTL_S);
            for server in &servers {
                if let Err(e) = self.swarm.behaviour_mut().rendezvous.register(
                    namespace.clone(),
                    *server,
                    Some(ttl),
                ) {
                    tracing::debug!(%server, %e, "pairing code not registered");
                }
            }
        }
    }

    /// Registers this device under its store's namespace on the connected
    /// bootstrap nodes and looks up the store's other devices there (how
    /// devices that cannot find each other on a local network, browsers
    /// first, meet again after pairing).
    pub(super) fn announce_presence(&mut self) {
        let servers = self.connected_rendezvous_points();
        // While joining, the store is about to change id: its devices are
        // met once it has (and every empty lookup answered meanwhile is
        // the code's, which counts them).
        if servers.is_empty() || self.joining.is_some() {
            return;
        }
        self.presence_in = PRESENCE_TICKS;
        let Some(namespace) = store_namespace(&self.replica.store_id()) else {
            return;
        };
        let reachable = self.swarm.external_addresses().next().is_some();
        for server in servers {
            let rendezvous = &mut self.swarm.behaviour_mut().rendezvous;
            if reachable {
                if let Err(e) = rendezvous.register(namespace.clone(), server, Some(PRESENCE_TTL_S))
                {
                    tracing::debug!(%server, %e, "store presence not registered");
                }
            }
            rendezvous.discover(Some(namespace.clone()), None, Some(64), server);
        }
    }

    /// Dials the store's members a bootstrap node knows addresses of.
    pub(super) fn meet_members(&mut self, found: Vec<(PeerId, Vec<Multiaddr>)>) {
        for (peer, addrs) in found {
            if !self.is_member(&peer) || self.swarm.is_connected(&peer) {
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
        let Some(namespace) = pairing_namespace(nameplate) else {
            return;
        };
        for server in self.connected_rendezvous_points() {
            self.swarm
                .behaviour_mut()
                .rendezvous
                .unregister(namespace.clone(), server);
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
        let Some(namespace) = joining
            .code
            .as_ref()
            .and_then(|c| pairing_namespace(c.nameplate()))
        else {
            return;
        };
        for server in self.connected_rendezvous_points() {
            self.swarm.behaviour_mut().rendezvous.discover(
                Some(namespace.clone()),
                None,
                Some(8),
                server,
            );
        }
    }

    pub(super) fn rendezvous_event(&mut self, event: rendezvous::client::Event) {
        match event {
            rendezvous::client::Event::Discovered { registrations, .. } => {
                let me = *self.swarm.local_peer_id();
                let ours = store_namespace(&self.replica.store_id());
                let (members, registrations): (Vec<_>, Vec<_>) = registrations
                    .into_iter()
                    .partition(|r| Some(&r.namespace) == ours.as_ref());
                self.meet_members(
                    members
                        .into_iter()
                        .filter(|r| r.record.peer_id() != me)
                        .map(|r| (r.record.peer_id(), r.record.addresses().to_vec()))
                        .collect(),
                );
                let Some(joining) = self.joining.as_mut() else {
                    return;
                };
                if joining.host.is_some() || joining.session.is_some() {
                    return;
                }
                let mut offers: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for registration in registrations {
                    let record = &registration.record;
                    if record.peer_id() != me {
                        offers
                            .entry(record.peer_id())
                            .or_default()
                            .extend(record.addresses().iter().cloned());
                    }
                }
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
                        "several devices offer a code with this nameplate: create a new code"
                            .into(),
                    ))),
                }
            }
            rendezvous::client::Event::DiscoverFailed { error, .. } => {
                tracing::debug!(?error, "rendezvous lookup failed");
            }
            rendezvous::client::Event::RegisterFailed {
                namespace, error, ..
            } => tracing::warn!(%namespace, ?error, "not registered on the rendezvous point"),
            other => tracing::debug!(?other, "rendezvous"),
        }
    }
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
