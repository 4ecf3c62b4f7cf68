//! The single writer: group commit of local writes and received commits.
//!
//! Every mutation goes through [`Writer::submit`]. A caller queues its
//! request, then waits for the writer lock or its answer, whichever comes
//! first; whoever gets the lock takes the whole queue and turns it into one
//! [`WriteBatch`]: the local writes queued together are stamped in order and
//! coalesced into one signed commit (split at the commit size limit), each
//! received commit is deduplicated and checked for order, every operation is
//! materialized through the conflict strategy, and the batch is written with
//! one durable transaction. Then every request in it is answered. With 64
//! concurrent writers this costs one fsync and one signature instead of 64,
//! and no write is acknowledged before it is durable. On storage shared with
//! other writers (IndexedDB tabs) a conflicting batch is rebuilt with fresh
//! state.
//!
//! No task is spawned: the caller that holds the lock does the work, so the
//! same code runs on tokio, on a thread and on the browser's event loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use futures::channel::oneshot;
use serde_json::Value;

use super::handles::AppendedEvent;
use super::subscribe::{Origin, RecordChange};
use super::Store;
use crate::change::{Commit, CommitBody, Op, SignedCommit, Stamp, COMMIT_FORMAT};
use crate::error::{Error, RejectReason, Result, StorageError};
use crate::hlc::{Hlc, HybridClock};
use crate::identity::DeviceId;
use crate::merge::{self, ConflictStrategy, KvRow, RecordRow};
use crate::storage::{EventRow, LogEntry, WriteBatch};

/// A write the caller asked for, before it is stamped.
#[derive(Debug, Clone)]
pub(crate) enum Intent {
    Put {
        collection: String,
        id: String,
        text: String,
    },
    Delete {
        collection: String,
        id: String,
    },
    Append {
        log: String,
        text: String,
    },
    Set {
        key: String,
        text: String,
    },
    Unset {
        key: String,
    },
}

#[derive(Clone)]
pub(crate) enum Request {
    Local(Vec<Intent>),
    Remote(Vec<(usize, Commit)>),
}

pub(crate) enum Outcome {
    Local(WriteReceipt),
    Remote(IngestReport),
}

impl Outcome {
    pub(crate) fn into_receipt(self) -> Result<WriteReceipt> {
        match self {
            Outcome::Local(receipt) => Ok(receipt),
            Outcome::Remote(_) => Err(Error::InvalidOptions(
                "internal: remote outcome for a local write".into(),
            )),
        }
    }

    pub(crate) fn into_ingest(self) -> IngestReport {
        match self {
            Outcome::Remote(report) => report,
            Outcome::Local(_) => IngestReport::default(),
        }
    }
}

/// What a durable local write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReceipt {
    /// The commit's per-author sequence number.
    pub seq: u64,
    /// Stamp of the commit's first operation.
    pub hlc: Hlc,
    /// Ids of the events the commit appended, in order.
    pub events: Vec<AppendedEvent>,
}

/// What [`Store::ingest`] did with received commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Commits verified, stored and applied.
    pub applied: usize,
    /// Commits already stored (ignored).
    pub duplicates: usize,
    /// Commits refused: their index in the input and why.
    pub rejected: Vec<(usize, RejectReason)>,
    /// Two different commits of one author under one number: the one held
    /// and the one received (both signed by that author: the evidence).
    pub forks: Vec<(SignedCommit, SignedCommit)>,
}

impl IngestReport {
    pub(crate) fn merge(mut self, other: IngestReport) -> IngestReport {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.rejected.extend(other.rejected);
        self.rejected.sort_by_key(|(i, _)| *i);
        self.forks.extend(other.forks);
        self
    }
}

type Reply = oneshot::Sender<Result<Outcome>>;

