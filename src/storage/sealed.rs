//! `SealedStorage`: encryption at rest for the materialized state, as a
//! decorator over any [`StorageBackend`].
//!
//! What the inner backend stores for an encrypted store:
//!
//! | row | key (inner) | value (inner) |
//! |---|---|---|
//! | record | `(H(collection), H(collection, id))` | envelope of `{ id, value, fields }` in `value` when live; in `fields` (with `value` NULL) for a tombstone with merge state; nothing for a plain tombstone |
//! | event | `(H(log), event id)` | envelope of the JSON text |
//! | kv | `H(key)` | envelope of `{ key, value }` when set; nothing for a tombstone |
//!
//! `H` is the store's keyed name hash ([`crate::crypto::NameKey`]): `~` and
//! 22 base64url characters (128 bits). Envelopes are base64 text (the
//! backends store text) and are bound (associated data) to the store, the
//! row kind, the hashed names and, for records and keys, the row's stamp; a
//! row moved to another key, record or store does not open. Stamps, event
//! ids and times, authors, sizes and liveness (a tombstone's `value` is NULL)
//! stay visible: the metadata storage needs to merge and order (opaque
//! metadata, by design).
//!
//! Listing cannot use the inner order (hashes do not keep it). The first
//! listing of a collection reads and decrypts its live rows once and keeps
//! their names, sorted, with their stored keys (an in-memory index; storage
//! learns nothing from it); later listings, with prefix, cursor and limit,
//! are a range of the index and one batch of point reads. Writes through
//! this layer keep the index true; changes announced by other writers of
//! shared storage (tabs) drop it; keys are not indexed over shared storage
//! (tabs do not announce them). Events keep their order (their ids are
//! clear), so event listings stay range scans.
//!
//! Change-log entries pass through unchanged: their operations are sealed
//! when the commit is built, before it is signed.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use futures::StreamExt;

use data_encoding::BASE64_NOPAD;
use serde::{Deserialize, Serialize};

use super::{
    query_admits, query_start, AnyRow, EventQuery, EventRow, KvRow, RecordQuery, RecordRow,
    ScanPage, StorageBackend, StorageResult, StoredMeta, Table, WriteBatch,
};
use crate::change::{SignedCommit, Stamp, StoreId};
use crate::crypto::envelope::{context, epoch_of};
use crate::crypto::{CryptoError, Keyring, NameKey, NameKind, Opener, Sealer};
use crate::error::StorageError;
use crate::identity::DeviceId;
use crate::keys::KeyStore;
use crate::platform::{BoxFuture, BoxStream};

/// What a sealed record or key row holds.
#[derive(Serialize, Deserialize)]
struct RowSecret {
    name: String,
    value: Option<String>,
    fields: Option<String>,
}

/// A sealed row's plaintext.
fn decode_row(plain: &[u8]) -> StorageResult<RowSecret> {
    postcard::from_bytes(plain)
        .map_err(|e| StorageError::Decrypt(format!("a sealed row does not decode: {e}")))
}

/// Runs the decoder of a sealed row's plaintext on `data` (for fuzzing);
/// a row written here reads back.
#[cfg(feature = "test-utils")]
pub fn fuzz_row_decoder(data: &[u8]) {
    if let Ok(row) = decode_row(data) {
        let bytes = postcard::to_stdvec(&row).expect("a row encodes");
        let again = decode_row(&bytes).expect("a row written here reads back");
        assert_eq!(
            (again.name, again.value, again.fields),
            (row.name, row.value, row.fields)
        );
    }
}

/// Live names of a collection (or of the key space) in name order, with
/// the hashed keys their rows are stored under.
type NameIndex = BTreeMap<String, String>;

/// What a name index covers: a collection's records, or (`None`) the keys.
type Scope = Option<String>;

/// The name indexes built so far (in memory only), and a count of writes
/// that lets a build that raced a write be discarded.
#[derive(Default)]
struct Indexes {
    by_scope: HashMap<Scope, NameIndex>,
    writes: u64,
}

impl Indexes {
    fn forget(&mut self) {
        self.by_scope.clear();
        self.writes += 1;
    }
}

/// A backend whose rows are encrypted under a store keyring.
pub struct SealedStorage {
    inner: Arc<dyn StorageBackend>,
    store: StoreId,
    keyring: RwLock<Keyring>,
    names: NameKey,
    /// Subkeys of recent salts, for reads of one row.
    opener: Mutex<Opener>,
    indexes: Arc<Mutex<Indexes>>,
    /// Where newer epochs come from when another writer of shared storage
    /// (another tab) rotated the key.
    keys: Option<Arc<dyn KeyStore>>,
}

