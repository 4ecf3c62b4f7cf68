//! IndexedDB storage (`IdbStore`), through `rexie`.
//!
//! One database per store, named `persist:<name>`, schema version 2:
//!
//! | object store | key | value |
//! |---|---|---|
//! | `meta` | `"store_id"`, `"device_key"`; `"sealed_keyring"`, `"rotation"`, `"keyring:<store id>"` | hex strings; `Uint8Array` |
//! | `change_log` | `[author hex, seq]` | `{ hlc_last, body: Uint8Array, signature: Uint8Array }` |
//! | `records` | `[collection, id]` | `{ value: string \| null, hlc, author, fields: string \| null }` |
//! | `events` | `[log, id]` | `{ at, author, value }` |
//! | `kv` | key | `{ value: string \| null, hlc, author }` |
//!
//! Stamps are 16 hex digits (a `u64` does not fit a JS number); sequence
//! numbers and milliseconds are numbers (below 2^53). Array keys order by
//! element, so `[collection, id]` ranges are listings, and the version vector
//! is the last key of each author's range in `change_log` (one reverse step
//! per author). A write batch is one `readwrite` transaction, and it is
//! acknowledged only when the transaction completes.
//!
//! Schema history (`SCHEMAS`): version 1 also kept the version vector in a
//! `heads` store, written with every commit; version 2 derives it, and the
//! upgrade drops `heads` (derived data: nothing to move). Before upgrading,
//! the database's current stores are checked against the schema of its
//! version, so a foreign database under the name is refused
//! (`STORAGE_CORRUPT`) and never altered; a newer version is
//! `STORAGE_VERSION_UNSUPPORTED`.

use std::cell::RefCell;

use js_sys::{Array, Object, Reflect, Uint8Array};
use rexie::{KeyRange, ObjectStore, Rexie, Store, TransactionMode};
use wasm_bindgen::{JsCast, JsValue};

use crate::change::{SignedCommit, Stamp, StoreId};
use crate::error::StorageError;
use crate::hlc::Hlc;
use crate::identity::DeviceId;
use crate::platform::BoxFuture;
use crate::storage::{
    query_admits, query_start, AnyRow, EventQuery, EventRow, KvRow, MetaKey, RecordQuery,
    RecordRow, ScanPage, StorageBackend, StorageResult, StoredMeta, Table, WriteBatch,
};

/// The object stores of each schema version, oldest first.
const SCHEMAS: [&[&str]; 2] = [
    &["meta", "change_log", "heads", "records", "events", "kv"],
    &["meta", "change_log", "records", "events", "kv"],
];
const SCHEMA_VERSION: u32 = SCHEMAS.len() as u32;
const STORES: &[&str] = SCHEMAS[SCHEMAS.len() - 1];
/// Rows fetched per request while listing.
const SCAN_CHUNK: u32 = 128;

/// A Persist store in one IndexedDB database.
pub struct IdbStore {
    name: String,
    db: RefCell<Option<Rexie>>,
    /// The store's channel to the other tabs of the origin.
    tabs: Option<super::tabs::Announcer>,
}

fn backend_error(e: rexie::Error) -> StorageError {
    let text = format!("{e}: {e:?}");
    if text.contains("QuotaExceeded") {
        StorageError::Io(text)
    } else if text.contains("VersionError") {
        StorageError::VersionUnsupported {
            found: 0,
            supported: SCHEMA_VERSION,
        }
    } else {
        StorageError::Backend(text)
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("IndexedDB row has no valid {what}"))
}

fn set(object: &Object, key: &str, value: &JsValue) {
    // Setting a plain property of a fresh object cannot throw.
    let _ = Reflect::set(object, &JsValue::from_str(key), value);
}

fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn text_field(object: &JsValue, key: &str) -> StorageResult<String> {
    get(object, key).as_string().ok_or_else(|| corrupt(key))
}

fn optional_text(object: &JsValue, key: &str) -> StorageResult<Option<String>> {
    let value = get(object, key);
    if value.is_null() || value.is_undefined() {
        return Ok(None);
    }
    value.as_string().map(Some).ok_or_else(|| corrupt(key))
}

/// A non-negative integer a JS number holds exactly (below 2^53).
fn safe_integer(value: &JsValue) -> Option<u64> {
    value
        .as_f64()
        .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n < 9_007_199_254_740_992.0)
        .map(|n| n as u64)
}

