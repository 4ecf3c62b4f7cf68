//! The change model: operations, commits and their signatures.
//!
//! Every local write or transaction becomes one [`Commit`]: its operations,
//! the author device, a per-author sequence number, the hash of the
//! author's previous commit (each author's commits form a hash chain) and
//! the hybrid-logical-clock stamp of its first operation (operation `i` is
//! stamped `hlc + i`). A commit is encoded once with `postcard` (the body)
//! and signed once with the author's Ed25519 key. The signed body is what
//! the change log stores and what replication forwards, so any peer can
//! relay a commit and every receiver can verify it.
//!
//! Wire and storage form of a commit ([`SignedCommit`]):
//!
//! ```text
//! body      = postcard(CommitBody { format: 3, store, author, seq, prev, hlc, ops })
//! hash      = SHA-256(body)
//! signature = Ed25519(author, "persist/commit/v2\0" || store || author || seq (u64 BE) || hash)
//! ```
//!
//! The signed message names store, author and sequence number outside the
//! body, so `(seq, hash, signature)` alone proves that the author wrote a
//! commit at that number: a removal's cut carries that proof.
//!
//! This module does no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{Keyring, Opener, Sealer};
use crate::error::{NameKind, RejectReason};
use crate::hlc::Hlc;
use crate::identity::{DeviceId, DeviceIdentity};
use crate::names;

/// Encoding version of a [`CommitBody`] whose operations are in the clear.
/// (Formats 1 and 2, without hash chains, are refused.)
pub const COMMIT_FORMAT: u8 = 3;
/// Encoding version of a commit of an encrypted store: the operations are
/// one envelope ([`crate::crypto::envelope`]) sealed before signing, bound to
/// the store, author, sequence number, stamp and operation count.
pub const SEALED_COMMIT_FORMAT: u8 = 4;
/// The highest commit format of an earlier Persist (no hash chain).
pub const OLD_COMMIT_FORMAT: u8 = 2;
const SIGNING_DOMAIN: &[u8] = b"persist/commit/v2\0";

/// Random identifier of a store, fixed at creation and shared by every
/// replica of it. It binds commits to their store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoreId([u8; 16]);

