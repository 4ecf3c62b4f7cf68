//! What a sync server serves (its options) and how a device's hello opens,
//! or founds, the space of its store.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::PeerId;

use crate::change::{Limits, StoreId};
use crate::error::{Error, Result};
use crate::host::{HostStorage, Hosted, Quota, SpaceId};
use crate::identity::DeviceId;
use crate::membership::{MembershipLog, MembershipWire};
use crate::net::device_of;
use crate::net::replica::Replica;

/// What a sync server holds and allows.
#[derive(Clone)]
pub struct ServeOptions {
    /// Where spaces and commits are kept.
    pub storage: Arc<dyn HostStorage>,
    /// Stores held at most (a new store beyond is refused
    /// `QUOTA_EXCEEDED`).
    pub max_stores: u64,
    /// What one store may hold.
    pub quota: Quota,
    /// Size limits of received commits.
    pub limits: Limits,
    /// Serve only the stores founded by these devices (empty: any store
    /// whose members sync here; anyone may found one, up to
    /// `max_stores`).
    pub founders: Vec<DeviceId>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("storage", &self.storage.describe())
            .field("max_stores", &self.max_stores)
            .field("quota", &self.quota)
            .field("founders", &self.founders.len())
            .finish()
    }
}

impl ServeOptions {
    /// Serving from `storage` with default limits (10,000 stores, 1 GiB
    /// and 10 million commits each).
    pub fn new(storage: Arc<dyn HostStorage>) -> ServeOptions {
        ServeOptions {
            storage,
            max_stores: 10_000,
            quota: Quota::default(),
            limits: Limits::default(),
            founders: Vec::new(),
        }
    }
}

/// The spaces loaded in this process, shared by its storage tasks.
pub(super) type Loaded = Arc<futures::lock::Mutex<HashMap<SpaceId, Arc<Hosted>>>>;

/// Opens (or founds) the space a hello names, if its log proves `peer` a
/// member, and merges the log into it.
pub(super) async fn open_space(
    options: ServeOptions,
    loaded: Loaded,
    peer: PeerId,
    store: StoreId,
    log: MembershipWire,
) -> Result<Arc<Hosted>> {
    let not_member = || Error::NotTrusted(format!("{peer} is no member of this store"));
    let device = device_of(&peer).ok_or_else(not_member)?;
    if log.store != store {
        return Err(Error::Membership(
            crate::membership::MemberError::WrongStore,
        ));
    }
    if !options.founders.is_empty() && !options.founders.contains(&log.founder) {
        return Err(Error::NotTrusted(
            "this server serves only the stores of the founders its operator lists".into(),
        ));
    }
    // The log is verified, and the device found in it, before anything is
    // stored: a stranger founds nothing.
    let horizon = crate::platform::now_ms().saturating_add(options.limits.max_clock_skew_ms);
    let mut offered = MembershipLog::founded_by(store, log.founder);
    offered.merge_until(&log, horizon)?;
    let storage = options.storage.clone();
    let (limits, quota) = (options.limits, options.quota);
    let mut map = loaded.lock().await;
    // `Send` and `Sync` natively; in a browser (one thread) neither is
    // needed.
    #[allow(clippy::arc_with_non_send_sync)]
    let hosted = match storage.space(store, log.founder).await? {
        Some((id, bytes)) => match map.get(&id) {
            Some(hosted) => {
                // Another server process may have changed it while no
                // device of it was here to hear the notices.
                hosted.refresh().await?;
                hosted.clone()
            }
            None => Arc::new(Hosted::load(storage.clone(), id, &bytes, limits, quota).await?),
        },
        None => {
            if !offered.members().is_member(&device) {
                return Err(not_member());
            }
            let bytes = offered.to_bytes().map_err(|e| {
                Error::Membership(crate::membership::MemberError::Malformed(e.to_string()))
            })?;
            let Some((id, bytes)) = storage
                .create_space(store, log.founder, bytes, options.max_stores)
                .await?
            else {
                return Err(Error::QuotaExceeded(format!(
                    "this server holds {} stores, its most",
                    options.max_stores
                )));
            };
            Arc::new(Hosted::load(storage.clone(), id, &bytes, limits, quota).await?)
        }
    };
    map.insert(hosted.space(), hosted.clone());
    drop(map);
    hosted.merge_membership(log).await?;
    if !hosted.is_member(&device) {
        return Err(not_member());
    }
    Ok(hosted)
}
