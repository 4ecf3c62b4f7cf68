//! Device identity: the Ed25519 keypair that signs every local commit.
//!
//! A device's public key is its identity everywhere: the author of its
//! commits, and (from the network issue on) its libp2p `PeerId`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Public identity of a device: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId([u8; 32]);

// Hex in human-readable formats (JSON), 32 raw bytes in binary ones (postcard).
impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<DeviceId, D::Error> {
        if d.is_human_readable() {
            let text: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.as_bytes(), &mut bytes).map_err(serde::de::Error::custom)?;
            Ok(DeviceId(bytes))
        } else {
            Ok(DeviceId(<[u8; 32]>::deserialize(d)?))
        }
    }
}

impl DeviceId {
    /// Wraps raw public-key bytes (not checked to be a valid point; see
    /// [`DeviceId::verify`]).
    pub const fn from_bytes(bytes: [u8; 32]) -> DeviceId {
        DeviceId(bytes)
    }

    /// The raw public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True when the bytes are a valid device key: a canonical encoding of
    /// an Ed25519 point that is not of small order (what a membership
    /// `Add` must name).
    pub fn is_valid_key(&self) -> bool {
        VerifyingKey::from_bytes(&self.0)
            .is_ok_and(|key| !key.is_weak() && key.to_edwards().compress().to_bytes() == self.0)
    }

    /// A short, human-readable form (first 8 bytes in hex).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// Checks `signature` over `message` with strict Ed25519 verification
    /// (rejects small-order keys and non-canonical signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl std::fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for DeviceId {
    type Err = Error;

    fn from_str(s: &str) -> Result<DeviceId> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| Error::KeyInvalid(format!("device id is not 64 hex digits: {e}")))?;
        Ok(DeviceId(bytes))
    }
}

/// The private half of a device identity. Zeroized on drop.
pub struct DeviceIdentity {
    signing: SigningKey,
}

impl DeviceIdentity {
    /// Makes a new identity from 32 bytes of the platform's secure randomness.
    pub fn generate() -> Result<DeviceIdentity> {
        let mut seed = Zeroizing::new([0u8; 32]);
        crate::platform::fill_random(seed.as_mut())?;
        Ok(DeviceIdentity::from_secret(&seed))
    }

    /// Restores an identity from its 32-byte secret seed.
    pub fn from_secret(seed: &[u8; 32]) -> DeviceIdentity {
        DeviceIdentity {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The secret seed, for persisting by a [`crate::keys::KeyStore`].
    pub fn secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// The X25519 secret scalar of this identity (the Ed25519 key's scalar,
    /// as age and libsodium convert it): what opens what was sealed to the
    /// device with [`crate::crypto::device_box`].
    pub(crate) fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }
}

impl DeviceId {
    /// The X25519 public key of this device (the Ed25519 point in Montgomery
    /// form), or `None` for bytes that are not a valid Ed25519 key.
    pub(crate) fn x25519_public(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|key| key.to_montgomery().to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let id = DeviceIdentity::from_secret(&[7u8; 32]);
        let sig = id.sign(b"hello");
        assert!(id.device_id().verify(b"hello", &sig));
        assert!(!id.device_id().verify(b"hellp", &sig));
        let other = DeviceIdentity::from_secret(&[8u8; 32]);
        assert!(!other.device_id().verify(b"hello", &sig));
    }

    #[test]
    fn every_flipped_signature_bit_fails() {
        let id = DeviceIdentity::from_secret(&[1u8; 32]);
        let sig = id.sign(b"msg");
        for bit in 0..512 {
            let mut bad = sig;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!id.device_id().verify(b"msg", &bad), "bit {bit}");
        }
    }

    #[test]
    fn small_order_and_malformed_keys_never_verify() {
        // The identity point, a small-order point (order 8), and bytes that
        // are not a point: strict verification refuses them all, whatever
        // the signature (an all-zero one included, which a lax verifier may
        // accept for the identity key).
        let identity_point = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        let order_8 = hex_array("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a");
        let not_a_point = [0xFFu8; 32];
        for key in [identity_point, order_8, not_a_point] {
            let id = DeviceId::from_bytes(key);
            assert!(!id.verify(b"msg", &[0u8; 64]));
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&identity_point);
            assert!(!id.verify(b"msg", &sig));
        }
    }

    fn hex_array(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).expect("hex");
        out
    }

    #[test]
    fn device_id_round_trips_through_text() {
        let id = DeviceIdentity::from_secret(&[3u8; 32]).device_id();
        let parsed: DeviceId = id.to_string().parse().expect("parses");
        assert_eq!(parsed, id);
        assert_eq!(
            "zz".parse::<DeviceId>().map_err(|e| e.code()),
            Err("KEY_INVALID")
        );
    }
}