struct WriterState {
    clock: HybridClock,
    heads: BTreeMap<DeviceId, u64>,
    /// Hashes of the commits at `heads` (what the next commit of each
    /// author must name), filled as they are needed.
    tips: BTreeMap<DeviceId, [u8; 32]>,
    me: DeviceId,
    /// Reload `heads` and the clock from storage before the next batch. Set
    /// when a batch starts and cleared when it ends without a conflict, so it
    /// stays set if the leader's future is dropped mid-batch (sequence
    /// numbers that may never have been written) and after a conflict on
    /// shared storage (another tab committed first).
    reload: bool,
}

pub(crate) struct Writer {
    queue: Mutex<Vec<(Request, Reply)>>,
    /// Callers queued and not yet answered or leading: maintenance gives
    /// way to them between its batches.
    waiting: std::sync::atomic::AtomicUsize,
    state: futures::lock::Mutex<WriterState>,
    delivery: futures::lock::Mutex<()>,
}

impl Writer {
    pub(crate) fn new(clock: HybridClock, heads: BTreeMap<DeviceId, u64>, me: DeviceId) -> Writer {
        Writer {
            queue: Mutex::new(Vec::new()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            state: futures::lock::Mutex::new(WriterState {
                clock,
                heads,
                tips: BTreeMap::new(),
                me,
                reload: false,
            }),
            delivery: futures::lock::Mutex::new(()),
        }
    }

    fn take_queue(&self) -> Vec<(Request, Reply)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues `request` and returns once it is durable (or failed).
    pub(crate) async fn submit(&self, store: &Store, request: Request) -> Result<Outcome> {
        let (reply, mut answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((request, reply));
        // Wait for the lock or for a leader to answer us, whichever comes
        // first: a writer already answered must not queue for the lock, or
        // the waiters form a convoy of one-write batches.
        let lock = self.state.lock();
        futures::pin_mut!(lock);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let first = futures::future::select(&mut answer, lock).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut state = match first {
            futures::future::Either::Left((outcome, _)) => {
                return outcome.map_err(|_| Error::Closed)?
            }
            futures::future::Either::Right((state, _)) => state,
        };
        let batch = self.take_queue();
        if !batch.is_empty() {
            if store.is_closed() {
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::Closed));
                }
            } else {
                let (requests, replies): (Vec<Request>, Vec<Reply>) = batch.into_iter().unzip();
                let (answers, changes) = run_with_retries(store, &mut state, requests).await;
                let mut replies: Vec<Option<Reply>> = replies.into_iter().map(Some).collect();
                for (slot, outcome) in answers {
                    if let Some(reply) = replies.get_mut(slot).and_then(Option::take) {
                        let _ = reply.send(outcome);
                    }
                }
                // Deliver in commit order, but without holding the writer lock,
                // so callbacks may start new writes.
                let _delivery = self.delivery.lock().await;
                drop(state);
                store.deliver(changes);
                store.notify_commits();
            }
        }
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Waits for the batch in flight and fails everything still queued.
    /// Runs `work` while no batch is being built or written: maintenance
    /// that rewrites stored rows (re-encryption) cannot race a write.
    pub(crate) async fn exclusive<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let _state = self.state.lock().await;
        work.await
    }

    /// As [`Writer::exclusive`], for work that replaces what storage holds
    /// (joining another store): the next batch reloads heads and clock.
    /// Rewrites the store from `commits` alone, in one durable batch:
    /// storage is cleared (log, rows, metadata entries: `meta` is written
    /// again) and every commit applied anew, as received ones are. What
    /// the store held and `commits` lack is gone. Any refusal leaves
    /// storage as it was.
    pub(crate) async fn rebuild(
        &self,
        store: &Store,
        commits: Vec<Commit>,
        meta: Vec<(crate::storage::MetaKey, Vec<u8>)>,
    ) -> Result<usize> {
        let mut state = self.state.lock().await;
        // Heads, tips and clock come from storage again at the next batch,
        // whatever happens here.
        state.reload = true;
        state.heads.clear();
        state.tips.clear();
        let mut batch = Batch {
            fresh: true,
            ..Batch::default()
        };
        batch.write.clear = true;
        batch.write.store_id = Some(store.bound().store_id);
        batch.write.meta = meta;
        let count = commits.len();
        let report = remote_commits(
            store,
            &mut state,
            &mut batch,
            commits.into_iter().enumerate().collect(),
        )
        .await?;
        if !report.rejected.is_empty() || report.applied != count {
            return Err(StorageError::Corrupt(format!(
                "the change log does not replay: {:?}",
                report.rejected.first()
            ))
            .into());
        }
        store_batch(store, &state, &mut batch).await?;
        Ok(count)
    }

    pub(crate) async fn exclusive_then_reload<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut state = self.state.lock().await;
        let out = work.await;
        state.reload = true;
        out
    }

    /// Lets callers waiting for the lock take it first (maintenance calls
    /// this between its batches). Bounded: a caller that cannot run yet
    /// does not hold maintenance back for long.
    pub(crate) async fn give_way(&self) {
        for _ in 0..64 {
            crate::platform::yield_now().await;
            if self.waiting.load(Ordering::SeqCst) == 0 {
                break;
            }
        }
    }

    pub(crate) async fn drain(&self) {
        let _state = self.state.lock().await;
        for (_, reply) in self.take_queue() {
            let _ = reply.send(Err(Error::Closed));
        }
    }
}

