//! End-to-end encryption at rest: data keys per epoch, the value envelope,
//! keyed hashes for names, the keyring and its export format.
//!
//! This module does no I/O; where keys live (keychain, keyfile, WebCrypto)
//! is platform code behind [`crate::keys::KeyStore`].

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::change::StoreId;

pub mod device_box;
pub mod envelope;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_vectors;

pub use envelope::{Opener, Sealer, ENVELOPE_OVERHEAD};

/// An error of the encryption layer, each with a stable code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The bytes are not an envelope this build can read.
    #[error("not a readable envelope: {0}")]
    Malformed(String),
    /// The envelope names an epoch the keyring does not hold.
    #[error("no key for epoch {0} in this store's keyring")]
    UnknownEpoch(u32),
    /// The key commitment does not match: the envelope was sealed under
    /// another key.
    #[error("the envelope was sealed under another key")]
    WrongKey,
    /// The ciphertext, its binding or its tag was altered.
    #[error("the envelope failed authentication (altered, or moved from elsewhere)")]
    Inauthentic,
    /// An exported key string cannot be used.
    #[error("{0}")]
    KeyText(String),
    /// No secure randomness.
    #[error("no secure randomness: {0}")]
    Random(String),
}

impl CryptoError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            CryptoError::KeyText(_) => crate::error::Code::KeyInvalid.as_str(),
            CryptoError::Random(_) => crate::error::Code::CryptoUnavailable.as_str(),
            _ => crate::error::Code::DecryptFailed.as_str(),
        }
    }
}

/// A 256-bit AES data key (one per store and epoch). Zeroed on drop;
/// compared in constant time.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A new random key.
    pub fn generate() -> Result<DataKey, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::platform::fill_random(key.as_mut())
            .map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(DataKey(key))
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for DataKey {
    fn eq(&self, other: &DataKey) -> bool {
        self.0.ct_eq(&*other.0).into()
    }
}

impl Eq for DataKey {}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// What a keyed name hash is for: a collection name, a record id, an event
/// log name or a KV key hash differently even when the text is equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NameKind {
    /// A collection name.
    Collection = 1,
    /// A record id (within its collection).
    Record = 2,
    /// An event log name.
    Log = 3,
    /// A key of the KV space.
    Key = 4,
}

/// Keys names with HMAC-SHA256, so storage never holds a collection name,
/// record id, log name or KV key in the clear. Equal names under one store
/// hash equally (that equality is what storage needs, and what it learns).
#[derive(Clone)]
pub struct NameKey {
    key: Zeroizing<[u8; 32]>,
    /// HMAC keyed once (its inner and outer states), cloned per name.
    keyed: hmac::Hmac<Sha256>,
}

impl PartialEq for NameKey {
    fn eq(&self, other: &NameKey) -> bool {
        self.key.ct_eq(&*other.key).into()
    }
}

impl Eq for NameKey {}

/// HKDF-SHA256 of `ikm` (with `salt` and `info`) into `out`. Fails only for
/// an output longer than HKDF allows (255 x 32 bytes): a bug, reported as
/// an error rather than left as zeros.
pub(crate) fn expand(
    salt: Option<&[u8]>,
    ikm: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    hkdf::Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .map_err(|_| CryptoError::Malformed(format!("HKDF output of {} bytes", out.len())))
}

impl NameKey {
    /// The name key of a store, derived from its first (epoch 0) data key,
    /// so it never changes with rotation (rows keep their keys).
    pub fn derive(root: &DataKey) -> Result<NameKey, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        expand(None, root.as_bytes(), b"persist/names/v1", key.as_mut())?;
        let keyed = hmac::Hmac::<Sha256>::new_from_slice(key.as_ref())
            .map_err(|_| CryptoError::Malformed("HMAC key".into()))?;
        Ok(NameKey { key, keyed })
    }

    /// The keyed hash of `name`: 128 bits as 22 base64url characters,
    /// prefixed by `~` (which names accepted from users never start with).
    /// `scope` separates equal ids in different collections.
    pub fn hash(&self, kind: NameKind, scope: &str, name: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(&[kind as u8]);
        mac.update(&(scope.len() as u32).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(name.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(23);
        out.push('~');
        data_encoding::BASE64URL_NOPAD.encode_append(&digest[..16], &mut out);
        out
    }
}

/// The data keys of one store, by epoch, and the current epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    store: StoreId,
    current: u32,
    keys: BTreeMap<u32, DataKey>,
    /// Other keys of an epoch for which two members made keys at once (a
    /// fork of the epoch): the losing ones, kept to read what was sealed
    /// under them. An envelope names its epoch, and among that epoch's keys
    /// the one whose key commitment the envelope carries is the one used.
    alternates: Vec<(u32, DataKey)>,
}

