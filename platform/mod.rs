//! Platform code: the only place that knows whether it runs natively or in a
//! browser. The core (`src/`) uses what this module re-exports and never
//! names tokio, rusqlite, web-sys or wasm-bindgen.
//!
//! Each platform provides: `fill_random`, `now_ms`, the executor (`spawn`),
//! `open_storage` (adapter -> storage backend and the device's key store).

use std::future::Future;
use std::pin::Pin;

#[cfg(not(wasm_browser))]
pub mod native;
#[cfg(not(wasm_browser))]
pub use native::net::{mdns, mdns_discovered, server_swarm, swarm, Mdns, KAD_MODE};
#[cfg(not(wasm_browser))]
pub use native::{
    fill_random, monotonic_ms, now_ms, open_host_storage, open_storage, sleep_ms, spawn,
    PostgresHost, SqliteHost, ADAPTER_NAMES, DEFAULT_ADAPTER, ROTATION_BATCH_ROWS,
};

#[cfg(wasm_browser)]
pub mod web;

/// The Node.js addon (napi-rs) over the native platform.
#[cfg(all(not(wasm_browser), feature = "node"))]
pub mod node;
#[cfg(wasm_browser)]
pub use web::net::{mdns, mdns_discovered, swarm, Mdns, KAD_MODE};
#[cfg(wasm_browser)]
pub use web::{
    fill_random, monotonic_ms, now_ms, open_storage, sleep_ms, spawn, ADAPTER_NAMES,
    DEFAULT_ADAPTER, ROTATION_BATCH_ROWS,
};

/// A place where tests of crash recovery stop the process: natively, when
/// the environment variable `PERSIST_FAULT` names `point`, the process
/// aborts there at once (as `kill -9` would stop it), leaving storage as it
/// is at that step. Nothing happens otherwise, and nothing in a browser.
pub fn fault_point(point: &str) {
    #[cfg(not(wasm_browser))]
    if std::env::var_os("PERSIST_FAULT").is_some_and(|v| v == point) {
        eprintln!("PERSIST_FAULT: stopping at {point}");
        std::process::abort();
    }
    #[cfg(wasm_browser)]
    let _ = point;
}

/// `Send` natively; nothing in the browser, where JavaScript values and
/// futures live on one thread.
#[cfg(not(wasm_browser))]
pub trait MaybeSend: Send {}
#[cfg(not(wasm_browser))]
impl<T: Send + ?Sized> MaybeSend for T {}

/// `Sync` natively; nothing in the browser.
#[cfg(not(wasm_browser))]
pub trait MaybeSync: Sync {}
#[cfg(not(wasm_browser))]
impl<T: Sync + ?Sized> MaybeSync for T {}

/// `Send` natively; nothing in the browser.
#[cfg(wasm_browser)]
pub trait MaybeSend {}
#[cfg(wasm_browser)]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` natively; nothing in the browser.
#[cfg(wasm_browser)]
pub trait MaybeSync {}
#[cfg(wasm_browser)]
impl<T: ?Sized> MaybeSync for T {}

/// A boxed future that is `Send` natively.
#[cfg(not(wasm_browser))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed stream that is `Send` natively.
#[cfg(not(wasm_browser))]
pub type BoxStream<'a, T> = Pin<Box<dyn futures::Stream<Item = T> + Send + 'a>>;

/// A boxed stream (not `Send` in the browser).
#[cfg(wasm_browser)]
pub type BoxStream<'a, T> = Pin<Box<dyn futures::Stream<Item = T> + 'a>>;

/// A boxed future (not `Send` in the browser).
#[cfg(wasm_browser)]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Lets every other ready task of the executor run before continuing
/// (natively tokio's yield; in the browser `web::yield_now` gives the event
/// loop a turn):
/// a long loop that takes a lock batch after batch yields between batches
/// so the writers waiting for that lock get it.
#[cfg(not(wasm_browser))]
pub async fn yield_now() {
    // tokio's yield puts the task behind the ones it woke (a plain
    // self-wake would take the worker's next slot ahead of them).
    tokio::task::yield_now().await
}

#[cfg(wasm_browser)]
pub use web::yield_now;

/// Runs CPU-bound `work` (signature checks, decryption) off the executor:
/// natively on tokio's blocking threads, so the node's loop and other
/// tasks keep their workers (inline outside a runtime, as in tests that
/// drive a store with a plain executor); in the browser after a turn of
/// the event loop, the work itself kept small by the caller.
#[cfg(not(wasm_browser))]
pub async fn compute<T, F>(work: F) -> crate::error::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(work());
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result),
        // A panic in the work is a bug: it goes on as if it ran here.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(crate::error::Error::Closed),
    }
}

/// See the native `compute`.
#[cfg(wasm_browser)]
pub async fn compute<T, F>(work: F) -> crate::error::Result<T>
where
    F: FnOnce() -> T,
{
    yield_now().await;
    Ok(work())
}
