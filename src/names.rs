//! Validation of names, ids and value sizes, shared by local writes and by
//! commits received from other devices.

use crate::error::{Error, NameKind, Result};

/// Longest collection, event log or store name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest record id or key, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Default limit on one encoded JSON value, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Default limit on one commit (a transaction), in encoded bytes.
pub const DEFAULT_MAX_COMMIT_BYTES: usize = 64 << 20;
/// Default limit on the number of operations in one commit.
pub const DEFAULT_MAX_COMMIT_OPS: usize = 100_000;
/// Default bound on how far ahead of the local clock received stamps
/// (commits and membership entries) may be: 5 minutes. Later ones wait
/// until the clock catches up, so a member dating its writes ahead wins
/// last-write-wins conflicts for minutes at most.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

fn refuse(kind: NameKind, name: &str, reason: &'static str) -> Error {
    let shown: String = name.chars().take(80).collect();
    Error::InvalidName {
        kind,
        name: shown,
        reason,
    }
}

/// Checks a store, collection or event log name: 1 to 64 bytes of ASCII
/// letters, digits, `_`, `-` and `.`, starting with a letter or digit.
pub fn check_name(kind: NameKind, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(refuse(kind, name, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(refuse(kind, name, "must be at most 64 bytes"));
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(refuse(kind, name, "must start with a letter or digit"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(refuse(
            kind,
            name,
            "may only contain letters, digits, '_', '-' and '.'",
        ));
    }
    Ok(())
}

/// Checks a record id or key: 1 to 512 bytes of UTF-8 with no control characters.
pub fn check_id(kind: NameKind, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(refuse(kind, id, "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(refuse(kind, id, "must be at most 512 bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(refuse(kind, id, "must not contain control characters"));
    }
    Ok(())
}

/// Checks the encoded size of a value against `limit`.
pub fn check_size(encoded_len: usize, limit: usize) -> Result<()> {
    if encoded_len > limit {
        return Err(Error::ValueTooLarge {
            size: encoded_len,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name(NameKind::Collection, "notes").is_ok());
        assert!(check_name(NameKind::Collection, "a.b-c_9").is_ok());
        for bad in ["", "-x", "has space", "sl/ash", "é", &"x".repeat(65)] {
            let err = check_name(NameKind::Collection, bad).expect_err(bad);
            assert_eq!(err.code(), "INVALID_NAME");
        }
    }

    #[test]
    fn ids() {
        assert!(check_id(NameKind::RecordId, "note/1 ünïcode").is_ok());
        for bad in ["", "a\nb", "\u{0}", &"x".repeat(513)] {
            assert_eq!(
                check_id(NameKind::RecordId, bad).map_err(|e| e.code()),
                Err("INVALID_NAME")
            );
        }
    }
}
