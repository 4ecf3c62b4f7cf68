//! Tabs of one origin share a store's IndexedDB database and device
//! identity. Two things keep them consistent, both standard web APIs reached
//! through `js-sys`:
//!
//! - a Web Lock (`navigator.locks`, named `persist:<name>:writer`) held by
//!   whichever tab is writing a batch, so one device's sequence numbers
//!   never fork (the writer re-reads its head under the lock);
//! - a `BroadcastChannel` (`persist:<name>`) on which every tab announces
//!   the records it committed, so subscribers in the other tabs hear of them.

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use js_sys::{Array, Function, Promise, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

use crate::error::StorageError;
use crate::storage::{LeaseHolder, StorageResult, WriterLease};

/// Record keys, `(collection, id)`, one tab committed.
type Keys = Vec<(String, String)>;

/// Announcements buffered per tab before older ones are dropped.
const ANNOUNCE_BUFFER: usize = 256;

fn js_err(what: &str, e: JsValue) -> StorageError {
    StorageError::Backend(format!(
        "{what}: {}",
        e.as_string().unwrap_or_else(|| format!("{e:?}"))
    ))
}

struct Release(Option<Function>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(resolve) = self.0.take() {
            let _ = resolve.call0(&JsValue::NULL);
        }
    }
}

impl LeaseHolder for Release {}

/// Waits for the exclusive Web Lock `name`; `None` where the browser has no
/// Web Locks (then only one tab may write safely, and a warning is logged).
pub(super) async fn lock(name: &str) -> StorageResult<Option<WriterLease>> {
    let navigator =
        Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    let locks = Reflect::get(&navigator, &"locks".into()).unwrap_or(JsValue::UNDEFINED);
    let Ok(request) =
        Reflect::get(&locks, &"request".into()).and_then(|f| f.dyn_into::<Function>())
    else {
        tracing::warn!(
            "navigator.locks is not available: tabs writing one store at once may conflict"
        );
        return Ok(None);
    };
    // The lock is held until `held` settles, which the lease's drop does.
    let mut release = None;
    let held = Promise::new(&mut |resolve, _reject| release = Some(resolve));
    let (acquired, on_acquired) = oneshot::channel::<()>();
    let callback = Closure::once_into_js(move |_lock: JsValue| -> JsValue {
        let _ = acquired.send(());
        held.into()
    });
    request
        .call2(&locks, &JsValue::from_str(name), &callback)
        .map_err(|e| js_err("navigator.locks.request", e))?;
    on_acquired
        .await
        .map_err(|_| StorageError::Backend("the Web Lock request was dropped".into()))?;
    Ok(Some(WriterLease(Box::new(Release(release)))))
}

/// One tab's end of the store's `BroadcastChannel`.
pub(super) struct Announcer {
    channel: JsValue,
    _listener: Closure<dyn FnMut(JsValue)>,
    receiver: RefCell<Option<mpsc::Receiver<Keys>>>,
}

impl Announcer {
    /// Joins channel `name`; `None` where `BroadcastChannel` is missing.
    pub(super) fn join(name: &str) -> Option<Announcer> {
        let constructor = Reflect::get(&js_sys::global(), &"BroadcastChannel".into())
            .ok()?
            .dyn_into::<Function>()
            .ok()?;
        let channel =
            Reflect::construct(&constructor, &Array::of1(&JsValue::from_str(name))).ok()?;
        let (sender, receiver) = mpsc::channel(ANNOUNCE_BUFFER);
        let sender = Rc::new(RefCell::new(sender));
        let listener = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let data = Reflect::get(&event, &"data".into()).unwrap_or(JsValue::UNDEFINED);
            let Some(text) = data.as_string() else { return };
            let Ok(keys) = serde_json::from_str::<Vec<(String, String)>>(&text) else {
                return;
            };
            if sender.borrow_mut().try_send(keys).is_err() {
                tracing::warn!(
                    "dropped a change announcement from another tab (subscriber too slow)"
                );
            }
        });
        let _ = Reflect::set(&channel, &"onmessage".into(), listener.as_ref());
        Some(Announcer {
            channel,
            _listener: listener,
            receiver: RefCell::new(Some(receiver)),
        })
    }

    /// Tells the other tabs which records this tab just committed.
    pub(super) fn announce(&self, keys: &[(String, String)]) {
        if keys.is_empty() {
            return;
        }
        let Ok(text) = serde_json::to_string(keys) else {
            return;
        };
        if let Ok(post) = Reflect::get(&self.channel, &"postMessage".into())
            .and_then(|f| f.dyn_into::<Function>())
        {
            let _ = post.call1(&self.channel, &JsValue::from_str(&text));
        }
    }

    /// What the other tabs announce (once; later calls get `None`).
    pub(super) fn take_receiver(&self) -> Option<mpsc::Receiver<Keys>> {
        self.receiver.borrow_mut().take()
    }

    /// Leaves the channel.
    pub(super) fn close(&self) {
        if let Ok(close) =
            Reflect::get(&self.channel, &"close".into()).and_then(|f| f.dyn_into::<Function>())
        {
            let _ = close.call0(&self.channel);
        }
    }
}
