//! SQLite storage: WAL journal, `synchronous=FULL`, versioned migrations.
//!
//! Writes run on one writer thread that owns the write connection (an actor:
//! callers send a job and await its reply), so a batch's fsync never blocks
//! an async executor. Point reads and listings run inline on a small pool of
//! read connections: WAL lets them read the last committed state while the
//! writer works, and a microsecond query is cheaper than a thread hop.
//!
//! Opening never writes to a file it does not recognize: the header, the
//! `application_id` and the schema version are checked before WAL mode or a
//! migration touches anything, and damaged or foreign files give
//! `STORAGE_CORRUPT`. One process owns a store at a time (an `flock` on the
//! file), so a device's sequence numbers cannot fork.
//!
//! Layout decisions (see `migrations/001_initial.sql`): authors are small
//! integers; the change log's rowid packs `(author, seq)`, so a commit costs
//! one b-tree insert and an author's head is one probe; the store's clock is
//! derived from the log instead of being rewritten on every commit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::oneshot;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::change::{SignedCommit, Stamp, StoreId};
use crate::error::StorageError;
use crate::hlc::Hlc;
use crate::identity::DeviceId;
use crate::platform::BoxFuture;
use crate::storage::{
    query_admits, query_start, AnyRow, EventQuery, EventRow, KvRow, MetaKey, RecordQuery,
    RecordRow, ScanPage, StorageBackend, StorageResult, StoredMeta, Table, WriteBatch,
};

mod authors;
mod open;
mod write;

use authors::Authors;
use open::Sql;
use open::{check_header, configure, inspect, migrate};
pub(crate) use open::{lock_owner, storage_error};

/// Numbered migrations; `user_version` is the number applied last.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("migrations/001_initial.sql")),
    (2, include_str!("migrations/002_hashed_layout.sql")),
];
const SCHEMA_VERSION: u32 = 2;
const READ_CONNECTIONS: usize = 2;
const WRITER_QUEUE: usize = 64;
/// Page size of new databases. Measured (BENCHMARKS.md): 8 KiB beats 4 KiB on
/// bulk inserts (a 1,000-write commit's log entry spans fewer pages) and
/// beats 16 KiB on scattered small commits (each dirty page is a WAL frame).
const PAGE_SIZE: i64 = 8192;
/// Sequence numbers take the low 40 bits of a change-log rowid.
const SEQ_BITS: u32 = 40;
const SEQ_MASK: i64 = (1 << SEQ_BITS) - 1;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A Persist store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<SyncSender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Vec<Mutex<Option<Connection>>>,
    authors: Arc<Authors>,
    /// An exclusive advisory lock on the database file, held until close.
    owner_lock: Mutex<Option<std::fs::File>>,
    /// Names are keyed hashes: records and keys live in the `hashed_*`
    /// tables (write order, hash indexed).
    hashed: AtomicBool,
}

/// The record and key tables in use.
#[derive(Clone, Copy)]
pub(super) struct Tables {
    records: &'static str,
    kv: &'static str,
}

impl Tables {
    const PLAIN: Tables = Tables {
        records: "records",
        kv: "kv",
    };
    const HASHED: Tables = Tables {
        records: "hashed_records",
        kv: "hashed_kv",
    };
}

fn to_i64(v: u64) -> i64 {
    // Stamps stay below 2^63 (48-bit milliseconds); sequence numbers below 2^40.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> StorageResult<u64> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative counter {v}")))
}

fn log_key(author: i64, seq: u64) -> StorageResult<i64> {
    let seq = i64::try_from(seq).ok().filter(|s| *s <= SEQ_MASK && *s > 0);
    match seq {
        Some(seq) if author > 0 && author < (1 << (62 - SEQ_BITS)) => {
            Ok((author << SEQ_BITS) | seq)
        }
        _ => Err(StorageError::Backend("sequence number out of range".into())),
    }
}

