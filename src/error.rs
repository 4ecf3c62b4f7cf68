//! Errors, one type per layer, each variant with a stable string code.
//!
//! The codes are part of the public contract: the JavaScript binding puts them
//! on `Error.code`, the command prints them, and tests match on them. Messages
//! may change between versions; codes may not.

use thiserror::Error;

/// Declares [`Code`]: each stable code, its text and what it means.
macro_rules! codes {
    ($($variant:ident = $text:literal: $meaning:literal,)*) => {
        /// Every stable error code, in one place: the errors of every layer
        /// name their code from here, and tests check the TypeScript
        /// declarations, the README's list and the JavaScript layers
        /// against [`Code::ALL`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// All codes, in the order the README lists them.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code's text, e.g. `"VALUE_TOO_LARGE"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }

            /// What the code means, in one sentence.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Code::$variant => $meaning,)*
                }
            }

            /// The code with this text.
            pub fn from_text(text: &str) -> Option<Code> {
                Code::ALL.iter().copied().find(|c| c.as_str() == text)
            }
        }
    };
}

codes! {
    AdapterUnavailable = "ADAPTER_UNAVAILABLE": "The storage adapter asked for does not exist on this platform.",
    InvalidOptions = "INVALID_OPTIONS": "Options that are missing, malformed or contradict each other.",
    InvalidName = "INVALID_NAME": "A store, collection or log name, an id or a key that is empty, too long or has forbidden characters.",
    InvalidValue = "INVALID_VALUE": "A value that is not JSON (a function, `undefined`, a symbol, a `BigInt`, a cycle) or not the shape the call needs.",
    ValueTooLarge = "VALUE_TOO_LARGE": "A value, batch or commit over its configured limit.",
    Closed = "CLOSED": "A call on a store (or a tab's P2P part) that was closed.",
    StoreReplaced = "STORE_REPLACED": "Another tab joined this store to another device's store: open it again.",
    KeyInvalid = "KEY_INVALID": "A key (the device's, or an exported store key) that is mistyped or unusable.",
    KeyRequired = "KEY_REQUIRED": "The store is encrypted and this device holds no key for it: give `key`.",
    NotEncrypted = "NOT_ENCRYPTED": "A key operation on a store without encryption.",
    DecryptFailed = "DECRYPT_FAILED": "A key that does not open the store, or data that does not decrypt (altered, or sealed under a key this device lacks).",
    CryptoUnavailable = "CRYPTO_UNAVAILABLE": "The platform gives no secure randomness.",
    EncryptionMismatch = "ENCRYPTION_MISMATCH": "An encrypted store received a commit in the clear, or the reverse.",
    StorageCorrupt = "STORAGE_CORRUPT": "The file or database is damaged or not a Persist store; it is left untouched.",
    StorageVersionUnsupported = "STORAGE_VERSION_UNSUPPORTED": "Storage written by a newer Persist, or by an earlier one in a format this one no longer reads.",
    StoreFormatUnsupported = "STORE_FORMAT_UNSUPPORTED": "A membership log in a format this Persist no longer reads.",
    StorageIo = "STORAGE_IO": "The operating system refused or failed an I/O operation (disk full, permissions, read-only).",
    StorageLocked = "STORAGE_LOCKED": "Another process or handle holds the storage.",
    StorageConflict = "STORAGE_CONFLICT": "Another writer of shared storage committed first (retried inside; seen only when retries run out).",
    StorageFailed = "STORAGE_FAILED": "Any other failure of the storage backend.",
    SignatureInvalid = "SIGNATURE_INVALID": "A received commit or membership entry whose signature does not verify.",
    WrongStore = "WRONG_STORE": "A received commit or entry of another store.",
    ChangeMalformed = "CHANGE_MALFORMED": "Received bytes that do not decode as a commit or membership entry.",
    ChangeConflict = "CHANGE_CONFLICT": "Two different commits under one author and number (the first is kept).",
    ChangeOutOfOrder = "CHANGE_OUT_OF_ORDER": "A received commit whose predecessor is missing.",
    ClockSkew = "CLOCK_SKEW": "A received commit stamped too far ahead of this device's clock (accepted once the clock catches up).",
    NotTrusted = "NOT_TRUSTED": "A device that is not, or no longer, a member of the store.",
    PairingCodeInvalid = "PAIRING_CODE_INVALID": "A pairing code mistyped, guessed wrong, already used or unknown (a wrong try burns it).",
    PairingCodeExpired = "PAIRING_CODE_EXPIRED": "A pairing code used after it expired.",
    PairingFailed = "PAIRING_FAILED": "Pairing could not complete (no answer, a dropped connection, a refusal, stores that cannot be joined).",
    P2pStopped = "P2P_STOPPED": "A call on a P2P node that was stopped.",
    P2pUnavailable = "P2P_UNAVAILABLE": "No P2P node to run the call: none started, or the tab running it did not answer.",
    P2pFailed = "P2P_FAILED": "A P2P call forwarded to the tab running the node failed there without a code.",
    QuotaExceeded = "QUOTA_EXCEEDED": "A sync server refused commits beyond the store's quota.",
    Equivocation = "EQUIVOCATION": "A P2P alert: a member signed two different commits or membership entries under one number and is removed on every replica.",
    ProtocolUnsupported = "PROTOCOL_UNSUPPORTED": "A P2P alert: a member's device speaks another version of the sync protocol; the two do not sync until one of them is updated.",
    NotAServer = "NOT_A_SERVER": "A peer named as a sync server does not serve stores.",
    SyncRemoteUnset = "SYNC_REMOTE_UNSET": "A sync remote names the deployment's server and nothing says where it is.",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a storage backend (SQLite, memory, IndexedDB).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// The file or database is not a Persist store, or its content is damaged.
    /// Nothing was written to it.
    #[error("storage is corrupt or not a Persist store: {0}")]
    Corrupt(String),
    /// The store was written by a newer version of Persist.
    #[error("storage schema version {found} is newer than this build supports ({supported})")]
    VersionUnsupported {
        /// Version found on disk.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// The store was written by an earlier Persist in a format this one no
    /// longer reads (commits and membership entries without hash chains).
    #[error("storage written by an earlier Persist: {0}")]
    FormatOutdated(String),
    /// The operating system refused or failed an I/O operation (disk full,
    /// permission denied, read-only file system).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Another process holds a lock on the database for too long.
    #[error("storage is locked by another connection: {0}")]
    Locked(String),
    /// Another writer of shared storage (another tab) committed first; the
    /// writer retries with fresh state.
    #[error("storage was changed by another writer: {0}")]
    Conflict(String),
    /// A stored row does not decrypt or authenticate under the store's keys
    /// (wrong key, or altered / moved ciphertext). Nothing was changed.
    #[error("stored data does not decrypt: {0}")]
    Decrypt(String),
    /// A stored row is sealed under a key epoch this replica's keyring does
    /// not hold (yet: another tab or device rotated the key).
    #[error("stored data is sealed under key epoch {0}, which this keyring does not hold")]
    EpochUnknown(u32),
    /// The backend has been closed.
    #[error("storage is closed")]
    Closed,
    /// Any other backend failure.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

impl StorageError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::Corrupt(_) => Code::StorageCorrupt.as_str(),
            StorageError::VersionUnsupported { .. } | StorageError::FormatOutdated(_) => {
                "STORAGE_VERSION_UNSUPPORTED"
            }
            StorageError::Io(_) => Code::StorageIo.as_str(),
            StorageError::Locked(_) => Code::StorageLocked.as_str(),
            StorageError::Conflict(_) => Code::StorageConflict.as_str(),
            StorageError::Decrypt(_) | StorageError::EpochUnknown(_) => {
                Code::DecryptFailed.as_str()
            }
            StorageError::Closed => Code::Closed.as_str(),
            StorageError::Backend(_) => Code::StorageFailed.as_str(),
        }
    }
}

