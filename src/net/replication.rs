//! The replication protocol as a sans-IO state machine: per-peer state,
//! messages in, actions out. No libp2p, no storage, no clock: the device's
//! node (and any other executor, such as the in-memory one of the protocol
//! property test) reads storage, ingests and sends as the actions say, and
//! reports back ([`Replication::read_done`], [`Replication::ingested`]).
//!
//! ```text
//! on connect with a member     -> Pull
//! Pull { have, limit, members } -> Read(answer) -> Reply Commits { page, more, remaining, entries? }
//!                                 (+ Pull, if this side never pulled from that peer)
//! Commits (our pull's answer)  -> Ingest (log merged first) -> Synced; Pull again while `more`
//! local commits                -> Read(push) for each member that told its version vector
//!                              -> Push { commits, entries? } (live stream, or a request)
//! Push                         -> Ingest -> Synced; a gap pulls; refusals answer `have`
//! Ack / Have { have }          -> what the peer has (pushes restart from it; a refusal
//!                                 is answered by one more push from there)
//! ```
//!
//! What this side believes a peer has (`known`) advances with every page
//! and push it sends or receives, so nothing is sent twice and nothing is
//! echoed back; what the peer *confirmed* (its pull, an ack, a `have`) is
//! where `known` restarts when a live stream breaks.

use std::collections::BTreeMap;

use super::{page_of, SyncResponse, PULL_LIMIT};
use crate::change::{SignedCommit, StoreId};
use crate::identity::DeviceId;
use crate::membership::MembershipWire;

mod messages;
pub use messages::*;

/// What this side knows of one peer.
#[derive(Debug, Default, Clone)]
struct PeerSync {
    /// The peer's version vector as this side believes it.
    known: BTreeMap<DeviceId, u64>,
    /// Its version vector as it last confirmed it.
    confirmed: BTreeMap<DeviceId, u64>,
    /// What it holds of the membership log: the tips it last told (its
    /// pull), moved up by the entries it sent since; and as digest, this
    /// side's digest when it last sent entries (nothing changed since:
    /// nothing to send). Entries sent but not confirmed go again with the
    /// next change, as a lost push would otherwise lose them for good.
    /// `None`: unknown.
    members: Option<MembersHave>,
    /// It told its version vector (pulled): pushes wait for that.
    heard: bool,
    /// This side pulled from it.
    pulled: bool,
    /// A read for a push is under way.
    pushing: bool,
    /// Local commits arrived while a push was being read.
    push_again: bool,
    /// The version vector of the peer's last refusal that this side
    /// answered by pushing again: the same refusal twice is not retried
    /// (commits the peer will never take are not sent forever).
    retried: Option<BTreeMap<DeviceId, u64>>,
}

impl PeerSync {
    /// Forgets that the peer's membership log matches ours, so the next
    /// push carries the entries beyond the tips it told (what was sent
    /// since may have been lost or applied after the commits needing it).
    fn doubt_members(&mut self) {
        if let Some(members) = self.members.as_mut() {
            members.digest = [0; 32];
        }
    }
}

/// The replication state of one store with its connected peers.
#[derive(Debug, Clone)]
pub struct Replication<P: Ord + Copy> {
    peers: BTreeMap<P, PeerSync>,
}

impl<P: Ord + Copy> Default for Replication<P> {
    fn default() -> Self {
        Replication {
            peers: BTreeMap::new(),
        }
    }
}

fn vector(map: &BTreeMap<DeviceId, u64>) -> VersionVector {
    map.iter().map(|(d, n)| (*d, *n)).collect()
}

fn advance(known: &mut BTreeMap<DeviceId, u64>, commits: &[SignedCommit]) {
    for (author, seq) in commits.iter().filter_map(SignedCommit::author_seq) {
        let entry = known.entry(author).or_insert(0);
        *entry = (*entry).max(seq);
    }
}

impl<P: Ord + Copy> Replication<P> {
    /// No peers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A peer connected; `member` says whether it is a member.
    pub fn connected(&mut self, peer: P, member: bool) -> Vec<Action<P>> {
        self.peers.insert(peer, PeerSync::default());
        if member {
            self.pull(peer)
        } else {
            Vec::new()
        }
    }

    /// A peer's last connection closed.
    pub fn disconnected(&mut self, peer: P) {
        self.peers.remove(&peer);
    }

    /// True while `peer` is connected.
    pub fn is_connected(&self, peer: &P) -> bool {
        self.peers.contains_key(peer)
    }

    /// Pull from `peer` now (after joining its store by pairing).
    pub fn pull_from(&mut self, peer: P) -> Vec<Action<P>> {
        self.pull(peer)
    }

    fn pull(&mut self, peer: P) -> Vec<Action<P>> {
        match self.peers.get_mut(&peer) {
            Some(state) => {
                state.pulled = true;
                vec![Action::Pull { peer }]
            }
            None => Vec::new(),
        }
    }