fn number_field(object: &JsValue, key: &str) -> StorageResult<u64> {
    safe_integer(&get(object, key)).ok_or_else(|| corrupt(key))
}

/// Element `index` of an array key, as a string.
fn key_text(key: &JsValue, index: u32, what: &str) -> StorageResult<String> {
    Array::from(key)
        .get(index)
        .as_string()
        .ok_or_else(|| corrupt(what))
}

fn bytes_field(object: &JsValue, key: &str) -> StorageResult<Vec<u8>> {
    get(object, key)
        .dyn_into::<Uint8Array>()
        .map(|a| a.to_vec())
        .map_err(|_| corrupt(key))
}

fn hlc_text(hlc: Hlc) -> JsValue {
    JsValue::from_str(&format!("{:016x}", hlc.as_u64()))
}

fn hlc_field(object: &JsValue, key: &str) -> StorageResult<Hlc> {
    let text = text_field(object, key)?;
    u64::from_str_radix(&text, 16)
        .map(Hlc::from_u64)
        .map_err(|_| corrupt(key))
}

fn author_field(object: &JsValue, key: &str) -> StorageResult<DeviceId> {
    text_field(object, key)?.parse().map_err(|_| corrupt(key))
}

fn key2(a: &str, b: &JsValue) -> JsValue {
    Array::of2(&JsValue::from_str(a), b).into()
}

fn optional_js(text: &Option<String>) -> JsValue {
    text.as_deref().map_or(JsValue::NULL, JsValue::from_str)
}

fn record_from(collection: &str, id: String, object: &JsValue) -> StorageResult<RecordRow> {
    Ok(RecordRow {
        collection: collection.to_owned(),
        id,
        value: optional_text(object, "value")?,
        stamp: Stamp {
            hlc: hlc_field(object, "hlc")?,
            author: author_field(object, "author")?,
        },
        fields: optional_text(object, "fields")?,
    })
}

/// An event row from its `[log, id]` key and stored object.
fn event_from(key: &JsValue, object: &JsValue) -> StorageResult<EventRow> {
    Ok(EventRow {
        log: key_text(key, 0, "event key")?,
        id: key_text(key, 1, "event key")?,
        at: number_field(object, "at")?,
        author: author_field(object, "author")?,
        value: text_field(object, "value")?,
    })
}

fn kv_from(key: String, object: &JsValue) -> StorageResult<KvRow> {
    Ok(KvRow {
        key,
        value: optional_text(object, "value")?,
        stamp: Stamp {
            hlc: hlc_field(object, "hlc")?,
            author: author_field(object, "author")?,
        },
    })
}

fn seq_number(seq: u64) -> StorageResult<JsValue> {
    if seq >= 1 << 53 {
        return Err(StorageError::Backend("sequence number beyond 2^53".into()));
    }
    Ok(JsValue::from_f64(seq as f64))
}

