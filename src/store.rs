//! The store: opening, options, and the handles of the public API.
//!
//! ```no_run
//! # async fn demo() -> persist::Result<()> {
//! use persist::{Store, StoreOptions};
//! use serde_json::json;
//!
//! let store = Store::open(StoreOptions::new("my-app").path("./data/my-app.db")).await?;
//! store.records("notes").put("n1", json!({ "title": "hi", "body": "..." })).await?;
//! let note = store.records("notes").get("n1").await?;
//! let event = store.events("audit").append(json!({ "action": "login" })).await?;
//! store.kv().set("theme", json!("dark")).await?;
//! store.close().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::change::{Commit, Limits, SignedCommit, StoreId};
use crate::error::{Error, NameKind, RejectReason, Result, StorageError};
use crate::hlc::HybridClock;
use crate::identity::{DeviceId, DeviceIdentity};
use crate::keys::KeyStore;
use crate::membership::{Members, MembershipLog};
use crate::merge::ConflictStrategy;
use crate::names;
use crate::storage::{MetaKey, SealedStorage, StorageBackend};

mod crypto;
mod forks;
mod handles;
mod members;
mod remote;
mod replica;
mod subscribe;
mod writer;

pub use crypto::{RotationProgress, StoreCrypto, ROTATION_BATCH_ROWS};
pub use members::{MembershipUpdate, Welcome};
pub use remote::SYNC_REMOTE_ENV;

pub use handles::{
    AppendedEvent, Event, EventListOptions, Events, Kv, ListOptions, Record, Records, Since,
    Transaction,
};
pub use subscribe::{ChangeStream, Lagged, Origin, RecordChange, Subscription};
pub use writer::{IngestReport, WriteReceipt};

/// Where a store keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Adapter {
    /// SQLite file (native default).
    Sqlite,
    /// IndexedDB (browser default).
    IndexedDb,
    /// Memory only; gone when the store closes.
    Memory,
}

impl Adapter {
    /// Parses `"sqlite"`, `"indexeddb"` or `"memory"`.
    pub fn from_name(name: &str) -> Result<Adapter> {
        match name {
            "sqlite" => Ok(Adapter::Sqlite),
            "indexeddb" => Ok(Adapter::IndexedDb),
            "memory" => Ok(Adapter::Memory),
            other => Err(Error::AdapterUnavailable {
                requested: other.chars().take(40).collect(),
                available: crate::platform::ADAPTER_NAMES,
            }),
        }
    }

    /// The adapter's name as the JavaScript API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Sqlite => "sqlite",
            Adapter::IndexedDb => "indexeddb",
            Adapter::Memory => "memory",
        }
    }
}

/// A wall clock in milliseconds since the Unix epoch.
pub type WallClock = dyn Fn() -> u64 + Send + Sync;

/// Options for [`Store::open`].
#[derive(Clone)]
pub struct StoreOptions {
    /// Store name (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// Storage adapter; the platform default unless set.
    pub adapter: Adapter,
    /// Database file for the SQLite adapter (default `data/<name>.db`).
    pub path: Option<PathBuf>,
    /// Conflict strategy for collections without their own.
    pub strategy: ConflictStrategy,
    /// Conflict strategies per collection.
    pub collection_strategies: BTreeMap<String, ConflictStrategy>,
    /// Size limits.
    pub limits: Limits,
    /// A storage backend to use instead of the adapter's.
    pub backend: Option<Arc<dyn StorageBackend>>,
    /// A key store to use instead of the adapter's.
    pub key_store: Option<Arc<dyn KeyStore>>,
    /// A wall clock to use instead of the system's (tests, simulations).
    pub clock: Option<Arc<WallClock>>,
    /// Create the store encrypted (an existing store keeps what it was
    /// created with; asking an unencrypted one for encryption is an error).
    pub encrypt: bool,
    /// An exported key (`persist-key-v1-…`, from
    /// [`StoreCrypto::export_key`]) to open an encrypted store this device
    /// holds no key for, such as a copy of another device's data.
    pub key: Option<Zeroizing<String>>,
    /// Sync with a sync server from the moment the store opens
    /// ([`StoreOptions::sync_remote`]).
    pub sync_remote: Option<String>,
}

