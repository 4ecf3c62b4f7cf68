//! The single writer: group commit of local writes and received commits.
//!
//! Every mutation goes through [`Writer::submit`]. A caller queues its
//! request, then waits for the writer lock; whoever gets the lock takes the
//! whole queue and turns it into one [`WriteBatch`]: each local request
//! becomes one signed commit, each received commit is deduplicated and
//! checked for order, every operation is materialized through the conflict
//! strategy, and the batch is written with one durable transaction. Then
//! every request in it is answered. With 64 concurrent writers this costs one
//! fsync instead of 64, and no write is acknowledged before it is durable.
//!
//! No task is spawned: the caller that holds the lock does the work, so the
//! same code runs on tokio, on a thread and on the browser's event loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures::channel::oneshot;
use serde_json::Value;

use super::handles::AppendedEvent;
use super::subscribe::{Origin, RecordChange};
use super::Store;
use crate::change::{Commit, CommitBody, Op, COMMIT_FORMAT};
use crate::error::{Error, RejectReason, Result};
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
        value: Value,
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
}

impl IngestReport {
    pub(crate) fn merge(mut self, other: IngestReport) -> IngestReport {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.rejected.extend(other.rejected);
        self.rejected.sort_by_key(|(i, _)| *i);
        self
    }
}

type Reply = oneshot::Sender<Result<Outcome>>;

struct WriterState {
    clock: HybridClock,
    heads: BTreeMap<DeviceId, u64>,
    me: DeviceId,
}

pub(crate) struct Writer {
    queue: Mutex<Vec<(Request, Reply)>>,
    state: futures::lock::Mutex<WriterState>,
    delivery: futures::lock::Mutex<()>,
}

impl Writer {
    pub(crate) fn new(clock: HybridClock, heads: BTreeMap<DeviceId, u64>, me: DeviceId) -> Writer {
        Writer {
            queue: Mutex::new(Vec::new()),
            state: futures::lock::Mutex::new(WriterState { clock, heads, me }),
            delivery: futures::lock::Mutex::new(()),
        }
    }

    fn take_queue(&self) -> Vec<(Request, Reply)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues `request` and returns once it is durable (or failed).
    pub(crate) async fn submit(&self, store: &Store, request: Request) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((request, reply));
        let mut state = self.state.lock().await;
        let batch = self.take_queue();
        if !batch.is_empty() {
            if store.is_closed() {
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::Closed));
                }
            } else {
                let changes = run_batch(store, &mut state, batch).await;
                // Deliver in commit order, but without holding the writer lock,
                // so callbacks may start new writes.
                let _delivery = self.delivery.lock().await;
                drop(state);
                store.deliver(changes);
            }
        }
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Waits for the batch in flight and fails everything still queued.
    pub(crate) async fn drain(&self) {
        let _state = self.state.lock().await;
        for (_, reply) in self.take_queue() {
            let _ = reply.send(Err(Error::Closed));
        }
    }
}

/// Reads through the rows already written by this batch.
#[derive(Default)]
struct Overlay {
    records: HashMap<(String, String), Option<RecordRow>>,
    kv: HashMap<String, Option<KvRow>>,
    commits: HashSet<(DeviceId, u64)>,
}

impl Overlay {
    async fn record(
        &mut self,
        store: &Store,
        collection: &str,
        id: &str,
    ) -> Result<Option<RecordRow>> {
        let key = (collection.to_owned(), id.to_owned());
        if let Some(row) = self.records.get(&key) {
            return Ok(row.clone());
        }
        let row = store.inner.backend.get_record(collection, id).await?;
        self.records.insert(key, row.clone());
        Ok(row)
    }

    async fn kv(&mut self, store: &Store, key: &str) -> Result<Option<KvRow>> {
        if let Some(row) = self.kv.get(key) {
            return Ok(row.clone());
        }
        let row = store.inner.backend.get_kv(key).await?;
        self.kv.insert(key.to_owned(), row.clone());
        Ok(row)
    }
}

/// Everything one group commit accumulates.
struct Batch {
    write: WriteBatch,
    overlay: Overlay,
    changes: Vec<RecordChange>,
}

