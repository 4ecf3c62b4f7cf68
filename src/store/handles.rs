//! The API handles: records of a collection, an event log, the key-value
//! space, and transactions. Each is a cheap value holding the store.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::subscribe::{RecordChange, Subscription};
use super::writer::{Intent, Request, WriteReceipt};
use super::Store;
use crate::error::{Error, NameKind, Result};
use crate::hlc::Hlc;
use crate::names;
use crate::storage::{EventQuery, RecordQuery};

/// JSON text of `value`, checked against the size limit.
fn encode_value(store: &Store, value: impl Serialize) -> Result<String> {
    let text = serde_json::to_string(&value).map_err(|e| Error::InvalidValue(e.to_string()))?;
    names::check_size(text.len(), store.inner.limits.max_value_bytes)?;
    Ok(text)
}

/// JSON text of a record document for `collection`.
fn encode_document(store: &Store, collection: &str, value: impl Serialize) -> Result<String> {
    check_document(store, collection, encode_value(store, value)?)
}

/// Merge-fields collections hold objects (checked before anything is queued).
fn check_document(store: &Store, collection: &str, text: String) -> Result<String> {
    let merges = matches!(
        store.strategy_for(collection),
        crate::ConflictStrategy::MergeFields
    );
    if merges && !text.trim_start().starts_with('{') {
        return Err(Error::InvalidValue(format!(
            "collection {collection:?} merges fields, so its records must be JSON objects"
        )));
    }
    Ok(text)
}

/// Checks JSON text given as is (size, syntax) without re-encoding it.
fn check_json(store: &Store, text: String) -> Result<String> {
    names::check_size(text.len(), store.inner.limits.max_value_bytes)?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| Error::InvalidValue(format!("not JSON text: {e}")))?;
    Ok(text)
}

fn decode(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        Error::Storage(crate::error::StorageError::Corrupt(format!(
            "stored JSON does not parse: {e}"
        )))
    })
}

fn decode_as<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::InvalidValue(format!("stored value has another shape: {e}")))
}

impl Store {
    pub(super) async fn write(&self, intents: Vec<Intent>) -> Result<WriteReceipt> {
        self.check_open()?;
        if intents.len() > self.inner.limits.max_commit_ops {
            return Err(Error::InvalidValue(format!(
                "a commit holds at most {} operations, got {}",
                self.inner.limits.max_commit_ops,
                intents.len()
            )));
        }
        self.inner
            .writer
            .submit(self, Request::Local(intents))
            .await?
            .into_receipt()
    }
}

/// Options for [`Records::list`] (and [`Kv::list`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Only ids after this one (the last id of the previous page).
    pub after: Option<String>,
}

impl ListOptions {
    fn query(self) -> RecordQuery {
        RecordQuery {
            prefix: self.prefix,
            after: self.after,
            limit: self.limit,
        }
    }
}

/// One record from a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Record id.
    pub id: String,
    /// The document.
    pub value: Value,
}

/// The records of one collection.
#[derive(Debug, Clone)]
pub struct Records {
    store: Store,
    collection: String,
}

impl Records {
    pub(super) fn new(store: Store, collection: &str) -> Records {
        Records {
            store,
            collection: collection.to_owned(),
        }
    }

    fn check(&self, id: Option<&str>) -> Result<()> {
        names::check_name(NameKind::Collection, &self.collection)?;
        if let Some(id) = id {
            names::check_id(NameKind::RecordId, id)?;
        }
        self.store.check_open()
    }

    /// Stores `value` (anything serializable to JSON) under `id`.
    pub async fn put(&self, id: &str, value: impl Serialize) -> Result<WriteReceipt> {
        self.check(Some(id))?;
        let text = encode_document(&self.store, &self.collection, value)?;
        self.write_texts(vec![(id.to_owned(), text)]).await
    }