/// One record or key a batch writes: its name, stored key, and liveness,
/// to keep the name indexes current once the batch is stored.
struct Written {
    scope: Scope,
    name: String,
    hashed: String,
    live: bool,
}

fn crypto_error(e: CryptoError) -> StorageError {
    match e {
        CryptoError::UnknownEpoch(epoch) => StorageError::EpochUnknown(epoch),
        other => StorageError::Decrypt(other.to_string()),
    }
}

impl SealedStorage {
    /// Encrypts what `inner` stores under `keyring` (which must hold epoch
    /// 0, the root of the store's name key).
    pub fn new(inner: Arc<dyn StorageBackend>, keyring: Keyring) -> StorageResult<SealedStorage> {
        let names = keyring.name_key().map_err(crypto_error)?;
        inner.hashed_names();
        Ok(SealedStorage {
            inner,
            store: keyring.store(),
            keyring: RwLock::new(keyring),
            names,
            opener: Mutex::new(Opener::new()),
            indexes: Arc::default(),
            keys: None,
        })
    }

    /// Reloads the keyring from `keys` when a row names an epoch it lacks.
    pub fn reloading_from(mut self, keys: Arc<dyn KeyStore>) -> SealedStorage {
        self.keys = Some(keys);
        self
    }

    /// After [`StorageError::EpochUnknown`]: merges the device's keyring
    /// (saved by the writer that rotated) and says whether to read again.
    async fn learnt_epochs(&self, error: &StorageError) -> bool {
        let (StorageError::EpochUnknown(_), Some(keys)) = (error, &self.keys) else {
            return false;
        };
        let Ok(Some(saved)) = keys.load_keyring(self.store).await else {
            return false;
        };
        let mut keyring = self.keyring();
        let before = keyring.clone();
        keyring.merge(&saved);
        if keyring == before || self.set_keyring(keyring).is_err() {
            return false;
        }
        tracing::debug!("keyring reloaded: another writer rotated the key");
        true
    }

