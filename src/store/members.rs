//! Who may sync a store: its membership log (see [`crate::membership`]),
//! revocation with a new data key for the remaining members, and joining
//! another device's store when pairing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::writer::Intent;
use super::{Bound, MemberState, Store};
use crate::change::{Commit, Op, SignedCommit, StoreId};
use crate::crypto::device_box::{open_as_device, seal_to_device};
use crate::crypto::{DataKey, Keyring};
use crate::error::{Error, Result, StorageError};
use crate::hlc::Hlc;
use crate::identity::DeviceId;
use crate::membership::{
    grant_context, key_commitment, CommitCut, MemberChange, Members, MembershipLog, MembershipWire,
};
use crate::storage::{MetaKey, SealedStorage, StorageBackend, WriteBatch};

/// What merging another replica's membership changed here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipUpdate {
    /// Devices that became members.
    pub added: Vec<DeviceId>,
    /// Devices that stopped being members.
    pub removed: Vec<DeviceId>,
    /// Devices newly found to have signed two different entries under one
    /// sequence number (equivocation): removed, and worth telling the user.
    pub equivocators: Vec<DeviceId>,
    /// True when the log gained entries (peers that lack them are told).
    pub changed: bool,
}

/// What a device joining a store by pairing receives, sealed under the
/// key of the pairing exchange.
#[derive(Serialize, Deserialize)]
pub struct Welcome {
    /// The store it joins.
    pub store: StoreId,
    /// The store's membership, the joiner already in it.
    pub membership: MembershipWire,
    /// The keyring of an encrypted store (every epoch).
    pub keyring: Option<Vec<u8>>,
}

impl std::fmt::Debug for Welcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Welcome")
            .field("store", &self.store)
            .field("encrypted", &self.keyring.is_some())
            .finish()
    }
}

/// A `Key` entry recording `key` as epoch `epoch`, sealed to each of `to`
/// (a member whose key cannot be sealed to is left out and logged).
fn key_change(store: StoreId, epoch: u32, key: &DataKey, to: &[DeviceId]) -> MemberChange {
    let grants = to
        .iter()
        .filter_map(
            |d| match seal_to_device(d, &grant_context(store, epoch, d), key.as_bytes()) {
                Ok(sealed) => Some((*d, sealed)),
                Err(e) => {
                    tracing::warn!(device = %d.short(), %e, "cannot seal the key to a member");
                    None
                }
            },
        )
        .collect();
    MemberChange::Key {
        epoch,
        commitment: key_commitment(store, epoch, key.as_bytes()),
        grants,
    }
}

/// Operations carried per commit when a joining store writes its data again.
const CARRY_PER_COMMIT: usize = 1_000;

/// The final state a sequence of operations leaves, as writes: records and
/// keys that exist at the end (deleted ones are left out: the joined store
/// never had them), and every event.
/// A value this device stored that no longer parses is damage, not a
/// deletion: `STORAGE_CORRUPT`.
fn fold_into_writes(ops: Vec<Op>) -> Result<Vec<Intent>> {
    let parse = |text: &str, what: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| StorageError::Corrupt(format!("{what} in this device's own history: {e}")))
    };
    let mut records: BTreeMap<(String, String), Option<serde_json::Value>> = BTreeMap::new();
    let mut kv: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::RecordPut {
                collection,
                id,
                value,
                ..
            } => {
                let doc = parse(&value, "a record's value")?;
                records.insert((collection, id), Some(doc));
            }
            Op::RecordPatch {
                collection,
                id,
                set,
                unset,
            } => {
                let doc = records
                    .entry((collection, id))
                    .or_insert(None)
                    .get_or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let serde_json::Value::Object(fields) = doc {
                    for (field, text) in set {
                        fields.insert(field, parse(&text, "a patched field")?);
                    }
                    for field in unset {
                        fields.remove(&field);
                    }
                }
            }
            Op::RecordDelete { collection, id, .. } => {
                records.insert((collection, id), None);
            }
            Op::EventAppend { log, value } => events.push(Intent::Append { log, text: value }),
            Op::KvSet { key, value } => {
                kv.insert(key, Some(value));
            }
            Op::KvDelete { key } => {
                kv.insert(key, None);
            }
        }
    }
    let records = records.into_iter().filter_map(|((collection, id), doc)| {
        doc.map(|doc| Intent::Put {
            collection,
            id,
            text: doc.to_string(),
        })
    });
    let kv = kv
        .into_iter()
        .filter_map(|(key, text)| text.map(|text| Intent::Set { key, text }));
    Ok(records.chain(kv).chain(events).collect())
}

