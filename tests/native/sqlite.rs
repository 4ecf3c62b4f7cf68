//! SQLite-specific behaviour: persistence across reopen, damaged and foreign
//! files, schema versions, and the device keyfile.

use std::path::{Path, PathBuf};

use persist::{Adapter, ListOptions, Store, StoreOptions};
use serde_json::json;
use sha2::{Digest, Sha256};

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    (dir, path)
}

async fn open(path: &Path) -> persist::Result<Store> {
    Store::open(StoreOptions::new("app").path(path)).await
}

/// Creates the store at `path` (database and keyfile) and closes it.
async fn create(path: &Path) {
    open(path)
        .await
        .expect("opens")
        .close()
        .await
        .expect("closes");
}

fn digest(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).expect("reads")).to_vec()
}

fn siblings(path: &Path) -> Vec<String> {
    let dir = path.parent().expect("parent");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn data_identity_and_sequence_survive_reopen() {
    let (_dir, path) = temp();
    let store = open(&path).await.expect("opens");
    let (store_id, device) = (store.store_id(), store.device_id());
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
    let last_hlc = store.kv().set("other", 1).await.expect("set").hlc;
    store.close().await.expect("closes");

    let store = open(&path).await.expect("reopens");
    assert_eq!((store.store_id(), store.device_id()), (store_id, device));
    assert_eq!(
        store.records("notes").get("n1").await.expect("get"),
        Some(json!({ "title": "hi" }))
    );
    assert_eq!(
        store.kv().get("theme").await.expect("get"),
        Some(json!("dark"))
    );
    let receipt = store
        .records("notes")
        .put("n2", json!({}))
        .await
        .expect("put");
    assert_eq!(receipt.seq, 5, "sequence numbers continue without gaps");
    assert!(
        receipt.hlc > last_hlc,
        "the clock never goes back across restarts"
    );
    assert_eq!(
        store
            .records("notes")
            .list(ListOptions::default())
            .await
            .expect("list")
            .len(),
        2
    );
    store.close().await.expect("closes");
}

#[tokio::test]
async fn keyfile_is_private_and_damage_is_reported_not_repaired() {
    let (_dir, path) = temp();
    create(&path).await;
    let keyfile = PathBuf::from(format!("{}.device-key", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keyfile)
            .expect("keyfile exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::write(&keyfile, "persist-device-key-v1 not-hex\n").expect("damages");
    let before = digest(&keyfile);
    let err = open(&path).await.expect_err("damaged key refused");
    assert_eq!(err.code(), "KEY_INVALID");
    assert_eq!(
        digest(&keyfile),
        before,
        "a damaged key is never overwritten"
    );
}

#[tokio::test]
async fn garbage_file_is_corrupt_and_untouched() {
    let (_dir, path) = temp();
    std::fs::write(
        &path,
        b"this is not a database, just some text that a user pointed us at\n".repeat(100),
    )
    .expect("writes");
    let before = (digest(&path), siblings(&path));
    let err = open(&path).await.expect_err("refused");
    assert_eq!(err.code(), "STORAGE_CORRUPT", "{err}");
    assert_eq!(
        (digest(&path), siblings(&path)),
        before,
        "nothing written, no side files"
    );
}

#[tokio::test]
async fn foreign_sqlite_database_is_refused_untouched() {
    let (_dir, path) = temp();
    {
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'x');")
            .expect("creates");
    }
    let before = (digest(&path), siblings(&path));
    let err = open(&path).await.expect_err("refused");
    assert_eq!(err.code(), "STORAGE_CORRUPT", "{err}");
    assert!(err.to_string().contains("foreign"), "{err}");
    assert_eq!((digest(&path), siblings(&path)), before);
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let (_dir, path) = temp();
    create(&path).await;
    {
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.pragma_update(None, "user_version", 99).expect("bumps");
    }
    let err = open(&path).await.expect_err("refused");
    assert_eq!(err.code(), "STORAGE_VERSION_UNSUPPORTED");
}

#[tokio::test]
async fn damaged_pages_give_storage_corrupt_not_a_panic() {
    let (_dir, path) = temp();
    let store = open(&path).await.expect("opens");
    let big = "x".repeat(300);
    for chunk in 0..20 {
        let items: Vec<(String, serde_json::Value)> = (0..100)
            .map(|i| (format!("r{chunk:02}-{i:03}"), json!({ "v": big })))
            .collect();
        store
            .records("bulk")
            .put_many(items)
            .await
            .expect("put_many");
    }
    store.close().await.expect("closes");
    // Fold the WAL into the main file, then scribble over its middle pages.
    {
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("checkpoints");
    }
    let mut bytes = std::fs::read(&path).expect("reads");
    assert!(bytes.len() > 64 * 1024);
    let (start, end) = (4096 * 2, bytes.len() - 4096);
    for (i, b) in bytes[start..end].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&path, &bytes).expect("writes");

    let mut codes = Vec::new();
    match open(&path).await {
        Err(e) => codes.push(e.code()),
        Ok(store) => {
            let listed = store.records("bulk").list(ListOptions::default()).await;
            codes.push(listed.err().map_or("OK", |e| e.code()));
            let got = store.records("bulk").get("r10-050").await;
            codes.push(got.err().map_or("OK", |e| e.code()));
            let put = store.records("bulk").put("new", json!({})).await;
            codes.push(put.err().map_or("OK", |e| e.code()));
            let _ = store.close().await;
        }
    }
    assert!(
        codes.contains(&"STORAGE_CORRUPT"),
        "damage must surface as STORAGE_CORRUPT, got {codes:?}"
    );
}

#[tokio::test]
async fn adapters_available_natively() {
    let err = Store::open(StoreOptions::new("x").adapter(Adapter::IndexedDb))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "ADAPTER_UNAVAILABLE");
    assert!(err.to_string().contains("\"sqlite\""), "{err}");
    assert_eq!(
        Adapter::from_name("postgres").expect_err("unknown").code(),
        "ADAPTER_UNAVAILABLE"
    );
    let memory = Store::open(StoreOptions::new("x").adapter(Adapter::Memory))
        .await
        .expect("memory store");
    memory.kv().set("k", 1).await.expect("set");
    memory.close().await.expect("closes");
    assert_eq!(
        Store::open(StoreOptions::new("bad name"))
            .await
            .expect_err("bad name")
            .code(),
        "INVALID_NAME"
    );
}

#[tokio::test]
async fn one_owner_at_a_time() {
    // A second owner (another process, or another handle) would fork this
    // device's sequence numbers: it is refused until the first closes.
    let (_dir, path) = temp();
    let a = open(&path).await.expect("opens");
    a.records("notes")
        .put("from-a", json!(1))
        .await
        .expect("put");
    let err = open(&path).await.expect_err("second owner refused");
    assert_eq!(err.code(), "STORAGE_LOCKED", "{err}");
    a.close().await.expect("closes");
    let b = open(&path).await.expect("opens after close");
    assert_eq!(
        b.records("notes").get("from-a").await.expect("get"),
        Some(json!(1))
    );
    b.close().await.expect("closes");
}