/// Everything one group commit accumulates, and reads through it: a read
/// sees the rows this batch already wrote, then what storage holds. The index
/// of written rows is built only when something reads, so a batch of local
/// last-write-wins writes never pays for it.
#[derive(Default)]
struct Batch {
    write: WriteBatch,
    changes: Vec<RecordChange>,
    subscribed: Vec<String>,
    commits: HashSet<(DeviceId, u64)>,
    read_records: HashMap<(String, String), Option<RecordRow>>,
    read_kv: HashMap<String, Option<KvRow>>,
    record_index: HashMap<(String, String), usize>,
    indexed_records: usize,
    kv_index: HashMap<String, usize>,
    indexed_kv: usize,
    /// The batch rewrites the store from nothing (`write.clear`): rows
    /// stored before it do not exist for it.
    fresh: bool,
}

impl Batch {
    async fn record(
        &mut self,
        store: &Store,
        collection: &str,
        id: &str,
    ) -> Result<Option<RecordRow>> {
        for (i, row) in self
            .write
            .records
            .iter()
            .enumerate()
            .skip(self.indexed_records)
        {
            self.record_index
                .insert((row.collection.clone(), row.id.clone()), i);
        }
        self.indexed_records = self.write.records.len();
        let key = (collection.to_owned(), id.to_owned());
        if let Some(&i) = self.record_index.get(&key) {
            return Ok(self.write.records.get(i).cloned());
        }
        if let Some(row) = self.read_records.get(&key) {
            return Ok(row.clone());
        }
        if self.fresh {
            return Ok(None);
        }
        let row = store.bound().backend.get_record(collection, id).await?;
        self.read_records.insert(key, row.clone());
        Ok(row)
    }

    async fn kv(&mut self, store: &Store, key: &str) -> Result<Option<KvRow>> {
        for (i, row) in self.write.kv.iter().enumerate().skip(self.indexed_kv) {
            self.kv_index.insert(row.key.clone(), i);
        }
        self.indexed_kv = self.write.kv.len();
        if let Some(&i) = self.kv_index.get(key) {
            return Ok(self.write.kv.get(i).cloned());
        }
        if let Some(row) = self.read_kv.get(key) {
            return Ok(row.clone());
        }
        if self.fresh {
            return Ok(None);
        }
        let row = store.bound().backend.get_kv(key).await?;
        self.read_kv.insert(key.to_owned(), row.clone());
        Ok(row)
    }

    fn notify(&mut self, row: &RecordRow, origin: Origin) {
        if self.subscribed.contains(&row.collection) {
            self.changes.push(RecordChange::from_row(row, origin));
        }
    }
}

