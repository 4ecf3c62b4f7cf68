//! The storage conformance suite in a real browser (headless Chromium via
//! `wasm-bindgen-test`): IndexedDB and memory backends, plus what only
//! IndexedDB has (persistence across reopen, foreign and newer databases).
#![cfg(all(target_family = "wasm", target_os = "unknown"))]
// Backends are shared as `Arc<dyn StorageBackend>` on every platform; in the
// browser they are not `Send`, which is fine on its one thread.
#![allow(clippy::arc_with_non_send_sync)]

use std::sync::atomic::{AtomicU32, Ordering};

use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// A database name no other test (or earlier run) uses.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        persist::platform::now_ms(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

mod indexeddb {
    use std::sync::Arc;

    use persist::platform::web::IdbStore;
    use persist::storage::StorageBackend;

    persist::storage_conformance_tests!(wasm_bindgen_test::wasm_bindgen_test, || async {
        let store = IdbStore::open(&super::unique_name("conformance"))
            .await
            .expect("opens IndexedDB");
        Arc::new(store) as Arc<dyn StorageBackend>
    });
}

/// The whole suite on encrypted stores over IndexedDB.
mod encrypted_indexeddb {
    use std::sync::Arc;

    use persist::platform::web::IdbStore;
    use persist::storage::conformance::Encrypted;
    use persist::storage::StorageBackend;

    persist::storage_conformance_tests!(
        wasm_bindgen_test::wasm_bindgen_test,
        Encrypted(|| async {
            let store = IdbStore::open(&super::unique_name("sealed-conformance"))
                .await
                .expect("opens IndexedDB");
            Arc::new(store) as Arc<dyn StorageBackend>
        })
    );
}

mod memory {
    use std::sync::Arc;

    use persist::storage::{MemoryStore, StorageBackend};

    persist::storage_conformance_tests!(wasm_bindgen_test::wasm_bindgen_test, || async {
        Arc::new(MemoryStore::new()) as Arc<dyn StorageBackend>
    });
}

/// The encryption layer's known-answer vectors give the same bytes in wasm
/// as natively (and as the independent implementation that made them).
#[wasm_bindgen_test]
fn crypto_known_answer_vectors() {
    persist::crypto::test_vectors::check().expect("vectors reproduce in wasm");
}

mod idb_only {
    use persist::platform::web::IdbStore;
    use persist::{Adapter, ListOptions, Store, StoreOptions};
    use rexie::{ObjectStore, Rexie};
    use serde_json::json;

    use super::{unique_name, wasm_bindgen_test};

    #[wasm_bindgen_test]
    async fn data_survives_reopen() {
        let name = unique_name("reopen");
        let store = Store::open(StoreOptions::new(&name)).await.expect("opens");
        assert!(store.describe().starts_with("indexeddb:"));
        let (id, device) = (store.store_id(), store.device_id());
        store
            .records("notes")
            .put("n1", json!({ "title": "hi" }))
            .await
            .expect("put");
        store
            .events("audit")
            .append(json!("one"))
            .await
            .expect("append");
        store.kv().set("theme", "dark").await.expect("set");
        store.close().await.expect("closes");

        let store = Store::open(StoreOptions::new(&name).adapter(Adapter::IndexedDb))
            .await
            .expect("reopens");
        assert_eq!(store.store_id(), id);
        assert_eq!(
            store.device_id(),
            device,
            "the device identity is kept beside the data"
        );
        let receipt = store.kv().set("again", 1).await.expect("set");
        assert_eq!(
            receipt.seq, 4,
            "this device's commits continue its sequence"
        );
        assert_eq!(
            store.records("notes").get("n1").await.expect("get"),
            Some(json!({ "title": "hi" }))
        );
        assert_eq!(
            store.kv().get("theme").await.expect("get"),
            Some(json!("dark"))
        );
        assert_eq!(
            store
                .records("notes")
                .list(ListOptions::default())
                .await
                .expect("list")
                .len(),
            1
        );
        store.close().await.expect("closes");
        IdbStore::delete(&name).await.expect("deletes");
    }