    /// This side committed (or its membership changed): read a push for
    /// every member that told its version vector. `is_member` says who is.
    pub fn on_local_commits(&mut self, is_member: impl Fn(&P) -> bool) -> Vec<Action<P>> {
        let peers: Vec<P> = self
            .peers
            .iter()
            .filter(|(p, s)| s.heard && is_member(p))
            .map(|(p, _)| *p)
            .collect();
        peers
            .into_iter()
            .flat_map(|peer| self.read_push(peer))
            .collect()
    }

    fn read_push(&mut self, peer: P) -> Vec<Action<P>> {
        let Some(state) = self.peers.get_mut(&peer) else {
            return Vec::new();
        };
        if state.pushing {
            state.push_again = true;
            return Vec::new();
        }
        state.pushing = true;
        state.push_again = false;
        vec![Action::Read {
            peer,
            have: vector(&state.known),
            limit: PULL_LIMIT as usize,
            theirs: state.members.clone(),
            purpose: Purpose::Push,
            tips: Vec::new(),
        }]
    }

    /// A message from `peer` (`member`: whether it is a member now;
    /// `store`: this side's store id).
    pub fn handle(
        &mut self,
        peer: P,
        member: bool,
        store: StoreId,
        message: Incoming,
    ) -> Vec<Action<P>> {
        let refuse = |code: &str, reply: Option<Token>| -> Vec<Action<P>> {
            reply
                .map(|token| Action::Reply {
                    token,
                    response: SyncResponse::Refused(code.into()),
                })
                .into_iter()
                .collect()
        };
        if !member {
            let reply = match &message {
                Incoming::Pull { reply, .. } => Some(*reply),
                Incoming::Push { reply, .. } => *reply,
                _ => None,
            };
            return refuse("NOT_TRUSTED", reply);
        }
        match message {
            Incoming::Pull {
                store: theirs,
                reply,
                ..
            } if theirs != store => refuse("WRONG_STORE", Some(reply)),
            Incoming::Push {
                store: theirs,
                reply,
                ..
            } if theirs != store => refuse("WRONG_STORE", reply),
            // A peer sends at most a page of commits per message: more is
            // refused before any is verified (a flood of tiny commits would
            // hold the verifier for seconds).
            Incoming::Push { commits, reply, .. } if commits.len() > PULL_LIMIT as usize => {
                tracing::info!(
                    count = commits.len(),
                    "a push of more commits than a page refused"
                );
                refuse("VALUE_TOO_LARGE", reply)
            }
            Incoming::Commits { commits, .. } if commits.len() > PULL_LIMIT as usize => {
                tracing::info!(
                    count = commits.len(),
                    "a page of more commits than asked dropped"
                );
                Vec::new()
            }
            Incoming::Pull {
                have,
                tips,
                limit,
                members,
                reply,
                ..
            } => {
                let state = self.peers.entry(peer).or_default();
                state.known = have.iter().copied().collect();
                state.confirmed = state.known.clone();
                state.members = Some(members.clone());
                state.heard = true;
                let mut actions = vec![Action::Read {
                    peer,
                    have,
                    limit: limit.min(PULL_LIMIT) as usize,
                    theirs: Some(members),
                    purpose: Purpose::Answer {
                        limit: limit.min(PULL_LIMIT) as usize,
                        reply,
                    },
                    tips,
                }];
                // A member that pulled from us before we pulled from it.
                if !state.pulled {
                    actions.extend(self.pull(peer));
                }
                actions
            }
            Incoming::Push {
                commits,
                members,
                reply,
                ..
            } => self.received(peer, commits, members, Arrival::Pushed { reply }),
            Incoming::Commits {
                commits,
                more,
                remaining,
                members,
            } => self.received(peer, commits, members, Arrival::Pulled { more, remaining }),
            // The peer refused some of what this side pushed. Commits can
            // be refused for a while and taken later (their author's
            // membership entry was lost with a broken stream, or applied
            // just after them): push again from what it has, once for
            // each version vector it refuses at.
            Incoming::Have { have } => {
                let Some(state) = self.peers.get_mut(&peer) else {
                    return Vec::new();
                };
                let have: BTreeMap<DeviceId, u64> = have.into_iter().collect();
                state.known = have.clone();
                state.confirmed = have.clone();
                state.doubt_members();
                if !state.heard || state.retried.as_ref() == Some(&have) {
                    return Vec::new();
                }
                state.retried = Some(have);
                self.read_push(peer)
            }
        }
    }

    fn received(
        &mut self,
        peer: P,
        commits: Vec<SignedCommit>,
        members: Option<MembershipWire>,
        arrival: Arrival,
    ) -> Vec<Action<P>> {
        if let Some(state) = self.peers.get_mut(&peer) {
            // The sender has what it sent: never echo it back.
            advance(&mut state.known, &commits);
            // It holds the entries it sent: never echo them back.
            if let (Some(log), Some(known)) = (&members, state.members.as_mut()) {
                known.advance(&log.entries);
            }
        }
        vec![Action::Ingest {
            peer,
            members,
            commits,
            arrival,
        }]
    }

