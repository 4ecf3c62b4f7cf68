//! What the network layer needs of a store: [`Replica`]. The node (and any
//! other executor of the replication protocol) reaches storage, membership
//! and pairing only through it, so `net` does not depend on the store's
//! types; `Store` implements it in `store/replica.rs`.

use crate::change::{SignedCommit, StoreId};
use crate::error::Result;
use crate::identity::DeviceId;
use crate::membership::{Members, MembershipWire};
use crate::platform::{BoxFuture, BoxStream, MaybeSend, MaybeSync};

use super::replication::{Digest, Ingested, VersionVector};

/// What merging a peer's membership log changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The log gained entries.
    pub changed: bool,
    /// Devices newly found to have signed two different entries under one
    /// number (they are removed: worth telling the user).
    pub equivocators: Vec<DeviceId>,
}

/// A replica of a store, as the network layer sees it.
pub trait Replica: MaybeSend + MaybeSync {
    /// The store's name on this device (a label for the peers it pairs
    /// with).
    fn name(&self) -> String;
    /// The store's id now (it changes once, when the store joins another
    /// device's store by pairing).
    fn store_id(&self) -> StoreId;
    /// Who is a member now.
    fn members(&self) -> std::sync::Arc<Members>;
    /// The highest sequence number held per author.
    fn version_vector(&self) -> BoxFuture<'_, Result<VersionVector>>;
    /// Commits a replica holding `have` lacks, per author in order: at most
    /// `limit`, stopping once `max_bytes` are read (at least one commit).
    fn commits_missing(
        &self,
        have: VersionVector,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<SignedCommit>>>;
    /// Verifies and stores received commits.
    fn ingest(&self, commits: Vec<SignedCommit>) -> BoxFuture<'_, Result<Ingested>>;
    /// The membership log.
    fn membership(&self) -> BoxFuture<'_, MembershipWire>;
    /// Its digest.
    fn membership_digest(&self) -> BoxFuture<'_, Digest>;
    /// Merges a peer's membership log.
    fn merge_membership(&self, log: MembershipWire) -> BoxFuture<'_, Result<Merged>>;
    /// Adds `device` (it proved the pairing code) and returns what it
    /// needs to join, encoded: to be sealed under the exchange's key.
    fn admit(&self, device: DeviceId, label: String) -> BoxFuture<'_, Result<Vec<u8>>>;
    /// Joins the store that admitted this device ([`Replica::admit`]'s
    /// bytes, opened).
    fn join(&self, welcome: Vec<u8>) -> BoxFuture<'_, Result<()>>;
    /// Removes `device` from the membership (and re-keys an encrypted
    /// store).
    fn revoke(&self, device: DeviceId) -> BoxFuture<'_, Result<()>>;
    /// A signal after every durable batch of commits or membership change.
    fn changes(&self) -> BoxStream<'static, ()>;
}
