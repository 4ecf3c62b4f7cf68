//! Attacks on membership and keys through the public API, on real SQLite
//! files: a rotation shares its key, concurrent rotations fork an epoch
//! and resolve, a revocation killed at each of its steps resumes on open,
//! and a member that signs two commits under one number is caught.

use std::path::Path;
use std::process::Command;

use persist::change::{CommitBody, Op, COMMIT_FORMAT};
use persist::hlc::Hlc;
use persist::{Commit, DeviceIdentity, Store, StoreOptions};
use serde_json::json;

fn options(path: &Path) -> StoreOptions {
    StoreOptions::new("vault").path(path).encrypt(true)
}

async fn open(path: &Path) -> Store {
    Store::open(options(path)).await.expect("opens encrypted")
}

/// `joiner` joins `host`'s store, as pairing would.
async fn pair(host: &Store, joiner: &Store) {
    let welcome = host
        .admit_device(joiner.device_id(), "device")
        .await
        .expect("admit");
    joiner.join(welcome).await.expect("join");
}

/// Brings `to` up to date with `from`: membership first, then commits.
async fn sync(from: &Store, to: &Store) -> persist::IngestReport {
    to.merge_membership(&from.membership().await)
        .await
        .expect("membership");
    let theirs = to.version_vector().await.expect("vv");
    let missing = from
        .commits_missing_from(&theirs, usize::MAX)
        .await
        .expect("missing");
    to.ingest(missing).await.expect("ingest")
}

#[tokio::test]
async fn a_rotation_on_a_paired_store_shares_the_new_key() {
    let dir = tempfile::tempdir().expect("dir");
    let a = open(&dir.path().join("a.db")).await;
    let b = open(&dir.path().join("b.db")).await;
    pair(&a, &b).await;
    a.crypto().rotate_key(|_| {}).await.expect("rotate");
    a.kv().set("after", json!("rotated")).await.expect("write");
    let report = sync(&a, &b).await;
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(
        b.kv().get("after").await.expect("get"),
        Some(json!("rotated"))
    );
    // And back: B writes under the new epoch, A reads it.
    assert_eq!(b.crypto().epoch().expect("epoch"), 1);
    b.kv().set("reply", json!("from b")).await.expect("write");
    let report = sync(&b, &a).await;
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(
        a.kv().get("reply").await.expect("get"),
        Some(json!("from b"))
    );
}

/// Two members rotate at once (both make an epoch 1): every replica keeps
/// the lower commitment's key for writing, keeps the other to read what
/// was sealed under it, and both end writing under one key.
#[tokio::test]
async fn two_members_rotating_at_once_end_on_one_key_and_read_everything() {
    let dir = tempfile::tempdir().expect("dir");
    let a = open(&dir.path().join("a.db")).await;
    let b = open(&dir.path().join("b.db")).await;
    pair(&a, &b).await;
    a.crypto().rotate_key(|_| {}).await.expect("rotate a");
    b.crypto().rotate_key(|_| {}).await.expect("rotate b");
    a.kv()
        .set("a", json!("under a's key"))
        .await
        .expect("write");
    b.kv()
        .set("b", json!("under b's key"))
        .await
        .expect("write");
    for _ in 0..2 {
        let report = sync(&a, &b).await;
        assert!(report.rejected.is_empty(), "{report:?}");
        let report = sync(&b, &a).await;
        assert!(report.rejected.is_empty(), "{report:?}");
    }
    for store in [&a, &b] {
        assert_eq!(
            store.kv().get("a").await.expect("get"),
            Some(json!("under a's key"))
        );
        assert_eq!(
            store.kv().get("b").await.expect("get"),
            Some(json!("under b's key"))
        );
        let members = store.members();
        assert_eq!(members.epoch, 1);
        assert_eq!(members.epochs[&1].rivals.len(), 1, "the fork is recorded");
    }
    assert_eq!(
        *a.crypto().export_key().expect("key"),
        *b.crypto().export_key().expect("key"),
        "both write under the winning key"
    );
    // New writes cross without a hitch.
    a.kv().set("later", json!(1)).await.expect("write");
    let report = sync(&a, &b).await;
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(b.kv().get("later").await.expect("get"), Some(json!(1)));
}

