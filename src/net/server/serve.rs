//! Serving stores (`persist node --serve`): the sync server's executor of
//! the replication protocol. Each store it holds is a space
//! ([`crate::host::Hosted`]) with a [`Replication`] of its own; a device
//! greets the server (`Hello`) on each connection, which binds (device,
//! store id) to the space the hello's founder founds, if the log as the
//! server holds it, with the hello's entries, proves the device a member.
//! The answer (`Greeted`) says what the server holds of the log, so the
//! device sends only the entries it lacks, never the whole log again.
//! Pulls and pushes then
//! run as between two members; every request is checked against the
//! space's membership as it is now, so a revoked device is refused from
//! the moment its removal is merged. Storage work runs in tasks that
//! report through a bounded channel, as on a device.

use std::collections::HashMap;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::SinkExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, Swarm};

use super::ServerBehaviour;
use crate::change::{SignedCommit, StoreId};
use crate::error::Result;
use crate::host::{Changed, Hosted, SpaceId};
use crate::membership::{MembersHave, MembershipWire};
use crate::net::replica::{self, Merged, Replica};
use crate::net::replication::{Action, Arrival, Incoming, Ingested, Purpose, Replication, Token};
use crate::net::{device_of, SyncRequest, SyncResponse};

/// Storage tasks' results waiting for the loop, at most.
pub(super) const DONE_QUEUE: usize = 64;
/// Stores one peer may be bound to at once.
const STORES_PER_PEER: usize = 16;

mod space;
pub use space::ServeOptions;
use space::{open_space, Loaded};

/// What a storage task reports.
pub(super) enum Done {
    Hello {
        peer: PeerId,
        store: StoreId,
        reply: Token,
        result: Result<(Arc<Hosted>, MembersHave)>,
    },
    Pull {
        space: SpaceId,
        peer: PeerId,
        request: Result<SyncRequest>,
    },
    Read {
        space: SpaceId,
        peer: PeerId,
        purpose: Purpose,
        result: Result<(Vec<SignedCommit>, u64, Option<MembershipWire>, MembersHave)>,
    },
    Ingested {
        space: SpaceId,
        peer: PeerId,
        arrival: Arrival,
        merged: Option<Merged>,
        result: Result<Ingested>,
    },
    /// A space read again after another server process changed it.
    Refreshed {
        space: SpaceId,
        result: Result<bool>,
    },
}

struct Space {
    hosted: Arc<Hosted>,
    replication: Replication<PeerId>,
}

/// Counters of what the server did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeCounters {
    /// Hellos accepted.
    pub greeted: u64,
    /// Requests refused (strangers, revoked devices, quotas).
    pub refused: u64,
    /// Commits stored.
    pub commits_in: u64,
}

/// The serving half of the node's loop.
pub(super) struct Serving {
    options: ServeOptions,
    loaded: Loaded,
    spaces: HashMap<SpaceId, Space>,
    bindings: HashMap<(PeerId, StoreId), SpaceId>,
    replies: HashMap<Token, ResponseChannel<SyncResponse>>,
    next_token: Token,
    outbound: HashMap<OutboundRequestId, SpaceId>,
    done: mpsc::Sender<Done>,
    pub(super) counters: ServeCounters,
}

impl Serving {
    pub(super) fn new(options: ServeOptions, done: mpsc::Sender<Done>) -> Serving {
        Serving {
            options,
            loaded: Arc::default(),
            spaces: HashMap::new(),
            bindings: HashMap::new(),
            replies: HashMap::new(),
            next_token: 0,
            outbound: HashMap::new(),
            done,
            counters: ServeCounters::default(),
        }
    }

    fn off_loop<F>(&self, work: F)
    where
        F: std::future::Future<Output = Done> + crate::platform::MaybeSend + 'static,
    {
        let mut done = self.done.clone();
        crate::platform::spawn(async move {
            let _ = done.send(work.await).await;
        });
    }

    fn reply(&mut self, swarm: &mut Swarm<ServerBehaviour>, token: Token, response: SyncResponse) {
        if matches!(response, SyncResponse::Refused(_)) {
            self.counters.refused += 1;
        }
        if let Some(channel) = self.replies.remove(&token) {
            // The asker may have gone.
            let _ = swarm
                .behaviour_mut()
                .sync
                .as_mut()
                .map(|sync| sync.send_response(channel, response));
        }
    }

    /// Stores loaded since the node started.
    pub(super) fn loaded(&self) -> usize {
        self.spaces.len()
    }