    fn indexes(&self) -> MutexGuard<'_, Indexes> {
        self.indexes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decrypts one row with the shared opener (its subkey cache).
    fn open_one<T>(&self, open: impl FnOnce(&mut Opener) -> StorageResult<T>) -> StorageResult<T> {
        open(&mut self.opener.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The names (and stored keys) `query` selects from the index of
    /// `scope`, when one is built.
    fn indexed(&self, scope: &Scope, query: &RecordQuery) -> Option<(Vec<String>, Vec<String>)> {
        let indexes = self.indexes();
        let index = indexes.by_scope.get(scope)?;
        let (start, inclusive) = query_start(query);
        let lower = if inclusive {
            Bound::Included(start)
        } else {
            Bound::Excluded(start)
        };
        Some(
            index
                .range((lower, Bound::Unbounded))
                .take_while(|(name, _)| query_admits(query, name))
                .take(query.limit.unwrap_or(usize::MAX))
                .map(|(name, hashed)| (name.clone(), hashed.clone()))
                .unzip(),
        )
    }

    /// Keeps the index built by a full listing of `scope`, unless a write
    /// came in since `writes` was read, or the scope's changes by other
    /// writers of shared storage are not announced (keys: tabs announce
    /// record keys only).
    fn keep_index(&self, scope: Scope, writes: u64, index: NameIndex) {
        let mut indexes = self.indexes();
        if indexes.writes == writes && (scope.is_some() || !self.inner.shared()) {
            indexes.by_scope.insert(scope, index);
        }
    }

    /// Updates the built indexes with what a stored batch wrote.
    fn note_written(&self, written: Vec<Written>) {
        let mut indexes = self.indexes();
        indexes.writes += 1;
        for w in written {
            if let Some(index) = indexes.by_scope.get_mut(&w.scope) {
                if w.live {
                    index.insert(w.name, w.hashed);
                } else {
                    index.remove(&w.name);
                }
            }
        }
    }

    /// The backend underneath (rows as stored: hashed names, envelopes).
    pub fn inner(&self) -> &Arc<dyn StorageBackend> {
        &self.inner
    }

    /// A copy of the keyring in use.
    pub fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the keyring (a rotation, or epochs learnt elsewhere). It
    /// must be the same store's and keep epoch 0 (the names' root).
    pub fn set_keyring(&self, keyring: Keyring) -> StorageResult<()> {
        if keyring.store() != self.store || keyring.name_key().map_err(crypto_error)? != self.names
        {
            return Err(StorageError::Decrypt(
                "the keyring belongs to another store".into(),
            ));
        }
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = keyring;
        Ok(())
    }

    /// A sealer under the current epoch (for a commit's operations).
    pub fn commit_sealer(&self) -> StorageResult<Sealer> {
        let keyring = self.keyring.read().unwrap_or_else(|p| p.into_inner());
        let (epoch, key) = keyring.current();
        Sealer::new(key, epoch).map_err(crypto_error)
    }

    /// Re-encrypts, under the current epoch, those of `rows` (as
    /// [`StorageBackend::scan`] of the inner backend returns them) sealed
    /// under an older one. Returns the batch that replaces them (its
    /// `replace_events` set) and how many rows it holds.
    pub fn reseal(&self, rows: Vec<AnyRow>) -> StorageResult<(WriteBatch, usize)> {
        let keyring = self.keyring();
        let (epoch, key) = keyring.current();
        let mut sealer = Sealer::new(key, epoch).map_err(crypto_error)?;
        let mut opener = Opener::new();
        let mut batch = WriteBatch {
            replace_events: true,
            ..WriteBatch::default()
        };
        let stale = |text: &Option<String>| -> StorageResult<Option<Vec<u8>>> {
            let Some(text) = text else { return Ok(None) };
            let envelope = BASE64_NOPAD
                .decode(text.as_bytes())
                .map_err(|_| StorageError::Decrypt("a sealed row is not base64".into()))?;
            Ok((epoch_of(&envelope).map_err(crypto_error)? != epoch).then_some(envelope))
        };
        let mut reseal = |context: &[u8], envelope: Vec<u8>| -> StorageResult<String> {
            let old = keyring.key_for_envelope(&envelope).map_err(crypto_error)?;
            let plain = zeroize::Zeroizing::new(
                opener.open(old, context, &envelope).map_err(crypto_error)?,
            );
            Ok(BASE64_NOPAD.encode(&sealer.seal(context, &plain).map_err(crypto_error)?))
        };
        for row in rows {
            match row {
                AnyRow::Record(mut row) => {
                    let context = self.row_context(b"record", &row.collection, &row.id, &row.stamp);
                    if let Some(envelope) = stale(&row.value)? {
                        row.value = Some(reseal(&context, envelope)?);
                        batch.records.push(row);
                    } else if let Some(envelope) = stale(&row.fields)? {
                        row.fields = Some(reseal(&context, envelope)?);
                        batch.records.push(row);
                    }
                }
                AnyRow::Event(mut row) => {
                    let context = self.event_context(&row.log, &row.id, &row.author, row.at);
                    if let Some(envelope) = stale(&Some(row.value.clone()))? {
                        row.value = reseal(&context, envelope)?;
                        batch.events.push(row);
                    }
                }
                AnyRow::Kv(mut row) => {
                    let context = self.row_context(b"kv", &row.key, "", &row.stamp);
                    if let Some(envelope) = stale(&row.value)? {
                        row.value = Some(reseal(&context, envelope)?);
                        batch.kv.push(row);
                    }
                }
            }
        }
        let count = batch.records.len() + batch.events.len() + batch.kv.len();
        Ok((batch, count))
    }

    fn collection(&self, collection: &str) -> String {
        self.names.hash(NameKind::Collection, "", collection)
    }

    fn record(&self, collection: &str, id: &str) -> String {
        self.names.hash(NameKind::Record, collection, id)
    }

    fn log(&self, log: &str) -> String {
        self.names.hash(NameKind::Log, "", log)
    }

    fn key(&self, key: &str) -> String {
        self.names.hash(NameKind::Key, "", key)
    }

    fn row_context(&self, kind: &[u8], first: &str, second: &str, stamp: &Stamp) -> Vec<u8> {
        context(&[
            self.store.as_bytes(),
            kind,
            first.as_bytes(),
            second.as_bytes(),
            stamp.author.as_bytes(),
            &stamp.hlc.as_u64().to_be_bytes(),
        ])
    }

    fn event_context(&self, log: &str, id: &str, author: &DeviceId, at: u64) -> Vec<u8> {
        context(&[
            self.store.as_bytes(),
            b"event",
            log.as_bytes(),
            id.as_bytes(),
            author.as_bytes(),
            &at.to_be_bytes(),
        ])
    }

    fn open(&self, opener: &mut Opener, context: &[u8], text: &str) -> StorageResult<Vec<u8>> {
        let envelope = BASE64_NOPAD
            .decode(text.as_bytes())
            .map_err(|_| StorageError::Decrypt("a sealed row is not base64".into()))?;
        let keyring = self.keyring.read().unwrap_or_else(|p| p.into_inner());
        let key = keyring.key_for_envelope(&envelope).map_err(crypto_error)?;
        opener.open(key, context, &envelope).map_err(crypto_error)
    }

    /// The inner `(value, fields)` of a row: its secret sealed, in `value`
    /// when the row is live, in `fields` when a tombstone keeps merge state;
    /// nothing for a plain tombstone (a read knows its name, a listing skips
    /// it).
    fn seal_row(
        &self,
        sealer: &mut Sealer,
        context: &[u8],
        secret: RowSecret,
    ) -> StorageResult<(Option<String>, Option<String>)> {
        let live = secret.value.is_some();
        if !live && secret.fields.is_none() {
            return Ok((None, None));
        }
        let plain = zeroize::Zeroizing::new(
            postcard::to_stdvec(&secret).map_err(|e| StorageError::Backend(e.to_string()))?,
        );
        let sealed = BASE64_NOPAD.encode(&sealer.seal(context, &plain).map_err(crypto_error)?);
        Ok(if live {
            (Some(sealed), None)
        } else {
            (None, Some(sealed))
        })
    }

    /// Reads [`SealedStorage::seal_row`]; `name` is the row's name when the
    /// caller knows it (reads of one row), which a plain tombstone needs.
    fn open_row(
        &self,
        opener: &mut Opener,
        context: &[u8],
        name: Option<&str>,
        value: Option<&str>,
        fields: Option<&str>,
    ) -> StorageResult<RowSecret> {
        let Some(text) = value.or(fields) else {
            return name
                .map(|name| RowSecret {
                    name: name.to_owned(),
                    value: None,
                    fields: None,
                })
                .ok_or_else(|| StorageError::Decrypt("a sealed row has no envelope".into()));
        };
        let plain = zeroize::Zeroizing::new(self.open(opener, context, text)?);
        decode_row(&plain)
    }

    fn seal_batch(&self, batch: WriteBatch) -> StorageResult<(WriteBatch, Vec<Written>)> {
        let mut sealer = self.commit_sealer()?;
        let announce = self.inner.shared().then(|| {
            batch
                .records
                .iter()
                .map(|r| (r.collection.clone(), r.id.clone()))
                .collect()
        });
        let mut written = Vec::with_capacity(batch.records.len() + batch.kv.len());
        let mut records = Vec::with_capacity(batch.records.len());
        for row in batch.records {
            let (collection, id) = (
                self.collection(&row.collection),
                self.record(&row.collection, &row.id),
            );
            written.push(Written {
                scope: Some(row.collection.clone()),
                name: row.id.clone(),
                hashed: id.clone(),
                live: row.value.is_some(),
            });
            let context = self.row_context(b"record", &collection, &id, &row.stamp);
            let secret = RowSecret {
                name: row.id,
                value: row.value,
                fields: row.fields,
            };
            let (value, fields) = self.seal_row(&mut sealer, &context, secret)?;
            records.push(RecordRow {
                collection,
                id,
                value,
                stamp: row.stamp,
                fields,
            });
        }
        let mut events = Vec::with_capacity(batch.events.len());
        for row in batch.events {
            let log = self.log(&row.log);
            let context = self.event_context(&log, &row.id, &row.author, row.at);
            let sealed = sealer
                .seal(&context, row.value.as_bytes())
                .map_err(crypto_error)?;
            events.push(EventRow {
                log,
                value: BASE64_NOPAD.encode(&sealed),
                ..row
            });
        }
        let mut kv = Vec::with_capacity(batch.kv.len());
        for row in batch.kv {
            let key = self.key(&row.key);
            written.push(Written {
                scope: None,
                name: row.key.clone(),
                hashed: key.clone(),
                live: row.value.is_some(),
            });
            let context = self.row_context(b"kv", &key, "", &row.stamp);
            let secret = RowSecret {
                name: row.key,
                value: row.value,
                fields: None,
            };
            // Keys have no merge state, so a deleted key stores nothing sealed.
            let (value, _) = self.seal_row(&mut sealer, &context, secret)?;
            kv.push(KvRow {
                key,
                value,
                stamp: row.stamp,
            });
        }
        let sealed = WriteBatch {
            records,
            events,
            kv,
            announce,
            ..batch
        };
        Ok((sealed, written))
    }

    fn open_record(
        &self,
        opener: &mut Opener,
        collection: &str,
        id: Option<&str>,
        row: RecordRow,
    ) -> StorageResult<RecordRow> {
        let context = self.row_context(b"record", &row.collection, &row.id, &row.stamp);
        let secret = self.open_row(
            opener,
            &context,
            id,
            row.value.as_deref(),
            row.fields.as_deref(),
        )?;
        Ok(RecordRow {
            collection: collection.to_owned(),
            id: secret.name,
            value: secret.value,
            stamp: row.stamp,
            fields: secret.fields,
        })
    }

    fn open_kv(&self, opener: &mut Opener, key: Option<&str>, row: KvRow) -> StorageResult<KvRow> {
        let context = self.row_context(b"kv", &row.key, "", &row.stamp);
        let secret = self.open_row(opener, &context, key, row.value.as_deref(), None)?;
        Ok(KvRow {
            key: secret.name,
            value: secret.value,
            stamp: row.stamp,
        })
    }
}

/// Applies `query` (prefix, cursor, limit, id order) to decrypted rows.
fn page<T>(mut rows: Vec<T>, query: &RecordQuery, id: impl Fn(&T) -> &str) -> Vec<T> {
    rows.retain(|row| query_admits(query, id(row)));
    rows.sort_by(|a, b| id(a).cmp(id(b)));
    rows.truncate(query.limit.unwrap_or(usize::MAX));
    rows
}

/// Reads, each retried once after learning newer key epochs.
impl SealedStorage {
    async fn retrying<'a, T, Fut>(&'a self, read: impl Fn() -> Fut) -> StorageResult<T>
    where
        Fut: std::future::Future<Output = StorageResult<T>> + 'a,
    {
        match read().await {
            Err(e) if self.learnt_epochs(&e).await => read().await,
            other => other,
        }
    }

    fn get_record_once<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
        Box::pin(async move {
            let (hashed, hashed_id) = (self.collection(collection), self.record(collection, id));
            let Some(row) = self.inner.get_record(&hashed, &hashed_id).await? else {
                return Ok(None);
            };
            let row = self.open_one(|o| self.open_record(o, collection, Some(id), row))?;
            if row.id != id {
                return Err(StorageError::Decrypt(
                    "a sealed record names another id".into(),
                ));
            }
            Ok(Some(row))
        })
    }

