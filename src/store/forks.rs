//! Answering a proven commit fork: a device that signed two different
//! commits under one number is removed with nothing from that number on
//! admitted (`membership`), and every replica drops what it had applied
//! of either version, so all end with the same rows.

use std::collections::BTreeMap;

use super::Store;
use crate::change::Commit;
use crate::error::{Result, StorageError};
use crate::identity::DeviceId;

impl Store {
    /// Drops the commits this replica holds of devices proven to have
    /// forked, from the fork on, and rewrites the rows from the commits
    /// that stay (one durable batch: the change log replayed). Nothing
    /// happens when no such commit is held.
    pub(crate) async fn drop_forked_commits(&self) -> Result<()> {
        let forks = self.members().commit_forks.clone();
        if forks.is_empty() {
            return Ok(());
        }
        let heads = self.version_vector().await?;
        let drop: BTreeMap<DeviceId, u64> = heads
            .iter()
            .filter_map(|(author, head)| {
                forks
                    .get(author)
                    .filter(|fork| *head >= **fork)
                    .map(|fork| (*author, *fork))
            })
            .collect();
        if drop.is_empty() {
            return Ok(());
        }
        let bound = self.bound();
        let keyring = bound.sealed.as_ref().map(|s| s.keyring());
        let mut kept = Vec::new();
        let mut dropped = 0usize;
        for (author, _) in &heads {
            let fork = drop.get(author).copied().unwrap_or(u64::MAX);
            for signed in bound.backend.commits_after(*author, 0, usize::MAX).await? {
                let commit =
                    Commit::verify(signed, bound.store_id, &self.inner.limits, keyring.as_ref())
                        .map_err(|e| StorageError::Corrupt(format!("a stored commit: {e}")))?;
                if commit.body.seq >= fork {
                    dropped += 1;
                } else {
                    kept.push(commit);
                }
            }
        }
        let meta: Vec<_> = self
            .inner
            .raw_backend
            .load_meta()
            .await?
            .entries
            .into_iter()
            .collect();
        let replayed = self.inner.writer.rebuild(self, kept, meta).await?;
        tracing::warn!(
            store = %self.inner.name, dropped, replayed,
            "dropped the commits of a device that forked its history, and rebuilt the rows"
        );
        Ok(())
    }
}
