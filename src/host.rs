//! Hosting stores without their keys: what a sync server
//! (`persist node --serve`) holds of each store it serves, as a
//! [`Replica`] the replication protocol runs on unchanged.
//!
//! A hosted store is a **space**: a store id *and* its founder. The server
//! trusts no one's word for who the founder is; it keeps one space per
//! (store, founder) pair a member presented, so a stranger who learns a
//! store id and registers a log of its own founds a space of its own,
//! which no member of the real store ever reads or writes.
//!
//! What a space checks without the key: every commit is sealed (plain
//! commits are refused: the server keeps only ciphertext), signed by its
//! author for this store, the next of its author's hash chain, and
//! admitted by the membership log (a current member, or a removed device
//! below its removal's cut). The membership log itself is verified and
//! merged as on a device. Two different commits under one number are
//! refused as an equivocation (the first one stays, and goes to every
//! device that pulls, which then holds both and treats the author as a
//! device does). Nothing is opened, nothing is decrypted: the server has
//! no key to do so.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::change::{Commit, Limits, SignedCommit, StoreId};
use crate::error::{Error, RejectReason, Result, StorageError};
use crate::identity::DeviceId;
use crate::membership::{Members, MembersHave, MembershipLog, MembershipWire};
use crate::net::replica::{Merged, Replica};
use crate::net::replication::{Ingested, VersionVector};
use crate::platform::{BoxFuture, BoxStream, MaybeSend, MaybeSync};
use crate::storage::StorageResult;

#[cfg(feature = "test-utils")]
pub mod conformance;

/// A space's number in the server's storage.
pub type SpaceId = i64;
/// A space as stored: its number and its membership log (encoded).
pub type StoredSpace = (SpaceId, Vec<u8>);
/// An author's last commit held: author, number, hash.
pub type Head = (DeviceId, u64, [u8; 32]);

/// A commit checked for a space, with what its storage indexes.
#[derive(Debug, Clone)]
pub struct HostedCommit {
    /// The author.
    pub author: DeviceId,
    /// Its number in the author's chain.
    pub seq: u64,
    /// The hash of its body.
    pub hash: [u8; 32],
    /// The commit as received (ciphertext and signature).
    pub commit: SignedCommit,
}

/// What one space holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Commits.
    pub commits: u64,
    /// Bytes of commits (bodies and signatures).
    pub bytes: u64,
}

/// What a server's storage holds in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Spaces (served stores).
    pub stores: u64,
    /// Commits.
    pub commits: u64,
    /// Bytes of commits.
    pub bytes: u64,
}

/// What another server process changed in a shared storage (see
/// [`HostStorage::changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// The commits or the membership log of this space.
    Space(SpaceId),
    /// Anything: notices may have been missed (the database connection
    /// was lost and came back, or too many arrived at once).
    Unknown,
}

