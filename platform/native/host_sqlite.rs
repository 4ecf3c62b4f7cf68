//! A sync server's storage in one SQLite file ([`HostStorage`]): spaces
//! with their membership logs, and commits as received (ciphertext and
//! signature). WAL journal, `synchronous=FULL`: a write is on disk when
//! its future completes. One connection behind a mutex, used from
//! blocking threads; the server's storage work is already off its loop.
//! One server process owns the file (an advisory lock: a second is
//! refused `STORAGE_LOCKED`); several processes share a PostgreSQL
//! database instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::change::{SignedCommit, StoreId};
use crate::error::StorageError;
use crate::host::stored::{commit as signed, count, device, hash, number};
use crate::host::{
    Changed, Head, HostStats, HostStorage, HostedCommit, SpaceId, StoredSpace, Usage,
};
use crate::identity::DeviceId;
use crate::platform::{BoxFuture, BoxStream};
use crate::storage::StorageResult;

use super::sqlite::{lock_owner, storage_error};

/// `PRAGMA application_id` of sync-server databases ("PRSV").
const APPLICATION_ID: i32 = 0x5052_5356;
const SCHEMA_VERSION: i32 = 1;
const SCHEMA: &str = "
CREATE TABLE spaces (
    id INTEGER PRIMARY KEY,
    store BLOB NOT NULL,
    founder BLOB NOT NULL,
    log BLOB NOT NULL,
    UNIQUE (store, founder)
);
CREATE TABLE commits (
    space INTEGER NOT NULL,
    author BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (space, author, seq)
) WITHOUT ROWID;
";

/// A sync server's storage in a SQLite file.
pub struct SqliteHost {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// An exclusive advisory lock on the file: one server process per
    /// SQLite database (several share a PostgreSQL one instead).
    _owner: std::fs::File,
}

fn sql<T>(result: rusqlite::Result<T>) -> StorageResult<T> {
    result.map_err(|e| match &e {
        // A number stored twice.
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StorageError::Conflict(e.to_string())
        }
        _ => storage_error(e),
    })
}

impl SqliteHost {
    /// Opens (creating it if needed) the server database at `path`. A file
    /// that is not one refuses with `STORAGE_CORRUPT`, untouched.
    pub fn open(path: &Path) -> StorageResult<SqliteHost> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Io(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = sql(Connection::open(path))?;
        let owner = lock_owner(path)?;
        let app_id: i32 = sql(conn.pragma_query_value(None, "application_id", |r| r.get(0)))?;
        let objects: i64 =
            sql(conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)))?;
        if app_id != APPLICATION_ID && (app_id != 0 || objects != 0) {
            return Err(StorageError::Corrupt(format!(
                "{} is not a sync server's database (application_id {app_id:#x})",
                path.display()
            )));
        }
        sql(conn.pragma_update(None, "journal_mode", "WAL"))?;
        sql(conn.pragma_update(None, "synchronous", "FULL"))?;
        sql(conn.busy_timeout(std::time::Duration::from_secs(5)))?;
        let version: i32 = sql(conn.pragma_query_value(None, "user_version", |r| r.get(0)))?;
        match version {
            0 => {
                let tx = sql(conn.transaction())?;
                sql(tx.execute_batch(SCHEMA))?;
                sql(tx.pragma_update(None, "user_version", SCHEMA_VERSION))?;
                sql(tx.pragma_update(None, "application_id", APPLICATION_ID))?;
                sql(tx.commit())?;
            }
            SCHEMA_VERSION => {}
            found => {
                return Err(StorageError::VersionUnsupported {
                    found: found as u32,
                    supported: SCHEMA_VERSION as u32,
                })
            }
        }
        Ok(SqliteHost {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            _owner: owner,
        })
    }

    /// Runs `work` on the connection in a blocking thread.
    fn run<T, F>(&self, work: F) -> BoxFuture<'_, StorageResult<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StorageResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            let job = move || {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut conn)
            };
            match tokio::task::spawn_blocking(job).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(StorageError::Closed),
            }
        })
    }
}

