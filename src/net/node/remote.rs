//! Sync servers this device replicates with ([`P2pOptions::sync_servers`]).
//! A server is no member: on each connection the device greets it
//! (`Hello`) to prove itself a member of the store. The first hello names
//! only the store and its founder. A server that knows the device as a
//! member answers with what it holds of the membership log, and the device
//! sends the entries it lacks (a revocation made here, say) in a second
//! hello before anything else. A server that does not know the device
//! refuses, and the device sends its whole log once. Once greeted, the
//! server is a peer of the replication protocol like any member (pulled
//! from, pushed to). The commits it sends are verified as any peer's.
//! Unreachable or refusing servers are asked again with a backoff of 1 s
//! doubling to 5 min.
//!
//! [`P2pOptions::sync_servers`]: crate::net::P2pOptions::sync_servers

use std::collections::{BTreeMap, HashMap};

use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::{Multiaddr, PeerId};

use super::sync::Done;
use super::{now, Node};
use crate::error::{Code, Error, Result};
use crate::membership::MembershipWire;
use crate::net::replication::Incoming;
use crate::net::{P2pEvent, SyncRequest, SyncResponse};

/// What a hello to a server carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hello {
    /// The store and its founder, no entries: the server may know this
    /// device already.
    Short,
    /// The entries the server said it lacks (`None` read: none, and the
    /// server is ready).
    Missing,
    /// The whole log, for a server that did not know this device.
    Whole,
}

const FIRST_BACKOFF_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 5 * 60 * 1_000;

/// One configured server.
struct Server {
    addr: Multiaddr,
    /// Connected now.
    connected: bool,
    /// It accepted this device's hello on the current connection.
    greeted: bool,
    /// When to dial (or greet) again, while neither connected nor greeted.
    retry_at_ms: u64,
    backoff_ms: u64,
}

/// The servers and the hellos awaiting their answer.
#[derive(Default)]
pub(super) struct Remote {
    servers: BTreeMap<PeerId, Server>,
    pub(super) hellos: HashMap<OutboundRequestId, (PeerId, Hello)>,
}

impl Remote {
    /// The servers at `addrs`, each of which must name its peer id.
    pub(super) fn new(addrs: &[Multiaddr]) -> Result<Remote> {
        let mut servers = BTreeMap::new();
        for addr in addrs {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(Error::InvalidOptions(format!(
                    "the sync server address {addr} must end with /p2p/<the server's peer id>"
                )));
            };
            servers.insert(
                peer,
                Server {
                    addr: addr.clone(),
                    connected: false,
                    greeted: false,
                    retry_at_ms: 0,
                    backoff_ms: FIRST_BACKOFF_MS,
                },
            );
        }
        Ok(Remote {
            servers,
            hellos: HashMap::new(),
        })
    }

    /// The configured servers' peer ids.
    pub(super) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.servers.keys().copied()
    }

    /// True when `peer` is a server that accepted this device.
    pub(super) fn is_greeted(&self, peer: &PeerId) -> bool {
        self.servers.get(peer).is_some_and(|s| s.greeted)
    }

    fn failed(&mut self, peer: &PeerId) {
        if let Some(server) = self.servers.get_mut(peer) {
            server.greeted = false;
            server.retry_at_ms = now().saturating_add(server.backoff_ms);
            server.backoff_ms = (server.backoff_ms * 2).min(MAX_BACKOFF_MS);
        }
    }
}

