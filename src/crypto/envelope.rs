//! The value envelope: AES-256-GCM under a per-salt subkey, with a key
//! commitment.
//!
//! ```text
//! envelope v1 = version (1 byte, = 1)
//!             | epoch (u32 BE): which data key, tried alone
//!             | salt (24 random bytes)
//!             | index (u32 BE): message number under this salt
//!             | commitment (32 bytes)
//!             | AES-256-GCM ciphertext | tag (16 bytes)
//!
//! okm        = HKDF-SHA256(salt = salt, ikm = data key, info = "persist/envelope/v1", 64 bytes)
//! subkey     = okm[0..32]        (the AES-256-GCM key for this salt)
//! commitment = okm[32..64]       (checked, in constant time, before decrypting)
//! nonce      = 8 zero bytes | index (u32 BE)
//! aad        = "persist/v1\0" | version | epoch | context
//! ```
//!
//! **No nonce reuse.** Every salt is fresh randomness, and a [`Sealer`] draws
//! one salt per batch of messages and numbers the messages under it, so a
//! (subkey, nonce) pair is never used twice unless two of 2^192 salts collide:
//! no per-key message budget applies (random 96-bit nonces under one key would
//! allow 2^32 messages across all devices and tabs). This is the construction
//! of XAES-256-GCM (a subkey per extended nonce) with HKDF-SHA256 in place of
//! its CMAC derivation, because HKDF is already a dependency.
//!
//! **Key commitment.** AES-GCM alone is not key-committing: a ciphertext can be
//! built to open under two keys. The commitment is a second output of the
//! same HKDF call, so an envelope opens only under the data key that made it
//! (finding another key with the same commitment is finding an HMAC-SHA256
//! collision).
//!
//! **Binding.** The caller's `context` (see [`context`]) names what the value
//! belongs to (store, collection and record hashes, author, change), and the
//! version and epoch are authenticated too, so ciphertext moved to another
//! record, store or epoch fails with `DECRYPT_FAILED`.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{CryptoError, DataKey};

/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
const SALT_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + SALT_LEN + 4 + 32;
const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const KDF_INFO: &[u8] = b"persist/envelope/v1";
const AAD_DOMAIN: &[u8] = b"persist/v1\0";

/// The subkey and commitment of one (data key, salt) pair.
struct Derived {
    salt: [u8; SALT_LEN],
    cipher: Aes256Gcm,
    commitment: [u8; 32],
}

impl Derived {
    fn new(key: &DataKey, salt: [u8; SALT_LEN]) -> Result<Derived, CryptoError> {
        let mut okm = Zeroizing::new([0u8; 64]);
        super::expand(Some(&salt), key.as_bytes(), KDF_INFO, okm.as_mut())?;
        let mut subkey = Zeroizing::new([0u8; 32]);
        subkey.copy_from_slice(&okm[..32]);
        let mut commitment = [0u8; 32];
        commitment.copy_from_slice(&okm[32..]);
        Ok(Derived {
            salt,
            cipher: Aes256Gcm::new(&(*subkey).into()),
            commitment,
        })
    }
}

fn nonce(index: u32) -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    let mut bytes = [0u8; 12];
    bytes[8..].copy_from_slice(&index.to_be_bytes());
    bytes.into()
}

fn full_aad(epoch: u32, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + 5 + context.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.push(ENVELOPE_VERSION);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.extend_from_slice(context);
    aad
}