    /// The result of an [`Action::Read`]: up to `limit + 1` commits the
    /// peer lacks (`lacking`: how many in all), the membership entries it
    /// lacks, and what this side holds of the log.
    pub fn read_done(
        &mut self,
        peer: P,
        purpose: Purpose,
        mut commits: Vec<SignedCommit>,
        lacking: u64,
        members: Option<MembershipWire>,
        ours: MembersHave,
    ) -> Vec<Action<P>> {
        match purpose {
            Purpose::Answer { limit, reply } => {
                let over_count = commits.len() > limit;
                commits.truncate(limit);
                let (commits, over_bytes) = page_of(commits);
                let remaining = lacking.saturating_sub(commits.len() as u64);
                if let Some(state) = self.peers.get_mut(&peer) {
                    advance(&mut state.known, &commits);
                    if let (Some(_), Some(known)) = (&members, state.members.as_mut()) {
                        known.digest = ours.digest;
                    }
                }
                vec![Action::Reply {
                    token: reply,
                    response: SyncResponse::Commits {
                        commits,
                        more: over_count || over_bytes,
                        remaining,
                        members,
                    },
                }]
            }
            Purpose::Push => {
                let Some(state) = self.peers.get_mut(&peer) else {
                    return Vec::new();
                };
                state.pushing = false;
                let again = std::mem::take(&mut state.push_again);
                let mut actions = Vec::new();
                commits.truncate(PULL_LIMIT as usize);
                if !commits.is_empty() || members.is_some() {
                    // A peer far behind catches up by pulling.
                    let (commits, _) = page_of(commits);
                    advance(&mut state.known, &commits);
                    if members.is_some() {
                        match state.members.as_mut() {
                            Some(known) => known.digest = ours.digest,
                            None => state.members = Some(ours),
                        }
                    }
                    actions.push(Action::Push {
                        peer,
                        commits,
                        members,
                    });
                }
                if again {
                    actions.extend(self.read_push(peer));
                }
                actions
            }
        }
    }

    /// The result of an [`Action::Ingest`].
    pub fn ingested(&mut self, peer: P, arrival: Arrival, outcome: Ingested) -> Vec<Action<P>> {
        let mut actions = Vec::new();
        let count = outcome.applied + outcome.duplicates + outcome.rejected;
        match arrival {
            Arrival::Pulled { more, remaining } => {
                if count > 0 {
                    actions.push(Action::Synced {
                        peer,
                        applied: outcome.applied,
                        rejected: outcome.rejected,
                        remaining,
                    });
                }
                // Keep paging while pages make progress (duplicates count:
                // a relay may have delivered them first).
                if more && outcome.applied + outcome.duplicates > 0 {
                    actions.extend(self.pull(peer));
                }
            }
            Arrival::Pushed { reply } => {
                actions.push(Action::Synced {
                    peer,
                    applied: outcome.applied,
                    rejected: outcome.rejected,
                    remaining: 0,
                });
                // Commits that skip some of their author's: pull the gap.
                if outcome.gap {
                    actions.extend(self.pull(peer));
                }
                match reply {
                    Some(token) => actions.push(Action::Reply {
                        token,
                        response: SyncResponse::Ack {
                            applied: outcome.applied as u32,
                            rejected: outcome.rejected as u32,
                            have: outcome.have,
                        },
                    }),
                    None => {
                        if let Some(have) = outcome.have {
                            actions.push(Action::Have { peer, have });
                        }
                    }
                }
            }
        }
        actions
    }

    /// A push could not be stored by the executor (storage failed): the
    /// peer gets a refusal if it asked by request.
    pub fn ingest_failed(&mut self, arrival: Arrival, code: &str) -> Vec<Action<P>> {
        match arrival {
            Arrival::Pushed { reply: Some(token) } => vec![Action::Reply {
                token,
                response: SyncResponse::Refused(code.into()),
            }],
            _ => Vec::new(),
        }
    }

    /// A read failed: answer a pull with a refusal; a push is abandoned.
    pub fn read_failed(&mut self, peer: P, purpose: Purpose, code: &str) -> Vec<Action<P>> {
        match purpose {
            Purpose::Answer { reply, .. } => vec![Action::Reply {
                token: reply,
                response: SyncResponse::Refused(code.into()),
            }],
            Purpose::Push => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.pushing = false;
                }
                Vec::new()
            }
        }
    }

    /// `peer` refused a request of this side (its storage failed, or it
    /// did not take this side's word yet): the next push starts again
    /// from what it last confirmed, membership entries included.
    pub fn refused(&mut self, peer: P) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.known = state.confirmed.clone();
            state.doubt_members();
        }
    }

    /// The live stream to `peer` broke: pushes restart from what it last
    /// confirmed, as requests.
    pub fn live_broke(&mut self, peer: P) -> Vec<Action<P>> {
        let Some(state) = self.peers.get_mut(&peer) else {
            return Vec::new();
        };
        state.known = state.confirmed.clone();
        state.doubt_members();
        if state.heard {
            self.read_push(peer)
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