async fn run_batch(
    store: &Store,
    state: &mut WriterState,
    requests: Vec<(Request, Reply)>,
) -> Vec<RecordChange> {
    let heads_before = state.heads.clone();
    let mut batch = Batch {
        write: WriteBatch::default(),
        overlay: Overlay::default(),
        changes: Vec::new(),
    };
    let mut answers: Vec<(Reply, Result<Outcome>)> = Vec::with_capacity(requests.len());
    let mut fatal: Option<Error> = None;
    for (request, reply) in requests {
        if fatal.is_some() {
            answers.push((reply, Err(Error::Closed)));
            continue;
        }
        let outcome = match request {
            Request::Local(intents) => local_commit(store, state, &mut batch, intents)
                .await
                .map(Outcome::Local),
            Request::Remote(commits) => remote_commits(store, state, &mut batch, commits)
                .await
                .map(Outcome::Remote),
        };
        match outcome {
            Ok(outcome) => answers.push((reply, Ok(outcome))),
            Err(Failure::Request(e)) => answers.push((reply, Err(e))),
            Err(Failure::Batch(e)) => {
                answers.push((reply, Err(e.clone())));
                fatal = Some(e);
            }
        }
    }
    let result = match fatal {
        Some(e) => Err(e),
        None if batch.write.log.is_empty() => Ok(()),
        None => {
            batch.write.clock = Some(state.clock.last());
            store
                .inner
                .backend
                .write(std::mem::take(&mut batch.write))
                .await
                .map_err(Error::from)
        }
    };
    match result {
        Ok(()) => {
            for (reply, outcome) in answers {
                let _ = reply.send(outcome);
            }
            batch.changes
        }
        Err(e) => {
            // Nothing was stored: sequence numbers are not consumed.
            state.heads = heads_before;
            tracing::warn!(code = e.code(), error = %e, "group commit failed");
            for (reply, outcome) in answers {
                let _ = reply.send(outcome.and(Err(e.clone())));
            }
            Vec::new()
        }
    }
}

/// Whether a failure concerns one request or the whole batch.
enum Failure {
    Request(Error),
    Batch(Error),
}