/// How many times a batch is rebuilt after another writer of shared storage
/// (another tab) committed first.
const MAX_CONFLICT_RETRIES: usize = 8;

type Answers = Vec<(usize, Result<Outcome>)>;

/// Runs a batch, rebuilding it with fresh state when shared storage reports
/// that another writer got there first.
async fn run_with_retries(
    store: &Store,
    state: &mut WriterState,
    requests: Vec<Request>,
) -> (Answers, Vec<RecordChange>) {
    let count = requests.len();
    if !store.bound().backend.shared() {
        return match run_batch(store, state, requests).await {
            BatchEnd::Done(answers, changes) => (answers, changes),
            BatchEnd::Conflict(e) => (fail_all(0..count, &e), Vec::new()),
        };
    }
    let mut last = None;
    for _ in 0..MAX_CONFLICT_RETRIES {
        match run_batch(store, state, requests.clone()).await {
            BatchEnd::Done(answers, changes) => return (answers, changes),
            BatchEnd::Conflict(e) => {
                tracing::debug!("another writer committed first; rebuilding the batch");
                last = Some(e);
            }
        }
    }
    let e =
        last.unwrap_or_else(|| Error::Storage(StorageError::Conflict("retries exhausted".into())));
    (fail_all(0..count, &e), Vec::new())
}

fn fail_all(slots: std::ops::Range<usize>, e: &Error) -> Answers {
    slots.map(|slot| (slot, Err(e.clone()))).collect()
}

enum BatchEnd {
    Done(Answers, Vec<RecordChange>),
    /// Nothing was written: shared storage had commits this state did not know.
    Conflict(Error),
}

async fn run_batch(store: &Store, state: &mut WriterState, requests: Vec<Request>) -> BatchEnd {
    let count = requests.len();
    if let Err(e) = prepare(store, state).await {
        return BatchEnd::Done(fail_all(0..count, &e), Vec::new());
    }
    state.reload = true;
    let heads_before = state.heads.clone();
    let tips_before = state.tips.clone();
    let mut batch = Batch {
        subscribed: store.subscribed_collections(),
        ..Batch::default()
    };
    let mut answers: Answers = Vec::with_capacity(count);
    let mut group = LocalGroup::default();
    let mut fatal: Option<Error> = None;
    for (reply, request) in requests.into_iter().enumerate() {
        if fatal.is_some() {
            answers.push((reply, Err(Error::Closed)));
            continue;
        }
        let step = match request {
            Request::Local(intents) => {
                group
                    .add(store, state, &mut batch, &mut answers, intents, reply)
                    .await
            }
            Request::Remote(commits) => {
                // Received commits apply after the local writes queued before them.
                match group.flush(store, state, &mut batch, &mut answers).await {
                    Ok(()) => match remote_commits(store, state, &mut batch, commits).await {
                        Ok(report) => {
                            answers.push((reply, Ok(Outcome::Remote(report))));
                            Ok(())
                        }
                        Err(e) => {
                            answers.push((reply, Err(e.clone())));
                            Err(e)
                        }
                    },
                    Err(e) => {
                        answers.push((reply, Err(e.clone())));
                        Err(e)
                    }
                }
            }
        };
        if let Err(e) = step {
            fatal = Some(e);
        }
    }
    if fatal.is_none() {
        if let Err(e) = group.flush(store, state, &mut batch, &mut answers).await {
            fatal = Some(e);
        }
    }
    let result = match fatal {
        Some(e) => Err(e),
        None if batch.write.log.is_empty() => Ok(()),
        None => store_batch(store, state, &mut batch).await,
    };
    let conflict = matches!(result, Err(Error::Storage(StorageError::Conflict(_))));
    state.reload = conflict;
    match result {
        Ok(()) => BatchEnd::Done(answers, batch.changes),
        Err(e) => {
            // Nothing was stored: sequence numbers are not consumed.
            state.heads = heads_before;
            state.tips = tips_before;
            if conflict {
                return BatchEnd::Conflict(e);
            }
            tracing::warn!(code = e.code(), error = %e, "group commit failed");
            let answers = answers
                .into_iter()
                .map(|(slot, outcome)| (slot, outcome.and(Err(e.clone()))))
                .collect();
            BatchEnd::Done(answers, Vec::new())
        }
    }
}