impl IdbStore {
    /// Opens (creating or upgrading) the database for store `name`.
    pub async fn open(name: &str) -> StorageResult<IdbStore> {
        let db_name = format!("persist:{name}");
        match existing_version(&db_name).await? {
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StorageError::VersionUnsupported {
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            // An older Persist database is upgraded; anything else under the
            // name is left as it is.
            Some(found) if (1..SCHEMA_VERSION).contains(&found) => {
                let old = open_at(&db_name, found).await?;
                let checked = check_stores(&old, &db_name, SCHEMAS[found as usize - 1]);
                old.close();
                checked?;
                tracing::info!(
                    database = %db_name, from = found, to = SCHEMA_VERSION,
                    "upgrading the IndexedDB schema"
                );
            }
            _ => {}
        }
        let db = open_at(&db_name, SCHEMA_VERSION).await?;
        if let Err(e) = check_stores(&db, &db_name, STORES) {
            db.close();
            return Err(e);
        }
        let tabs = super::tabs::Announcer::join(&db_name);
        Ok(IdbStore {
            name: db_name,
            db: RefCell::new(Some(db)),
            tabs,
        })
    }

    /// Deletes the database of store `name` (it must be closed everywhere).
    pub async fn delete(name: &str) -> StorageResult<()> {
        Rexie::delete(&format!("persist:{name}"))
            .await
            .map_err(backend_error)
    }

    fn transaction(
        &self,
        stores: &[&str],
        mode: TransactionMode,
    ) -> StorageResult<rexie::Transaction> {
        let db = self.db.borrow();
        let db = db.as_ref().ok_or(StorageError::Closed)?;
        db.transaction(stores, mode).map_err(backend_error)
    }

    fn store(transaction: &rexie::Transaction, name: &str) -> StorageResult<Store> {
        transaction.store(name).map_err(backend_error)
    }

    /// The value under `key` in `store`, in a read-only transaction of its own.
    async fn get_one(&self, store: &str, key: JsValue) -> StorageResult<Option<JsValue>> {
        let tx = self.transaction(&[store], TransactionMode::ReadOnly)?;
        Self::store(&tx, store)?
            .get(key)
            .await
            .map_err(backend_error)
    }

    /// The values under `keys` of object store `name`, in one read-only
    /// transaction with every request issued at once.
    async fn get_many(
        &self,
        name: &str,
        keys: impl Iterator<Item = JsValue>,
    ) -> StorageResult<Vec<Option<JsValue>>> {
        let tx = self.transaction(&[name], TransactionMode::ReadOnly)?;
        let store = Self::store(&tx, name)?;
        let gets = keys.map(|key| store.get(key));
        let results = futures::future::join_all(gets).await;
        results
            .into_iter()
            .map(|r| r.map_err(backend_error))
            .collect()
    }

    /// Up to `limit` items made by `take` from the rows of object store
    /// `name` between `lower` and `upper` (inclusive) in key order, read in
    /// chunks of `SCAN_CHUNK` in one read-only transaction.
    async fn collect<T>(
        &self,
        name: &str,
        (mut lower, mut lower_open): (JsValue, bool),
        upper: JsValue,
        limit: usize,
        mut take: impl FnMut(JsValue, JsValue) -> StorageResult<Take<T>>,
    ) -> StorageResult<Vec<T>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let tx = self.transaction(&[name], TransactionMode::ReadOnly)?;
        let store = Self::store(&tx, name)?;
        loop {
            let range = KeyRange::bound(&lower, &upper, Some(lower_open), Some(false))
                .map_err(|e| StorageError::Backend(e.to_string()))?;
            let rows = store
                .scan(Some(range), Some(SCAN_CHUNK), None, None)
                .await
                .map_err(backend_error)?;
            let full = rows.len() as u32 == SCAN_CHUNK;
            let mut last = None;
            for (key, value) in rows {
                last = Some(key.clone());
                match take(key, value)? {
                    Take::Item(item) => out.push(item),
                    Take::Skip => {}
                    Take::Stop => return Ok(out),
                }
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match last {
                Some(key) if full => (lower, lower_open) = (key, true),
                _ => return Ok(out),
            }
        }
    }
}

/// What a listing does with one row.
enum Take<T> {
    Item(T),
    Skip,
    Stop,
}

fn author_text(author: &DeviceId) -> JsValue {
    JsValue::from_str(&author.to_string())
}

type Row = (JsValue, Option<JsValue>);

/// The version of database `name`, if it exists (where the browser can
/// list databases without opening them).
async fn existing_version(name: &str) -> StorageResult<Option<u32>> {
    let factory = Reflect::get(&js_sys::global(), &"indexedDB".into())
        .map_err(|_| StorageError::Backend("IndexedDB is not available here".into()))?;
    let Ok(databases) =
        Reflect::get(&factory, &"databases".into()).and_then(|f| f.dyn_into::<js_sys::Function>())
    else {
        return Ok(None);
    };
    let promise = databases
        .call0(&factory)
        .ok()
        .and_then(|p| p.dyn_into::<js_sys::Promise>().ok());
    let Some(promise) = promise else {
        return Ok(None);
    };
    let list = wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|e| StorageError::Backend(format!("indexedDB.databases(): {e:?}")))?;
    Ok(Array::from(&list).iter().find_map(|info| {
        (get(&info, "name").as_string().as_deref() == Some(name))
            .then(|| get(&info, "version").as_f64())
            .flatten()
            .map(|v| v as u32)
    }))
}