#[derive(Serialize, Deserialize)]
struct KeyringWire {
    version: u8,
    store: StoreId,
    current: u32,
    keys: Vec<(u32, [u8; 32])>,
}

/// Version 2 of the keyring's form: version 1 and the alternates.
#[derive(Serialize, Deserialize)]
struct KeyringWireV2 {
    v1: KeyringWire,
    alternates: Vec<(u32, [u8; 32])>,
}

impl Keyring {
    /// A keyring for `store` with one random key, epoch 0.
    pub fn create(store: StoreId) -> Result<Keyring, CryptoError> {
        Ok(Keyring::from_key(store, 0, DataKey::generate()?))
    }

    /// A keyring holding only `key` as epoch `epoch`.
    pub fn from_key(store: StoreId, epoch: u32, key: DataKey) -> Keyring {
        Keyring {
            store,
            current: epoch,
            keys: BTreeMap::from([(epoch, key)]),
            alternates: Vec::new(),
        }
    }

    /// The store these keys belong to.
    pub fn store(&self) -> StoreId {
        self.store
    }

    /// The epoch new data is sealed under, and its key.
    pub fn current(&self) -> (u32, &DataKey) {
        // `current` is always a key of the map (constructors and `rotate`).
        match self.keys.get(&self.current) {
            Some(key) => (self.current, key),
            None => unreachable!("the current epoch has a key"),
        }
    }

    /// The key of `epoch`: exactly one key is ever tried for an envelope.
    pub fn key(&self, epoch: u32) -> Result<&DataKey, CryptoError> {
        self.keys
            .get(&epoch)
            .ok_or(CryptoError::UnknownEpoch(epoch))
    }

    /// The key that sealed `envelope`: the key of the epoch it names, or,
    /// where that epoch forked, the one of its keys whose commitment the
    /// envelope carries (never a trial decryption).
    pub fn key_for_envelope(&self, envelope: &[u8]) -> Result<&DataKey, CryptoError> {
        let epoch = envelope::epoch_of(envelope)?;
        let primary = self.key(epoch)?;
        if !self.alternates.iter().any(|(e, _)| *e == epoch) {
            return Ok(primary);
        }
        std::iter::once(primary)
            .chain(
                self.alternates
                    .iter()
                    .filter(|(e, _)| *e == epoch)
                    .map(|(_, k)| k),
            )
            .find(|key| envelope::made_with(key, envelope))
            .ok_or(CryptoError::WrongKey)
    }

    /// Every key held for `epoch`: its key, then the alternates of a fork.
    pub fn keys_of(&self, epoch: u32) -> Vec<&DataKey> {
        self.keys
            .get(&epoch)
            .into_iter()
            .chain(
                self.alternates
                    .iter()
                    .filter(|(e, _)| *e == epoch)
                    .map(|(_, k)| k),
            )
            .collect()
    }

    /// Makes `key` the key of `epoch` (the winner of a fork of that epoch,
    /// or an epoch this keyring lacked); a different key held for the
    /// epoch is kept as an alternate. Returns true when something changed.
    pub fn adopt(&mut self, epoch: u32, key: DataKey) -> bool {
        match self.keys.insert(epoch, key.clone()) {
            Some(old) if old == key => false,
            Some(old) => {
                self.alternates.retain(|(e, k)| !(*e == epoch && *k == key));
                self.alternates.push((epoch, old));
                true
            }
            None => {
                self.alternates.retain(|(e, k)| !(*e == epoch && *k == key));
                self.current = self.current.max(epoch);
                true
            }
        }
    }

