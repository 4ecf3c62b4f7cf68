//! Encrypted stores through the public API on real SQLite files: nothing
//! readable reaches the file (change log included), exported keys open a
//! copy elsewhere, bad keys fail with typed errors and change nothing,
//! sealed commits replicate and refuse tampering, and key rotation
//! re-encrypts everything and survives SIGKILL at random points.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use persist::change::{CommitBody, Op, SEALED_COMMIT_FORMAT};
use persist::crypto::envelope::epoch_of;
use persist::crypto::{DataKey, Sealer};
use persist::hlc::Hlc;
use persist::storage::{AnyRow, StorageBackend, Table};
use persist::{Commit, ConflictStrategy, DeviceIdentity, Store, StoreOptions};
use serde_json::json;

use crate::sealed::{contains, file_bytes};
use crate::Rng;

fn options(path: &Path) -> StoreOptions {
    StoreOptions::new("vault").path(path)
}

async fn open_encrypted(path: &Path) -> Store {
    Store::open(
        options(path)
            .encrypt(true)
            .collection_strategy("MarkerMerged", ConflictStrategy::MergeFields),
    )
    .await
    .expect("opens encrypted")
}

/// Writes one marker of every kind through the API.
async fn write_markers(store: &Store) {
    store
        .records("MarkerCollection")
        .put("MarkerRecordId", json!({ "body": "MarkerSecretValue" }))
        .await
        .expect("put");
    store
        .records("MarkerMerged")
        .put(
            "MarkerMergedId",
            json!({ "MarkerField": "MarkerFieldValue" }),
        )
        .await
        .expect("merge put");
    store
        .events("MarkerLogName")
        .append(json!({ "e": "MarkerEventValue" }))
        .await
        .expect("append");
    store
        .kv()
        .set("MarkerKvKey", json!("MarkerKvValue"))
        .await
        .expect("set");
    store
        .records("MarkerCollection")
        .put("MarkerDeletedId", json!({ "gone": "MarkerDeletedValue" }))
        .await
        .expect("put");
    store
        .records("MarkerCollection")
        .delete("MarkerDeletedId")
        .await
        .expect("delete");
}

const MARKERS: [&str; 10] = [
    "MarkerCollection",
    "MarkerRecordId",
    "MarkerSecretValue",
    "MarkerMerged",
    "MarkerField",
    "MarkerLogName",
    "MarkerEventValue",
    "MarkerKvKey",
    "MarkerKvValue",
    "MarkerDeleted",
];

async fn check_markers(store: &Store) {
    assert_eq!(
        store
            .records("MarkerCollection")
            .get("MarkerRecordId")
            .await
            .expect("get"),
        Some(json!({ "body": "MarkerSecretValue" }))
    );
    assert_eq!(
        store
            .records("MarkerCollection")
            .get("MarkerDeletedId")
            .await
            .expect("get"),
        None
    );
    let listed = store
        .records("MarkerCollection")
        .list(persist::ListOptions {
            prefix: Some("MarkerRec".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    let events = store
        .events("MarkerLogName")
        .list(Default::default())
        .await
        .expect("events");
    assert_eq!(events[0].value, json!({ "e": "MarkerEventValue" }));
    assert_eq!(
        store.kv().get("MarkerKvKey").await.expect("kv"),
        Some(json!("MarkerKvValue"))
    );
}

fn all_files(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "db") {
            bytes.extend(file_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).expect("read").to_ascii_lowercase());
        }
    }
    bytes
}

#[tokio::test]
async fn an_encrypted_store_leaves_no_plaintext_anywhere_and_reads_back() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("vault.db");
    let store = open_encrypted(&path).await;
    assert!(store.crypto().is_encrypted());
    write_markers(&store).await;
    check_markers(&store).await;
    // The change log holds sealed commits that still verify.
    let commits = store.commits_missing_from(&[], 100).await.expect("log");
    assert_eq!(commits.len(), 6);
    for signed in &commits {
        assert_eq!(signed.body[0], SEALED_COMMIT_FORMAT);
        store
            .verify_commit(signed.clone())
            .expect("verifies and opens");
    }
    store.close().await.expect("close");
    // Database, WAL, keyfile and keyring file: no marker anywhere.
    let bytes = all_files(dir.path());
    for marker in MARKERS {
        assert!(!contains(&bytes, marker), "{marker} found on disk");
    }
    // Reopened without options: the store knows it is encrypted.
    let store = Store::open(options(&path)).await.expect("reopen");
    check_markers(&store).await;
    store.close().await.expect("close");
    // The same writes to a plain store: the scan finds them (the scan works).
    let plain_dir = tempfile::tempdir().expect("dir");
    let plain = Store::open(
        options(&plain_dir.path().join("vault.db"))
            .collection_strategy("MarkerMerged", ConflictStrategy::MergeFields),
    )
    .await
    .expect("plain");
    write_markers(&plain).await;
    plain.close().await.expect("close");
    let control = all_files(plain_dir.path());
    for marker in MARKERS {
        assert!(contains(&control, marker), "the scan misses {marker}");
    }
}

