//! The storage contract every backend implements, and the rows it stores.
//!
//! One object-safe async trait, [`StorageBackend`], grouped by concern:
//! store metadata, the change log, and the materialized state (records,
//! events, keys). Writes arrive as one [`WriteBatch`] per group commit, which
//! the backend must apply atomically and durably before its future resolves:
//! a resolved `write` is an acknowledged write.
//!
//! Backends: [`MemoryStore`] here (tests, ephemeral stores), `SqliteStore`
//! natively and `IdbStore` in the browser (in `platform/`). All of them pass
//! the same conformance suite (`storage::conformance`, with the
//! `test-utils` feature).

use std::collections::BTreeMap;

use crate::change::{SignedCommit, StoreId};
use crate::error::StorageError;
use crate::hlc::Hlc;
use crate::identity::DeviceId;
use crate::platform::{BoxFuture, BoxStream, MaybeSend, MaybeSync};

pub use crate::merge::{KvRow, RecordRow};

mod memory;
pub use memory::MemoryStore;

mod sealed;
#[cfg(feature = "test-utils")]
pub use sealed::fuzz_row_decoder;
pub use sealed::SealedStorage;

#[cfg(any(test, feature = "test-utils"))]
pub mod conformance;

/// Result alias for backends.
pub type StorageResult<T> = Result<T, StorageError>;

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Log name.
    pub log: String,
    /// Event id: sorts in log order (hybrid logical clock, then author).
    pub id: String,
    /// Wall-clock milliseconds of the write.
    pub at: u64,
    /// Author device.
    pub author: DeviceId,
    /// JSON text of the event.
    pub value: String,
}

/// One commit appended to the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Author device.
    pub author: DeviceId,
    /// Per-author sequence number.
    pub seq: u64,
    /// Stamp of its last operation (the newest stamp it carries).
    pub last_hlc: Hlc,
    /// The signed commit.
    pub commit: SignedCommit,
}

/// Named entries of store metadata that the core keeps in storage (values
/// are opaque bytes, sealed by their owner when secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MetaKey {
    /// The store's keyring (every epoch), sealed under its current data key:
    /// what a device holding only the exported current key needs to read a
    /// copy of the store.
    SealedKeyring,
    /// Where an interrupted key rotation resumes (its epoch and the last
    /// row re-encrypted), written with every batch it re-encrypts.
    Rotation,
    /// The store's membership log (founder and signed entries; public
    /// keys only, no secret).
    Membership,
}

impl MetaKey {
    /// Every key, for backends that read them all at once.
    pub const ALL: [MetaKey; 3] = [
        MetaKey::SealedKeyring,
        MetaKey::Rotation,
        MetaKey::Membership,
    ];

    /// The key as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaKey::SealedKeyring => "sealed_keyring",
            MetaKey::Rotation => "rotation",
            MetaKey::Membership => "membership",
        }
    }
}

/// Which table [`StorageBackend::scan`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Records, by `(collection, id)`, tombstones included.
    Records,
    /// Events, by `(log, id)`.
    Events,
    /// Keys, by key (the first part of the position is empty), tombstones included.
    Kv,
}

/// A stored row of any table, as [`StorageBackend::scan`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRow {
    /// A record row.
    Record(RecordRow),
    /// An event row.
    Event(EventRow),
    /// A key row.
    Kv(KvRow),
}

impl AnyRow {
    /// The row's position in its table's order (the cursor of the next scan).
    pub fn position(&self) -> (String, String) {
        match self {
            AnyRow::Record(r) => (r.collection.clone(), r.id.clone()),
            AnyRow::Event(e) => (e.log.clone(), e.id.clone()),
            AnyRow::Kv(k) => (String::new(), k.key.clone()),
        }
    }
}

/// One page of [`StorageBackend::scan`]: rows in the backend's stored order
/// and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The rows.
    pub rows: Vec<AnyRow>,
    /// The cursor after the last row (opaque to callers; `None` when the
    /// page is empty).
    pub last: Option<(String, String)>,
}

impl ScanPage {
    /// A page whose cursor is the last row's position (backends that store
    /// rows in name order).
    pub fn by_position(rows: Vec<AnyRow>) -> ScanPage {
        let last = rows.last().map(AnyRow::position);
        ScanPage { rows, last }
    }
}

/// Everything one group commit changes, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Set the store id (only on creation). If storage already holds a
    /// different one (another tab created the store first), the write fails
    /// with [`StorageError::Conflict`] and changes nothing.
    pub store_id: Option<StoreId>,
    /// Replace a stored store id with `store_id` instead of refusing it: a
    /// device that pairs into another device's store before writing
    /// anything adopts that store's id.
    pub adopt_store_id: bool,
    /// Remove every change-log entry, row and [`MetaKey`] entry first (the
    /// store id stays unless `store_id` replaces it): a device that joins
    /// another store by pairing starts over under that store's id.
    pub clear: bool,
    /// The newest clock reading to persist (backends that derive the clock
    /// from the change log may ignore it).
    pub clock: Option<Hlc>,
    /// Commits to append to the change log.
    pub log: Vec<LogEntry>,
    /// Record rows to insert or replace (tombstones included).
    pub records: Vec<RecordRow>,
    /// Events to insert (an existing id is left as it is).
    pub events: Vec<EventRow>,
    /// Key rows to insert or replace (tombstones included).
    pub kv: Vec<KvRow>,
    /// Metadata entries to set (replacing what is stored).
    pub meta: Vec<(MetaKey, Vec<u8>)>,
    /// The record keys (`collection`, `id`) to announce to other writers
    /// of shared storage, when they differ from the rows' keys (an
    /// encrypting layer stores hashed keys but announces the names).
    pub announce: Option<Vec<(String, String)>>,
    /// Replace stored events that have the same id instead of keeping them
    /// (re-encryption of stored rows under a new key; never for new events).
    pub replace_events: bool,
}

