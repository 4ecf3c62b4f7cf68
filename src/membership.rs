//! Membership: the devices trusted to sync a store, as a signed,
//! replicated log of changes (DESIGN.md section 4).
//!
//! The log starts from a **founder** (the device that created the store;
//! a device that pairs learns it through the PAKE-authenticated pairing
//! exchange, never from the network). Every entry is signed by its author
//! and names the store; it adds a device, removes one, or hands the current
//! members the data key of a new epoch (sealed to each of them). Replicas
//! exchange the entries they lack; membership is a pure function of the
//! set of entries ([`MembershipLog::members`]), so replicas holding the
//! same entries agree whatever order they arrived in.
//!
//! Rules of that function:
//! - an entry counts when its author is admitted (the founder, or added by
//!   an entry that counts) and, if the author was removed, is within the
//!   removal's cut of the author's entries;
//! - removal is final: a removed device is never a member again (it must
//!   pair as a new device, with a new key);
//! - a removal records how far the remover had seen the removed device
//!   (its commits and its entries): the removed device's later commits and
//!   entries are refused everywhere, whatever their clock says, so
//!   backdating does not help it. Removals of one device keep the highest
//!   cut: a replica that had applied more of the device's commits before
//!   it learnt of the removal records its own removal with its own cut
//!   (`Store::merge_membership` does), so every replica ends up accepting
//!   exactly the same commits of the removed device: what any member had
//!   before the removal reached it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::change::StoreId;
use crate::hlc::Hlc;
use crate::identity::{DeviceId, DeviceIdentity};

/// Encoding version of [`MemberEntry`].
pub const MEMBER_ENTRY_FORMAT: u8 = 1;
/// Most entries a membership log may hold (bounds what a peer can make us
/// store and recompute).
pub const MAX_MEMBER_ENTRIES: usize = 4_096;
/// Longest device label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

const SIGNING_DOMAIN: &[u8] = b"persist member entry v1\0";

/// What a membership entry changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Trust `device`.
    Add {
        /// The device (its Ed25519 public key, its PeerId).
        device: DeviceId,
        /// A name for people ("laptop"), at most [`MAX_LABEL_BYTES`].
        label: String,
    },
    /// Stop trusting `device`, keeping what it wrote before.
    Remove {
        /// The device.
        device: DeviceId,
        /// Its commits up to this sequence number stay valid.
        commits_upto: u64,
        /// Its membership entries up to this sequence number stay valid.
        entries_upto: u64,
    },
    /// The data key of a new epoch, sealed to each member (an encrypted
    /// store's rotation after a removal).
    Key {
        /// The epoch.
        epoch: u32,
        /// `(member, sealed key)` for every member at the time.
        grants: Vec<(DeviceId, Vec<u8>)>,
    },
}

/// The signed content of a membership entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// [`MEMBER_ENTRY_FORMAT`].
    pub format: u8,
    /// The store.
    pub store: StoreId,
    /// The device that wrote the entry.
    pub author: DeviceId,
    /// Per-author sequence number of membership entries, from 1.
    pub seq: u64,
    /// When (orders entries; never decides validity).
    pub hlc: Hlc,
    /// The change.
    pub change: MemberChange,
}

/// A membership entry as stored and sent: its encoding and signature.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SignedMemberEntry {
    /// `postcard` encoding of the [`MemberEntry`].
    #[serde(with = "crate::change::byte_buf")]
    pub body: Vec<u8>,
    /// Ed25519 signature of the author.
    #[serde(with = "crate::change::signature_bytes")]
    pub signature: [u8; 64],
}

/// Why a membership entry or log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// The bytes are not an entry of a known format.
    #[error("malformed membership entry: {0}")]
    Malformed(String),
    /// The signature does not verify under the author's key.
    #[error("membership entry signature does not verify")]
    BadSignature,
    /// The entry or log belongs to another store, or starts from another
    /// founder than this replica trusts.
    #[error("membership of another store or founder")]
    WrongStore,
    /// More entries than [`MAX_MEMBER_ENTRIES`].
    #[error("membership log too large")]
    TooLarge,
}