/// Opens database `name` at `version` with that version's object stores
/// (creating missing ones and dropping those the schema no longer has, if
/// this is an upgrade).
async fn open_at(name: &str, version: u32) -> StorageResult<Rexie> {
    let mut builder = Rexie::builder(name).version(version);
    for store in SCHEMAS[version as usize - 1] {
        builder = builder.add_object_store(ObjectStore::new(store));
    }
    builder.build().await.map_err(backend_error)
}

/// `STORAGE_CORRUPT` unless `db` has exactly the object stores `schema` names.
fn check_stores(db: &Rexie, name: &str, schema: &[&str]) -> StorageResult<()> {
    let names = db.store_names();
    if let Some(missing) = schema.iter().find(|s| !names.iter().any(|n| n == *s)) {
        return Err(StorageError::Corrupt(format!(
            "IndexedDB database {name} is not a Persist store (no {missing} object store)"
        )));
    }
    if let Some(extra) = names.iter().find(|n| !schema.contains(&n.as_str())) {
        return Err(StorageError::Corrupt(format!(
            "IndexedDB database {name} is not a Persist store (unknown object store {extra})"
        )));
    }
    Ok(())
}

/// The version vector and the newest clock reading, from the last
/// `change_log` key of each author: one reverse step per author, from the
/// highest author down (`[author]` sorts before every `[author, seq]`).
async fn read_heads(store: &Store) -> StorageResult<(Hlc, Vec<(DeviceId, u64)>)> {
    let (mut clock, mut heads) = (Hlc::ZERO, Vec::new());
    let mut below: Option<JsValue> = None;
    loop {
        let range = below
            .as_ref()
            .map(|key| KeyRange::upper_bound(key, Some(true)))
            .transpose()
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        let rows = store
            .scan(range, Some(1), None, Some(rexie::Direction::Prev))
            .await
            .map_err(backend_error)?;
        let Some((key, value)) = rows.into_iter().next() else {
            break;
        };
        let key = Array::from(&key);
        let author_key = key.get(0);
        let author: DeviceId = author_key
            .as_string()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| corrupt("change_log author"))?;
        let seq = safe_integer(&key.get(1))
            .filter(|seq| *seq >= 1)
            .ok_or_else(|| corrupt("change_log sequence number"))?;
        clock = clock.max(hlc_field(&value, "hlc_last")?);
        heads.push((author, seq));
        below = Some(Array::of1(&author_key).into());
    }
    heads.reverse();
    Ok((clock, heads))
}

/// The `(value, key)` pairs of one batch, per object store.
fn batch_rows(batch: &WriteBatch) -> StorageResult<[Vec<Row>; 4]> {
    let mut log = Vec::with_capacity(batch.log.len());
    for entry in &batch.log {
        let object = Object::new();
        set(&object, "hlc_last", &hlc_text(entry.last_hlc));
        set(
            &object,
            "body",
            &Uint8Array::from(&entry.commit.body[..]).into(),
        );
        set(
            &object,
            "signature",
            &Uint8Array::from(&entry.commit.signature[..]).into(),
        );
        log.push((
            object.into(),
            Some(key2(&entry.author.to_string(), &seq_number(entry.seq)?)),
        ));
    }
    let records = batch
        .records
        .iter()
        .map(|row| {
            let object = Object::new();
            set(&object, "value", &optional_js(&row.value));
            set(&object, "hlc", &hlc_text(row.stamp.hlc));
            set(&object, "author", &author_text(&row.stamp.author));
            set(&object, "fields", &optional_js(&row.fields));
            (
                object.into(),
                Some(key2(&row.collection, &JsValue::from_str(&row.id))),
            )
        })
        .collect();
    // Events are immutable and their ids unique per stamp, so writing one
    // again (a duplicate commit) rewrites the same content.
    let events = batch
        .events
        .iter()
        .map(|row| {
            let object = Object::new();
            set(&object, "at", &JsValue::from_f64(row.at as f64));
            set(&object, "author", &author_text(&row.author));
            set(&object, "value", &JsValue::from_str(&row.value));
            (
                object.into(),
                Some(key2(&row.log, &JsValue::from_str(&row.id))),
            )
        })
        .collect();
    let kv = batch
        .kv
        .iter()
        .map(|row| {
            let object = Object::new();
            set(&object, "value", &optional_js(&row.value));
            set(&object, "hlc", &hlc_text(row.stamp.hlc));
            set(&object, "author", &author_text(&row.stamp.author));
            (object.into(), Some(JsValue::from_str(&row.key)))
        })
        .collect();
    Ok([log, records, events, kv])
}

