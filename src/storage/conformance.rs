//! The conformance suite every storage backend must pass.
//!
//! Each check is an async function that takes a fresh, empty backend and
//! panics on a violation. [`crate::storage_conformance_tests!`] turns the
//! whole list into test functions for one backend, with any async test
//! attribute: tokio's natively (`tests/conformance.rs`), wasm-bindgen-test's
//! in a browser (`tests/browser.rs`):
//!
//! ```ignore
//! persist::storage_conformance_tests!(wasm_bindgen_test::wasm_bindgen_test, || async {
//!     std::sync::Arc::new(persist::storage::MemoryStore::new()) as std::sync::Arc<dyn persist::storage::StorageBackend>
//! });
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{
    EventQuery, EventRow, KvRow, MetaKey, RecordQuery, RecordRow, StorageBackend, Table, WriteBatch,
};
use crate::hlc::Hlc;
use crate::keys::MemoryKeyStore;
use crate::{ConflictStrategy, EventListOptions, ListOptions, Since, Store, StoreOptions};
use crate::{DeviceIdentity, Stamp, StorageError};

/// Generates one test per conformance check for a backend factory.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($attr:meta, $factory:expr) => {
        $crate::storage_conformance_tests!(@each $attr, $factory,
            meta_starts_empty, meta_entries_and_scans, listings_follow_writes, records_round_trip, list_prefix_after_limit, events_in_log_order,
            kv_round_trip, transaction_is_one_commit, change_log_and_version_vector,
            replicas_converge_by_ingest, subscribers_see_committed_changes, concurrent_writers_group_commit,
            refused_input_loses_nothing, merge_fields_and_custom_resolvers, closed_store_refuses_calls,
            joining_another_store_keeps_own_writes);
    };
    (@each $attr:meta, $factory:expr, $($name:ident),*) => {
        $(
            #[$attr]
            async fn $name() {
                let factory = $factory;
                $crate::storage::conformance::$name(&factory).await;
            }
        )*
    };
}

/// A factory of fresh, empty backends.
pub trait BackendFactory {
    /// A new empty backend.
    fn make(&self) -> crate::platform::BoxFuture<'_, Arc<dyn StorageBackend>>;

    /// True when the suite's stores are to be encrypted (`encrypt: true`).
    fn encrypt(&self) -> bool {
        false
    }
}

/// Runs the suite on encrypted stores over the backends of a factory.
pub struct Encrypted<F>(pub F);

impl<F: BackendFactory> BackendFactory for Encrypted<F> {
    fn make(&self) -> crate::platform::BoxFuture<'_, Arc<dyn StorageBackend>> {
        self.0.make()
    }

    fn encrypt(&self) -> bool {
        true
    }
}

impl<F, Fut> BackendFactory for F
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn StorageBackend>>
        + crate::platform::MaybeSend
        + 'static,
{
    fn make(&self) -> crate::platform::BoxFuture<'_, Arc<dyn StorageBackend>> {
        Box::pin((self)())
    }
}

async fn open(factory: &impl BackendFactory, options: StoreOptions) -> Store {
    let backend = factory.make().await;
    let keys = Arc::new(MemoryKeyStore::generate().unwrap());
    let store = Store::open(
        options
            .encrypt(factory.encrypt())
            .backend(backend)
            .key_store(keys),
    )
    .await
    .unwrap();
    assert_eq!(store.crypto().is_encrypted(), factory.encrypt());
    store
}

async fn store(factory: &impl BackendFactory) -> Store {
    open(factory, StoreOptions::new("conformance")).await
}

