//! The `persist` command: put/get/list/delete, keys, events, errors, demo.

use std::path::Path;
use std::process::{Command, Output};

fn persist(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_persist"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs persist")
}

/// `persist args` in the background, mDNS off, with its output lines.
pub(crate) fn spawn_persist(
    args: &[&str],
    cwd: &Path,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_persist"))
        .args(args)
        .env("PERSIST_MDNS", "off")
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("runs persist");
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn put_get_list_delete_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("notes.db");
    let db = db.to_str().expect("utf-8 path");
    let ok = |args: &[&str]| {
        let out = persist(args, dir.path());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    ok(&["put", "--path", db, "notes", "n1", r#"{"title":"hi"}"#]);
    ok(&["put", "--path", db, "notes", "n2", r#"{"title":"there"}"#]);
    ok(&["put", "--path", db, "notes", "m1", "[1,2]"]);
    assert_eq!(
        ok(&["get", "--path", db, "notes", "n1"]).trim(),
        r#"{"title":"hi"}"#
    );
    let listed = ok(&["list", "--path", db, "notes", "--prefix", "n"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed
        .lines()
        .next()
        .is_some_and(|l| l.contains(r#""id":"n1""#)));
    ok(&["delete", "--path", db, "notes", "n1"]);
    let missing = persist(&["get", "--path", db, "notes", "n1"], dir.path());
    assert_eq!(missing.status.code(), Some(3));
    ok(&["kv", "--path", db, "set", "theme", r#""dark""#]);
    assert_eq!(
        ok(&["kv", "--path", db, "get", "theme"]).trim(),
        r#""dark""#
    );
    let appended = ok(&["events", "--path", db, "append", "audit", r#"{"a":1}"#]);
    assert!(appended.contains(r#""id":"#));
    assert_eq!(
        ok(&["events", "--path", db, "list", "audit"])
            .lines()
            .count(),
        1
    );
}

#[test]
fn errors_print_their_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("x.db");
    let db = db.to_str().expect("utf-8 path");
    let bad_json = persist(
        &["put", "--path", db, "notes", "n1", "{not json"],
        dir.path(),
    );
    assert_eq!(bad_json.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("error[INVALID_VALUE]"));
    let bad_name = persist(&["put", "--path", db, "no tes", "n1", "1"], dir.path());
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("error[INVALID_NAME]"));
    std::fs::write(dir.path().join("junk.db"), b"junk junk junk junk junk").expect("writes");
    let junk = persist(&["list", "--path", "junk.db", "notes"], dir.path());
    assert!(String::from_utf8_lossy(&junk.stderr).contains("error[STORAGE_CORRUPT]"));
    assert_eq!(
        std::fs::read(dir.path().join("junk.db")).expect("reads"),
        b"junk junk junk junk junk"
    );
}

#[test]
fn demo_runs_twice_and_keeps_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    for run in 1..=2 {
        let out = persist(&["demo", "--data", "data"], dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        assert!(
            text.contains("subscription fired: put notes/welcome"),
            "{text}"
        );
        assert!(
            text.contains(&format!("audit events   {} in total", 2 * run)),
            "{text}"
        );
        // The encrypted store: rotated once per run, nothing readable on disk.
        assert!(
            text.contains(&format!("rotated key    to epoch {run}")),
            "{text}"
        );
        assert!(text.contains("not found: stored sealed"), "{text}");
        // Two processes pair with a code, then replicate both ways; a
        // stranger is refused.
        assert!(text.contains("paired with 12D3Koo"), "{text}");
        assert!(text.contains("laptop  paired: 12D3Koo"), "{text}");
        assert!(
            text.contains("phone   notes/from-laptop = {\"text\""),
            "{text}"
        );
        assert!(text.contains("pushed live"), "{text}");
        assert!(
            text.contains("1 connection(s) refused, 0 record(s)"),
            "{text}"
        );
    }
    assert!(dir.path().join("data/demo.db").exists());
}

/// `persist pair` in two processes, then `persist peers` and `persist revoke`.
#[test]
fn pair_peers_and_revoke_from_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = persist(
        &[
            "put",
            "--path",
            "laptop.db",
            "notes",
            "n1",
            r#"{"from":"laptop"}"#,
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let (mut host, mut lines) = spawn_persist(
        &[
            "pair",
            "--path",
            "laptop.db",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--for",
            "30",
        ],
        dir.path(),
    );
    let (mut code, mut addr) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(text) = line.strip_prefix("code: ") {
            code = text.into();
        } else if let Some(text) = line.strip_prefix("address: ") {
            addr = text.into();
        }
        if !code.is_empty() && !addr.is_empty() {
            break;
        }
    }
    assert_eq!(code.len(), 9, "{code}");
    let out = Command::new(env!("CARGO_BIN_EXE_persist"))
        .args([
            "pair", &code, "--peer", &addr, "--path", "phone.db", "--for", "20",
        ])
        .env("PERSIST_MDNS", "off")
        .current_dir(dir.path())
        .output()
        .expect("joiner");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("paired with"), "{}", stdout(&out));
    let phone_peer = lines
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("paired: ").map(str::to_owned))
        .expect("the laptop reports the pairing");
    assert!(host.wait().expect("host exits").success());

    let out = persist(&["get", "--path", "phone.db", "notes", "n1"], dir.path());
    assert_eq!(stdout(&out).trim(), r#"{"from":"laptop"}"#);
    let out = persist(&["peers", "--path", "phone.db"], dir.path());
    let text = stdout(&out);
    assert_eq!(text.matches("trusted ").count(), 2, "{text}");
    assert!(
        text.contains(&phone_peer) && text.contains("(this device)"),
        "{text}"
    );

    // A later write on the laptop reaches the phone with `persist sync`.
    let out = persist(
        &[
            "put",
            "--path",
            "laptop.db",
            "notes",
            "n2",
            r#"{"later":true}"#,
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let (mut server, mut lines) = spawn_persist(
        &[
            "sync",
            "--path",
            "laptop.db",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--for",
            "20",
        ],
        dir.path(),
    );
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("address: ").map(str::to_owned))
        .expect("the laptop prints its address");
    let out = Command::new(env!("CARGO_BIN_EXE_persist"))
        .args(["sync", "--path", "phone.db", "--peer", &addr, "--for", "15"])
        .env("PERSIST_MDNS", "off")
        .current_dir(dir.path())
        .output()
        .expect("sync");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("synced: 1 commit(s) received"),
        "{}",
        stdout(&out)
    );
    let _ = server.kill();
    let _ = server.wait();
    let out = persist(&["get", "--path", "phone.db", "notes", "n2"], dir.path());
    assert_eq!(stdout(&out).trim(), r#"{"later":true}"#);

    let out = persist(&["revoke", "--path", "laptop.db", &phone_peer], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = persist(&["peers", "--path", "laptop.db"], dir.path());
    let text = stdout(&out);
    assert!(text.contains(&format!("revoked  {phone_peer}")), "{text}");
    assert_eq!(text.matches("trusted ").count(), 1, "{text}");
    // Revoking it again finishes what is left (nothing): success. A device
    // that never was a member: NOT_TRUSTED, status 1.
    let out = persist(&["revoke", "--path", "laptop.db", &phone_peer], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let out = persist(&["revoke", "--path", "laptop.db", &stranger], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[NOT_TRUSTED]"));
}

/// Starts `persist node` in `dir` with `extra` flags; its listen lines.
fn start_node(dir: &Path, extra: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut args = vec!["node", "--data", "node", "--for", "60"];
    args.extend_from_slice(extra);
    let (child, lines) = spawn_persist(&args, dir);
    let mut listening = Vec::new();
    let mut peer = String::new();
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("node: ") {
            peer = id.to_owned();
        } else if let Some(addr) = line.strip_prefix("listening: ") {
            listening.push(addr.to_owned());
            // Every address the config asks for, each ending in the id.
            if listening.len() == 3 {
                break;
            }
        }
    }
    assert!(
        listening
            .iter()
            .all(|a| a.ends_with(&format!("/p2p/{peer}"))),
        "{listening:?}"
    );
    (child, listening)
}

fn sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: a plain kill(2) on a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    child.wait().expect("node exits")
}

#[test]
fn node_keeps_its_identity_and_webrtc_certificate_reads_its_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Listeners only (no WebRTC connection is made: a WebRTC connection
    // would join the mDNS multicast group on the host's interfaces).
    std::fs::write(
        dir.path().join("node.toml"),
        "listen = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/tcp/0/ws\", \"/ip4/127.0.0.1/udp/0/webrtc-direct\"]\n\
         max_circuits = 4\nmax_circuit_bytes = 1048576\n",
    )
    .expect("config");
    let (mut first, before) = start_node(dir.path(), &["--config", "node.toml"]);
    assert!(sigterm(&mut first).success(), "clean exit on SIGTERM");
    let (mut second, after) = start_node(dir.path(), &["--config", "node.toml"]);
    assert!(sigterm(&mut second).success());
    let certhash = |addrs: &[String]| {
        addrs
            .iter()
            .find(|a| a.contains("/webrtc-direct/certhash/"))
            .and_then(|a| a.split("/certhash/").nth(1))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned)
            .expect("a WebRTC-direct address with its certificate hash")
    };
    assert_eq!(
        certhash(&before),
        certhash(&after),
        "the certificate survives restarts"
    );
    let peer = |addrs: &[String]| addrs[0].rsplit('/').next().map(str::to_owned);
    assert_eq!(peer(&before), peer(&after), "so does the node's identity");
    // The node's own store seals the certificate: its private key is not on disk in the clear.
    let db = std::fs::read(dir.path().join("node").join("node.db")).expect("node store");
    assert!(
        !db.windows(11).any(|w| w == b"PRIVATE KEY"),
        "the certificate is stored sealed"
    );

    // A config file with a mistake is refused with a clear error.
    std::fs::write(dir.path().join("bad.toml"), "max_circuits = \"many\"\n").expect("config");
    let out = persist(
        &["node", "--data", "node", "--config", "bad.toml"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error[INVALID_OPTIONS]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_devices_pair_by_code_alone_through_a_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut node, addrs) = start_node(
        dir.path(),
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0/ws",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
    );
    let bootstrap = addrs
        .iter()
        .find(|a| !a.contains("/ws/") && a.contains("/tcp/"))
        .expect("tcp");
    let out = persist(
        &[
            "put",
            "--path",
            "laptop.db",
            "notes",
            "n1",
            r#"{"from":"laptop"}"#,
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let (mut host, mut lines) = spawn_persist(
        &[
            "pair",
            "--path",
            "laptop.db",
            "--bootstrap",
            bootstrap,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--for",
            "30",
        ],
        dir.path(),
    );
    let code = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("code: ").map(str::to_owned))
        .expect("a code");
    // No address of the laptop: the node's meeting point finds it.
    let out = Command::new(env!("CARGO_BIN_EXE_persist"))
        .args([
            "pair",
            &code,
            "--bootstrap",
            bootstrap,
            "--path",
            "phone.db",
            "--for",
            "20",
        ])
        .env("PERSIST_MDNS", "off")
        .current_dir(dir.path())
        .output()
        .expect("joiner");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(host.wait().expect("host exits").success());
    let out = persist(&["get", "--path", "phone.db", "notes", "n1"], dir.path());
    assert_eq!(stdout(&out).trim(), r#"{"from":"laptop"}"#);

    // A mistyped code: no device offers it, a clear error, soon.
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_persist"))
        .args([
            "pair",
            "ZZZZ-ZZZZ",
            "--bootstrap",
            bootstrap,
            "--path",
            "tablet.db",
            "--for",
            "30",
        ])
        .env("PERSIST_MDNS", "off")
        .current_dir(dir.path())
        .output()
        .expect("joiner");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error[PAIRING_CODE_INVALID]"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(sigterm(&mut node).success());
}