/// What kind of name was refused by [`Error::InvalidName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A store name.
    Store,
    /// A record collection name.
    Collection,
    /// An event log name.
    EventLog,
    /// A record id.
    RecordId,
    /// A key-value key.
    Key,
    /// An event id or cursor.
    EventId,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Store => "store name",
            NameKind::Collection => "collection name",
            NameKind::EventLog => "event log name",
            NameKind::RecordId => "record id",
            NameKind::Key => "key",
            NameKind::EventId => "event id",
        })
    }
}

/// Why a commit received from elsewhere was refused by [`crate::Store::ingest`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The bytes do not decode as a commit of a known format version.
    #[error("malformed commit: {0}")]
    Malformed(String),
    /// The signature does not verify under the author's key.
    #[error("signature does not verify")]
    BadSignature,
    /// The commit belongs to another store.
    #[error("commit belongs to another store")]
    WrongStore,
    /// The commit is larger than the limits allow.
    #[error("commit exceeds size limits: {0}")]
    TooLarge(String),
    /// The commit carries a name or value that local writes would refuse.
    #[error("commit carries invalid content: {0}")]
    InvalidContent(String),
    /// Another commit with the same author and sequence number but different
    /// content is already stored (an equivocating or replaying author).
    #[error("conflicting commit for the same author and sequence")]
    Equivocation,
    /// The sealed operations of the commit do not open under the key of the
    /// epoch they name (tampered, or sealed under a key this replica lacks).
    #[error("sealed operations do not decrypt: {0}")]
    Undecryptable(String),
    /// An encrypted store received a commit in the clear, or the reverse.
    #[error("{0}")]
    EncryptionMismatch(&'static str),
    /// The author is not a member of the store (never paired, or removed
    /// before it wrote this commit).
    #[error("the author {0} is not a member of the store")]
    NotTrusted(String),
    /// The commit's stamps are further ahead of this device's clock than
    /// [`crate::Limits::max_clock_skew_ms`] allows (it is accepted once the
    /// clock catches up).
    #[error("the commit is stamped {ahead_ms} ms ahead of this device's clock")]
    FromTheFuture {
        /// How far ahead.
        ahead_ms: u64,
    },
    /// The commit skips sequence numbers of its author: the missing ones
    /// must arrive first.
    #[error("commit {found} of its author arrived before commit {expected}")]
    Gap {
        /// The next sequence number this replica can accept.
        expected: u64,
        /// The sequence number received.
        found: u64,
    },
}