impl StoreId {
    /// A new random store id.
    pub fn generate() -> crate::Result<StoreId> {
        let mut bytes = [0u8; 16];
        crate::platform::fill_random(&mut bytes)?;
        Ok(StoreId(bytes))
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> StoreId {
        StoreId(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreId({self})")
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The total order of versions: hybrid-logical-clock stamp, then author.
/// Equal wall clocks on two devices still give a deterministic winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When (hybrid logical clock).
    pub hlc: Hlc,
    /// Who.
    pub author: DeviceId,
}

/// One operation of a commit. JSON values travel as their text encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Replace a record's document.
    RecordPut {
        /// Collection name.
        collection: String,
        /// Record id.
        id: String,
        /// JSON text of the document.
        value: String,
        /// The version this write replaced, for collections with a custom resolver.
        base: Option<Stamp>,
    },
    /// Set and remove top-level fields of a record (collections merging fields).
    RecordPatch {
        /// Collection name.
        collection: String,
        /// Record id.
        id: String,
        /// Fields set, with the JSON text of their values.
        set: Vec<(String, String)>,
        /// Fields removed.
        unset: Vec<String>,
    },
    /// Delete a record (leaves a tombstone).
    RecordDelete {
        /// Collection name.
        collection: String,
        /// Record id.
        id: String,
        /// The version this delete replaced, for collections with a custom resolver.
        base: Option<Stamp>,
    },
    /// Append an event to a log.
    EventAppend {
        /// Log name.
        log: String,
        /// JSON text of the event.
        value: String,
    },
    /// Set a key.
    KvSet {
        /// The key.
        key: String,
        /// JSON text of the value.
        value: String,
    },
    /// Delete a key (leaves a tombstone).
    KvDelete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// Total bytes of JSON text this operation carries.
    pub fn value_bytes(&self) -> usize {
        match self {
            Op::RecordPut { value, .. }
            | Op::EventAppend { value, .. }
            | Op::KvSet { value, .. } => value.len(),
            Op::RecordPatch { set, .. } => set.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Op::RecordDelete { .. } | Op::KvDelete { .. } => 0,
        }
    }

    /// Checks names, ids and sizes as a local write would.
    pub fn validate(&self, max_value_bytes: usize) -> crate::Result<()> {
        match self {
            Op::RecordPut { collection, id, .. }
            | Op::RecordPatch { collection, id, .. }
            | Op::RecordDelete { collection, id, .. } => {
                names::check_name(NameKind::Collection, collection)?;
                names::check_id(NameKind::RecordId, id)?;
            }
            Op::EventAppend { log, .. } => names::check_name(NameKind::EventLog, log)?,
            Op::KvSet { key, .. } | Op::KvDelete { key } => names::check_id(NameKind::Key, key)?,
        }
        names::check_size(self.value_bytes(), max_value_bytes)
    }
}

/// The signed content of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitBody {
    /// Encoding version ([`COMMIT_FORMAT`]).
    pub format: u8,
    /// The store this commit belongs to.
    pub store: StoreId,
    /// The device that wrote it.
    pub author: DeviceId,
    /// Per-author sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// [`SignedCommit::hash`] of the author's commit `seq - 1` (zeros for
    /// the first).
    pub prev: [u8; 32],
    /// Stamp of the first operation; operation `i` has `hlc + i`.
    pub hlc: Hlc,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl CommitBody {
    /// The stamp of operation `index`.
    pub fn stamp(&self, index: usize) -> Stamp {
        Stamp {
            hlc: self.hlc.plus(index as u64),
            author: self.author,
        }
    }
}

/// The encoded form of a [`SEALED_COMMIT_FORMAT`] body: what a relay or a
/// replica without the key can still check (store, author, sequence, stamps,
/// signature) and the sealed operations.
#[derive(Serialize, Deserialize)]
struct SealedBodyWire {
    format: u8,
    store: StoreId,
    author: DeviceId,
    seq: u64,
    prev: [u8; 32],
    hlc: Hlc,
    op_count: u32,
    #[serde(with = "byte_buf")]
    sealed: Vec<u8>,
}

/// Associated data of a commit's sealed operations.
fn sealed_ops_context(
    store: StoreId,
    author: &DeviceId,
    seq: u64,
    hlc: Hlc,
    count: u32,
) -> Vec<u8> {
    crate::crypto::envelope::context(&[
        store.as_bytes(),
        b"commit",
        author.as_bytes(),
        &seq.to_be_bytes(),
        &hlc.as_u64().to_be_bytes(),
        &count.to_be_bytes(),
    ])
}

/// A commit as stored and transmitted: the encoded body and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommit {
    /// `postcard` encoding of the [`CommitBody`].
    #[serde(with = "byte_buf")]
    pub body: Vec<u8>,
    /// Ed25519 signature by the body's author.
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

/// The fields every commit format starts with.
#[derive(Deserialize)]
struct CommitHeader {
    _format: u8,
    _store: StoreId,
    author: DeviceId,
    seq: u64,
    prev: [u8; 32],
}

impl SignedCommit {
    /// Author and sequence number read from the body's header, unverified
    /// (for bookkeeping of what a peer has; `Commit::verify` decides).
    pub fn author_seq(&self) -> Option<(DeviceId, u64)> {
        postcard::take_from_bytes::<CommitHeader>(&self.body)
            .ok()
            .map(|(h, _)| (h.author, h.seq))
    }

    /// The hash of the author's previous commit named by the body,
    /// unverified.
    pub fn prev(&self) -> Option<[u8; 32]> {
        postcard::take_from_bytes::<CommitHeader>(&self.body)
            .ok()
            .map(|(h, _)| h.prev)
    }

    /// SHA-256 of the body: the commit's identity in its author's chain.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }
}

/// True when `signature` is `author`'s signature of a commit `seq` of
/// `store` whose body hashes to `hash`: proof that the author wrote that
/// commit, without the commit.
pub fn commit_signature_verifies(
    store: StoreId,
    author: &DeviceId,
    seq: u64,
    hash: &[u8; 32],
    signature: &[u8; 64],
) -> bool {
    author.verify(&signing_message(store, author, seq, hash), signature)
}

/// Serde for byte vectors as one byte string rather than a sequence of
/// numbers (the same `postcard` bytes, written and read at once instead of
/// one call per byte).
pub(crate) mod byte_buf {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// Serde for 64-byte signatures as byte strings (shared by signed types).
pub(crate) mod signature_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(d)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))
    }
}

