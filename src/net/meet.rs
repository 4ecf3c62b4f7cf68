//! `/persist/meet/1`: how devices find each other through a bootstrap node
//! (`persist node`) without the node becoming a directory anyone can read.
//!
//! A device registers under a **place**, the SHA-256 of a 32-byte
//! **key** it knows, and looks places up by their hash only:
//!
//! ```text
//! Register { key, kind, addrs, ttl_s }  ->  Registered { ttl_s } | Refused
//! Unregister { place }                   ->  Unregistered
//! Lookup { place }                       ->  Found { peers } | Refused
//! ```
//!
//! - There is no listing: a lookup names one place, and an unknown place
//!   answers nothing. A store's place is derived from its id, which only its
//!   devices know; registering there takes the key, which lookups never
//!   carry, so whoever only saw lookups cannot squat a store's place.
//! - A pairing place (from a code's nameplate) has **one owner**: the first
//!   device to register it keeps it until it withdraws, disconnects or its
//!   time runs out; anyone else is refused (`Taken`).
//! - Registrations last while their device stays connected, at most
//!   [`MAX_TTL_S`]; they are capped per device, per IP address, per store
//!   place and in total; lookups are rate-limited per device and per IP.
//! - A device that connects from a public address has its private (LAN,
//!   VPN, loopback) addresses dropped: only public and relayed ones are kept.
//!
//! [`Directory`] is the node's side as a sans-IO state machine (requests
//! and the clock in, answers out); `node/discovery.rs` is the device's.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::{Bounded, Codec};

/// The protocol's name.
pub const MEET_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/meet/1");
/// Longest registration, in seconds (a device renews before it ends).
pub const MAX_TTL_S: u32 = 600;
/// Addresses one registration may carry.
pub const MAX_ADDRS: usize = 8;
/// Bytes of one address, at most.
pub const MAX_ADDR_BYTES: usize = 256;
/// Devices one lookup answers with, at most (the newest registrations).
pub const MAX_FOUND: usize = 16;

/// The protocol's codec.
pub type MeetCodec = Codec<MeetRequest, MeetResponse>;

/// Where devices meet: the hash of a key.
pub type Place = [u8; 32];

/// The place of `key`.
pub fn place_of(key: &[u8; 32]) -> Place {
    Sha256::new()
        .chain_update(b"persist/meet/place/v1\0")
        .chain_update(key)
        .finalize()
        .into()
}

/// The key under which the devices of `store` register (the node learns
/// it, not the store id).
pub fn store_key(store: &crate::change::StoreId) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"persist/meet/store/v1\0")
        .chain_update(store.as_bytes())
        .finalize()
        .into()
}

/// The key under which a device offering a code with `nameplate`
/// registers (the nameplate is public; it says nothing of the secret).
pub fn pairing_key(nameplate: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"persist/meet/pair/v1\0")
        .chain_update(nameplate.as_bytes())
        .finalize()
        .into()
}

/// What a place is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlaceKind {
    /// A pending pairing code: one owner.
    Pairing,
    /// The devices of a store: up to [`MeetLimits::peers_per_place`].
    Store,
}

/// A request of `/persist/meet/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeetRequest {
    /// Register the sender under `place_of(key)`.
    Register {
        /// What the place is derived from.
        key: [u8; 32],
        /// What the place is for.
        kind: PlaceKind,
        /// Where the sender can be reached (binary multiaddrs).
        addrs: Vec<Vec<u8>>,
        /// Seconds the registration should last (capped at [`MAX_TTL_S`]).
        ttl_s: u32,
    },
    /// Withdraw the sender's registration under `place`.
    Unregister {
        /// The place.
        place: Place,
    },
    /// Who is registered under `place`.
    Lookup {
        /// The place.
        place: Place,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Another device owns this pairing place.
    Taken,
    /// The place, the sender's or its address's budget, or the node is full.
    Full,
    /// Too many lookups: wait.
    Slow,
    /// The request makes no sense (no usable address, a kind mismatch).
    Invalid,
}

/// A device found under a place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetPeer {
    /// Its PeerId (bytes).
    pub peer: Vec<u8>,
    /// Its addresses (binary multiaddrs).
    pub addrs: Vec<Vec<u8>>,
}

/// A response of `/persist/meet/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeetResponse {
    /// Registered for this many seconds.
    Registered {
        /// Granted lifetime.
        ttl_s: u32,
    },
    /// Withdrawn (or was not there).
    Unregistered,
    /// The devices under the place (none for an unknown place).
    Found {
        /// At most [`MAX_FOUND`].
        peers: Vec<MeetPeer>,
    },
    /// Refused.
    Refused {
        /// Why.
        refusal: Refusal,
    },
}

impl Bounded for MeetRequest {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            0 => 64 + MAX_ADDRS * (MAX_ADDR_BYTES + 2), // Register
            1 | 2 => 64,                                // Unregister, Lookup
            _ => 0,
        }
    }
}

