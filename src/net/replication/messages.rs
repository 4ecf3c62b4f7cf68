//! What the replication core takes in and gives out: a peer's messages as
//! the core sees them ([`Incoming`]) and the actions an executor carries
//! out ([`Action`]), with what it reports back.

use crate::change::{SignedCommit, StoreId};
use crate::identity::DeviceId;
use crate::membership::MembershipWire;
use crate::net::live::LiveMessage;
use crate::net::{SyncRequest, SyncResponse};

/// A version vector: the highest sequence number held per author.
pub type VersionVector = Vec<(DeviceId, u64)>;
pub use crate::membership::MembersHave;
/// Names a request awaiting its response, for the executor to match.
pub type Token = u64;

/// A message from a peer, as the core sees it.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// The peer asks for what it lacks.
    Pull {
        /// The store it replicates.
        store: StoreId,
        /// Its version vector.
        have: VersionVector,
        /// The hash of its commit at each entry of `have`.
        tips: Vec<[u8; 32]>,
        /// At most this many commits.
        limit: u32,
        /// What it holds of the membership log.
        members: MembersHave,
        /// Where the answer goes.
        reply: Token,
    },
    /// The peer pushes commits it believes this side lacks.
    Push {
        /// The store.
        store: StoreId,
        /// Its commits.
        commits: Vec<SignedCommit>,
        /// Membership entries it believes we lack.
        members: Option<MembershipWire>,
        /// Where the acknowledgement goes (`None`: the live stream).
        reply: Option<Token>,
    },
    /// The answer to this side's pull.
    Commits {
        /// A page of commits.
        commits: Vec<SignedCommit>,
        /// More remain.
        more: bool,
        /// How many this side still lacks after the page.
        remaining: u64,
        /// Membership entries we lack.
        members: Option<MembershipWire>,
    },
    /// The peer's version vector (after a push of ours it partly refused).
    Have {
        /// Its version vector.
        have: VersionVector,
    },
}

impl Incoming {
    /// A request of `/persist/sync/2`, its answer to go under `reply`
    /// (`None`: a `Hello`, which only a sync server answers).
    pub fn request(request: SyncRequest, reply: Token) -> Option<Incoming> {
        Some(match request {
            SyncRequest::Pull {
                store,
                have,
                tips,
                limit,
                members,
            } => Incoming::Pull {
                store,
                have,
                tips,
                limit,
                members,
                reply,
            },
            SyncRequest::Push {
                store,
                commits,
                members,
            } => Incoming::Push {
                store,
                commits,
                members,
                reply: Some(reply),
            },
            SyncRequest::Hello { .. } => return None,
        })
    }

    /// The answer to one of this side's requests (`Err`: the peer refused
    /// it, with a code; `Ok(None)`: nothing to act on).
    pub fn response(response: SyncResponse) -> Result<Option<Incoming>, String> {
        Ok(match response {
            SyncResponse::Commits {
                commits,
                more,
                remaining,
                members,
            } => Some(Incoming::Commits {
                commits,
                more,
                remaining,
                members,
            }),
            SyncResponse::Ack {
                have: Some(have), ..
            } => Some(Incoming::Have { have }),
            SyncResponse::Ack { have: None, .. } => None,
            SyncResponse::Refused(code) => return Err(code),
            // Only a hello is answered so: a peer that answers a pull or a
            // push so speaks no sense.
            SyncResponse::Greeted { .. } => {
                return Err(crate::error::Code::ChangeMalformed.as_str().into())
            }
        })
    }

    /// A message of the live stream (`store`: this side's, which a live
    /// message does not name).
    pub fn live(message: LiveMessage, store: StoreId) -> Incoming {
        match message {
            LiveMessage::Have { have } => Incoming::Have { have },
            LiveMessage::Commits { commits, members } => Incoming::Push {
                store,
                commits,
                members,
                reply: None,
            },
        }
    }
}

/// Why commits are read for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To answer its pull (at most `limit` commits).
    Answer {
        /// Most commits to send.
        limit: usize,
        /// Where the answer goes.
        reply: Token,
    },
    /// To push what it lacks.
    Push,
}

/// How received commits came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// As the answer to this side's pull.
    Pulled {
        /// More remain at the peer.
        more: bool,
        /// How many.
        remaining: u64,
    },
    /// Pushed by the peer (`reply`: its request, or `None` on the live
    /// stream).
    Pushed {
        /// Where the acknowledgement goes.
        reply: Option<Token>,
    },
}

/// What ingesting received commits did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Commits stored.
    pub applied: usize,
    /// Commits already held.
    pub duplicates: usize,
    /// Commits refused.
    pub rejected: usize,
    /// Some were refused because they skip commits of their author.
    pub gap: bool,
    /// This side's version vector afterwards, when some were refused.
    pub have: Option<VersionVector>,
    /// Authors caught signing two different commits under one number.
    pub equivocators: Vec<DeviceId>,
}

/// What the executor does next.
#[derive(Debug, Clone)]
pub enum Action<P> {
    /// Send `peer` a pull (this side's version vector and what it holds
    /// of the membership log, at most [`PULL_LIMIT`](crate::net::PULL_LIMIT) commits).
    Pull {
        /// To whom.
        peer: P,
    },
    /// Read the commits a peer with version vector `have` lacks (at most
    /// `limit`, within a page of bytes) and the membership entries a
    /// replica holding `theirs` lacks; then [`Replication::read_done`](super::Replication::read_done).
    Read {
        /// For whom.
        peer: P,
        /// What it has.
        have: VersionVector,
        /// Most commits to read.
        limit: usize,
        /// What it holds of the membership log, if known (unknown: all).
        theirs: Option<MembersHave>,
        /// Why.
        purpose: Purpose,
        /// The hashes of its commits at `have` (a pull's), to find forks.
        tips: Vec<[u8; 32]>,
    },
    /// Answer a request.
    Reply {
        /// The request.
        token: Token,
        /// The answer.
        response: SyncResponse,
    },
    /// Push commits (and the log) to `peer`: on its live stream, or as a
    /// request when there is none.
    Push {
        /// To whom.
        peer: P,
        /// The commits.
        commits: Vec<SignedCommit>,
        /// The membership entries the peer lacks.
        members: Option<MembershipWire>,
    },
    /// Tell `peer` on its live stream what this side has.
    Have {
        /// To whom.
        peer: P,
        /// This side's version vector.
        have: VersionVector,
    },
    /// Merge the log (if any), then verify and store the commits; then
    /// [`Replication::ingested`](super::Replication::ingested).
    Ingest {
        /// From whom.
        peer: P,
        /// Its log, merged before the commits it admits.
        members: Option<MembershipWire>,
        /// The commits.
        commits: Vec<SignedCommit>,
        /// How they came.
        arrival: Arrival,
    },
    /// Tell the application what a sync step did.
    Synced {
        /// With whom.
        peer: P,
        /// Commits stored.
        applied: usize,
        /// Commits refused.
        rejected: usize,
        /// Commits the peer still has for this side.
        remaining: u64,
    },
}