fn signing_message(store: StoreId, author: &DeviceId, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + 16 + 32 + 8 + 32);
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(store.as_bytes());
    message.extend_from_slice(author.as_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

/// A decoded, verified commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The decoded body.
    pub body: CommitBody,
    /// The stored form it came from.
    pub signed: SignedCommit,
    /// [`SignedCommit::hash`] of `signed`, computed once.
    pub hash: [u8; 32],
}

impl Commit {
    /// Encodes and signs `body` with `identity` (which must be the body's
    /// author). With a `sealer` (an encrypted store) the operations are
    /// sealed first, and the body is of [`SEALED_COMMIT_FORMAT`].
    pub fn sign(
        mut body: CommitBody,
        identity: &DeviceIdentity,
        sealer: Option<&mut Sealer>,
    ) -> crate::Result<Commit> {
        // What every replica would refuse is not signed: the author is the
        // signer, numbers start at 1 (the first names no predecessor), a
        // commit carries operations, names are valid. Sizes are the
        // store's limits, checked by its writer.
        let invalid = |what: &str| crate::Error::InvalidValue(format!("cannot sign: {what}"));
        if body.author != identity.device_id() {
            return Err(invalid("the commit names another author"));
        }
        if body.seq == 0 || body.ops.is_empty() {
            return Err(invalid("a commit is numbered from 1 and has operations"));
        }
        if body.seq == 1 && body.prev != [0; 32] {
            return Err(invalid("a first commit names a previous one"));
        }
        for op in &body.ops {
            op.validate(usize::MAX)?;
        }
        let encode =
            |e: postcard::Error| crate::Error::InvalidValue(format!("cannot encode commit: {e}"));
        let bytes = match sealer {
            None => {
                body.format = COMMIT_FORMAT;
                postcard::to_stdvec(&body).map_err(encode)?
            }
            Some(sealer) => {
                body.format = SEALED_COMMIT_FORMAT;
                let count = u32::try_from(body.ops.len())
                    .map_err(|_| crate::Error::InvalidValue("too many operations".into()))?;
                let mut plain =
                    zeroize::Zeroizing::new(postcard::to_stdvec(&body.ops).map_err(encode)?);
                // Zeros up to the padded size: a holder of the ciphertext
                // (a sync server) learns the size only to within 12%.
                let padded = padme(plain.len());
                plain.resize(padded, 0);
                let context =
                    sealed_ops_context(body.store, &body.author, body.seq, body.hlc, count);
                let sealed = sealer
                    .seal(&context, &plain)
                    .map_err(|e| crate::Error::InvalidValue(e.to_string()))?;
                postcard::to_stdvec(&SealedBodyWire {
                    format: SEALED_COMMIT_FORMAT,
                    store: body.store,
                    author: body.author,
                    seq: body.seq,
                    prev: body.prev,
                    hlc: body.hlc,
                    op_count: count,
                    sealed,
                })
                .map_err(encode)?
            }
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        let signature = identity.sign(&signing_message(body.store, &body.author, body.seq, &hash));
        Ok(Commit {
            body,
            signed: SignedCommit {
                body: bytes,
                signature,
            },
            hash,
        })
    }

    /// Decodes and verifies a commit received from storage or another peer:
    /// format version, store binding, signature, names and sizes. `keys` is
    /// the keyring of an encrypted store: its commits must be sealed (and
    /// open under exactly the epoch they name), a plain store's must not be.
    /// The signature is checked before anything is decrypted.
    pub fn verify(
        signed: SignedCommit,
        store: StoreId,
        limits: &Limits,
        keys: Option<&Keyring>,
    ) -> Result<Commit, RejectReason> {
        if signed.body.len() > limits.max_commit_bytes {
            return Err(RejectReason::TooLarge(format!(
                "{} bytes",
                signed.body.len()
            )));
        }
        let format = signed.body.first().copied();
        let hash = signed.hash();
        let body: CommitBody = match (format, keys) {
            (Some(COMMIT_FORMAT), None) => {
                let body: CommitBody = postcard::from_bytes(&signed.body)
                    .map_err(|e| RejectReason::Malformed(e.to_string()))?;
                check_signed(&signed, &hash, body.store, &body.author, body.seq, store)?;
                body
            }
            (Some(SEALED_COMMIT_FORMAT), Some(keys)) => {
                let wire: SealedBodyWire = postcard::from_bytes(&signed.body)
                    .map_err(|e| RejectReason::Malformed(e.to_string()))?;
                check_signed(&signed, &hash, wire.store, &wire.author, wire.seq, store)?;
                if wire.op_count as usize > limits.max_commit_ops {
                    return Err(RejectReason::Malformed("too many operations".into()));
                }
                let context =
                    sealed_ops_context(wire.store, &wire.author, wire.seq, wire.hlc, wire.op_count);
                let decrypt =
                    |e: crate::crypto::CryptoError| RejectReason::Undecryptable(e.to_string());
                let key = keys.key_for_envelope(&wire.sealed).map_err(decrypt)?;
                let plain = zeroize::Zeroizing::new(
                    Opener::new()
                        .open(key, &context, &wire.sealed)
                        .map_err(decrypt)?,
                );
                let (ops, padding): (Vec<Op>, &[u8]) = postcard::take_from_bytes(&plain)
                    .map_err(|e| RejectReason::Malformed(format!("sealed operations: {e}")))?;
                // What follows the operations is the padding: zeros, up to
                // the padded size (none in commits of earlier versions).
                if padding.iter().any(|b| *b != 0)
                    || plain.len() > padme(plain.len() - padding.len())
                {
                    return Err(RejectReason::Malformed(
                        "sealed operations followed by other bytes than their padding".into(),
                    ));
                }
                if ops.len() != wire.op_count as usize {
                    return Err(RejectReason::Malformed("operation count differs".into()));
                }
                CommitBody {
                    format: SEALED_COMMIT_FORMAT,
                    store: wire.store,
                    author: wire.author,
                    seq: wire.seq,
                    prev: wire.prev,
                    hlc: wire.hlc,
                    ops,
                }
            }
            (Some(SEALED_COMMIT_FORMAT), None) => {
                return Err(RejectReason::EncryptionMismatch(
                    "an encrypted commit reached a store without encryption",
                ))
            }
            (Some(COMMIT_FORMAT), Some(_)) => {
                return Err(RejectReason::EncryptionMismatch(
                    "an unencrypted commit reached an encrypted store",
                ))
            }
            (Some(old), _) if old <= OLD_COMMIT_FORMAT => {
                return Err(RejectReason::Malformed(format!(
                    "commit format {old} of an earlier Persist (no hash chain)"
                )))
            }
            (other, _) => {
                return Err(RejectReason::Malformed(format!(
                    "unknown commit format {other:?}"
                )))
            }
        };
        if body.seq == 0 || body.ops.is_empty() || body.ops.len() > limits.max_commit_ops {
            return Err(RejectReason::Malformed(
                "bad sequence number or operation count".into(),
            ));
        }
        if body.seq == 1 && body.prev != [0; 32] {
            return Err(RejectReason::Malformed(
                "a first commit names a previous one".into(),
            ));
        }
        for op in &body.ops {
            op.validate(limits.max_value_bytes).map_err(|e| match e {
                crate::Error::ValueTooLarge { .. } => RejectReason::TooLarge(e.to_string()),
                other => RejectReason::InvalidContent(other.to_string()),
            })?;
        }
        Ok(Commit { body, signed, hash })
    }
}

/// The padded size of `len` bytes (PADME: the low bits of the length are
/// rounded up so that at most about log2(log2(len)) + 1 bits of it remain;
/// the padding costs at most 12%, and sizes fall into few classes).
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let exponent = usize::BITS - 1 - len.leading_zeros();
    let size_bits = u32::BITS - exponent.leading_zeros();
    let last_bits = exponent.saturating_sub(size_bits);
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// What a holder without the store's key can check of a sealed commit
/// ([`Commit::check_sealed`]): its place in its author's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedHeader {
    /// The author.
    pub author: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// The hash of the author's previous commit (zero for the first).
    pub prev: [u8; 32],
    /// The hash of this commit's body.
    pub hash: [u8; 32],
    /// Its stamp.
    pub hlc: Hlc,
}

