//! The device's secrets natively: a 256-bit device key in the OS keychain
//! (the `keyring` crate: Keychain on macOS, Credential Manager on Windows,
//! Secret Service on Linux), or, where there is none (headless Linux, CI), in
//! a 0600 keyfile beside the database, with the reason logged. The device key
//! seals the device's secrets (its Ed25519 identity and the store's keyring)
//! in a second 0600 file beside the database.
//!
//! | file | holds |
//! |---|---|
//! | `<db>.key` | `persist-device-key-v2 <hex>`: the device key, when no keychain holds it |
//! | `<db>.secrets` | `persist-secrets-v1 <base64 envelope>`: identity and keyring, sealed under the device key |
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of
//! the folder). Damaged or missing keys are `KEY_INVALID` and never
//! replaced: a new key would make the sealed secrets unreadable for good.
//! A `<db>.device-key` file of an earlier version (the identity in the
//! clear) is moved under the device key and removed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use data_encoding::BASE64_NOPAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::change::StoreId;
use crate::crypto::envelope::context;
use crate::crypto::{DataKey, Keyring, Opener, Sealer};
use crate::error::{Error, Result};
use crate::identity::DeviceIdentity;
use crate::keys::KeyStore;
use crate::platform::BoxFuture;

const KEY_HEADER: &str = "persist-device-key-v2 ";
const SECRETS_HEADER: &str = "persist-secrets-v1 ";
const LEGACY_IDENTITY_HEADER: &str = "persist-device-key-v1 ";
const KEYCHAIN_SERVICE: &str = "persist";
/// Set to `0` or `off` to keep the device key in the keyfile even where an
/// OS keychain exists.
pub const KEYCHAIN_ENV: &str = "PERSIST_KEYCHAIN";

/// What the device key seals.
#[derive(Serialize, Deserialize)]
struct Secrets {
    version: u8,
    identity: [u8; 32],
    keyring: Option<Vec<u8>>,
}

impl Drop for Secrets {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.identity);
        if let Some(keyring) = &mut self.keyring {
            zeroize::Zeroize::zeroize(keyring);
        }
    }
}

/// Where the device key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLocation {
    /// The OS keychain.
    Keychain,
    /// The `<db>.key` file.
    Keyfile,
}

/// The device's secrets for one database: device key in the keychain or a
/// keyfile, identity and keyring sealed under it.
pub struct FileKeyStore {
    database: PathBuf,
    use_keychain: bool,
    device_key: Mutex<Option<(DataKey, KeyLocation)>>,
}

fn beside(database: &Path, suffix: &str) -> PathBuf {
    let mut file = database.as_os_str().to_owned();
    file.push(suffix);
    PathBuf::from(file)
}

fn secrets_context() -> Vec<u8> {
    context(&[b"persist/device-secrets/v1"])
}

impl FileKeyStore {
    /// The secrets of the database at `database`; the keychain is used
    /// unless `PERSIST_KEYCHAIN` is `0` or `off`.
    pub fn new(database: PathBuf) -> FileKeyStore {
        let use_keychain = !matches!(
            std::env::var(KEYCHAIN_ENV).as_deref(),
            Ok("0") | Ok("off") | Ok("false")
        );
        FileKeyStore::with_keychain(database, use_keychain)
    }

    /// As [`FileKeyStore::new`], choosing whether to try the OS keychain.
    pub fn with_keychain(database: PathBuf, use_keychain: bool) -> FileKeyStore {
        FileKeyStore {
            database,
            use_keychain,
            device_key: Mutex::new(None),
        }
    }

    /// The keyfile (used when no keychain holds the device key).
    pub fn key_path(&self) -> PathBuf {
        beside(&self.database, ".key")
    }

    /// The sealed secrets file.
    pub fn secrets_path(&self) -> PathBuf {
        beside(&self.database, ".secrets")
    }

    fn legacy_identity_path(&self) -> PathBuf {
        beside(&self.database, ".device-key")
    }

    /// The keychain entry's user name: the database's absolute path.
    fn keychain_user(&self) -> String {
        let path = fs::canonicalize(&self.database).unwrap_or_else(|_| self.database.clone());
        format!("device-key:{}", path.display())
    }