/// Copies the database (not the device's key files) to a new folder.
fn copy_database(path: &Path, to: &Path) -> PathBuf {
    let target = to.join("vault.db");
    std::fs::copy(path, &target).expect("copy db");
    target
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

#[tokio::test]
async fn an_exported_key_opens_a_copy_and_bad_keys_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("vault.db");
    let store = open_encrypted(&path).await;
    write_markers(&store).await;
    let exported = store.crypto().export_key().expect("export");
    assert!(exported.starts_with("persist-key-v1-"));
    let store_id = store.store_id();
    store.close().await.expect("close");

    let elsewhere = tempfile::tempdir().expect("dir");
    let copy = copy_database(&path, elsewhere.path());
    let before = digest(&copy);
    // No key on this device: KEY_REQUIRED.
    let err = Store::open(options(&copy)).await.expect_err("no key");
    assert_eq!(err.code(), "KEY_REQUIRED", "{err}");
    // A typo: KEY_INVALID (caught by the checksum).
    let mut typo = exported.to_string();
    let at = typo.len() - 3;
    let replacement = if &typo[at..at + 1] == "a" { "b" } else { "a" };
    typo.replace_range(at..at + 1, replacement);
    let err = Store::open(options(&copy).key(typo))
        .await
        .expect_err("typo");
    assert_eq!(err.code(), "KEY_INVALID", "{err}");
    // Another store's key: KEY_INVALID.
    let other_dir = tempfile::tempdir().expect("dir");
    let other = open_encrypted(&other_dir.path().join("other.db")).await;
    let other_key = other.crypto().export_key().expect("export");
    other.close().await.expect("close");
    let err = Store::open(options(&copy).key(other_key.as_str()))
        .await
        .expect_err("foreign key");
    assert_eq!(err.code(), "KEY_INVALID", "{err}");
    // A well-formed key for this store id but the wrong bytes: DECRYPT_FAILED.
    let forged = persist::crypto::ExportedKey {
        store: store_id,
        epoch: 0,
        key: DataKey::generate().expect("key"),
    }
    .to_text();
    let err = Store::open(options(&copy).key(forged.as_str()))
        .await
        .expect_err("wrong key");
    assert_eq!(err.code(), "DECRYPT_FAILED", "{err}");
    // Garbage text.
    let err = Store::open(options(&copy).key("hello"))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), "KEY_INVALID", "{err}");
    assert_eq!(digest(&copy), before, "failed opens changed the file");
    // The right key reads everything, and the device keeps it afterwards.
    let store = Store::open(options(&copy).key(exported.as_str()))
        .await
        .expect("imported");
    assert_eq!(store.store_id(), store_id);
    check_markers(&store).await;
    store
        .records("notes")
        .put("new", json!({ "on": "copy" }))
        .await
        .expect("write on the copy");
    store.close().await.expect("close");
    let store = Store::open(options(&copy)).await.expect("reopen, key held");
    check_markers(&store).await;
    store.close().await.expect("close");
    // An unencrypted store refuses a key instead of ignoring it.
    let plain_dir = tempfile::tempdir().expect("dir");
    let plain_path = plain_dir.path().join("plain.db");
    Store::open(options(&plain_path))
        .await
        .expect("plain")
        .close()
        .await
        .expect("close");
    let err = Store::open(options(&plain_path).key(exported.as_str()))
        .await
        .expect_err("plain + key");
    assert_eq!(err.code(), "INVALID_OPTIONS", "{err}");
    let err = Store::open(options(&plain_path).encrypt(true))
        .await
        .expect_err("plain + encrypt");
    assert_eq!(err.code(), "INVALID_OPTIONS", "{err}");
}