    /// Stores many records in one commit (one signature, one transaction).
    pub async fn put_many<I, S, V>(&self, items: I) -> Result<WriteReceipt>
    where
        I: IntoIterator<Item = (S, V)>,
        S: Into<String>,
        V: Serialize,
    {
        self.check(None)?;
        let texts = items
            .into_iter()
            .map(|(id, value)| {
                Ok((
                    id.into(),
                    encode_document(&self.store, &self.collection, value)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_texts(texts).await
    }

    /// Stores a document given as JSON text (checked, stored as is): for
    /// bindings that already hold JSON, such as the JavaScript API.
    pub async fn put_json(&self, id: &str, json: String) -> Result<WriteReceipt> {
        self.put_many_json(vec![(id.to_owned(), json)]).await
    }

    /// Stores many documents given as JSON text, in one commit.
    pub async fn put_many_json(&self, items: Vec<(String, String)>) -> Result<WriteReceipt> {
        self.check(None)?;
        let texts = items
            .into_iter()
            .map(|(id, json)| {
                Ok((
                    id,
                    check_document(
                        &self.store,
                        &self.collection,
                        check_json(&self.store, json)?,
                    )?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.write_texts(texts).await
    }

    /// One commit of checked JSON texts.
    async fn write_texts(&self, texts: Vec<(String, String)>) -> Result<WriteReceipt> {
        if texts.is_empty() {
            return Err(Error::InvalidValue(
                "put_many needs at least one record".into(),
            ));
        }
        let mut intents = Vec::with_capacity(texts.len());
        for (id, text) in texts {
            names::check_id(NameKind::RecordId, &id)?;
            intents.push(Intent::Put {
                collection: self.collection.clone(),
                id,
                text,
            });
        }
        self.store.write(intents).await
    }

    /// The document stored under `id`, if any.
    pub async fn get(&self, id: &str) -> Result<Option<Value>> {
        self.get_json(id)
            .await?
            .map(|text| decode(&text))
            .transpose()
    }

    /// The document under `id`, deserialized into `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.get(id).await?.map(decode_as).transpose()
    }

    /// The JSON text stored under `id`, if any.
    pub async fn get_json(&self, id: &str) -> Result<Option<String>> {
        self.check(Some(id))?;
        let row = self
            .store
            .bound()
            .backend
            .get_record(&self.collection, id)
            .await?;
        Ok(row.and_then(|r| r.value))
    }

    /// Live records as `(id, JSON text)`, in id order.
    pub async fn list_json(&self, options: ListOptions) -> Result<Vec<(String, String)>> {
        self.check(None)?;
        let query = options.query();
        let rows = self
            .store
            .bound()
            .backend
            .list_records(&self.collection, &query)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.value.map(|text| (row.id, text)))
            .collect())
    }

    /// Deletes `id` (a tombstone replicates the deletion).
    pub async fn delete(&self, id: &str) -> Result<WriteReceipt> {
        self.check(Some(id))?;
        self.store
            .write(vec![Intent::Delete {
                collection: self.collection.clone(),
                id: id.to_owned(),
            }])
            .await
    }

    /// Live records in id order.
    pub async fn list(&self, options: ListOptions) -> Result<Vec<Record>> {
        self.list_json(options)
            .await?
            .into_iter()
            .map(|(id, text)| {
                Ok(Record {
                    id,
                    value: decode(&text)?,
                })
            })
            .collect()
    }

    /// Calls `callback` after every durable commit that changed records of
    /// this collection, local or received.
    pub fn subscribe(
        &self,
        callback: impl Fn(&[RecordChange]) + Send + Sync + 'static,
    ) -> Result<Subscription> {
        self.check(None)?;
        Ok(self
            .store
            .subscribe_collection(&self.collection, std::sync::Arc::new(callback)))
    }
}

impl Records {
    /// The changes of this collection as an async stream (buffering up to
    /// 1,024 commits' worth; see [`crate::store::ChangeStream`]).
    pub fn changes(&self) -> Result<super::subscribe::ChangeStream> {
        self.changes_buffered(1024)
    }

    /// [`Records::changes`] with a buffer of about `capacity` commits.
    pub fn changes_buffered(&self, capacity: usize) -> Result<super::subscribe::ChangeStream> {
        self.check(None)?;
        Ok(self.store.stream_collection(&self.collection, capacity))
    }
}

/// Id and time of an appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedEvent {
    /// Sorts in log order: hybrid logical clock, then author.
    pub id: String,
    /// Wall-clock milliseconds.
    pub at: u64,
}

/// One event from a log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event id (sorts in log order).
    pub id: String,
    /// Wall-clock milliseconds.
    pub at: u64,
    /// The device that appended it.
    pub author: crate::DeviceId,
    /// The event.
    pub value: Value,
}

/// Where [`Events::list`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// After this event id (exclusive).
    Id(String),
    /// After this many milliseconds since the Unix epoch (exclusive).
    Millis(u64),
}

/// Options for [`Events::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventListOptions {
    /// Only events after this point.
    pub since: Option<Since>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// An append-only, ordered event log.
#[derive(Debug, Clone)]
pub struct Events {
    store: Store,
    log: String,
}

impl Events {
    pub(super) fn new(store: Store, log: &str) -> Events {
        Events {
            store,
            log: log.to_owned(),
        }
    }

    /// Appends `value`; returns the event's id and time.
    pub async fn append(&self, value: impl Serialize) -> Result<AppendedEvent> {
        self.append_text(encode_value(&self.store, value)?).await
    }

    /// Appends an event given as JSON text (checked, stored as is).
    pub async fn append_json(&self, json: String) -> Result<AppendedEvent> {
        self.append_text(check_json(&self.store, json)?).await
    }

    async fn append_text(&self, text: String) -> Result<AppendedEvent> {
        names::check_name(NameKind::EventLog, &self.log)?;
        self.store.check_open()?;
        let receipt = self
            .store
            .write(vec![Intent::Append {
                log: self.log.clone(),
                text,
            }])
            .await?;
        receipt
            .events
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidValue("internal: no event id".into()))
    }

    /// Events in log order.
    pub async fn list(&self, options: EventListOptions) -> Result<Vec<Event>> {
        names::check_name(NameKind::EventLog, &self.log)?;
        self.store.check_open()?;
        let mut query = EventQuery {
            limit: options.limit,
            ..EventQuery::default()
        };
        match options.since {
            None => {}
            Some(Since::Id(id)) => {
                if id.len() > 64 || id.chars().any(|c| !c.is_ascii_hexdigit() && c != '-') {
                    return Err(Error::InvalidName {
                        kind: NameKind::EventId,
                        name: id,
                        reason: "not an event id",
                    });
                }
                query.after = Some(id);
            }
            Some(Since::Millis(ms)) => {
                query.from = Some(format!("{}", Hlc::from_millis(ms.saturating_add(1))));
            }
        }
        let rows = self
            .store
            .bound()
            .backend
            .list_events(&self.log, &query)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Event {
                    value: decode(&row.value)?,
                    id: row.id,
                    at: row.at,
                    author: row.author,
                })
            })
            .collect()
    }
}