impl MemberError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            MemberError::Malformed(_) => "CHANGE_MALFORMED",
            MemberError::BadSignature => "SIGNATURE_INVALID",
            MemberError::WrongStore => "WRONG_STORE",
            MemberError::TooLarge => "VALUE_TOO_LARGE",
        }
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(body));
    message
}

impl MemberEntry {
    /// Encodes and signs the entry (`identity` must be its author).
    pub fn sign(&self, identity: &DeviceIdentity) -> SignedMemberEntry {
        debug_assert_eq!(self.author, identity.device_id());
        // Integers, keys and short strings always encode.
        let body = postcard::to_stdvec(self).unwrap_or_default();
        let signature = identity.sign(&signing_message(&body));
        SignedMemberEntry { body, signature }
    }
}

impl SignedMemberEntry {
    /// Decodes the entry and checks its format, store and signature.
    pub fn verify(&self, store: StoreId) -> Result<MemberEntry, MemberError> {
        let entry: MemberEntry =
            postcard::from_bytes(&self.body).map_err(|e| MemberError::Malformed(e.to_string()))?;
        if entry.format != MEMBER_ENTRY_FORMAT {
            return Err(MemberError::Malformed(format!(
                "unknown format {}",
                entry.format
            )));
        }
        if entry.store != store {
            return Err(MemberError::WrongStore);
        }
        if entry.seq == 0 {
            return Err(MemberError::Malformed("sequence number 0".into()));
        }
        if let MemberChange::Add { label, .. } = &entry.change {
            if label.len() > MAX_LABEL_BYTES {
                return Err(MemberError::Malformed("label too long".into()));
            }
        }
        if !entry
            .author
            .verify(&signing_message(&self.body), &self.signature)
        {
            return Err(MemberError::BadSignature);
        }
        Ok(entry)
    }
}

/// A store's membership log: its founder and every entry, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipLog {
    store: StoreId,
    founder: DeviceId,
    /// Verified entries by their signed form (a set: duplicates vanish).
    entries: BTreeMap<SignedMemberEntry, MemberEntry>,
}

/// The wire and storage form of a [`MembershipLog`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipWire {
    /// The store.
    pub store: StoreId,
    /// Its founder.
    pub founder: DeviceId,
    /// The signed entries.
    pub entries: Vec<SignedMemberEntry>,
}

/// Who is trusted, as derived from a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Current members with their labels (the founder's is empty).
    pub current: BTreeMap<DeviceId, String>,
    /// Removed devices with their cuts: (commits, entries) that stay valid.
    pub removed: BTreeMap<DeviceId, (u64, u64)>,
}

impl Members {
    /// True when a commit `seq` of `author` is acceptable: the author is a
    /// member, or was removed after writing it.
    pub fn admits_commit(&self, author: &DeviceId, seq: u64) -> bool {
        if let Some((commits_upto, _)) = self.removed.get(author) {
            return seq <= *commits_upto;
        }
        self.current.contains_key(author)
    }

    /// True when `device` is a current member.
    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.current.contains_key(device) && !self.removed.contains_key(device)
    }
}

