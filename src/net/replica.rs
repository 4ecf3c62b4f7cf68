//! What the network layer needs of a store: [`Replica`]. The node (and any
//! other executor of the replication protocol) reaches storage, membership
//! and pairing only through it, so `net` does not depend on the store's
//! types; `Store` implements it in `store/replica.rs`.

use crate::change::{SignedCommit, StoreId};
use crate::error::Result;
use crate::identity::DeviceId;
use crate::membership::{Members, MembersHave, MembershipWire};
use crate::platform::{BoxFuture, BoxStream, MaybeSend, MaybeSync};

use super::replication::{Ingested, Purpose, VersionVector};
use super::{SyncRequest, PULL_LIMIT};

/// The commits a replica holding `theirs` lacks, author by author: `ours`
/// is the highest number held per author, `read(author, after, want)` reads
/// an author's commits after a number, at most `chunk` at a time. Stops at
/// `limit` commits, or once the commits read reach `max_bytes` (at least
/// one is returned when any is missing).
pub async fn missing_commits<F, Fut>(
    ours: impl IntoIterator<Item = (DeviceId, u64)>,
    theirs: &[(DeviceId, u64)],
    limit: usize,
    max_bytes: usize,
    chunk: usize,
    mut read: F,
) -> Result<Vec<SignedCommit>>
where
    F: FnMut(DeviceId, u64, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<SignedCommit>>>,
{
    let theirs: std::collections::BTreeMap<DeviceId, u64> = theirs.iter().copied().collect();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for (author, seq) in ours {
        let mut known = theirs.get(&author).copied().unwrap_or(0);
        while known < seq && out.len() < limit && bytes < max_bytes {
            let more = read(author, known, chunk.min(limit - out.len())).await?;
            let Some(last) = more.last().and_then(SignedCommit::author_seq) else {
                break;
            };
            known = last.1;
            bytes = more
                .iter()
                .fold(bytes, |b, c| b.saturating_add(c.body.len() + 64));
            out.extend(more);
        }
    }
    Ok(out)
}

/// A pull: this side's version vector, the hash of its last commit of each
/// author, what it holds of the membership log.
pub async fn pull_request(replica: &dyn Replica) -> Result<SyncRequest> {
    let have = replica.version_vector().await?;
    let mut tips = Vec::with_capacity(have.len());
    for (author, seq) in &have {
        let commit = replica.commit_at(*author, *seq).await?;
        tips.push(commit.map_or([0; 32], |c| c.hash()));
    }
    Ok(SyncRequest::Pull {
        store: replica.store_id(),
        have,
        tips,
        limit: PULL_LIMIT,
        members: replica.membership_have().await,
    })
}

/// What merging a peer's membership log changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The log gained entries.
    pub changed: bool,
    /// Devices newly found to have signed two different entries under one
    /// number (they are removed: worth telling the user).
    pub equivocators: Vec<DeviceId>,
}