async fn lower(store: &Store, batch: &mut Batch, intent: Intent) -> Result<Op> {
    Ok(match intent {
        Intent::Put {
            collection,
            id,
            value,
            text,
        } => match store.strategy_for(&collection) {
            ConflictStrategy::LastWriteWins => Op::RecordPut {
                collection,
                id,
                value: text,
                base: None,
            },
            ConflictStrategy::MergeFields => {
                let Value::Object(fields) = value else {
                    return Err(Error::InvalidValue(format!(
                        "collection {collection:?} merges fields, so its records must be JSON objects"
                    )));
                };
                let current = batch.overlay.record(store, &collection, &id).await?;
                let visible: Option<Value> = current
                    .and_then(|row| row.value)
                    .and_then(|text| serde_json::from_str(&text).ok());
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
                    .overlay
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
                    .overlay
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

async fn local_commit(
    store: &Store,
    state: &mut WriterState,
    batch: &mut Batch,
    intents: Vec<Intent>,
) -> Result<WriteReceipt, Failure> {
    let mut ops = Vec::with_capacity(intents.len());
    for intent in intents {
        ops.push(
            lower(store, batch, intent)
                .await
                .map_err(Failure::Request)?,
        );
    }
    let now = (store.inner.wall_clock)();
    let hlc = state.clock.tick(now, ops.len() as u64);
    let seq = state.heads.get(&state.me).copied().unwrap_or(0) + 1;
    let body = CommitBody {
        format: COMMIT_FORMAT,
        store: store.inner.store_id,
        author: state.me,
        seq,
        hlc,
        ops,
    };
    let commit = Commit::sign(body, &store.inner.device).map_err(Failure::Request)?;
    let limit = store.inner.limits.max_commit_bytes;
    if commit.signed.body.len() > limit {
        return Err(Failure::Request(Error::ValueTooLarge {
            size: commit.signed.body.len(),
            limit,
        }));
    }
    state.heads.insert(state.me, seq);
    let events = materialize(store, batch, &commit.body, Origin::Local)
        .await
        .map_err(Failure::Batch)?;
    batch.overlay.commits.insert((state.me, seq));
    batch.write.log.push(LogEntry {
        author: state.me,
        seq,
        hlc,
        commit: commit.signed,
    });
    Ok(WriteReceipt { seq, hlc, events })
}

async fn remote_commits(
    store: &Store,
    state: &mut WriterState,
    batch: &mut Batch,
    commits: Vec<(usize, Commit)>,
) -> Result<IngestReport, Failure> {
    let mut report = IngestReport::default();
    for (index, commit) in commits {
        let (author, seq) = (commit.body.author, commit.body.seq);
        if batch.overlay.commits.contains(&(author, seq)) {
            report.duplicates += 1;
            continue;
        }
        let head = state.heads.get(&author).copied().unwrap_or(0);
        if seq <= head {
            match store
                .inner
                .backend
                .get_commit(author, seq)
                .await
                .map_err(|e| Failure::Batch(e.into()))?
            {
                Some(stored) if stored == commit.signed => report.duplicates += 1,
                _ => report.rejected.push((index, RejectReason::Equivocation)),
            }
            continue;
        }
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
        let last = commit
            .body
            .hlc
            .plus(commit.body.ops.len().saturating_sub(1) as u64);
        state.clock.observe(last);
        state.heads.insert(author, seq);
        materialize(store, batch, &commit.body, Origin::Remote)
            .await
            .map_err(Failure::Batch)?;
        batch.overlay.commits.insert((author, seq));
        batch.write.log.push(LogEntry {
            author,
            seq,
            hlc: commit.body.hlc,
            commit: commit.signed,
        });
        report.applied += 1;
    }
    Ok(report)
}

/// The id of the event written by `stamp`: sorts by clock, then author.
pub(crate) fn event_id(hlc: Hlc, author: &DeviceId) -> String {
    format!("{:016x}-{}", hlc.as_u64(), author.short())
}

async fn materialize(
    store: &Store,
    batch: &mut Batch,
    body: &CommitBody,
    origin: Origin,
) -> Result<Vec<AppendedEvent>> {
    let mut events = Vec::new();
    for (index, op) in body.ops.iter().enumerate() {
        let stamp = body.stamp(index);
        match op {
            Op::RecordPut { collection, id, .. }
            | Op::RecordPatch { collection, id, .. }
            | Op::RecordDelete { collection, id, .. } => {
                let strategy = store.strategy_for(collection);
                // A local last-write-wins write always wins: its stamp is newer
                // than anything this replica has seen, so no read is needed.
                let current = match (origin, strategy) {
                    (Origin::Local, ConflictStrategy::LastWriteWins) => None,
                    _ => batch.overlay.record(store, collection, id).await?,
                };
                let merged = merge::apply_record_op(strategy, current.as_ref(), op, stamp)
                    .map_err(|e| crate::error::StorageError::Corrupt(e.0))?;
                if let Some(row) = merged {
                    if store.has_subscribers(collection) {
                        batch.changes.push(RecordChange {
                            collection: row.collection.clone(),
                            id: row.id.clone(),
                            value: row
                                .value
                                .as_deref()
                                .and_then(|t| serde_json::from_str(t).ok()),
                            stamp: row.stamp,
                            origin,
                        });
                    }
                    batch
                        .overlay
                        .records
                        .insert((row.collection.clone(), row.id.clone()), Some(row.clone()));
                    batch.write.records.push(row);
                }
            }
            Op::EventAppend { log, value } => {
                let id = event_id(stamp.hlc, &stamp.author);
                let at = stamp.hlc.millis();
                events.push(AppendedEvent { id: id.clone(), at });
                batch.write.events.push(EventRow {
                    log: log.clone(),
                    id,
                    at,
                    author: stamp.author,
                    value: value.clone(),
                });
            }
            Op::KvSet { key, .. } | Op::KvDelete { key } => {
                let current = match origin {
                    Origin::Local => None,
                    Origin::Remote => batch.overlay.kv(store, key).await?,
                };
                if let Some(row) = merge::apply_kv_op(current.as_ref(), op, stamp) {
                    batch.overlay.kv.insert(key.clone(), Some(row.clone()));
                    batch.write.kv.push(row);
                }
            }
        }
    }
    Ok(events)
}