/// A revocation stopped dead (the process aborts) after each of its steps:
/// removal recorded; new key saved; new key recorded. Opening the store
/// finishes it, and every remaining member reads what is written next
/// while the revoked device holds no key for it.
#[test]
fn a_revocation_killed_at_each_step_resumes_on_open() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for point in ["revoke:removed", "rotate:begun", "keys:recorded"] {
        let dir = tempfile::tempdir().expect("dir");
        let (a_path, b_path, c_path) = (
            dir.path().join("a.db"),
            dir.path().join("b.db"),
            dir.path().join("c.db"),
        );
        let c_peer = runtime.block_on(async {
            let a = open(&a_path).await;
            let b = open(&b_path).await;
            let c = open(&c_path).await;
            pair(&a, &b).await;
            pair(&a, &c).await;
            b.merge_membership(&a.membership().await)
                .await
                .expect("merge");
            a.kv().set("before", json!(0)).await.expect("write");
            let peer = libp2p::PeerId::from_public_key(
                &libp2p::identity::ed25519::PublicKey::try_from_bytes(c.device_id().as_bytes())
                    .expect("key")
                    .into(),
            );
            for s in [a, b, c] {
                s.close().await.expect("close");
            }
            peer
        });
        let out = Command::new(env!("CARGO_BIN_EXE_persist"))
            .args([
                "revoke",
                "--path",
                a_path.to_str().expect("utf-8"),
                &c_peer.to_string(),
            ])
            .env("PERSIST_FAULT", point)
            .env("PERSIST_KEYCHAIN", "off")
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{point}: the process was to stop");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("stopping at {point}")),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        runtime.block_on(async {
            let a = open(&a_path).await;
            let members = a.members();
            assert!(
                members.removed.contains_key(&open_id(&c_path).await),
                "{point}"
            );
            assert_eq!(members.epoch, 1, "{point}: the new key is recorded on open");
            assert_eq!(a.crypto().epoch().expect("epoch"), 1, "{point}");
            a.kv().set("after", json!("secret")).await.expect("write");
            // Revoking again has nothing left to do.
            a.revoke(open_id(&c_path).await).await.expect("idempotent");
            assert_eq!(a.members().epoch, 1, "{point}");
            let b = open(&b_path).await;
            let report = sync(&a, &b).await;
            assert!(report.rejected.is_empty(), "{point}: {report:?}");
            assert_eq!(
                b.kv().get("after").await.expect("get"),
                Some(json!("secret"))
            );
            // The revoked device: no grant of epoch 1, and A's new commit
            // does not open for it.
            let c = open(&c_path).await;
            let granted = a.members().grants_for(&c.device_id());
            assert!(
                granted.iter().all(|g| g.0 != 1),
                "{point}: C was granted the new key"
            );
            c.merge_membership(&a.membership().await)
                .await
                .expect("merge");
            assert_eq!(c.crypto().epoch().expect("epoch"), 0, "{point}");
            let theirs = c.version_vector().await.expect("vv");
            let missing = a
                .commits_missing_from(&theirs, usize::MAX)
                .await
                .expect("missing");
            let report = c.ingest(missing).await.expect("ingest");
            assert!(
                report
                    .rejected
                    .iter()
                    .any(|(_, r)| r.code() == "DECRYPT_FAILED"),
                "{point}: {report:?}"
            );
            assert_eq!(c.kv().get("after").await.expect("get"), None);
            for s in [a, b, c] {
                s.close().await.expect("close");
            }
        });
    }
}

async fn open_id(path: &Path) -> persist::DeviceId {
    let store = open(path).await;
    let id = store.device_id();
    store.close().await.expect("close");
    id
}

fn commit(
    author: &DeviceIdentity,
    store: persist::StoreId,
    seq: u64,
    prev: [u8; 32],
    key: &str,
) -> Commit {
    Commit::sign(
        CommitBody {
            format: COMMIT_FORMAT,
            store,
            author: author.device_id(),
            seq,
            prev,
            hlc: Hlc::from_millis(1_700_000_000_000 + seq),
            ops: vec![Op::KvSet {
                key: key.into(),
                value: "1".into(),
            }],
        },
        author,
        None,
    )
    .expect("signs")
}