fn diff(before: &Members, after: &Members) -> MembershipUpdate {
    MembershipUpdate {
        added: after
            .current
            .keys()
            .filter(|d| !before.current.contains_key(*d))
            .copied()
            .collect(),
        removed: before
            .current
            .keys()
            .filter(|d| !after.current.contains_key(*d))
            .copied()
            .collect(),
        equivocators: after
            .equivocators
            .difference(&before.equivocators)
            .copied()
            .collect(),
        changed: true,
    }
}

impl Store {
    /// The current membership: trusted devices and removed ones.
    pub fn members(&self) -> Arc<Members> {
        self.inner
            .members_now
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True when `device` is a current member of the store.
    pub fn is_trusted(&self, device: &DeviceId) -> bool {
        self.members().is_member(device)
    }

    /// The membership log as sent to peers.
    pub async fn membership(&self) -> MembershipWire {
        self.inner.members.lock().await.log.to_wire()
    }

    /// The founder of the store's membership log (it changes once, when
    /// this store joins another device's store by pairing).
    pub async fn founder(&self) -> DeviceId {
        self.inner.members.lock().await.log.founder()
    }

    /// A digest of the membership log (equal digests, equal logs).
    pub async fn membership_digest(&self) -> [u8; 32] {
        self.inner.members.lock().await.digest
    }

    /// What this replica holds of the membership log.
    pub async fn membership_have(&self) -> crate::membership::MembersHave {
        let state = self.inner.members.lock().await;
        crate::membership::MembersHave {
            digest: state.digest,
            tips: state.log.tips(),
        }
    }

    /// The entries a replica holding `theirs` lacks (`theirs` unknown:
    /// the whole log).
    pub async fn membership_for(
        &self,
        theirs: Option<crate::membership::MembersHave>,
    ) -> Option<MembershipWire> {
        let state = self.inner.members.lock().await;
        match theirs {
            Some(theirs) if theirs.digest == state.digest => None,
            Some(theirs) => state.log.missing_for(&theirs),
            None => Some(state.log.to_wire()),
        }
    }

    /// Merges a membership log received from a peer: same store and
    /// founder, every entry signed. New entries are stored; keys granted
    /// to this device join its keyring; members that lack the current key
    /// are granted it.
    pub async fn merge_membership(&self, wire: &MembershipWire) -> Result<MembershipUpdate> {
        self.check_open()?;
        let mut state = self.inner.members.lock().await;
        let mut log = state.log.clone();
        let horizon = (self.inner.wall_clock)().saturating_add(self.inner.limits.max_clock_skew_ms);
        let count = log.merge_until(wire, horizon)?;
        if count.refused > 0 || count.waiting > 0 {
            tracing::info!(
                store = %self.inner.name, refused = count.refused, waiting = count.waiting,
                "membership entries left out (authors never added, past their budget, or \
                 stamped ahead of this device's clock by more than the allowed skew)"
            );
        }
        if count.added == 0 {
            return Ok(MembershipUpdate::default());
        }
        let update = self.replace_log(&mut state, log).await?;
        drop(state);
        for device in &update.equivocators {
            tracing::warn!(
                store = %self.inner.name, device = %device.short(),
                "a device signed two different membership entries under one number: removed"
            );
        }
        self.keep_what_was_applied().await?;
        self.drop_forked_commits().await?;
        self.take_key_grants().await?;
        self.record_keys().await?;
        self.rotate_if_exposed().await?;
        Ok(update)
    }

    /// For each removed device of which this replica holds more commits
    /// than the removals' cuts keep, records a removal with this
    /// replica's own cut (with the device's signature of its last commit
    /// held, as proof): removals keep the highest proven cut, so every
    /// replica ends up accepting the same commits of the removed device
    /// (and pulls those it lacks) instead of this one keeping commits the
    /// others refuse.
    async fn keep_what_was_applied(&self) -> Result<()> {
        let me = self.device_id();
        if !self.is_trusted(&me) {
            return Ok(());
        }
        let members = self.members();
        let held: BTreeMap<DeviceId, u64> = self.version_vector().await?.into_iter().collect();
        // Removed devices, and devices no longer admitted at all (the entry
        // that added them stopped counting) whose commits this replica
        // applied while they were: the latter get a removal too.
        let mut removed = members.removed.clone();
        for device in held.keys() {
            if !members.current.contains_key(device) && !removed.contains_key(device) {
                removed.insert(*device, crate::membership::Removal::default());
            }
        }
        if removed.is_empty() {
            return Ok(());
        }
        let forks = members.commit_forks.clone();
        for (device, removal) in removed {
            // Commits past the cut are never stored once the removal is
            // known, so what is held beyond it was applied before. Of a
            // device that forked, only what precedes the fork can stay.
            let held_up_to = held.get(&device).copied().unwrap_or(0);
            let commits = match forks.get(&device) {
                Some(fork) => held_up_to.min(fork.saturating_sub(1)),
                None => held_up_to,
            };
            let Some(cut) = self.commit_cut(device, commits).await? else {
                continue;
            };
            if removal.admits(cut.seq, &cut.hash) {
                continue;
            }
            tracing::info!(
                device = %device.short(), commits, commits_upto = removal.commits_upto,
                "keeping what this replica applied before the removal reached it"
            );
            let entries = self.inner.members.lock().await.log.entry_cut(&device);
            self.append_entry(MemberChange::Remove {
                device,
                entries,
                commits: Some(cut),
            })
            .await?;
        }
        Ok(())
    }

    /// Records evidence of commit equivocation found while ingesting: two
    /// different commits of one author under one number, both signed by it.
    /// The author is then removed on every replica that gets the entry,
    /// with nothing from that number on admitted.
    pub(crate) async fn record_forks(&self, forks: &[(SignedCommit, SignedCommit)]) -> Result<()> {
        if forks.is_empty() || !self.is_trusted(&self.device_id()) {
            return Ok(());
        }
        for (held, received) in forks {
            let Some((device, seq)) = held.author_seq() else {
                continue;
            };
            if self
                .members()
                .commit_forks
                .get(&device)
                .is_some_and(|fork| *fork <= seq)
            {
                continue;
            }
            let cut = |c: &SignedCommit| CommitCut {
                seq,
                hash: c.hash(),
                signature: c.signature,
            };
            tracing::warn!(
                store = %self.inner.name, device = %device.short(), seq,
                "a device signed two different commits under one number: removed"
            );
            self.append_entry(MemberChange::Fork {
                device,
                a: cut(held),
                b: cut(received),
            })
            .await?;
        }
        Ok(())
    }

    /// The proof that `device` wrote its commit `seq`, from the change log.
    async fn commit_cut(&self, device: DeviceId, seq: u64) -> Result<Option<CommitCut>> {
        if seq == 0 {
            return Ok(None);
        }
        let Some(signed) = self.bound().backend.get_commit(device, seq).await? else {
            return Ok(None);
        };
        Ok(Some(CommitCut {
            seq,
            hash: signed.hash(),
            signature: signed.signature,
        }))
    }

    /// Stores `log`, derives the membership again and tells P2P nodes.
    async fn replace_log(
        &self,
        state: &mut MemberState,
        log: MembershipLog,
    ) -> Result<MembershipUpdate> {
        self.inner
            .raw_backend
            .write(WriteBatch {
                meta: vec![(MetaKey::Membership, log.to_bytes()?)],
                ..WriteBatch::default()
            })
            .await?;
        let before = self.members();
        let after = self.install_log(state, log);
        let update = diff(&before, &after);
        for device in &update.added {
            tracing::info!(store = %self.inner.name, device = %device.short(), "device joined the store");
        }
        for device in &update.removed {
            tracing::info!(store = %self.inner.name, device = %device.short(), "device removed from the store");
        }
        self.notify_commits();
        Ok(update)
    }

    /// Takes up what other handles on shared storage (other tabs of this
    /// device) stored since this one opened: the membership they merged.
    /// A store that another tab joined to another store id cannot be
    /// followed in place: `STORE_REPLACED` says to open it again.
    pub(crate) async fn refresh_from_shared_storage(&self) -> Result<()> {
        let bound = self.bound();
        if !bound.backend.shared() {
            return Ok(());
        }
        let meta = self.inner.raw_backend.load_meta().await?;
        if meta.store_id.is_some_and(|id| id != bound.store_id) {
            return Err(Error::StoreReplaced);
        }
        let Some(bytes) = meta.entries.get(&MetaKey::Membership) else {
            return Ok(());
        };
        let stored = MembershipLog::from_bytes(bytes)
            .map_err(|e| StorageError::Corrupt(format!("membership: {e}")))?;
        let mut state = self.inner.members.lock().await;
        if stored.digest() != state.digest {
            let mut merged = state.log.clone();
            merged.merge(&stored.to_wire())?;
            self.install_log(&mut state, merged);
        }
        Ok(())
    }

    /// Makes `log` the membership in memory: its digest, and the members it
    /// derives for quick checks.
    fn install_log(&self, state: &mut MemberState, log: MembershipLog) -> Arc<Members> {
        let members = Arc::new(log.members());
        state.digest = log.digest();
        state.log = log;
        *self
            .inner
            .members_now
            .write()
            .unwrap_or_else(|p| p.into_inner()) = members.clone();
        members
    }

    /// Signs an entry of this device and adds it.
    async fn append_entry(&self, change: MemberChange) -> Result<MembershipUpdate> {
        let mut state = self.inner.members.lock().await;
        let last = state.log.entries().map(|e| e.hlc).max().unwrap_or_default();
        let now = Hlc::from_millis((self.inner.wall_clock)());
        let mut log = state.log.clone();
        log.append(&self.inner.device, now.max(last.plus(1)), change)?;
        self.replace_log(&mut state, log).await
    }

    /// Adds `device` to the membership (pairing does this once the code
    /// was proven).
    pub(crate) async fn add_member(&self, device: DeviceId, label: &str) -> Result<()> {
        self.check_open()?;
        if self.members().removed.contains_key(&device) {
            return Err(Error::NotTrusted(format!(
                "device {} was removed from this store; it must pair with a new identity",
                device.short()
            )));
        }
        if self.is_trusted(&device) {
            return Ok(());
        }
        let label: String = label
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= crate::membership::MAX_LABEL_BYTES)
            .map(|(_, c)| c)
            .collect();
        self.append_entry(MemberChange::Add { device, label })
            .await?;
        Ok(())
    }