/// The storage of a sync server: spaces, their membership logs and their
/// commits. Every write is durable when its future completes (the server
/// acknowledges nothing before). Several server processes may share one
/// storage: a number is stored once (a second commit under it is
/// `STORAGE_CONFLICT`), a log is replaced only over the one it was merged
/// into, and [`HostStorage::changes`] tells each process what the others
/// wrote.
pub trait HostStorage: MaybeSend + MaybeSync {
    /// A line saying what and where this storage is.
    fn describe(&self) -> String;
    /// The space of `store` founded by `founder`, with its stored log.
    fn space(
        &self,
        store: StoreId,
        founder: DeviceId,
    ) -> BoxFuture<'_, StorageResult<Option<StoredSpace>>>;
    /// Creates the space of `store` founded by `founder` with `log` unless
    /// it exists, and returns it with its stored log; `None` when
    /// `max_spaces` are held already.
    fn create_space(
        &self,
        store: StoreId,
        founder: DeviceId,
        log: Vec<u8>,
        max_spaces: u64,
    ) -> BoxFuture<'_, StorageResult<Option<StoredSpace>>>;
    /// Replaces a space's membership log if it still is `old`; false
    /// (nothing written) when another server process replaced it since.
    fn set_log(
        &self,
        space: SpaceId,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> BoxFuture<'_, StorageResult<bool>>;
    /// Per author: the highest number held and that commit's hash.
    fn heads(&self, space: SpaceId) -> BoxFuture<'_, StorageResult<Vec<Head>>>;
    /// Commits of `author` after number `after`, in order, at most `limit`.
    fn commits_after(
        &self,
        space: SpaceId,
        author: DeviceId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>>;
    /// The commit `seq` of `author`, if held.
    fn commit_at(
        &self,
        space: SpaceId,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>>;
    /// Stores `commits` in one durable transaction (all or none).
    fn append(
        &self,
        space: SpaceId,
        commits: Vec<HostedCommit>,
    ) -> BoxFuture<'_, StorageResult<()>>;
    /// Drops the commits of `author` after number `keep_upto`; returns how
    /// many went.
    fn truncate(
        &self,
        space: SpaceId,
        author: DeviceId,
        keep_upto: u64,
    ) -> BoxFuture<'_, StorageResult<u64>>;
    /// What a space holds.
    fn usage(&self, space: SpaceId) -> BoxFuture<'_, StorageResult<Usage>>;
    /// What the storage holds in all.
    fn stats(&self) -> BoxFuture<'_, StorageResult<HostStats>>;
    /// The spaces other server processes change from now on, as they do
    /// (a storage one process owns never yields). Called once, by the
    /// serving node.
    fn changes(&self) -> BoxStream<'static, Changed>;
}

/// Decoders of the columns a server's storage reads back (SQL engines
/// type them as bytes and integers): a value of the wrong size or sign is
/// `STORAGE_CORRUPT`.
pub mod stored {
    use crate::change::SignedCommit;
    use crate::error::StorageError;
    use crate::identity::DeviceId;
    use crate::storage::StorageResult;

    fn sized<const N: usize>(bytes: Vec<u8>, what: &str) -> StorageResult<[u8; N]> {
        bytes
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("a stored {what} is not {N} bytes")))
    }

    /// A device id column.
    pub fn device(bytes: Vec<u8>) -> StorageResult<DeviceId> {
        Ok(DeviceId::from_bytes(sized(bytes, "device id")?))
    }

    /// A hash column.
    pub fn hash(bytes: Vec<u8>) -> StorageResult<[u8; 32]> {
        sized(bytes, "hash")
    }

    /// A commit's body and signature columns.
    pub fn commit(body: Vec<u8>, signature: Vec<u8>) -> StorageResult<SignedCommit> {
        Ok(SignedCommit {
            body,
            signature: sized(signature, "signature")?,
        })
    }

    /// A count or sequence number column (a signed 64-bit integer).
    pub fn count(value: i64) -> StorageResult<u64> {
        u64::try_from(value)
            .map_err(|_| StorageError::Corrupt(format!("a stored count of {value}")))
    }

    /// A count or sequence number as a signed 64-bit integer column.
    pub fn number(n: u64) -> StorageResult<i64> {
        i64::try_from(n)
            .map_err(|_| StorageError::Backend(format!("{n} does not fit a 64-bit column")))
    }
}

/// What a server allows one space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of commits, at most.
    pub max_bytes: u64,
    /// Commits, at most.
    pub max_commits: u64,
}

impl Default for Quota {
    fn default() -> Quota {
        Quota {
            max_bytes: 1 << 30,
            max_commits: 10_000_000,
        }
    }
}

/// Commits checked per chunk off the executor.
const CHECK_CHUNK: usize = 256;

struct State {
    log: MembershipLog,
    /// The log as stored (what a replacement must find there).
    stored_log: Vec<u8>,
    digest: [u8; 32],
    heads: BTreeMap<DeviceId, (u64, [u8; 32])>,
    usage: Usage,
}

/// A space as a [`Replica`]: what the server's replication runs on.
pub struct Hosted {
    storage: Arc<dyn HostStorage>,
    space: SpaceId,
    store: StoreId,
    limits: Limits,
    quota: Quota,
    wall_clock: fn() -> u64,
    state: futures::lock::Mutex<State>,
    members: Mutex<Arc<Members>>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted")
            .field("space", &self.space)
            .field("store", &self.store)
            .finish()
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(StorageError::Corrupt(format!("{what}: {e}")))
}

fn parse_log(bytes: &[u8]) -> Result<MembershipLog> {
    MembershipLog::from_bytes(bytes).map_err(|e| corrupt("a stored membership log", e))
}