impl MembershipLog {
    /// A log with only its founder.
    pub fn founded_by(store: StoreId, founder: DeviceId) -> MembershipLog {
        MembershipLog {
            store,
            founder,
            entries: BTreeMap::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> StoreId {
        self.store
    }

    /// The founder.
    pub fn founder(&self) -> DeviceId {
        self.founder
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True with no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, decoded.
    pub fn entries(&self) -> impl Iterator<Item = &MemberEntry> {
        self.entries.values()
    }

    /// A digest of the whole log (founder and entries): equal digests, equal
    /// logs. Peers compare it to know whether to send theirs.
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.store.as_bytes());
        hash.update(self.founder.as_bytes());
        for signed in self.entries.keys() {
            hash.update((signed.body.len() as u64).to_be_bytes());
            hash.update(&signed.body);
            hash.update(signed.signature);
        }
        hash.finalize().into()
    }

    /// The next sequence number of `author`'s entries.
    pub fn next_seq(&self, author: &DeviceId) -> u64 {
        self.entries
            .values()
            .filter(|e| &e.author == author)
            .map(|e| e.seq)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The highest entry sequence number of `author` held.
    pub fn last_seq(&self, author: &DeviceId) -> u64 {
        self.next_seq(author) - 1
    }

    /// Adds a verified entry (its signature checked by the caller through
    /// [`SignedMemberEntry::verify`]); false if it was already held.
    fn insert(
        &mut self,
        signed: SignedMemberEntry,
        entry: MemberEntry,
    ) -> Result<bool, MemberError> {
        if self.entries.contains_key(&signed) {
            return Ok(false);
        }
        if self.entries.len() >= MAX_MEMBER_ENTRIES {
            return Err(MemberError::TooLarge);
        }
        self.entries.insert(signed, entry);
        Ok(true)
    }

    /// Verifies and adds one entry this device signed or received.
    pub fn add(&mut self, signed: SignedMemberEntry) -> Result<bool, MemberError> {
        let entry = signed.verify(self.store)?;
        self.insert(signed, entry)
    }

    /// Merges another replica's log: it must name the same store and
    /// founder; every entry is verified (a bad one refuses the whole log,
    /// nothing is added). Returns how many entries were new.
    pub fn merge(&mut self, other: &MembershipWire) -> Result<usize, MemberError> {
        if other.store != self.store || other.founder != self.founder {
            return Err(MemberError::WrongStore);
        }
        if other.entries.len() > MAX_MEMBER_ENTRIES {
            return Err(MemberError::TooLarge);
        }
        let verified: Vec<(SignedMemberEntry, MemberEntry)> = other
            .entries
            .iter()
            .filter(|s| !self.entries.contains_key(*s))
            .map(|s| s.verify(self.store).map(|e| (s.clone(), e)))
            .collect::<Result<_, _>>()?;
        let mut added = 0;
        for (signed, entry) in verified {
            added += usize::from(self.insert(signed, entry)?);
        }
        Ok(added)
    }

    /// The wire form.
    pub fn to_wire(&self) -> MembershipWire {
        MembershipWire {
            store: self.store,
            founder: self.founder,
            entries: self.entries.keys().cloned().collect(),
        }
    }

    /// Reads a stored or received log, verifying every entry.
    pub fn from_wire(wire: &MembershipWire) -> Result<MembershipLog, MemberError> {
        let mut log = MembershipLog::founded_by(wire.store, wire.founder);
        log.merge(wire)?;
        Ok(log)
    }

    /// Encodes for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.to_wire()).unwrap_or_default()
    }

    /// Decodes a stored log.
    pub fn from_bytes(bytes: &[u8]) -> Result<MembershipLog, MemberError> {
        let wire: MembershipWire =
            postcard::from_bytes(bytes).map_err(|e| MemberError::Malformed(e.to_string()))?;
        MembershipLog::from_wire(&wire)
    }

    /// The key grants addressed to `device`: `(epoch, author, sealed key)`
    /// from entries that count.
    pub fn grants_for(&self, device: &DeviceId) -> Vec<(u32, DeviceId, Vec<u8>)> {
        let counted = self.counted();
        counted
            .iter()
            .filter_map(|e| match &e.change {
                MemberChange::Key { epoch, grants } => grants
                    .iter()
                    .find(|(to, _)| to == device)
                    .map(|(_, sealed)| (*epoch, e.author, sealed.clone())),
                _ => None,
            })
            .collect()
    }

    /// Who is trusted: a pure function of the founder and the set of
    /// entries (see the module's rules).
    pub fn members(&self) -> Members {
        let (admitted, removed) = self.derive();
        let mut current = BTreeMap::new();
        for (device, label) in admitted {
            if !removed.contains_key(&device) {
                current.insert(device, label);
            }
        }
        Members { current, removed }
    }

    /// Entries that count, in (clock, author, sequence) order.
    fn counted(&self) -> Vec<&MemberEntry> {
        let (admitted, removed) = self.derive();
        self.sorted()
            .into_iter()
            .filter(|e| counts(e, &admitted, &removed))
            .collect()
    }

    fn sorted(&self) -> Vec<&MemberEntry> {
        let mut sorted: Vec<&MemberEntry> = self.entries.values().collect();
        sorted.sort_by_key(|e| (e.hlc, e.author, e.seq));
        sorted
    }

    /// Admitted devices (with labels) and removal cuts, at a fixed point:
    /// cuts decide which entries count, and counted entries decide the
    /// cuts. Bounded (each round either stops or changes the cuts; a
    /// malicious history stops at the bound, the same on every replica).
    #[allow(clippy::type_complexity)]
    fn derive(&self) -> (BTreeMap<DeviceId, String>, BTreeMap<DeviceId, (u64, u64)>) {
        let sorted = self.sorted();
        let mut removed: BTreeMap<DeviceId, (u64, u64)> = BTreeMap::new();
        let mut admitted = BTreeMap::from([(self.founder, String::new())]);
        for _ in 0..=sorted.len().min(64) {
            admitted = BTreeMap::from([(self.founder, String::new())]);
            // Admission spreads along Add entries whatever their clocks say
            // (a device added later by clock may have added others).
            let mut grew = true;
            while grew {
                grew = false;
                for entry in &sorted {
                    if let MemberChange::Add { device, label } = &entry.change {
                        if !admitted.contains_key(device) && counts(entry, &admitted, &removed) {
                            admitted.insert(*device, label.clone());
                            grew = true;
                        }
                    }
                }
            }
            let mut cuts: BTreeMap<DeviceId, (u64, u64)> = BTreeMap::new();
            for entry in &sorted {
                if let MemberChange::Remove {
                    device,
                    commits_upto,
                    entries_upto,
                } = &entry.change
                {
                    if counts(entry, &admitted, &removed) {
                        let cut = cuts
                            .entry(*device)
                            .or_insert((*commits_upto, *entries_upto));
                        *cut = (cut.0.max(*commits_upto), cut.1.max(*entries_upto));
                    }
                }
            }
            if cuts == removed {
                break;
            }
            removed = cuts;
        }
        (admitted, removed)
    }
}

fn counts(
    entry: &MemberEntry,
    admitted: &BTreeMap<DeviceId, String>,
    removed: &BTreeMap<DeviceId, (u64, u64)>,
) -> bool {
    admitted.contains_key(&entry.author)
        && removed
            .get(&entry.author)
            .is_none_or(|(_, entries_upto)| entry.seq <= *entries_upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceIdentity {
        DeviceIdentity::from_secret(&[n; 32])
    }

    fn entry(
        log: &MembershipLog,
        author: &DeviceIdentity,
        hlc: u64,
        change: MemberChange,
    ) -> SignedMemberEntry {
        MemberEntry {
            format: MEMBER_ENTRY_FORMAT,
            store: log.store(),
            author: author.device_id(),
            seq: log.next_seq(&author.device_id()),
            hlc: Hlc::from_u64(hlc),
            change,
        }
        .sign(author)
    }

    fn add(d: &DeviceIdentity) -> MemberChange {
        MemberChange::Add {
            device: d.device_id(),
            label: String::new(),
        }
    }

    fn remove(d: &DeviceIdentity, commits: u64, entries: u64) -> MemberChange {
        MemberChange::Remove {
            device: d.device_id(),
            commits_upto: commits,
            entries_upto: entries,
        }
    }

    #[test]
    fn pairing_a_b_and_a_c_makes_b_and_c_trust_each_other() {
        let (a, b, c) = (device(1), device(2), device(3));
        let mut log = MembershipLog::founded_by(StoreId::from_bytes([7; 16]), a.device_id());
        let e = entry(&log, &a, 10, add(&b));
        log.add(e).expect("add b");
        let e = entry(&log, &a, 11, add(&c));
        log.add(e).expect("add c");
        let members = log.members();
        for d in [&a, &b, &c] {
            assert!(members.is_member(&d.device_id()));
        }
        // B's replica, holding the same entries, agrees.
        let copy = MembershipLog::from_wire(&log.to_wire()).expect("copy");
        assert_eq!(copy.members(), members);
        assert_eq!(copy.digest(), log.digest());
    }

    #[test]
    fn strangers_forged_and_foreign_entries_count_for_nothing() {
        let (a, b, x) = (device(1), device(2), device(9));
        let store = StoreId::from_bytes([7; 16]);
        let mut log = MembershipLog::founded_by(store, a.device_id());
        // A stranger adding itself: verified (it signed it) but not counted.
        let e = entry(&log, &x, 5, add(&x));
        log.add(e).expect("a signed entry is kept");
        assert!(!log.members().is_member(&x.device_id()));
        // A flipped byte anywhere: refused.
        let good = entry(&log, &a, 6, add(&b));
        for i in 0..good.body.len() {
            let mut bad = good.clone();
            bad.body[i] ^= 0x01;
            assert!(log.clone().add(bad).is_err(), "byte {i}");
        }
        let mut bad = good.clone();
        bad.signature[0] ^= 1;
        assert_eq!(log.clone().add(bad), Err(MemberError::BadSignature));
        // Another store's entry: refused.
        let other = MembershipLog::founded_by(StoreId::from_bytes([8; 16]), a.device_id());
        let foreign = entry(&other, &a, 6, add(&b));
        assert_eq!(log.clone().add(foreign), Err(MemberError::WrongStore));
        // A log from another founder: refused whole.
        let mut wire = log.to_wire();
        wire.founder = x.device_id();
        assert_eq!(log.clone().merge(&wire), Err(MemberError::WrongStore));
    }

    #[test]
    fn removal_is_final_and_cuts_what_the_removed_device_does_later() {
        let (a, b, c, d) = (device(1), device(2), device(3), device(4));
        let mut log = MembershipLog::founded_by(StoreId::from_bytes([7; 16]), a.device_id());
        let e = entry(&log, &a, 10, add(&b));
        log.add(e).expect("add");
        // B adds C (its entry 1), then A removes B having seen 1 entry and
        // 5 commits of B.
        let e = entry(&log, &b, 11, add(&c));
        log.add(e).expect("add");
        let e = entry(&log, &a, 12, remove(&b, 5, 1));
        log.add(e).expect("remove");
        // B, removed, adds D backdated before its removal: entry 2 > cut.
        let e = entry(&log, &b, 1, add(&d));
        log.add(e).expect("kept, not counted");
        let m = log.members();
        assert!(!m.is_member(&b.device_id()));
        assert!(m.is_member(&c.device_id()), "what B did before stays");
        assert!(!m.is_member(&d.device_id()), "what B did after does not");
        assert!(m.admits_commit(&b.device_id(), 5));
        assert!(!m.admits_commit(&b.device_id(), 6));
        // Re-adding B does not bring it back.
        let e = entry(&log, &a, 20, add(&b));
        log.add(e).expect("add again");
        assert!(!log.members().is_member(&b.device_id()));
    }

    #[test]
    fn concurrent_removals_agree_in_any_order() {
        let (a, b, c) = (device(1), device(2), device(3));
        let store = StoreId::from_bytes([7; 16]);
        let mut base = MembershipLog::founded_by(store, a.device_id());
        let e = entry(&base, &a, 1, add(&b));
        base.add(e).expect("add");
        let e = entry(&base, &a, 2, add(&c));
        base.add(e).expect("add");
        // On two partitions: A removes C (cut 3), B removes C (cut 7) and
        // C removes B.
        let e1 = entry(&base, &a, 5, remove(&c, 3, 0));
        let e2 = entry(&base, &b, 5, remove(&c, 7, 0));
        let e3 = entry(&base, &c, 5, remove(&b, 2, 0));
        let orders = [[&e1, &e2, &e3], [&e3, &e2, &e1], [&e2, &e3, &e1]];
        let results: Vec<Members> = orders
            .iter()
            .map(|order| {
                let mut log = base.clone();
                for e in order {
                    log.add((*e).clone()).expect("add");
                }
                log.members()
            })
            .collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(results[0].removed[&c.device_id()], (7, 0), "highest cut");
        assert!(results[0].is_member(&a.device_id()));
    }
}