    /// What other server processes over the same storage change.
    pub(super) fn changes(&self) -> crate::platform::BoxStream<'static, Changed> {
        self.options.storage.changes()
    }

    /// Another server process changed `changed`: the spaces this process
    /// serves are read again, and what is new goes to their devices.
    pub(super) fn changed(&mut self, changed: Changed) {
        let spaces: Vec<Arc<Hosted>> = match changed {
            Changed::Space(id) => self
                .spaces
                .get(&id)
                .map(|s| s.hosted.clone())
                .into_iter()
                .collect(),
            Changed::Unknown => self.spaces.values().map(|s| s.hosted.clone()).collect(),
        };
        for hosted in spaces {
            self.off_loop(async move {
                Done::Refreshed {
                    space: hosted.space(),
                    result: hosted.refresh().await,
                }
            });
        }
    }

    /// Devices no longer members of `space_id` (a merged log removed
    /// them) lose the store at once.
    fn cut_non_members(&mut self, space_id: SpaceId) {
        let Some(space) = self.spaces.get_mut(&space_id) else {
            return;
        };
        let hosted = space.hosted.clone();
        let gone: Vec<(PeerId, StoreId)> = self
            .bindings
            .iter()
            .filter(|(_, s)| **s == space_id)
            .filter(|((p, _), _)| !device_of(p).is_some_and(|d| hosted.is_member(&d)))
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            self.bindings.remove(&key);
            space.replication.disconnected(key.0);
            tracing::info!("a device no longer a member lost the store");
        }
    }

    /// Pushes what `space_id` holds now to its devices that lack it.
    fn fan_out(&mut self, space_id: SpaceId) -> Vec<Action<PeerId>> {
        let Some(space) = self.spaces.get_mut(&space_id) else {
            return Vec::new();
        };
        let hosted = space.hosted.clone();
        space
            .replication
            .on_local_commits(|p| device_of(p).is_some_and(|d| hosted.is_member(&d)))
    }

    /// A peer's last connection closed.
    pub(super) fn disconnected(&mut self, peer: &PeerId) {
        self.bindings.retain(|(p, _), _| p != peer);
        for space in self.spaces.values_mut() {
            space.replication.disconnected(*peer);
        }
    }

    pub(super) fn sync_event(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
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
                self.next_token = self.next_token.wrapping_add(1);
                let token = self.next_token;
                self.replies.insert(token, channel);
                self.request(swarm, peer, token, request);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(space) = self.outbound.remove(&request_id) else {
                    return;
                };
                match Incoming::response(response) {
                    Ok(Some(message)) => self.handle(swarm, space, peer, message),
                    Ok(None) => {}
                    Err(code) => {
                        tracing::debug!(%peer, %code, "a device refused the server's request");
                        if let Some(space) = self.spaces.get_mut(&space) {
                            space.replication.refused(peer);
                        }
                    }
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%error, "a request to a device failed");
                // A push may have been lost with it.
                if let Some(space) = self
                    .outbound
                    .remove(&request_id)
                    .and_then(|id| self.spaces.get_mut(&id))
                {
                    space.replication.refused(peer);
                }
            }
            Event::InboundFailure { error, .. } => {
                tracing::debug!(%error, "a device's request was not answered");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn request(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        peer: PeerId,
        token: Token,
        request: SyncRequest,
    ) {
        let store = match &request {
            SyncRequest::Hello { store, .. }
            | SyncRequest::Pull { store, .. }
            | SyncRequest::Push { store, .. } => *store,
        };
        if let SyncRequest::Hello { log, .. } = request {
            let bound = self.bindings.keys().filter(|(p, _)| *p == peer).count();
            if bound >= STORES_PER_PEER && !self.bindings.contains_key(&(peer, store)) {
                let response = SyncResponse::Refused("QUOTA_EXCEEDED".into());
                return self.reply(swarm, token, response);
            }
            let (options, loaded) = (self.options.clone(), self.loaded.clone());
            self.off_loop(async move {
                let result = async {
                    let hosted = open_space(options, loaded, peer, store, log).await?;
                    let members = hosted.membership_have().await;
                    Ok((hosted, members))
                }
                .await;
                Done::Hello {
                    peer,
                    store,
                    reply: token,
                    result,
                }
            });
            return;
        }
        let Some(space) = self.bindings.get(&(peer, store)).copied() else {
            // No hello yet on this connection, or it was refused.
            return self.reply(swarm, token, SyncResponse::Refused("NOT_TRUSTED".into()));
        };
        if let Some(message) = Incoming::request(request, token) {
            self.handle(swarm, space, peer, message);
        }
    }

    fn handle(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        space_id: SpaceId,
        peer: PeerId,
        message: Incoming,
    ) {
        let Some(space) = self.spaces.get_mut(&space_id) else {
            return;
        };
        let member = device_of(&peer).is_some_and(|d| space.hosted.is_member(&d));
        let store = space.hosted.store_id();
        let actions = space.replication.handle(peer, member, store, message);
        self.execute(swarm, space_id, actions);
    }

    fn execute(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        space_id: SpaceId,
        actions: Vec<Action<PeerId>>,
    ) {
        let Some(hosted) = self.spaces.get(&space_id).map(|s| s.hosted.clone()) else {
            return;
        };
        for action in actions {
            match action {
                Action::Pull { peer } => {
                    let hosted = hosted.clone();
                    self.off_loop(async move {
                        let request = replica::pull_request(&*hosted).await;
                        Done::Pull {
                            space: space_id,
                            peer,
                            request,
                        }
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
                    let hosted = hosted.clone();
                    self.off_loop(async move {
                        let result =
                            replica::read(&*hosted, have, limit, theirs, purpose, tips).await;
                        Done::Read {
                            space: space_id,
                            peer,
                            purpose,
                            result,
                        }
                    });
                }
                Action::Reply { token, response } => self.reply(swarm, token, response),
                Action::Push {
                    peer,
                    commits,
                    members,
                } => {
                    let request = SyncRequest::Push {
                        store: hosted.store_id(),
                        commits,
                        members,
                    };
                    self.send(swarm, space_id, peer, request);
                }
                // The server keeps no live streams: pushes go as requests,
                // whose answers say what the device has.
                Action::Have { .. } => {}
                Action::Ingest {
                    peer,
                    members,
                    commits,
                    arrival,
                } => {
                    let hosted = hosted.clone();
                    self.off_loop(async move {
                        let (merged, result) =
                            replica::merge_and_ingest(&*hosted, members, commits).await;
                        Done::Ingested {
                            space: space_id,
                            peer,
                            arrival,
                            merged,
                            result,
                        }
                    });
                }
                Action::Synced { applied, .. } => {
                    self.counters.commits_in += applied as u64;
                }
            }
        }
    }

    fn send(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        space: SpaceId,
        peer: PeerId,
        request: SyncRequest,
    ) {
        if !swarm.is_connected(&peer) {
            return;
        }
        if let Some(sync) = swarm.behaviour_mut().sync.as_mut() {
            let id = sync.send_request(&peer, request);
            self.outbound.insert(id, space);
        }
    }

    /// A storage task finished.
    pub(super) fn done(&mut self, swarm: &mut Swarm<ServerBehaviour>, done: Done) {
        match done {
            Done::Hello {
                peer,
                store,
                reply,
                result,
            } => match result {
                Ok((hosted, members)) if swarm.is_connected(&peer) => {
                    let space_id = hosted.space();
                    self.bindings.insert((peer, store), space_id);
                    let space = self.spaces.entry(space_id).or_insert_with(|| Space {
                        hosted,
                        replication: Replication::new(),
                    });
                    if !space.replication.is_connected(&peer) {
                        let _ = space.replication.connected(peer, false);
                    }
                    self.counters.greeted += 1;
                    tracing::debug!(space = space_id, "a member greeted");
                    self.reply(swarm, reply, SyncResponse::Greeted { members });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(code = e.code(), %e, "hello refused");
                    self.reply(swarm, reply, SyncResponse::Refused(e.code().into()));
                }
            },
            Done::Pull {
                space,
                peer,
                request,
            } => match request {
                Ok(request) => self.send(swarm, space, peer, request),
                Err(e) => tracing::warn!(space, code = e.code(), "cannot pull"),
            },
            Done::Read {
                space: space_id,
                peer,
                purpose,
                result,
            } => {
                let Some(space) = self.spaces.get_mut(&space_id) else {
                    return;
                };
                let actions = match result {
                    Ok((commits, lacking, log, ours)) => space
                        .replication
                        .read_done(peer, purpose, commits, lacking, log, ours),
                    Err(e) => {
                        tracing::warn!(space = space_id, code = e.code(), "cannot read commits");
                        space.replication.read_failed(peer, purpose, e.code())
                    }
                };
                self.execute(swarm, space_id, actions);
            }
            Done::Ingested {
                space: space_id,
                peer,
                arrival,
                merged,
                result,
            } => self.ingested(swarm, space_id, peer, arrival, merged, result),
            Done::Refreshed {
                space: space_id,
                result,
            } => match result {
                Ok(true) => {
                    self.cut_non_members(space_id);
                    let actions = self.fan_out(space_id);
                    self.execute(swarm, space_id, actions);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(space = space_id, code = e.code(), %e, "cannot read a store again")
                }
            },
        }
    }

    fn ingested(
        &mut self,
        swarm: &mut Swarm<ServerBehaviour>,
        space_id: SpaceId,
        peer: PeerId,
        arrival: Arrival,
        merged: Option<Merged>,
        result: Result<Ingested>,
    ) {
        let changed = merged.is_some_and(|m| m.changed);
        if changed {
            self.cut_non_members(space_id);
        }
        let Some(space) = self.spaces.get_mut(&space_id) else {
            return;
        };
        let actions = match result {
            Ok(outcome) => {
                let applied = outcome.applied;
                let mut actions = space.replication.ingested(peer, arrival, outcome);
                if applied > 0 || changed {
                    // What one device sent goes to the others.
                    actions.extend(self.fan_out(space_id));
                }
                actions
            }
            Err(e) => {
                tracing::info!(
                    space = space_id,
                    code = e.code(),
                    "received commits not stored"
                );
                space.replication.ingest_failed(arrival, e.code())
            }
        };
        self.execute(swarm, space_id, actions);
    }
}
