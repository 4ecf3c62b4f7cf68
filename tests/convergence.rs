//! Convergence: replicas that exchanged the same commits hold byte-identical
//! state, whatever the interleaving of writes, partial and reordered syncs,
//! duplicates and clock skew. A property test over in-memory replicas.

#![cfg(not(all(target_family = "wasm", target_os = "unknown")))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::executor::block_on;
use persist::keys::MemoryKeyStore;
use persist::storage::{MemoryStore, StorageBackend, WriteBatch};
use persist::{ConflictStrategy, EventListOptions, Store, StoreId, StoreOptions};
use proptest::prelude::*;
use serde_json::json;

const REPLICAS: usize = 3;
const IDS: [&str; 3] = ["a", "b", "c"];
const FIELDS: [&str; 3] = ["x", "y", "z"];

#[derive(Debug, Clone)]
enum Action {
    Put {
        replica: usize,
        collection: usize,
        id: usize,
        fields: Vec<(usize, i64)>,
    },
    Delete {
        replica: usize,
        collection: usize,
        id: usize,
    },
    KvSet {
        replica: usize,
        id: usize,
        value: i64,
    },
    KvDelete {
        replica: usize,
        id: usize,
    },
    Append {
        replica: usize,
        value: i64,
    },
    Tick {
        replica: usize,
        ms: u64,
    },
    Sync {
        from: usize,
        to: usize,
        limit: usize,
        reverse: bool,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let r = 0..REPLICAS;
    prop_oneof![
        4 => (r.clone(), 0..2usize, 0..IDS.len(), prop::collection::vec((0..FIELDS.len(), -5i64..5), 0..3))
            .prop_map(|(replica, collection, id, fields)| Action::Put { replica, collection, id, fields }),
        1 => (r.clone(), 0..2usize, 0..IDS.len()).prop_map(|(replica, collection, id)| Action::Delete { replica, collection, id }),
        2 => (r.clone(), 0..IDS.len(), -5i64..5).prop_map(|(replica, id, value)| Action::KvSet { replica, id, value }),
        1 => (r.clone(), 0..IDS.len()).prop_map(|(replica, id)| Action::KvDelete { replica, id }),
        1 => (r.clone(), -5i64..5).prop_map(|(replica, value)| Action::Append { replica, value }),
        1 => (r.clone(), 0u64..3).prop_map(|(replica, ms)| Action::Tick { replica, ms }),
        3 => (r.clone(), r, 1usize..6, any::<bool>()).prop_map(|(from, to, limit, reverse)| Action::Sync { from, to, limit, reverse }),
    ]
}

const COLLECTIONS: [&str; 2] = ["lww", "fields"];

struct Replica {
    store: Store,
    clock: Arc<AtomicU64>,
}

fn replicas(skews: &[u64]) -> Vec<Replica> {
    let store_id = StoreId::from_bytes([7; 16]);
    let replicas: Vec<Replica> = skews
        .iter()
        .map(|skew| {
            let backend: Arc<dyn StorageBackend> = Arc::new(MemoryStore::new());
            block_on(backend.write(WriteBatch {
                store_id: Some(store_id),
                ..WriteBatch::default()
            }))
            .unwrap();
            // Clocks start equal or skewed, and move in tiny steps, so equal
            // wall-clock readings across devices are common.
            let clock = Arc::new(AtomicU64::new(1_700_000_000_000 + skew));
            let reading = clock.clone();
            let options = StoreOptions::new("converge")
                .backend(backend)
                .key_store(Arc::new(MemoryKeyStore::generate().unwrap()))
                .collection_strategy("fields", ConflictStrategy::MergeFields)
                .clock(move || reading.load(Ordering::SeqCst));
            Replica {
                store: block_on(Store::open(options)).unwrap(),
                clock,
            }
        })
        .collect();
    // The first replica admits the others (what pairing does).
    for replica in &replicas[1..] {
        block_on(async {
            let welcome = replicas[0]
                .store
                .admit_device(replica.store.device_id(), "replica")
                .await
                .unwrap();
            replica.store.join(welcome).await.unwrap();
        });
    }
    // ... and every replica learns the whole membership (as sync does).
    let members = block_on(replicas[0].store.membership());
    for replica in &replicas {
        block_on(replica.store.merge_membership(&members)).unwrap();
    }
    replicas
}

fn sync(from: &Store, to: &Store, limit: usize, reverse: bool) {
    block_on(async {
        let theirs = to.version_vector().await.unwrap();
        let mut missing = from.commits_missing_from(&theirs, limit).await.unwrap();
        if reverse {
            missing.reverse(); // out of order: later commits are refused until earlier ones arrive
        }
        let mut again = missing.clone();
        missing.append(&mut again); // and every commit twice
        let report = to.ingest(missing).await.unwrap();
        for (_, reason) in &report.rejected {
            assert_eq!(
                reason.code(),
                "CHANGE_OUT_OF_ORDER",
                "only ordering may refuse honest commits"
            );
        }
    });
}

/// Everything a replica holds, as bytes: record rows with stamps and field
/// state (tombstones included), keys, events, version vector.
fn dump(store: &Store) -> String {
    block_on(async {
        let backend = store.inner_backend_for_tests();
        let mut out = String::new();
        for collection in COLLECTIONS {
            for id in IDS {
                let row = backend.get_record(collection, id).await.unwrap();
                out += &format!("{collection}/{id} {row:?}\n");
            }
        }
        for id in IDS {
            out += &format!("kv/{id} {:?}\n", backend.get_kv(id).await.unwrap());
        }
        for event in store
            .events("log")
            .list(EventListOptions::default())
            .await
            .unwrap()
        {
            out += &format!("event {} {} {}\n", event.id, event.at, event.value);
        }
        out += &format!("{:?}\n", store.version_vector().await.unwrap());
        out
    })
}

fn run(skews: Vec<u64>, actions: Vec<Action>) {
    let replicas = replicas(&skews);
    for action in actions {
        if let Action::Sync {
            from,
            to,
            limit,
            reverse,
        } = action
        {
            if from != to {
                sync(&replicas[from].store, &replicas[to].store, limit, reverse);
            }
            continue;
        }
        block_on(async {
            match action {
                Action::Put {
                    replica,
                    collection,
                    id,
                    fields,
                } => {
                    let doc: serde_json::Map<String, serde_json::Value> = fields
                        .iter()
                        .map(|(f, v)| (FIELDS[*f].to_owned(), json!(v)))
                        .collect();
                    replicas[replica]
                        .store
                        .records(COLLECTIONS[collection])
                        .put(IDS[id], doc)
                        .await
                        .unwrap();
                }
                Action::Delete {
                    replica,
                    collection,
                    id,
                } => {
                    replicas[replica]
                        .store
                        .records(COLLECTIONS[collection])
                        .delete(IDS[id])
                        .await
                        .unwrap();
                }
                Action::KvSet { replica, id, value } => {
                    replicas[replica]
                        .store
                        .kv()
                        .set(IDS[id], value)
                        .await
                        .unwrap();
                }
                Action::KvDelete { replica, id } => {
                    replicas[replica].store.kv().delete(IDS[id]).await.unwrap();
                }
                Action::Append { replica, value } => {
                    replicas[replica]
                        .store
                        .events("log")
                        .append(value)
                        .await
                        .unwrap();
                }
                Action::Tick { replica, ms } => {
                    replicas[replica].clock.fetch_add(ms, Ordering::SeqCst);
                }
                Action::Sync { .. } => {}
            }
        });
    }
    // Heal the partition: everyone exchanges everything.
    for _ in 0..2 {
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                if from != to {
                    sync(
                        &replicas[from].store,
                        &replicas[to].store,
                        usize::MAX,
                        false,
                    );
                }
            }
        }
    }
    let first = dump(&replicas[0].store);
    for replica in &replicas[1..] {
        assert_eq!(dump(&replica.store), first, "replicas diverged");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(
        skews in prop::collection::vec(prop_oneof![Just(0u64), 0u64..5_000], REPLICAS),
        actions in prop::collection::vec(action(), 1..60),
    ) {
        run(skews, actions);
    }
}

