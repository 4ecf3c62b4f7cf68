//! Sync servers as operators run them: `persist node --serve` processes
//! over one PostgreSQL database (devices on different processes meet
//! live), and a server killed with SIGKILL in the middle of a sync and
//! started again (nothing it acknowledged is lost, devices resume).

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use persist::net::P2pOptions;
use persist::Store;
use serde_json::json;

use crate::host_storage::postgres_database;
use crate::p2p::{encrypted_memory_store, pair_into};

/// A `persist node --serve` process, killed when dropped.
struct ServerProcess {
    child: Child,
    addr: Multiaddr,
    /// Where it answers health checks.
    health: std::net::SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `persist node --serve --storage <storage>` with its identity in
/// `dir/<name>`, listening on loopback `port` (0: any), answering health
/// checks on another loopback port.
async fn server_process(dir: &Path, name: &str, storage: &str, port: u16) -> ServerProcess {
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let (child, mut lines) = crate::cli::spawn_persist(
        &[
            "node",
            "--data",
            name,
            "--for",
            "300",
            "--listen",
            &listen,
            "--serve",
            "--storage",
            storage,
            "--health",
            "127.0.0.1:0",
        ],
        dir,
    );
    let (addr, health) = tokio::task::spawn_blocking(move || {
        let (mut addr, mut health) = (None, None);
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening: ") {
                addr.get_or_insert(a.to_owned());
            }
            if let Some(h) = line.strip_prefix("health: http://") {
                health = Some(h.trim_end_matches('/').to_owned());
                break;
            }
        }
        // The rest of its output is read (and dropped) so it never blocks.
        std::thread::spawn(move || lines.for_each(drop));
        (addr, health)
    })
    .await
    .expect("task");
    ServerProcess {
        child,
        addr: addr
            .expect("the server printed its address")
            .parse()
            .expect("multiaddr"),
        health: health
            .expect("the server printed its health address")
            .parse()
            .expect("socket address"),
    }
}

/// A health check: the status code and the JSON body.
fn health(server: &ServerProcess) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(server.health).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
    (status, serde_json::from_str(body).expect("JSON"))
}

fn via(server: &Multiaddr) -> P2pOptions {
    P2pOptions {
        sync_servers: vec![server.clone()],
        ..P2pOptions::loopback()
    }
}

