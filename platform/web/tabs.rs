//! Tabs of one origin share a store's IndexedDB database and device
//! identity. Their writes cannot fork the device's sequence numbers: a
//! change-log entry is added with `add`, which fails inside the writing
//! transaction if another tab already used that number, and the writer then
//! rebuilds its batch with fresh state (see `StorageBackend::shared`). This
//! module is the other half: a `BroadcastChannel` (`persist:<name>`) on
//! which every tab announces the records it committed, so subscribers in the
//! other tabs hear of them. Announcements leave in a task of their own
//! (`setTimeout(0)`), after the writer has answered: the next write does not
//! wait for them, and commits made meanwhile share one message.

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::mpsc;
use js_sys::{Array, Function, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

/// Record keys, `(collection, id)`, one tab committed.
type Keys = Vec<(String, String)>;

/// Announcements buffered per tab before older ones are dropped.
const ANNOUNCE_BUFFER: usize = 256;

/// One tab's end of the store's `BroadcastChannel`.
pub(super) struct Announcer {
    outbox: Rc<Outbox>,
    _listener: Closure<dyn FnMut(JsValue)>,
    receiver: RefCell<Option<mpsc::Receiver<Keys>>>,
}

/// Keys committed since the last announcement, and the channel they go to.
struct Outbox {
    channel: JsValue,
    pending: RefCell<Keys>,
}

impl Outbox {
    fn send(&self) {
        let keys = std::mem::take(&mut *self.pending.borrow_mut());
        if keys.is_empty() {
            return;
        }
        let Ok(text) = serde_json::to_string(&keys) else {
            return;
        };
        if let Ok(post) = Reflect::get(&self.channel, &"postMessage".into())
            .and_then(|f| f.dyn_into::<Function>())
        {
            let _ = post.call1(&self.channel, &JsValue::from_str(&text));
        }
    }
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
            let keys = match serde_json::from_str::<Vec<(String, String)>>(&text) {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(%e, "a change announcement from another tab does not parse");
                    return;
                }
            };
            if sender.borrow_mut().try_send(keys).is_err() {
                tracing::warn!(
                    "dropped a change announcement from another tab (subscriber too slow)"
                );
            }
        });
        let _ = Reflect::set(&channel, &"onmessage".into(), listener.as_ref());
        let outbox = Rc::new(Outbox {
            channel,
            pending: RefCell::new(Vec::new()),
        });
        Some(Announcer {
            outbox,
            _listener: listener,
            receiver: RefCell::new(Some(receiver)),
        })
    }

    /// Tells the other tabs, in a task of its own, which records this tab
    /// just committed.
    pub(super) fn announce(&self, keys: Keys) {
        if keys.is_empty() {
            return;
        }
        let mut pending = self.outbox.pending.borrow_mut();
        let idle = pending.is_empty();
        pending.extend(keys);
        drop(pending);
        if idle && !self.schedule_flush() {
            self.outbox.send();
        }
    }

    /// Schedules `Outbox::send` with `setTimeout(0)`; false if impossible.
    fn schedule_flush(&self) -> bool {
        let Ok(set_timeout) = Reflect::get(&js_sys::global(), &"setTimeout".into())
            .and_then(|f| f.dyn_into::<Function>())
        else {
            return false;
        };
        // Owned by the timer, so it outlives a store closed meanwhile.
        let outbox = self.outbox.clone();
        let flush = Closure::once_into_js(move || outbox.send());
        set_timeout
            .call2(&JsValue::UNDEFINED, &flush, &JsValue::from_f64(0.0))
            .is_ok()
    }

    /// What the other tabs announce (once; later calls get `None`).
    pub(super) fn take_receiver(&self) -> Option<mpsc::Receiver<Keys>> {
        self.receiver.borrow_mut().take()
    }

    /// Leaves the channel.
    pub(super) fn close(&self) {
        self.outbox.send();
        let channel = &self.outbox.channel;
        if let Ok(close) =
            Reflect::get(channel, &"close".into()).and_then(|f| f.dyn_into::<Function>())
        {
            let _ = close.call0(channel);
        }
    }
}
