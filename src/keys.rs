//! Where a device keeps its secrets: its identity and, for encrypted stores,
//! the store's keyring (every data key by epoch). Natively a keyfile beside
//! the database; in the browser the store's IndexedDB database; in memory
//! for tests and ephemeral stores.

use std::collections::BTreeMap;
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::change::StoreId;
use crate::crypto::Keyring;
use crate::error::Result;
use crate::identity::DeviceIdentity;
use crate::platform::{BoxFuture, MaybeSend, MaybeSync};

/// Loads the device identity, creating it on first use.
pub trait KeyStore: MaybeSend + MaybeSync {
    /// Where the key lives, for logs (never the key itself).
    fn describe(&self) -> String;

    /// The device identity; made and saved on first call.
    fn load_or_create(&self) -> BoxFuture<'_, Result<DeviceIdentity>>;

    /// The keyring this device holds for `store`, if any.
    fn load_keyring(&self, store: StoreId) -> BoxFuture<'_, Result<Option<Keyring>>>;

    /// Durably saves `keyring` (replacing the one held for its store).
    fn save_keyring<'a>(&'a self, keyring: &'a Keyring) -> BoxFuture<'a, Result<()>>;
}

/// A key store that keeps one identity in memory (tests, ephemeral stores).
pub struct MemoryKeyStore {
    seed: Mutex<Zeroizing<[u8; 32]>>,
    keyrings: Mutex<BTreeMap<StoreId, Keyring>>,
}

impl MemoryKeyStore {
    /// A key store holding a new random identity.
    pub fn generate() -> Result<MemoryKeyStore> {
        Ok(MemoryKeyStore::from_identity(&DeviceIdentity::generate()?))
    }

    /// A key store holding `identity`.
    pub fn from_identity(identity: &DeviceIdentity) -> MemoryKeyStore {
        MemoryKeyStore {
            seed: Mutex::new(identity.secret()),
            keyrings: Mutex::new(BTreeMap::new()),
        }
    }
}

impl KeyStore for MemoryKeyStore {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn load_or_create(&self) -> BoxFuture<'_, Result<DeviceIdentity>> {
        let seed = self.seed.lock().unwrap_or_else(|p| p.into_inner());
        let identity = DeviceIdentity::from_secret(&seed);
        Box::pin(std::future::ready(Ok(identity)))
    }

    fn load_keyring(&self, store: StoreId) -> BoxFuture<'_, Result<Option<Keyring>>> {
        let keyrings = self.keyrings.lock().unwrap_or_else(|p| p.into_inner());
        Box::pin(std::future::ready(Ok(keyrings.get(&store).cloned())))
    }

    fn save_keyring<'a>(&'a self, keyring: &'a Keyring) -> BoxFuture<'a, Result<()>> {
        self.keyrings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(keyring.store(), keyring.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}
