//! The checks every [`HostStorage`] passes (SQLite and PostgreSQL run the
//! same ones): spaces are found by (store, founder) and created once, up
//! to a limit; logs are replaced only over the log they replace; commits
//! append atomically, read back in order, never overwrite (a number held
//! twice is a conflict), and truncate; usage and totals count them.

use std::sync::Arc;

use super::{HostStorage, HostedCommit};
use crate::change::{SignedCommit, StoreId};
use crate::identity::DeviceId;

fn commit(author: u8, seq: u64, size: usize) -> HostedCommit {
    let mut body = vec![author; size];
    body[..8].copy_from_slice(&seq.to_be_bytes());
    let commit = SignedCommit {
        body,
        signature: [seq as u8; 64],
    };
    HostedCommit {
        author: DeviceId::from_bytes([author; 32]),
        seq,
        hash: commit.hash(),
        commit,
    }
}

/// Runs every check on `storage`, which must be empty.
pub async fn run_all(storage: Arc<dyn HostStorage>) {
    spaces(&*storage).await;
    commits(&*storage).await;
}

async fn spaces(storage: &dyn HostStorage) {
    let store = StoreId::from_bytes([1; 16]);
    let (founder, other) = (DeviceId::from_bytes([2; 32]), DeviceId::from_bytes([3; 32]));
    assert_eq!(storage.space(store, founder).await.expect("space"), None);
    let (id, log) = storage
        .create_space(store, founder, b"log one".to_vec(), 2)
        .await
        .expect("create")
        .expect("room for one");
    assert_eq!(log, b"log one");
    // Created once: a second creation finds the first, its log unchanged.
    let again = storage
        .create_space(store, founder, b"log two".to_vec(), 2)
        .await
        .expect("create again")
        .expect("found");
    assert_eq!(again, (id, b"log one".to_vec()));
    // Another founder under the same store id is another space.
    let (second, _) = storage
        .create_space(store, other, b"squat".to_vec(), 2)
        .await
        .expect("create")
        .expect("room for two");
    assert_ne!(second, id);
    // The limit counts spaces.
    let third = StoreId::from_bytes([9; 16]);
    assert_eq!(
        storage
            .create_space(third, founder, b"x".to_vec(), 2)
            .await
            .expect("create"),
        None
    );
    // A log is replaced only over the one it was merged into (another
    // server process may have replaced it since).
    assert!(!storage
        .set_log(id, b"log two".to_vec(), b"stale".to_vec())
        .await
        .expect("set log"));
    assert!(storage
        .set_log(id, b"log one".to_vec(), b"log three".to_vec())
        .await
        .expect("set log"));
    assert_eq!(
        storage.space(store, founder).await.expect("space"),
        Some((id, b"log three".to_vec()))
    );
    assert_eq!(storage.stats().await.expect("stats").stores, 2);
}

async fn commits(storage: &dyn HostStorage) {
    let store = StoreId::from_bytes([4; 16]);
    let founder = DeviceId::from_bytes([5; 32]);
    let (space, _) = storage
        .create_space(store, founder, Vec::new(), 100)
        .await
        .expect("create")
        .expect("room");
    let batch: Vec<HostedCommit> = (1..=5)
        .map(|n| commit(7, n, 100))
        .chain((1..=2).map(|n| commit(8, n, 3_000)))
        .collect();
    storage.append(space, batch.clone()).await.expect("append");
    let mut heads = storage.heads(space).await.expect("heads");
    heads.sort();
    assert_eq!(
        heads,
        vec![
            (batch[4].author, 5, batch[4].hash),
            (batch[6].author, 2, batch[6].hash)
        ]
    );
    let after = storage
        .commits_after(space, batch[0].author, 2, 2)
        .await
        .expect("after");
    assert_eq!(
        after,
        vec![batch[2].commit.clone(), batch[3].commit.clone()]
    );
    assert_eq!(
        storage
            .commit_at(space, batch[5].author, 1)
            .await
            .expect("at"),
        Some(batch[5].commit.clone())
    );
    assert_eq!(
        storage
            .commit_at(space, batch[5].author, 3)
            .await
            .expect("at"),
        None
    );
    // A number held is never overwritten, and a failed batch stores none
    // of its commits.
    let clash = vec![commit(7, 6, 100), commit(7, 5, 200)];
    assert!(matches!(
        storage.append(space, clash).await,
        Err(crate::error::StorageError::Conflict(_))
    ));
    assert_eq!(
        storage
            .commit_at(space, batch[0].author, 6)
            .await
            .expect("at"),
        None
    );
    assert_eq!(
        storage
            .commit_at(space, batch[0].author, 5)
            .await
            .expect("at"),
        Some(batch[4].commit.clone())
    );
    let usage = storage.usage(space).await.expect("usage");
    assert_eq!(usage.commits, 7);
    assert_eq!(usage.bytes, 5 * (100 + 64) + 2 * (3_000 + 64));
    assert_eq!(
        storage
            .truncate(space, batch[0].author, 3)
            .await
            .expect("truncate"),
        2
    );
    assert_eq!(storage.usage(space).await.expect("usage").commits, 5);
    let totals = storage.stats().await.expect("stats");
    assert!(totals.commits >= 5 && totals.bytes >= usage.bytes - 2 * (100 + 64));
}
