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

/// The encrypting decorator keeps the contract on both backends.
mod sealed_memory {
    use std::sync::Arc;

    use persist::crypto::Keyring;
    use persist::storage::{MemoryStore, SealedStorage, StorageBackend};
    use persist::StoreId;

    persist::storage_conformance_tests!(tokio::test, || async {
        let keyring = Keyring::create(StoreId::generate().expect("id")).expect("keyring");
        Arc::new(SealedStorage::new(Arc::new(MemoryStore::new()), keyring).expect("sealed"))
            as Arc<dyn StorageBackend>
    });
}

mod sealed_sqlite {
    use std::sync::Arc;

    use persist::crypto::Keyring;
    use persist::platform::native::SqliteStore;
    use persist::storage::{SealedStorage, StorageBackend};
    use persist::StoreId;

    persist::storage_conformance_tests!(tokio::test, || async {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let inner = Arc::new(SqliteStore::open(&dir.join("store.db")).expect("opens"));
        let keyring = Keyring::create(StoreId::generate().expect("id")).expect("keyring");
        Arc::new(SealedStorage::new(inner, keyring).expect("sealed")) as Arc<dyn StorageBackend>
    });
}

/// The whole suite on encrypted stores (`encrypt: true`): sealed commits,
/// sealed rows, hashed names.
mod encrypted_memory {
    use std::sync::Arc;

    use persist::storage::conformance::Encrypted;
    use persist::storage::{MemoryStore, StorageBackend};

    persist::storage_conformance_tests!(
        tokio::test,
        Encrypted(|| async { Arc::new(MemoryStore::new()) as Arc<dyn StorageBackend> })
    );
}

mod encrypted_sqlite {
    use std::sync::Arc;

    use persist::platform::native::SqliteStore;
    use persist::storage::conformance::Encrypted;
    use persist::storage::StorageBackend;

    persist::storage_conformance_tests!(
        tokio::test,
        Encrypted(|| async {
            let dir = tempfile::tempdir().expect("temp dir").keep();
            Arc::new(SqliteStore::open(&dir.join("store.db")).expect("opens"))
                as Arc<dyn StorageBackend>
        })
    );
}