#[test]
fn equal_wall_clocks_pick_the_same_winner_everywhere() {
    let replicas = replicas(&[0, 0, 0]);
    block_on(async {
        for (i, r) in replicas.iter().enumerate() {
            r.store
                .records("lww")
                .put("a", json!({ "by": i }))
                .await
                .unwrap();
        }
    });
    for from in 0..REPLICAS {
        for to in 0..REPLICAS {
            if from != to {
                sync(
                    &replicas[from].store,
                    &replicas[to].store,
                    usize::MAX,
                    false,
                );
            }
        }
    }
    let winner = |r: &Replica| block_on(r.store.records("lww").get("a")).unwrap();
    let expected_author = replicas.iter().map(|r| r.store.device_id()).max().unwrap();
    let expected = replicas
        .iter()
        .position(|r| r.store.device_id() == expected_author)
        .unwrap();
    for r in &replicas {
        assert_eq!(
            winner(r),
            Some(json!({ "by": expected })),
            "greatest author wins a tie on the clock"
        );
    }
}

/// A backend whose writes wait for a gate: lets a test drop a writer in
/// the middle of a group commit.
mod cancelled_writer {
    use std::sync::{Arc, Mutex};

    use futures::channel::oneshot;
    use futures::FutureExt;
    use persist::change::SignedCommit;
    use persist::keys::MemoryKeyStore;
    use persist::platform::BoxFuture;
    use persist::storage::{
        EventQuery, EventRow, KvRow, MemoryStore, RecordQuery, RecordRow, StorageBackend,
        StorageResult, StoredMeta, WriteBatch,
    };
    use persist::{DeviceId, Store, StoreOptions};
    use serde_json::json;