fn signature(bytes: Vec<u8>) -> StorageResult<[u8; 64]> {
    bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("signature column is not 64 bytes".into()))
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> StorageResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        check_header(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).sql()?;
        let owner_lock = lock_owner(path)?;
        configure(&conn)?;
        if inspect(&conn)? {
            conn.pragma_update(None, "page_size", PAGE_SIZE).sql()?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .sql()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Io(format!(
                "cannot enable WAL journal (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL").sql()?;
        migrate(&mut conn, MIGRATIONS)?;

        let mut readers = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let reader = Connection::open_with_flags(path, flags).sql()?;
            configure(&reader)?;
            reader.pragma_update(None, "query_only", true).sql()?;
            readers.push(Mutex::new(Some(reader)));
        }

        let (sender, receiver) = sync_channel::<Job>(WRITER_QUEUE);
        let thread = std::thread::Builder::new()
            .name("persist-sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    job(&mut conn);
                }
                // Dropping the connection checkpoints the WAL when it is the last one.
                drop(conn);
            })
            .map_err(|e| StorageError::Io(format!("cannot start writer thread: {e}")))?;

        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(thread)),
            readers,
            authors: Arc::new(Authors::default()),
            hashed: AtomicBool::new(false),
            owner_lock: Mutex::new(Some(owner_lock)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on the writer thread and awaits its result.
    fn on_writer<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> StorageResult<R> + Send + 'static,
    ) -> BoxFuture<'_, StorageResult<R>> {
        let (tx, rx) = oneshot::channel();
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::pin(async move {
            let sender = sender.ok_or(StorageError::Closed)?;
            let job: Job = Box::new(move |conn| {
                let _ = tx.send(job(conn));
            });
            sender.send(job).map_err(|_| StorageError::Closed)?;
            rx.await.map_err(|_| StorageError::Closed)?
        })
    }

    /// Runs a read on a pooled read connection, inline.
    fn read<R>(&self, f: impl FnOnce(&Connection) -> StorageResult<R>) -> StorageResult<R> {
        let mut guard = self.reader()?;
        let conn = guard.as_mut().ok_or(StorageError::Closed)?;
        f(conn)
    }

    fn reader(&self) -> StorageResult<MutexGuard<'_, Option<Connection>>> {
        for slot in &self.readers {
            if let Ok(guard) = slot.try_lock() {
                return Ok(guard);
            }
        }
        let first = self.readers.first().ok_or(StorageError::Closed)?;
        Ok(first.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A stamp from its columns; `memo` remembers the last author looked up,
    /// since consecutive rows of a listing usually share one.
    fn stamp(
        &self,
        conn: &Connection,
        memo: &mut Option<(i64, DeviceId)>,
        hlc: i64,
        author: i64,
    ) -> StorageResult<Stamp> {
        let device = match *memo {
            Some((id, device)) if id == author => device,
            _ => {
                let device = self.authors.device(conn, author)?;
                *memo = Some((author, device));
                device
            }
        };
        Ok(Stamp {
            hlc: Hlc::from_u64(from_i64(hlc)?),
            author: device,
        })
    }

    /// `(device, head row of the change log)` for every author.
    fn heads(&self, conn: &Connection) -> StorageResult<Vec<(DeviceId, i64, i64)>> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT a.device, h.id, h.hlc_last FROM authors a
                 JOIN change_log h ON h.id = (SELECT max(c.id) FROM change_log c
                                              WHERE c.id BETWEEN (a.id << 40) AND (a.id << 40) + ?1)
                 ORDER BY a.device",
            )
            .sql()?;
        let rows = stmt
            .query_map(params![SEQ_MASK], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?))
            })
            .sql()?;
        rows.map(|row| {
            let (device, id, hlc) = row.sql()?;
            Ok((authors::device_id(device)?, id, hlc))
        })
        .collect()
    }
}

const RECORD_COLUMNS: &str = "id, value, hlc, author, fields";