fn find_space(
    conn: &Connection,
    store: StoreId,
    founder: DeviceId,
) -> StorageResult<Option<StoredSpace>> {
    sql(conn
        .query_row(
            "SELECT id, log FROM spaces WHERE store = ?1 AND founder = ?2",
            params![store.as_bytes().as_slice(), founder.as_bytes().as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional())
}

impl HostStorage for SqliteHost {
    fn describe(&self) -> String {
        format!("SQLite at {}", self.path.display())
    }

    fn space(
        &self,
        store: StoreId,
        founder: DeviceId,
    ) -> BoxFuture<'_, StorageResult<Option<StoredSpace>>> {
        self.run(move |conn| find_space(conn, store, founder))
    }

    fn create_space(
        &self,
        store: StoreId,
        founder: DeviceId,
        log: Vec<u8>,
        max_spaces: u64,
    ) -> BoxFuture<'_, StorageResult<Option<StoredSpace>>> {
        self.run(move |conn| {
            let tx = sql(conn.transaction())?;
            if let Some(found) = find_space(&tx, store, founder)? {
                return Ok(Some(found));
            }
            let held: i64 = sql(tx.query_row("SELECT count(*) FROM spaces", [], |r| r.get(0)))?;
            if count(held)? >= max_spaces {
                return Ok(None);
            }
            sql(tx.execute(
                "INSERT INTO spaces (store, founder, log) VALUES (?1, ?2, ?3)",
                params![
                    store.as_bytes().as_slice(),
                    founder.as_bytes().as_slice(),
                    log
                ],
            ))?;
            let id = tx.last_insert_rowid();
            sql(tx.commit())?;
            Ok(Some((id, log)))
        })
    }

    fn set_log(
        &self,
        space: SpaceId,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> BoxFuture<'_, StorageResult<bool>> {
        self.run(move |conn| {
            let replaced = sql(conn.execute(
                "UPDATE spaces SET log = ?3 WHERE id = ?1 AND log = ?2",
                params![space, old, new],
            ))?;
            Ok(replaced == 1)
        })
    }

    fn heads(&self, space: SpaceId) -> BoxFuture<'_, StorageResult<Vec<Head>>> {
        self.run(move |conn| {
            let mut stmt = sql(conn.prepare_cached(
                "SELECT author, seq, hash FROM commits c WHERE space = ?1 AND seq = \
                 (SELECT max(seq) FROM commits WHERE space = c.space AND author = c.author)",
            ))?;
            let rows = sql(stmt.query_map([space], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            }))?;
            let mut out = Vec::new();
            for row in rows {
                let (author, n, h) = sql(row)?;
                out.push((device(author)?, count(n)?, hash(h)?));
            }
            Ok(out)
        })
    }

    fn commits_after(
        &self,
        space: SpaceId,
        author: DeviceId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        self.run(move |conn| {
            let mut stmt = sql(conn.prepare_cached(
                "SELECT body, signature FROM commits WHERE space = ?1 AND author = ?2 AND seq > ?3 \
                 ORDER BY seq LIMIT ?4",
            ))?;
            let rows = sql(stmt.query_map(
                params![
                    space,
                    author.as_bytes().as_slice(),
                    number(after)?,
                    limit as i64
                ],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
            ))?;
            let mut out = Vec::new();
            for row in rows {
                let (body, signature) = sql(row)?;
                out.push(signed(body, signature)?);
            }
            Ok(out)
        })
    }

    fn commit_at(
        &self,
        space: SpaceId,
        author: DeviceId,
        at: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        self.run(move |conn| {
            let row = sql(conn
                .query_row(
                    "SELECT body, signature FROM commits WHERE space = ?1 AND author = ?2 AND seq = ?3",
                    params![space, author.as_bytes().as_slice(), number(at)?],
                    |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )
                .optional())?;
            row.map(|(body, signature)| signed(body, signature))
                .transpose()
        })
    }

    fn append(
        &self,
        space: SpaceId,
        commits: Vec<HostedCommit>,
    ) -> BoxFuture<'_, StorageResult<()>> {
        self.run(move |conn| {
            let tx = sql(conn.transaction())?;
            {
                let mut stmt = sql(tx.prepare_cached(
                    "INSERT INTO commits (space, author, seq, hash, body, signature) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                ))?;
                for c in &commits {
                    sql(stmt.execute(params![
                        space,
                        c.author.as_bytes().as_slice(),
                        number(c.seq)?,
                        c.hash.as_slice(),
                        c.commit.body,
                        c.commit.signature.as_slice(),
                    ]))?;
                }
            }
            sql(tx.commit())
        })
    }

    fn truncate(
        &self,
        space: SpaceId,
        author: DeviceId,
        keep_upto: u64,
    ) -> BoxFuture<'_, StorageResult<u64>> {
        self.run(move |conn| {
            let gone = sql(conn.execute(
                "DELETE FROM commits WHERE space = ?1 AND author = ?2 AND seq > ?3",
                params![space, author.as_bytes().as_slice(), number(keep_upto)?],
            ))?;
            Ok(gone as u64)
        })
    }

    fn usage(&self, space: SpaceId) -> BoxFuture<'_, StorageResult<Usage>> {
        self.run(move |conn| {
            let (commits, bytes): (i64, i64) = sql(conn.query_row(
                "SELECT count(*), coalesce(sum(length(body) + length(signature)), 0) \
                 FROM commits WHERE space = ?1",
                [space],
                |r| Ok((r.get(0)?, r.get(1)?)),
            ))?;
            Ok(Usage {
                commits: count(commits)?,
                bytes: count(bytes)?,
            })
        })
    }

    fn stats(&self) -> BoxFuture<'_, StorageResult<HostStats>> {
        self.run(move |conn| {
            let stores: i64 = sql(conn.query_row("SELECT count(*) FROM spaces", [], |r| r.get(0)))?;
            let (commits, bytes): (i64, i64) = sql(conn.query_row(
                "SELECT count(*), coalesce(sum(length(body) + length(signature)), 0) FROM commits",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            ))?;
            Ok(HostStats {
                stores: count(stores)?,
                commits: count(commits)?,
                bytes: count(bytes)?,
            })
        })
    }

    fn changes(&self) -> BoxStream<'static, Changed> {
        // One process owns the file (it holds its lock): no one else writes.
        Box::pin(futures::stream::pending())
    }
}