    /// Removes `device` from the membership on every replica: its later
    /// commits and entries are refused everywhere, and an encrypted store
    /// moves to a new data key that only the remaining members receive
    /// (sealed to each of them), so the device cannot read what is written
    /// afterwards. P2P nodes close its connections.
    ///
    /// The removal entry is the durable intent: if the process stops before
    /// the new key is recorded, the store finishes the revocation when it
    /// opens again. Revoking a device already removed finishes what is left
    /// and succeeds.
    pub async fn revoke(&self, device: DeviceId) -> Result<()> {
        self.check_open()?;
        if device == self.device_id() {
            return Err(Error::InvalidOptions(
                "a device cannot revoke itself; revoke it from another member".into(),
            ));
        }
        let members = self.members();
        if members.removed.contains_key(&device) {
            return self.resume_revocations().await;
        }
        if !members.is_member(&device) {
            return Err(Error::NotTrusted(format!(
                "device {} is not a member of this store",
                device.short()
            )));
        }
        let head = self
            .version_vector()
            .await?
            .into_iter()
            .find(|(author, _)| *author == device)
            .map_or(0, |(_, seq)| seq);
        let commits = self.commit_cut(device, head).await?;
        let entries = self.inner.members.lock().await.log.entry_cut(&device);
        self.append_entry(MemberChange::Remove {
            device,
            entries,
            commits,
        })
        .await?;
        crate::platform::fault_point("revoke:removed");
        self.resume_revocations().await
    }