    #[derive(Default)]
    struct Gated {
        inner: MemoryStore,
        gate: Mutex<Option<oneshot::Receiver<()>>>,
    }

    impl StorageBackend for Gated {
        fn describe(&self) -> String {
            "gated".into()
        }
        fn load_meta(&self) -> BoxFuture<'_, StorageResult<StoredMeta>> {
            self.inner.load_meta()
        }
        fn write(&self, batch: WriteBatch) -> BoxFuture<'_, StorageResult<()>> {
            let gate = self.gate.lock().unwrap().take();
            Box::pin(async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                self.inner.write(batch).await
            })
        }
        fn version_vector(&self) -> BoxFuture<'_, StorageResult<Vec<(DeviceId, u64)>>> {
            self.inner.version_vector()
        }
        fn get_commit(
            &self,
            a: DeviceId,
            s: u64,
        ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
            self.inner.get_commit(a, s)
        }
        fn commits_after(
            &self,
            a: DeviceId,
            s: u64,
            l: usize,
        ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
            self.inner.commits_after(a, s, l)
        }
        fn get_record<'a>(
            &'a self,
            c: &'a str,
            i: &'a str,
        ) -> BoxFuture<'a, StorageResult<Option<RecordRow>>> {
            self.inner.get_record(c, i)
        }
        fn list_records<'a>(
            &'a self,
            c: &'a str,
            q: &'a RecordQuery,
        ) -> BoxFuture<'a, StorageResult<Vec<RecordRow>>> {
            self.inner.list_records(c, q)
        }
        fn list_events<'a>(
            &'a self,
            l: &'a str,
            q: &'a EventQuery,
        ) -> BoxFuture<'a, StorageResult<Vec<EventRow>>> {
            self.inner.list_events(l, q)
        }
        fn get_kv<'a>(&'a self, k: &'a str) -> BoxFuture<'a, StorageResult<Option<KvRow>>> {
            self.inner.get_kv(k)
        }
        fn list_kv<'a>(&'a self, q: &'a RecordQuery) -> BoxFuture<'a, StorageResult<Vec<KvRow>>> {
            self.inner.list_kv(q)
        }
        fn scan<'a>(
            &'a self,
            table: persist::storage::Table,
            after: Option<&'a (String, String)>,
            limit: usize,
        ) -> BoxFuture<'a, StorageResult<persist::storage::ScanPage>> {
            self.inner.scan(table, after, limit)
        }
        fn close(&self) -> BoxFuture<'_, StorageResult<()>> {
            self.inner.close()
        }
    }

    #[test]
    fn a_writer_dropped_mid_commit_leaves_no_sequence_gap() {
        futures::executor::block_on(async {
            let backend = Arc::new(Gated::default());
            let keys = Arc::new(MemoryKeyStore::generate().unwrap());
            let store = Store::open(
                StoreOptions::new("gated")
                    .backend(backend.clone())
                    .key_store(keys),
            )
            .await
            .unwrap();
            let (open_gate, gate) = oneshot::channel::<()>();
            *backend.gate.lock().unwrap() = Some(gate);
            {
                // Start a write, let it reach storage, then drop it (cancelled).
                let notes = store.records("notes");
                let mut write = Box::pin(notes.put("lost", json!(1)));
                assert!(
                    (&mut write).now_or_never().is_none(),
                    "the write waits at the gate"
                );
            }
            drop(open_gate);
            let receipt = store.records("notes").put("kept", json!(2)).await.unwrap();
            assert_eq!(
                receipt.seq, 1,
                "the cancelled commit's sequence number is reused, not skipped"
            );
            assert_eq!(store.records("notes").get("lost").await.unwrap(), None);
            assert_eq!(
                store.version_vector().await.unwrap(),
                vec![(store.device_id(), 1)]
            );
            store.close().await.unwrap();
        });
    }
}

