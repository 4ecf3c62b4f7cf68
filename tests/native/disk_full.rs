//! A full disk fails writes cleanly: the failing write gets `STORAGE_IO`, is
//! not visible, nothing acknowledged is lost, and the store works again once
//! space is freed. Runs on a 4 MiB tmpfs the test mounts (root only; the
//! test says so when it cannot).

use std::path::{Path, PathBuf};
use std::process::Command;

use persist::{ListOptions, Store, StoreOptions};
use serde_json::json;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().ok()?.keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?;
        status.success().then_some(Mount(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn full_disk_fails_cleanly_and_recovers() {
    // The test command runs as root; a test that cannot mount fails rather
    // than passing without having run.
    let mount = Mount::tmpfs("4m").expect(
        "cannot mount a 4 MiB tmpfs: this test needs root (run it through scripts/test.sh)",
    );
    let db = mount.path().join("full.db");
    // Room to free later.
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).expect("filler");

    let store = Store::open(StoreOptions::new("full").path(&db))
        .await
        .expect("opens");
    let records = store.records("fill");
    let body = "y".repeat(4000);
    let mut acknowledged = Vec::new();
    let mut failure = None;
    for i in 0..10_000 {
        let id = format!("r{i:05}");
        match records.put(&id, json!({ "body": body, "i": i })).await {
            Ok(_) => acknowledged.push(id),
            Err(e) => {
                failure = Some((id, e));
                break;
            }
        }
    }
    let (failed_id, err) = failure.expect("the disk fills up within 10,000 writes of 4 KB");
    assert_eq!(err.code(), "STORAGE_IO", "{err}");
    assert!(
        acknowledged.len() > 20,
        "only {} writes fit",
        acknowledged.len()
    );
    assert_eq!(
        records.get(&failed_id).await.expect("reads"),
        None,
        "a failed write is not visible"
    );
    for id in acknowledged.iter().step_by(37) {
        assert!(records.get(id).await.expect("reads").is_some(), "{id} lost");
    }

    // Free space: the store writes again, and sequence numbers continue.
    std::fs::remove_file(&filler).expect("frees space");
    let receipt = records
        .put("after", json!({ "ok": true }))
        .await
        .expect("writes after space is freed");
    assert!(receipt.seq as usize >= acknowledged.len());
    store.close().await.expect("closes");

    let store = Store::open(StoreOptions::new("full").path(&db))
        .await
        .expect("reopens");
    let all = store
        .records("fill")
        .list(ListOptions::default())
        .await
        .expect("lists");
    assert_eq!(all.len(), acknowledged.len() + 1);
    let vv = store.version_vector().await.expect("version vector");
    assert_eq!(
        vv[0].1, receipt.seq,
        "no sequence number was lost or reused"
    );
    store.close().await.expect("closes");
    let conn = rusqlite::Connection::open(&db).expect("opens");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("checks");
    assert_eq!(check, "ok");
}
