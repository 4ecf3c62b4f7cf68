//! Sealed rows on a real SQLite file: no marker of a name, id, key or value
//! reaches the file; moved, altered or foreign-key rows fail with
//! `DECRYPT_FAILED` and change nothing.

use std::path::Path;
use std::sync::Arc;

use persist::crypto::Keyring;
use persist::hlc::Hlc;
use persist::platform::native::SqliteStore;
use persist::storage::{
    EventQuery, EventRow, KvRow, RecordQuery, RecordRow, SealedStorage, StorageBackend, WriteBatch,
};
use persist::{DeviceIdentity, Stamp, StoreId};

const MARKERS: [&str; 7] = [
    "MarkerCollection",
    "MarkerRecordId",
    "MarkerSecretValue",
    "MarkerLogName",
    "MarkerEventValue",
    "MarkerKvKey",
    "MarkerKvValue",
];

fn batch(author: &DeviceIdentity) -> WriteBatch {
    let stamp = |n: u64| Stamp {
        hlc: Hlc::from_u64(n << 20),
        author: author.device_id(),
    };
    WriteBatch {
        records: vec![
            RecordRow {
                collection: "MarkerCollection".into(),
                id: "MarkerRecordId".into(),
                value: Some(r#"{"body":"MarkerSecretValue"}"#.into()),
                stamp: stamp(1),
                fields: None,
            },
            RecordRow {
                collection: "MarkerCollection".into(),
                id: "other".into(),
                value: Some(r#"{"body":"plain"}"#.into()),
                stamp: stamp(2),
                fields: None,
            },
        ],
        events: vec![EventRow {
            log: "MarkerLogName".into(),
            id: "0000000000100000-abc".into(),
            at: 1,
            author: author.device_id(),
            value: r#"{"e":"MarkerEventValue"}"#.into(),
        }],
        kv: vec![KvRow {
            key: "MarkerKvKey".into(),
            value: Some(r#""MarkerKvValue""#.into()),
            stamp: stamp(3),
        }],
        ..WriteBatch::default()
    }
}

/// Every byte of the database and its WAL, lower-cased for the scan.
pub(crate) fn file_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("read db");
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    bytes.to_ascii_lowercase()
}

pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.to_ascii_lowercase();
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn sealed_rows_leave_no_plaintext_on_disk_and_read_back() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("sealed.db");
    let keyring = Keyring::create(StoreId::generate().expect("id")).expect("keyring");
    let author = DeviceIdentity::generate().expect("identity");
    {
        let inner = Arc::new(SqliteStore::open(&path).expect("open"));
        let sealed = SealedStorage::new(inner, keyring.clone()).expect("sealed");
        sealed.write(batch(&author)).await.expect("write");
        let row = sealed
            .get_record("MarkerCollection", "MarkerRecordId")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(
            row.value.as_deref(),
            Some(r#"{"body":"MarkerSecretValue"}"#)
        );
        let page = sealed
            .list_records(
                "MarkerCollection",
                &RecordQuery {
                    prefix: Some("Marker".into()),
                    ..RecordQuery::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, "MarkerRecordId");
        let events = sealed
            .list_events("MarkerLogName", &EventQuery::default())
            .await
            .expect("events");
        assert_eq!(events[0].value, r#"{"e":"MarkerEventValue"}"#);
        let kv = sealed
            .get_kv("MarkerKvKey")
            .await
            .expect("kv")
            .expect("set");
        assert_eq!(kv.value.as_deref(), Some(r#""MarkerKvValue""#));
        sealed.close().await.expect("close");
    }
    let bytes = file_bytes(&path);
    for marker in MARKERS {
        assert!(!contains(&bytes, marker), "{marker} found in the file");
    }
    // Hiding is not losing: a control value written in the clear through the
    // plain backend is found by the same scan.
    {
        let plain = SqliteStore::open(&dir.path().join("plain.db")).expect("open");
        plain.write(batch(&author)).await.expect("write");
        plain.close().await.expect("close");
    }
    let control = file_bytes(&dir.path().join("plain.db"));
    for marker in MARKERS {
        assert!(contains(&control, marker), "the scan misses {marker}");
    }
}

#[tokio::test]
async fn moved_altered_or_foreign_key_rows_fail_to_decrypt() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("sealed.db");
    let keyring = Keyring::create(StoreId::generate().expect("id")).expect("keyring");
    let author = DeviceIdentity::generate().expect("identity");
    let inner = Arc::new(SqliteStore::open(&path).expect("open"));
    let sealed = SealedStorage::new(inner.clone(), keyring.clone()).expect("sealed");
    sealed.write(batch(&author)).await.expect("write");
    sealed.close().await.expect("close");

    // Another keyring (a wrong or foreign key) reads nothing, and says so.
    let inner = Arc::new(SqliteStore::open(&path).expect("reopen"));
    let foreign = Keyring::create(keyring.store()).expect("keyring");
    let wrong = SealedStorage::new(inner.clone(), foreign).expect("sealed");
    // Names hash differently under another key: the row is simply absent.
    assert_eq!(
        wrong
            .get_record("MarkerCollection", "MarkerRecordId")
            .await
            .expect("get"),
        None
    );
    drop(wrong);
    inner.close().await.expect("close");

    // Swap the two records' sealed values in the file: both fail.
    {
        let conn = rusqlite::Connection::open(&path).expect("raw");
        let values: Vec<(String, String)> = conn
            .prepare("SELECT id, value FROM hashed_records ORDER BY id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(values.len(), 2);
        for (i, (id, _)) in values.iter().enumerate() {
            conn.execute(
                "UPDATE hashed_records SET value = ?1 WHERE id = ?2",
                rusqlite::params![values[1 - i].1, id],
            )
            .expect("swap");
        }
    }
    let inner = Arc::new(SqliteStore::open(&path).expect("reopen"));
    let sealed = SealedStorage::new(inner.clone(), keyring.clone()).expect("sealed");
    for id in ["MarkerRecordId", "other"] {
        let err = sealed
            .get_record("MarkerCollection", id)
            .await
            .expect_err("swapped ciphertext is refused");
        assert_eq!(err.code(), "DECRYPT_FAILED", "{err}");
    }
    let err = sealed
        .list_records("MarkerCollection", &RecordQuery::default())
        .await
        .expect_err("listing refuses too");
    assert_eq!(err.code(), "DECRYPT_FAILED");
    sealed.close().await.expect("close");

    // Flip one character of the KV envelope: refused, nothing rewritten.
    {
        let conn = rusqlite::Connection::open(&path).expect("raw");
        let value: String = conn
            .query_row("SELECT value FROM hashed_kv", [], |r| r.get(0))
            .expect("kv");
        let mut chars: Vec<char> = value.chars().collect();
        let middle = chars.len() / 2;
        chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
        let altered: String = chars.into_iter().collect();
        conn.execute("UPDATE hashed_kv SET value = ?1", [&altered])
            .expect("alter");
    }
    let before = std::fs::read(&path).expect("read");
    let inner = Arc::new(SqliteStore::open(&path).expect("reopen"));
    let sealed = SealedStorage::new(inner, keyring).expect("sealed");
    let err = sealed
        .get_kv("MarkerKvKey")
        .await
        .expect_err("altered ciphertext is refused");
    assert_eq!(err.code(), "DECRYPT_FAILED", "{err}");
    sealed.close().await.expect("close");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}