impl Commit {
    /// Checks a sealed commit without opening it (what a sync server,
    /// which holds no key, can check): the sealed format, size, store
    /// binding, the author's signature, the operation count, and the
    /// numbering of the chain. A plain commit is refused: a holder
    /// without the key keeps only ciphertext.
    pub fn check_sealed(
        signed: &SignedCommit,
        store: StoreId,
        limits: &Limits,
    ) -> Result<SealedHeader, RejectReason> {
        if signed.body.len() > limits.max_commit_bytes {
            return Err(RejectReason::TooLarge(format!(
                "{} bytes",
                signed.body.len()
            )));
        }
        match signed.body.first().copied() {
            Some(SEALED_COMMIT_FORMAT) => {}
            Some(COMMIT_FORMAT) => {
                return Err(RejectReason::EncryptionMismatch(
                    "an unencrypted commit reached a holder of ciphertext only",
                ))
            }
            other => {
                return Err(RejectReason::Malformed(format!(
                    "unknown commit format {other:?}"
                )))
            }
        }
        let wire: SealedBodyWire = postcard::from_bytes(&signed.body)
            .map_err(|e| RejectReason::Malformed(e.to_string()))?;
        let hash = signed.hash();
        check_signed(signed, &hash, wire.store, &wire.author, wire.seq, store)?;
        if wire.seq == 0 || wire.op_count == 0 || wire.op_count as usize > limits.max_commit_ops {
            return Err(RejectReason::Malformed(
                "bad sequence number or operation count".into(),
            ));
        }
        if wire.seq == 1 && wire.prev != [0; 32] {
            return Err(RejectReason::Malformed(
                "a first commit names a previous one".into(),
            ));
        }
        Ok(SealedHeader {
            author: wire.author,
            seq: wire.seq,
            prev: wire.prev,
            hash,
            hlc: wire.hlc,
        })
    }
}

