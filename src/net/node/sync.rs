//! The executor of the replication protocol ([`crate::net::replication`]):
//! it turns requests, responses and live messages into the core's input,
//! and the core's actions into sends, storage reads and ingests. Storage
//! work runs in tasks of its own, never on the loop (the swarm keeps being
//! polled while a page is read or a batch verified); each task reports
//! through a bounded channel, so a burst of work waits for the loop
//! instead of queueing without end.

use futures::channel::mpsc;
use futures::SinkExt;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::PeerId;

use super::Node;
use crate::change::SignedCommit;
use crate::error::Result;
use crate::membership::MembershipWire;
use crate::net::codec::frame;
use crate::net::live::{self, LiveMessage};
use crate::net::replica::Merged;
use crate::net::replication::{Action, Arrival, Incoming, Ingested, MembersHave, Purpose, Token};
use crate::net::{peer_id_of, P2pEvent, SyncRequest, SyncResponse};

/// Storage tasks' results waiting for the loop, at most.
pub(super) const DONE_QUEUE: usize = 64;

/// The live stream to a connected peer.
#[derive(Default)]
pub(super) struct Link {
    /// Frames for the live stream to the peer, once opened.
    live: Option<mpsc::Sender<Vec<u8>>>,
    /// The live stream failed on this connection: pushes use
    /// request-response.
    failed: bool,
}

/// What a storage task reports to the loop.
pub(super) enum Done {
    /// A pull to send.
    Pull {
        peer: PeerId,
        request: Result<SyncRequest>,
    },
    /// Commits read for a peer.
    Read {
        peer: PeerId,
        purpose: Purpose,
        result: Result<(Vec<SignedCommit>, u64, Option<MembershipWire>, MembersHave)>,
    },
    /// What to greet a sync server with.
    Hello {
        peer: PeerId,
        kind: super::remote::Hello,
        log: Option<MembershipWire>,
    },
    /// Received commits verified and stored.
    Ingested {
        peer: PeerId,
        arrival: Arrival,
        merged: Option<Merged>,
        result: Result<Ingested>,
    },
}

impl Node {
    /// Runs `work` off the loop; its result comes back as a [`Done`].
    pub(super) fn off_loop<F>(&self, work: F)
    where
        F: std::future::Future<Output = Done> + crate::platform::MaybeSend + 'static,
    {
        let mut done = self.done.clone();
        crate::platform::spawn(async move {
            // The loop is gone when this fails: nothing to report to.
            let _ = done.send(work.await).await;
        });
    }

    /// Carries out the core's actions.
    pub(super) fn execute(&mut self, actions: Vec<Action<PeerId>>) {
        for action in actions {
            match action {
                Action::Pull { peer } => {
                    let replica = self.replica.clone();
                    self.off_loop(async move {
                        let request = crate::net::replica::pull_request(&*replica).await;
                        Done::Pull { peer, request }
                    });
                }
                Action::Read {
                    peer,
                    have,
                    limit,
                    theirs,
                    purpose,
                    tips,
                } => {
                    let replica = self.replica.clone();
                    self.off_loop(async move {
                        let result = crate::net::replica::read(
                            &*replica, have, limit, theirs, purpose, tips,
                        )
                        .await;
                        Done::Read {
                            peer,
                            purpose,
                            result,
                        }
                    });
                }
                Action::Reply { token, response } => {
                    if let Some(channel) = self.replies.remove(&token) {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .send_response(channel, response);
                    }
                }
                Action::Push {
                    peer,
                    commits,
                    members,
                } => self.send(peer, commits, members),
                Action::Have { peer, have } => {
                    self.send_live(peer, &LiveMessage::Have { have });
                }
                Action::Ingest {
                    peer,
                    members,
                    commits,
                    arrival,
                } => {
                    let replica = self.replica.clone();
                    self.off_loop(async move {
                        let (merged, result) =
                            crate::net::replica::merge_and_ingest(&*replica, members, commits)
                                .await;
                        Done::Ingested {
                            peer,
                            arrival,
                            merged,
                            result,
                        }
                    });
                }
                Action::Synced {
                    peer,
                    applied,
                    rejected,
                    remaining,
                } => self.emit(P2pEvent::Synced {
                    peer,
                    applied,
                    rejected,
                    remaining,
                }),
            }
        }
    }

