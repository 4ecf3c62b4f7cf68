//! The device identity in a file beside the database, readable only by its
//! owner (0600). Written atomically (temporary file, fsync, rename); a damaged
//! file is reported as `KEY_INVALID` and never overwritten.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::DeviceIdentity;
use crate::keys::KeyStore;
use crate::platform::BoxFuture;

const HEADER: &str = "persist-device-key-v1 ";

/// A device identity kept in a keyfile.
pub struct FileKeyStore {
    path: PathBuf,
}

impl FileKeyStore {
    /// A key store at `path` (created on first use).
    pub fn new(path: PathBuf) -> FileKeyStore {
        FileKeyStore { path }
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
        let io = |e: std::io::Error| {
            Error::KeyInvalid(format!("cannot write {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = open_private(&tmp).map_err(io)?;
        let text = Zeroizing::new(format!(
            "{HEADER}{}\n",
            hex::encode(identity.secret().as_ref())
        ));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        // Never replace a key that appeared meanwhile (another process won the race).
        if self.path.exists() {
            let _ = fs::remove_file(&tmp);
            return self
                .load()?
                .ok_or_else(|| Error::KeyInvalid("device key vanished".into()));
        }
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        tracing::info!(path = %self.path.display(), "created device key file (OS keychain support arrives with encryption)");
        Ok(identity)
    }
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
}