    /// Two handles on one store behave like two tabs of the origin: one
    /// device identity, one database, writes serialized by a Web Lock.
    #[wasm_bindgen_test]
    async fn two_tabs_share_one_device_without_forking_its_log() {
        let name = unique_name("tabs");
        let a = Store::open(StoreOptions::new(&name)).await.expect("tab a");
        let b = Store::open(StoreOptions::new(&name)).await.expect("tab b");
        assert_eq!(a.device_id(), b.device_id());
        let writes = (0..20).flat_map(|i| {
            let (ra, rb) = (a.records("notes"), b.records("notes"));
            [
                Box::pin(async move {
                    ra.put(&format!("a{i:02}"), json!({ "i": i }))
                        .await
                        .map(|_| ())
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = persist::Result<()>>>>,
                Box::pin(async move {
                    rb.put(&format!("b{i:02}"), json!({ "i": i }))
                        .await
                        .map(|_| ())
                }),
            ]
        });
        for result in futures::future::join_all(writes).await {
            result.expect("every write of both tabs is acknowledged");
        }
        let vv = a.version_vector().await.expect("version vector");
        assert_eq!(vv.len(), 1);
        let commits = a.commits_missing_from(&[], usize::MAX).await.expect("log");
        let mut ops = 0;
        for (i, signed) in commits.iter().enumerate() {
            let commit = a.verify_commit(signed.clone()).expect("verifies");
            assert_eq!(
                commit.body.seq,
                i as u64 + 1,
                "sequence numbers without gaps or forks"
            );
            ops += commit.body.ops.len();
        }
        assert_eq!(vv[0].1 as usize, commits.len());
        assert_eq!(ops, 40, "all 40 writes are in the change log exactly once");
        assert_eq!(
            b.records("notes")
                .list(ListOptions::default())
                .await
                .expect("list")
                .len(),
            40
        );
        a.close().await.expect("closes");
        b.close().await.expect("closes");
    }

    #[wasm_bindgen_test]
    async fn tabs_creating_one_store_together_agree_on_its_id() {
        let name = unique_name("create");
        let (a, b) = futures::join!(
            Store::open(StoreOptions::new(&name)),
            Store::open(StoreOptions::new(&name))
        );
        let (a, b) = (a.expect("tab a"), b.expect("tab b"));
        assert_eq!(a.store_id(), b.store_id());
        assert_eq!(a.device_id(), b.device_id());
        b.records("notes")
            .put("n1", json!({ "from": "b" }))
            .await
            .expect("b writes");
        let seen = a.records("notes").get("n1").await.expect("a reads");
        assert_eq!(seen, Some(json!({ "from": "b" })));
    }

    #[wasm_bindgen_test]
    async fn a_tab_hears_of_another_tabs_writes() {
        use futures::StreamExt;
        let name = unique_name("hear");
        let a = Store::open(StoreOptions::new(&name)).await.expect("tab a");
        let b = Store::open(StoreOptions::new(&name)).await.expect("tab b");
        let mut changes = a.records("notes").changes().expect("stream");
        let started = persist::platform::now_ms();
        b.records("notes")
            .put("from-b", json!({ "hello": "a" }))
            .await
            .expect("put");
        let heard = changes.next().await.expect("an item").expect("no lag");
        let elapsed = persist::platform::now_ms() - started;
        assert_eq!(heard[0].id, "from-b");
        assert_eq!(heard[0].value, Some(json!({ "hello": "a" })));
        assert!(elapsed < 100, "heard after {elapsed} ms");
        a.close().await.expect("closes");
        b.close().await.expect("closes");
    }

    #[wasm_bindgen_test]
    async fn sqlite_adapter_names_indexeddb() {
        let err = Store::open(StoreOptions::new("x").adapter(Adapter::Sqlite))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), "ADAPTER_UNAVAILABLE");
        assert!(err.to_string().contains("\"indexeddb\""), "{err}");
    }

    #[wasm_bindgen_test]
    async fn foreign_database_is_refused() {
        let name = unique_name("foreign");
        let foreign = Rexie::builder(&format!("persist:{name}"))
            .version(1)
            .add_object_store(ObjectStore::new("customers"))
            .build()
            .await
            .expect("creates a foreign database");
        foreign.close();
        let err = IdbStore::open(&name).await.err().expect("refused");
        assert_eq!(err.code(), "STORAGE_CORRUPT", "{err}");
        // Refused before any upgrade: still version 1, still its own stores.
        let after = Rexie::builder(&format!("persist:{name}"))
            .build()
            .await
            .expect("reopens");
        assert_eq!(after.store_names(), vec!["customers".to_owned()]);
        after.close();
    }