    fn list_records_once<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
        Box::pin(async move {
            let hashed = self.collection(collection);
            let scope = Some(collection.to_owned());
            if let Some((ids, hashed_ids)) = self.indexed(&scope, query) {
                let rows = self.inner.get_records(&hashed, &hashed_ids).await?;
                let mut opener = Opener::new();
                let mut out = Vec::with_capacity(rows.len());
                for (id, row) in ids.iter().zip(rows) {
                    if let Some(row) = row {
                        let row = self.open_record(&mut opener, collection, Some(id), row)?;
                        if row.value.is_some() {
                            out.push(row);
                        }
                    }
                }
                return Ok(out);
            }
            // First listing: read and decrypt the collection once, and keep
            // its names in order for the next pages.
            let writes = self.indexes().writes;
            let rows = self
                .inner
                .list_records(&hashed, &RecordQuery::default())
                .await?;
            let mut opener = Opener::new();
            let mut index = NameIndex::new();
            let rows = rows
                .into_iter()
                .map(|row| {
                    let hashed_id = row.id.clone();
                    let row = self.open_record(&mut opener, collection, None, row)?;
                    index.insert(row.id.clone(), hashed_id);
                    Ok(row)
                })
                .collect::<StorageResult<Vec<_>>>()?;
            self.keep_index(scope, writes, index);
            Ok(page(rows, query, |row| &row.id))
        })
    }

    fn list_events_once<'a>(
        &'a self,
        log: &'a str,
        query: &'a EventQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>> {
        Box::pin(async move {
            let hashed = self.log(log);
            let rows = self.inner.list_events(&hashed, query).await?;
            let mut opener = Opener::new();
            rows.into_iter()
                .map(|row| {
                    let context = self.event_context(&hashed, &row.id, &row.author, row.at);
                    let plain = self.open(&mut opener, &context, &row.value)?;
                    let value = String::from_utf8(plain)
                        .map_err(|_| StorageError::Decrypt("a sealed event is not text".into()))?;
                    Ok(EventRow {
                        log: log.to_owned(),
                        value,
                        ..row
                    })
                })
                .collect()
        })
    }

    fn get_kv_once<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
        Box::pin(async move {
            let Some(row) = self.inner.get_kv(&self.key(key)).await? else {
                return Ok(None);
            };
            let row = self.open_one(|o| self.open_kv(o, Some(key), row))?;
            if row.key != key {
                return Err(StorageError::Decrypt(
                    "a sealed key names another key".into(),
                ));
            }
            Ok(Some(row))
        })
    }

    fn list_kv_once<'a>(
        &'a self,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
        Box::pin(async move {
            if let Some((keys, hashed)) = self.indexed(&None, query) {
                let rows = self.inner.get_kvs(&hashed).await?;
                let mut opener = Opener::new();
                let mut out = Vec::with_capacity(rows.len());
                for (key, row) in keys.iter().zip(rows) {
                    if let Some(row) = row {
                        let row = self.open_kv(&mut opener, Some(key), row)?;
                        if row.value.is_some() {
                            out.push(row);
                        }
                    }
                }
                return Ok(out);
            }
            let writes = self.indexes().writes;
            let rows = self.inner.list_kv(&RecordQuery::default()).await?;
            let mut opener = Opener::new();
            let mut index = NameIndex::new();
            let rows = rows
                .into_iter()
                .map(|row| {
                    let hashed = row.key.clone();
                    let row = self.open_kv(&mut opener, None, row)?;
                    index.insert(row.key.clone(), hashed);
                    Ok(row)
                })
                .collect::<StorageResult<Vec<_>>>()?;
            self.keep_index(None, writes, index);
            Ok(page(rows, query, |row| &row.key))
        })
    }
}

