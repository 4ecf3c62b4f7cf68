//! The shared storage conformance suite, run against every native backend.

#![cfg(not(all(target_family = "wasm", target_os = "unknown")))]

mod memory {
    use std::sync::Arc;

    use persist::storage::{MemoryStore, StorageBackend};

    persist::storage_conformance_tests!(tokio::test, || async {
        Arc::new(MemoryStore::new()) as Arc<dyn StorageBackend>
    });
}

mod sqlite {
    use std::sync::Arc;

    use persist::platform::native::SqliteStore;
    use persist::storage::StorageBackend;

    /// A fresh database file in a directory that lives as long as the test process.
    fn fresh() -> Arc<dyn StorageBackend> {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        Arc::new(SqliteStore::open(&dir.join("store.db")).expect("opens"))
    }

    persist::storage_conformance_tests!(tokio::test, || async { fresh() });
}