impl SqliteStore {
    /// Record rows of `collection` by id (tombstones included), in order.
    fn records_by_id<'i>(
        &self,
        c: &Connection,
        collection: &str,
        ids: impl IntoIterator<Item = &'i str>,
    ) -> StorageResult<Vec<Option<RecordRow>>> {
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM {} WHERE collection = ?1 AND id = ?2",
                self.tables().records
            ))
            .sql()?;
        let mut memo = None;
        let mut out = Vec::new();
        for id in ids {
            let mut rows = stmt.query(params![collection, id]).sql()?;
            out.push(match rows.next().sql()? {
                Some(row) => Some(self.record(c, &mut memo, collection, row)?),
                None => None,
            });
        }
        Ok(out)
    }

    /// Key rows by key (tombstones included), in order.
    fn kv_by_key<'i>(
        &self,
        c: &Connection,
        keys: impl IntoIterator<Item = &'i str>,
    ) -> StorageResult<Vec<Option<KvRow>>> {
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT key, value, hlc, author FROM {} WHERE key = ?1",
                self.tables().kv
            ))
            .sql()?;
        let mut memo = None;
        let mut out = Vec::new();
        for key in keys {
            let mut rows = stmt.query(params![key]).sql()?;
            out.push(match rows.next().sql()? {
                Some(row) => Some(self.kv_row(c, &mut memo, row)?),
                None => None,
            });
        }
        Ok(out)
    }

    fn tables(&self) -> Tables {
        if self.hashed.load(Ordering::Relaxed) {
            Tables::HASHED
        } else {
            Tables::PLAIN
        }
    }

    fn record(
        &self,
        conn: &Connection,
        memo: &mut Option<(i64, DeviceId)>,
        collection: &str,
        row: &rusqlite::Row<'_>,
    ) -> StorageResult<RecordRow> {
        Ok(RecordRow {
            collection: collection.to_owned(),
            id: row.get(0).sql()?,
            value: row.get(1).sql()?,
            stamp: self.stamp(conn, memo, row.get(2).sql()?, row.get(3).sql()?)?,
            fields: row.get(4).sql()?,
        })
    }

    /// An event of `log` from a row of `id, at, author, value`.
    fn event_row(
        &self,
        conn: &Connection,
        log: String,
        row: &rusqlite::Row<'_>,
    ) -> StorageResult<EventRow> {
        Ok(EventRow {
            log,
            id: row.get(0).sql()?,
            at: from_i64(row.get(1).sql()?)?,
            author: self.authors.device(conn, row.get(2).sql()?)?,
            value: row.get(3).sql()?,
        })
    }

    fn kv_row(
        &self,
        conn: &Connection,
        memo: &mut Option<(i64, DeviceId)>,
        row: &rusqlite::Row<'_>,
    ) -> StorageResult<KvRow> {
        Ok(KvRow {
            key: row.get(0).sql()?,
            value: row.get(1).sql()?,
            stamp: self.stamp(conn, memo, row.get(2).sql()?, row.get(3).sql()?)?,
        })
    }
}