    /// Where the device key lives, once known.
    pub fn location(&self) -> Option<KeyLocation> {
        self.device_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, at)| *at)
    }

    /// The device key: from the keyfile if there is one, else the keychain;
    /// made on first use (only while no sealed secrets exist).
    fn device_key(&self) -> Result<DataKey> {
        let mut cached = self.device_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, _)) = cached.as_ref() {
            return Ok(key.clone());
        }
        let found = match read_key_file(&self.key_path())? {
            Some(key) => Some((key, KeyLocation::Keyfile)),
            None => match self.keychain_entry() {
                Ok(entry) => keychain_get(&entry)?.map(|key| (key, KeyLocation::Keychain)),
                Err(_) => None,
            },
        };
        let found = match found {
            Some(found) => found,
            None => {
                if self.secrets_path().exists() {
                    return Err(Error::KeyInvalid(format!(
                        "the device key of {} is missing (neither {} nor the OS keychain holds \
                         it), so {} cannot be opened; it is left as it is",
                        self.database.display(),
                        self.key_path().display(),
                        self.secrets_path().display()
                    )));
                }
                self.create_device_key()?
            }
        };
        let key = found.0.clone();
        *cached = Some(found);
        Ok(key)
    }

    fn keychain_entry(&self) -> std::result::Result<keyring::Entry, String> {
        if !self.use_keychain {
            return Err(format!("{KEYCHAIN_ENV} turns the keychain off"));
        }
        if let Err(e) = keyring::Entry::store_status() {
            return Err(format!("no OS keychain reachable: {e}"));
        }
        keyring::Entry::new(KEYCHAIN_SERVICE, &self.keychain_user()).map_err(|e| e.to_string())
    }

    fn create_device_key(&self) -> Result<(DataKey, KeyLocation)> {
        let key = DataKey::generate()?;
        let reason = match self.keychain_entry() {
            Ok(entry) => match entry.set_secret(key.as_bytes()) {
                // Read back: some stores accept writes they cannot keep.
                Ok(()) if keychain_get(&entry).ok().flatten().as_ref() == Some(&key) => {
                    tracing::info!(database = %self.database.display(), "device key created in the OS keychain");
                    return Ok((key, KeyLocation::Keychain));
                }
                Ok(()) => "the keychain did not return the key written".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(reason) => reason,
        };
        let text = Zeroizing::new(format!("{KEY_HEADER}{}\n", hex::encode(key.as_bytes())));
        if !write_private(&self.key_path(), &text, false)? {
            // Another opener made one meanwhile: use it.
            let key = read_key_file(&self.key_path())?
                .ok_or_else(|| Error::KeyInvalid("the device keyfile vanished".into()))?;
            return Ok((key, KeyLocation::Keyfile));
        }
        tracing::warn!(
            database = %self.database.display(), keyfile = %self.key_path().display(),
            reason = %reason,
            "no OS keychain: the device key is kept in a keyfile readable only by this user"
        );
        Ok((key, KeyLocation::Keyfile))
    }

    fn read_secrets(&self) -> Result<Option<Secrets>> {
        let path = self.secrets_path();
        let Some(text) = read_secret_text(&path)? else {
            return Ok(None);
        };
        let damaged =
            |why: String| Error::KeyInvalid(format!("{} is damaged: {why}", path.display()));
        let encoded = text
            .trim_end()
            .strip_prefix(SECRETS_HEADER)
            .ok_or_else(|| damaged("not a Persist secrets file".into()))?;
        let envelope = BASE64_NOPAD
            .decode(encoded.as_bytes())
            .map_err(|e| damaged(e.to_string()))?;
        let key = self.device_key()?;
        let plain = Zeroizing::new(
            Opener::new()
                .open(&key, &secrets_context(), &envelope)
                .map_err(|e| damaged(format!("{e} (not sealed under this device key)")))?,
        );
        decode_secrets(&plain).map(Some).map_err(damaged)
    }

    fn write_secrets(&self, secrets: &Secrets) -> Result<()> {
        let key = self.device_key()?;
        let plain = Zeroizing::new(
            postcard::to_stdvec(secrets)
                .map_err(|e| Error::KeyInvalid(format!("cannot encode secrets: {e}")))?,
        );
        let envelope = Sealer::new(&key, 0)?.seal(&secrets_context(), &plain)?;
        let text = format!("{SECRETS_HEADER}{}\n", BASE64_NOPAD.encode(&envelope));
        write_private(&self.secrets_path(), &text, true).map(|_| ())
    }

    fn identity(&self) -> Result<DeviceIdentity> {
        if let Some(secrets) = self.read_secrets()? {
            return Ok(DeviceIdentity::from_secret(&secrets.identity));
        }
        // An identity kept in the clear by an earlier version moves under
        // the device key; a new device gets a new one.
        let legacy = read_legacy_identity(&self.legacy_identity_path())?;
        let identity = match legacy {
            Some(identity) => identity,
            None => DeviceIdentity::generate()?,
        };
        self.write_secrets(&Secrets {
            version: 1,
            identity: *identity.secret(),
            keyring: None,
        })?;
        if self.legacy_identity_path().exists() {
            let _ = fs::remove_file(self.legacy_identity_path());
            tracing::info!(database = %self.database.display(), "device identity moved under the device key");
        }
        Ok(identity)
    }

    fn keyring_for(&self, store: StoreId) -> Result<Option<Keyring>> {
        let Some(secrets) = self.read_secrets()? else {
            return Ok(None);
        };
        let Some(bytes) = &secrets.keyring else {
            return Ok(None);
        };
        let keyring = Keyring::from_bytes(bytes).map_err(|e| {
            Error::KeyInvalid(format!(
                "{} holds a damaged keyring: {e}",
                self.secrets_path().display()
            ))
        })?;
        // The keyring of the store beside it; another store's (the database
        // file replaced by another) is not this one's.
        Ok((keyring.store() == store).then_some(keyring))
    }

    fn put_keyring(&self, keyring: &Keyring) -> Result<()> {
        let identity = self.identity()?;
        self.write_secrets(&Secrets {
            version: 1,
            identity: *identity.secret(),
            keyring: Some(keyring.to_bytes()?.to_vec()),
        })
    }
}

