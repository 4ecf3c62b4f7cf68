//! Change subscriptions: callbacks called after each durable commit with the
//! records it changed, local or received.

use std::sync::{Arc, Weak};

use serde_json::Value;

use super::{Inner, Store};
use crate::change::Stamp;

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Written on this device.
    Local,
    /// Received from another replica.
    Remote,
}

/// One record's new state after a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordChange {
    /// Collection name.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The new document; `None` when the record was deleted.
    pub value: Option<Value>,
    /// Stamp of the version now visible.
    pub stamp: Stamp,
    /// Local or remote.
    pub origin: Origin,
}

pub(super) type Callback = Arc<dyn Fn(&[RecordChange]) + Send + Sync>;

#[derive(Default)]
pub(super) struct Subscribers {
    next_id: u64,
    entries: Vec<(u64, String, Callback)>,
}

impl Subscribers {
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// An active subscription; dropping it (or calling
/// [`Subscription::unsubscribe`]) stops the callbacks.
#[must_use = "dropping a Subscription unsubscribes at once"]
pub struct Subscription {
    id: u64,
    store: Weak<Inner>,
}

impl Subscription {
    /// Stops the callbacks.
    pub fn unsubscribe(self) {}
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.store.upgrade() {
            let mut subs = inner.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.entries.retain(|(id, _, _)| *id != self.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Store {
    pub(super) fn subscribe_collection(
        &self,
        collection: &str,
        callback: Callback,
    ) -> Subscription {
        let mut subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subs.next_id += 1;
        let id = subs.next_id;
        subs.entries.push((id, collection.to_owned(), callback));
        Subscription {
            id,
            store: Arc::downgrade(&self.inner),
        }
    }

    /// Collections with at least one subscriber (read once per batch).
    pub(super) fn subscribed_collections(&self) -> Vec<String> {
        let subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = subs.entries.iter().map(|(_, c, _)| c.clone()).collect();
        names.dedup();
        names
    }

    /// Calls each subscriber once with its collection's changes. The lock is
    /// not held during callbacks, so they may subscribe or unsubscribe.
    pub(super) fn deliver(&self, changes: Vec<RecordChange>) {
        if changes.is_empty() {
            return;
        }
        let targets: Vec<(String, Callback)> = {
            let subs = self
                .inner
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            subs.entries
                .iter()
                .map(|(_, c, cb)| (c.clone(), cb.clone()))
                .collect()
        };
        for (collection, callback) in targets {
            let mine: Vec<RecordChange> = changes
                .iter()
                .filter(|c| c.collection == collection)
                .cloned()
                .collect();
            if !mine.is_empty() {
                callback(&mine);
            }
        }
    }
}