/// Start of the id range for `query`, whether it is inclusive, and the SQL
/// limit (-1: none).
fn range(query: &RecordQuery) -> (String, bool, i64) {
    let (start, inclusive) = query_start(query);
    let limit = query
        .limit
        .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
        .unwrap_or(-1);
    (start, inclusive, limit)
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl StorageBackend for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>> {
        ready(self.read(|c| {
            let store_id: Option<Vec<u8>> = c
                .prepare_cached("SELECT value FROM meta WHERE key = 'store_id'")
                .sql()?
                .query_row([], |r| r.get(0))
                .optional()
                .sql()?;
            let store_id = store_id
                .map(|bytes| {
                    let bytes: [u8; 16] = bytes
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("store id is not 16 bytes".into()))?;
                    Ok::<_, StorageError>(StoreId::from_bytes(bytes))
                })
                .transpose()?;
            let (mut clock, mut heads) = (Hlc::ZERO, Vec::new());
            for (device, id, hlc) in self.heads(c)? {
                clock = clock.max(Hlc::from_u64(from_i64(hlc)?));
                heads.push((device, from_i64(id & SEQ_MASK)?));
            }
            let mut entries = std::collections::BTreeMap::new();
            for key in MetaKey::ALL {
                let value: Option<Vec<u8>> = c
                    .prepare_cached("SELECT value FROM meta WHERE key = ?1")
                    .sql()?
                    .query_row(params![key.as_str()], |r| r.get(0))
                    .optional()
                    .sql()?;
                if let Some(value) = value {
                    entries.insert(key, value);
                }
            }
            Ok(StoredMeta {
                store_id,
                clock,
                heads,
                entries,
            })
        }))
    }

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>> {
        let authors = self.authors.clone();
        let tables = self.tables();
        self.on_writer(move |conn| write::write_batch(conn, &authors, tables, batch))
    }

    fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>> {
        ready(self.read(|c| {
            self.heads(c)?
                .into_iter()
                .map(|(device, id, _)| Ok((device, from_i64(id & SEQ_MASK)?)))
                .collect()
        }))
    }

    fn get_commit(
        &self,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        ready(self.read(|c| {
            let Some(author) = self.authors.lookup(c, author)? else {
                return Ok(None);
            };
            let row: Option<(Vec<u8>, Vec<u8>)> = c
                .prepare_cached("SELECT body, signature FROM change_log WHERE id = ?1")
                .sql()?
                .query_row(params![log_key(author, seq)?], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .sql()?;
            row.map(|(body, sig)| {
                Ok(SignedCommit {
                    body,
                    signature: signature(sig)?,
                })
            })
            .transpose()
        }))
    }

    fn commits_after(
        &self,
        author: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        ready(self.read(|c| {
            let Some(author) = self.authors.lookup(c, author)? else {
                return Ok(Vec::new());
            };
            let from = (author << SEQ_BITS) | (to_i64(after_seq).min(SEQ_MASK));
            let to = (author << SEQ_BITS) | SEQ_MASK;
            let mut stmt = c
                .prepare_cached(
                    "SELECT body, signature FROM change_log WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
                )
                .sql()?;
            let rows = stmt
                .query_map(params![from, to, limit], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .sql()?;
            rows.map(|row| {
                let (body, sig) = row.sql()?;
                Ok(SignedCommit { body, signature: signature(sig)? })
            })
            .collect()
        }))
    }

    fn get_record<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
        ready(
            self.read(|c| self.records_by_id(c, collection, [id]))
                .map(|rows| rows.into_iter().next().flatten()),
        )
    }

    fn get_records<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, StorageResult<Vec<Option<RecordRow>>>> {
        ready(self.read(|c| self.records_by_id(c, collection, ids.iter().map(String::as_str))))
    }

    fn list_records<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
        let (start, inclusive, limit) = range(query);
        let op = if inclusive { ">=" } else { ">" };
        ready(self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM {} \
                     WHERE collection = ?1 AND id {op} ?2 AND value IS NOT NULL ORDER BY id LIMIT ?3",
                    self.tables().records
                ))
                .sql()?;
            let mut rows = stmt.query(params![collection, start, limit]).sql()?;
            let (mut out, mut memo) = (Vec::new(), None);
            while let Some(row) = rows.next().sql()? {
                let record = self.record(c, &mut memo, collection, row)?;
                // Ids with the prefix are contiguous: the first one without it ends the list.
                if !query_admits(query, &record.id) {
                    break;
                }
                out.push(record);
            }
            Ok(out)
        }))
    }

    fn list_events<'a>(
        &'a self,
        log: &'a str,
        query: &'a EventQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>> {
        let limit = query
            .limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        let from = query.from.clone().unwrap_or_default();
        let after = query.after.clone().unwrap_or_default();
        ready(self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, at, author, value FROM events
                     WHERE log = ?1 AND id >= ?2 AND id > ?3 ORDER BY id LIMIT ?4",
                )
                .sql()?;
            let mut rows = stmt.query(params![log, from, after, limit]).sql()?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().sql()? {
                out.push(self.event_row(c, log.to_owned(), row)?);
            }
            Ok(out)
        }))
    }

    fn get_kv<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
        ready(
            self.read(|c| self.kv_by_key(c, [key]))
                .map(|rows| rows.into_iter().next().flatten()),
        )
    }

    fn get_kvs<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, StorageResult<Vec<Option<KvRow>>>> {
        ready(self.read(|c| self.kv_by_key(c, keys.iter().map(String::as_str))))
    }

    fn list_kv<'a>(&'a self, query: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
        let (start, inclusive, limit) = range(query);
        let op = if inclusive { ">=" } else { ">" };
        ready(self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT key, value, hlc, author FROM {} WHERE key {op} ?1 AND value IS NOT NULL ORDER BY key LIMIT ?2",
                    self.tables().kv
                ))
                .sql()?;
            let mut rows = stmt.query(params![start, limit]).sql()?;
            let (mut out, mut memo) = (Vec::new(), None);
            while let Some(row) = rows.next().sql()? {
                let kv = self.kv_row(c, &mut memo, row)?;
                if !query_admits(query, &kv.key) {
                    break;
                }
                out.push(kv);
            }
            Ok(out)
        }))
    }

    fn scan<'a>(
        &'a self,
        table: Table,
        after: Option<&'a (String, String)>,
        limit: usize,
    ) -> BoxFuture<'a, StorageResult<ScanPage>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Plain tables: (first, second) > after in primary-key order (names
        // and ids are never empty, so ("", "") starts before every row).
        // Hashed tables: rowid order (write order, so a pass reads pages in
        // sequence); the cursor is ("", rowid).
        let (first, second) = after.cloned().unwrap_or_default();
        let hashed = self.hashed.load(Ordering::Relaxed);
        let by_rowid = hashed && table != Table::Events;
        let after_rowid: StorageResult<i64> = if by_rowid && !second.is_empty() {
            second
                .parse()
                .map_err(|_| StorageError::Corrupt(format!("scan cursor {second:?}")))
        } else {
            Ok(0)
        };
        let tables = self.tables();
        ready(self.read(|c| {
            let after_rowid = after_rowid?;
            let (mut rows_out, mut memo, mut last_rowid) = (Vec::new(), None, None);
            match table {
                Table::Records => {
                    let sql = if hashed {
                        format!(
                            "SELECT {RECORD_COLUMNS}, collection, rowid FROM {} \
                             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                            tables.records
                        )
                    } else {
                        format!(
                            "SELECT {RECORD_COLUMNS}, collection, 0 FROM {} \
                             WHERE (collection, id) > (?1, ?2) ORDER BY collection, id LIMIT ?3",
                            tables.records
                        )
                    };
                    let mut stmt = c.prepare_cached(&sql).sql()?;
                    let mut rows = if hashed {
                        stmt.query(params![after_rowid, limit]).sql()?
                    } else {
                        stmt.query(params![first, second, limit]).sql()?
                    };
                    while let Some(row) = rows.next().sql()? {
                        let collection: String = row.get(5).sql()?;
                        last_rowid = Some(row.get::<_, i64>(6).sql()?);
                        rows_out.push(AnyRow::Record(self.record(
                            c,
                            &mut memo,
                            &collection,
                            row,
                        )?));
                    }
                }
                Table::Events => {
                    let mut stmt = c
                        .prepare_cached(
                            "SELECT id, at, author, value, log FROM events
                             WHERE (log, id) > (?1, ?2) ORDER BY log, id LIMIT ?3",
                        )
                        .sql()?;
                    let mut rows = stmt.query(params![first, second, limit]).sql()?;
                    while let Some(row) = rows.next().sql()? {
                        let log: String = row.get(4).sql()?;
                        rows_out.push(AnyRow::Event(self.event_row(c, log, row)?));
                    }
                    // Events are clustered by (hashed log, time-ordered id)
                    // in both layouts.
                    return Ok(ScanPage::by_position(rows_out));
                }
                Table::Kv => {
                    let sql = if hashed {
                        format!(
                            "SELECT key, value, hlc, author, rowid FROM {} \
                             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                            tables.kv
                        )
                    } else {
                        format!(
                            "SELECT key, value, hlc, author, 0 FROM {} \
                             WHERE key > ?1 ORDER BY key LIMIT ?2",
                            tables.kv
                        )
                    };
                    let mut stmt = c.prepare_cached(&sql).sql()?;
                    let mut rows = if hashed {
                        stmt.query(params![after_rowid, limit]).sql()?
                    } else {
                        stmt.query(params![second, limit]).sql()?
                    };
                    while let Some(row) = rows.next().sql()? {
                        last_rowid = Some(row.get::<_, i64>(4).sql()?);
                        rows_out.push(AnyRow::Kv(self.kv_row(c, &mut memo, row)?));
                    }
                }
            }
            if hashed {
                let last = last_rowid.map(|rowid| (String::new(), rowid.to_string()));
                Ok(ScanPage {
                    rows: rows_out,
                    last,
                })
            } else {
                Ok(ScanPage::by_position(rows_out))
            }
        }))
    }

    fn hashed_names(&self) {
        self.hashed.store(true, Ordering::Relaxed);
    }

    fn close(&self) -> BoxFuture<'_, StorageResult<()>> {
        for slot in &self.readers {
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        // Dropping the sender ends the writer loop after queued jobs finish.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Box::pin(async move {
            if let Some(thread) = thread {
                // Joining blocks briefly while the last batch and the WAL checkpoint finish.
                thread
                    .join()
                    .map_err(|_| StorageError::Backend("writer thread panicked".into()))?;
            }
            // Only now may another owner open the file.
            self.owner_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            Ok(())
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