/// Writes the batch durably, with the clock it reached.
async fn store_batch(store: &Store, state: &WriterState, batch: &mut Batch) -> Result<()> {
    batch.write.clock = Some(state.clock.last());
    store
        .bound()
        .backend
        .write(std::mem::take(&mut batch.write))
        .await
        .map_err(Error::from)
}

/// Reloads what a cancelled batch, or another writer of shared storage
/// (after a conflict), may have changed.
async fn prepare(store: &Store, state: &mut WriterState) -> Result<()> {
    let backend = &store.bound().backend;
    if state.reload {
        let meta = backend.load_meta().await?;
        state.heads = meta.heads.into_iter().collect();
        state.tips.clear();
        state.clock.observe(meta.clock);
        state.reload = false;
    }
    Ok(())
}

/// The hash of `author`'s last commit held (zeros before its first): what
/// its next commit names as `prev`.
async fn tip(store: &Store, state: &mut WriterState, author: DeviceId) -> Result<[u8; 32]> {
    let head = state.heads.get(&author).copied().unwrap_or(0);
    if head == 0 {
        return Ok([0; 32]);
    }
    if let Some(hash) = state.tips.get(&author) {
        return Ok(*hash);
    }
    let stored = store
        .bound()
        .backend
        .get_commit(author, head)
        .await?
        .ok_or_else(|| {
            StorageError::Corrupt(format!(
                "the change log lacks commit {head} of {}",
                author.short()
            ))
        })?;
    let hash = stored.hash();
    state.tips.insert(author, hash);
    Ok(hash)
}

/// Local writes queued together become one commit: one signature and one
/// change-log entry for the whole group (each write or transaction stays
/// atomic, inside a larger atomic unit). Operations are stamped as they are
/// lowered, so a write that reads (merge-fields, custom resolvers) sees the
/// writes queued before it; last-write-wins writes, which never read, are
/// materialized after signing by moving their strings into rows.
#[derive(Default)]
struct LocalGroup {
    first: Option<Hlc>,
    ops: Vec<Op>,
    /// Whether `ops[i]` was already materialized when it was lowered.
    applied: Vec<bool>,
    requests: Vec<(usize, std::ops::Range<usize>)>,
    bytes: usize,
}

/// An upper bound of the encoded size of one operation.
fn op_size_bound(store: &Store, intent: &Intent) -> usize {
    // Tags, length prefixes and a base stamp take under 64 bytes.
    let overhead = 64;
    match intent {
        Intent::Put {
            collection,
            id,
            text,
        } => {
            let fields_removed = match store.strategy_for(collection) {
                // A patch lists the removed fields of the previous version,
                // which is at most one value long.
                ConflictStrategy::MergeFields => store.inner.limits.max_value_bytes,
                _ => 0,
            };
            collection.len() + id.len() + text.len() + fields_removed + overhead
        }
        Intent::Delete { collection, id } => collection.len() + id.len() + overhead,
        Intent::Append { log, text } => log.len() + text.len() + overhead,
        Intent::Set { key, text } => key.len() + text.len() + overhead,
        Intent::Unset { key } => key.len() + overhead,
    }
}