impl Bounded for MeetResponse {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            2 => 16 + MAX_FOUND * (48 + MAX_ADDRS * (MAX_ADDR_BYTES + 2)), // Found
            0 | 1 | 3 => 16,
            _ => 0,
        }
    }
}

/// True for an address anyone on the Internet could dial: a public IP, a
/// DNS name (the operator's choice), or a relayed address. Loopback,
/// private (RFC 1918, unique-local), link-local, shared (CGNAT) and
/// unspecified addresses are not.
pub fn is_public(addr: &Multiaddr) -> bool {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return true;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => is_public_ip(&IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => is_public_ip(&IpAddr::V6(ip)),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => {
            true
        }
        _ => false,
    }
}

/// True for an IP address on the public Internet.
pub fn is_public_ip(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let shared = ip.octets()[0] == 100 && (ip.octets()[1] & 0xC0) == 64;
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || shared)
        }
        IpAddr::V6(ip) => {
            let segments = ip.segments();
            let unique_local = (segments[0] & 0xFE00) == 0xFC00;
            let link_local = (segments[0] & 0xFFC0) == 0xFE80;
            !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
        }
    }
}

/// The IP address a connection came from (none for a relayed one).
pub fn source_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// The directory's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct MeetLimits {
    /// Registrations held at once, in total.
    pub max_registrations: usize,
    /// Registrations one device holds at once.
    pub per_peer: usize,
    /// Registrations held at once from one IP address.
    pub per_ip: usize,
    /// Devices under one store place.
    pub peers_per_place: usize,
    /// Lookups one device may make in a burst, and per second after it.
    pub lookups_per_peer: (f64, f64),
    /// Lookups one IP address may make in a burst, and per second after it.
    pub lookups_per_ip: (f64, f64),
}

impl Default for MeetLimits {
    fn default() -> MeetLimits {
        MeetLimits {
            max_registrations: 4096,
            per_peer: 8,
            per_ip: 64,
            peers_per_place: 32,
            lookups_per_peer: (20.0, 1.0),
            lookups_per_ip: (120.0, 4.0),
        }
    }
}

struct Registration {
    peer: PeerId,
    ip: Option<IpAddr>,
    addrs: Vec<Vec<u8>>,
    expires_at: u64,
}

struct PlaceEntry {
    kind: PlaceKind,
    /// Oldest first.
    registrations: Vec<Registration>,
}

/// A token bucket.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// Takes a token if one is left after refilling at `rate` per second
    /// up to `burst`.
    fn take(&mut self, now_ms: u64, (burst, rate): (f64, f64)) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&self, now_ms: u64, (burst, rate): (f64, f64)) -> bool {
        self.tokens + now_ms.saturating_sub(self.at_ms) as f64 / 1000.0 * rate >= burst
    }
}

/// The node's side of `/persist/meet/1`: registrations and lookups,
/// bounded. Sans-IO: the caller says who asks, from where and when.
pub struct Directory {
    limits: MeetLimits,
    places: HashMap<Place, PlaceEntry>,
    per_peer: HashMap<PeerId, usize>,
    per_ip: HashMap<Option<IpAddr>, usize>,
    total: usize,
    peer_buckets: HashMap<PeerId, Bucket>,
    ip_buckets: HashMap<Option<IpAddr>, Bucket>,
    swept_at: u64,
}

/// What a directory holds, for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Places with at least one registration.
    pub places: usize,
    /// Registrations.
    pub registrations: usize,
}

impl Directory {
    /// An empty directory with `limits`.
    pub fn new(limits: MeetLimits) -> Directory {
        Directory {
            limits,
            places: HashMap::new(),
            per_peer: HashMap::new(),
            per_ip: HashMap::new(),
            total: 0,
            peer_buckets: HashMap::new(),
            ip_buckets: HashMap::new(),
            swept_at: 0,
        }
    }

    /// What it holds.
    pub fn stats(&self) -> DirectoryStats {
        DirectoryStats {
            places: self.places.len(),
            registrations: self.total,
        }
    }

