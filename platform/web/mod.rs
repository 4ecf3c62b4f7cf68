//! Browser platform: randomness from WebCrypto (via `getrandom`), time from
//! `Date.now()`, tasks on the JavaScript event loop, and IndexedDB storage
//! ([`IdbStore`], which also keeps the device key beside the data).

use std::future::Future;
use std::sync::Arc;

use wasm_bindgen::JsCast;

use crate::error::{Error, Result};
use crate::keys::{KeyStore, MemoryKeyStore};
use crate::storage::{MemoryStore, StorageBackend};
use crate::store::{Adapter, StoreOptions};

mod device_key;
mod idb;
pub mod js;
pub mod net;
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

/// Milliseconds from an arbitrary start, monotonic (`performance.now()`;
/// the wall clock where there is no `performance`).
pub fn monotonic_ms() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| {
            let now = js_sys::Reflect::get(&p, &"now".into()).ok()?;
            let now: js_sys::Function = now.dyn_into().ok()?;
            now.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
}

/// Gives the event loop a turn (a `setTimeout(0)` task): promise reactions
/// and tasks queued meanwhile, such as writes waiting for a lock that a
/// long loop releases between batches, run first.
pub async fn yield_now() {
    sleep_ms(0).await
}

/// Waits `ms` milliseconds (a `setTimeout` task).
pub async fn sleep_ms(ms: u64) {
    let delay = ms.min(i32::MAX as u64) as i32;
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(set_timeout) => {
                let _ =
                    set_timeout.call2(&wasm_bindgen::JsValue::UNDEFINED, &resolve, &delay.into());
            }
            None => {
                let _ = resolve.call0(&wasm_bindgen::JsValue::UNDEFINED);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Rows a key rotation re-encrypts per storage batch.
pub const ROTATION_BATCH_ROWS: usize = 128;

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
