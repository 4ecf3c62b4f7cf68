//! The device's secrets in the browser: a non-extractable AES-GCM key made
//! by WebCrypto (`crypto.subtle.generateKey(..., extractable: false)`) and
//! kept in the store's IndexedDB `meta` (IndexedDB stores the `CryptoKey`
//! object; script can use it but never read its bytes), which seals the
//! device's Ed25519 identity and the store's keyring:
//!
//! | `meta` key | value |
//! |---|---|
//! | `device_wrap_key` | the `CryptoKey` |
//! | `device_identity` | `iv (12) ‖ AES-GCM(identity seed)`, associated data `persist/device-identity/v1` |
//! | `keyring:<store id>` | `iv (12) ‖ AES-GCM(keyring)`, associated data `persist/keyring/v1:<store id>` |
//!
//! Few messages are sealed under this key (one per identity and rotation),
//! so random 96-bit IVs are far inside their budget. Tabs of one origin race
//! to create the key and the identity: each is added only if absent, in one
//! `readwrite` transaction, and the loser adopts what the winner stored. An
//! identity kept in the clear by an earlier version (`device_key`, hex) is
//! sealed and the clear copy deleted.

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use zeroize::Zeroizing;

use super::idb::IdbStore;
use crate::change::StoreId;
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::identity::DeviceIdentity;

const WRAP_KEY: &str = "device_wrap_key";
const IDENTITY: &str = "device_identity";
const LEGACY_IDENTITY: &str = "device_key";
const IV_LEN: usize = 12;

fn unavailable(what: &str, e: JsValue) -> Error {
    let detail = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|| format!("{e:?}"));
    Error::Crypto(crate::crypto::CryptoError::Random(format!(
        "WebCrypto {what} failed: {detail}"
    )))
}

fn subtle() -> Result<JsValue> {
    let crypto =
        Reflect::get(&js_sys::global(), &"crypto".into()).map_err(|e| unavailable("lookup", e))?;
    Reflect::get(&crypto, &"subtle".into())
        .ok()
        .filter(|s| !s.is_undefined())
        .ok_or_else(|| {
            unavailable(
                "lookup",
                "crypto.subtle is missing (not a secure context?)".into(),
            )
        })
}

async fn call(method: &str, args: &Array) -> Result<JsValue> {
    let subtle = subtle()?;
    let function: Function = Reflect::get(&subtle, &method.into())
        .and_then(|f| f.dyn_into())
        .map_err(|e| unavailable(method, e))?;
    let promise: Promise = function
        .apply(&subtle, args)
        .and_then(|p| p.dyn_into())
        .map_err(|e| unavailable(method, e))?;
    JsFuture::from(promise)
        .await
        .map_err(|e| unavailable(method, e))
}

fn algorithm(iv: Option<&[u8]>, associated: Option<&[u8]>) -> JsValue {
    let object = Object::new();
    let set = |k: &str, v: &JsValue| {
        let _ = Reflect::set(&object, &k.into(), v);
    };
    set("name", &"AES-GCM".into());
    set("length", &JsValue::from_f64(256.0));
    if let Some(iv) = iv {
        set("iv", &Uint8Array::from(iv).into());
    }
    if let Some(associated) = associated {
        set("additionalData", &Uint8Array::from(associated).into());
    }
    object.into()
}

/// The device's wrapping key, made (non-extractable) on first use.
async fn wrap_key(db: &IdbStore) -> Result<JsValue> {
    if let Some(key) = db.meta_get(WRAP_KEY).await? {
        return Ok(key);
    }
    let usages = Array::of2(&"encrypt".into(), &"decrypt".into());
    let key = call(
        "generateKey",
        &Array::of3(&algorithm(None, None), &JsValue::FALSE, &usages),
    )
    .await?;
    Ok(db.meta_put_new(WRAP_KEY, &key).await?)
}

async fn seal(db: &IdbStore, associated: &[u8], plain: &[u8]) -> Result<JsValue> {
    let key = wrap_key(db).await?;
    let mut iv = [0u8; IV_LEN];
    crate::platform::fill_random(&mut iv)?;
    let sealed = call(
        "encrypt",
        &Array::of3(
            &algorithm(Some(&iv), Some(associated)),
            &key,
            &Uint8Array::from(plain).into(),
        ),
    )
    .await?;
    let sealed = Uint8Array::new(&sealed).to_vec();
    let mut out = Vec::with_capacity(IV_LEN + sealed.len());
    out.extend_from_slice(&iv);
    out.extend_from_slice(&sealed);
    Ok(Uint8Array::from(&out[..]).into())
}

