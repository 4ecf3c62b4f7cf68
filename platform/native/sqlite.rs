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
//! `STORAGE_CORRUPT`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, MutexGuard};

use futures::channel::oneshot;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::change::{SignedCommit, StoreId};
use crate::error::StorageError;
use crate::hlc::Hlc;
use crate::identity::DeviceId;
use crate::platform::BoxFuture;
use crate::storage::{
    query_admits, EventQuery, EventRow, KvRow, RecordQuery, RecordRow, StorageBackend,
    StorageResult, StoredMeta, WriteBatch,
};

/// `PRAGMA application_id` of Persist databases ("PRST").
pub(crate) const APPLICATION_ID: i32 = 0x5052_5354;

/// Numbered migrations; `user_version` is the number applied last.
const MIGRATIONS: &[(u32, &str)] = &[(1, include_str!("migrations/001_initial.sql"))];
const SCHEMA_VERSION: u32 = 1;
const READ_CONNECTIONS: usize = 2;
const WRITER_QUEUE: usize = 64;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A Persist store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<SyncSender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Vec<Mutex<Option<Connection>>>,
    /// An exclusive advisory lock on the database file: one process at a
    /// time owns a store, so per-device sequence numbers cannot fork.
    owner_lock: Mutex<Option<std::fs::File>>,
}

/// Maps a rusqlite error to the storage layer's error.
fn storage_error(e: rusqlite::Error) -> StorageError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                StorageError::Corrupt(e.to_string())
            }
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied => StorageError::Io(e.to_string()),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                StorageError::Locked(e.to_string())
            }
            _ => StorageError::Backend(e.to_string()),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StorageError::Corrupt(e.to_string()),
        _ => StorageError::Backend(e.to_string()),
    }
}

fn device_id(bytes: Vec<u8>) -> Result<DeviceId, StorageError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("author column is not 32 bytes".into()))?;
    Ok(DeviceId::from_bytes(array))
}

fn signature(bytes: Vec<u8>) -> Result<[u8; 64], StorageError> {
    bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("signature column is not 64 bytes".into()))
}

fn to_i64(v: u64) -> i64 {
    // Stamps and sequence numbers stay below 2^63 (48-bit milliseconds).
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative counter {v}")))
}