    /// A storage task finished.
    pub(super) fn done(&mut self, done: Done) {
        let actions = match done {
            Done::Hello { peer, kind, log } => {
                self.greet(peer, kind, log);
                Vec::new()
            }
            Done::Pull { peer, request } => {
                match request {
                    Ok(request) if self.replication.is_connected(&peer) => {
                        self.swarm.behaviour_mut().sync.send_request(&peer, request);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%peer, code = e.code(), "cannot pull"),
                }
                Vec::new()
            }
            Done::Read {
                peer,
                purpose,
                result,
            } => match result {
                Ok((commits, lacking, log, ours)) => self
                    .replication
                    .read_done(peer, purpose, commits, lacking, log, ours),
                Err(e) => {
                    tracing::warn!(%peer, code = e.code(), "cannot read commits for a peer");
                    self.replication.read_failed(peer, purpose, e.code())
                }
            },
            Done::Ingested {
                peer,
                arrival,
                merged,
                result,
            } => {
                if let Some(merged) = merged {
                    for device in &merged.equivocators {
                        if let Ok(device) = peer_id_of(device) {
                            self.emit(P2pEvent::Equivocation(device));
                        }
                    }
                    if merged.changed {
                        self.refresh_members();
                    }
                }
                match result {
                    Ok(outcome) => {
                        for device in &outcome.equivocators {
                            if let Ok(device) = peer_id_of(device) {
                                self.emit(P2pEvent::Equivocation(device));
                            }
                        }
                        if !outcome.equivocators.is_empty() {
                            self.refresh_members();
                        }
                        self.replication.ingested(peer, arrival, outcome)
                    }
                    Err(e) => {
                        tracing::warn!(%peer, code = e.code(), "received commits not applied");
                        self.replication.ingest_failed(arrival, e.code())
                    }
                }
            }
        };
        self.execute(actions);
    }

    /// Local commits (or a membership change): push to the members.
    pub(super) fn local_changes(&mut self) {
        self.refresh_members();
        let members = self.members.clone();
        let remote = &self.remote;
        let actions = self.replication.on_local_commits(|peer| {
            crate::net::device_of(peer).is_some_and(|d| members.contains(&d))
                || remote.is_greeted(peer)
        });
        self.execute(actions);
    }

    /// Pulls from `peer` now (after joining its store).
    pub(super) fn pull(&mut self, peer: PeerId) {
        let actions = self.replication.pull_from(peer);
        self.execute(actions);
    }

    fn incoming(&mut self, peer: PeerId, message: Incoming) {
        let member = self.is_member(&peer) || self.remote.is_greeted(&peer);
        let store = self.replica.store_id();
        let actions = self.replication.handle(peer, member, store, message);
        self.execute(actions);
    }

    fn token(&mut self, channel: ResponseChannel<SyncResponse>) -> Token {
        self.next_token = self.next_token.wrapping_add(1);
        self.replies.insert(self.next_token, channel);
        self.next_token
    }

    /// Sends commits (and the membership log) to `peer`: on its live
    /// stream, or as a request when that stream failed.
    fn send(&mut self, peer: PeerId, commits: Vec<SignedCommit>, members: Option<MembershipWire>) {
        let message = LiveMessage::Commits { commits, members };
        if self.send_live(peer, &message) {
            return;
        }
        if let LiveMessage::Commits { commits, members } = message {
            let request = SyncRequest::Push {
                store: self.replica.store_id(),
                commits,
                members,
            };
            self.swarm.behaviour_mut().sync.send_request(&peer, request);
        }
    }