impl StoreOptions {
    /// Options for a store called `name` on the platform's default adapter.
    pub fn new(name: impl Into<String>) -> StoreOptions {
        StoreOptions {
            name: name.into(),
            adapter: crate::platform::DEFAULT_ADAPTER,
            path: None,
            strategy: ConflictStrategy::default(),
            collection_strategies: BTreeMap::new(),
            limits: Limits::default(),
            backend: None,
            key_store: None,
            clock: None,
            encrypt: false,
            key: None,
            sync_remote: None,
        }
    }

    /// Syncs with a sync server (`persist node --serve`) from the moment
    /// the store opens, through a node of the store's own that listens
    /// nowhere ([`Store::remote_sync`]; `enable_p2p` later takes it over).
    /// `remote` is the server's address (`/ip4/.../tcp/4001/p2p/<id>`,
    /// several separated by commas) or a name for this deployment's
    /// server (`"postgres"`, `"default"`, ...), which the
    /// `PERSIST_SYNC_REMOTE` variable resolves; unset, opening fails with
    /// `SYNC_REMOTE_UNSET`. The store must be encrypted: a server holds
    /// only ciphertext.
    pub fn sync_remote(mut self, remote: impl Into<String>) -> Self {
        self.sync_remote = Some(remote.into());
        self
    }

    /// Encrypts the store (when it is created).
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }

    /// Opens the store with an exported key (implies encryption).
    pub fn key(mut self, exported: impl Into<String>) -> Self {
        self.key = Some(Zeroizing::new(exported.into()));
        self
    }

    /// Sets the adapter.
    pub fn adapter(mut self, adapter: Adapter) -> Self {
        self.adapter = adapter;
        self
    }

    /// Sets the database path (SQLite).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the default conflict strategy.
    pub fn strategy(mut self, strategy: ConflictStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the conflict strategy of one collection.
    pub fn collection_strategy(
        mut self,
        collection: impl Into<String>,
        strategy: ConflictStrategy,
    ) -> Self {
        self.collection_strategies
            .insert(collection.into(), strategy);
        self
    }

    /// Sets the size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Uses `backend` for storage (the adapter is then ignored).
    pub fn backend(mut self, backend: Arc<dyn StorageBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Uses `key_store` for the device identity.
    pub fn key_store(mut self, key_store: Arc<dyn KeyStore>) -> Self {
        self.key_store = Some(key_store);
        self
    }

    /// Uses `clock` as the wall clock.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("name", &self.name)
            .field("adapter", &self.adapter)
            .field("path", &self.path)
            .field("strategy", &self.strategy)
            .field("encrypt", &self.encrypt)
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .finish_non_exhaustive()
    }
}

/// An open store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    device: DeviceIdentity,
    /// The store id and storage it reads and writes (replaced when the
    /// device joins another device's store by pairing).
    bound: std::sync::RwLock<Arc<Bound>>,
    /// The storage under the encryption layer (what `bound` is built on).
    raw_backend: Arc<dyn StorageBackend>,
    /// Trusted devices (see [`crate::membership`]), with what they derive.
    members: futures::lock::Mutex<MemberState>,
    /// The derived membership, for quick checks (kept with `members`).
    members_now: std::sync::RwLock<Arc<Members>>,
    key_store: Arc<dyn KeyStore>,
    /// One key rotation at a time.
    rotation: futures::lock::Mutex<()>,
    strategy: ConflictStrategy,
    collection_strategies: BTreeMap<String, ConflictStrategy>,
    limits: Limits,
    wall_clock: Arc<WallClock>,
    closed: AtomicBool,
    writer: writer::Writer,
    subscribers: Mutex<subscribe::Subscribers>,
    /// Told after every durable batch (P2P nodes push what peers lack).
    commit_listeners: Mutex<Vec<futures::channel::mpsc::Sender<()>>>,
    /// Sync servers named by the options, and the node the store runs
    /// for them.
    remote: Mutex<remote::RemoteSync>,
}

/// The store a handle is bound to: its id and storage.
pub(crate) struct Bound {
    pub(crate) store_id: StoreId,
    pub(crate) backend: Arc<dyn StorageBackend>,
    /// The encryption layer, when the store is encrypted (`backend` is then
    /// this same object).
    pub(crate) sealed: Option<Arc<SealedStorage>>,
}