async fn write_batch(store: &IdbStore, batch: WriteBatch) -> StorageResult<()> {
    let names = ["change_log", "records", "events", "kv"];
    let rows = batch_rows(&batch)?;
    // Only the object stores this batch touches: a narrower scope is a
    // cheaper transaction and lets readers of the others proceed.
    let mut scope: Vec<&str> = names
        .iter()
        .zip(&rows)
        .filter(|(_, r)| batch.clear || !r.is_empty())
        .map(|(n, _)| *n)
        .collect();
    if batch.clear || batch.store_id.is_some() || !batch.meta.is_empty() {
        scope.push("meta");
    }
    if scope.is_empty() {
        return Ok(());
    }
    let tx = store.transaction(&scope, TransactionMode::ReadWrite)?;
    if batch.clear {
        for name in names {
            IdbStore::store(&tx, name)?
                .clear()
                .await
                .map_err(backend_error)?;
        }
        // The device's own entries (its key, keyrings) stay.
        let meta = IdbStore::store(&tx, "meta")?;
        for key in MetaKey::ALL {
            meta.delete(JsValue::from_str(key.as_str()))
                .await
                .map_err(backend_error)?;
        }
    }
    if let Some(id) = batch.store_id {
        let meta = IdbStore::store(&tx, "meta")?;
        let key = JsValue::from_str("store_id");
        let text = id.to_string();
        match meta.get(key.clone()).await.map_err(backend_error)? {
            None => {
                meta.put(&JsValue::from_str(&text), Some(&key))
                    .await
                    .map_err(backend_error)?;
            }
            Some(_) if batch.adopt_store_id => {
                meta.put(&JsValue::from_str(&text), Some(&key))
                    .await
                    .map_err(backend_error)?;
            }
            // Another tab created the store first: its id stands.
            Some(stored) if stored.as_string().as_deref() != Some(text.as_str()) => {
                tx.abort().await.map_err(backend_error)?;
                return Err(StorageError::Conflict(
                    "another tab created this store with another id".into(),
                ));
            }
            Some(_) => {}
        }
    }
    if !batch.meta.is_empty() {
        let meta = IdbStore::store(&tx, "meta")?;
        for (key, value) in &batch.meta {
            meta.put(
                &Uint8Array::from(&value[..]).into(),
                Some(&JsValue::from_str(key.as_str())),
            )
            .await
            .map_err(backend_error)?;
        }
    }
    // Issue every request at once and wait once: the IndexedDB backend runs
    // in another process, so each awaited request would be a round trip.
    let [log, rest @ ..] = rows;
    let log_store = (!log.is_empty())
        .then(|| IdbStore::store(&tx, "change_log"))
        .transpose()?;
    // `add` fails if another tab already wrote this (author, seq): the
    // transaction then aborts, nothing is stored, and the writer retries.
    let adds = log.into_iter().filter_map(|(value, key)| {
        let log_store = log_store.as_ref()?;
        Some(async move { log_store.add(&value, key.as_ref()).await.map(|_| ()) })
    });
    let mut puts = Vec::new();
    for (name, rows) in names[1..].iter().zip(rest) {
        if !rows.is_empty() {
            let object_store = IdbStore::store(&tx, name)?;
            puts.push(async move { object_store.put_all(rows.into_iter()).await });
        }
    }
    // `join!` polls in order: every request is issued before `commit()`
    // tells IndexedDB that no more will come, which saves it waiting for
    // this tab to see the last result (a round trip between processes).
    let (added, put, committed) = futures::join!(
        futures::future::join_all(adds),
        futures::future::join_all(puts),
        tx.commit()
    );
    let constraint = |e: rexie::Error| {
        if format!("{e:?}").contains("ConstraintError") {
            StorageError::Conflict("another tab committed with the same sequence number".into())
        } else {
            backend_error(e)
        }
    };
    for result in added {
        result.map_err(constraint)?;
    }
    for result in put {
        result.map_err(backend_error)?;
    }
    // Acknowledged only once the transaction has completed.
    committed.map_err(constraint)
}