async fn load_heads(
    storage: &dyn HostStorage,
    space: SpaceId,
) -> Result<BTreeMap<DeviceId, (u64, [u8; 32])>> {
    Ok(storage
        .heads(space)
        .await?
        .into_iter()
        .map(|(author, seq, hash)| (author, (seq, hash)))
        .collect())
}

/// Times a log replacement is tried again after another server process
/// replaced the log first.
const LOG_RETRIES: usize = 8;

impl Hosted {
    /// Loads space `space` (holding `log`, as stored) from `storage`.
    pub async fn load(
        storage: Arc<dyn HostStorage>,
        space: SpaceId,
        log: &[u8],
        limits: Limits,
        quota: Quota,
    ) -> Result<Hosted> {
        let stored_log = log.to_vec();
        let log = parse_log(log)?;
        let heads = load_heads(&*storage, space).await?;
        let usage = storage.usage(space).await?;
        let members = Arc::new(log.members());
        Ok(Hosted {
            storage,
            space,
            store: log.store(),
            limits,
            quota,
            wall_clock: crate::platform::now_ms,
            members: Mutex::new(members),
            state: futures::lock::Mutex::new(State {
                digest: log.digest(),
                log,
                stored_log,
                heads,
                usage,
            }),
        })
    }

    /// The space's number.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// The founder of the store this space holds.
    pub async fn founder(&self) -> DeviceId {
        self.state.lock().await.log.founder()
    }