    /// Keeps `key` as an alternate of `epoch` (a fork's losing key, to read
    /// what was sealed under it). Returns true when it was new.
    pub fn keep_alternate(&mut self, epoch: u32, key: DataKey) -> bool {
        if self.keys.get(&epoch) == Some(&key)
            || self
                .alternates
                .iter()
                .any(|(e, k)| *e == epoch && *k == key)
        {
            return false;
        }
        self.alternates.push((epoch, key));
        true
    }

    /// Epochs held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// The store's name key (from epoch 0), if the keyring holds epoch 0.
    pub fn name_key(&self) -> Result<NameKey, CryptoError> {
        NameKey::derive(self.key(0)?)
    }

    /// Starts a new epoch with a new random key and returns it.
    pub fn rotate(&mut self) -> Result<u32, CryptoError> {
        self.rotate_past(0)
    }

    /// Starts a new epoch above both this keyring's current one and
    /// `known` (the highest epoch recorded elsewhere, whose key this
    /// keyring may lack), with a new random key; returns it.
    pub fn rotate_past(&mut self, known: u32) -> Result<u32, CryptoError> {
        let next = self
            .current
            .max(known)
            .checked_add(1)
            .ok_or_else(|| CryptoError::Malformed("epoch numbers exhausted".into()))?;
        self.keys.insert(next, DataKey::generate()?);
        self.current = next;
        Ok(next)
    }

    /// Adds the epochs of `other` (same store) that this keyring lacks.
    pub fn merge(&mut self, other: &Keyring) {
        for (epoch, key) in &other.keys {
            self.keys.entry(*epoch).or_insert_with(|| key.clone());
        }
        for (epoch, key) in &other.alternates {
            self.keep_alternate(*epoch, key.clone());
        }
        if other.current > self.current {
            self.current = other.current;
        }
    }

    /// The keyring's binary form (to be sealed before it is stored).
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let v1 = KeyringWire {
            version: if self.alternates.is_empty() { 1 } else { 2 },
            store: self.store,
            current: self.current,
            keys: self.keys.iter().map(|(e, k)| (*e, *k.as_bytes())).collect(),
        };
        let mut wire = KeyringWireV2 {
            v1,
            alternates: self
                .alternates
                .iter()
                .map(|(e, k)| (*e, *k.as_bytes()))
                .collect(),
        };
        let encoded = if wire.alternates.is_empty() {
            postcard::to_stdvec(&wire.v1)
        } else {
            postcard::to_stdvec(&wire)
        };
        for (_, key) in wire.v1.keys.iter_mut().chain(wire.alternates.iter_mut()) {
            zeroize::Zeroize::zeroize(key);
        }
        encoded
            .map(Zeroizing::new)
            .map_err(|e| CryptoError::Malformed(format!("keyring: {e}")))
    }

    /// Reads [`Keyring::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Keyring, CryptoError> {
        let malformed = |e: postcard::Error| CryptoError::Malformed(format!("keyring: {e}"));
        let (wire, alternates) = match bytes.first() {
            Some(1) => (
                postcard::from_bytes::<KeyringWire>(bytes).map_err(malformed)?,
                Vec::new(),
            ),
            Some(2) => {
                let both: KeyringWireV2 = postcard::from_bytes(bytes).map_err(malformed)?;
                (both.v1, both.alternates)
            }
            other => {
                return Err(CryptoError::Malformed(format!("keyring version {other:?}")));
            }
        };
        let alternates = alternates
            .into_iter()
            .map(|(e, k)| (e, DataKey::from_bytes(k)))
            .collect();
        let keys: BTreeMap<u32, DataKey> = wire
            .keys
            .into_iter()
            .map(|(e, k)| (e, DataKey::from_bytes(k)))
            .collect();
        if !keys.contains_key(&wire.current) {
            return Err(CryptoError::Malformed(
                "keyring lacks its current epoch".into(),
            ));
        }
        Ok(Keyring {
            store: wire.store,
            current: wire.current,
            keys,
            alternates,
        })
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("store", &self.store)
            .field("current", &self.current)
            .field("epochs", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Prefix of an exported store key.
pub const EXPORTED_KEY_PREFIX: &str = "persist-key-v1-";
const EXPORT_CHECKSUM_DOMAIN: &[u8] = b"persist-key-v1";

/// A store key as exported: the store, the current epoch and its key. With
/// the store's file (which holds older epochs sealed under the current key)
/// it reads everything.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExportedKey {
    /// The store the key belongs to.
    pub store: StoreId,
    /// The epoch of `key`.
    pub epoch: u32,
    /// The data key of that epoch.
    pub key: DataKey,
}