fn configure(conn: &Connection) -> StorageResult<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage_error)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// Checks that `path` is empty, absent or a Persist database this build can
/// open, without writing to it.
fn inspect(conn: &Connection) -> StorageResult<()> {
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(storage_error)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(storage_error)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(storage_error)?;
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(()); // a new, empty database
    }
    if app_id != APPLICATION_ID {
        return Err(StorageError::Corrupt(format!(
            "foreign SQLite database (application_id {app_id:#x}, {objects} schema objects)"
        )));
    }
    let version = u32::try_from(version)
        .map_err(|_| StorageError::Corrupt(format!("schema version {version}")))?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::VersionUnsupported {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> StorageResult<()> {
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(storage_error)?;
    let pending: Vec<_> = MIGRATIONS.iter().filter(|(v, _)| *v > current).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction().map_err(storage_error)?;
    for (version, sql) in pending {
        tx.execute_batch(sql).map_err(storage_error)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(storage_error)?;
        tracing::debug!(version, "applied SQLite migration");
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(storage_error)?;
    tx.commit().map_err(storage_error)
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
        let mut conn = Connection::open_with_flags(path, flags).map_err(storage_error)?;
        let owner_lock = lock_owner(path)?;
        configure(&conn)?;
        inspect(&conn)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(storage_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Io(format!(
                "cannot enable WAL journal (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage_error)?;
        migrate(&mut conn)?;

        let mut readers = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let reader = Connection::open_with_flags(path, flags).map_err(storage_error)?;
            configure(&reader)?;
            reader
                .pragma_update(None, "query_only", true)
                .map_err(storage_error)?;
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
    fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> StorageResult<R> {
        let mut guard = self.reader()?;
        let conn = guard.as_mut().ok_or(StorageError::Closed)?;
        f(conn).map_err(storage_error)
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
}

/// Takes the exclusive owner lock on the database file (an `flock`, which
/// does not interact with SQLite's own byte-range locks).
fn lock_owner(path: &Path) -> StorageResult<std::fs::File> {
    let file = std::fs::File::open(path)
        .map_err(|e| StorageError::Io(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked(format!(
            "{} is open in another process or store handle; close it first",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::Io(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Refuses a non-empty file that does not start with the SQLite header.
fn check_header(path: &Path) -> StorageResult<()> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StorageError::Io(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
    };
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => {
                return Err(StorageError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        }
    }
    if read == 0 || &header[..read] == b"SQLite format 3\0" {
        return Ok(());
    }
    Err(StorageError::Corrupt(format!(
        "{} is not a SQLite database",
        path.display()
    )))
}

fn write_batch(conn: &mut Connection, batch: WriteBatch) -> StorageResult<()> {
    let tx = conn.transaction().map_err(storage_error)?;
    {
        if let Some(id) = batch.store_id {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('store_id', ?1) ON CONFLICT (key) DO NOTHING",
                params![&id.as_bytes()[..]],
            )
            .map_err(storage_error)?;
        }
        if let Some(clock) = batch.clock {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('clock', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                params![to_i64(clock.as_u64())],
            )
            .map_err(storage_error)?;
        }
        let mut log = tx
            .prepare_cached(
                "INSERT INTO change_log (author, seq, hlc, body, signature) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (author, seq) DO NOTHING",
            )
            .map_err(storage_error)?;
        let mut heads = tx
            .prepare_cached(
                "INSERT INTO heads (author, seq) VALUES (?1, ?2)
                 ON CONFLICT (author) DO UPDATE SET seq = max(seq, excluded.seq)",
            )
            .map_err(storage_error)?;
        for entry in &batch.log {
            let author = &entry.author.as_bytes()[..];
            log.execute(params![
                author,
                to_i64(entry.seq),
                to_i64(entry.hlc.as_u64()),
                entry.commit.body,
                &entry.commit.signature[..]
            ])
            .map_err(storage_error)?;
            heads
                .execute(params![author, to_i64(entry.seq)])
                .map_err(storage_error)?;
        }
        let mut records = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO records (collection, id, value, hlc, author, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(storage_error)?;
        for row in &batch.records {
            records
                .execute(params![
                    row.collection,
                    row.id,
                    row.value,
                    to_i64(row.stamp.hlc.as_u64()),
                    &row.stamp.author.as_bytes()[..],
                    row.fields
                ])
                .map_err(storage_error)?;
        }
        let mut events = tx
            .prepare_cached(
                "INSERT INTO events (log, id, at, author, value) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (log, id) DO NOTHING",
            )
            .map_err(storage_error)?;
        for row in &batch.events {
            events
                .execute(params![
                    row.log,
                    row.id,
                    to_i64(row.at),
                    &row.author.as_bytes()[..],
                    row.value
                ])
                .map_err(storage_error)?;
        }
        let mut kv = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO kv (key, value, hlc, author) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(storage_error)?;
        for row in &batch.kv {
            kv.execute(params![
                row.key,
                row.value,
                to_i64(row.stamp.hlc.as_u64()),
                &row.stamp.author.as_bytes()[..]
            ])
            .map_err(storage_error)?;
        }
    }
    tx.commit().map_err(storage_error)
}

/// A record row as read, before its columns are checked.
struct RawRecord {
    row: RecordRow,
    hlc: i64,
    author: Vec<u8>,
}

fn record_row(collection: String, row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        row: RecordRow {
            collection,
            id: row.get("id")?,
            value: row.get("value")?,
            stamp: crate::change::Stamp {
                hlc: Hlc::ZERO,
                author: DeviceId::from_bytes([0; 32]),
            },
            fields: row.get("fields")?,
        },
        hlc: row.get("hlc")?,
        author: row.get("author")?,
    })
}

fn finish_record(raw: RawRecord) -> StorageResult<RecordRow> {
    let mut row = raw.row;
    row.stamp.hlc = Hlc::from_u64(from_i64(raw.hlc)?);
    row.stamp.author = device_id(raw.author)?;
    Ok(row)
}

fn kv_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>, i64, Vec<u8>)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn finish_kv(
    (key, value, hlc, author): (String, Option<String>, i64, Vec<u8>),
) -> StorageResult<KvRow> {
    let hlc = Hlc::from_u64(from_i64(hlc)?);
    Ok(KvRow {
        key,
        value,
        stamp: crate::change::Stamp {
            hlc,
            author: device_id(author)?,
        },
    })
}

/// Start of the id range for `query` and the SQL limit (-1: none).
fn range(query: &RecordQuery) -> (String, bool, i64) {
    let (start, inclusive) = match (&query.prefix, &query.after) {
        (Some(p), Some(a)) if a.as_str() >= p.as_str() => (a.clone(), false),
        (Some(p), _) => (p.clone(), true),
        (None, Some(a)) => (a.clone(), false),
        (None, None) => (String::new(), true),
    };
    let limit = query
        .limit
        .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
        .unwrap_or(-1);
    (start, inclusive, limit)
}

impl StorageBackend for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>> {
        let result = (|| {
            let rows: Vec<(String, rusqlite::types::Value)> = self.read(|c| {
                let mut stmt = c.prepare_cached("SELECT key, value FROM meta")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })?;
            let mut meta = StoredMeta::default();
            for (key, value) in rows {
                match (key.as_str(), value) {
                    ("store_id", rusqlite::types::Value::Blob(bytes)) => {
                        let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
                            StorageError::Corrupt("store id is not 16 bytes".into())
                        })?;
                        meta.store_id = Some(StoreId::from_bytes(bytes));
                    }
                    ("clock", rusqlite::types::Value::Integer(v)) => {
                        meta.clock = Hlc::from_u64(from_i64(v)?)
                    }
                    ("store_id" | "clock", _) => {
                        return Err(StorageError::Corrupt(format!(
                            "meta entry {key} has the wrong type"
                        )))
                    }
                    _ => {}
                }
            }
            Ok(meta)
        })();
        Box::pin(std::future::ready(result))
    }

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>> {
        self.on_writer(move |conn| write_batch(conn, batch))
    }

    fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>> {
        let result = self
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT author, seq FROM heads ORDER BY author")?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .and_then(|rows| {
                rows.into_iter()
                    .map(|(a, s)| Ok((device_id(a)?, from_i64(s)?)))
                    .collect()
            });
        Box::pin(std::future::ready(result))
    }

    fn get_commit(
        &self,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        let result = self
            .read(|c| {
                c.prepare_cached(
                    "SELECT body, signature FROM change_log WHERE author = ?1 AND seq = ?2",
                )?
                .query_row(params![&author.as_bytes()[..], to_i64(seq)], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            })
            .and_then(|row| {
                row.map(|(body, sig)| {
                    Ok(SignedCommit {
                        body,
                        signature: signature(sig)?,
                    })
                })
                .transpose()
            });
        Box::pin(std::future::ready(result))
    }

    fn commits_after(
        &self,
        author: DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = self
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT body, signature FROM change_log WHERE author = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![&author.as_bytes()[..], to_i64(after_seq), limit], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .and_then(|rows| {
                rows.into_iter().map(|(body, sig)| Ok(SignedCommit { body, signature: signature(sig)? })).collect()
            });
        Box::pin(std::future::ready(result))
    }

    fn get_record<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
        let result = self
            .read(|c| {
                c.prepare_cached(
                    "SELECT id, value, hlc, author, fields FROM records WHERE collection = ?1 AND id = ?2",
                )?
                .query_row(params![collection, id], |r| record_row(collection.to_owned(), r))
                .optional()
            })
            .and_then(|row| row.map(finish_record).transpose());
        Box::pin(std::future::ready(result))
    }

    fn list_records<'a>(
        &'a self,
        collection: &'a str,
        query: &'a RecordQuery,
    ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
        let (start, inclusive, limit) = range(query);
        let sql = if inclusive {
            "SELECT id, value, hlc, author, fields FROM records
             WHERE collection = ?1 AND id >= ?2 AND value IS NOT NULL ORDER BY id LIMIT ?3"
        } else {
            "SELECT id, value, hlc, author, fields FROM records
             WHERE collection = ?1 AND id > ?2 AND value IS NOT NULL ORDER BY id LIMIT ?3"
        };
        let result = self
            .read(|c| {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(params![collection, start, limit])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let id: String = row.get("id")?;
                    // Ids with the prefix are contiguous: the first one without it ends the list.
                    if !query_admits(query, &id) {
                        break;
                    }
                    out.push(record_row(collection.to_owned(), row)?);
                }
                Ok(out)
            })
            .and_then(|rows| rows.into_iter().map(finish_record).collect());
        Box::pin(std::future::ready(result))
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
        let result = self
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, at, author, value FROM events
                     WHERE log = ?1 AND id >= ?2 AND id > ?3 ORDER BY id LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![log, from, after, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .and_then(|rows| {
                rows.into_iter()
                    .map(|(id, at, author, value)| {
                        Ok(EventRow {
                            log: log.to_owned(),
                            id,
                            at: from_i64(at)?,
                            author: device_id(author)?,
                            value,
                        })
                    })
                    .collect()
            });
        Box::pin(std::future::ready(result))
    }

    fn get_kv<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
        let result = self
            .read(|c| {
                c.prepare_cached("SELECT key, value, hlc, author FROM kv WHERE key = ?1")?
                    .query_row(params![key], kv_row)
                    .optional()
            })
            .and_then(|row| row.map(finish_kv).transpose());
        Box::pin(std::future::ready(result))
    }

    fn list_kv<'a>(&'a self, query: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
        let (start, inclusive, limit) = range(query);
        let sql = if inclusive {
            "SELECT key, value, hlc, author FROM kv WHERE key >= ?1 AND value IS NOT NULL ORDER BY key LIMIT ?2"
        } else {
            "SELECT key, value, hlc, author FROM kv WHERE key > ?1 AND value IS NOT NULL ORDER BY key LIMIT ?2"
        };
        let result = self
            .read(|c| {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(params![start, limit])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let parts = kv_row(row)?;
                    if !query_admits(query, &parts.0) {
                        break;
                    }
                    out.push(parts);
                }
                Ok(out)
            })
            .and_then(|rows| rows.into_iter().map(finish_kv).collect());
        Box::pin(std::future::ready(result))
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