/// A device whose clock runs ten minutes ahead (twice the default bound):
/// its commits wait (CLOCK_SKEW) instead of dragging the other replica's
/// clock, and are accepted once the receiver's clock is within the bound.
#[test]
fn commits_from_far_ahead_wait_for_the_clock() {
    const BOUND: u64 = persist::names::DEFAULT_MAX_CLOCK_SKEW_MS;
    let replicas = replicas(&[0, 2 * BOUND]);
    let (here, ahead) = (&replicas[0], &replicas[1]);
    block_on(ahead.store.kv().set("k", json!("from the future"))).unwrap();
    let commits = block_on(ahead.store.commits_missing_from(&[], 10)).unwrap();
    let report = block_on(here.store.ingest(commits.clone())).unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.rejected[0].1.code(), "CLOCK_SKEW");
    assert_eq!(block_on(here.store.kv().get("k")).unwrap(), None);
    // The local clock was not dragged ahead: a local write stays "now".
    let local = block_on(here.store.events("log").append(json!(1))).unwrap();
    assert!(local.at < 1_700_000_000_000 + BOUND);
    // One bound and a second later the commit is within it.
    here.clock.fetch_add(BOUND + 1_000, Ordering::SeqCst);
    let report = block_on(here.store.ingest(commits)).unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
}

/// Membership entries are bounded the same way: an entry dated ahead of
/// the receiver's clock by more than the bound waits, and is taken from
/// the same log once the clock is within it.
#[test]
fn membership_entries_from_far_ahead_wait_for_the_clock() {
    const BOUND: u64 = persist::names::DEFAULT_MAX_CLOCK_SKEW_MS;
    let replicas = replicas(&[0, 2 * BOUND]);
    let (here, ahead) = (&replicas[0], &replicas[1]);
    let newcomer = persist::DeviceIdentity::from_secret(&[77; 32]).device_id();
    block_on(ahead.store.admit_device(newcomer, "newcomer")).unwrap();
    let log = block_on(ahead.store.membership());
    block_on(here.store.merge_membership(&log)).unwrap();
    assert!(!here.store.members().is_member(&newcomer));
    here.clock.fetch_add(BOUND + 1_000, Ordering::SeqCst);
    block_on(here.store.merge_membership(&log)).unwrap();
    assert!(here.store.members().is_member(&newcomer));
}

/// A revoked device's commit that one replica applied before the removal
/// reached it ends up on every replica (that replica records its own cut,
/// the highest wins), and what the device writes afterwards on none.
#[test]
fn replicas_agree_on_a_revoked_devices_commits_whatever_reached_them_first() {
    let replicas = replicas(&[0, 0, 0]);
    let (a, b, c) = (&replicas[0].store, &replicas[1].store, &replicas[2].store);
    let give = |from: &Store, to: &Store| {
        let theirs = block_on(to.version_vector()).unwrap();
        let missing = block_on(from.commits_missing_from(&theirs, usize::MAX)).unwrap();
        block_on(to.ingest(missing)).unwrap()
    };
    block_on(c.kv().set("k1", json!("before"))).unwrap();
    give(c, a);
    give(c, b);
    // C's second write reaches B only; then A revokes C (A has seen 1).
    block_on(c.kv().set("k2", json!("in flight"))).unwrap();
    give(c, b);
    block_on(a.revoke(c.device_id())).unwrap();
    // B learns of the removal: it holds C's commit 2, so it records its
    // own removal with cut 2; A learns that and accepts commit 2 from B.
    block_on(b.merge_membership(&block_on(a.membership()))).unwrap();
    block_on(a.merge_membership(&block_on(b.membership()))).unwrap();
    assert_eq!(a.members().removed[&c.device_id()].commits_upto, 2);
    let report = give(b, a);
    assert_eq!(report.applied, 1, "{report:?}");
    // What C writes now is refused everywhere.
    block_on(c.kv().set("k3", json!("after"))).unwrap();
    for replica in [a, b] {
        let report = give(c, replica);
        assert_eq!(report.applied, 0);
        assert!(report
            .rejected
            .iter()
            .all(|(_, r)| r.code() == "NOT_TRUSTED"));
    }
    assert_eq!(dump(a), dump(b));
    assert_eq!(
        block_on(a.kv().get("k2")).unwrap(),
        Some(json!("in flight"))
    );
    assert_eq!(block_on(a.kv().get("k3")).unwrap(), None);
}