impl StorageBackend for IdbStore {
    fn describe(&self) -> String {
        format!("indexeddb:{}", self.name)
    }

    fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>> {
        Box::pin(async move {
            let tx = self.transaction(&["meta", "change_log"], TransactionMode::ReadOnly)?;
            let meta = Self::store(&tx, "meta")?;
            let log = Self::store(&tx, "change_log")?;
            // Every read issued at once: one round trip to the IndexedDB backend.
            let entry_gets = futures::future::join_all(
                MetaKey::ALL.map(|key| meta.get(JsValue::from_str(key.as_str()))),
            );
            let (id, heads, entry_values) = futures::join!(
                meta.get(JsValue::from_str("store_id")),
                read_heads(&log),
                entry_gets
            );
            let store_id = match id.map_err(backend_error)? {
                None => None,
                Some(value) => {
                    let text = value.as_string().ok_or_else(|| corrupt("store id"))?;
                    let mut bytes = [0u8; 16];
                    hex::decode_to_slice(&text, &mut bytes).map_err(|_| corrupt("store id"))?;
                    Some(StoreId::from_bytes(bytes))
                }
            };
            let (clock, heads) = heads?;
            let mut entries = std::collections::BTreeMap::new();
            for (key, value) in MetaKey::ALL.into_iter().zip(entry_values) {
                if let Some(value) = value.map_err(backend_error)? {
                    let bytes = value
                        .dyn_into::<Uint8Array>()
                        .map_err(|_| corrupt(key.as_str()))?;
                    entries.insert(key, bytes.to_vec());
                }
            }
            Ok(StoredMeta {
                store_id,
                clock,
                heads,
                entries,
            })
        })
    }

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(async move {
            // Record keys for the other tabs, gathered before the batch is consumed.
            let keys: Option<Vec<(String, String)>> = self.tabs.as_ref().map(|_| {
                let mut keys = batch.announce.clone().unwrap_or_else(|| {
                    batch
                        .records
                        .iter()
                        .map(|r| (r.collection.clone(), r.id.clone()))
                        .collect()
                });
                if keys.is_empty() && !batch.log.is_empty() {
                    // Commits with no record (events, keys): the tab that
                    // runs the P2P node still needs to hear of them.
                    keys.push((String::new(), String::new()));
                }
                keys
            });
            write_batch(self, batch).await?;
            if let (Some(tabs), Some(keys)) = (&self.tabs, keys) {
                tabs.announce(keys);
            }
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn external_changes(
        &self,
    ) -> Option<crate::platform::BoxStream<'static, Vec<(String, String)>>> {
        let receiver = self.tabs.as_ref()?.take_receiver()?;
        Some(Box::pin(receiver))
    }

    fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>> {
        Box::pin(async move {
            let tx = self.transaction(&["change_log"], TransactionMode::ReadOnly)?;
            Ok(read_heads(&Self::store(&tx, "change_log")?).await?.1)
        })
    }

    fn get_commit(
        &self,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        Box::pin(async move {
            let key = key2(&author.to_string(), &seq_number(seq)?);
            self.get_one("change_log", key)
                .await?
                .map(|row| commit_from(&row))
                .transpose()
        })
    }

    fn commits_after(
        &self,
        author: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        Box::pin(async move {
            let author = author.to_string();
            let lower = key2(&author, &seq_number(after_seq.min((1 << 53) - 1))?);
            let upper = key2(&author, &Array::new().into());
            self.collect("change_log", (lower, true), upper, limit, |_, value| {
                Ok(Take::Item(commit_from(&value)?))
            })
            .await
        })
    }

    fn get_record<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
        Box::pin(async move {
            let key = key2(collection, &JsValue::from_str(id));
            let row = self.get_one("records", key).await?;
            row.map(|row| record_from(collection, id.to_owned(), &row))
                .transpose()
        })
    }

    fn get_records<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, StorageResult<Vec<Option<RecordRow>>>> {
        Box::pin(async move {
            let values = self
                .get_many(
                    "records",
                    ids.iter()
                        .map(|id| key2(collection, &JsValue::from_str(id))),
                )
                .await?;
            ids.iter()
                .zip(values)
                .map(|(id, value)| {
                    value
                        .map(|value| record_from(collection, id.clone(), &value))
                        .transpose()
                })
                .collect()
        })
    }

