//! Sealing a secret to a device (X25519 to its Ed25519 key, as age does),
//! and one-shot sealing under a key agreed by a PAKE.
//!
//! ```text
//! sealed to a device = version 1 || ephemeral X25519 public (32) || AES-256-GCM(ciphertext || tag)
//! key = HKDF-SHA256(ikm = X25519(ephemeral, device), salt = ephemeral || device,
//!                   info = "persist device box v1" || context)
//! ```
//!
//! Each ephemeral key seals one message, so the nonce is fixed (zero). A
//! shared secret of all zeros (a low-order point) is refused on both sides.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use super::CryptoError;
use crate::identity::{DeviceId, DeviceIdentity};

const VERSION: u8 = 1;
const INFO: &[u8] = b"persist device box v1\0";

fn cipher(shared: &[u8; 32], salt: &[u8], info: &[&[u8]]) -> Result<Aes256Gcm, CryptoError> {
    let mut key = Zeroizing::new([0u8; 32]);
    super::expand(Some(salt), shared, &info.concat(), key.as_mut())?;
    Ok(Aes256Gcm::new(&(*key).into()))
}

fn zero_nonce() -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    [0u8; 12].into()
}

/// Seals `plain` so that only `to` can open it, bound to `context`.
pub fn seal_to_device(to: &DeviceId, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let public = to
        .x25519_public()
        .ok_or_else(|| CryptoError::Malformed("the device id is not a valid key".into()))?;
    let mut ephemeral = Zeroizing::new([0u8; 32]);
    crate::platform::fill_random(ephemeral.as_mut())
        .map_err(|e| CryptoError::Random(e.to_string()))?;
    let ephemeral_public = x25519_dalek::x25519(*ephemeral, x25519_dalek::X25519_BASEPOINT_BYTES);
    let shared = Zeroizing::new(x25519_dalek::x25519(*ephemeral, public));
    if shared.iter().all(|b| *b == 0) {
        return Err(CryptoError::Malformed("low-order device key".into()));
    }
    let salt = [ephemeral_public.as_slice(), public.as_slice()].concat();
    let sealed = cipher(&shared, &salt, &[INFO, context])?
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: plain,
                aad: context,
            },
        )
        .map_err(|_| CryptoError::Malformed("message too long to seal".into()))?;
    let mut out = Vec::with_capacity(1 + 32 + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&ephemeral_public);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`seal_to_device`] sealed to `me` under `context`.
pub fn open_as_device(
    me: &DeviceIdentity,
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 1 + 32 + 16 || sealed[0] != VERSION {
        return Err(CryptoError::Malformed("not a sealed box".into()));
    }
    let mut ephemeral_public = [0u8; 32];
    ephemeral_public.copy_from_slice(&sealed[1..33]);
    let public = me
        .device_id()
        .x25519_public()
        .ok_or_else(|| CryptoError::Malformed("own key".into()))?;
    let shared = Zeroizing::new(x25519_dalek::x25519(*me.x25519_secret(), ephemeral_public));
    if shared.iter().all(|b| *b == 0) {
        return Err(CryptoError::Inauthentic);
    }
    let salt = [ephemeral_public.as_slice(), public.as_slice()].concat();
    cipher(&shared, &salt, &[INFO, context])?
        .decrypt(
            &zero_nonce(),
            Payload {
                msg: &sealed[33..],
                aad: context,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Inauthentic)
}

/// Seals one message under a 32-byte key used for nothing else (a key
/// derived from a PAKE for one direction of one exchange).
pub fn seal_once(key: &[u8; 32], context: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    Aes256Gcm::new(&(*key).into())
        .encrypt(
            &zero_nonce(),
            Payload {
                msg: plain,
                aad: context,
            },
        )
        .map_err(|_| CryptoError::Malformed("message too long to seal".into()))
}

/// Opens what [`seal_once`] sealed.
pub fn open_once(
    key: &[u8; 32],
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    Aes256Gcm::new(&(*key).into())
        .decrypt(
            &zero_nonce(),
            Payload {
                msg: sealed,
                aad: context,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Inauthentic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_device_opens_what_was_sealed_to_it() {
        let me = DeviceIdentity::from_secret(&[1; 32]);
        let other = DeviceIdentity::from_secret(&[2; 32]);
        let sealed = seal_to_device(&me.device_id(), b"ctx", b"secret").expect("seal");
        assert_eq!(
            &open_as_device(&me, b"ctx", &sealed).expect("open")[..],
            b"secret"
        );
        assert_eq!(
            open_as_device(&other, b"ctx", &sealed),
            Err(CryptoError::Inauthentic)
        );
        assert_eq!(
            open_as_device(&me, b"other", &sealed),
            Err(CryptoError::Inauthentic)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            assert!(open_as_device(&me, b"ctx", &bad).is_err(), "byte {i}");
        }
        assert!(open_as_device(&me, b"ctx", &sealed[..40]).is_err());
    }

    #[test]
    fn low_order_ephemeral_keys_are_refused() {
        let me = DeviceIdentity::from_secret(&[1; 32]);
        // Small-order Montgomery u-coordinates (0, 1, and the order-8
        // point of RFC 7748 / Wycheproof): the shared secret is zero.
        let low_order: [[u8; 32]; 3] = [
            [0; 32],
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            },
            hex_32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        ];
        for point in low_order {
            let mut sealed = vec![VERSION];
            sealed.extend_from_slice(&point);
            sealed.extend_from_slice(&[0u8; 32]);
            assert_eq!(
                open_as_device(&me, b"ctx", &sealed),
                Err(CryptoError::Inauthentic)
            );
        }
    }

    fn hex_32(text: &str) -> [u8; 32] {
        let bytes = hex::decode(text).expect("hex");
        bytes.try_into().expect("32 bytes")
    }

    #[test]
    fn one_shot_seals_bind_key_and_context() {
        let sealed = seal_once(&[3; 32], b"ctx", b"welcome").expect("seal");
        assert_eq!(
            &open_once(&[3; 32], b"ctx", &sealed).expect("open")[..],
            b"welcome"
        );
        assert!(open_once(&[4; 32], b"ctx", &sealed).is_err());
        assert!(open_once(&[3; 32], b"cty", &sealed).is_err());
    }
}
