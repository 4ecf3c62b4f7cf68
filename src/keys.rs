//! Where a device keeps its identity. The trait is the seam the encryption
//! issue uses to move keys into the OS keychain (natively) and under a
//! non-extractable WebCrypto key (in the browser).

use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::error::Result;
use crate::identity::DeviceIdentity;
use crate::platform::{BoxFuture, MaybeSend, MaybeSync};

/// Loads the device identity, creating it on first use.
pub trait KeyStore: MaybeSend + MaybeSync {
    /// Where the key lives, for logs (never the key itself).
    fn describe(&self) -> String;

    /// The device identity; made and saved on first call.
    fn load_or_create(&self) -> BoxFuture<'_, Result<DeviceIdentity>>;
}

/// A key store that keeps one identity in memory (tests, ephemeral stores).
pub struct MemoryKeyStore {
    seed: Mutex<Zeroizing<[u8; 32]>>,
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
}