/// A replica of a store, as the network layer sees it.
pub trait Replica: MaybeSend + MaybeSync {
    /// The store's name on this device (a label for the peers it pairs
    /// with).
    fn name(&self) -> String;
    /// The store's id now (it changes once, when the store joins another
    /// device's store by pairing).
    fn store_id(&self) -> StoreId;
    /// Who is a member now.
    fn members(&self) -> std::sync::Arc<Members>;
    /// The highest sequence number held per author.
    fn version_vector(&self) -> BoxFuture<'_, Result<VersionVector>>;
    /// Commits a replica holding `have` lacks, per author in order: at most
    /// `limit`, stopping once `max_bytes` are read (at least one commit).
    fn commits_missing(
        &self,
        have: VersionVector,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<SignedCommit>>>;
    /// The commit `seq` of `author`, if held.
    fn commit_at(&self, author: DeviceId, seq: u64) -> BoxFuture<'_, Result<Option<SignedCommit>>>;
    /// Verifies and stores received commits.
    fn ingest(&self, commits: Vec<SignedCommit>) -> BoxFuture<'_, Result<Ingested>>;
    /// The founder of the store's membership log now.
    fn founder(&self) -> BoxFuture<'_, DeviceId>;
    /// What this replica holds of the membership log.
    fn membership_have(&self) -> BoxFuture<'_, MembersHave>;
    /// The membership entries a replica holding `theirs` lacks (`None`:
    /// nothing; `theirs` unknown: the whole log).
    fn membership_for(&self, theirs: Option<MembersHave>) -> BoxFuture<'_, Option<MembershipWire>>;
    /// Merges a peer's membership log.
    fn merge_membership(&self, log: MembershipWire) -> BoxFuture<'_, Result<Merged>>;
    /// Adds `device` (it proved the pairing code) and returns what it
    /// needs to join, encoded: to be sealed under the exchange's key.
    fn admit(&self, device: DeviceId, label: String) -> BoxFuture<'_, Result<Vec<u8>>>;
    /// Joins the store that admitted this device ([`Replica::admit`]'s
    /// bytes, opened).
    fn join(&self, welcome: Vec<u8>) -> BoxFuture<'_, Result<()>>;
    /// Removes `device` from the membership (and re-keys an encrypted
    /// store).
    fn revoke(&self, device: DeviceId) -> BoxFuture<'_, Result<()>>;
    /// A signal after every durable batch of commits or membership change.
    fn changes(&self) -> BoxStream<'static, ()>;
}

/// Reads what an [`Action::Read`](super::replication::Action::Read) asks
/// for: the commits (one more than `limit` when answering a pull, to tell
/// whether more remain), how many the peer lacks in all, the membership
/// entries it lacks, and what this side holds of the log.
pub async fn read(
    replica: &dyn Replica,
    have: VersionVector,
    limit: usize,
    theirs: Option<MembersHave>,
    purpose: Purpose,
    tips: Vec<[u8; 32]>,
) -> Result<(Vec<SignedCommit>, u64, Option<MembershipWire>, MembersHave)> {
    // One more than the limit says whether more remain.
    let want = match purpose {
        Purpose::Answer { .. } => limit + 1,
        Purpose::Push => limit,
    };
    let mut commits = Vec::new();
    // Where the peer's last commit of an author is not ours under that
    // number, ours goes first: the peer then holds both (proof of a fork).
    if tips.len() == have.len() {
        for ((author, seq), tip) in have.iter().zip(&tips) {
            if let Some(ours) = replica.commit_at(*author, *seq).await? {
                if ours.hash() != *tip {
                    commits.push(ours);
                }
            }
        }
    }
    commits.extend(
        replica
            .commits_missing(have.clone(), want, super::PAGE_BYTES)
            .await?,
    );
    let lacking = match purpose {
        Purpose::Answer { .. } => {
            let have: std::collections::BTreeMap<_, _> = have.into_iter().collect();
            replica
                .version_vector()
                .await?
                .into_iter()
                .map(|(author, seq)| seq.saturating_sub(have.get(&author).copied().unwrap_or(0)))
                .sum()
        }
        Purpose::Push => 0,
    };
    let ours = replica.membership_have().await;
    let log = replica.membership_for(theirs).await;
    Ok((commits, lacking, log, ours))
}

/// What an [`Action::Ingest`](super::replication::Action::Ingest) asks:
/// merges the peer's log first (it may admit the authors of the commits;
/// a refused log is logged and the commits are still checked), then
/// verifies and stores the commits.
pub async fn merge_and_ingest(
    replica: &dyn Replica,
    members: Option<MembershipWire>,
    commits: Vec<SignedCommit>,
) -> (Option<Merged>, Result<Ingested>) {
    let merged = match members {
        Some(log) => match replica.merge_membership(log).await {
            Ok(merged) => Some(merged),
            Err(e) => {
                tracing::info!(code = e.code(), %e, "membership log refused");
                None
            }
        },
        None => None,
    };
    (merged, replica.ingest(commits).await)
}