impl WriteBatch {
    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.store_id.is_none()
            && !self.clear
            && self.clock.is_none()
            && self.log.is_empty()
            && self.records.is_empty()
            && self.events.is_empty()
            && self.kv.is_empty()
            && self.meta.is_empty()
    }
}

/// What a writer needs to start: read in one go when a store opens (and
/// after a conflict on shared storage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMeta {
    /// The store id, once created.
    pub store_id: Option<StoreId>,
    /// The newest clock reading persisted: at least every stamp in the log.
    pub clock: Hlc,
    /// The version vector (as [`StorageBackend::version_vector`]).
    pub heads: Vec<(DeviceId, u64)>,
    /// The metadata entries stored.
    pub entries: BTreeMap<MetaKey, Vec<u8>>,
}

/// Which live records to list, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Only ids strictly after this (a cursor: the last id of the previous page).
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// Which events to list, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events whose id is strictly greater.
    pub after: Option<String>,
    /// Only events whose id is greater or equal.
    pub from: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// Storage backend for one store. Object-safe; `Send + Sync` natively.
///
/// Contract (checked by `storage::conformance`, with the `test-utils`
/// feature):
/// - `write` applies the whole batch or nothing, and resolves only once the
///   batch is durable as far as the backend can make it.
/// - Reads see every resolved `write`.
/// - Listings skip tombstones and honour order, prefix, cursor and limit.
/// - After `close`, every call fails with [`StorageError::Closed`].
pub trait StorageBackend: MaybeSend + MaybeSync {
    /// A short description for logs and errors (e.g. `sqlite:/path/app.db`).
    fn describe(&self) -> String;

    /// Reads the store metadata.
    fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>>;

    /// Applies one batch atomically and durably.
    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>>;

    /// The highest sequence number stored for each author.
    fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>>;

    /// The commit `(author, seq)`, if stored.
    fn get_commit(
        &self,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>>;

    /// Commits of `author` with sequence numbers after `after_seq`, in order.
    fn commits_after(
        &self,
        author: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>>;

    /// One record row, tombstones included.
    fn get_record<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>>;

    /// Several record rows of one collection at once (tombstones included),
    /// in the order of `ids`. Backends override the default (one
    /// [`StorageBackend::get_record`] after another) to read them together.
    fn get_records<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, StorageResult<Vec<Option<RecordRow>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.get_record(collection, id).await?);
            }
            Ok(out)
        })
    }

    /// Live records of a collection.
    fn list_records<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>>;

    /// Events of a log.
    fn list_events<'a>(
        &'a self,
        log: &'a str,
        query: &'a EventQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>>;

    /// One key row, tombstones included.
    fn get_kv<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>>;

    /// Several key rows at once (tombstones included), in the order of `keys`.
    fn get_kvs<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, StorageResult<Vec<Option<KvRow>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.get_kv(key).await?);
            }
            Ok(out)
        })
    }

    /// Live keys in order, for listing (prefix, cursor and limit as for records).
    fn list_kv<'a>(&'a self, query: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>>;

    /// Rows of `table` in stored order after the cursor `after` (from a
    /// previous [`ScanPage::last`]), tombstones included, at most `limit`:
    /// for maintenance passes over everything stored (re-encryption). Rows
    /// rewritten in place during the pass are not met twice.
    fn scan<'a>(
        &'a self,
        table: Table,
        after: Option<&'a (String, String)>,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<ScanPage>>;

    /// Tells the backend that the names it will store are keyed hashes (an
    /// encrypting layer above it): they keep no order, so a backend whose
    /// layout clusters rows by name may cluster them by write order and
    /// index the hash instead. Called before any row is read or written.
    fn hashed_names(&self) {}

    /// Flushes and releases the backend.
    fn close(&self) -> BoxFuture<'_, StorageResult<()>>;

    /// True for storage that other writers share (IndexedDB, which every
    /// tab of the origin opens as the same device). Such a backend must
    /// refuse, with [`StorageError::Conflict`] and without writing anything,
    /// a batch whose change-log entries already exist; the writer then
    /// re-reads the version vector and the clock and retries.
    fn shared(&self) -> bool {
        false
    }

    /// Record keys (`collection`, `id`) changed by those other writers, as
    /// they commit. `None` (the default) when there are none.
    fn external_changes(&self) -> Option<BoxStream<'static, Vec<(String, String)>>> {
        None
    }
}

/// Where a listing for `query` starts in id order, and whether that id is
/// included (the later of the prefix and the cursor).
pub fn query_start(query: &RecordQuery) -> (String, bool) {
    match (&query.prefix, &query.after) {
        (Some(p), Some(a)) if a.as_str() >= p.as_str() => (a.clone(), false),
        (Some(p), _) => (p.clone(), true),
        (None, Some(a)) => (a.clone(), false),
        (None, None) => (String::new(), true),
    }
}

/// True when `id` passes the prefix and cursor of `query`.
pub fn query_admits(query: &RecordQuery, id: &str) -> bool {
    query.prefix.as_deref().is_none_or(|p| id.starts_with(p))
        && query.after.as_deref().is_none_or(|a| id > a)
}
