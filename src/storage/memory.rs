//! An in-memory backend: the reference implementation of the storage
//! contract, used by tests and for ephemeral stores (`adapter: "memory"`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::{
    query_admits, AnyRow, EventQuery, EventRow, KvRow, RecordQuery, RecordRow, ScanPage,
    StorageBackend, StorageResult, StoredMeta, Table, WriteBatch,
};
use crate::change::SignedCommit;
use crate::error::StorageError;
use crate::identity::DeviceId;
use crate::platform::BoxFuture;

#[derive(Default)]
struct Tables {
    closed: bool,
    meta: StoredMeta,
    log: BTreeMap<(DeviceId, u64), SignedCommit>,
    records: BTreeMap<(String, String), RecordRow>,
    events: BTreeMap<(String, String), EventRow>,
    kv: BTreeMap<String, KvRow>,
}

/// A store kept in memory; gone when dropped.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn tables(&self) -> StorageResult<MutexGuard<'_, Tables>> {
        // A poisoned lock means a panic mid-write elsewhere; the maps are
        // only mutated after validation, so their content is still whole.
        let guard = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.closed {
            return Err(StorageError::Closed);
        }
        Ok(guard)
    }
}

fn ready<'a, T: 'a + crate::platform::MaybeSend>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// The highest sequence number per author.
fn heads(t: &Tables) -> Vec<(DeviceId, u64)> {
    let mut heads: BTreeMap<DeviceId, u64> = BTreeMap::new();
    for (author, seq) in t.log.keys() {
        heads.insert(*author, *seq);
    }
    heads.into_iter().collect()
}

fn range_start(collection: &str, query: &RecordQuery) -> (String, String) {
    let start = match (&query.prefix, &query.after) {
        (Some(p), Some(a)) if a.as_str() > p.as_str() => a.clone(),
        (Some(p), _) => p.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => String::new(),
    };
    (collection.to_owned(), start)
}

impl StorageBackend for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>> {
        ready(self.tables().map(|t| StoredMeta {
            heads: heads(&t),
            ..t.meta.clone()
        }))
    }

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>> {
        let result = self.tables().and_then(|mut t| {
            if batch.clear {
                t.log.clear();
                t.records.clear();
                t.events.clear();
                t.kv.clear();
                t.meta.entries.clear();
            }
            match (t.meta.store_id, batch.store_id) {
                (None, id) => t.meta.store_id = id,
                (Some(_), Some(id)) if batch.adopt_store_id => t.meta.store_id = Some(id),
                (Some(stored), Some(id)) if stored != id => {
                    return Err(StorageError::Conflict(
                        "the store already has another id".into(),
                    ))
                }
                _ => {}
            }
            if let Some(clock) = batch.clock {
                t.meta.clock = t.meta.clock.max(clock);
            }
            for entry in batch.log {
                t.log
                    .entry((entry.author, entry.seq))
                    .or_insert(entry.commit);
            }
            for row in batch.records {
                t.records
                    .insert((row.collection.clone(), row.id.clone()), row);
            }
            for row in batch.events {
                let key = (row.log.clone(), row.id.clone());
                if batch.replace_events {
                    t.events.insert(key, row);
                } else {
                    t.events.entry(key).or_insert(row);
                }
            }
            for (key, value) in batch.meta {
                t.meta.entries.insert(key, value);
            }
            for row in batch.kv {
                t.kv.insert(row.key.clone(), row);
            }
            Ok(())
        });
        ready(result)
    }

    fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>> {
        ready(self.tables().map(|t| heads(&t)))
    }

    fn get_commit(
        &self,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        ready(self.tables().map(|t| t.log.get(&(author, seq)).cloned()))
    }

    fn commits_after(
        &self,
        author: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        let result = self.tables().map(|t| {
            t.log
                .range((
                    Bound::Excluded((author, after_seq)),
                    Bound::Included((author, u64::MAX)),
                ))
                .take(limit)
                .map(|(_, c)| c.clone())
                .collect()
        });
        ready(result)
    }

    fn get_record<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
        ready(self.tables().map(|t| {
            t.records
                .get(&(collection.to_owned(), id.to_owned()))
                .cloned()
        }))
    }

    fn list_records<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
        let result = self.tables().map(|t| {
            t.records
                .range(range_start(collection, query)..)
                .take_while(|((c, id), _)| {
                    c == collection && query.prefix.as_deref().is_none_or(|p| id.starts_with(p))
                })
                .filter(|((_, id), row)| row.value.is_some() && query_admits(query, id))
                .take(query.limit.unwrap_or(usize::MAX))
                .map(|(_, row)| row.clone())
                .collect()
        });
        ready(result)
    }

    fn list_events<'a>(
        &'a self,
        log: &'a str,
        query: &'a EventQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>> {
        let result = self.tables().map(|t| {
            let start = query.from.clone().unwrap_or_default();
            t.events
                .range((log.to_owned(), start)..)
                .take_while(|((l, _), _)| l == log)
                .filter(|((_, id), _)| query.after.as_deref().is_none_or(|a| id.as_str() > a))
                .take(query.limit.unwrap_or(usize::MAX))
                .map(|(_, row)| row.clone())
                .collect()
        });
        ready(result)
    }

    fn get_kv<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
        ready(self.tables().map(|t| t.kv.get(key).cloned()))
    }

    fn list_kv<'a>(&'a self, query: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
        let result = self.tables().map(|t| {
            let (_, start) = range_start("", query);
            t.kv.range(start..)
                .take_while(|(k, _)| query.prefix.as_deref().is_none_or(|p| k.starts_with(p)))
                .filter(|(k, row)| row.value.is_some() && query_admits(query, k))
                .take(query.limit.unwrap_or(usize::MAX))
                .map(|(_, row)| row.clone())
                .collect()
        });
        ready(result)
    }

    fn scan<'a>(
        &'a self,
        table: Table,
        after: Option<&'a (String, String)>,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<ScanPage>> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let result = self.tables().map(|t| match table {
            Table::Records => t
                .records
                .range((start, Bound::Unbounded))
                .take(limit)
                .map(|(_, r)| AnyRow::Record(r.clone()))
                .collect(),
            Table::Events => t
                .events
                .range((start, Bound::Unbounded))
                .take(limit)
                .map(|(_, e)| AnyRow::Event(e.clone()))
                .collect(),
            Table::Kv => {
                let start = after.map_or(Bound::Unbounded, |(_, k)| Bound::Excluded(k.clone()));
                t.kv.range((start, Bound::Unbounded))
                    .take(limit)
                    .map(|(_, k)| AnyRow::Kv(k.clone()))
                    .collect()
            }
        });
        ready(result.map(ScanPage::by_position))
    }

    fn close(&self) -> BoxFuture<'_, StorageResult<()>> {
        let mut guard = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.closed = true;
        ready(Ok(()))
    }
}
