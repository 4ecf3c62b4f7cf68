//! Keys of an encrypted store: finding them when the store opens, exporting
//! the current one, and rotating to a new epoch with resumable
//! re-encryption of the stored rows.
//!
//! Where the keys live:
//! - the device's key store ([`KeyStore`]) holds the whole keyring (every
//!   epoch): what this device reads and writes with;
//! - storage holds the keyring sealed under its current key
//!   ([`MetaKey::SealedKeyring`]): what a device that imported only the
//!   exported current key needs to read a copy of the store.
//!
//! Rotation order (each step durable before the next, so a crash anywhere
//! leaves a state the next open completes): the new keyring is saved to the
//! device first; then, in one storage batch, the keyring sealed under the
//! new key and the rotation's start ([`MetaKey::Rotation`]); then new writes
//! use the new epoch; then rows are re-encrypted in bounded batches, each
//! written together with the position it reached. Opening a store whose
//! rotation did not finish resumes it in the background.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Store, StoreOptions};
use crate::change::StoreId;
use crate::crypto::envelope::{context, epoch_of};
use crate::crypto::{CryptoError, ExportedKey, Keyring, Opener, Sealer};
use crate::error::{Error, Result, StorageError};
use crate::keys::KeyStore;
use crate::storage::{MetaKey, SealedStorage, StorageBackend, StoredMeta, Table, WriteBatch};

/// Rows re-encrypted per storage batch during a rotation: a write waits at
/// most one batch (about 5 ms of SQLite natively; IndexedDB is slower per
/// row, so its batches are smaller).
pub const ROTATION_BATCH_ROWS: usize = crate::platform::ROTATION_BATCH_ROWS;

/// What [`StoreCrypto::rotate_key`] reports as it goes, and when done.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationProgress {
    /// The epoch the store rotated to.
    pub epoch: u32,
    /// The table being re-encrypted (`None` once done).
    pub table: Option<Table>,
    /// Rows read so far (this run).
    pub scanned: u64,
    /// Rows re-encrypted so far (this run).
    pub resealed: u64,
    /// True once every stored row is under `epoch`.
    pub done: bool,
    /// Milliseconds spent decrypting and re-encrypting (storage excluded).
    pub reseal_ms: f64,
}

/// Where a rotation stands, as stored with each batch it writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RotationState {
    epoch: u32,
    /// 0 records, 1 events, 2 keys, 3 done.
    table: u8,
    after: Option<(String, String)>,
}

const TABLES: [Table; 3] = [Table::Records, Table::Events, Table::Kv];

impl RotationState {
    fn table(&self) -> Option<Table> {
        TABLES.get(usize::from(self.table)).copied()
    }

    fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| Error::InvalidValue(format!("cannot encode the rotation state: {e}")))
    }

    fn decode(bytes: &[u8]) -> Result<RotationState> {
        postcard::from_bytes(bytes)
            .map_err(|e| StorageError::Corrupt(format!("rotation state: {e}")).into())
    }
}

fn keyring_context(store: StoreId) -> Vec<u8> {
    context(&[store.as_bytes(), b"keyring"])
}

/// The keyring sealed under its current key, for [`MetaKey::SealedKeyring`].
pub(super) fn seal_keyring(keyring: &Keyring) -> Result<Vec<u8>> {
    let (epoch, key) = keyring.current();
    let plain = keyring.to_bytes()?;
    Ok(Sealer::new(key, epoch)?.seal(&keyring_context(keyring.store()), &plain)?)
}

/// Opens [`MetaKey::SealedKeyring`] with the key `keys` holds for the epoch
/// it names.
fn open_keyring(sealed: &[u8], store: StoreId, keys: &Keyring) -> Result<Keyring> {
    let epoch = epoch_of(sealed)?;
    let key = keys.key(epoch).map_err(|_| {
        Error::KeyInvalid(format!(
            "the store's keyring is sealed under epoch {epoch}, and the key given is of epoch {}",
            keys.current().0
        ))
    })?;
    let plain = Zeroizing::new(Opener::new().open(key, &keyring_context(store), sealed)?);
    let keyring = Keyring::from_bytes(&plain)?;
    if keyring.store() != store {
        return Err(CryptoError::Inauthentic.into());
    }
    Ok(keyring)
}

