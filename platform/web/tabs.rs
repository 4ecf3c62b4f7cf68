//! Tabs of one origin share a store's IndexedDB database and device
//! identity. Their writes cannot fork the device's sequence numbers: a
//! change-log entry is added with `add`, which fails inside the writing
//! transaction if another tab already used that number, and the writer then
//! rebuilds its batch with fresh state (see `StorageBackend::shared`). This
//! module is the other half: a `BroadcastChannel` (`persist:<name>`) on
//! which every tab announces the records it committed, so subscribers in the
//! other tabs hear of them.

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