    /// Finishes this device's revocations: a removal it signed with no key
    /// epoch of its own recorded after it gets a new data key (rotation),
    /// recorded and granted to the remaining members. Runs when the store
    /// opens and after every revocation; does nothing on a store without
    /// encryption.
    pub(crate) async fn resume_revocations(&self) -> Result<()> {
        let Some(sealed) = self.bound().sealed.clone() else {
            return Ok(());
        };
        let me = self.device_id();
        if !self.is_trusted(&me) {
            return Ok(());
        }
        let pending = {
            let state = self.inner.members.lock().await;
            let mut last_removal = 0;
            let mut last_key = 0;
            for entry in state.log.entries().filter(|e| e.author == me) {
                match entry.change {
                    MemberChange::Remove { .. } => last_removal = last_removal.max(entry.seq),
                    MemberChange::Key { .. } => last_key = last_key.max(entry.seq),
                    MemberChange::Add { .. }
                    | MemberChange::KeyCopy { .. }
                    | MemberChange::Fork { .. } => {}
                }
            }
            last_removal > last_key
        };
        if !pending {
            self.record_keys().await?;
            return self.rotate_if_exposed().await;
        }
        if sealed.keyring().current().0 > self.members().epoch {
            // The rotation began (its key is saved) but was not recorded.
            tracing::info!(store = %self.inner.name, "recording the key of an interrupted revocation");
            return self.record_keys().await;
        }
        tracing::info!(store = %self.inner.name, "rotating the store key after a removal");
        self.crypto().rotate_key(|_| {}).await?;
        Ok(())
    }