    /// True when `device` is a current member.
    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.current_members().is_member(device)
    }

    /// What the space holds now.
    pub async fn usage(&self) -> Usage {
        self.state.lock().await.usage
    }

    fn current_members(&self) -> Arc<Members> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the space again from the storage (another server process
    /// over the same database stored commits or merged entries): true
    /// when its heads or its membership changed.
    pub async fn refresh(&self) -> Result<bool> {
        let mut state = self.state.lock().await;
        self.reload(&mut state).await
    }

    async fn reload(&self, state: &mut State) -> Result<bool> {
        let founder = state.log.founder();
        let Some((_, stored)) = self.storage.space(self.store, founder).await? else {
            return Err(corrupt("a served store", "it is gone from the storage"));
        };
        let mut changed = false;
        if stored != state.stored_log {
            let log = parse_log(&stored)?;
            state.digest = log.digest();
            *self.members.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(log.members());
            state.log = log;
            state.stored_log = stored;
            changed = true;
        }
        let heads = load_heads(&*self.storage, self.space).await?;
        if heads != state.heads {
            state.heads = heads;
            changed = true;
        }
        state.usage = self.storage.usage(self.space).await?;
        Ok(changed)
    }

    /// Verifies and stores commits: the keyless checks of
    /// [`Commit::check_sealed`] off the executor, then each against its
    /// author's chain and the membership, in one durable batch. When
    /// another server process stored some of these numbers first, the
    /// space is read again and the batch checked once more.
    async fn ingest_commits(&self, commits: Vec<SignedCommit>) -> Result<Ingested> {
        let mut checked = Vec::with_capacity(commits.len());
        let mut rest = commits.into_iter();
        let (store, limits) = (self.store, self.limits);
        // The chunks are checked at once, on as many cores as there are.
        let mut chunks = Vec::new();
        loop {
            let chunk: Vec<SignedCommit> = rest.by_ref().take(CHECK_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(crate::platform::compute(move || {
                chunk
                    .into_iter()
                    .map(|signed| (Commit::check_sealed(&signed, store, &limits), signed))
                    .collect::<Vec<_>>()
            }));
        }
        for results in futures::future::join_all(chunks).await {
            checked.extend(results?);
        }
        let mut state = self.state.lock().await;
        match self.store_checked(&mut state, &checked).await {
            Err(Error::Storage(StorageError::Conflict(e))) => {
                tracing::debug!(%e, "another server process stored some of these first");
                self.reload(&mut state).await?;
                self.store_checked(&mut state, &checked).await
            }
            other => other,
        }
    }

    /// Checks commits against the chains and the membership as `state`
    /// has them, and stores those that pass in one batch.
    async fn store_checked(
        &self,
        state: &mut State,
        checked: &[(
            std::result::Result<crate::change::SealedHeader, RejectReason>,
            SignedCommit,
        )],
    ) -> Result<Ingested> {
        let members = self.current_members();
        let mut outcome = Ingested::default();
        let mut heads = state.heads.clone();
        let mut accepted = Vec::new();
        let mut bytes = 0u64;
        for (result, signed) in checked {
            let header = match result {
                Ok(header) => *header,
                Err(reason) => {
                    tracing::info!(code = reason.code(), %reason, "hosted store refused a commit");
                    outcome.rejected += 1;
                    continue;
                }
            };
            let (held, tip) = heads.get(&header.author).copied().unwrap_or((0, [0; 32]));
            if header.seq <= held {
                let same = match accepted
                    .iter()
                    .find(|c: &&HostedCommit| c.author == header.author && c.seq == header.seq)
                {
                    Some(c) => c.hash == header.hash,
                    None => self
                        .storage
                        .commit_at(self.space, header.author, header.seq)
                        .await?
                        .is_some_and(|c| c.hash() == header.hash),
                };
                if same {
                    outcome.duplicates += 1;
                } else {
                    tracing::warn!(author = %header.author.short(), seq = header.seq, "two commits under one number: the first is kept");
                    outcome.rejected += 1;
                    if !outcome.equivocators.contains(&header.author) {
                        outcome.equivocators.push(header.author);
                    }
                }
                continue;
            }
            if header.seq != held + 1 || header.prev != tip {
                outcome.rejected += 1;
                outcome.gap = true;
                continue;
            }
            if !members.admits_commit(&header.author, header.seq, &header.hash) {
                let reason = RejectReason::NotTrusted(header.author.short());
                tracing::info!(code = reason.code(), %reason, "hosted store refused a commit");
                outcome.rejected += 1;
                continue;
            }
            heads.insert(header.author, (header.seq, header.hash));
            bytes += (signed.body.len() + signed.signature.len()) as u64;
            accepted.push(HostedCommit {
                author: header.author,
                seq: header.seq,
                hash: header.hash,
                commit: signed.clone(),
            });
        }
        if !accepted.is_empty() {
            let usage = Usage {
                commits: state.usage.commits + accepted.len() as u64,
                bytes: state.usage.bytes + bytes,
            };
            if usage.commits > self.quota.max_commits || usage.bytes > self.quota.max_bytes {
                return Err(Error::QuotaExceeded(format!(
                    "this store would hold {} commits and {} bytes on the server (at most {} and {})",
                    usage.commits, usage.bytes, self.quota.max_commits, self.quota.max_bytes
                )));
            }
            outcome.applied = accepted.len();
            self.storage.append(self.space, accepted).await?;
            state.heads = heads;
            state.usage = usage;
        }
        if outcome.rejected > 0 {
            outcome.have = Some(vector(&state.heads));
        }
        Ok(outcome)
    }

    /// Merges a peer's log; drops the commits it no longer admits.
    /// The log is replaced only over the one it was merged into: when
    /// another server process replaced it first, the space is read again
    /// and the entries merged into that.
    async fn merge(&self, wire: MembershipWire) -> Result<Merged> {
        let mut state = self.state.lock().await;
        let ours = wire.store == state.log.store() && wire.founder == state.log.founder();
        if ours && wire.entries.is_empty() {
            // (A device's first hello: nothing to merge, no copy to make.)
            return Ok(Merged::default());
        }
        let before = self.current_members();
        let horizon = (self.wall_clock)().saturating_add(self.limits.max_clock_skew_ms);
        let mut attempt = 0;
        let (log, bytes) = loop {
            let mut log = state.log.clone();
            let count = log.merge_until(&wire, horizon)?;
            if count.added == 0 {
                // Nothing new, unless another process's log was read.
                return Ok(Merged {
                    changed: attempt > 0,
                    ..Merged::default()
                });
            }
            let bytes = log.to_bytes().map_err(|e| {
                Error::Storage(StorageError::Backend(format!("a membership log: {e}")))
            })?;
            let old = state.stored_log.clone();
            if self.storage.set_log(self.space, old, bytes.clone()).await? {
                break (log, bytes);
            }
            attempt += 1;
            if attempt >= LOG_RETRIES {
                return Err(Error::Storage(StorageError::Conflict(
                    "other server processes kept replacing this store's membership log".into(),
                )));
            }
            self.reload(&mut state).await?;
        };
        let members = Arc::new(log.members());
        // Commits past a removal's cut, or from a fork on, no longer count.
        for (author, (seq, _)) in state.heads.clone() {
            let keep = match members.removed.get(&author) {
                Some(removal) => {
                    let mut keep = removal.commits_upto.min(seq);
                    if keep == removal.commits_upto && keep > 0 {
                        let at = self.storage.commit_at(self.space, author, keep).await?;
                        if !at.is_some_and(|c| removal.admits(keep, &c.hash())) {
                            keep -= 1;
                        }
                    }
                    keep
                }
                None if members.current.contains_key(&author) => seq,
                None => 0,
            };
            let keep = match members.commit_forks.get(&author) {
                Some(fork) => keep.min(fork.saturating_sub(1)),
                None => keep,
            };
            if keep < seq {
                self.storage.truncate(self.space, author, keep).await?;
                tracing::info!(author = %author.short(), kept = keep, "hosted commits no longer admitted dropped");
            }
        }
        state.heads = load_heads(&*self.storage, self.space).await?;
        state.usage = self.storage.usage(self.space).await?;
        state.digest = log.digest();
        state.log = log;
        state.stored_log = bytes;
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = members.clone();
        Ok(Merged {
            changed: true,
            equivocators: members
                .equivocators
                .difference(&before.equivocators)
                .copied()
                .collect(),
        })
    }
}

fn vector(heads: &BTreeMap<DeviceId, (u64, [u8; 32])>) -> VersionVector {
    heads
        .iter()
        .map(|(author, (seq, _))| (*author, *seq))
        .collect()
}

fn no_member() -> Error {
    Error::NotTrusted("a sync server is no member of the stores it holds".into())
}

impl Replica for Hosted {
    fn name(&self) -> String {
        self.store.to_string()
    }

    fn store_id(&self) -> StoreId {
        self.store
    }

    fn members(&self) -> Arc<Members> {
        self.current_members()
    }

    fn version_vector(&self) -> BoxFuture<'_, Result<VersionVector>> {
        Box::pin(async move { Ok(vector(&self.state.lock().await.heads)) })
    }

    fn commits_missing(
        &self,
        have: VersionVector,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<SignedCommit>>> {
        Box::pin(async move {
            let heads = self.state.lock().await.heads.clone();
            let ours = heads.into_iter().map(|(author, (seq, _))| (author, seq));
            crate::net::replica::missing_commits(
                ours,
                &have,
                limit,
                max_bytes,
                CHECK_CHUNK,
                |author, after, want| async move {
                    Ok(self
                        .storage
                        .commits_after(self.space, author, after, want)
                        .await?)
                },
            )
            .await
        })
    }

    fn commit_at(&self, author: DeviceId, seq: u64) -> BoxFuture<'_, Result<Option<SignedCommit>>> {
        Box::pin(async move { Ok(self.storage.commit_at(self.space, author, seq).await?) })
    }

    fn ingest(&self, commits: Vec<SignedCommit>) -> BoxFuture<'_, Result<Ingested>> {
        Box::pin(self.ingest_commits(commits))
    }

    fn founder(&self) -> BoxFuture<'_, DeviceId> {
        Box::pin(Hosted::founder(self))
    }

    fn membership_have(&self) -> BoxFuture<'_, MembersHave> {
        Box::pin(async move {
            let state = self.state.lock().await;
            MembersHave {
                digest: state.digest,
                tips: state.log.tips(),
            }
        })
    }

    fn membership_for(&self, theirs: Option<MembersHave>) -> BoxFuture<'_, Option<MembershipWire>> {
        Box::pin(async move {
            let state = self.state.lock().await;
            match theirs {
                Some(theirs) if theirs.digest == state.digest => None,
                Some(theirs) => state.log.missing_for(&theirs),
                None => Some(state.log.to_wire()),
            }
        })
    }

    fn merge_membership(&self, log: MembershipWire) -> BoxFuture<'_, Result<Merged>> {
        Box::pin(self.merge(log))
    }

    fn admit(&self, _device: DeviceId, _label: String) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async { Err(no_member()) })
    }

    fn join(&self, _welcome: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Err(no_member()) })
    }

    fn revoke(&self, _device: DeviceId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Err(no_member()) })
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        // The server's loop learns of changes from the ingests it runs.
        Box::pin(futures::stream::pending())
    }
}