/// Waits (at most `seconds`) until `store` holds notes/`id`; how long.
async fn arrives(store: &Store, id: &str, seconds: u64) -> Duration {
    let start = Instant::now();
    while store.records("notes").get(id).await.expect("get").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(seconds),
            "notes/{id} never reached {} within {seconds} s",
            store.name()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Commits the database holds, per author, as `(author, count, highest)`.
async fn stored(url: &str) -> Vec<(Vec<u8>, i64, i64)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .query(
            "SELECT author, count(*), max(seq) FROM persist_commits GROUP BY author ORDER BY author",
            &[],
        )
        .await
        .expect("query")
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A device (encrypted, in memory) paired with another, each then online
/// only with its own server: what one writes reaches the other through
/// the two server processes.
async fn two_devices(first: &Multiaddr, second: &Multiaddr) -> (Store, Store) {
    let a = encrypted_memory_store("a").await;
    let node_a = a.enable_p2p(via(first)).await.expect("a");
    let b = encrypted_memory_store("b").await;
    let node_b = pair_into(&b, &node_a, via(second)).await;
    node_a.shutdown();
    node_b.shutdown();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_over_one_postgres_carry_writes_live_between_their_devices() {
    let url = postgres_database().await;
    let dir = tempfile::tempdir().expect("dir");
    let one = server_process(dir.path(), "one", &url, 0).await;
    let two = server_process(dir.path(), "two", &url, 0).await;
    let (a, b) = two_devices(&one.addr, &two.addr).await;
    let node_a = a.enable_p2p(via(&one.addr)).await.expect("a");
    let node_b = b.enable_p2p(via(&two.addr)).await.expect("b");
    // Both online at once, each with its own server only.
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let id = format!("a-{round}");
        a.records("notes")
            .put(&id, json!({ "round": round }))
            .await
            .expect("put");
        slowest = slowest.max(arrives(&b, &id, 10).await);
        let id = format!("b-{round}");
        b.records("notes")
            .put(&id, json!({ "round": round }))
            .await
            .expect("put");
        slowest = slowest.max(arrives(&a, &id, 10).await);
    }
    let peer_of = |addr: &Multiaddr| match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => peer,
        _ => panic!("{addr} names no peer"),
    };
    let seen_by_a = node_a.connected_peers().await.expect("peers");
    assert!(
        !seen_by_a.contains(&node_b.peer_id()),
        "A and B met directly"
    );
    assert!(seen_by_a.contains(&peer_of(&one.addr)));
    assert!(!seen_by_a.contains(&peer_of(&two.addr)));
    println!("a write crossed two server processes in at most {slowest:?}");
    assert_eq!(
        a.version_vector().await.expect("vv"),
        b.version_vector().await.expect("vv")
    );
    node_a.shutdown();
    node_b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_sync_loses_nothing_it_acknowledged_and_devices_resume() {
    let url = postgres_database().await;
    let dir = tempfile::tempdir().expect("dir");
    // A fixed port, so the server comes back where devices look for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let mut one = server_process(dir.path(), "one", &url, port).await;
    let two = server_process(dir.path(), "two", &url, 0).await;
    let (a, b) = two_devices(&one.addr, &two.addr).await;
    let node_a = a.enable_p2p(via(&one.addr)).await.expect("a");

    // A writes a long run; the server is killed while it takes it in. On a
    // loaded machine the server may not have stored anything by the 400th
    // write, so A keeps writing (bounded) until it has and the kill happens
    // mid-sync.
    const WRITES: usize = 400;
    const MOST_WRITES: usize = 4_000;
    let mut killed_after = None;
    let mut written = 0;
    while written < MOST_WRITES && (written < WRITES || killed_after.is_none()) {
        let i = written;
        a.records("notes")
            .put(&format!("n{i}"), json!({ "i": i }))
            .await
            .expect("put");
        written += 1;
        if killed_after.is_none() && i >= 40 {
            let held: i64 = stored(&url).await.iter().map(|(_, n, _)| n).sum();
            if held > 0 {
                one.child.kill().expect("SIGKILL");
                one.child.wait().expect("reaped");
                killed_after = Some(held);
            }
        }
    }
    let held_at_kill = killed_after.expect("the server took some writes before it was killed");
    // What it acknowledged is durable: each author's commits are an
    // unbroken run from 1, and none of those held at the kill went.
    let after_kill = stored(&url).await;
    for (_, count, highest) in &after_kill {
        assert_eq!(count, highest, "a gap in an author's stored chain");
    }
    let held: i64 = after_kill.iter().map(|(_, n, _)| n).sum();
    assert!(held >= held_at_kill, "{held} < {held_at_kill}");

    // It comes back on the same address; A resumes and B, on the other
    // process, gets every write.
    let one = server_process(dir.path(), "one", &url, port).await;
    let node_b = b.enable_p2p(via(&two.addr)).await.expect("b");
    let started = Instant::now();
    arrives(&b, &format!("n{}", written - 1), 60).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.version_vector().await.expect("vv") != a.version_vector().await.expect("vv") {
        assert!(Instant::now() < deadline, "B never caught up with A");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "killed with {held_at_kill} commits stored ({held} durable after the kill); \
         B had all {written} writes {:?} after the restart",
        started.elapsed()
    );
    for i in [0, written / 2, written - 1] {
        assert_eq!(
            b.records("notes").get(&format!("n{i}")).await.expect("get"),
            Some(json!({ "i": i }))
        );
    }
    drop(one);
    node_a.shutdown();
    node_b.shutdown();
}

/// A PostgreSQL cluster of this test's own (so it can be stopped without
/// disturbing the others), on a loopback port; stopped and removed when
/// dropped.
struct OwnPostgres {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let mut name = [0u8; 6];
        getrandom::fill(&mut name).expect("random");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let own = OwnPostgres {
            dir: std::env::temp_dir().join(format!("persist-pg-{}", hex::encode(name))),
            port,
        };
        own.run("start");
        own
    }

    fn run(&self, command: &str) {
        let status = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg(command)
            .env("PERSIST_PG_DIR", &self.dir)
            .env("PERSIST_PG_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("runs scripts/postgres.sh");
        assert!(status.success(), "postgres.sh {command}: {status}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.run("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_gives_clean_errors_then_recovers() {
    let postgres = OwnPostgres::start();
    let url = postgres.url();
    let dir = tempfile::tempdir().expect("dir");
    let mut server = server_process(dir.path(), "one", &url, 0).await;
    let (a, b) = two_devices(&server.addr, &server.addr).await;
    let node_a = a.enable_p2p(via(&server.addr)).await.expect("a");
    let node_b = b.enable_p2p(via(&server.addr)).await.expect("b");

    // A writes all along; the database goes away for a while meanwhile.
    const WRITES: usize = 300;
    let (mut stopped, mut outage) = (Instant::now(), Duration::ZERO);
    for i in 0..WRITES {
        a.records("notes")
            .put(&format!("n{i}"), json!({ "i": i }))
            .await
            .expect("a device's own writes never wait for the server");
        if i == 60 {
            postgres.run("stop");
            stopped = Instant::now();
            let (status, body) = health(&server);
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["code"], "STORAGE_IO", "{body}");
        }
        if i == 180 {
            outage = stopped.elapsed();
            postgres.run("start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "the server process died with its database"
    );
    // Everything A wrote reaches the database and B.
    let back = Instant::now();
    let last = format!("n{}", WRITES - 1);
    arrives(&b, &last, 60).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.version_vector().await.expect("vv") != a.version_vector().await.expect("vv") {
        assert!(Instant::now() < deadline, "B never caught up with A");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mine = a.version_vector().await.expect("vv");
    let held: i64 = stored(&url).await.iter().map(|(_, n, _)| n).sum();
    let written: u64 = mine.iter().map(|(_, n)| n).sum();
    assert_eq!(held as u64, written, "the database holds every commit");
    let (status, body) = health(&server);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["commits"], held, "{body}");
    println!(
        "PostgreSQL away for {outage:?} while A wrote; B had all {WRITES} writes {:?} after the \
         last one",
        back.elapsed()
    );
    node_a.shutdown();
    node_b.shutdown();
}
