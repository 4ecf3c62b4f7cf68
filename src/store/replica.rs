//! The store as the network layer's [`Replica`].

use std::sync::Arc;

use super::{Store, Welcome};
use crate::change::{SignedCommit, StoreId};
use crate::error::{Error, RejectReason, Result};
use crate::identity::DeviceId;
use crate::membership::{Members, MembershipWire};
use crate::net::replica::{Merged, Replica};
use crate::net::replication::{Ingested, MembersHave, VersionVector};
use crate::platform::{BoxFuture, BoxStream};

impl Replica for Store {
    fn name(&self) -> String {
        Store::name(self).to_string()
    }

    fn store_id(&self) -> StoreId {
        Store::store_id(self)
    }

    fn members(&self) -> Arc<Members> {
        Store::members(self)
    }

    fn version_vector(&self) -> BoxFuture<'_, Result<VersionVector>> {
        Box::pin(Store::version_vector(self))
    }

    fn commits_missing(
        &self,
        have: VersionVector,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Vec<SignedCommit>>> {
        Box::pin(async move { self.commits_missing_within(&have, limit, max_bytes).await })
    }

    fn commit_at(&self, author: DeviceId, seq: u64) -> BoxFuture<'_, Result<Option<SignedCommit>>> {
        Box::pin(async move { Ok(self.bound().backend.get_commit(author, seq).await?) })
    }

    fn ingest(&self, commits: Vec<SignedCommit>) -> BoxFuture<'_, Result<Ingested>> {
        Box::pin(async move {
            let report = Store::ingest(self, commits).await?;
            let have = if report.rejected.is_empty() {
                None
            } else {
                Some(Store::version_vector(self).await?)
            };
            Ok(Ingested {
                applied: report.applied,
                duplicates: report.duplicates,
                rejected: report.rejected.len(),
                gap: report
                    .rejected
                    .iter()
                    .any(|(_, r)| matches!(r, RejectReason::Gap { .. })),
                have,
                equivocators: report
                    .forks
                    .iter()
                    .filter_map(|(held, _)| held.author_seq().map(|(a, _)| a))
                    .collect(),
            })
        })
    }

    fn founder(&self) -> BoxFuture<'_, DeviceId> {
        Box::pin(Store::founder(self))
    }

    fn membership_have(&self) -> BoxFuture<'_, MembersHave> {
        Box::pin(Store::membership_have(self))
    }

    fn membership_for(&self, theirs: Option<MembersHave>) -> BoxFuture<'_, Option<MembershipWire>> {
        Box::pin(Store::membership_for(self, theirs))
    }

    fn merge_membership(&self, log: MembershipWire) -> BoxFuture<'_, Result<Merged>> {
        Box::pin(async move {
            let update = Store::merge_membership(self, &log).await?;
            Ok(Merged {
                changed: update.changed,
                equivocators: update.equivocators,
            })
        })
    }

    fn admit(&self, device: DeviceId, label: String) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let welcome = self.admit_device(device, &label).await?;
            postcard::to_stdvec(&welcome).map_err(|e| Error::PairingFailed(format!("welcome: {e}")))
        })
    }

    fn join(&self, welcome: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let welcome: Welcome = postcard::from_bytes(&welcome)
                .map_err(|e| Error::PairingFailed(format!("unreadable welcome: {e}")))?;
            Store::join(self, welcome).await
        })
    }

    fn revoke(&self, device: DeviceId) -> BoxFuture<'_, Result<()>> {
        Box::pin(Store::revoke(self, device))
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        Box::pin(self.commit_notifications())
    }
}
