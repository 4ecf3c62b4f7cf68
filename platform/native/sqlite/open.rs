//! Opening a database file safely: header and identity checks before any
//! write, the owner lock, connection settings and migrations.

use std::path::Path;

use rusqlite::{Connection, ErrorCode};

use crate::error::StorageError;
use crate::storage::StorageResult;

/// `PRAGMA application_id` of Persist databases ("PRST").
pub(super) const APPLICATION_ID: i32 = 0x5052_5354;

/// Maps a rusqlite error to the storage layer's error.
pub(crate) fn storage_error(e: rusqlite::Error) -> StorageError {
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

/// `.sql()?` turns a rusqlite result into a storage result.
pub(super) trait Sql<T> {
    /// Maps the error with [`storage_error`].
    fn sql(self) -> StorageResult<T>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> StorageResult<T> {
        self.map_err(storage_error)
    }
}

pub(super) fn configure(conn: &Connection) -> StorageResult<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .sql()?;
    conn.set_prepared_statement_cache_capacity(32);
    // 16 MiB of page cache per connection (SQLite's default is 2 MiB): a
    // store with random ids (and every encrypted store: hashed ids) touches
    // pages all over its B-trees.
    conn.pragma_update(None, "cache_size", -16_384).sql()?;
    Ok(())
}

/// Checks, without writing, that the database is new and empty (`Ok(true)`)
/// or a Persist database this build can open (`Ok(false)`).
pub(super) fn inspect(conn: &Connection) -> StorageResult<bool> {
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .sql()?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .sql()?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .sql()?;
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(true);
    }
    if app_id != APPLICATION_ID {
        return Err(StorageError::Corrupt(format!(
            "foreign SQLite database (application_id {app_id:#x}, {objects} schema objects)"
        )));
    }
    let version = u32::try_from(version)
        .map_err(|_| StorageError::Corrupt(format!("schema version {version}")))?;
    if version > super::SCHEMA_VERSION {
        return Err(StorageError::VersionUnsupported {
            found: version,
            supported: super::SCHEMA_VERSION,
        });
    }
    Ok(false)
}

/// Applies the migrations newer than `user_version`, in one transaction.
pub(super) fn migrate(conn: &mut Connection, migrations: &[(u32, &str)]) -> StorageResult<()> {
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .sql()?;
    let pending: Vec<_> = migrations.iter().filter(|(v, _)| *v > current).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction().sql()?;
    for (version, sql) in pending {
        tx.execute_batch(sql).sql()?;
        tx.pragma_update(None, "user_version", version).sql()?;
        tracing::debug!(version, "applied SQLite migration");
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .sql()?;
    tx.commit().sql()
}

/// Takes the exclusive owner lock on the database file (an `flock`, which
/// does not interact with SQLite's own byte-range locks).
pub(crate) fn lock_owner(path: &Path) -> StorageResult<std::fs::File> {
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
pub(super) fn check_header(path: &Path) -> StorageResult<()> {
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