#[tokio::test]
async fn a_device_without_its_secrets_asks_for_the_key_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("vault.db");
    let store = open_encrypted(&path).await;
    write_markers(&store).await;
    let key = store.crypto().export_key().expect("export");
    store.close().await.expect("close");
    // The device's secrets (identity and keyring) are gone: the store asks
    // for its key, and the database is not touched.
    let secrets = dir.path().join("vault.db.secrets");
    std::fs::remove_file(&secrets).expect("remove");
    std::fs::remove_file(dir.path().join("vault.db.key")).expect("remove");
    let before = digest(&path);
    let err = Store::open(options(&path)).await.expect_err("no keyring");
    assert_eq!(err.code(), "KEY_REQUIRED", "{err}");
    assert_eq!(digest(&path), before);
    // With the exported key it opens as a new device of the same store.
    let store = Store::open(options(&path).key(key.as_str()))
        .await
        .expect("imports");
    check_markers(&store).await;
    store.close().await.expect("close");
}

#[tokio::test]
async fn sealed_commits_replicate_and_refuse_tampering() {
    let dir = tempfile::tempdir().expect("dir");
    let a = open_encrypted(&dir.path().join("a.db")).await;
    write_markers(&a).await;
    let key = a.crypto().export_key().expect("export");
    // B: a second device of the same store, from the exported key.
    let b = Store::open(
        StoreOptions::new("b")
            .path(dir.path().join("b.db"))
            .key(key.as_str()),
    )
    .await
    .expect("b");
    let welcome = a.admit_device(b.device_id(), "b").await.expect("admit");
    b.join(welcome).await.expect("join");
    let commits = a.commits_missing_from(&[], 100).await.expect("log");
    let report = b.ingest(commits.clone()).await.expect("ingest");
    assert_eq!(report.applied, commits.len(), "{report:?}");
    check_markers(&b).await;

    // A flipped byte anywhere in a sealed commit: refused, nothing stored.
    let c = Store::open(
        StoreOptions::new("c")
            .path(dir.path().join("c.db"))
            .key(key.as_str()),
    )
    .await
    .expect("c");
    for i in 0..commits[0].body.len() {
        let mut bad = commits[0].clone();
        bad.body[i] ^= 0x10;
        let report = c.ingest(vec![bad]).await.expect("ingest");
        assert_eq!(report.applied, 0, "byte {i}");
    }
    // Correctly signed by a device, but sealed under a key that is not the
    // store's: DECRYPT_FAILED.
    let forger = DeviceIdentity::generate().expect("identity");
    let body = CommitBody {
        format: SEALED_COMMIT_FORMAT,
        store: a.store_id(),
        author: forger.device_id(),
        seq: 1,
        prev: [0; 32],
        hlc: Hlc::from_millis(1_700_000_000_000),
        ops: vec![Op::KvSet {
            key: "k".into(),
            value: "1".into(),
        }],
    };
    let mut wrong = Sealer::new(&DataKey::generate().expect("key"), 0).expect("sealer");
    let forged = Commit::sign(body.clone(), &forger, Some(&mut wrong)).expect("signs");
    let report = c.ingest(vec![forged.signed]).await.expect("ingest");
    assert_eq!(report.rejected[0].1.code(), "DECRYPT_FAILED");
    // The same commit in the clear: refused by an encrypted store.
    let clear = Commit::sign(body, &forger, None).expect("signs");
    let report = c.ingest(vec![clear.signed]).await.expect("ingest");
    assert_eq!(report.rejected[0].1.code(), "ENCRYPTION_MISMATCH");
    assert!(c.version_vector().await.expect("vv").is_empty());
    // And a plain store refuses sealed commits.
    let plain = Store::open(StoreOptions::new("plain").path(dir.path().join("plain.db")))
        .await
        .expect("plain");
    let report = plain.ingest(commits).await.expect("ingest");
    assert!(report
        .rejected
        .iter()
        .all(|(_, r)| r.code() == "ENCRYPTION_MISMATCH"));
    for store in [a, b, c, plain] {
        store.close().await.expect("close");
    }
}

/// The epoch of every sealed row stored, by scanning the raw rows.
async fn row_epochs(backend: &dyn StorageBackend) -> Vec<u32> {
    let mut epochs = Vec::new();
    for table in [Table::Records, Table::Events, Table::Kv] {
        let mut after = None;
        loop {
            let page = backend
                .scan(table, after.as_ref(), 100)
                .await
                .expect("scan");
            if page.rows.is_empty() {
                break;
            }
            after = page.last;
            for row in &page.rows {
                let text = match row {
                    AnyRow::Record(r) => r.value.clone().or(r.fields.clone()),
                    AnyRow::Event(e) => Some(e.value.clone()),
                    AnyRow::Kv(k) => k.value.clone(),
                };
                if let Some(text) = text {
                    let bytes = data_encoding::BASE64_NOPAD
                        .decode(text.as_bytes())
                        .expect("base64");
                    epochs.push(epoch_of(&bytes).expect("envelope"));
                }
            }
        }
    }
    epochs
}