/// The store id and, for an encrypted store, its keyring: read when the
/// store exists, made (with the store id) when it does not.
pub(super) async fn open_keys(
    backend: &Arc<dyn StorageBackend>,
    key_store: &dyn KeyStore,
    mut meta: StoredMeta,
    options: &StoreOptions,
) -> Result<(StoreId, Option<Keyring>, StoredMeta)> {
    let imported = options
        .key
        .as_deref()
        .map(|text| ExportedKey::from_text(text).map_err(|e| Error::KeyInvalid(e.to_string())))
        .transpose()?;
    // At most twice: a second pass when another tab created the store first.
    for _ in 0..2 {
        if let Some(id) = meta.store_id {
            let keyring = existing_keys(key_store, &meta, id, options, imported.as_ref()).await?;
            return Ok((id, keyring, meta));
        }
        let (id, keyring) = match &imported {
            Some(key) if key.epoch != 0 => {
                return Err(Error::KeyInvalid(format!(
                    "this key is of epoch {}: a new store needs the epoch-0 key; open a copy of \
                     the store's data with it instead",
                    key.epoch
                )))
            }
            Some(key) => (
                key.store,
                Some(Keyring::from_key(key.store, 0, key.key.clone())),
            ),
            None => {
                let id = StoreId::generate()?;
                (
                    id,
                    options.encrypt.then(|| Keyring::create(id)).transpose()?,
                )
            }
        };
        let mut batch = WriteBatch {
            store_id: Some(id),
            ..WriteBatch::default()
        };
        if let Some(keyring) = &keyring {
            // The device holds the keys before any data depends on them.
            key_store.save_keyring(keyring).await?;
            batch
                .meta
                .push((MetaKey::SealedKeyring, seal_keyring(keyring)?));
        }
        match backend.write(batch).await {
            Ok(()) => return Ok((id, keyring, meta)),
            // Shared storage (another tab) created the store meanwhile:
            // adopt its id and keys.
            Err(StorageError::Conflict(_)) => meta = backend.load_meta().await?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Corrupt("the store id vanished while opening".into()).into())
}

async fn existing_keys(
    key_store: &dyn KeyStore,
    meta: &StoredMeta,
    id: StoreId,
    options: &StoreOptions,
    imported: Option<&ExportedKey>,
) -> Result<Option<Keyring>> {
    let Some(sealed) = meta.entries.get(&MetaKey::SealedKeyring) else {
        if options.encrypt || imported.is_some() {
            return Err(Error::InvalidOptions(format!(
                "store {id} was created without encryption; it cannot be opened as an encrypted store"
            )));
        }
        return Ok(None);
    };
    let held = key_store.load_keyring(id).await?;
    let keyring = match (imported, held) {
        (Some(key), held) => {
            if key.store != id {
                return Err(Error::KeyInvalid(format!(
                    "the key belongs to store {}, not to this store ({id})",
                    key.store
                )));
            }
            let mut keyring = open_keyring(
                sealed,
                id,
                &Keyring::from_key(id, key.epoch, key.key.clone()),
            )?;
            if let Some(held) = held {
                keyring.merge(&held);
            }
            key_store.save_keyring(&keyring).await?;
            keyring
        }
        (None, Some(mut held)) => {
            // Epochs another device added (a copy of its data) join ours;
            // a stored keyring under an epoch we lack stays for the import
            // or pairing that brings it.
            if let Ok(stored) = open_keyring(sealed, id, &held) {
                let before = held.clone();
                held.merge(&stored);
                if held != before {
                    key_store.save_keyring(&held).await?;
                }
            }
            held
        }
        (None, None) => {
            return Err(Error::KeyRequired(format!(
                "store {id} is encrypted and this device holds no key for it; open it with the \
                 key exported on a device that has it"
            )))
        }
    };
    Ok(Some(keyring))
}

/// The rotation to resume when a store opens: one recorded and unfinished,
/// or one whose new keyring reached the device but not storage.
pub(super) fn pending_rotation(meta: &StoredMeta, keyring: &Keyring) -> Result<Option<u32>> {
    let current = keyring.current().0;
    if let Some(bytes) = meta.entries.get(&MetaKey::Rotation) {
        let state = RotationState::decode(bytes)?;
        if state.table().is_some() {
            return Ok(Some(state.epoch));
        }
    }
    let stored_epoch = meta
        .entries
        .get(&MetaKey::SealedKeyring)
        .map(|sealed| epoch_of(sealed))
        .transpose()?;
    Ok((stored_epoch != Some(current)).then_some(current))
}

/// Key management of a store: [`Store::crypto`].
#[derive(Clone, Debug)]
pub struct StoreCrypto {
    store: Store,
}

impl StoreCrypto {
    pub(super) fn new(store: Store) -> StoreCrypto {
        StoreCrypto { store }
    }

    fn sealed(&self) -> Result<Arc<SealedStorage>> {
        self.store.check_open()?;
        self.store.bound().sealed.clone().ok_or(Error::NotEncrypted)
    }

    /// True when the store is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.store.bound().sealed.is_some()
    }

    /// The epoch new data is sealed under.
    pub fn epoch(&self) -> Result<u32> {
        Ok(self.sealed()?.keyring().current().0)
    }

    /// The current data key as `persist-key-v1-…` text (checksummed): with
    /// it, `StoreOptions::key` opens a copy of this store's data on another
    /// device. Anyone holding it can read the store: treat it as a password.
    pub fn export_key(&self) -> Result<Zeroizing<String>> {
        let keyring = self.sealed()?.keyring();
        let (epoch, key) = keyring.current();
        Ok(ExportedKey {
            store: keyring.store(),
            epoch,
            key: key.clone(),
        }
        .to_text())
    }

    /// Starts a new epoch: new writes use its key at once; every stored row
    /// is then re-encrypted under it in batches of [`ROTATION_BATCH_ROWS`]
    /// (writes proceed between batches), reporting progress to
    /// `on_progress`. Older epochs stay in the keyring (the change log keeps
    /// commits sealed under the epoch they were written in: they are signed
    /// by their authors). If the process stops midway, the next open
    /// resumes the re-encryption.
    pub async fn rotate_key(
        &self,
        on_progress: impl FnMut(&RotationProgress),
    ) -> Result<RotationProgress> {
        let sealed = self.sealed()?;
        let inner = &self.store.inner;
        let _one = inner.rotation.lock().await;
        let mut keyring = sealed.keyring();
        // Above every epoch the membership records, even one whose key
        // this device lacks (its grant did not open).
        let epoch = keyring.rotate_past(self.store.members().epoch)?;
        inner.key_store.save_keyring(&keyring).await?;
        let start = RotationState {
            epoch,
            table: 0,
            after: None,
        };
        self.begin(&sealed, keyring, &start).await?;
        tracing::info!(store = %inner.name, epoch, "rotating the store key");
        crate::platform::fault_point("rotate:begun");
        // The other members get the new key now, before any row is resealed.
        self.store.record_keys().await?;
        self.reencrypt(&sealed, start, on_progress).await
    }

    /// Makes `keyring` (this store's keys with epochs granted by another
    /// member) the one this device reads and writes with: saved to the
    /// device, sealed into storage, then used.
    pub(super) async fn adopt_keyring(
        &self,
        sealed: &SealedStorage,
        keyring: Keyring,
    ) -> Result<()> {
        self.store.inner.key_store.save_keyring(&keyring).await?;
        self.install(sealed, keyring, None).await
    }

    /// Stores the keyring and the rotation's start, and switches new writes
    /// to the new epoch, with no write in between.
    async fn begin(
        &self,
        sealed: &SealedStorage,
        keyring: Keyring,
        start: &RotationState,
    ) -> Result<()> {
        self.install(sealed, keyring, Some(start)).await
    }

    /// Stores `keyring` sealed under its current key (with a rotation's
    /// start, if any) and switches the store to it, with no write in
    /// between.
    async fn install(
        &self,
        sealed: &SealedStorage,
        keyring: Keyring,
        rotation: Option<&RotationState>,
    ) -> Result<()> {
        let mut meta = vec![(MetaKey::SealedKeyring, seal_keyring(&keyring)?)];
        if let Some(start) = rotation {
            meta.push((MetaKey::Rotation, start.encode()?));
        }
        self.store
            .inner
            .writer
            .exclusive(async {
                sealed
                    .inner()
                    .write(WriteBatch {
                        meta,
                        ..WriteBatch::default()
                    })
                    .await?;
                sealed.set_keyring(keyring)?;
                Ok(())
            })
            .await
    }

    /// Finishes a rotation a previous run left unfinished (the store does
    /// this by itself in the background when it opens). `None` when there
    /// is none.
    pub async fn resume_rotation(
        &self,
        on_progress: impl FnMut(&RotationProgress),
    ) -> Result<Option<RotationProgress>> {
        let sealed = self.sealed()?;
        let _one = self.store.inner.rotation.lock().await;
        let meta = sealed.inner().load_meta().await?;
        let keyring = sealed.keyring();
        if pending_rotation(&meta, &keyring)?.is_none() {
            return Ok(None);
        }
        let epoch = keyring.current().0;
        let recorded = meta
            .entries
            .get(&MetaKey::Rotation)
            .map(|bytes| RotationState::decode(bytes))
            .transpose()?
            .filter(|state| state.epoch == epoch && state.table().is_some());
        let state = match recorded {
            Some(state) => state,
            None => {
                // The keyring reached the device but not storage: start over.
                let start = RotationState {
                    epoch,
                    table: 0,
                    after: None,
                };
                self.begin(&sealed, keyring, &start).await?;
                start
            }
        };
        tracing::info!(store = %self.store.inner.name, epoch, "resuming the store key rotation");
        self.reencrypt(&sealed, state, on_progress).await.map(Some)
    }

    async fn reencrypt(
        &self,
        sealed: &SealedStorage,
        mut state: RotationState,
        mut on_progress: impl FnMut(&RotationProgress),
    ) -> Result<RotationProgress> {
        let mut progress = RotationProgress {
            epoch: state.epoch,
            table: state.table(),
            scanned: 0,
            resealed: 0,
            done: false,
            reseal_ms: 0.0,
        };
        while let Some(table) = state.table() {
            self.store.check_open()?;
            let step = self
                .store
                .inner
                .writer
                .exclusive(async {
                    let page = sealed
                        .inner()
                        .scan(table, state.after.as_ref(), ROTATION_BATCH_ROWS)
                        .await?;
                    let rows = page.rows;
                    let scanned = rows.len();
                    let next = RotationState {
                        epoch: state.epoch,
                        table: if scanned < ROTATION_BATCH_ROWS {
                            state.table + 1
                        } else {
                            state.table
                        },
                        after: if scanned < ROTATION_BATCH_ROWS {
                            None
                        } else {
                            page.last
                        },
                    };
                    let started = crate::platform::monotonic_ms();
                    let (mut batch, resealed) = sealed.reseal(rows)?;
                    let reseal_ms = crate::platform::monotonic_ms() - started;
                    batch.meta.push((MetaKey::Rotation, next.encode()?));
                    sealed.inner().write(batch).await?;
                    Ok::<_, Error>((next, scanned, resealed, reseal_ms))
                })
                .await?;
            // Writers queued behind this batch go first.
            self.store.inner.writer.give_way().await;
            let (next, scanned, resealed, reseal_ms) = step;
            progress.reseal_ms += reseal_ms;
            state = next;
            progress.table = state.table();
            progress.scanned += scanned as u64;
            progress.resealed += resealed as u64;
            progress.done = state.table().is_none();
            on_progress(&progress);
        }
        progress.done = true;
        tracing::info!(
            store = %self.store.inner.name, epoch = state.epoch, resealed = progress.resealed,
            "store key rotation finished"
        );
        Ok(progress)
    }
}