async fn open(
    key: Option<JsValue>,
    associated: &[u8],
    stored: JsValue,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    let damaged = |why: &str| Error::KeyInvalid(format!("the stored {what} {why}"));
    let bytes = stored
        .dyn_into::<Uint8Array>()
        .map_err(|_| damaged("is not sealed bytes"))?
        .to_vec();
    if bytes.len() < IV_LEN + 16 {
        return Err(damaged("is truncated"));
    }
    let Some(key) = key else {
        return Err(damaged(
            "is sealed, but the device's WebCrypto key is missing",
        ));
    };
    let plain = call(
        "decrypt",
        &Array::of3(
            &algorithm(Some(&bytes[..IV_LEN]), Some(associated)),
            &key,
            &Uint8Array::from(&bytes[IV_LEN..]).into(),
        ),
    )
    .await
    .map_err(|_| damaged("does not open under the device's WebCrypto key"))?;
    Ok(Zeroizing::new(Uint8Array::new(&plain).to_vec()))
}

const IDENTITY_AD: &[u8] = b"persist/device-identity/v1";

fn identity_from(seed: &[u8]) -> Result<DeviceIdentity> {
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        seed.try_into()
            .map_err(|_| Error::KeyInvalid("the stored device identity is not 32 bytes".into()))?,
    );
    Ok(DeviceIdentity::from_secret(&seed))
}

/// The device identity: sealed in `meta`, made (or moved from the clear
/// legacy entry) on first use.
pub(super) async fn identity(db: &IdbStore) -> Result<DeviceIdentity> {
    // The sealed identity and the key that opens it, in one read.
    let [stored, key] = db.meta_get_many([IDENTITY, WRAP_KEY]).await?;
    if let Some(stored) = stored {
        return identity_from(&open(key, IDENTITY_AD, stored, "device identity").await?);
    }
    let identity = match db.meta_get(LEGACY_IDENTITY).await? {
        Some(legacy) => {
            let text = Zeroizing::new(legacy.as_string().unwrap_or_default());
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.as_bytes(), seed.as_mut())
                .map_err(|_| Error::KeyInvalid("the stored device key is damaged".into()))?;
            DeviceIdentity::from_secret(&seed)
        }
        None => DeviceIdentity::generate()?,
    };
    let sealed = seal(db, IDENTITY_AD, identity.secret().as_ref()).await?;
    let stored = db.meta_put_new(IDENTITY, &sealed).await?;
    if stored != sealed {
        // Another tab stored its identity first: this device is that one.
        let key = db.meta_get(WRAP_KEY).await?;
        return identity_from(&open(key, IDENTITY_AD, stored, "device identity").await?);
    }
    if db.meta_get(LEGACY_IDENTITY).await?.is_some() {
        // Sealed copy first, then the clear one goes.
        db.meta_put(IDENTITY, &sealed, Some(LEGACY_IDENTITY))
            .await?;
    }
    Ok(identity)
}

fn keyring_entry(store: StoreId) -> (String, Vec<u8>) {
    (
        format!("keyring:{store}"),
        format!("persist/keyring/v1:{store}").into_bytes(),
    )
}

/// The keyring this device holds for `store`.
pub(super) async fn load_keyring(db: &IdbStore, store: StoreId) -> Result<Option<Keyring>> {
    let (key, associated) = keyring_entry(store);
    let [stored, wrap] = db.meta_get_many([key.as_str(), WRAP_KEY]).await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    let plain = open(wrap, &associated, stored, "keyring").await?;
    let keyring = Keyring::from_bytes(&plain)
        .map_err(|e| Error::KeyInvalid(format!("the stored keyring is damaged: {e}")))?;
    Ok(Some(keyring))
}

/// Seals and stores `keyring`, replacing the one held for its store.
pub(super) async fn save_keyring(db: &IdbStore, keyring: &Keyring) -> Result<()> {
    let (key, associated) = keyring_entry(keyring.store());
    let sealed = seal(db, &associated, &keyring.to_bytes()?).await?;
    Ok(db.meta_put(&key, &sealed, None).await?)
}