/// Store binding, then the author's signature over the encoded body.
fn check_signed(
    signed: &SignedCommit,
    hash: &[u8; 32],
    body_store: StoreId,
    author: &DeviceId,
    seq: u64,
    store: StoreId,
) -> Result<(), RejectReason> {
    if body_store != store {
        return Err(RejectReason::WrongStore);
    }
    if !commit_signature_verifies(store, author, seq, hash, &signed.signature) {
        return Err(RejectReason::BadSignature);
    }
    Ok(())
}

/// Size limits applied to local writes and received commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON value, in bytes.
    pub max_value_bytes: usize,
    /// Largest encoded commit, in bytes.
    pub max_commit_bytes: usize,
    /// Most operations in one commit.
    pub max_commit_ops: usize,
    /// How far ahead of this device's clock a received commit's stamps may
    /// be (milliseconds). Later ones wait (refused now, accepted once the
    /// clock catches up), so a device with a wrong or hostile clock cannot
    /// push every replica's clock, and last-write-wins, far ahead.
    pub max_clock_skew_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value_bytes: names::DEFAULT_MAX_VALUE_BYTES,
            max_commit_bytes: names::DEFAULT_MAX_COMMIT_BYTES,
            max_commit_ops: names::DEFAULT_MAX_COMMIT_OPS,
            max_clock_skew_ms: names::DEFAULT_MAX_CLOCK_SKEW_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed commit of `author` whose operations' plaintext is
    /// `postcard(ops)` followed by `tail`, and the keyring that opens it.
    fn sealed_with_tail(tail: &[u8]) -> (SignedCommit, StoreId, Keyring) {
        let author = DeviceIdentity::from_secret(&[4; 32]);
        let store = StoreId::from_bytes([1; 16]);
        let key = crate::crypto::DataKey::from_bytes([3; 32]);
        let mut sealer = Sealer::new(&key, 0).expect("sealer");
        let ops = vec![Op::KvSet {
            key: "k".into(),
            value: "1".into(),
        }];
        let hlc = Hlc::from_millis(1_700_000_000_000);
        let mut plain = postcard::to_stdvec(&ops).expect("ops");
        plain.extend_from_slice(tail);
        let context = sealed_ops_context(store, &author.device_id(), 1, hlc, 1);
        let body = postcard::to_stdvec(&SealedBodyWire {
            format: SEALED_COMMIT_FORMAT,
            store,
            author: author.device_id(),
            seq: 1,
            prev: [0; 32],
            hlc,
            op_count: 1,
            sealed: sealer.seal(&context, &plain).expect("seal"),
        })
        .expect("body");
        let hash: [u8; 32] = Sha256::digest(&body).into();
        let signature = author.sign(&signing_message(store, &author.device_id(), 1, &hash));
        let keyring = Keyring::from_key(store, 0, key);
        (SignedCommit { body, signature }, store, keyring)
    }

    #[test]
    fn sealed_operations_are_padded_with_zeros_and_nothing_else() {
        let limits = Limits::default();
        let verify = |tail: &[u8]| {
            let (signed, store, keys) = sealed_with_tail(tail);
            Commit::verify(signed, store, &limits, Some(&keys))
        };
        // No padding (an earlier version) and zeros up to the padded size.
        assert!(verify(&[]).is_ok());
        let ops_len = postcard::to_stdvec(&vec![Op::KvSet {
            key: "k".into(),
            value: "1".into(),
        }])
        .expect("ops")
        .len();
        assert!(verify(&vec![0; padme(ops_len) - ops_len]).is_ok());
        // What the writer signs is padded: values 1,000 and 1,010 bytes
        // long seal to the same size.
        let sealed_len = |value_len: usize| {
            let author = DeviceIdentity::from_secret(&[4; 32]);
            let body = CommitBody {
                format: SEALED_COMMIT_FORMAT,
                store: StoreId::from_bytes([1; 16]),
                author: author.device_id(),
                seq: 1,
                prev: [0; 32],
                hlc: Hlc::from_millis(1_700_000_000_000),
                ops: vec![Op::KvSet {
                    key: "k".into(),
                    value: format!("\"{}\"", "x".repeat(value_len)),
                }],
            };
            let key = crate::crypto::DataKey::from_bytes([3; 32]);
            let mut sealer = Sealer::new(&key, 0).expect("sealer");
            Commit::sign(body, &author, Some(&mut sealer))
                .expect("signs")
                .signed
                .body
                .len()
        };
        assert_eq!(sealed_len(1_000), sealed_len(1_010));
        assert!(sealed_len(1_000) < sealed_len(1_200));
        // Anything else after the operations is refused.
        assert!(matches!(verify(&[1]), Err(RejectReason::Malformed(_))));
        assert!(matches!(
            verify(&vec![0; padme(ops_len) - ops_len + 64]),
            Err(RejectReason::Malformed(_))
        ));
    }

    #[test]
    fn padme_rounds_up_by_at_most_twelve_percent_into_few_sizes() {
        assert_eq!((padme(0), padme(1), padme(2), padme(9)), (0, 1, 2, 10));
        let mut sizes = std::collections::BTreeSet::new();
        for len in 1..=100_000usize {
            let padded = padme(len);
            assert!(
                padded >= len && padded - len <= len.div_ceil(8),
                "{len} -> {padded}"
            );
            assert_eq!(padme(padded), padded, "a padded size is its own padding");
            sizes.insert(padded);
        }
        // 100,000 lengths fall into a few hundred sizes.
        assert!(sizes.len() < 1_200, "{} sizes", sizes.len());
    }

    #[test]
    fn byte_strings_encode_as_byte_sequences_did() {
        // Signed bodies must read and write the same bytes as before.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct AsSeq {
            bytes: Vec<u8>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct AsBytes {
            #[serde(with = "byte_buf")]
            bytes: Vec<u8>,
        }
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let seq = postcard::to_stdvec(&AsSeq {
                bytes: bytes.clone(),
            })
            .expect("seq");
            let buf = postcard::to_stdvec(&AsBytes {
                bytes: bytes.clone(),
            })
            .expect("buf");
            assert_eq!(seq, buf, "len {len}");
            let back: AsBytes = postcard::from_bytes(&seq).expect("reads");
            assert_eq!(back.bytes, bytes);
        }
    }

    fn sample(identity: &DeviceIdentity, store: StoreId) -> Commit {
        let body = CommitBody {
            format: COMMIT_FORMAT,
            store,
            author: identity.device_id(),
            seq: 1,
            prev: [0; 32],
            hlc: Hlc::from_millis(1_700_000_000_000),
            ops: vec![Op::RecordPut {
                collection: "notes".into(),
                id: "n1".into(),
                value: r#"{"title":"hi"}"#.into(),
                base: None,
            }],
        };
        Commit::sign(body, identity, None).expect("signs")
    }

    /// Found by the `commit` fuzz target: `sign` signed bodies every
    /// replica refuses (number 0, no operations). What it signs now
    /// verifies, and what would not verify it refuses.
    #[test]
    fn sign_refuses_what_verify_would_refuse() {
        let identity = DeviceIdentity::from_secret(&[9u8; 32]);
        let store = StoreId::from_bytes([1u8; 16]);
        let good = sample(&identity, store).body;
        let other = DeviceIdentity::from_secret(&[8u8; 32]);
        let bad = [
            CommitBody {
                seq: 0,
                ..good.clone()
            },
            CommitBody {
                ops: Vec::new(),
                ..good.clone()
            },
            CommitBody {
                prev: [1; 32],
                ..good.clone()
            },
            CommitBody {
                author: other.device_id(),
                ..good.clone()
            },
            CommitBody {
                ops: vec![Op::KvSet {
                    key: String::new(),
                    value: "1".into(),
                }],
                ..good.clone()
            },
        ];
        for body in bad {
            assert!(
                Commit::sign(body.clone(), &identity, None).is_err(),
                "{body:?}"
            );
        }
        let signed = Commit::sign(good, &identity, None).expect("signs").signed;
        assert!(Commit::verify(signed, store, &Limits::default(), None).is_ok());
    }

    #[test]
    fn verifies_and_rejects_tampering() {
        let identity = DeviceIdentity::from_secret(&[9u8; 32]);
        let store = StoreId::from_bytes([1u8; 16]);
        let commit = sample(&identity, store);
        let limits = Limits::default();
        assert!(Commit::verify(commit.signed.clone(), store, &limits, None).is_ok());

        // Every byte of the body flipped: never accepted.
        for i in 0..commit.signed.body.len() {
            let mut bad = commit.signed.clone();
            bad.body[i] ^= 0x01;
            assert!(
                Commit::verify(bad, store, &limits, None).is_err(),
                "byte {i}"
            );
        }
        // Truncations: never accepted.
        for len in 0..commit.signed.body.len() {
            let mut bad = commit.signed.clone();
            bad.body.truncate(len);
            assert!(
                Commit::verify(bad, store, &limits, None).is_err(),
                "len {len}"
            );
        }
        // Another store: refused even with a valid signature.
        let other = StoreId::from_bytes([2u8; 16]);
        assert_eq!(
            Commit::verify(commit.signed.clone(), other, &limits, None),
            Err(RejectReason::WrongStore)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// Arbitrary bytes never pass as a commit, and never panic the decoder.
        #[test]
        fn arbitrary_bytes_are_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                       sig in proptest::collection::vec(proptest::prelude::any::<u8>(), 64)) {
            let signature: [u8; 64] = sig.try_into().expect("64 bytes");
            let store = StoreId::from_bytes([1u8; 16]);
            let signed = SignedCommit { body, signature };
            let verdict = Commit::verify(signed, store, &Limits::default(), None);
            proptest::prop_assert!(verdict.is_err());
        }

        /// Random edits of a valid commit (splices, insertions) are refused.
        #[test]
        fn edited_commits_are_refused(at in 0usize..200, insert in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8)) {
            let identity = DeviceIdentity::from_secret(&[9u8; 32]);
            let store = StoreId::from_bytes([1u8; 16]);
            let mut signed = sample(&identity, store).signed;
            let at = at.min(signed.body.len());
            signed.body.splice(at..at, insert);
            proptest::prop_assert!(Commit::verify(signed, store, &Limits::default(), None).is_err());
        }
    }

    #[test]
    fn rejects_forged_author() {
        let real = DeviceIdentity::from_secret(&[9u8; 32]);
        let forger = DeviceIdentity::from_secret(&[10u8; 32]);
        let store = StoreId::from_bytes([1u8; 16]);
        let mut body = sample(&forger, store).body;
        body.author = real.device_id();
        let bytes = postcard::to_stdvec(&body).expect("encodes");
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        let signature = forger.sign(&signing_message(store, &body.author, body.seq, &hash));
        let forged = SignedCommit {
            body: bytes,
            signature,
        };
        assert_eq!(
            Commit::verify(forged, store, &Limits::default(), None),
            Err(RejectReason::BadSignature)
        );
    }
}
