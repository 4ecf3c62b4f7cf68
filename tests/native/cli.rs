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