pub async fn meta_starts_empty(factory: &impl BackendFactory) {
    let backend = factory.make().await;
    let meta = backend.load_meta().await.unwrap();
    assert_eq!(meta.store_id, None);
    assert!(backend.version_vector().await.unwrap().is_empty());
    let id = crate::StoreId::from_bytes([5; 16]);
    backend
        .write(WriteBatch {
            store_id: Some(id),
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let meta = backend.load_meta().await.unwrap();
    assert_eq!(meta.store_id, Some(id));
    // The store id never changes once set: setting the same one again is
    // harmless, another one is a conflict that writes nothing of its batch
    // (two tabs creating one store: the loser adopts the winner's id).
    backend
        .write(WriteBatch {
            store_id: Some(id),
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let other = crate::StoreId::from_bytes([6; 16]);
    let author = DeviceIdentity::generate().unwrap();
    let result = backend
        .write(WriteBatch {
            store_id: Some(other),
            kv: vec![KvRow {
                key: "lost".into(),
                value: Some("1".into()),
                stamp: Stamp {
                    hlc: Hlc::from_u64(1 << 20),
                    author: author.device_id(),
                },
            }],
            ..WriteBatch::default()
        })
        .await;
    assert!(
        matches!(result, Err(StorageError::Conflict(_))),
        "{result:?}"
    );
    assert_eq!(backend.load_meta().await.unwrap().store_id, Some(id));
    assert_eq!(backend.get_kv("lost").await.unwrap(), None);
}

/// Metadata entries replace each other and survive; scans page through
/// every row of a table, tombstones included, in order, without repeats.
pub async fn meta_entries_and_scans(factory: &impl BackendFactory) {
    let backend = factory.make().await;
    backend
        .write(WriteBatch {
            meta: vec![(MetaKey::Rotation, vec![1, 2, 3])],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    backend
        .write(WriteBatch {
            meta: vec![
                (MetaKey::Rotation, vec![4]),
                (MetaKey::SealedKeyring, vec![0; 300]),
            ],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let entries = backend.load_meta().await.unwrap().entries;
    assert_eq!(entries.get(&MetaKey::Rotation), Some(&vec![4]));
    assert_eq!(entries.get(&MetaKey::SealedKeyring), Some(&vec![0; 300]));

    let author = DeviceIdentity::generate().unwrap().device_id();
    let stamp = |n: u64| Stamp {
        hlc: Hlc::from_u64((n + 1) << 20),
        author,
    };
    let mut batch = WriteBatch::default();
    for (i, collection) in ["b", "a", "c"].iter().enumerate() {
        for n in 0..5u64 {
            batch.records.push(RecordRow {
                collection: (*collection).into(),
                id: format!("r{n}"),
                // One tombstone per collection.
                value: (n != 2).then(|| format!("{{\"n\":{n}}}")),
                stamp: stamp(i as u64 * 10 + n),
                fields: None,
            });
        }
    }
    for n in 0..7u64 {
        batch.events.push(EventRow {
            log: if n % 2 == 0 { "even" } else { "odd" }.into(),
            id: format!("{:016x}-e{n}", (n + 1) << 20),
            at: n,
            author,
            value: format!("{n}"),
        });
        batch.kv.push(KvRow {
            key: format!("k{n}"),
            value: (n != 3).then(|| format!("{n}")),
            stamp: stamp(100 + n),
        });
    }
    backend.write(batch).await.unwrap();
    // Several rows at once, in the order asked, tombstones included.
    let ids = ["r4", "r2", "missing", "r0"].map(String::from);
    let got = backend.get_records("a", &ids).await.unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap().value.as_deref(), Some("{\"n\":4}"));
    assert_eq!(got[1].as_ref().unwrap().value, None, "a tombstone");
    assert!(got[2].is_none());
    assert_eq!(got[3].as_ref().unwrap().id, "r0");
    let keys = ["k3", "k6", "nope"].map(String::from);
    let got = backend.get_kvs(&keys).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, None, "a tombstone");
    assert_eq!(got[1].as_ref().unwrap().value.as_deref(), Some("6"));
    assert!(got[2].is_none());
    for (table, expected) in [(Table::Records, 15), (Table::Events, 7), (Table::Kv, 7)] {
        let mut after: Option<(String, String)> = None;
        let mut seen = Vec::new();
        loop {
            let page = backend.scan(table, after.as_ref(), 4).await.unwrap();
            assert!(page.rows.len() <= 4);
            if page.rows.is_empty() {
                break;
            }
            after = page.last;
            seen.extend(page.rows.iter().map(|r| r.position()));
        }
        assert_eq!(seen.len(), expected, "{table:?}");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{table:?} without repeats");
    }
    // Events replace one another only when asked to.
    let event = |value: &str| EventRow {
        log: "even".into(),
        id: format!("{:016x}-e0", 1u64 << 20),
        at: 0,
        author,
        value: value.into(),
    };
    backend
        .write(WriteBatch {
            events: vec![event("changed")],
            replace_events: true,
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let first = backend
        .list_events("even", &EventQuery::default())
        .await
        .unwrap();
    assert_eq!(first[0].value, "changed");
}

/// Listings after writes, deletes and reopen-free repeats see exactly the
/// live rows (backends and layers that keep listing state must keep it true).
pub async fn listings_follow_writes(factory: &impl BackendFactory) {
    let store = store(factory).await;
    let notes = store.records("notes");
    let ids = |rows: Vec<crate::Record>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    for id in ["b", "d", "f"] {
        notes.put(id, json!({ "id": id })).await.unwrap();
    }
    assert_eq!(
        ids(notes.list(ListOptions::default()).await.unwrap()),
        ["b", "d", "f"]
    );
    notes.put("a", json!(1)).await.unwrap();
    notes.put("e", json!(2)).await.unwrap();
    notes.delete("d").await.unwrap();
    assert_eq!(
        ids(notes.list(ListOptions::default()).await.unwrap()),
        ["a", "b", "e", "f"]
    );
    let page = notes
        .list(ListOptions {
            after: Some("b".into()),
            limit: Some(1),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(page), ["e"]);
    notes.put("d", json!(3)).await.unwrap();
    let mut tx = store.transaction();
    tx.delete("notes", "a").unwrap();
    tx.put("notes", "c", json!(4)).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        ids(notes.list(ListOptions::default()).await.unwrap()),
        ["b", "c", "d", "e", "f"]
    );
    assert_eq!(notes.get("c").await.unwrap(), Some(json!(4)));
    let kv = store.kv();
    kv.set("k1", json!(1)).await.unwrap();
    kv.set("k3", json!(3)).await.unwrap();
    assert_eq!(
        ids(kv.list(ListOptions::default()).await.unwrap()),
        ["k1", "k3"]
    );
    kv.set("k2", json!(2)).await.unwrap();
    kv.delete("k1").await.unwrap();
    assert_eq!(
        ids(kv.list(ListOptions::default()).await.unwrap()),
        ["k2", "k3"]
    );
    store.close().await.unwrap();
}

pub async fn records_round_trip(factory: &impl BackendFactory) {
    let store = store(factory).await;
    let notes = store.records("notes");
    assert_eq!(notes.get("n1").await.unwrap(), None);
    notes
        .put(
            "n1",
            json!({ "title": "hi", "body": "...", "n": 1.5, "list": [1, "x", null] }),
        )
        .await
        .unwrap();
    assert_eq!(
        notes.get("n1").await.unwrap(),
        Some(json!({ "title": "hi", "body": "...", "n": 1.5, "list": [1, "x", null] }))
    );
    notes.put("n1", json!({ "title": "again" })).await.unwrap();
    assert_eq!(
        notes.get("n1").await.unwrap(),
        Some(json!({ "title": "again" }))
    );
    notes
        .put("ünï/cödé 🙂", json!("a string document"))
        .await
        .unwrap();
    assert_eq!(
        notes.get("ünï/cödé 🙂").await.unwrap(),
        Some(json!("a string document"))
    );
    notes.delete("n1").await.unwrap();
    assert_eq!(notes.get("n1").await.unwrap(), None);
    // JSON text in and out, as bindings use it: checked, stored as is.
    notes
        .put_json("j", r#"{"b":1,"a":[true,null]}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(
        notes.get_json("j").await.unwrap().as_deref(),
        Some(r#"{"b":1,"a":[true,null]}"#)
    );
    assert_eq!(
        notes.get("j").await.unwrap(),
        Some(json!({ "a": [true, null], "b": 1 }))
    );
    assert_eq!(
        notes
            .put_json("j", "{not json".to_owned())
            .await
            .unwrap_err()
            .code(),
        "INVALID_VALUE"
    );
    assert_eq!(
        notes.get_json("j").await.unwrap().as_deref(),
        Some(r#"{"b":1,"a":[true,null]}"#)
    );
    store.kv().set_json("jk", "[1,2]".to_owned()).await.unwrap();
    assert_eq!(
        store.kv().get_json("jk").await.unwrap().as_deref(),
        Some("[1,2]")
    );
    notes
        .put_many_json(vec![
            ("j1".into(), "1".into()),
            ("j2".into(), "\"two\"".into()),
        ])
        .await
        .unwrap();
    assert_eq!(notes.get("j2").await.unwrap(), Some(json!("two")));
    // Collections are separate namespaces.
    assert_eq!(
        store.records("other").get("ünï/cödé 🙂").await.unwrap(),
        None
    );
    store.close().await.unwrap();
}

pub async fn list_prefix_after_limit(factory: &impl BackendFactory) {
    let store = store(factory).await;
    let items = store.records("items");
    let ids = ["a1", "a2", "a3", "a4", "b1", "b2", "c", "a"];
    items
        .put_many(ids.iter().map(|id| (*id, json!({ "id": id }))))
        .await
        .unwrap();
    items.delete("a3").await.unwrap();
    store.records("itemz").put("a5", json!(1)).await.unwrap();
    let list = |prefix: Option<&str>, after: Option<&str>, limit: Option<usize>| {
        let items = items.clone();
        let options = ListOptions {
            prefix: prefix.map(str::to_owned),
            after: after.map(str::to_owned),
            limit,
        };
        async move {
            items
                .list(options)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(None, None, None).await,
        ["a", "a1", "a2", "a4", "b1", "b2", "c"]
    );
    assert_eq!(list(Some("a"), None, None).await, ["a", "a1", "a2", "a4"]);
    assert_eq!(list(Some("a"), Some("a1"), None).await, ["a2", "a4"]);
    assert_eq!(list(Some("a"), Some("a1"), Some(1)).await, ["a2"]);
    assert_eq!(list(Some("b"), Some("a9"), None).await, ["b1", "b2"]);
    assert_eq!(
        list(Some("b"), Some("b2"), None).await,
        Vec::<String>::new()
    );
    assert_eq!(list(None, Some("b1"), Some(2)).await, ["b2", "c"]);
    assert_eq!(list(Some("zz"), None, None).await, Vec::<String>::new());
    assert_eq!(list(None, None, Some(0)).await, Vec::<String>::new());
    let first = items
        .list(ListOptions {
            limit: Some(1),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(first[0].value, json!({ "id": "a" }));
    // Backend-level listing skips tombstones too.
    let backend = RecordQuery {
        prefix: Some("a3".into()),
        ..RecordQuery::default()
    };
    assert!(store
        .inner_backend_for_tests()
        .list_records("items", &backend)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .inner_backend_for_tests()
        .get_record("items", "a3")
        .await
        .unwrap()
        .is_some_and(|r| r.value.is_none()));
    store.close().await.unwrap();
}

pub async fn events_in_log_order(factory: &impl BackendFactory) {
    let now = Arc::new(Mutex::new(1_700_000_000_000u64));
    let clock = now.clone();
    let store = open(
        factory,
        StoreOptions::new("conformance").clock(move || *clock.lock().unwrap()),
    )
    .await;
    let audit = store.events("audit");
    let mut appended = Vec::new();
    for i in 0..5 {
        *now.lock().unwrap() += 10;
        appended.push(audit.append(json!({ "i": i })).await.unwrap());
    }
    store
        .events("other")
        .append(json!("elsewhere"))
        .await
        .unwrap();
    let other = store.events("other");
    other
        .append_json(r#"{"as":"text"}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(
        other
            .append_json("{oops".to_owned())
            .await
            .unwrap_err()
            .code(),
        "INVALID_VALUE"
    );
    assert_eq!(
        other.list(EventListOptions::default()).await.unwrap().len(),
        2
    );
    let all = audit.list(EventListOptions::default()).await.unwrap();
    assert_eq!(all.len(), 5);
    let mut sorted_ids: Vec<_> = appended.iter().map(|e| e.id.clone()).collect();
    sorted_ids.sort();
    assert_eq!(
        all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        sorted_ids
    );
    assert_eq!(
        all.iter()
            .map(|e| e.value["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(all[0].at, 1_700_000_000_010);
    let after_second = audit
        .list(EventListOptions {
            since: Some(Since::Id(appended[1].id.clone())),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(after_second.len(), 3);
    let by_time = audit
        .list(EventListOptions {
            since: Some(Since::Millis(1_700_000_000_030)),
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(by_time.len(), 1);
    assert_eq!(by_time[0].value, json!({ "i": 3 }));
    assert_eq!(all[0].author, store.device_id());
    store.close().await.unwrap();
}

pub async fn kv_round_trip(factory: &impl BackendFactory) {
    let store = store(factory).await;
    let kv = store.kv();
    assert_eq!(kv.get("theme").await.unwrap(), None);
    kv.set("theme", "dark").await.unwrap();
    kv.set("count", 3).await.unwrap();
    assert_eq!(kv.get("theme").await.unwrap(), Some(json!("dark")));
    assert_eq!(kv.get_as::<u32>("count").await.unwrap(), Some(3));
    kv.set("theme", json!({ "mode": "light" })).await.unwrap();
    assert_eq!(
        kv.get("theme").await.unwrap(),
        Some(json!({ "mode": "light" }))
    );
    kv.delete("theme").await.unwrap();
    assert_eq!(kv.get("theme").await.unwrap(), None);
    let keys: Vec<_> = kv
        .list(ListOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(keys, ["count"]);
    store.close().await.unwrap();
}

pub async fn transaction_is_one_commit(factory: &impl BackendFactory) {
    let store = store(factory).await;
    let mut tx = store.transaction();
    tx.put("notes", "a", json!({ "x": 1 })).unwrap();
    tx.put("notes", "b", json!({ "x": 2 })).unwrap();
    tx.append("audit", json!("created a and b")).unwrap();
    tx.set("last", "b").unwrap();
    tx.delete("notes", "a").unwrap();
    let receipt = tx.commit().await.unwrap();
    assert_eq!(receipt.seq, 1);
    assert_eq!(receipt.events.len(), 1);
    assert_eq!(store.records("notes").get("a").await.unwrap(), None);
    assert_eq!(
        store.records("notes").get("b").await.unwrap(),
        Some(json!({ "x": 2 }))
    );
    assert_eq!(store.kv().get("last").await.unwrap(), Some(json!("b")));
    assert_eq!(
        store.version_vector().await.unwrap(),
        vec![(store.device_id(), 1)]
    );
    let commits = store.commits_missing_from(&[], 100).await.unwrap();
    assert_eq!(commits.len(), 1);
    let commit = store.verify_commit(commits[0].clone()).unwrap();
    assert_eq!(commit.body.ops.len(), 5);
    store.close().await.unwrap();
}

pub async fn change_log_and_version_vector(factory: &impl BackendFactory) {
    let store = store(factory).await;
    for i in 0..10 {
        store.kv().set(&format!("k{i}"), i).await.unwrap();
    }
    let me = store.device_id();
    assert_eq!(store.version_vector().await.unwrap(), vec![(me, 10)]);
    // Metadata carries the version vector, so a writer starts with one read.
    let meta = store.inner_backend_for_tests().load_meta().await.unwrap();
    assert_eq!(meta.heads, store.version_vector().await.unwrap());
    // The persisted clock covers every stamp in the log.
    let last = store.kv().set("last", 0).await.unwrap().hlc;
    assert!(
        store
            .inner_backend_for_tests()
            .load_meta()
            .await
            .unwrap()
            .clock
            >= last
    );
    assert_eq!(store.version_vector().await.unwrap(), vec![(me, 11)]);
    assert_eq!(
        store
            .commits_missing_from(&[(me, 7)], 100)
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        store
            .commits_missing_from(&[(me, 11)], 100)
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(store.commits_missing_from(&[], 4).await.unwrap().len(), 4);
    let seqs: Vec<u64> = store
        .commits_missing_from(&[], 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| store.verify_commit(c).unwrap().body.seq)
        .collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    store.close().await.unwrap();
}

/// Copies everything `from` has that `to` lacks.
pub async fn sync_into(from: &Store, to: &Store) -> crate::IngestReport {
    let theirs = to.version_vector().await.unwrap();
    let missing = from
        .commits_missing_from(&theirs, usize::MAX)
        .await
        .unwrap();
    to.ingest(missing).await.unwrap()
}

/// A second replica of `of`'s store on a fresh backend, with its own device
/// key: it adopts the store id before its first write, as pairing will.
async fn replica(factory: &impl BackendFactory, of: &Store, options: StoreOptions) -> Store {
    let backend = factory.make().await;
    let keys = Arc::new(MemoryKeyStore::generate().unwrap());
    let options = options.backend(backend.clone()).key_store(keys);
    let store = Store::open(options.encrypt(factory.encrypt()))
        .await
        .unwrap();
    // Admitted by `of` (what pairing does over the network).
    let welcome = of.admit_device(store.device_id(), "replica").await.unwrap();
    store.join(welcome).await.unwrap();
    assert_eq!(store.store_id(), of.store_id());
    store
}

pub async fn replicas_converge_by_ingest(factory: &impl BackendFactory) {
    let a = store(factory).await;
    let b = replica(factory, &a, StoreOptions::new("conformance")).await;
    a.records("notes")
        .put("n1", json!({ "by": "a" }))
        .await
        .unwrap();
    b.records("notes")
        .put("n1", json!({ "by": "b" }))
        .await
        .unwrap();
    b.records("notes")
        .put("n2", json!({ "by": "b" }))
        .await
        .unwrap();
    a.events("log").append("from a").await.unwrap();
    b.kv().set("k", "from b").await.unwrap();
    let report = sync_into(&a, &b).await;
    assert_eq!((report.applied, report.rejected.len()), (2, 0));
    let report = sync_into(&b, &a).await;
    assert_eq!((report.applied, report.rejected.len()), (3, 0));
    // Applying again is a no-op.
    let again = a
        .ingest(b.commits_missing_from(&[], usize::MAX).await.unwrap())
        .await
        .unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 5));
    for id in ["n1", "n2"] {
        assert_eq!(
            a.records("notes").get(id).await.unwrap(),
            b.records("notes").get(id).await.unwrap()
        );
    }
    // B wrote n1 after observing nothing of A, but later than A by its clock or by author order:
    // either way both replicas agree, and on exactly one winner.
    let winner = a.records("notes").get("n1").await.unwrap().unwrap();
    assert!(winner == json!({ "by": "a" }) || winner == json!({ "by": "b" }));
    assert_eq!(a.kv().get("k").await.unwrap(), Some(json!("from b")));
    assert_eq!(
        b.events("log")
            .list(EventListOptions::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.version_vector().await.unwrap(),
        b.version_vector().await.unwrap()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

pub async fn subscribers_see_committed_changes(factory: &impl BackendFactory) {
    let store = store(factory).await;
    type Seen = Vec<(String, Option<serde_json::Value>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    let sub = store
        .records("notes")
        .subscribe(move |changes| {
            let mut seen = sink.lock().unwrap();
            seen.extend(changes.iter().map(|c| (c.id.clone(), c.value.clone())));
        })
        .unwrap();
    store
        .records("notes")
        .put("n1", json!({ "v": 1 }))
        .await
        .unwrap();
    store
        .records("other")
        .put("x", json!({ "v": 1 }))
        .await
        .unwrap();
    store.records("notes").delete("n1").await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("n1".to_owned(), Some(json!({ "v": 1 }))),
            ("n1".to_owned(), None)
        ]
    );
    drop(sub);
    store.records("notes").put("n2", json!({})).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    // The same as a stream.
    use futures::StreamExt;
    let mut stream = store.records("notes").changes().unwrap();
    store
        .records("notes")
        .put("n3", json!({ "s": 1 }))
        .await
        .unwrap();
    store.records("notes").delete("n3").await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (first[0].id.as_str(), first[0].value.clone()),
        ("n3", Some(json!({ "s": 1 })))
    );
    assert_eq!(
        (second[0].id.as_str(), second[0].value.clone()),
        ("n3", None)
    );
    // A consumer that falls behind is told how much it missed.
    let mut slow = store.records("notes").changes_buffered(2).unwrap();
    for i in 0..6 {
        store
            .records("notes")
            .put("n4", json!({ "i": i }))
            .await
            .unwrap();
    }
    drop(stream);
    let (mut delivered, mut missed) = (0, 0);
    while let Some(Some(item)) = futures::FutureExt::now_or_never(slow.next()) {
        match item {
            Ok(changes) => delivered += changes.len() as u64,
            Err(crate::store::Lagged(n)) => missed += n,
        }
    }
    assert!(missed >= 1, "the slow consumer was told it lagged");
    assert_eq!(delivered + missed, 6);
    store.close().await.unwrap();
}

pub async fn concurrent_writers_group_commit(factory: &impl BackendFactory) {
    let store = store(factory).await;
    let writes = (0..64).map(|i| {
        let records = store.records("load");
        async move {
            records
                .put(&format!("r{i:02}"), json!({ "i": i }))
                .await
                .unwrap()
        }
    });
    let receipts = futures::future::join_all(writes).await;
    // Writes queued together may share a commit, but each has its own stamp,
    // and commits are numbered without gaps.
    let mut stamps: Vec<_> = receipts.iter().map(|r| r.hlc).collect();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), 64);
    let commits = receipts.iter().map(|r| r.seq).max().unwrap();
    let mut seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    seqs.dedup();
    assert!(seqs.iter().all(|s| (1..=commits).contains(s)));
    let listed = store
        .records("load")
        .list(ListOptions::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 64);
    assert_eq!(
        store.version_vector().await.unwrap(),
        vec![(store.device_id(), commits)]
    );
    let log = store.commits_missing_from(&[], usize::MAX).await.unwrap();
    let ops: usize = log
        .into_iter()
        .map(|c| store.verify_commit(c).unwrap().body.ops.len())
        .sum();
    assert_eq!(ops, 64, "every write is in the change log exactly once");
    store.close().await.unwrap();
}

pub async fn refused_input_loses_nothing(factory: &impl BackendFactory) {
    let limits = crate::Limits {
        max_value_bytes: 1024,
        max_commit_bytes: 4096,
        ..crate::Limits::default()
    };
    let store = open(factory, StoreOptions::new("conformance").limits(limits)).await;
    let notes = store.records("notes");
    notes.put("keep", json!({ "v": "original" })).await.unwrap();
    let big = json!({ "v": "x".repeat(2000) });
    assert_eq!(
        notes.put("keep", big.clone()).await.unwrap_err().code(),
        "VALUE_TOO_LARGE"
    );
    assert_eq!(
        store.kv().set("k", big.clone()).await.unwrap_err().code(),
        "VALUE_TOO_LARGE"
    );
    assert_eq!(
        store.events("log").append(big).await.unwrap_err().code(),
        "VALUE_TOO_LARGE"
    );
    assert_eq!(
        store
            .records("bad name")
            .put("x", 1)
            .await
            .unwrap_err()
            .code(),
        "INVALID_NAME"
    );
    assert_eq!(
        store.records("").get("x").await.unwrap_err().code(),
        "INVALID_NAME"
    );
    assert_eq!(notes.put("", 1).await.unwrap_err().code(), "INVALID_NAME");
    assert_eq!(
        notes.put("a\u{0}b", 1).await.unwrap_err().code(),
        "INVALID_NAME"
    );
    assert_eq!(
        store
            .kv()
            .set(&"k".repeat(600), 1)
            .await
            .unwrap_err()
            .code(),
        "INVALID_NAME"
    );
    assert_eq!(
        store.events("no/slash").append(1).await.unwrap_err().code(),
        "INVALID_NAME"
    );
    let mut tx = store.transaction();
    tx.put("notes", "other", json!(1)).unwrap();
    assert_eq!(
        tx.put("notes", "keep", json!("y".repeat(2000)))
            .unwrap_err()
            .code(),
        "VALUE_TOO_LARGE"
    );
    assert_eq!(
        notes.get("keep").await.unwrap(),
        Some(json!({ "v": "original" }))
    );
    assert_eq!(notes.get("other").await.unwrap(), None);
    assert_eq!(
        store.version_vector().await.unwrap(),
        vec![(store.device_id(), 1)]
    );
    // A transaction over the commit limit is refused whole...
    let mut tx = store.transaction();
    for i in 0..5 {
        tx.put("notes", &format!("big{i}"), json!("z".repeat(900)))
            .unwrap();
    }
    assert_eq!(tx.commit().await.unwrap_err().code(), "VALUE_TOO_LARGE");
    assert_eq!(notes.get("big0").await.unwrap(), None);
    // ...while concurrent writes that only together exceed it are split
    // into several commits, all acknowledged.
    let writes = (0..5).map(|i| {
        let notes = notes.clone();
        async move {
            notes
                .put(&format!("big{i}"), json!("z".repeat(900)))
                .await
                .unwrap()
        }
    });
    futures::future::join_all(writes).await;
    for i in 0..5 {
        assert!(notes.get(&format!("big{i}")).await.unwrap().is_some());
    }
    let commits = store.version_vector().await.unwrap()[0].1;
    assert!(commits >= 3, "1 + at least 2 commits, got {commits}");
    // Forged and foreign commits are refused and never stored.
    let mut forged = store.commits_missing_from(&[], 1).await.unwrap();
    forged[0].signature[0] ^= 1;
    let report = store.ingest(forged).await.unwrap();
    assert_eq!(report.rejected[0].1.code(), "SIGNATURE_INVALID");
    store.close().await.unwrap();
}

pub async fn merge_fields_and_custom_resolvers(factory: &impl BackendFactory) {
    let keys_a = Arc::new(MemoryKeyStore::generate().unwrap());
    let sum = ConflictStrategy::custom(|c| {
        let n = |v: Option<&serde_json::Value>| v.and_then(|v| v["n"].as_i64()).unwrap_or(0);
        Some(json!({ "n": n(c.earlier.value) + n(c.later.value) }))
    });
    let options = || {
        StoreOptions::new("conformance")
            .collection_strategy("docs", ConflictStrategy::MergeFields)
            .collection_strategy("counters", sum.clone())
    };
    let a = Store::open(
        options()
            .encrypt(factory.encrypt())
            .backend(factory.make().await)
            .key_store(keys_a),
    )
    .await
    .unwrap();
    let b = replica(factory, &a, options()).await;

    a.records("docs")
        .put("d", json!({ "title": "A", "body": "old" }))
        .await
        .unwrap();
    sync_into(&a, &b).await;
    // Concurrent edits of different fields both survive.
    a.records("docs")
        .put("d", json!({ "title": "A2", "body": "old" }))
        .await
        .unwrap();
    b.records("docs")
        .put("d", json!({ "title": "A", "body": "new" }))
        .await
        .unwrap();
    a.records("counters")
        .put("c", json!({ "n": 2 }))
        .await
        .unwrap();
    b.records("counters")
        .put("c", json!({ "n": 3 }))
        .await
        .unwrap();
    sync_into(&a, &b).await;
    sync_into(&b, &a).await;
    for store in [&a, &b] {
        assert_eq!(
            store.records("docs").get("d").await.unwrap(),
            Some(json!({ "title": "A2", "body": "new" }))
        );
        assert_eq!(
            store.records("counters").get("c").await.unwrap(),
            Some(json!({ "n": 5 }))
        );
    }
    // Later writes of one transaction see the earlier ones.
    let mut tx = a.transaction();
    tx.put("docs", "t", json!({ "a": 1, "b": 2 })).unwrap();
    tx.put("docs", "t", json!({ "a": 1 })).unwrap();
    tx.put("counters", "k", json!({ "n": 1 })).unwrap();
    tx.put("counters", "k", json!({ "n": 7 })).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        a.records("docs").get("t").await.unwrap(),
        Some(json!({ "a": 1 }))
    );
    assert_eq!(
        a.records("counters").get("k").await.unwrap(),
        Some(json!({ "n": 7 }))
    );
    // Merge-fields collections hold objects.
    assert_eq!(
        a.records("docs")
            .put("x", json!([1]))
            .await
            .unwrap_err()
            .code(),
        "INVALID_VALUE"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

pub async fn closed_store_refuses_calls(factory: &impl BackendFactory) {
    let store = store(factory).await;
    store.records("notes").put("n", 1).await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert_eq!(
        store.records("notes").put("n", 2).await.unwrap_err().code(),
        "CLOSED"
    );
    assert_eq!(
        store.records("notes").get("n").await.unwrap_err().code(),
        "CLOSED"
    );
    assert_eq!(store.kv().set("k", 1).await.unwrap_err().code(), "CLOSED");
    assert_eq!(
        store.events("e").append(1).await.unwrap_err().code(),
        "CLOSED"
    );
    assert_eq!(store.version_vector().await.unwrap_err().code(), "CLOSED");
}

/// A store with writes of its own joins another (as pairing does): its log
/// starts over under the joined store's id, what it held is written again
/// as its commits, and those commits replicate into the other store.
pub async fn joining_another_store_keeps_own_writes(factory: &impl BackendFactory) {
    let a = store(factory).await;
    a.records("notes")
        .put("a1", json!({ "by": "a" }))
        .await
        .unwrap();
    let b = open(factory, StoreOptions::new("joiner")).await;
    b.records("notes")
        .put("b1", json!({ "v": 1 }))
        .await
        .unwrap();
    b.records("notes")
        .put("b1", json!({ "v": 2 }))
        .await
        .unwrap();
    b.records("notes").put("gone", json!({})).await.unwrap();
    b.records("notes").delete("gone").await.unwrap();
    b.kv().set("k", json!([1])).await.unwrap();
    b.events("log").append(json!({ "e": 1 })).await.unwrap();
    let welcome = a.admit_device(b.device_id(), "joiner").await.unwrap();
    b.join(welcome).await.unwrap();
    assert_eq!(b.store_id(), a.store_id());
    assert_eq!(
        b.records("notes").get("b1").await.unwrap(),
        Some(json!({ "v": 2 }))
    );
    assert_eq!(b.records("notes").get("gone").await.unwrap(), None);
    assert_eq!(b.kv().get("k").await.unwrap(), Some(json!([1])));
    let events = b
        .events("log")
        .list(EventListOptions::default())
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    // One commit of the joiner, numbered from 1 in the joined store.
    let vv = b.version_vector().await.unwrap();
    assert_eq!(vv, vec![(b.device_id(), 1)]);
    let report = a
        .ingest(b.commits_missing_from(&[], usize::MAX).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(
        a.records("notes").get("b1").await.unwrap(),
        Some(json!({ "v": 2 }))
    );
    // A later write continues the joiner's sequence.
    b.kv().set("k2", json!(2)).await.unwrap();
    let vv = b.version_vector().await.unwrap();
    assert_eq!(vv, vec![(b.device_id(), 2)]);
}