impl RejectReason {
    /// The stable code of this reason.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => Code::ChangeMalformed.as_str(),
            RejectReason::BadSignature => Code::SignatureInvalid.as_str(),
            RejectReason::Undecryptable(_) => Code::DecryptFailed.as_str(),
            RejectReason::EncryptionMismatch(_) => Code::EncryptionMismatch.as_str(),
            RejectReason::WrongStore => Code::WrongStore.as_str(),
            RejectReason::TooLarge(_) => Code::ValueTooLarge.as_str(),
            RejectReason::InvalidContent(_) => Code::InvalidName.as_str(),
            RejectReason::Equivocation => Code::ChangeConflict.as_str(),
            RejectReason::Gap { .. } => Code::ChangeOutOfOrder.as_str(),
            RejectReason::NotTrusted(_) => Code::NotTrusted.as_str(),
            RejectReason::FromTheFuture { .. } => Code::ClockSkew.as_str(),
        }
    }
}

/// An error from the store API.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The requested storage adapter does not exist on this platform.
    #[error("adapter \"{requested}\" is not available on this platform; use \"{available}\"")]
    AdapterUnavailable {
        /// The adapter the caller asked for.
        requested: String,
        /// The adapter(s) this platform offers.
        available: &'static str,
    },
    /// The options given to [`crate::Store::open`] are inconsistent.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A name or id is empty, too long or contains forbidden characters.
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName {
        /// What the name was for.
        kind: NameKind,
        /// The refused name (truncated to 80 characters).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A value is not acceptable JSON for a document (for example a record
    /// that is not an object when the collection merges fields).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A value or a transaction exceeds the configured limit.
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Encoded size of the refused value.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
    /// Another handle on the same storage (another tab of this device)
    /// joined this store to another device's store: open it again.
    #[error("another tab joined this store to another device's store: open the store again")]
    StoreReplaced,
    /// A key (the device's, or an imported one) cannot be used.
    #[error("device key is invalid: {0}")]
    KeyInvalid(String),
    /// The store is encrypted and this device holds no key for it.
    #[error("key required: {0}")]
    KeyRequired(String),
    /// A key operation on a store without encryption.
    #[error("the store is not encrypted")]
    NotEncrypted,
    /// Encryption failed or a key does not open what it should.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    /// A commit received from elsewhere was refused.
    #[error("change rejected: {0}")]
    Rejected(RejectReason),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A device that is not (or no longer) a member of the store.
    #[error("not trusted: {0}")]
    NotTrusted(String),
    /// A pairing code was mistyped, guessed wrong, already used, or is
    /// unknown to the peer (one wrong try burns it on both sides).
    #[error("pairing code refused: {0}")]
    PairingCodeInvalid(String),
    /// A pairing code that expired before it was used.
    #[error("pairing code expired")]
    PairingCodeExpired,
    /// Pairing could not complete (no peer answered, the connection
    /// dropped, or the stores cannot be joined).
    #[error("pairing failed: {0}")]
    PairingFailed(String),
    /// A received membership log or entry was refused.
    #[error("membership refused: {0}")]
    Membership(#[from] crate::membership::MemberError),
    /// The P2P node this call needs has stopped (the store was closed or
    /// `stop` was called); enable P2P again to go on.
    #[error("the P2P node has stopped")]
    P2pStopped,
    /// A sync server refused commits beyond the quota of the store.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A sync remote names the deployment's server, and nothing says
    /// where that server is (`PERSIST_SYNC_REMOTE`).
    #[error("{0}")]
    SyncRemoteUnset(String),
}

impl Error {
    /// The stable code of this error, e.g. `"VALUE_TOO_LARGE"`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::AdapterUnavailable { .. } => Code::AdapterUnavailable.as_str(),
            Error::InvalidOptions(_) => Code::InvalidOptions.as_str(),
            Error::InvalidName { .. } => Code::InvalidName.as_str(),
            Error::InvalidValue(_) => Code::InvalidValue.as_str(),
            Error::ValueTooLarge { .. } => Code::ValueTooLarge.as_str(),
            Error::Closed => Code::Closed.as_str(),
            Error::StoreReplaced => Code::StoreReplaced.as_str(),
            Error::KeyInvalid(_) => Code::KeyInvalid.as_str(),
            Error::KeyRequired(_) => Code::KeyRequired.as_str(),
            Error::NotEncrypted => Code::NotEncrypted.as_str(),
            Error::Crypto(e) => e.code(),
            Error::Rejected(reason) => reason.code(),
            Error::Storage(e) => e.code(),
            Error::NotTrusted(_) => Code::NotTrusted.as_str(),
            Error::PairingCodeInvalid(_) => Code::PairingCodeInvalid.as_str(),
            Error::PairingCodeExpired => Code::PairingCodeExpired.as_str(),
            Error::PairingFailed(_) => Code::PairingFailed.as_str(),
            Error::Membership(e) => e.code(),
            Error::P2pStopped => Code::P2pStopped.as_str(),
            Error::QuotaExceeded(_) => Code::QuotaExceeded.as_str(),
            Error::SyncRemoteUnset(_) => Code::SyncRemoteUnset.as_str(),
        }
    }
}