/// A member signs two different commits under one number and hands one
/// to each replica: the second version is refused as `CHANGE_CONFLICT`
/// wherever it arrives, and so is the next commit built on the other
/// branch (its hash chain names the other commit). A replica holding both
/// records the evidence: the member is removed there, then on every
/// replica the log reaches, and nothing it signs from the fork on counts.
#[tokio::test]
async fn equivocating_commits_are_detected_on_every_path() {
    let a = Store::open(StoreOptions::new("a").adapter(persist::Adapter::Memory))
        .await
        .expect("a");
    let b = Store::open(StoreOptions::new("b").adapter(persist::Adapter::Memory))
        .await
        .expect("b");
    equivocation(a, b).await;
    // The same on SQLite files, where dropping the forked commits rewrites
    // the file in one transaction.
    let dir = tempfile::tempdir().expect("dir");
    let a = Store::open(StoreOptions::new("a").path(dir.path().join("a.db")))
        .await
        .expect("a");
    let b = Store::open(StoreOptions::new("b").path(dir.path().join("b.db")))
        .await
        .expect("b");
    a.kv().set("before", json!("kept")).await.expect("write");
    equivocation(a.clone(), b.clone()).await;
    assert_eq!(
        a.kv().get("before").await.expect("get"),
        Some(json!("kept"))
    );
    let theirs = b.version_vector().await.expect("vv");
    let missing = a
        .commits_missing_from(&theirs, usize::MAX)
        .await
        .expect("missing");
    b.ingest(missing).await.expect("ingest");
    assert_eq!(
        b.kv().get("before").await.expect("get"),
        Some(json!("kept"))
    );
    // Reopened: the rewrite was durable.
    let path = dir.path().join("a.db");
    a.close().await.expect("close");
    let a = Store::open(StoreOptions::new("a").path(&path))
        .await
        .expect("reopens");
    assert_eq!(
        a.kv().get("before").await.expect("get"),
        Some(json!("kept"))
    );
    assert_eq!(a.kv().get("x").await.expect("get"), None);
}

async fn equivocation(a: Store, b: Store) {
    pair(&a, &b).await;
    let m = DeviceIdentity::from_secret(&[77; 32]);
    a.admit_device(m.device_id(), "member")
        .await
        .expect("admit");
    b.merge_membership(&a.membership().await)
        .await
        .expect("merge");
    let store = a.store_id();
    let x1 = commit(&m, store, 1, [0; 32], "x");
    let y1 = commit(&m, store, 1, [0; 32], "y");
    let x2 = commit(&m, store, 2, x1.signed.hash(), "x2");
    let y1_hash = y1.signed.hash();
    assert_eq!(
        a.ingest(vec![x1.signed.clone()]).await.expect("a").applied,
        1
    );
    assert_eq!(
        b.ingest(vec![y1.signed.clone()]).await.expect("b").applied,
        1
    );
    let report = a.ingest(vec![y1.signed]).await.expect("a");
    assert_eq!(report.rejected[0].1.code(), "CHANGE_CONFLICT", "{report:?}");
    let report = b
        .ingest(vec![x1.signed, x2.signed.clone()])
        .await
        .expect("b");
    assert_eq!(report.applied, 0, "{report:?}");
    assert!(
        report
            .rejected
            .iter()
            .all(|(_, r)| r.code() == "CHANGE_CONFLICT"),
        "{report:?}"
    );
    for store in [&a, &b] {
        let members = store.members();
        assert!(members.equivocators.contains(&m.device_id()));
        assert!(!members.is_member(&m.device_id()));
        assert!(!members.admits_commit(&m.device_id(), 1, &y1_hash));
    }
    // Both versions are dropped wherever they were applied: the same rows.
    for store in [&a, &b] {
        assert_eq!(store.kv().get("x").await.expect("get"), None);
        assert_eq!(store.kv().get("y").await.expect("get"), None);
        assert!(store
            .version_vector()
            .await
            .expect("vv")
            .iter()
            .all(|(author, _)| *author != m.device_id()));
    }
    a.merge_membership(&b.membership().await)
        .await
        .expect("merge");
    let y2 = commit(&m, store, 2, y1_hash, "y2");
    let report = a.ingest(vec![x2.signed, y2.signed]).await.expect("a");
    assert_eq!(report.applied, 0, "{report:?}");
}