#[tokio::test]
async fn rotation_reencrypts_every_row_and_keeps_history_readable() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("vault.db");
    let store = open_encrypted(&path).await;
    write_markers(&store).await;
    let mut tx = store.transaction();
    for i in 0..1_500 {
        tx.put("bulk", &format!("r{i:05}"), json!({ "i": i }))
            .expect("queued");
    }
    tx.commit().await.expect("bulk");
    assert_eq!(store.crypto().epoch().expect("epoch"), 0);
    let mut reports = Vec::new();
    let done = store
        .crypto()
        .rotate_key(|p| reports.push(p.clone()))
        .await
        .expect("rotates");
    assert!(done.done);
    assert_eq!(done.epoch, 1);
    assert!(reports.len() >= 3, "progress in batches: {reports:?}");
    // Live rows (6 markers' rows + 1,500) re-encrypted.
    assert!(done.resealed >= 1_504, "{done:?}");
    let epochs = row_epochs(&*store.inner_backend_for_tests()).await;
    assert!(epochs.iter().all(|e| *e == 1), "rows left under epoch 0");
    assert_eq!(store.crypto().epoch().expect("epoch"), 1);
    check_markers(&store).await;
    // Writes after the rotation use the new epoch; old commits still open.
    store.kv().set("after", json!(1)).await.expect("write");
    for signed in store.commits_missing_from(&[], 100).await.expect("log") {
        store.verify_commit(signed).expect("every epoch opens");
    }
    let exported = store.crypto().export_key().expect("export");
    store.close().await.expect("close");
    // The new key alone opens a copy: the history keyring is in the file.
    let elsewhere = tempfile::tempdir().expect("dir");
    let copy = copy_database(&path, elsewhere.path());
    let copy = Store::open(options(&copy).key(exported.as_str()))
        .await
        .expect("epoch-1 key opens the copy");
    check_markers(&copy).await;
    assert_eq!(
        copy.records("bulk").get("r01499").await.expect("get"),
        Some(json!({ "i": 1499 }))
    );
    for signed in copy.commits_missing_from(&[], 100).await.expect("log") {
        copy.verify_commit(signed)
            .expect("epoch 0 from the history keyring");
    }
    copy.close().await.expect("close");
}

#[test]
fn rotation_resumes_after_sigkill() {
    let (mut rng, seed) = Rng::seeded();
    let rounds: u32 = std::env::var("PERSIST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("rotation kill test: seed {seed}, {rounds} rounds");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("vault.db");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    const RECORDS: usize = 6_000;
    runtime.block_on(async {
        let store = open_encrypted(&path).await;
        let mut tx = store.transaction();
        for i in 0..RECORDS {
            tx.put(
                "bulk",
                &format!("r{i:05}"),
                json!({ "i": i, "pad": "x".repeat(64) }),
            )
            .expect("queued");
        }
        tx.commit().await.expect("bulk");
        store.close().await.expect("close");
    });
    let started = Instant::now();
    let mut killed_midway = 0;
    for round in 0..rounds {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_persist"))
            .args(["key", "--path", path.to_str().expect("utf-8"), "rotate"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawns");
        // Kill after a random number of progress lines (0: at once, even
        // before the rotation starts).
        let wait_lines = rng.below(12);
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        let mut finished = false;
        while seen < wait_lines {
            match lines.next() {
                Some(Ok(line)) => {
                    seen += 1;
                    finished |= line.ends_with("done");
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        // Killed after some batches were re-encrypted and before the end.
        if seen > 0 && !finished {
            killed_midway += 1;
        }
        runtime.block_on(async {
            let store = Store::open(options(&path)).await.expect("reopens");
            // Finish what the killed process left (the background resume may
            // already be at it: this waits for it).
            store
                .crypto()
                .resume_rotation(|_| {})
                .await
                .expect("resumes");
            let epoch = store.crypto().epoch().expect("epoch");
            let epochs = row_epochs(&*store.inner_backend_for_tests()).await;
            assert!(
                epochs.iter().all(|e| *e == epoch),
                "round {round}: rows not under epoch {epoch}"
            );
            let listed = store
                .records("bulk")
                .list(persist::ListOptions::default())
                .await
                .expect("list");
            assert_eq!(listed.len(), RECORDS, "round {round}");
            store.close().await.expect("close");
        });
    }
    eprintln!("rotation kill test: {killed_midway} rotations killed midway");
    assert!(killed_midway > 0, "no round killed a rotation midway");
}