    fn list_records<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
        Box::pin(async move {
            let (start, inclusive) = query_start(query);
            let lower = key2(collection, &JsValue::from_str(&start));
            let upper = key2(collection, &Array::new().into());
            let limit = query.limit.unwrap_or(usize::MAX);
            self.collect(
                "records",
                (lower, !inclusive),
                upper,
                limit,
                |key, value| {
                    let id = key_text(&key, 1, "record key")?;
                    // Ids with the prefix are contiguous: the first one without it ends the list.
                    if !query_admits(query, &id) {
                        return Ok(Take::Stop);
                    }
                    let row = record_from(collection, id, &value)?;
                    // Tombstones are not listed.
                    Ok(if row.value.is_some() {
                        Take::Item(row)
                    } else {
                        Take::Skip
                    })
                },
            )
            .await
        })
    }

    fn list_events<'a>(
        &'a self,
        log: &'a str,
        query: &'a EventQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>> {
        Box::pin(async move {
            let from = query.from.clone().unwrap_or_default();
            let (start, open) = match &query.after {
                Some(after) if *after >= from => (after.clone(), true),
                _ => (from, false),
            };
            let lower = key2(log, &JsValue::from_str(&start));
            let upper = key2(log, &Array::new().into());
            let limit = query.limit.unwrap_or(usize::MAX);
            self.collect("events", (lower, open), upper, limit, |key, value| {
                Ok(Take::Item(event_from(&key, &value)?))
            })
            .await
        })
    }

    fn get_kv<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
        Box::pin(async move {
            let row = self.get_one("kv", JsValue::from_str(key)).await?;
            row.map(|row| kv_from(key.to_owned(), &row)).transpose()
        })
    }

    fn get_kvs<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, StorageResult<Vec<Option<KvRow>>>> {
        Box::pin(async move {
            let values = self
                .get_many("kv", keys.iter().map(|key| JsValue::from_str(key)))
                .await?;
            keys.iter()
                .zip(values)
                .map(|(key, value)| value.map(|value| kv_from(key.clone(), &value)).transpose())
                .collect()
        })
    }

    fn list_kv<'a>(&'a self, query: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
        Box::pin(async move {
            let (start, inclusive) = query_start(query);
            let lower = JsValue::from_str(&start);
            // Every string sorts before an empty array.
            let upper: JsValue = Array::new().into();
            let limit = query.limit.unwrap_or(usize::MAX);
            self.collect("kv", (lower, !inclusive), upper, limit, |key, value| {
                let key = key.as_string().ok_or_else(|| corrupt("key"))?;
                if !query_admits(query, &key) {
                    return Ok(Take::Stop);
                }
                let row = kv_from(key, &value)?;
                // Tombstones are not listed.
                Ok(if row.value.is_some() {
                    Take::Item(row)
                } else {
                    Take::Skip
                })
            })
            .await
        })
    }

    fn scan<'a>(
        &'a self,
        table: Table,
        after: Option<&'a (String, String)>,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<ScanPage>> {
        Box::pin(async move {
            // Every key of these stores sorts before `[[]]` (arrays of
            // strings) or `[]` (strings).
            let pair_upper: JsValue = Array::of1(&Array::new()).into();
            let pair_lower = |(a, b): &(String, String)| key2(a, &JsValue::from_str(b));
            let start = after.map(pair_lower);
            let open = start.is_some();
            let rows = match table {
                Table::Records => {
                    let lower = start.unwrap_or_else(|| key2("", &JsValue::from_str("")));
                    self.collect("records", (lower, open), pair_upper, limit, |key, value| {
                        let collection = key_text(&key, 0, "record key")?;
                        let id = key_text(&key, 1, "record key")?;
                        Ok(Take::Item(AnyRow::Record(record_from(
                            &collection,
                            id,
                            &value,
                        )?)))
                    })
                    .await
                }
                Table::Events => {
                    let lower = start.unwrap_or_else(|| key2("", &JsValue::from_str("")));
                    self.collect("events", (lower, open), pair_upper, limit, |key, value| {
                        Ok(Take::Item(AnyRow::Event(event_from(&key, &value)?)))
                    })
                    .await
                }
                Table::Kv => {
                    let lower = JsValue::from_str(after.map_or("", |(_, k)| k.as_str()));
                    let upper: JsValue = Array::new().into();
                    self.collect("kv", (lower, open), upper, limit, |key, value| {
                        let key = key.as_string().ok_or_else(|| corrupt("key"))?;
                        Ok(Take::Item(AnyRow::Kv(kv_from(key, &value)?)))
                    })
                    .await
                }
            }?;
            Ok(ScanPage::by_position(rows))
        })
    }

    fn close(&self) -> BoxFuture<'_, StorageResult<()>> {
        if let Some(db) = self.db.borrow_mut().take() {
            db.close();
        }
        if let Some(tabs) = &self.tabs {
            tabs.close();
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

fn commit_from(row: &JsValue) -> StorageResult<SignedCommit> {
    let signature: [u8; 64] = bytes_field(row, "signature")?
        .try_into()
        .map_err(|_| corrupt("signature"))?;
    Ok(SignedCommit {
        body: bytes_field(row, "body")?,
        signature,
    })
}

/// The device's secrets in the store's own IndexedDB database, sealed with
/// a non-extractable WebCrypto key kept beside them (`device_key.rs`).
impl crate::keys::KeyStore for IdbStore {
    fn describe(&self) -> String {
        format!("indexeddb:{}#webcrypto", self.name)
    }

    fn load_or_create(&self) -> BoxFuture<'_, crate::Result<crate::identity::DeviceIdentity>> {
        Box::pin(super::device_key::identity(self))
    }

    fn load_keyring(
        &self,
        store: StoreId,
    ) -> BoxFuture<'_, crate::Result<Option<crate::crypto::Keyring>>> {
        Box::pin(super::device_key::load_keyring(self, store))
    }

    fn save_keyring<'a>(
        &'a self,
        keyring: &'a crate::crypto::Keyring,
    ) -> BoxFuture<'a, crate::Result<()>> {
        Box::pin(super::device_key::save_keyring(self, keyring))
    }
}