    /// Answers `request` from `peer`, connected from `ip` (none when
    /// relayed), at `now_ms`.
    pub fn handle(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        ip: Option<IpAddr>,
        request: MeetRequest,
    ) -> MeetResponse {
        self.sweep(now_ms);
        match request {
            MeetRequest::Register {
                key,
                kind,
                addrs,
                ttl_s,
            } => self.register(now_ms, peer, ip, place_of(&key), kind, addrs, ttl_s),
            MeetRequest::Unregister { place } => {
                self.remove(&place, |r| r.peer == peer);
                MeetResponse::Unregistered
            }
            MeetRequest::Lookup { place } => {
                let peer_ok = self
                    .peer_buckets
                    .entry(peer)
                    .or_insert(Bucket {
                        tokens: self.limits.lookups_per_peer.0,
                        at_ms: now_ms,
                    })
                    .take(now_ms, self.limits.lookups_per_peer);
                let ip_ok = peer_ok
                    && self
                        .ip_buckets
                        .entry(ip)
                        .or_insert(Bucket {
                            tokens: self.limits.lookups_per_ip.0,
                            at_ms: now_ms,
                        })
                        .take(now_ms, self.limits.lookups_per_ip);
                if !ip_ok {
                    return MeetResponse::Refused {
                        refusal: Refusal::Slow,
                    };
                }
                let peers = self
                    .places
                    .get(&place)
                    .map(|entry| {
                        entry
                            .registrations
                            .iter()
                            .rev()
                            .filter(|r| r.expires_at > now_ms && r.peer != peer)
                            .take(MAX_FOUND)
                            .map(|r| MeetPeer {
                                peer: r.peer.to_bytes(),
                                addrs: r.addrs.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                MeetResponse::Found { peers }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        now_ms: u64,
        peer: PeerId,
        ip: Option<IpAddr>,
        place: Place,
        kind: PlaceKind,
        addrs: Vec<Vec<u8>>,
        ttl_s: u32,
    ) -> MeetResponse {
        let refused = |refusal| MeetResponse::Refused { refusal };
        // A device that reaches the node from the Internet keeps only the
        // addresses the Internet can dial.
        let from_public = ip.as_ref().is_some_and(is_public_ip);
        let addrs: Vec<Vec<u8>> = addrs
            .into_iter()
            .filter(|bytes| bytes.len() <= MAX_ADDR_BYTES)
            .filter(|bytes| {
                Multiaddr::try_from(bytes.clone()).is_ok_and(|a| !from_public || is_public(&a))
            })
            .take(MAX_ADDRS)
            .collect();
        if addrs.is_empty() || ttl_s == 0 {
            return refused(Refusal::Invalid);
        }
        let ttl_s = ttl_s.min(MAX_TTL_S);
        let expires_at = now_ms.saturating_add(u64::from(ttl_s) * 1000);
        if let Some(entry) = self.places.get_mut(&place) {
            if entry.kind != kind {
                return refused(Refusal::Invalid);
            }
            if let Some(existing) = entry.registrations.iter_mut().find(|r| r.peer == peer) {
                // A renewal: new addresses and time, same budget.
                existing.addrs = addrs;
                existing.expires_at = expires_at;
                return MeetResponse::Registered { ttl_s };
            }
            let full = match kind {
                PlaceKind::Pairing => return refused(Refusal::Taken),
                PlaceKind::Store => entry.registrations.len() >= self.limits.peers_per_place,
            };
            if full {
                return refused(Refusal::Full);
            }
        }
        if self.total >= self.limits.max_registrations
            || self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.per_peer
            || self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip
        {
            return refused(Refusal::Full);
        }
        self.places
            .entry(place)
            .or_insert_with(|| PlaceEntry {
                kind,
                registrations: Vec::new(),
            })
            .registrations
            .push(Registration {
                peer,
                ip,
                addrs,
                expires_at,
            });
        *self.per_peer.entry(peer).or_default() += 1;
        *self.per_ip.entry(ip).or_default() += 1;
        self.total += 1;
        MeetResponse::Registered { ttl_s }
    }

    /// Forgets everything `peer` registered (its last connection closed)
    /// and its lookup budget.
    pub fn disconnected(&mut self, peer: &PeerId) {
        if self.per_peer.contains_key(peer) {
            let places: Vec<Place> = self
                .places
                .iter()
                .filter(|(_, e)| e.registrations.iter().any(|r| &r.peer == peer))
                .map(|(p, _)| *p)
                .collect();
            for place in places {
                self.remove(&place, |r| &r.peer == peer);
            }
        }
        self.peer_buckets.remove(peer);
    }

    /// Drops expired registrations and full buckets, at most once a second.
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.swept_at.saturating_add(1000) {
            return;
        }
        self.swept_at = now_ms;
        let expired: Vec<Place> = self
            .places
            .iter()
            .filter(|(_, e)| e.registrations.iter().any(|r| r.expires_at <= now_ms))
            .map(|(p, _)| *p)
            .collect();
        for place in expired {
            self.remove(&place, |r| r.expires_at <= now_ms);
        }
        let (peer_rate, ip_rate) = (self.limits.lookups_per_peer, self.limits.lookups_per_ip);
        self.peer_buckets.retain(|_, b| !b.full(now_ms, peer_rate));
        self.ip_buckets.retain(|_, b| !b.full(now_ms, ip_rate));
    }

    fn remove(&mut self, place: &Place, mut which: impl FnMut(&Registration) -> bool) {
        let Some(entry) = self.places.get_mut(place) else {
            return;
        };
        let mut gone = Vec::new();
        entry.registrations.retain(|r| {
            let drop = which(r);
            if drop {
                gone.push((r.peer, r.ip));
            }
            !drop
        });
        if entry.registrations.is_empty() {
            self.places.remove(place);
        }
        for (peer, ip) in gone {
            self.total -= 1;
            decrement(&mut self.per_peer, peer);
            decrement(&mut self.per_ip, ip);
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
