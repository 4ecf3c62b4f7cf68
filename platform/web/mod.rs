//! Browser platform: randomness from WebCrypto (via `getrandom`), time from
//! `Date.now()`, tasks on the JavaScript event loop, and IndexedDB storage
//! ([`IdbStore`], which also keeps the device key beside the data).

use std::future::Future;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::{KeyStore, MemoryKeyStore};
use crate::storage::{MemoryStore, StorageBackend};
use crate::store::{Adapter, StoreOptions};

mod device_key;
mod idb;
pub mod js;
mod tabs;

pub use idb::IdbStore;

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

/// The storage backend for `options` in the browser, and where the device
/// key lives: in the store's own IndexedDB database, through the same
/// connection (memory for memory stores). (`Arc` rather than `Rc` because the
/// trait objects are shared with native code; here all is one thread.)
#[allow(clippy::arc_with_non_send_sync)]
pub async fn open_storage(
    options: &StoreOptions,
) -> Result<(Arc<dyn StorageBackend>, Arc<dyn KeyStore>)> {
    match options.adapter {
        Adapter::Memory => Ok((
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryKeyStore::generate()?),
        )),
        Adapter::IndexedDb => {
            let store = Arc::new(IdbStore::open(&options.name).await?);
            Ok((store.clone(), store))
        }
        Adapter::Sqlite => Err(Error::AdapterUnavailable {
            requested: "sqlite".into(),
            available: "indexeddb",
        }),
    }
}
