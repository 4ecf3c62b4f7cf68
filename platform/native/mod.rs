//! Native platform: OS randomness and clock, tokio (or a thread) for tasks,
//! SQLite storage ([`SqliteStore`]) and a keyfile for the device identity
//! ([`FileKeyStore`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::keys::{KeyStore, MemoryKeyStore};
use crate::storage::{MemoryStore, StorageBackend};
use crate::store::{Adapter, StoreOptions};

mod host_postgres;
mod host_sqlite;
mod keyfile;
pub mod net;
mod sqlite;

pub use host_postgres::{open_host_storage, PostgresHost};
pub use host_sqlite::SqliteHost;
#[cfg(feature = "test-utils")]
pub use keyfile::fuzz_decoders as fuzz_key_files;
pub use keyfile::{FileKeyStore, KeyLocation, KEYCHAIN_ENV};
pub use sqlite::SqliteStore;

/// The adapter used when none is named.
pub const DEFAULT_ADAPTER: Adapter = Adapter::Sqlite;
/// The adapters this platform offers, for error messages.
pub const ADAPTER_NAMES: &str = "sqlite\" or \"memory";

/// Fills `buf` with cryptographically secure random bytes from the OS.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::InvalidOptions(format!("no secure randomness: {e}")))
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds from an arbitrary start (the first call), monotonic.
pub fn monotonic_ms() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1000.0
}

/// Rows a key rotation re-encrypts per storage batch.
pub const ROTATION_BATCH_ROWS: usize = 512;

/// Waits `ms` milliseconds (on tokio when running on it, else on a timer
/// thread).
pub async fn sleep_ms(ms: u64) {
    let duration = std::time::Duration::from_millis(ms);
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::sleep(duration).await;
    } else {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

/// Runs a future in the background: on the current tokio runtime if there
/// is one, else on a thread of its own.
pub fn spawn<F: Future<Output = ()> + Send + 'static>(future: F) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(future);
        }
        Err(_) => {
            std::thread::spawn(move || futures::executor::block_on(future));
        }
    }
}

/// The database path for `options`: `path`, or `data/<name>.db`.
pub fn database_path(options: &StoreOptions) -> PathBuf {
    options
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from("data").join(format!("{}.db", options.name)))
}

/// The storage backend for `options` natively, and where the device key
/// lives: a keyfile beside the SQLite database (memory for memory stores).
pub async fn open_storage(
    options: &StoreOptions,
) -> Result<(Arc<dyn StorageBackend>, Arc<dyn KeyStore>)> {
    match options.adapter {
        Adapter::Sqlite => {
            let path = database_path(options);
            let backend = Arc::new(SqliteStore::open(&path)?);
            Ok((backend, Arc::new(FileKeyStore::new(path))))
        }
        Adapter::Memory => Ok((
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryKeyStore::generate()?),
        )),
        Adapter::IndexedDb => Err(Error::AdapterUnavailable {
            requested: "indexeddb".into(),
            available: "sqlite",
        }),
    }
}
