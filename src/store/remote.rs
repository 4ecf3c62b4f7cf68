//! `StoreOptions::sync_remote`: a store that syncs with a sync server from
//! the moment it opens, without a call to `enable_p2p`. The store runs a
//! node of its own that listens nowhere and dials only the servers; a
//! later `enable_p2p` replaces that node with the caller's, the servers
//! kept.
//!
//! The remote is either addresses (`/ip4/.../tcp/4001/p2p/<id>`, several
//! separated by commas) or the name of the deployment's server (any other
//! text, e.g. `"postgres"` as in `sync: { remote: "postgres" }`), which
//! `PERSIST_SYNC_REMOTE` resolves to addresses.

use super::Store;
use crate::error::{Error, Result};
use crate::net::{Multiaddr, P2p, P2pOptions};

/// The variable that names the deployment's sync server(s).
pub const SYNC_REMOTE_ENV: &str = "PERSIST_SYNC_REMOTE";

/// The store's sync servers and the node it runs for them.
#[derive(Default)]
pub(super) struct RemoteSync {
    pub(super) servers: Vec<Multiaddr>,
    pub(super) node: Option<P2p>,
}

fn addresses(text: &str, from: &str) -> Result<Vec<Multiaddr>> {
    text.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|e| Error::InvalidOptions(format!("sync remote {a:?} (from {from}): {e}")))
        })
        .collect()
}

/// The addresses `remote` names.
pub(super) fn resolve(remote: &str) -> Result<Vec<Multiaddr>> {
    let servers = if remote.trim_start().starts_with('/') {
        addresses(remote, "the options")?
    } else {
        match std::env::var(SYNC_REMOTE_ENV) {
            Ok(text) if !text.trim().is_empty() => addresses(&text, SYNC_REMOTE_ENV)?,
            _ => {
                return Err(Error::SyncRemoteUnset(format!(
                    "sync remote {remote:?} names this deployment's sync server: set \
                     {SYNC_REMOTE_ENV} to its address (/ip4/.../tcp/4001/p2p/<its peer id>; \
                     several separated by commas), or give the address itself"
                )))
            }
        }
    };
    if servers.is_empty() {
        return Err(Error::SyncRemoteUnset(format!(
            "sync remote {remote:?} names no address"
        )));
    }
    Ok(servers)
}

impl Store {
    /// Starts the node that syncs with `servers` (from `Store::open`).
    pub(super) async fn start_remote_sync(&self, servers: Vec<Multiaddr>) -> Result<()> {
        if self.bound().sealed.is_none() {
            return Err(Error::InvalidOptions(
                "a sync server holds only ciphertext: open the store with encrypt: true to sync \
                 through one"
                    .into(),
            ));
        }
        let options = P2pOptions {
            listen_addrs: Vec::new(),
            sync_servers: servers.clone(),
            ..P2pOptions::loopback()
        };
        let node = self.start_node(options).await?;
        let mut remote = self.remote();
        remote.servers = servers;
        remote.node = Some(node);
        Ok(())
    }

    /// The node syncing with the sync servers of `sync_remote`, while no
    /// `enable_p2p` node replaced it: its events say when a server
    /// accepted this device and what each sync step applied.
    pub fn remote_sync(&self) -> Option<P2p> {
        self.remote().node.clone()
    }

    /// Before `enable_p2p` starts a node: the store's own node stops, and
    /// its servers join `options`.
    pub(super) fn hand_over_remote(&self, options: &mut P2pOptions) {
        let mut remote = self.remote();
        if let Some(node) = remote.node.take() {
            node.shutdown();
        }
        for server in &remote.servers {
            if !options.sync_servers.contains(server) {
                options.sync_servers.push(server.clone());
            }
        }
    }

    /// Stops the store's own node (on close).
    pub(super) fn stop_remote_sync(&self) {
        if let Some(node) = self.remote().node.take() {
            node.shutdown();
        }
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, RemoteSync> {
        self.inner.remote.lock().unwrap_or_else(|p| p.into_inner())
    }
}