    /// Queues `message` on the live stream to `peer` (opening it first);
    /// false when there is none. A peer whose stream has a full queue (it
    /// reads slower than this device writes) gets this and later pushes
    /// as requests, each answered with what it applied: the frames already
    /// queued are still written, then the stream closes.
    fn send_live(&mut self, peer: PeerId, message: &LiveMessage) -> bool {
        // A sync server keeps no live stream: it takes pushes as requests.
        if self.remote.is_greeted(&peer) {
            return false;
        }
        let control = self.control.clone();
        let failed = self.live_failed.clone();
        let Some(link) = self.links.get_mut(&peer) else {
            return false;
        };
        if link.failed {
            return false;
        }
        let frames = link
            .live
            .get_or_insert_with(|| live::open(control, peer, failed));
        let bytes = match frame(message) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(%peer, %e, "cannot frame a live message");
                return false;
            }
        };
        match frames.try_send(bytes) {
            Ok(()) => true,
            Err(e) => {
                if e.is_full() {
                    tracing::debug!(%peer, "live stream queue full: pushes go as requests");
                }
                link.live = None;
                link.failed = true;
                false
            }
        }
    }

    /// A live stream failed: later pushes to that peer go as requests,
    /// starting again from what the peer last confirmed having.
    pub(super) fn live_broke(&mut self, peer: PeerId) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.live = None;
            link.failed = true;
            let actions = self.replication.live_broke(peer);
            self.execute(actions);
        }
    }

    /// What arrived on a peer's live stream.
    pub(super) fn live_message(&mut self, peer: PeerId, message: LiveMessage) {
        if !self.is_member(&peer) && !self.remote.is_greeted(&peer) {
            tracing::info!(%peer, "live message from a non-member dropped");
            return;
        }
        let message = Incoming::live(message, self.replica.store_id());
        self.incoming(peer, message);
    }

    pub(super) fn sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let reply = self.token(channel);
                match Incoming::request(request, reply) {
                    Some(message) => self.incoming(peer, message),
                    // A device is no sync server.
                    None => self.execute(vec![Action::Reply {
                        token: reply,
                        response: SyncResponse::Refused(
                            crate::error::Code::NotAServer.as_str().into(),
                        ),
                    }]),
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        response,
                        request_id,
                    },
                ..
            } if self.remote.hellos.contains_key(&request_id) => {
                self.greeted(peer, request_id, response);
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => match Incoming::response(response) {
                Ok(Some(message)) => self.incoming(peer, message),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(%peer, %reason, "sync request refused");
                    self.replication.refused(peer);
                }
            },
            Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } if unsupported(&error) => {
                tracing::warn!(
                    %peer, protocol = %crate::net::SYNC_PROTOCOL,
                    "the peer speaks another version of the sync protocol (or, a node, serves \
                     no stores): no sync with it"
                );
                if self.remote.hellos.contains_key(&request_id) {
                    self.hello_failed(request_id);
                    self.emit(P2pEvent::ServerRefused {
                        peer,
                        code: crate::error::Code::NotAServer.as_str().into(),
                    });
                } else {
                    // (Also what a peer that does not trust this device
                    // answers: the alert comes from what identify says.)
                    self.replication.refused(peer);
                }
            }
            Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                // A push may have been lost with it.
                self.replication.refused(peer);
                self.hello_failed(request_id);
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "sync request not answered");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Tells the user, once per connection, of a member whose identify
    /// lists another version of the sync protocol and not this one: the
    /// two do not sync until one of them is updated. (A failed request
    /// alone does not say so: a peer that no longer trusts this device
    /// refuses the protocol the same way.)
    pub(super) fn note_sync_version(&mut self, peer: PeerId, info: &libp2p::identify::Info) {
        let ours = info.protocols.contains(&crate::net::SYNC_PROTOCOL);
        let another = info
            .protocols
            .iter()
            .any(|p| p.as_ref().starts_with("/persist/sync/") && *p != crate::net::SYNC_PROTOCOL);
        if another && !ours && self.is_member(&peer) && self.other_versions.insert(peer) {
            tracing::warn!(%peer, "a member speaks another version of the sync protocol: no sync with it");
            self.emit(P2pEvent::ProtocolUnsupported(peer));
        }
    }
}

/// Whether a request failed because the peer speaks no version of the
/// protocol this side does: negotiated first (`UnsupportedProtocols`), or,
/// with multistream-select's lazy mode (the request is sent with the
/// protocol's name), refused while its answer is read.
fn unsupported(error: &request_response::OutboundFailure) -> bool {
    match error {
        request_response::OutboundFailure::UnsupportedProtocols => true,
        request_response::OutboundFailure::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<libp2p::core::upgrade::NegotiationError>())
            .is_some_and(|n| matches!(n, libp2p::core::upgrade::NegotiationError::Failed)),
        _ => false,
    }
}
