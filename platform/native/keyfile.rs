//! The device identity and an encrypted store's keyring in files beside the
//! database, readable only by their owner (0600). Written atomically (temporary file, fsync, rename); a damaged
//! file is reported as `KEY_INVALID` and never overwritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::change::StoreId;
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::identity::DeviceIdentity;
use crate::keys::KeyStore;
use crate::platform::BoxFuture;

const HEADER: &str = "persist-device-key-v1 ";

const KEYRING_HEADER: &str = "persist-keyring-v1 ";

/// A device identity kept in a keyfile, and the keyring of an encrypted
/// store in a second file (both 0600, written atomically).
pub struct FileKeyStore {
    path: PathBuf,
    keyring_path: PathBuf,
}

impl FileKeyStore {
    /// A key store with the identity at `path` and the store keyring at
    /// `keyring_path` (each created on first use).
    pub fn new(path: PathBuf, keyring_path: PathBuf) -> FileKeyStore {
        FileKeyStore { path, keyring_path }
    }

    fn load_keyring_file(&self, store: StoreId) -> Result<Option<Keyring>> {
        let text = match fs::read_to_string(&self.keyring_path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::KeyInvalid(format!(
                    "cannot read {}: {e}",
                    self.keyring_path.display()
                )))
            }
        };
        let damaged = |why: String| {
            Error::KeyInvalid(format!("{} is damaged: {why}", self.keyring_path.display()))
        };
        let hex_bytes = text
            .trim_end()
            .strip_prefix(KEYRING_HEADER)
            .ok_or_else(|| damaged("not a Persist keyring".into()))?;
        let bytes = Zeroizing::new(hex::decode(hex_bytes).map_err(|e| damaged(e.to_string()))?);
        let keyring = Keyring::from_bytes(&bytes).map_err(|e| damaged(e.to_string()))?;
        // The file holds the keyring of the store beside it; another store's
        // (a database file replaced by another) is not this one's.
        Ok((keyring.store() == store).then_some(keyring))
    }

    fn load(&self) -> Result<Option<DeviceIdentity>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::KeyInvalid(format!(
                    "cannot read {}: {e}",
                    self.path.display()
                )))
            }
        };
        let hex_seed = text.trim_end().strip_prefix(HEADER).ok_or_else(|| {
            Error::KeyInvalid(format!(
                "{} is not a Persist device key",
                self.path.display()
            ))
        })?;
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_seed, seed.as_mut())
            .map_err(|e| Error::KeyInvalid(format!("{} is damaged: {e}", self.path.display())))?;
        Ok(Some(DeviceIdentity::from_secret(&seed)))
    }

    fn create(&self) -> Result<DeviceIdentity> {
        let identity = DeviceIdentity::generate()?;
        let text = Zeroizing::new(format!(
            "{HEADER}{}\n",
            hex::encode(identity.secret().as_ref())
        ));
        // Never replace a key that appeared meanwhile (another process won the race).
        if !write_private(&self.path, &text, false)? {
            return self
                .load()?
                .ok_or_else(|| Error::KeyInvalid("device key vanished".into()));
        }
        tracing::info!(path = %self.path.display(), "created device key file");
        Ok(identity)
    }
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename, fsync
/// of the directory), readable by the owner only. With `replace` false an
/// existing file is kept and `false` returned.
fn write_private(path: &Path, text: &str, replace: bool) -> Result<bool> {
    let io = |e: std::io::Error| Error::KeyInvalid(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = open_private(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    if !replace && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Ok(false);
    }
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(true)
}

#[cfg(unix)]
fn open_private(path: &std::path::Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &std::path::Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

impl KeyStore for FileKeyStore {
    fn describe(&self) -> String {
        format!("keyfile:{}", self.path.display())
    }

    fn load_or_create(&self) -> BoxFuture<'_, Result<DeviceIdentity>> {
        let result = match self.load() {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => self.create(),
            Err(e) => Err(e),
        };
        Box::pin(std::future::ready(result))
    }

    fn load_keyring(&self, store: StoreId) -> BoxFuture<'_, Result<Option<Keyring>>> {
        Box::pin(std::future::ready(self.load_keyring_file(store)))
    }

    fn save_keyring<'a>(&'a self, keyring: &'a Keyring) -> BoxFuture<'a, Result<()>> {
        let bytes = keyring.to_bytes();
        let text = Zeroizing::new(format!("{KEYRING_HEADER}{}\n", hex::encode(&*bytes)));
        let result = write_private(&self.keyring_path, &text, true).map(|_| ());
        Box::pin(std::future::ready(result))
    }
}