impl Node {
    /// Dials the servers not connected whose retry time has come, and
    /// greets again those connected that refused.
    pub(super) fn dial_servers(&mut self) {
        let now = now();
        let asking: Vec<PeerId> = self.remote.hellos.values().map(|(p, _)| *p).collect();
        let due: Vec<(PeerId, Multiaddr, bool)> = self
            .remote
            .servers
            .iter()
            .filter(|(p, s)| !s.greeted && s.retry_at_ms <= now && !asking.contains(p))
            .map(|(p, s)| (*p, s.addr.clone(), s.connected))
            .collect();
        for (peer, addr, connected) in due {
            if let Some(server) = self.remote.servers.get_mut(&peer) {
                // Not again before the backoff (the hello or the dial
                // resets it when it succeeds).
                server.retry_at_ms = now.saturating_add(server.backoff_ms);
            }
            if connected {
                self.server_connected(peer);
            } else if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, %e, "sync server not dialled");
                self.remote.failed(&peer);
            }
        }
    }

    /// A connection to a server opened: greet it, with no entries first.
    pub(super) fn server_connected(&mut self, peer: PeerId) {
        let Some(server) = self.remote.servers.get_mut(&peer) else {
            return;
        };
        server.connected = true;
        self.read_hello(peer, Hello::Short);
    }

    /// Reads what a hello of `kind` carries, off the loop.
    fn read_hello(&mut self, peer: PeerId, kind: Hello) {
        let replica = self.replica.clone();
        self.off_loop(async move {
            let log = match kind {
                Hello::Short => Some(MembershipWire {
                    store: replica.store_id(),
                    founder: replica.founder().await,
                    entries: Vec::new(),
                }),
                // (What the server lacks is read when it says what it holds.)
                Hello::Whole | Hello::Missing => replica.membership_for(None).await,
            };
            Done::Hello { peer, kind, log }
        });
    }

    /// Sends a hello of `kind` with `log` read for it.
    pub(super) fn greet(&mut self, peer: PeerId, kind: Hello, log: Option<MembershipWire>) {
        let log = match (kind, log) {
            (_, Some(log)) => log,
            // The server lacks no entry: it is ready.
            (Hello::Missing, None) => return self.server_ready(peer),
            (Hello::Short | Hello::Whole, None) => {
                tracing::warn!(%peer, "no membership log to greet a sync server with");
                return;
            }
        };
        if !self.swarm.is_connected(&peer) {
            return;
        }
        let request = SyncRequest::Hello {
            store: self.replica.store_id(),
            log,
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.remote.hellos.insert(id, (peer, kind));
    }

    /// The server's answer to a hello.
    pub(super) fn greeted(&mut self, peer: PeerId, id: OutboundRequestId, response: SyncResponse) {
        let Some((_, kind)) = self.remote.hellos.remove(&id) else {
            return;
        };
        match (kind, response) {
            (Hello::Short, SyncResponse::Greeted { members }) => {
                // Send what it lacks before anything else: a revocation
                // made here must reach it before the revoked device does.
                let replica = self.replica.clone();
                self.off_loop(async move {
                    let log = replica
                        .membership_for(Some(members))
                        .await
                        .filter(|log| !log.entries.is_empty());
                    Done::Hello {
                        peer,
                        kind: Hello::Missing,
                        log,
                    }
                });
            }
            (Hello::Short, SyncResponse::Refused(code)) if code == Code::NotTrusted.as_str() => {
                // It does not know this device yet: prove it with the log.
                self.read_hello(peer, Hello::Whole);
            }
            (_, SyncResponse::Greeted { .. }) => self.server_ready(peer),
            (_, response) => {
                let code = match Incoming::response(response) {
                    Err(code) => code,
                    // Neither greeted nor refused: an answer of another kind.
                    Ok(_) => Code::ChangeMalformed.as_str().into(),
                };
                tracing::warn!(%peer, %code, "sync server refused this device");
                self.remote.failed(&peer);
                self.emit(P2pEvent::ServerRefused { peer, code });
            }
        }
    }

    /// The server accepted this device: sync with it.
    fn server_ready(&mut self, peer: PeerId) {
        if let Some(server) = self.remote.servers.get_mut(&peer) {
            server.greeted = true;
            server.backoff_ms = FIRST_BACKOFF_MS;
        }
        tracing::info!(%peer, "sync server accepted this device");
        self.emit(P2pEvent::ServerReady(peer));
        let actions = self.replication.pull_from(peer);
        self.execute(actions);
    }

    /// A hello that got no answer (the connection dropped, a timeout).
    pub(super) fn hello_failed(&mut self, id: OutboundRequestId) {
        if let Some((peer, _)) = self.remote.hellos.remove(&id) {
            self.remote.failed(&peer);
        }
    }

    /// The last connection to a server closed: dial it again later.
    pub(super) fn server_disconnected(&mut self, peer: &PeerId) {
        if let Some(server) = self.remote.servers.get_mut(peer) {
            server.connected = false;
        }
        self.remote.failed(peer);
    }
}