/// Result alias for the store API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(all(test, not(all(target_family = "wasm", target_os = "unknown"))))]
mod tests {
    use std::collections::BTreeSet;

    use super::Code;

    fn read(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    fn all() -> BTreeSet<&'static str> {
        Code::ALL.iter().map(|c| c.as_str()).collect()
    }

    /// The codes quoted in `text` after `marker` (e.g. `codedError("`).
    fn quoted_after(text: &str, marker: &str) -> BTreeSet<String> {
        text.split(marker)
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn codes_are_unique_and_shaped() {
        assert_eq!(all().len(), Code::ALL.len(), "a code is listed twice");
        for code in Code::ALL {
            let text = code.as_str();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit()),
                "{text}"
            );
            assert_eq!(Code::from_text(text), Some(*code));
            assert!(code.meaning().ends_with('.'), "{text}: {}", code.meaning());
        }
    }

    /// The TypeScript union is exactly the table: a code the library can
    /// produce is declared, and nothing declared is made up.
    #[test]
    fn the_typescript_union_is_the_table() {
        let dts = read("js/index.d.ts");
        let start = dts
            .find("export type PersistErrorCode =")
            .expect("index.d.ts declares PersistErrorCode");
        let union = &dts[start..start + dts[start..].find(';').expect("the union ends")];
        let declared: BTreeSet<String> = quoted_after(union, "| \"");
        let table: BTreeSet<String> = all().into_iter().map(str::to_owned).collect();
        let expected: String = Code::ALL
            .iter()
            .map(|c| format!("\n  | \"{}\"", c.as_str()))
            .collect();
        assert_eq!(
            declared, table,
            "js/index.d.ts's PersistErrorCode differs from Code::ALL; it should read:\nexport type PersistErrorCode ={expected};"
        );
    }

    /// The README lists every code.
    #[test]
    fn the_readme_lists_every_code() {
        let readme = read("README.md");
        let section = readme
            .split("\n## Errors\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README.md has an Errors section");
        let missing: Vec<&str> = all()
            .into_iter()
            .filter(|c| !section.contains(&format!("`{c}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md's Errors section lacks {missing:?}"
        );
    }

    /// The package's JavaScript layer raises only codes of the table.
    #[test]
    fn the_javascript_layer_raises_only_table_codes() {
        let js = read("js/index.js");
        let mut raised = quoted_after(&js, "codedError(\"");
        raised.extend(quoted_after(&js, "?? \""));
        assert!(
            !raised.is_empty(),
            "no codedError(\"...\") found in js/index.js"
        );
        let unknown: Vec<String> = raised
            .into_iter()
            .filter(|c| !c.is_empty() && Code::from_text(c).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "js/index.js raises codes outside Code::ALL: {unknown:?}"
        );
    }
}
