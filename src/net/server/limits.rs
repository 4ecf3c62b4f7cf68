//! Connections per IP address and per subnet (IPv4 /24, IPv6 /48): a
//! crowd behind one address, or one network, cannot take a public node's
//! connection budget (and with it its relay reservations and
//! registrations, which each need a connection). And a rate per subnet for
//! relay reservations and circuits ([`SubnetRate`]), beside libp2p's per
//! peer and per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use web_time::Instant;

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::net::meet::source_ip;

/// The error of a refused connection.
#[derive(Debug, thiserror::Error)]
#[error("too many connections from {0}")]
pub(super) struct TooMany(String);

/// Limits inbound connections per IP address and per subnet.
#[derive(Debug)]
pub struct IpLimits {
    per_ip: u32,
    per_subnet: u32,
    /// Inbound connections by their address, and by its subnet.
    by_connection: HashMap<ConnectionId, IpAddr>,
    ips: HashMap<IpAddr, u32>,
    subnets: HashMap<IpAddr, u32>,
    /// Connections refused so far.
    pub refused: u64,
}

/// The subnet an address belongs to, as its first address.
fn subnet(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4([a, b, c, 0].into())
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6([s[0], s[1], s[2], 0, 0, 0, 0, 0].into())
        }
    }
}

/// Subnets a [`SubnetRate`] remembers at once, at most.
const RATE_SUBNETS: usize = 65_536;

/// A token bucket per subnet (IPv4 /24, IPv6 /48): `burst` at once, then
/// one more every `every`. Addresses without an IP of their own (relayed)
/// are not counted here. Memory is bounded: past 65,536 buckets,
/// the refilled ones are forgotten, then the fullest down to three quarters
/// (a subnet forgotten so starts again with its burst).
#[derive(Debug)]
pub struct SubnetRate {
    burst: f64,
    per_second: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl SubnetRate {
    /// `burst` at once per subnet, then one every `every`.
    pub fn new(burst: u32, every: Duration) -> SubnetRate {
        SubnetRate {
            burst: f64::from(burst.max(1)),
            per_second: 1.0 / every.as_secs_f64().max(1e-3),
            buckets: HashMap::new(),
        }
    }

    /// Whether one more from `addr` is allowed at `now` (and counts it).
    pub fn allow(&mut self, addr: &Multiaddr, now: Instant) -> bool {
        let Some(ip) = source_ip(addr) else {
            return true;
        };
        let key = subnet(&ip);
        if self.buckets.len() >= RATE_SUBNETS && !self.buckets.contains_key(&key) {
            let (burst, rate) = (self.burst, self.per_second);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            // Still nearly full: forget the fullest buckets down to three
            // quarters, so the next new subnets do not scan again at once.
            if self.buckets.len() > RATE_SUBNETS * 3 / 4 {
                let mut levels: Vec<(f64, IpAddr)> = self
                    .buckets
                    .iter()
                    .map(|(ip, (tokens, at))| {
                        (
                            *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate,
                            *ip,
                        )
                    })
                    .collect();
                levels.sort_by(|a, b| b.0.total_cmp(&a.0));
                let excess = self.buckets.len() - RATE_SUBNETS * 3 / 4;
                for (_, ip) in levels.into_iter().take(excess) {
                    self.buckets.remove(&ip);
                }
            }
        }
        let (tokens, at) = self.buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl IpLimits {
    /// At most `per_ip` inbound connections from one address and
    /// `per_subnet` from one subnet.
    pub fn new(per_ip: u32, per_subnet: u32) -> IpLimits {
        IpLimits {
            per_ip,
            per_subnet,
            by_connection: HashMap::new(),
            ips: HashMap::new(),
            subnets: HashMap::new(),
            refused: 0,
        }
    }

    fn check(&mut self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = source_ip(remote) else {
            return Ok(());
        };
        let too_many = if self.ips.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            Some(ip.to_string())
        } else if self.subnets.get(&subnet(&ip)).copied().unwrap_or(0) >= self.per_subnet {
            Some(format!("the subnet of {ip}"))
        } else {
            None
        };
        match too_many {
            Some(what) => {
                self.refused += 1;
                tracing::debug!(%what, "connection refused: too many from one address");
                Err(ConnectionDenied::new(TooMany(what)))
            }
            None => Ok(()),
        }
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Checked again: several handshakes from one address may have been
        // pending at once.
        self.check(remote)?;
        if let Some(ip) = source_ip(remote) {
            self.by_connection.insert(id, ip);
            *self.ips.entry(ip).or_default() += 1;
            *self.subnets.entry(subnet(&ip)).or_default() += 1;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            if let Some(ip) = self.by_connection.remove(&connection_id) {
                for (map, key) in [(&mut self.ips, ip), (&mut self.subnets, subnet(&ip))] {
                    if let Some(n) = map.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            map.remove(&key);
                        }
                    }
                }
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_subnets_are_capped() {
        let mut limits = IpLimits::new(2, 3);
        let addr = |ip: &str| {
            format!("/ip4/{ip}/tcp/1")
                .parse::<Multiaddr>()
                .expect("addr")
        };
        let local: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().expect("addr");
        let mut accept = |ip: &str| {
            let id = ConnectionId::new_unchecked(limits.by_connection.len() + 100);
            limits
                .handle_established_inbound_connection(id, PeerId::random(), &local, &addr(ip))
                .is_ok()
        };
        assert!(accept("198.51.100.1"));
        assert!(accept("198.51.100.1"));
        assert!(!accept("198.51.100.1"), "per address");
        assert!(accept("198.51.100.2"));
        assert!(!accept("198.51.100.3"), "per subnet");
        assert!(accept("198.51.101.3"), "another subnet");
        // A relayed connection has no address of its own to count.
        let relayed: Multiaddr =
            "/ip4/198.51.100.1/tcp/1/p2p/12D3KooWCRS8kJRpAFAWPwU41G2XE3SqknHTEDmjWRyyZ8d5JGtL/p2p-circuit"
                .parse()
                .expect("addr");
        assert!(limits.check(&relayed).is_ok());
        assert_eq!(limits.refused, 2);
    }

    #[test]
    fn a_subnet_shares_one_rate() {
        let mut rate = SubnetRate::new(3, Duration::from_secs(60));
        let addr = |ip: &str| {
            format!("/ip4/{ip}/tcp/1")
                .parse::<Multiaddr>()
                .expect("addr")
        };
        let now = Instant::now();
        assert!(rate.allow(&addr("198.51.100.1"), now));
        assert!(rate.allow(&addr("198.51.100.2"), now));
        assert!(rate.allow(&addr("198.51.100.3"), now));
        assert!(
            !rate.allow(&addr("198.51.100.4"), now),
            "the subnet's burst"
        );
        assert!(rate.allow(&addr("198.51.101.1"), now), "another subnet");
        assert!(!rate.allow(&addr("198.51.100.1"), now + Duration::from_secs(30)));
        assert!(rate.allow(&addr("198.51.100.1"), now + Duration::from_secs(61)));
        let relayed: Multiaddr =
            "/ip4/198.51.100.1/tcp/1/p2p/12D3KooWCRS8kJRpAFAWPwU41G2XE3SqknHTEDmjWRyyZ8d5JGtL/p2p-circuit"
                .parse()
                .expect("addr");
        assert!(rate.allow(&relayed, now), "no address of its own");
    }
}