/// A store whose change log holds commits of the previous format (no hash
/// chain) is refused when it opens, with a code and a message that say
/// what to do, and is left untouched.
#[tokio::test]
async fn a_store_of_the_previous_format_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("old.db");
    let plain = |path: &Path| StoreOptions::new("old").path(path);
    let store = Store::open(plain(&path)).await.expect("opens");
    let author = store.device_id();
    // A commit as the previous format wrote it: format byte 1.
    let mut body = vec![1u8];
    body.extend_from_slice(store.store_id().as_bytes());
    body.extend_from_slice(author.as_bytes());
    body.push(1);
    store
        .inner_backend_for_tests()
        .write(persist::storage::WriteBatch {
            log: vec![persist::storage::LogEntry {
                author,
                seq: 1,
                last_hlc: Hlc::from_millis(1_700_000_000_000),
                commit: persist::SignedCommit {
                    body,
                    signature: [0; 64],
                },
            }],
            ..Default::default()
        })
        .await
        .expect("write");
    store.close().await.expect("close");
    let before = std::fs::read(&path).expect("file");
    let error = Store::open(plain(&path)).await.expect_err("refused");
    assert_eq!(error.code(), "STORAGE_VERSION_UNSUPPORTED");
    assert!(error.to_string().contains("format 1"), "{error}");
    assert!(error.to_string().contains("create it again"), "{error}");
    assert_eq!(
        std::fs::read(&path).expect("file"),
        before,
        "left untouched"
    );
}

/// A member gone bad records a new epoch whose grant to one member seals
/// another key than the entry commits to. That member refuses the grant
/// and, lacking the current key, makes a new epoch for everyone: both
/// honest members end on one key and read each other.
#[tokio::test]
async fn a_wrong_key_granted_to_one_member_is_replaced() {
    use persist::crypto::device_box::seal_to_device;
    use persist::membership::{grant_context, key_commitment, MemberChange, MembershipWire};

    let dir = tempfile::tempdir().expect("dir");
    let a = open(&dir.path().join("a.db")).await;
    let b = open(&dir.path().join("b.db")).await;
    pair(&a, &b).await;
    let m = DeviceIdentity::from_secret(&[66; 32]);
    a.admit_device(m.device_id(), "bad").await.expect("admit");
    b.merge_membership(&a.membership().await)
        .await
        .expect("merge");
    let store = a.store_id();
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let grant = |to: persist::DeviceId, key: &[u8; 32]| {
        (
            to,
            seal_to_device(&to, &grant_context(store, 1, &to), key).expect("seal"),
        )
    };
    let log = a.membership().await;
    let (seq, prev) = persist::membership::MembershipLog::from_wire(&log)
        .expect("log")
        .next_position(&m.device_id());
    let entry = persist::membership::MemberEntry {
        format: persist::membership::MEMBER_ENTRY_FORMAT,
        store,
        author: m.device_id(),
        seq,
        prev,
        hlc: Hlc::from_millis(1_700_000_000_000),
        change: MemberChange::Key {
            epoch: 1,
            commitment: key_commitment(store, 1, &k1),
            grants: vec![grant(a.device_id(), &k1), grant(b.device_id(), &k2)],
        },
    }
    .sign(&m)
    .expect("signs");
    let wire = MembershipWire {
        store,
        founder: log.founder,
        entries: vec![entry],
    };
    a.merge_membership(&wire).await.expect("a merges");
    b.merge_membership(&wire).await.expect("b merges");
    // B refused the bad grant and made epoch 2, granted to A and M.
    assert_eq!(b.members().epoch, 2);
    assert_eq!(b.crypto().epoch().expect("epoch"), 2);
    sync(&b, &a).await;
    assert_eq!(a.crypto().epoch().expect("epoch"), 2);
    a.kv().set("from a", json!(1)).await.expect("write");
    b.kv().set("from b", json!(2)).await.expect("write");
    let report = sync(&a, &b).await;
    assert!(report.rejected.is_empty(), "{report:?}");
    let report = sync(&b, &a).await;
    assert!(report.rejected.is_empty(), "{report:?}");
    assert_eq!(b.kv().get("from a").await.expect("get"), Some(json!(1)));
    assert_eq!(a.kv().get("from b").await.expect("get"), Some(json!(2)));
}