impl LocalGroup {
    async fn add(
        &mut self,
        store: &Store,
        state: &mut WriterState,
        batch: &mut Batch,
        answers: &mut Answers,
        intents: Vec<Intent>,
        reply: usize,
    ) -> Result<()> {
        let limits = &store.inner.limits;
        let bytes: usize = intents.iter().map(|i| op_size_bound(store, i)).sum();
        if bytes + 256 > limits.max_commit_bytes {
            let size = bytes;
            answers.push((
                reply,
                Err(Error::ValueTooLarge {
                    size,
                    limit: limits.max_commit_bytes,
                }),
            ));
            return Ok(());
        }
        if !self.ops.is_empty()
            && (self.bytes + bytes + 256 > limits.max_commit_bytes
                || self.ops.len() + intents.len() > limits.max_commit_ops)
        {
            self.flush(store, state, batch, answers).await?;
        }
        let n = intents.len() as u64;
        let first = match self.first {
            // Later writes of the group continue its stamps without a gap.
            Some(_) => state.clock.tick(0, n),
            None => {
                let first = state.clock.tick((store.inner.wall_clock)(), n);
                self.first = Some(first);
                first
            }
        };
        let start = self.ops.len();
        if let Err(e) = self.lower_all(store, state, batch, first, intents).await {
            answers.push((reply, Err(e.clone())));
            return Err(e);
        }
        self.bytes += bytes;
        self.requests.push((reply, start..self.ops.len()));
        Ok(())
    }

    /// Lowers and stamps one request's writes, materializing at once those
    /// that read (so later writes of the group see them).
    async fn lower_all(
        &mut self,
        store: &Store,
        state: &WriterState,
        batch: &mut Batch,
        first: Hlc,
        intents: Vec<Intent>,
    ) -> Result<()> {
        for (i, intent) in intents.into_iter().enumerate() {
            let stamp = Stamp {
                hlc: first.plus(i as u64),
                author: state.me,
            };
            // Values were checked before queueing, so only storage can fail
            // here, and that fails the whole batch (nothing is written).
            let op = lower(store, batch, intent).await?;
            let reads = op_record(&op).is_some_and(|(c, _)| store.strategy_for(c).reads_stored());
            if reads {
                apply_op(
                    store,
                    batch,
                    op.clone(),
                    stamp,
                    Origin::Local,
                    &mut Vec::new(),
                )
                .await?;
            }
            self.ops.push(op);
            self.applied.push(reads);
        }
        Ok(())
    }

    /// Signs the group as one commit and materializes what is left.
    async fn flush(
        &mut self,
        store: &Store,
        state: &mut WriterState,
        batch: &mut Batch,
        answers: &mut Answers,
    ) -> Result<()> {
        let Some(hlc) = self.first.take() else {
            return Ok(());
        };
        let ops = std::mem::take(&mut self.ops);
        let applied = std::mem::take(&mut self.applied);
        let requests = std::mem::take(&mut self.requests);
        self.bytes = 0;
        let seq = state.heads.get(&state.me).copied().unwrap_or(0) + 1;
        let prev = tip(store, state, state.me).await?;
        let body = CommitBody {
            format: COMMIT_FORMAT,
            store: store.bound().store_id,
            author: state.me,
            seq,
            prev,
            hlc,
            ops,
        };
        let mut sealer = match &store.bound().sealed {
            Some(sealed) => Some(sealed.commit_sealer()?),
            None => None,
        };
        let commit = Commit::sign(body, &store.inner.device, sealer.as_mut())?;
        let size = commit.signed.body.len();
        if size > store.inner.limits.max_commit_bytes {
            // The size bound above makes this unreachable; refuse rather than store it.
            return Err(Error::ValueTooLarge {
                size,
                limit: store.inner.limits.max_commit_bytes,
            });
        }
        state.heads.insert(state.me, seq);
        state.tips.insert(state.me, commit.hash);
        let last_hlc = hlc.plus(commit.body.ops.len().saturating_sub(1) as u64);
        batch.commits.insert((state.me, seq));
        batch.write.log.push(LogEntry {
            author: state.me,
            seq,
            last_hlc,
            commit: commit.signed,
        });
        let mut events = Vec::new();
        for (index, (op, done)) in commit.body.ops.into_iter().zip(applied).enumerate() {
            if !done {
                let stamp = Stamp {
                    hlc: hlc.plus(index as u64),
                    author: state.me,
                };
                apply_op(store, batch, op, stamp, Origin::Local, &mut events).await?;
            }
        }
        for (reply, range) in requests {
            let mine = events
                .iter()
                .filter(|(at, _)| {
                    range.contains(&(at.as_u64().saturating_sub(hlc.as_u64()) as usize))
                })
                .map(|(_, e)| e.clone())
                .collect();
            let receipt = WriteReceipt {
                seq,
                hlc: hlc.plus(range.start as u64),
                events: mine,
            };
            answers.push((reply, Ok(Outcome::Local(receipt))));
        }
        Ok(())
    }
}