/// The key-value space (keys hold JSON values; last write wins).
#[derive(Debug, Clone)]
pub struct Kv {
    store: Store,
}

impl Kv {
    pub(super) fn new(store: Store) -> Kv {
        Kv { store }
    }

    fn check(&self, key: &str) -> Result<()> {
        names::check_id(NameKind::Key, key)?;
        self.store.check_open()
    }

    /// Sets `key` to `value`.
    pub async fn set(&self, key: &str, value: impl Serialize) -> Result<WriteReceipt> {
        self.set_text(key, encode_value(&self.store, value)?).await
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> Result<Option<Value>> {
        self.get_json(key)
            .await?
            .map(|text| decode(&text))
            .transpose()
    }

    /// The value of `key`, deserialized into `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get(key).await?.map(decode_as).transpose()
    }

    /// Sets `key` to a value given as JSON text (checked, stored as is).
    pub async fn set_json(&self, key: &str, json: String) -> Result<WriteReceipt> {
        self.set_text(key, check_json(&self.store, json)?).await
    }

    async fn set_text(&self, key: &str, text: String) -> Result<WriteReceipt> {
        self.check(key)?;
        self.store
            .write(vec![Intent::Set {
                key: key.to_owned(),
                text,
            }])
            .await
    }

    /// The JSON text of `key`, if set.
    pub async fn get_json(&self, key: &str) -> Result<Option<String>> {
        self.check(key)?;
        Ok(self
            .store
            .bound()
            .backend
            .get_kv(key)
            .await?
            .and_then(|r| r.value))
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<WriteReceipt> {
        self.check(key)?;
        self.store
            .write(vec![Intent::Unset {
                key: key.to_owned(),
            }])
            .await
    }

    /// Live keys and values in key order.
    pub async fn list(&self, options: ListOptions) -> Result<Vec<Record>> {
        self.store.check_open()?;
        let query = options.query();
        let rows = self.store.bound().backend.list_kv(&query).await?;
        rows.into_iter()
            .filter_map(|row| row.value.map(|text| (row.key, text)))
            .map(|(id, text)| {
                Ok(Record {
                    id,
                    value: decode(&text)?,
                })
            })
            .collect()
    }
}

/// Several writes that commit together: one commit, one signature, one
/// durable transaction. Nothing is written until [`Transaction::commit`].
#[derive(Debug)]
pub struct Transaction {
    store: Store,
    intents: Vec<Intent>,
}

impl Transaction {
    pub(super) fn new(store: Store) -> Transaction {
        Transaction {
            store,
            intents: Vec::new(),
        }
    }

