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

mod memory {
    use std::sync::Arc;

    use persist::storage::{MemoryStore, StorageBackend};

    persist::storage_conformance_tests!(wasm_bindgen_test::wasm_bindgen_test, || async {
        Arc::new(MemoryStore::new()) as Arc<dyn StorageBackend>
    });
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
            let commit =
                persist::Commit::verify(signed.clone(), a.store_id(), &persist::Limits::default())
                    .expect("verifies");
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