    /// Records in the membership log the key epochs this device holds and
    /// the log lacks (each sealed to every other member), and grants the
    /// current epoch's key to members that lack it. Encrypted stores only.
    pub(crate) async fn record_keys(&self) -> Result<()> {
        let Some(sealed) = self.bound().sealed.clone() else {
            return Ok(());
        };
        let me = self.device_id();
        if !self.is_trusted(&me) {
            // A removed device's entries would count for nothing.
            return Ok(());
        }
        let store = self.store_id();
        let keyring = sealed.keyring();
        // Epochs this device holds and the log lacks, in order.
        loop {
            let members = self.members();
            let Some(next) = members.epoch.checked_add(1) else {
                break;
            };
            if next > keyring.current().0 {
                break;
            }
            let Ok(key) = keyring.key(next) else { break };
            let to: Vec<DeviceId> = members
                .current
                .keys()
                .filter(|d| **d != me)
                .copied()
                .collect();
            tracing::info!(store = %self.inner.name, epoch = next, "recording a key epoch for the members");
            self.append_entry(key_change(store, next, key, &to)).await?;
            crate::platform::fault_point("keys:recorded");
            if self.members().epoch < next {
                // Not recorded after all (it cannot count): stop here.
                break;
            }
        }
        // Recorded keys this device holds that some member lacks.
        let members = self.members();
        for (epoch, commitment, lacking) in members.lacking_grants(&me) {
            let held = keyring
                .keys_of(epoch)
                .into_iter()
                .find(|k| key_commitment(store, epoch, k.as_bytes()) == commitment);
            let Some(key) = held else { continue };
            let change = key_change(store, epoch, key, &lacking);
            if matches!(&change, MemberChange::Key { grants, .. } if grants.is_empty()) {
                // Only members the key cannot be sealed to.
                continue;
            }
            tracing::info!(store = %self.inner.name, epoch, to = lacking.len(), "granting a key to members that lack it");
            self.append_entry(change).await?;
        }
        // Keys this device holds that the log does not know (granted by a
        // device whose entry no longer counts, say): copied to the members,
        // who may hold commits sealed under them.
        let to: Vec<DeviceId> = self
            .members()
            .current
            .keys()
            .filter(|d| **d != me)
            .copied()
            .collect();
        if to.is_empty() {
            return Ok(());
        }
        for epoch in keyring.epochs().filter(|e| *e > 0).collect::<Vec<_>>() {
            for key in keyring.keys_of(epoch) {
                let commitment = key_commitment(store, epoch, key.as_bytes());
                if self.members().knows_key(epoch, &commitment) {
                    continue;
                }
                let MemberChange::Key { grants, .. } = key_change(store, epoch, key, &to) else {
                    continue;
                };
                if grants.is_empty() {
                    continue;
                }
                tracing::info!(store = %self.inner.name, epoch, "copying a key the log does not record to the members");
                self.append_entry(MemberChange::KeyCopy {
                    epoch,
                    commitment,
                    grants,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Moves to a new data key when a removed device may hold the one this
    /// device writes under (two members rotated at once while one of them
    /// removed a device the other still granted its key to; or a key that
    /// came from a device removed since). Only a current member does.
    async fn rotate_if_exposed(&self) -> Result<()> {
        let Some(sealed) = self.bound().sealed.clone() else {
            return Ok(());
        };
        let me = self.device_id();
        let members = self.members();
        if !members.is_member(&me) || members.removed.is_empty() {
            return Ok(());
        }
        let keyring = sealed.keyring();
        let (epoch, key) = keyring.current();
        let commitment = key_commitment(self.store_id(), epoch, key.as_bytes());
        let exposed =
            self.inner
                .members
                .lock()
                .await
                .log
                .exposed(epoch, &commitment, &members.removed);
        if exposed {
            tracing::info!(store = %self.inner.name, epoch, "a removed device may hold the current key: rotating");
            self.crypto().rotate_key(|_| {}).await?;
        }
        Ok(())
    }

    /// Adds to this device's keyring the epochs granted to it: the winning
    /// key of each epoch, and the losing keys of forked epochs (to read
    /// what was sealed under them). A key whose commitment does not match
    /// is refused.
    async fn take_key_grants(&self) -> Result<()> {
        let Some(sealed) = self.bound().sealed.clone() else {
            return Ok(());
        };
        let me = self.device_id();
        let store = self.store_id();
        let members = self.members();
        let mut keyring = sealed.keyring();
        let mut learnt = false;
        let mut refused_current = false;
        for (epoch, commitment, winner, author, grant) in members.grants_for(&me) {
            let current = winner && epoch == members.epoch;
            let key = match open_as_device(
                &self.inner.device,
                &grant_context(store, epoch, &me),
                &grant,
            ) {
                Ok(bytes) if bytes.len() == 32 => {
                    let mut raw = Zeroizing::new([0u8; 32]);
                    raw.copy_from_slice(&bytes);
                    DataKey::from_bytes(*raw)
                }
                _ => {
                    tracing::warn!(epoch, from = %author.short(), "a key grant does not open");
                    refused_current |= current;
                    continue;
                }
            };
            if key_commitment(store, epoch, key.as_bytes()) != commitment {
                tracing::warn!(epoch, from = %author.short(), "a key grant is not the key its entry commits to");
                refused_current |= current;
                continue;
            }
            let changed = if winner {
                keyring.adopt(epoch, key)
            } else {
                keyring.keep_alternate(epoch, key)
            };
            if changed {
                learnt = true;
                tracing::info!(store = %self.inner.name, epoch, winner, from = %author.short(), "received a data key");
            }
        }
        if learnt {
            self.crypto().adopt_keyring(&sealed, keyring).await?;
        }
        // The current key reached this device only as a bad grant (a member
        // gone bad sealed another key to it): a new epoch, made here and
        // granted to every member, replaces it.
        let holds_current = members.epochs.get(&members.epoch).is_none_or(|recorded| {
            sealed
                .keyring()
                .keys_of(members.epoch)
                .into_iter()
                .any(|k| key_commitment(store, members.epoch, k.as_bytes()) == recorded.commitment)
        });
        if refused_current && !holds_current && members.is_member(&me) {
            tracing::warn!(store = %self.inner.name, epoch = members.epoch, "the current key was granted to this device wrongly: rotating");
            self.crypto().rotate_key(|_| {}).await?;
        }
        Ok(())
    }

    /// Adds `device` to the store's membership and returns everything it
    /// needs to join ([`Store::join`]): the store id, the membership and,
    /// for an encrypted store, the keyring **in the clear**. Pairing does
    /// this under a key agreed with the code; hand a `Welcome` over only
    /// through a channel as confidential and authenticated as that.
    pub async fn admit_device(&self, device: DeviceId, label: &str) -> Result<Welcome> {
        self.add_member(device, label).await?;
        let keyring = self
            .bound()
            .sealed
            .as_ref()
            .map(|s| s.keyring().to_bytes().map(|b| b.to_vec()))
            .transpose()?;
        Ok(Welcome {
            store: self.store_id(),
            membership: self.membership().await,
            keyring,
        })
    }

    /// Joins the store that admitted this device ([`Store::admit_device`],
    /// which pairing runs): adopts its id, membership and keys. What this
    /// store held before is kept: its records, keys and events are written
    /// again, as this device's commits in the joined store (conflicts then
    /// resolve by the store's strategy). Joining the store it is already a
    /// member of merges the membership. A store that holds other devices'
    /// commits (it joined another store before) cannot join a second one.
    pub async fn join(&self, welcome: Welcome) -> Result<()> {
        self.check_open()?;
        let log = MembershipLog::from_wire(&welcome.membership)?;
        let me = self.device_id();
        if log.store() != welcome.store || !log.members().is_member(&me) {
            return Err(Error::PairingFailed(
                "the peer's welcome does not make this device a member".into(),
            ));
        }
        let bound = self.bound();
        let founder = self.inner.members.lock().await.log.founder();
        if bound.store_id == welcome.store && founder == log.founder() {
            self.merge_membership(&welcome.membership).await?;
            return Ok(());
        }
        let carried = self.own_writes(&bound).await?;
        let keyring = match (&welcome.keyring, &bound.sealed) {
            (Some(bytes), _) => {
                let keyring = Keyring::from_bytes(bytes)?;
                if keyring.store() != welcome.store {
                    return Err(Error::PairingFailed(
                        "the keyring is of another store".into(),
                    ));
                }
                Some(keyring)
            }
            (None, Some(_)) => {
                return Err(Error::PairingFailed(
                    "this store is encrypted and the peer's is not".into(),
                ))
            }
            (None, None) => None,
        };
        let raw = self.inner.raw_backend.clone();
        let key_store = self.inner.key_store.clone();
        let name = self.inner.name.clone();
        let mut state = self.inner.members.lock().await;
        self.inner
            .writer
            .exclusive_then_reload(async {
                let mut meta = vec![(MetaKey::Membership, log.to_bytes()?)];
                if let Some(keyring) = &keyring {
                    key_store.save_keyring(keyring).await?;
                    meta.push((
                        MetaKey::SealedKeyring,
                        super::crypto::seal_keyring(keyring)?,
                    ));
                }
                raw.write(WriteBatch {
                    store_id: Some(welcome.store),
                    adopt_store_id: true,
                    // What it held is written again below, under the new id.
                    clear: carried.is_some(),
                    meta,
                    ..WriteBatch::default()
                })
                .await?;
                let sealed = match keyring {
                    Some(keyring) => {
                        #[allow(clippy::arc_with_non_send_sync)]
                        let sealed = Arc::new(
                            SealedStorage::new(raw.clone(), keyring)?.reloading_from(key_store),
                        );
                        Some(sealed)
                    }
                    None => None,
                };
                let backend = match &sealed {
                    Some(s) => s.clone() as Arc<dyn StorageBackend>,
                    None => raw.clone(),
                };
                #[allow(clippy::arc_with_non_send_sync)]
                let bound = Arc::new(Bound {
                    store_id: welcome.store,
                    backend,
                    sealed,
                });
                *self.inner.bound.write().unwrap_or_else(|p| p.into_inner()) = bound;
                Ok::<(), Error>(())
            })
            .await?;
        self.install_log(&mut state, log);
        drop(state);
        tracing::info!(store = %name, id = %welcome.store, "joined the store by pairing");
        if let Some(intents) = carried {
            let count = intents.len();
            for chunk in intents.chunks(CARRY_PER_COMMIT) {
                self.write(chunk.to_vec()).await?;
            }
            tracing::info!(store = %name, count, "wrote what this device held again in the joined store");
        }
        Ok(())
    }

    /// What this store holds, as this device's writes (`None` when it holds
    /// nothing): folded from its own commits (the change log names what
    /// encrypted rows hide). A store holding other devices' commits is
    /// refused: they cannot move to another store under their authors'
    /// signatures.
    async fn own_writes(&self, bound: &Bound) -> Result<Option<Vec<Intent>>> {
        let me = self.device_id();
        let heads = bound.backend.version_vector().await?;
        if heads.is_empty() {
            return Ok(None);
        }
        if heads.iter().any(|(author, _)| *author != me) {
            return Err(Error::PairingFailed(format!(
                "store \"{}\" holds other devices' commits (it joined another store before); \
                 pair a new store instead",
                self.inner.name
            )));
        }
        let keyring = bound.sealed.as_ref().map(|s| s.keyring());
        let mut ops = Vec::new();
        for signed in bound.backend.commits_after(me, 0, usize::MAX).await? {
            let commit =
                Commit::verify(signed, bound.store_id, &self.inner.limits, keyring.as_ref())
                    .map_err(|e| StorageError::Corrupt(format!("own commit: {e}")))?;
            ops.extend(commit.body.ops);
        }
        Ok(Some(fold_into_writes(ops)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_value_that_does_not_parse_is_damage_not_a_deletion() {
        let put = |value: &str| Op::RecordPut {
            collection: "notes".into(),
            id: "n1".into(),
            value: value.into(),
            base: None,
        };
        let writes = fold_into_writes(vec![put(r#"{"a":1}"#)]).expect("folds");
        assert_eq!(writes.len(), 1);
        let error = fold_into_writes(vec![put("{not json")]).expect_err("damaged");
        assert_eq!(error.code(), "STORAGE_CORRUPT");
        let patch = Op::RecordPatch {
            collection: "notes".into(),
            id: "n1".into(),
            set: vec![("a".into(), "{not json".into())],
            unset: vec![],
        };
        let error = fold_into_writes(vec![put(r#"{"a":1}"#), patch]).expect_err("damaged");
        assert_eq!(error.code(), "STORAGE_CORRUPT");
    }
}