impl StorageBackend for SealedStorage {
    fn describe(&self) -> String {
        format!("sealed:{}", self.inner.describe())
    }

    fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>> {
        self.inner.load_meta()
    }

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(async move {
            let cleared = batch.clear;
            let (sealed, written) = self.seal_batch(batch)?;
            let result = self.inner.write(sealed).await;
            match &result {
                Ok(()) if cleared => self.indexes().forget(),
                Ok(()) => self.note_written(written),
                // Whatever happened, built indexes may no longer be true.
                Err(_) => self.indexes().forget(),
            }
            result
        })
    }

    fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>> {
        self.inner.version_vector()
    }

    fn get_commit(
        &self,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        self.inner.get_commit(author, seq)
    }

    fn commits_after(
        &self,
        author: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        self.inner.commits_after(author, after_seq, limit)
    }

    fn get_record<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
        Box::pin(self.retrying(move || self.get_record_once(collection, id)))
    }

    fn list_records<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
        Box::pin(self.retrying(move || self.list_records_once(collection, query)))
    }

    fn list_events<'a>(
        &'a self,
        log: &'a str,
        query: &'a EventQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>> {
        Box::pin(self.retrying(move || self.list_events_once(log, query)))
    }

    fn get_kv<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
        Box::pin(self.retrying(move || self.get_kv_once(key)))
    }

    fn list_kv<'a>(&'a self, query: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
        Box::pin(self.retrying(move || self.list_kv_once(query)))
    }

    /// The inner backend's rows as stored (hashed names, envelopes): scans
    /// serve maintenance passes such as [`SealedStorage::reseal`].
    fn scan<'a>(
        &'a self,
        table: Table,
        after: Option<&'a (String, String)>,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<ScanPage>> {
        self.inner.scan(table, after, limit)
    }

    fn close(&self) -> BoxFuture<'_, StorageResult<()>> {
        self.inner.close()
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn external_changes(&self) -> Option<BoxStream<'static, Vec<(String, String)>>> {
        // Writers through this layer announce the names (`announce`), not
        // the hashed keys they store: other tabs' messages never leave the
        // browser's memory. What other writers change, the name indexes
        // built here do not know: they are dropped.
        let indexes = Arc::downgrade(&self.indexes);
        let changes = self.inner.external_changes()?;
        Some(Box::pin(changes.map(move |keys| {
            if let Some(indexes) = indexes.upgrade() {
                indexes.lock().unwrap_or_else(|p| p.into_inner()).forget();
            }
            keys
        })))
    }
}