    /// A database written by schema version 1 (which kept the version vector
    /// in a `heads` store) opens under version 2 with its data, its device
    /// and its log intact, and the device's next commit follows its last.
    #[wasm_bindgen_test]
    async fn version_1_database_is_upgraded() {
        use js_sys::{Array, Object, Reflect, Uint8Array};
        use persist::keys::MemoryKeyStore;
        use persist::DeviceIdentity;
        use std::sync::Arc;
        use wasm_bindgen::JsValue;

        // The same history a version-1 tab would have stored.
        let identity = DeviceIdentity::generate().expect("identity");
        let source = Store::open(
            StoreOptions::new("v1-source")
                .adapter(Adapter::Memory)
                .key_store(Arc::new(MemoryKeyStore::from_identity(&identity))),
        )
        .await
        .expect("memory store");
        source
            .records("notes")
            .put("n1", json!({ "title": "from v1" }))
            .await
            .expect("put");
        let signed = source.commits_missing_from(&[], 10).await.expect("log");
        let commit = source.verify_commit(signed[0].clone()).expect("valid");
        let author = commit.body.author.to_string();
        let hlc = format!("{:016x}", commit.body.hlc.as_u64());

        let name = unique_name("v1");
        let db = Rexie::builder(&format!("persist:{name}"))
            .version(1)
            .add_object_store(ObjectStore::new("meta"))
            .add_object_store(ObjectStore::new("change_log"))
            .add_object_store(ObjectStore::new("heads"))
            .add_object_store(ObjectStore::new("records"))
            .add_object_store(ObjectStore::new("events"))
            .add_object_store(ObjectStore::new("kv"))
            .build()
            .await
            .expect("creates a version-1 database");
        let object = |fields: &[(&str, JsValue)]| {
            let o = Object::new();
            for (k, v) in fields {
                Reflect::set(&o, &JsValue::from_str(k), v).expect("set");
            }
            JsValue::from(o)
        };
        let tx = db
            .transaction(
                &["meta", "change_log", "heads", "records"],
                rexie::TransactionMode::ReadWrite,
            )
            .expect("tx");
        let put = |store: &str, value: JsValue, key: JsValue| {
            let store = tx.store(store).expect("store");
            async move { store.put(&value, Some(&key)).await.expect("put") }
        };
        put(
            "meta",
            source.store_id().to_string().into(),
            "store_id".into(),
        )
        .await;
        put(
            "meta",
            hex::encode(identity.secret().as_ref()).into(),
            "device_key".into(),
        )
        .await;
        put(
            "change_log",
            object(&[
                ("hlc_last", hlc.clone().into()),
                ("body", Uint8Array::from(&signed[0].body[..]).into()),
                (
                    "signature",
                    Uint8Array::from(&signed[0].signature[..]).into(),
                ),
            ]),
            Array::of2(&author.clone().into(), &JsValue::from_f64(1.0)).into(),
        )
        .await;
        put(
            "heads",
            object(&[("seq", 1.0.into()), ("hlc_last", hlc.clone().into())]),
            author.clone().into(),
        )
        .await;
        put(
            "records",
            object(&[
                ("value", r#"{"title":"from v1"}"#.into()),
                ("hlc", hlc.into()),
                ("author", author.into()),
                ("fields", JsValue::NULL),
            ]),
            Array::of2(&"notes".into(), &"n1".into()).into(),
        )
        .await;
        tx.done().await.expect("committed");
        db.close();

        let store = Store::open(StoreOptions::new(&name))
            .await
            .expect("opens and upgrades");
        assert_eq!(store.store_id(), source.store_id());
        assert_eq!(store.device_id(), identity.device_id());
        assert_eq!(
            store.records("notes").get("n1").await.expect("get"),
            Some(json!({ "title": "from v1" }))
        );
        assert_eq!(
            store.version_vector().await.expect("vv"),
            vec![(identity.device_id(), 1)]
        );
        let receipt = store
            .records("notes")
            .put("n2", json!({ "title": "after" }))
            .await
            .expect("writes after the upgrade");
        assert_eq!(receipt.seq, 2);
        store.close().await.expect("close");
        let upgraded = Rexie::builder(&format!("persist:{name}"))
            .build()
            .await
            .expect("reopens");
        assert!(!upgraded.store_names().iter().any(|n| n == "heads"));
        upgraded.close();
    }

    #[wasm_bindgen_test]
    async fn newer_database_is_refused() {
        let name = unique_name("newer");
        let newer = Rexie::builder(&format!("persist:{name}"))
            .version(7)
            .add_object_store(ObjectStore::new("records"))
            .build()
            .await
            .expect("creates a newer database");
        newer.close();
        let err = IdbStore::open(&name).await.err().expect("refused");
        assert_eq!(err.code(), "STORAGE_VERSION_UNSUPPORTED", "{err}");
    }
}