impl ExportedKey {
    /// The text form: `persist-key-v1-` then base32 (lower case, in groups
    /// of 8 separated by `-`) of `store (16) | epoch (4, BE) | key (32) |
    /// checksum (4)`, the checksum being the first 4 bytes of
    /// SHA-256("persist-key-v1" | the 52 bytes before it). A typo is caught
    /// by the checksum (all but 1 in 2^32 of them) before any use.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut payload = Zeroizing::new(Vec::with_capacity(56));
        payload.extend_from_slice(self.store.as_bytes());
        payload.extend_from_slice(&self.epoch.to_be_bytes());
        payload.extend_from_slice(self.key.as_bytes());
        let checksum = export_checksum(&payload);
        payload.extend_from_slice(&checksum);
        let body = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&payload));
        let mut text = Zeroizing::new(String::with_capacity(EXPORTED_KEY_PREFIX.len() + 110));
        text.push_str(EXPORTED_KEY_PREFIX);
        for (i, c) in body.chars().enumerate() {
            if i > 0 && i % 8 == 0 {
                text.push('-');
            }
            text.push(c.to_ascii_lowercase());
        }
        text
    }

    /// Reads [`ExportedKey::to_text`]; case, dashes and white space in the
    /// body do not matter. Errors are `KEY_INVALID` and say what is wrong.
    pub fn from_text(text: &str) -> Result<ExportedKey, CryptoError> {
        let text = text.trim();
        let Some(body) = text
            .get(..EXPORTED_KEY_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(EXPORTED_KEY_PREFIX))
            .and_then(|_| text.get(EXPORTED_KEY_PREFIX.len()..))
        else {
            return Err(CryptoError::KeyText(format!(
                "not a Persist key: it must start with \"{EXPORTED_KEY_PREFIX}\""
            )));
        };
        let compact: Zeroizing<String> = Zeroizing::new(
            body.chars()
                .filter(|c| *c != '-' && !c.is_whitespace())
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        let payload = Zeroizing::new(
            data_encoding::BASE32_NOPAD
                .decode(compact.as_bytes())
                .map_err(|_| {
                    CryptoError::KeyText(
                        "the key has characters outside base32 (a-z, 2-7): mistyped?".into(),
                    )
                })?,
        );
        if payload.len() != 56 {
            return Err(CryptoError::KeyText(format!(
                "the key is {} bytes long, not 56: truncated or mistyped?",
                payload.len()
            )));
        }
        let (data, checksum) = payload.split_at(52);
        if !bool::from(export_checksum(data).ct_eq(checksum)) {
            return Err(CryptoError::KeyText(
                "the key's checksum does not match: mistyped?".into(),
            ));
        }
        let mut store = [0u8; 16];
        store.copy_from_slice(&data[..16]);
        let mut epoch = [0u8; 4];
        epoch.copy_from_slice(&data[16..20]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&data[20..52]);
        let exported = ExportedKey {
            store: StoreId::from_bytes(store),
            epoch: u32::from_be_bytes(epoch),
            key: DataKey::from_bytes(key),
        };
        zeroize::Zeroize::zeroize(&mut key);
        Ok(exported)
    }
}

fn export_checksum(data: &[u8]) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(EXPORT_CHECKSUM_DOMAIN)
        .chain_update(data)
        .finalize();
    let mut out = [0u8; 4];
    out.copy_from_slice(&digest[..4]);
    out
}

#[cfg(test)]
mod tests;
