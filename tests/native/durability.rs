//! Acknowledged writes survive SIGKILL: a child process writes (single
//! puts, batched puts and concurrent group-committed puts) and prints each
//! acknowledgement; we kill it at random moments, reopen, and check that
//! every acknowledged write is there and SQLite's integrity check passes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use persist::{Store, StoreOptions};

use crate::Rng;

/// Rounds and total time; CI runs the defaults, `PERSIST_KILL_ROUNDS` raises them.
fn budget() -> (u32, Duration) {
    let rounds = std::env::var("PERSIST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    (rounds, Duration::from_secs(u64::from(rounds).max(40)))
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let (mut rng, seed) = Rng::seeded();
    let (rounds, deadline) = budget();
    eprintln!("kill -9 test: seed {seed} (PERSIST_TEST_SEED to replay), up to {rounds} rounds");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("crash.db");
    let started = Instant::now();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut done = 0;
    for round in 0..rounds {
        if started.elapsed() > deadline {
            break;
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_persist"))
            .args([
                "crash-writer",
                "--path",
                db.to_str().expect("utf-8"),
                "--round",
                &round.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawns the writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it write for a random while (first ack, then 0-400 ms more).
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer acknowledges a write");
        let mut round_acks = vec![first];
        let run_for = Duration::from_millis(rng.below(400));
        let until = Instant::now() + run_for;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => round_acks.push(line),
                Err(_) => break,
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader thread");
        // Lines already in the pipe were printed after their write was durable.
        round_acks.extend(rx.try_iter());
        for line in round_acks {
            let id = line
                .strip_prefix("ack ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            acknowledged.insert(id.to_owned());
        }
        verify(&db, &acknowledged, round);
        done += 1;
    }
    eprintln!(
        "kill -9 test: {done} rounds, {} acknowledged writes, 0 lost",
        acknowledged.len()
    );
    assert!(done >= 10, "too few rounds ran ({done}) in the time budget");
}

fn verify(db: &std::path::Path, acknowledged: &BTreeSet<String>, round: u32) {
    let conn = rusqlite::Connection::open(db).expect("opens for the integrity check");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("runs integrity_check");
    assert_eq!(check, "ok", "integrity_check after round {round}");
    let present: i64 = conn
        .query_row(
            "SELECT count(*) FROM records WHERE collection = 'crash' AND value IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("counts");
    drop(conn);
    assert!(present as usize >= acknowledged.len());
    futures::executor::block_on(async {
        let store = Store::open(StoreOptions::new("crash").path(db))
            .await
            .expect("reopens after SIGKILL");
        let records = store.records("crash");
        for id in acknowledged {
            assert!(
                records.get(id).await.expect("reads").is_some(),
                "acknowledged write {id} lost in round {round}"
            );
        }
        // The change log and the version vector agree with the records.
        let vv = store.version_vector().await.expect("version vector");
        assert_eq!(vv.len(), 1, "one device wrote everything");
        store.close().await.expect("closes");
    });
}