    /// Stores a record.
    pub fn put(&mut self, collection: &str, id: &str, value: impl Serialize) -> Result<&mut Self> {
        names::check_name(NameKind::Collection, collection)?;
        names::check_id(NameKind::RecordId, id)?;
        let text = encode_document(&self.store, collection, value)?;
        self.intents.push(Intent::Put {
            collection: collection.to_owned(),
            id: id.to_owned(),
            text,
        });
        Ok(self)
    }

    /// Deletes a record.
    pub fn delete(&mut self, collection: &str, id: &str) -> Result<&mut Self> {
        names::check_name(NameKind::Collection, collection)?;
        names::check_id(NameKind::RecordId, id)?;
        self.intents.push(Intent::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
        });
        Ok(self)
    }

    /// Appends an event.
    pub fn append(&mut self, log: &str, value: impl Serialize) -> Result<&mut Self> {
        names::check_name(NameKind::EventLog, log)?;
        let text = encode_value(&self.store, value)?;
        self.intents.push(Intent::Append {
            log: log.to_owned(),
            text,
        });
        Ok(self)
    }

    /// Sets a key.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> Result<&mut Self> {
        names::check_id(NameKind::Key, key)?;
        let text = encode_value(&self.store, value)?;
        self.intents.push(Intent::Set {
            key: key.to_owned(),
            text,
        });
        Ok(self)
    }

    /// Deletes a key.
    pub fn unset(&mut self, key: &str) -> Result<&mut Self> {
        names::check_id(NameKind::Key, key)?;
        self.intents.push(Intent::Unset {
            key: key.to_owned(),
        });
        Ok(self)
    }

    /// Number of writes so far.
    pub fn len(&self) -> usize {
        self.intents.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.intents.is_empty()
    }

    /// Commits every write at once; returns when durable.
    pub async fn commit(self) -> Result<WriteReceipt> {
        if self.intents.is_empty() {
            return Err(Error::InvalidValue(
                "an empty transaction has nothing to commit".into(),
            ));
        }
        self.store.write(self.intents).await
    }
}
