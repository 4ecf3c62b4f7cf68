//! Change subscriptions: callbacks called after each durable commit with the
//! records it changed, local or received.

use std::sync::{Arc, Mutex, Weak};

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

impl RecordChange {
    /// The change a stored row represents.
    pub(super) fn from_row(row: &crate::merge::RecordRow, origin: Origin) -> RecordChange {
        RecordChange {
            collection: row.collection.clone(),
            id: row.id.clone(),
            value: row.value.as_deref().and_then(|text| {
                serde_json::from_str(text)
                    .map_err(|e| {
                        // Reads of this row fail with STORAGE_CORRUPT; the
                        // subscriber hears of the change without a value.
                        tracing::error!(
                            collection = %row.collection, id = %row.id, %e,
                            "a stored record is not JSON"
                        );
                    })
                    .ok()
            }),
            stamp: row.stamp,
            origin,
        }
    }
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

/// Changes as an async [`futures::Stream`], from
/// [`crate::Records::changes`]. It buffers up to a bound; a consumer that
/// falls further behind gets [`Lagged`] (with the number of batches it
/// missed) and then the changes that follow, so it knows to re-read.
#[must_use = "streams do nothing unless polled"]
pub struct ChangeStream {
    receiver: futures::channel::mpsc::Receiver<Vec<RecordChange>>,
    lagged: Arc<std::sync::atomic::AtomicU64>,
    _subscription: Subscription,
}

/// A [`ChangeStream`] consumer fell behind and this many batches were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl futures::Stream for ChangeStream {
    type Item = Result<Vec<RecordChange>, Lagged>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let missed = self.lagged.swap(0, std::sync::atomic::Ordering::SeqCst);
        if missed > 0 {
            return std::task::Poll::Ready(Some(Err(Lagged(missed))));
        }
        std::pin::Pin::new(&mut self.receiver)
            .poll_next(cx)
            .map(|item| item.map(Ok))
    }
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream").finish_non_exhaustive()
    }
}

impl Store {
    pub(super) fn stream_collection(&self, collection: &str, capacity: usize) -> ChangeStream {
        let (sender, receiver) = futures::channel::mpsc::channel(capacity);
        let sender = Mutex::new(sender);
        let lagged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = lagged.clone();
        let subscription = self.subscribe_collection(
            collection,
            Arc::new(move |changes: &[RecordChange]| {
                let mut sender = sender.lock().unwrap_or_else(|p| p.into_inner());
                if sender.try_send(changes.to_vec()).is_err() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }),
        );
        ChangeStream {
            receiver,
            lagged,
            _subscription: subscription,
        }
    }
}

/// Delivers to this store's subscribers the records that other writers of
/// the same storage (other tabs) changed, until the store closes.
pub(super) async fn deliver_external(
    store: Weak<Inner>,
    mut changes: crate::platform::BoxStream<'static, Vec<(String, String)>>,
) {
    use futures::StreamExt;
    while let Some(keys) = changes.next().await {
        let Some(inner) = store.upgrade() else { break };
        let store = Store { inner };
        if store.is_closed() {
            break;
        }
        // Another tab committed: a P2P node running in this tab sends it on.
        store.notify_commits();
        let subscribed = store.subscribed_collections();
        let mut out = Vec::new();
        for (collection, id) in keys {
            if !subscribed.contains(&collection) {
                continue;
            }
            if let Ok(Some(row)) = store.bound().backend.get_record(&collection, &id).await {
                out.push(RecordChange::from_row(&row, Origin::Local));
            }
        }
        store.deliver(out);
    }
}