async fn lower(store: &Store, batch: &mut Batch, intent: Intent) -> Result<Op> {
    Ok(match intent {
        Intent::Put {
            collection,
            id,
            text,
        } => match store.strategy_for(&collection) {
            ConflictStrategy::LastWriteWins => Op::RecordPut {
                collection,
                id,
                value: text,
                base: None,
            },
            ConflictStrategy::MergeFields => {
                let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&text) else {
                    return Err(Error::InvalidValue(format!(
                        "collection {collection:?} merges fields, so its records must be JSON objects"
                    )));
                };
                let current = batch.record(store, &collection, &id).await?;
                let visible: Option<Value> = current
                    .and_then(|row| row.value)
                    .map(|text| serde_json::from_str(&text))
                    .transpose()
                    .map_err(|e| {
                        StorageError::Corrupt(format!(
                            "the stored value of {collection}/{id} is not JSON: {e}"
                        ))
                    })?;
                let (set, unset) = merge::field_diff(visible.as_ref(), &fields);
                Op::RecordPatch {
                    collection,
                    id,
                    set,
                    unset,
                }
            }
            ConflictStrategy::Custom(_) => {
                let base = batch
                    .record(store, &collection, &id)
                    .await?
                    .map(|row| row.stamp);
                Op::RecordPut {
                    collection,
                    id,
                    value: text,
                    base,
                }
            }
        },
        Intent::Delete { collection, id } => {
            let base = match store.strategy_for(&collection) {
                ConflictStrategy::Custom(_) => batch
                    .record(store, &collection, &id)
                    .await?
                    .map(|r| r.stamp),
                _ => None,
            };
            Op::RecordDelete {
                collection,
                id,
                base,
            }
        }
        Intent::Append { log, text } => Op::EventAppend { log, value: text },
        Intent::Set { key, text } => Op::KvSet { key, value: text },
        Intent::Unset { key } => Op::KvDelete { key },
    })
}

async fn remote_commits(
    store: &Store,
    state: &mut WriterState,
    batch: &mut Batch,
    commits: Vec<(usize, Commit)>,
) -> Result<IngestReport> {
    let mut report = IngestReport::default();
    for (index, commit) in commits {
        let (author, seq) = (commit.body.author, commit.body.seq);
        let held = if batch.commits.contains(&(author, seq)) {
            batch
                .write
                .log
                .iter()
                .find(|e| e.author == author && e.seq == seq)
                .map(|e| e.commit.clone())
        } else if seq <= state.heads.get(&author).copied().unwrap_or(0) {
            store.bound().backend.get_commit(author, seq).await?
        } else {
            None
        };
        if let Some(held) = held {
            if held.hash() == commit.hash {
                report.duplicates += 1;
            } else {
                report.rejected.push((index, RejectReason::Equivocation));
                report.forks.push((held, commit.signed));
            }
            continue;
        }
        let head = state.heads.get(&author).copied().unwrap_or(0);
        if seq != head + 1 {
            report.rejected.push((
                index,
                RejectReason::Gap {
                    expected: head + 1,
                    found: seq,
                },
            ));
            continue;
        }
        if commit.body.prev != tip(store, state, author).await? {
            // The author signed this on top of another commit `seq - 1`
            // than the one held: two different commits under one number.
            report.rejected.push((index, RejectReason::Equivocation));
            continue;
        }
        let last = commit
            .body
            .hlc
            .plus(commit.body.ops.len().saturating_sub(1) as u64);
        state.clock.observe(last);
        state.heads.insert(author, seq);
        state.tips.insert(author, commit.hash);
        batch.commits.insert((author, seq));
        batch.write.log.push(LogEntry {
            author,
            seq,
            last_hlc: last,
            commit: commit.signed,
        });
        let (first, ops) = (commit.body.hlc, commit.body.ops);
        for (index, op) in ops.into_iter().enumerate() {
            let stamp = Stamp {
                hlc: first.plus(index as u64),
                author,
            };
            apply_op(store, batch, op, stamp, Origin::Remote, &mut Vec::new()).await?;
        }
        report.applied += 1;
    }
    Ok(report)
}

