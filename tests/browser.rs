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