/// The associated-data context binding an envelope to what it belongs to:
/// each part length-prefixed, so no two different lists encode alike.
pub fn context(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Seals messages under one data key and epoch: one random salt (one HKDF
/// derivation) for a batch of messages, numbered under it.
pub struct Sealer {
    epoch: u32,
    key: DataKey,
    derived: Derived,
    next: u32,
}

impl Sealer {
    /// A sealer with a fresh random salt.
    pub fn new(key: &DataKey, epoch: u32) -> Result<Sealer, CryptoError> {
        Sealer::with_salt(key, epoch, random_salt()?)
    }

    /// A sealer with a given salt: for known-answer tests only (the
    /// `test-utils` feature). Sealing two different messages with one salt
    /// and index reuses a nonce.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn with_salt_for_test_vectors(
        key: &DataKey,
        epoch: u32,
        salt: [u8; 24],
    ) -> Result<Sealer, CryptoError> {
        Sealer::with_salt(key, epoch, salt)
    }

    fn with_salt(key: &DataKey, epoch: u32, salt: [u8; 24]) -> Result<Sealer, CryptoError> {
        Ok(Sealer {
            epoch,
            key: key.clone(),
            derived: Derived::new(key, salt)?,
            next: 0,
        })
    }

    /// The epoch this sealer writes.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Encrypts `plaintext` bound to `context`.
    pub fn seal(&mut self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if self.next == u32::MAX {
            // 2^32 - 1 messages under one salt: take a new one.
            self.derived = Derived::new(&self.key, random_salt()?)?;
            self.next = 0;
        }
        let index = self.next;
        self.next += 1;
        let aad = full_aad(self.epoch, context);
        let sealed = self
            .derived
            .cipher
            .encrypt(
                &nonce(index),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Malformed("message too long to encrypt".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.derived.salt);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&self.derived.commitment);
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

fn random_salt() -> Result<[u8; SALT_LEN], CryptoError> {
    let mut salt = [0u8; SALT_LEN];
    crate::platform::fill_random(&mut salt).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(salt)
}

/// The epoch an envelope names (the one key to try).
pub fn epoch_of(envelope: &[u8]) -> Result<u32, CryptoError> {
    if envelope.len() < ENVELOPE_OVERHEAD {
        return Err(CryptoError::Malformed(format!(
            "envelope of {} bytes is shorter than its {ENVELOPE_OVERHEAD}-byte overhead",
            envelope.len()
        )));
    }
    if envelope[0] != ENVELOPE_VERSION {
        return Err(CryptoError::Malformed(format!(
            "unknown envelope version {}",
            envelope[0]
        )));
    }
    let mut epoch = [0u8; 4];
    epoch.copy_from_slice(&envelope[1..5]);
    Ok(u32::from_be_bytes(epoch))
}

/// True when `envelope` carries the key commitment of `key` (it was sealed
/// under `key`); nothing is decrypted.
pub fn made_with(key: &DataKey, envelope: &[u8]) -> bool {
    if epoch_of(envelope).is_err() {
        return false;
    }
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&envelope[5..5 + SALT_LEN]);
    Derived::new(key, salt).is_ok_and(|derived| {
        bool::from(
            derived
                .commitment
                .ct_eq(&envelope[9 + SALT_LEN..HEADER_LEN]),
        )
    })
}

/// How many recent salts' subkeys an [`Opener`] keeps.
const OPENER_CACHE: usize = 32;

/// Opens envelopes, remembering the subkeys of the last salts it met (a
/// batch sealed together shares one salt, and is often read together: one
/// derivation for all of it).
#[derive(Default)]
pub struct Opener {
    recent: Vec<(DataKey, Derived)>,
}

impl Opener {
    /// A new opener.
    pub fn new() -> Opener {
        Opener::default()
    }

    /// Decrypts `envelope` with `key`, which must be the key of the epoch
    /// the envelope names, bound to `context`.
    pub fn open(
        &mut self,
        key: &DataKey,
        context: &[u8],
        envelope: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let epoch = epoch_of(envelope)?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&envelope[5..5 + SALT_LEN]);
        let mut index = [0u8; 4];
        index.copy_from_slice(&envelope[5 + SALT_LEN..9 + SALT_LEN]);
        let commitment = &envelope[9 + SALT_LEN..HEADER_LEN];
        let at = match self
            .recent
            .iter()
            .position(|(k, d)| d.salt == salt && k == key)
        {
            Some(at) => at,
            None => {
                if self.recent.len() == OPENER_CACHE {
                    self.recent.remove(0);
                }
                self.recent.push((key.clone(), Derived::new(key, salt)?));
                self.recent.len() - 1
            }
        };
        let (_, derived) = &self.recent[at];
        if !bool::from(derived.commitment.ct_eq(commitment)) {
            return Err(CryptoError::WrongKey);
        }
        let aad = full_aad(epoch, context);
        derived
            .cipher
            .decrypt(
                &nonce(u32::from_be_bytes(index)),
                Payload {
                    msg: &envelope[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Inauthentic)
    }
}