/// The id of the event written by `stamp`: sorts by clock, then author.
pub(crate) fn event_id(hlc: Hlc, author: &DeviceId) -> String {
    format!("{:016x}-{}", hlc.as_u64(), author.short())
}

/// Applies one operation stamped `stamp` to the batch's state. The op is
/// taken by value: its strings move into the row. Appended events are
/// reported in `events` with their stamp.
async fn apply_op(
    store: &Store,
    batch: &mut Batch,
    op: Op,
    stamp: Stamp,
    origin: Origin,
    events: &mut Vec<(Hlc, AppendedEvent)>,
) -> Result<()> {
    match op {
        Op::RecordPut { .. } | Op::RecordPatch { .. } | Op::RecordDelete { .. } => {
            let strategy = store.strategy_for(op_key(&op).0);
            // A local last-write-wins write always wins: its stamp is newer
            // than anything this replica has seen, so nothing is read.
            let fast = origin == Origin::Local && !strategy.reads_stored();
            let row = match op {
                Op::RecordPut {
                    collection,
                    id,
                    value,
                    ..
                } if fast => Some(RecordRow {
                    collection,
                    id,
                    value: Some(value),
                    stamp,
                    fields: None,
                }),
                Op::RecordDelete { collection, id, .. } if fast => Some(RecordRow {
                    collection,
                    id,
                    value: None,
                    stamp,
                    fields: None,
                }),
                op => {
                    let (collection, id) = op_key(&op);
                    let current = batch.record(store, collection, id).await?;
                    merge::apply_record_op(strategy, current.as_ref(), &op, stamp)
                        .map_err(|e| StorageError::Corrupt(e.0))?
                }
            };
            if let Some(row) = row {
                batch.notify(&row, origin);
                batch.write.records.push(row);
            }
        }
        Op::EventAppend { log, value } => {
            let id = event_id(stamp.hlc, &stamp.author);
            let at = stamp.hlc.millis();
            events.push((stamp.hlc, AppendedEvent { id: id.clone(), at }));
            batch.write.events.push(EventRow {
                log,
                id,
                at,
                author: stamp.author,
                value,
            });
        }
        Op::KvSet { .. } | Op::KvDelete { .. } => {
            let current = match (&origin, &op) {
                (Origin::Remote, Op::KvSet { key, .. } | Op::KvDelete { key }) => {
                    batch.kv(store, key).await?
                }
                _ => None,
            };
            if let Some(row) = merge::apply_kv_op(current.as_ref(), &op, stamp) {
                batch.write.kv.push(row);
            }
        }
    }
    Ok(())
}

/// `(collection, id)` of a record operation.
fn op_record(op: &Op) -> Option<(&str, &str)> {
    match op {
        Op::RecordPut { collection, id, .. }
        | Op::RecordPatch { collection, id, .. }
        | Op::RecordDelete { collection, id, .. } => Some((collection, id)),
        _ => None,
    }
}

/// `(collection, id)` of an operation the caller knows is a record's.
fn op_key(op: &Op) -> (&str, &str) {
    op_record(op).unwrap_or(("", ""))
}
