//! Browser platform: randomness from WebCrypto (via `getrandom`), time from
//! `Date.now()`, tasks on the JavaScript event loop, and IndexedDB storage
//! ([`IdbStore`], with the device key beside it: [`IdbKeyStore`]).

use std::future::Future;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::{KeyStore, MemoryKeyStore};
use crate::storage::{MemoryStore, StorageBackend};
use crate::store::{Adapter, StoreOptions};

mod idb;
pub mod js;
mod tabs;

pub use idb::{IdbKeyStore, IdbStore};

/// The adapter used when none is named.
pub const DEFAULT_ADAPTER: Adapter = Adapter::IndexedDb;
/// The adapters this platform offers, for error messages.
pub const ADAPTER_NAMES: &str = "indexeddb\" or \"memory";

/// Fills `buf` with cryptographically secure random bytes.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::InvalidOptions(format!("no secure randomness: {e}")))
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let ms = js_sys::Date::now();
    if ms.is_finite() && ms > 0.0 {
        ms as u64
    } else {
        0
    }
}

/// Runs a future to completion on the JavaScript event loop.
pub fn spawn<F: Future<Output = ()> + 'static>(future: F) {
    wasm_bindgen_futures::spawn_local(future);
}

/// The storage backend for `options` in the browser. (`Arc` rather than
/// `Rc` because the trait object is shared with native code; in the browser
/// everything lives on one thread.)
#[allow(clippy::arc_with_non_send_sync)]
pub async fn open_backend(options: &StoreOptions) -> Result<Arc<dyn StorageBackend>> {
    match options.adapter {
        Adapter::Memory => Ok(Arc::new(MemoryStore::new())),
        Adapter::IndexedDb => Ok(Arc::new(IdbStore::open(&options.name).await?)),
        Adapter::Sqlite => Err(Error::AdapterUnavailable {
            requested: "sqlite".into(),
            available: "indexeddb",
        }),
    }
}

/// The device key store for `options` in the browser: beside the data in
/// IndexedDB (memory for memory stores).
#[allow(clippy::arc_with_non_send_sync)]
pub fn open_key_store(options: &StoreOptions) -> Result<Arc<dyn KeyStore>> {
    match options.adapter {
        Adapter::IndexedDb => Ok(Arc::new(IdbKeyStore::new(&options.name))),
        _ => Ok(Arc::new(MemoryKeyStore::generate()?)),
    }
}