/// The membership log and its digest (what peers compare).
pub(crate) struct MemberState {
    pub(crate) log: MembershipLog,
    pub(crate) digest: [u8; 32],
}

/// Received commits verified per chunk off the executor: small enough
/// that a tab's event loop turns between chunks, large enough that the
/// hand-off costs little.
const VERIFY_CHUNK: usize = 64;

impl Store {
    /// Opens (creating on first use) the store described by `options`.
    pub async fn open(options: StoreOptions) -> Result<Store> {
        names::check_name(NameKind::Store, &options.name)?;
        let (backend, platform_keys) = match &options.backend {
            Some(backend) => (backend.clone(), None),
            None => {
                let (backend, keys) = crate::platform::open_storage(&options).await?;
                (backend, Some(keys))
            }
        };
        match Store::open_on(backend.clone(), platform_keys, &options).await {
            Ok(store) => Ok(store),
            Err(e) => {
                // Release the files of a store that failed to open.
                let _ = backend.close().await;
                Err(e)
            }
        }
    }

    async fn open_on(
        backend: Arc<dyn StorageBackend>,
        platform_keys: Option<Arc<dyn KeyStore>>,
        options: &StoreOptions,
    ) -> Result<Store> {
        let meta = backend.load_meta().await?;
        // A given key store wins; then the adapter's (beside the data); a
        // caller's own backend without one gets an in-memory identity.
        let key_store = match (&options.key_store, platform_keys) {
            (Some(keys), _) => keys.clone(),
            (None, Some(keys)) => keys,
            (None, None) => Arc::new(crate::keys::MemoryKeyStore::generate()?) as Arc<dyn KeyStore>,
        };
        let device = key_store.load_or_create().await?;
        let (store_id, keyring, meta) =
            crypto::open_keys(&backend, key_store.as_ref(), meta, options).await?;
        let mut resume = None;
        let raw_backend = backend.clone();
        let (backend, sealed) = match keyring {
            Some(keyring) => {
                resume = crypto::pending_rotation(&meta, &keyring)?;
                // Not Send in the browser (one thread there), as `Inner` below.
                #[allow(clippy::arc_with_non_send_sync)]
                let sealed = Arc::new(
                    SealedStorage::new(backend, keyring)?.reloading_from(key_store.clone()),
                );
                (sealed.clone() as Arc<dyn StorageBackend>, Some(sealed))
            }
            None => (backend, None),
        };
        let heads: BTreeMap<DeviceId, u64> = meta.heads.iter().copied().collect();
        let wall_clock = options
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(crate::platform::now_ms));
        tracing::debug!(
            store = %options.name, backend = %backend.describe(), keys = %key_store.describe(),
            device = %device.device_id().short(), encrypted = sealed.is_some(), "store opened"
        );
        let outdated = |what: String| {
            StorageError::FormatOutdated(format!(
                "{what}; this version cannot read it. No release wrote that format: \
                 delete the store and create it again (or pair it again from a device \
                 that holds its data)"
            ))
        };
        if let Some((author, seq)) = meta.heads.first() {
            let first = raw_backend.get_commit(*author, *seq).await?;
            if let Some(format) = first.and_then(|c| c.body.first().copied()) {
                if format <= crate::change::OLD_COMMIT_FORMAT {
                    return Err(outdated(format!("its commits are of format {format}")).into());
                }
            }
        }
        let log = match meta.entries.get(&MetaKey::Membership) {
            Some(bytes) => MembershipLog::from_bytes(bytes).map_err(|e| match e {
                crate::membership::MemberError::OldFormat(format) => {
                    outdated(format!("its membership entries are of format {format}"))
                }
                e => StorageError::Corrupt(format!("membership: {e}")),
            })?,
            // Until it pairs into another device's store, a store trusts
            // the device that created it.
            None => MembershipLog::founded_by(store_id, device.device_id()),
        };
        if log.store() != store_id {
            return Err(StorageError::Corrupt("membership of another store".into()).into());
        }
        #[allow(clippy::arc_with_non_send_sync)]
        let bound = Arc::new(Bound {
            store_id,
            backend,
            sealed,
        });
        // `Inner` is Send + Sync natively; in the browser everything lives on
        // one thread and the backend is not Send, which is fine there.
        #[allow(clippy::arc_with_non_send_sync)]
        let inner = Arc::new(Inner {
            name: options.name.clone(),
            bound: std::sync::RwLock::new(bound),
            raw_backend,
            members_now: std::sync::RwLock::new(Arc::new(log.members())),
            members: futures::lock::Mutex::new(MemberState {
                digest: log.digest(),
                log,
            }),
            key_store,
            rotation: futures::lock::Mutex::new(()),
            strategy: options.strategy.clone(),
            collection_strategies: options.collection_strategies.clone(),
            limits: options.limits,
            wall_clock,
            closed: AtomicBool::new(false),
            writer: writer::Writer::new(
                HybridClock::starting_after(meta.clock),
                heads,
                device.device_id(),
            ),
            device,
            subscribers: Mutex::new(subscribe::Subscribers::default()),
            commit_listeners: Mutex::new(Vec::new()),
            remote: Mutex::default(),
        });
        let external = inner
            .bound
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .backend
            .external_changes();
        if let Some(changes) = external {
            crate::platform::spawn(subscribe::deliver_external(Arc::downgrade(&inner), changes));
        }
        let store = Store { inner };
        // A revocation interrupted before its new key was recorded ends now,
        // before any write can go out under the old key.
        store.resume_revocations().await?;
        // A fork recorded before the process stopped: finish answering it.
        store.drop_forked_commits().await?;
        if let Some(epoch) = resume {
            // A rotation stopped midway: finish it in the background.
            let crypto = store.crypto();
            crate::platform::spawn(async move {
                match crypto.resume_rotation(|_| {}).await {
                    Ok(_) => {}
                    // Closed before it finished: the next open resumes again.
                    Err(Error::Closed) => tracing::debug!(epoch, "key rotation paused by close"),
                    Err(e) => {
                        tracing::warn!(epoch, code = e.code(), %e, "key rotation not resumed")
                    }
                }
            });
        }
        if let Some(remote) = &options.sync_remote {
            let servers = remote::resolve(remote)?;
            store.start_remote_sync(servers).await?;
        }
        Ok(store)
    }

    /// The store id and storage this handle uses now.
    pub(crate) fn bound(&self) -> Arc<Bound> {
        self.inner
            .bound
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The store's id (random, fixed at creation, shared by all replicas;
    /// a device that pairs into a store adopts its id).
    pub fn store_id(&self) -> StoreId {
        self.bound().store_id
    }

    /// The device's libp2p identity (the key of its PeerId): what a
    /// headless node (`persist node`) that runs under this store's device
    /// identity listens with.
    pub fn p2p_keypair(&self) -> Result<libp2p::identity::Keypair> {
        crate::net::keypair(self.device_identity())
    }

    /// This device's signing identity.
    pub(crate) fn device_identity(&self) -> &DeviceIdentity {
        &self.inner.device
    }

    /// This device's identity.
    pub fn device_id(&self) -> DeviceId {
        self.inner.device.device_id()
    }

    /// The storage backend's description.
    pub fn describe(&self) -> String {
        self.bound().backend.describe()
    }

    /// The storage backend (for conformance checks of tombstones and rows;
    /// the `test-utils` feature).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn inner_backend_for_tests(&self) -> Arc<dyn StorageBackend> {
        self.bound().backend.clone()
    }

    /// The records of a collection.
    pub fn records(&self, collection: &str) -> Records {
        Records::new(self.clone(), collection)
    }

    /// An append-only event log.
    pub fn events(&self, log: &str) -> Events {
        Events::new(self.clone(), log)
    }

    /// The key-value space.
    pub fn kv(&self) -> Kv {
        Kv::new(self.clone())
    }

    /// A transaction: several writes, one commit, one signature, one fsync.
    pub fn transaction(&self) -> Transaction {
        Transaction::new(self.clone())
    }

    /// Key management (export, rotation) of an encrypted store.
    pub fn crypto(&self) -> StoreCrypto {
        StoreCrypto::new(self.clone())
    }

    /// Decodes and verifies a commit as [`Store::ingest`] would (with the
    /// store's keys when it is encrypted), without storing it.
    pub fn verify_commit(&self, signed: SignedCommit) -> std::result::Result<Commit, RejectReason> {
        let keyring = self.bound().sealed.as_ref().map(|s| s.keyring());
        Commit::verify(
            signed,
            self.bound().store_id,
            &self.inner.limits,
            keyring.as_ref(),
        )
    }

    /// Starts a P2P node for this store (rust-libp2p: TCP and QUIC, Noise,
    /// Yamux, identify, ping, Kademlia, mDNS) that pairs devices into the
    /// store and replicates its commits with the members it connects to;
    /// connections from other peers are refused after the handshake. See
    /// [`crate::net`]. Natively it needs a tokio runtime.
    pub async fn enable_p2p(&self, mut options: crate::net::P2pOptions) -> Result<crate::net::P2p> {
        self.check_open()?;
        self.hand_over_remote(&mut options);
        self.start_node(options).await
    }

    async fn start_node(&self, options: crate::net::P2pOptions) -> Result<crate::net::P2p> {
        self.check_open()?;
        // Another tab may have run the node until now (it merged
        // membership changes into the shared storage).
        self.refresh_from_shared_storage().await?;
        let keypair = crate::net::keypair(&self.inner.device)?;
        let gate = Arc::new(Mutex::new(crate::net::gate::GateState::default()));
        let swarm = crate::platform::swarm(
            keypair.clone(),
            |relay| crate::net::Behaviour::new(&keypair, &options, gate.clone(), relay),
            &options,
        )?;
        // One thread in the browser: the store is not Send there, as below.
        #[allow(clippy::arc_with_non_send_sync)]
        let replica = Arc::new(self.clone());
        crate::net::start(replica, swarm, &options, gate)
    }

    /// A signal after durable batches of commits (local or received):
    /// signals not yet taken merge into one (the listener looks at the
    /// store, not at the signals).
    pub(crate) fn commit_notifications(&self) -> futures::channel::mpsc::Receiver<()> {
        let (tx, rx) = futures::channel::mpsc::channel(0);
        self.inner
            .commit_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    pub(crate) fn notify_commits(&self) {
        self.inner
            .commit_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_mut(|tx| match tx.try_send(()) {
                Ok(()) => true,
                Err(e) => e.is_full(),
            });
    }

    /// The highest commit sequence number stored per author.
    pub async fn version_vector(&self) -> Result<Vec<(DeviceId, u64)>> {
        self.check_open()?;
        Ok(self.bound().backend.version_vector().await?)
    }

    /// Commits this store has that a replica with version vector `theirs`
    /// lacks, in per-author order, at most `limit`.
    pub async fn commits_missing_from(
        &self,
        theirs: &[(DeviceId, u64)],
        limit: usize,
    ) -> Result<Vec<SignedCommit>> {
        self.commits_missing_within(theirs, limit, usize::MAX).await
    }

    /// As [`Store::commits_missing_from`], stopping once the commits read
    /// reach `max_bytes` (at least one commit is returned when any is
    /// missing): what a page of the sync protocol needs, without reading
    /// more of the log than it sends.
    pub async fn commits_missing_within(
        &self,
        theirs: &[(DeviceId, u64)],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<SignedCommit>> {
        self.check_open()?;
        /// Commits read from storage at a time while a byte budget is set.
        const CHUNK: usize = 16;
        let backend = self.bound().backend.clone();
        let chunk = if max_bytes == usize::MAX {
            usize::MAX
        } else {
            CHUNK
        };
        let backend = &backend;
        crate::net::replica::missing_commits(
            backend.version_vector().await?,
            theirs,
            limit,
            max_bytes,
            chunk,
            |author, after, want| async move {
                Ok(backend.commits_after(author, after, want).await?)
            },
        )
        .await
    }

    /// Verifies and applies commits received from another replica. Invalid
    /// commits are rejected one by one (with reasons in the report) and
    /// never stored; the valid ones are applied in one durable batch.
    pub async fn ingest(&self, commits: Vec<SignedCommit>) -> Result<IngestReport> {
        self.check_open()?;
        let mut report = IngestReport::default();
        let mut unverified = Vec::with_capacity(commits.len());
        let bound = self.bound();
        // Shared by the verification chunks, not copied for each.
        let keyring = bound.sealed.as_ref().map(|s| Arc::new(s.keyring()));
        let members = self.members();
        let horizon = (self.inner.wall_clock)().saturating_add(self.inner.limits.max_clock_skew_ms);
        let mut heads: Option<BTreeMap<DeviceId, u64>> = None;
        for (index, signed) in commits.into_iter().enumerate() {
            // Under a number this replica holds: the same commit (counted,
            // skipped) or another one signed by its author, a fork proven
            // before anything is decrypted (this replica may lack the key
            // the other version is sealed under).
            if let Some((author, seq)) = signed.author_seq() {
                if heads.is_none() {
                    heads = Some(bound.backend.version_vector().await?.into_iter().collect());
                }
                let held_up_to = heads
                    .as_ref()
                    .and_then(|h| h.get(&author))
                    .copied()
                    .unwrap_or(0);
                if seq <= held_up_to {
                    if let Some(held) = bound.backend.get_commit(author, seq).await? {
                        if held == signed {
                            // Held already, byte for byte: nothing to verify
                            // or apply.
                            report.duplicates += 1;
                            continue;
                        }
                        let hash = signed.hash();
                        if held.hash() != hash
                            && crate::change::commit_signature_verifies(
                                bound.store_id,
                                &author,
                                seq,
                                &hash,
                                &signed.signature,
                            )
                        {
                            report.rejected.push((index, RejectReason::Equivocation));
                            report.forks.push((held, signed));
                            continue;
                        }
                    }
                }
            }
            unverified.push((index, signed));
        }
        // Signatures, decryption and content: chunk by chunk off the
        // executor (natively a blocking thread; in a tab between yields),
        // so a large batch never holds the node's loop.
        let mut verified = Vec::with_capacity(unverified.len());
        let (store_id, limits) = (bound.store_id, self.inner.limits);
        let mut rest = unverified.into_iter();
        loop {
            let chunk: Vec<(usize, SignedCommit)> = rest.by_ref().take(VERIFY_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let keys = keyring.clone();
            let results = crate::platform::compute(move || {
                chunk
                    .into_iter()
                    .map(|(index, signed)| {
                        (
                            index,
                            Commit::verify(signed, store_id, &limits, keys.as_deref()),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
            for (index, result) in results {
                match result {
                    // Signature first, then membership: only a verified
                    // author is looked up.
                    Ok(commit)
                        if !members.admits_commit(
                            &commit.body.author,
                            commit.body.seq,
                            &commit.hash,
                        ) =>
                    {
                        let reason = RejectReason::NotTrusted(commit.body.author.short());
                        tracing::warn!(index, code = reason.code(), %reason, "rejected received commit");
                        report.rejected.push((index, reason));
                    }
                    Ok(commit)
                        if commit
                            .body
                            .stamp(commit.body.ops.len().saturating_sub(1))
                            .hlc
                            .millis()
                            > horizon =>
                    {
                        let ahead_ms = commit.body.hlc.millis().saturating_sub(horizon)
                            + self.inner.limits.max_clock_skew_ms;
                        let reason = RejectReason::FromTheFuture { ahead_ms };
                        tracing::warn!(index, code = reason.code(), %reason, "rejected received commit");
                        report.rejected.push((index, reason));
                    }
                    Ok(commit) => verified.push((index, commit)),
                    Err(reason) => {
                        tracing::warn!(index, code = reason.code(), %reason, "rejected received commit");
                        report.rejected.push((index, reason));
                    }
                }
            }
        }
        report.rejected.sort_by_key(|(index, _)| *index);
        let report = if verified.is_empty() {
            report
        } else {
            let applied = self
                .inner
                .writer
                .submit(self, writer::Request::Remote(verified))
                .await?;
            report.merge(applied.into_ingest())
        };
        self.record_forks(&report.forks).await?;
        if !report.forks.is_empty() {
            self.drop_forked_commits().await?;
        }
        Ok(report)
    }

    /// Closes the store: waits for in-flight writes, then releases storage.
    /// Every later call fails with `CLOSED`.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.stop_remote_sync();
        self.inner.writer.drain().await;
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(self.bound().backend.close().await?)
    }

    /// True once [`Store::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn strategy_for(&self, collection: &str) -> &ConflictStrategy {
        self.inner
            .collection_strategies
            .get(collection)
            .unwrap_or(&self.inner.strategy)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.inner.name)
            .field("store_id", &self.bound().store_id)
            .field("device", &self.device_id())
            .field("backend", &self.bound().backend.describe())
            .finish()
    }
}