impl IdbStore {
    /// The value under `key` of `meta`.
    pub(super) async fn meta_get(&self, key: &str) -> StorageResult<Option<JsValue>> {
        self.get_one("meta", JsValue::from_str(key)).await
    }

    /// The values under several keys of `meta`, in one read.
    pub(super) async fn meta_get_many<const N: usize>(
        &self,
        keys: [&str; N],
    ) -> StorageResult<[Option<JsValue>; N]> {
        let values = self
            .get_many("meta", keys.iter().map(|k| JsValue::from_str(k)))
            .await?;
        values
            .try_into()
            .map_err(|_| StorageError::Backend("IndexedDB returned another count".into()))
    }

    /// Stores `value` under `key` of `meta` unless something is there
    /// already (another tab was first); returns what is stored afterwards.
    pub(super) async fn meta_put_new(&self, key: &str, value: &JsValue) -> StorageResult<JsValue> {
        let tx = self.transaction(&["meta"], TransactionMode::ReadWrite)?;
        let meta = Self::store(&tx, "meta")?;
        let key = JsValue::from_str(key);
        let stored = match meta.get(key.clone()).await.map_err(backend_error)? {
            Some(existing) => existing,
            None => {
                meta.put(value, Some(&key)).await.map_err(backend_error)?;
                value.clone()
            }
        };
        Self::finish(tx).await?;
        Ok(stored)
    }

    /// Stores `value` under `key` of `meta`, replacing it, and deletes `remove`.
    pub(super) async fn meta_put(
        &self,
        key: &str,
        value: &JsValue,
        remove: Option<&str>,
    ) -> StorageResult<()> {
        let tx = self.transaction(&["meta"], TransactionMode::ReadWrite)?;
        let meta = Self::store(&tx, "meta")?;
        meta.put(value, Some(&JsValue::from_str(key)))
            .await
            .map_err(backend_error)?;
        if let Some(remove) = remove {
            meta.delete(JsValue::from_str(remove))
                .await
                .map_err(backend_error)?;
        }
        Self::finish(tx).await
    }

    async fn finish(tx: rexie::Transaction) -> StorageResult<()> {
        let result = tx.done().await.map_err(backend_error)?;
        if !result.is_committed() {
            return Err(StorageError::Backend(
                "IndexedDB transaction was aborted".into(),
            ));
        }
        Ok(())
    }
}