/// The text of a secret file, `None` when there is none.
fn read_secret_text(path: &Path) -> Result<Option<Zeroizing<String>>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(Zeroizing::new(text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::KeyInvalid(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The sealed secrets' plaintext (a known version).
fn decode_secrets(plain: &[u8]) -> std::result::Result<Secrets, String> {
    let secrets: Secrets = postcard::from_bytes(plain).map_err(|e| e.to_string())?;
    if secrets.version != 1 {
        return Err(format!("version {}", secrets.version));
    }
    Ok(secrets)
}

/// The 32 bytes after `header` in a key file's text, hex-encoded.
fn parse_hex_key(text: &str, header: &str) -> std::result::Result<Zeroizing<[u8; 32]>, String> {
    let hex_key = text
        .trim_end()
        .strip_prefix(header)
        .ok_or_else(|| "is not a Persist device key".to_string())?;
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key, key.as_mut()).map_err(|e| format!("is damaged: {e}"))?;
    Ok(key)
}

fn read_key_file(path: &Path) -> Result<Option<DataKey>> {
    let Some(text) = read_secret_text(path)? else {
        return Ok(None);
    };
    let key = parse_hex_key(&text, KEY_HEADER)
        .map_err(|why| Error::KeyInvalid(format!("{} {why}", path.display())))?;
    Ok(Some(DataKey::from_bytes(*key)))
}

fn read_legacy_identity(path: &Path) -> Result<Option<DeviceIdentity>> {
    let Some(text) = read_secret_text(path)? else {
        return Ok(None);
    };
    let seed = parse_hex_key(&text, LEGACY_IDENTITY_HEADER)
        .map_err(|why| Error::KeyInvalid(format!("{} {why}", path.display())))?;
    Ok(Some(DeviceIdentity::from_secret(&seed)))
}

/// Runs the decoders of the key files on `data` (for fuzzing): the
/// device key and legacy identity texts, and the sealed secrets'
/// plaintext. Encodings this code wrote read back.
#[cfg(feature = "test-utils")]
pub fn fuzz_decoders(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for header in [KEY_HEADER, LEGACY_IDENTITY_HEADER] {
        if let Ok(key) = parse_hex_key(&text, header) {
            let again = format!("{header}{}\n", hex::encode(key.as_ref()));
            assert_eq!(parse_hex_key(&again, header).ok().as_deref(), Some(&*key));
        }
    }
    if let Ok(secrets) = decode_secrets(data) {
        let bytes = postcard::to_stdvec(&secrets).expect("secrets encode");
        assert!(
            decode_secrets(&bytes).is_ok(),
            "secrets written here read back"
        );
    }
}

/// The device key in the keychain: `None` when there is no entry, an error
/// when the entry holds something else.
fn keychain_get(entry: &keyring::Entry) -> Result<Option<DataKey>> {
    match entry.get_secret() {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                Error::KeyInvalid("the keychain entry of the device key is not 32 bytes".into())
            })?;
            Ok(Some(DataKey::from_bytes(key)))
        }
        // No entry, or a keychain that cannot be reached: nothing we can use
        // (the caller refuses to make a new key while sealed secrets exist).
        Err(_) => Ok(None),
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
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

impl KeyStore for FileKeyStore {
    fn describe(&self) -> String {
        match self.location() {
            Some(KeyLocation::Keychain) => format!("keychain+{}", self.secrets_path().display()),
            _ => format!("keyfile:{}", self.key_path().display()),
        }
    }

    fn load_or_create(&self) -> BoxFuture<'_, Result<DeviceIdentity>> {
        Box::pin(std::future::ready(self.identity()))
    }

    fn load_keyring(&self, store: StoreId) -> BoxFuture<'_, Result<Option<Keyring>>> {
        Box::pin(std::future::ready(self.keyring_for(store)))
    }

    fn save_keyring<'a>(&'a self, keyring: &'a Keyring) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(self.put_keyring(keyring)))
    }
}
