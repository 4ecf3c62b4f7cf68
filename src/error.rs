//! Errors, one type per layer, each variant with a stable string code.
//!
//! The codes are part of the public contract: the JavaScript binding puts them
//! on `Error.code`, the command prints them, and tests match on them. Messages
//! may change between versions; codes may not.

use thiserror::Error;

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
            StorageError::Corrupt(_) => "STORAGE_CORRUPT",
            StorageError::VersionUnsupported { .. } | StorageError::FormatOutdated(_) => {
                "STORAGE_VERSION_UNSUPPORTED"
            }
            StorageError::Io(_) => "STORAGE_IO",
            StorageError::Locked(_) => "STORAGE_LOCKED",
            StorageError::Conflict(_) => "STORAGE_CONFLICT",
            StorageError::Decrypt(_) | StorageError::EpochUnknown(_) => "DECRYPT_FAILED",
            StorageError::Closed => "CLOSED",
            StorageError::Backend(_) => "STORAGE_FAILED",
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
            RejectReason::Malformed(_) => "CHANGE_MALFORMED",
            RejectReason::BadSignature => "SIGNATURE_INVALID",
            RejectReason::Undecryptable(_) => "DECRYPT_FAILED",
            RejectReason::EncryptionMismatch(_) => "ENCRYPTION_MISMATCH",
            RejectReason::WrongStore => "WRONG_STORE",
            RejectReason::TooLarge(_) => "VALUE_TOO_LARGE",
            RejectReason::InvalidContent(_) => "INVALID_NAME",
            RejectReason::Equivocation => "CHANGE_CONFLICT",
            RejectReason::Gap { .. } => "CHANGE_OUT_OF_ORDER",
            RejectReason::NotTrusted(_) => "NOT_TRUSTED",
            RejectReason::FromTheFuture { .. } => "CLOCK_SKEW",
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
            Error::AdapterUnavailable { .. } => "ADAPTER_UNAVAILABLE",
            Error::InvalidOptions(_) => "INVALID_OPTIONS",
            Error::InvalidName { .. } => "INVALID_NAME",
            Error::InvalidValue(_) => "INVALID_VALUE",
            Error::ValueTooLarge { .. } => "VALUE_TOO_LARGE",
            Error::Closed => "CLOSED",
            Error::StoreReplaced => "STORE_REPLACED",
            Error::KeyInvalid(_) => "KEY_INVALID",
            Error::KeyRequired(_) => "KEY_REQUIRED",
            Error::NotEncrypted => "NOT_ENCRYPTED",
            Error::Crypto(e) => e.code(),
            Error::Rejected(reason) => reason.code(),
            Error::Storage(e) => e.code(),
            Error::NotTrusted(_) => "NOT_TRUSTED",
            Error::PairingCodeInvalid(_) => "PAIRING_CODE_INVALID",
            Error::PairingCodeExpired => "PAIRING_CODE_EXPIRED",
            Error::PairingFailed(_) => "PAIRING_FAILED",
            Error::Membership(e) => e.code(),
            Error::P2pStopped => "P2P_STOPPED",
            Error::QuotaExceeded(_) => "QUOTA_EXCEEDED",
            Error::SyncRemoteUnset(_) => "SYNC_REMOTE_UNSET",
        }
    }
}

/// Result alias for the store API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
