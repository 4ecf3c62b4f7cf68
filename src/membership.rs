//! Membership: the devices trusted to sync a store, as a signed,
//! replicated log of changes.
//!
//! The log starts from a **founder** (the device that created the store;
//! a device that pairs learns it through the PAKE-authenticated pairing
//! exchange, never from the network). Every entry is signed by its author,
//! names the store, and names the hash of its author's previous entry:
//! each author's entries form a hash chain. An entry adds a device,
//! removes one (with *cuts* that say how far the remover had seen it), or
//! records a new data-key epoch with a commitment to the key and the key
//! sealed to each member.
//!
//! Replicas exchange entries; who is a member is a pure function of the
//! founder and the *set* of entries held ([`MembershipLog::members`]), so
//! replicas holding the same entries agree whatever order they arrived in.
//! The rule and the argument that it is order-independent are in
//! [`derive`] and in `ARCHITECTURE.md`.
//!
//! This module does no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::change::StoreId;
use crate::hlc::Hlc;
use crate::identity::{DeviceId, DeviceIdentity};

mod derive;
#[cfg(test)]
mod tests;

pub use derive::{KeyEpoch, Members, Removal, SealedGrant};

/// Encoding version of [`MemberEntry`]. Version 1 (no hash chain, cuts as
/// bare numbers) is refused with [`MemberError::OldFormat`].
pub const MEMBER_ENTRY_FORMAT: u8 = 2;
/// Most entries of devices other than the founder a membership log may
/// hold (bounds what a peer can make us store and recompute), in two
/// halves: one for the devices the founder added, one for the devices
/// other members added. A member gone bad fills the second half through
/// throw-away devices it adds, but of the first only what one author may
/// take (half its entries, a quarter of its bytes), so the other devices
/// the founder added can still revoke it. The founder's own entries come
/// on top of both: however full the others made the log, the founder can
/// still revoke, rotate and pair.
pub const MAX_MEMBER_ENTRIES: usize = 4_096;
/// Most bytes (bodies and signatures) the entries of devices other than
/// the founder may take in all: room for about 140,000 key grants of
/// 115 bytes (a thousand members through 140 key rotations, made by
/// several devices: one device's share is smaller), and it keeps
/// a log a member gone bad fills with the largest `Key` entries (about
/// 300 KB each) within what one message carries, where 4,096 of them
/// would weigh over a gigabyte. The founder's entries come on top, as for
/// [`MAX_MEMBER_ENTRIES`], and the two halves are the same.
pub const MAX_MEMBER_BYTES: usize = 16 << 20;
/// What one [`Tier`] may hold: half the entries and half the bytes.
const TIER_ROOM: Weight = Weight {
    entries: MAX_MEMBER_ENTRIES / 2,
    bytes: MAX_MEMBER_BYTES / 2,
};
/// What one author other than the founder may hold: every entry it can
/// sign (two versions of each number, so a second version fits in its
/// own room), in a quarter of a tier's bytes: no single device fills its
/// tier. That is about 18,000 key grants of 115 bytes per device (18 key
/// rotations it makes at a thousand members, 180 at a hundred).
const AUTHOR_ROOM: Weight = Weight {
    entries: 2 * MAX_ENTRIES_PER_AUTHOR as usize,
    bytes: MAX_MEMBER_BYTES / 8,
};
/// What the entries of devices other than the founder may hold in all.
const ALL_ROOM: Weight = Weight {
    entries: MAX_MEMBER_ENTRIES,
    bytes: MAX_MEMBER_BYTES,
};

/// Which half of the log's room an author's entries take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// A device an `Add` of the founder names.
    Founders = 0,
    /// A device only other members added.
    Others = 1,
}

impl Tier {
    /// The tier of `author`'s entries, given the devices the founder adds.
    fn of(founder_adds: &std::collections::BTreeSet<DeviceId>, author: &DeviceId) -> Tier {
        if founder_adds.contains(author) {
            Tier::Founders
        } else {
            Tier::Others
        }
    }
}

/// Entries and their bytes (bodies and signatures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Weight {
    entries: usize,
    bytes: usize,
}

impl Weight {
    /// This and one more entry of `bytes`.
    fn plus(self, bytes: usize) -> Weight {
        Weight {
            entries: self.entries.saturating_add(1),
            bytes: self.bytes.saturating_add(bytes),
        }
    }

    fn within(self, room: Weight) -> bool {
        self.entries <= room.entries && self.bytes <= room.bytes
    }
}

/// What the entries of devices other than the founder weigh: in all, per
/// [`Tier`], per author. An entry is taken only if all three stay within
/// their room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Usage {
    all: Weight,
    tiers: [Weight; 2],
    authors: BTreeMap<DeviceId, Weight>,
}

impl Usage {
    /// True when one more entry of `author` (in `tier`), of `bytes`, fits.
    fn fits(&self, author: &DeviceId, tier: Tier, bytes: usize) -> bool {
        let by_author = self.authors.get(author).copied().unwrap_or_default();
        self.all.plus(bytes).within(ALL_ROOM)
            && self.tiers[tier as usize].plus(bytes).within(TIER_ROOM)
            && by_author.plus(bytes).within(AUTHOR_ROOM)
    }

    /// Counts one more entry of `author` (in `tier`), of `bytes`.
    fn add(&mut self, author: &DeviceId, tier: Tier, bytes: usize) {
        self.all = self.all.plus(bytes);
        self.tiers[tier as usize] = self.tiers[tier as usize].plus(bytes);
        let by_author = self.authors.entry(*author).or_default();
        *by_author = by_author.plus(bytes);
    }

    /// Counts one entry of `author` (in `tier`), of `bytes`, less.
    fn remove(&mut self, author: &DeviceId, tier: Tier, bytes: usize) {
        let less = |weight: &mut Weight| {
            weight.entries = weight.entries.saturating_sub(1);
            weight.bytes = weight.bytes.saturating_sub(bytes);
        };
        less(&mut self.all);
        less(&mut self.tiers[tier as usize]);
        if let Some(by_author) = self.authors.get_mut(author) {
            less(by_author);
        }
    }

    /// [`Usage::fits`], then [`Usage::add`]: false (and nothing counted)
    /// when it does not fit.
    fn take(&mut self, author: &DeviceId, tier: Tier, bytes: usize) -> bool {
        let fits = self.fits(author, tier, bytes);
        if fits {
            self.add(author, tier, bytes);
        }
        fits
    }
}
/// Most entries a membership log holds in all: [`MAX_MEMBER_ENTRIES`] and
/// the founder's (two versions of each of its numbers, at most).
pub const MAX_LOG_ENTRIES: usize = MAX_MEMBER_ENTRIES + 2 * MAX_ENTRIES_PER_AUTHOR as usize;
/// Entry sequence numbers one author may use, at most. (A member gone bad
/// that adds throw-away devices can still fill the half of the log theirs
/// take: see [`MAX_MEMBER_ENTRIES`].)
pub const MAX_ENTRIES_PER_AUTHOR: u64 = 512;
/// Versions of one entry (author, number) held, at most: two prove an
/// equivocation, a third proves nothing more. The lowest hashes are kept,
/// so every replica keeps the same two.
const MAX_VERSIONS: usize = 2;
/// Longest device label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Most grants one key entry may carry.
pub const MAX_GRANTS: usize = 1_024;
/// Longest sealed key in a grant, in bytes.
pub const MAX_GRANT_BYTES: usize = 256;

const SIGNING_DOMAIN: &[u8] = b"persist member entry v2\0";
const KEY_COMMITMENT_DOMAIN: &[u8] = b"persist key commitment v1\0";

/// SHA-256 of an entry's encoded body: what the next entry of its author
/// and removal cuts name.
pub type EntryHash = [u8; 32];

/// How far a remover had seen the removed device's membership entries:
/// its entry `seq`, whose hash was `hash` (`seq` 0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryCut {
    /// The last entry seen (0: none).
    pub seq: u64,
    /// Its hash (zeros when `seq` is 0).
    pub hash: EntryHash,
}

impl EntryCut {
    /// No entry seen.
    pub const NONE: EntryCut = EntryCut {
        seq: 0,
        hash: [0; 32],
    };
}

/// How far a remover had seen the removed device's commits, with the
/// proof: the device's own signature over that commit's header (store,
/// author, sequence number, body hash). A cut therefore names a commit the
/// device really wrote; no member can raise it to a number of its choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCut {
    /// The commit's sequence number.
    pub seq: u64,
    /// SHA-256 of its encoded body ([`crate::change::SignedCommit::hash`]).
    pub hash: [u8; 32],
    /// The removed device's signature of that commit.
    #[serde(with = "crate::change::signature_bytes")]
    pub signature: [u8; 64],
}

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
    /// Stop trusting `device`, keeping what it wrote before the cuts.
    Remove {
        /// The device.
        device: DeviceId,
        /// Its membership entries up to this one stay valid.
        entries: EntryCut,
        /// Its commits up to this one stay valid (`None`: none).
        commits: Option<CommitCut>,
    },
    /// The data key of an epoch, sealed to members. `epoch` must be one
    /// more than an epoch the log already records (epoch 0 is the store's
    /// first key); `commitment` ([`key_commitment`]) lets every replica
    /// tell two different keys for one epoch apart without the key.
    Key {
        /// The epoch.
        epoch: u32,
        /// [`key_commitment`] of the key.
        commitment: [u8; 32],
        /// `(member, sealed key)`, at most [`MAX_GRANTS`].
        grants: Vec<(DeviceId, Vec<u8>)>,
    },
    /// Evidence that `device` signed two different commits under one
    /// sequence number: both commits' proofs (same number, different
    /// hashes, both signatures its own). Whoever records it, the device is
    /// removed everywhere with no commit at or after that number admitted.
    Fork {
        /// The device that equivocated.
        device: DeviceId,
        /// One commit.
        a: CommitCut,
        /// The other, under the same number.
        b: CommitCut,
    },
    /// A key this member holds that the log does not record for the
    /// members (a key another device made and granted while its entry
    /// counted, or the losing key of a fork), sealed to members so they
    /// can read what it sealed. Never a key to write under: it records no
    /// epoch and never wins one.
    KeyCopy {
        /// The epoch the key belongs to.
        epoch: u32,
        /// [`key_commitment`] of the key.
        commitment: [u8; 32],
        /// `(member, sealed key)`, at most [`MAX_GRANTS`].
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
    /// Hash of the author's entry `seq - 1` (zeros for the first).
    pub prev: EntryHash,
    /// When (orders labels; never decides validity).
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
    /// An entry of an earlier format (written by an earlier Persist).
    #[error("membership entry of format {0}: written by an earlier Persist; this store cannot be opened by this version")]
    OldFormat(u8),
    /// The signature does not verify under the author's key.
    #[error("membership entry signature does not verify")]
    BadSignature,
    /// The entry or log belongs to another store, or starts from another
    /// founder than this replica trusts.
    #[error("membership of another store or founder")]
    WrongStore,
    /// An entry of a device other than the founder, added on its own to a
    /// log full of such entries ([`MAX_MEMBER_ENTRIES`],
    /// [`MAX_MEMBER_BYTES`]), or a log of more than [`MAX_LOG_ENTRIES`]
    /// entries. (A merge takes what fits and counts the rest refused.)
    #[error("membership log too large")]
    TooLarge,
    /// An entry this device was about to sign is not allowed (a key that
    /// is not a valid device key, an epoch that is not the next one).
    #[error("refused membership change: {0}")]
    Refused(String),
    /// An entry whose author no entry of the log adds, or past the
    /// author's budget.
    #[error("membership entry not admitted: {0}")]
    NotAdmitted(String),
}

impl MemberError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            MemberError::Malformed(_) => crate::error::Code::ChangeMalformed.as_str(),
            MemberError::OldFormat(_) => crate::error::Code::StoreFormatUnsupported.as_str(),
            MemberError::BadSignature => crate::error::Code::SignatureInvalid.as_str(),
            MemberError::WrongStore => crate::error::Code::WrongStore.as_str(),
            MemberError::TooLarge => crate::error::Code::ValueTooLarge.as_str(),
            MemberError::Refused(_) => crate::error::Code::InvalidOptions.as_str(),
            MemberError::NotAdmitted(_) => crate::error::Code::NotTrusted.as_str(),
        }
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(body));
    message
}

/// The commitment to the data key of `epoch`: SHA-256 over a domain, the
/// store, the epoch and the key. Public (it goes in the log): the key is
/// 256 random bits, so the hash reveals nothing usable about it.
pub fn key_commitment(store: StoreId, epoch: u32, key: &[u8; 32]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(KEY_COMMITMENT_DOMAIN);
    hash.update(store.as_bytes());
    hash.update(epoch.to_be_bytes());
    hash.update(key);
    hash.finalize().into()
}

/// Associated data of a key grant: the key of `epoch` of `store`, sealed
/// to `to` (`crate::crypto::device_box`).
pub fn grant_context(store: StoreId, epoch: u32, to: &DeviceId) -> Vec<u8> {
    crate::crypto::envelope::context(&[
        store.as_bytes(),
        b"key grant",
        &epoch.to_be_bytes(),
        to.as_bytes(),
    ])
}

impl MemberEntry {
    /// Encodes and signs the entry (`identity` must be its author).
    pub fn sign(&self, identity: &DeviceIdentity) -> Result<SignedMemberEntry, MemberError> {
        debug_assert_eq!(self.author, identity.device_id());
        let body = postcard::to_stdvec(self)
            .map_err(|e| MemberError::Malformed(format!("cannot encode: {e}")))?;
        let signature = identity.sign(&signing_message(&body));
        Ok(SignedMemberEntry { body, signature })
    }
}

impl SignedMemberEntry {
    /// SHA-256 of the body: the entry's identity in its author's chain.
    pub fn hash(&self) -> EntryHash {
        Sha256::digest(&self.body).into()
    }

    /// The entry's author, number and the hash it names as previous,
    /// decoded without any check.
    pub fn position(&self) -> Option<(DeviceId, u64, EntryHash)> {
        postcard::from_bytes::<MemberEntry>(&self.body)
            .ok()
            .map(|entry| (entry.author, entry.seq, entry.prev))
    }

    /// Decodes the entry and checks its format, store, structure and
    /// signature. Whether the entry *counts* is the log's business.
    pub fn verify(&self, store: StoreId) -> Result<MemberEntry, MemberError> {
        match self.body.first() {
            Some(&MEMBER_ENTRY_FORMAT) => {}
            Some(&old) if old < MEMBER_ENTRY_FORMAT => return Err(MemberError::OldFormat(old)),
            other => {
                return Err(MemberError::Malformed(format!("unknown format {other:?}")));
            }
        }
        let entry: MemberEntry =
            postcard::from_bytes(&self.body).map_err(|e| MemberError::Malformed(e.to_string()))?;
        if entry.store != store {
            return Err(MemberError::WrongStore);
        }
        if entry.seq == 0 {
            return Err(MemberError::Malformed("sequence number 0".into()));
        }
        if entry.seq == 1 && entry.prev != [0; 32] {
            return Err(MemberError::Malformed(
                "a first entry names a previous one".into(),
            ));
        }
        match &entry.change {
            MemberChange::Add { label, .. } if label.len() > MAX_LABEL_BYTES => {
                return Err(MemberError::Malformed("label too long".into()));
            }
            MemberChange::Remove { entries, .. } if entries.seq == 0 && entries.hash != [0; 32] => {
                return Err(MemberError::Malformed("a cut at 0 names a hash".into()));
            }
            MemberChange::Key { grants, .. } | MemberChange::KeyCopy { grants, .. }
                if grants.len() > MAX_GRANTS
                    || grants.iter().any(|(_, g)| g.len() > MAX_GRANT_BYTES) =>
            {
                return Err(MemberError::Malformed(
                    "too many or too large grants".into(),
                ));
            }
            _ => {}
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

/// A verified entry as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    signed: SignedMemberEntry,
    entry: MemberEntry,
    /// For a removal with a commit cut: whether the cut's signature is the
    /// removed device's; for fork evidence: whether both commits are the
    /// device's, under one number, different (checked once, on arrival).
    commit_cut_valid: bool,
    /// For an `Add`: whether the added device's key is a valid point
    /// (checked once, on arrival: the rule asks on every derivation).
    key_valid: bool,
}

/// A store's membership log: its founder and every entry held, verified.
/// Entries are kept by (author, sequence number), then by hash: two
/// entries under one (author, seq) are an equivocation, kept as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipLog {
    store: StoreId,
    founder: DeviceId,
    entries: BTreeMap<(DeviceId, u64), BTreeMap<EntryHash, Held>>,
    len: usize,
    /// Entries (and their bytes: bodies and signatures) held of devices
    /// other than the founder, by [`Tier`].
    usage: Usage,
    /// The devices an `Add` of the founder names ([`Tier::Founders`]).
    founder_adds: std::collections::BTreeSet<DeviceId>,
    /// How many held `Add` entries name each device: the devices whose
    /// entries this log may hold (with the founder).
    adds: BTreeMap<DeviceId, usize>,
}

/// What an entry weighs against [`MAX_MEMBER_BYTES`]: its body and
/// signature.
fn entry_bytes(signed: &SignedMemberEntry) -> usize {
    signed.body.len() + signed.signature.len()
}

fn not_admitted(entry: &MemberEntry) -> MemberError {
    MemberError::NotAdmitted(format!(
        "entry {} of {}: its author was never added to the store, or is past its budget of \
         {MAX_ENTRIES_PER_AUTHOR} entries",
        entry.seq,
        entry.author.short()
    ))
}

/// What a merge did with the other log's entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCount {
    /// Entries new to this log, now held.
    pub added: usize,
    /// Entries not held: their author was never added by an entry of the
    /// log (a throw-away key), or past its budget, or a third version, or
    /// no room was left for them (a full log).
    pub refused: usize,
    /// Entries stamped later than the horizon: not held yet (they are
    /// taken when a later exchange brings them within it).
    pub waiting: usize,
}

/// What a replica holds of a membership log: a digest of the whole log
/// (equal digests, equal logs) and, per author, the last entry of the
/// unbroken chain it holds from that author's first ([`EntryCut`]). A peer
/// answers it with the entries the replica lacks
/// ([`MembershipLog::missing_for`]), never the whole log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersHave {
    /// [`MembershipLog::digest`].
    pub digest: [u8; 32],
    /// `(author, number, hash)` of the last entry of each author's
    /// unbroken chain, by author (authors without one are left out).
    pub tips: Vec<(DeviceId, u64, EntryHash)>,
}

impl MembersHave {
    /// Notes that the replica now also holds `entries` (it sent them, or
    /// was sent them; unverified: what it claims to hold only spares it
    /// entries): a tip moves up along the entries that continue its
    /// chain, and the digest is no longer known.
    pub fn advance(&mut self, entries: &[SignedMemberEntry]) {
        let mut tips: BTreeMap<DeviceId, (u64, EntryHash)> = self
            .tips
            .iter()
            .map(|(author, seq, hash)| (*author, (*seq, *hash)))
            .collect();
        let mut positions: Vec<(DeviceId, u64, EntryHash, EntryHash)> = entries
            .iter()
            .filter_map(|signed| {
                let (author, seq, prev) = signed.position()?;
                Some((author, seq, prev, signed.hash()))
            })
            .collect();
        positions.sort();
        for (author, seq, prev, hash) in positions {
            let tip = tips.entry(author).or_insert((0, [0; 32]));
            if seq == tip.0 + 1 && prev == tip.1 {
                *tip = (seq, hash);
            }
        }
        tips.retain(|_, (seq, _)| *seq > 0);
        self.tips = tips
            .into_iter()
            .map(|(author, (seq, hash))| (author, seq, hash))
            .collect();
        self.digest = [0; 32];
    }
}

/// Entries offered to a log that it may take, with their hashes.
type Offered = Vec<(EntryHash, SignedMemberEntry, MemberEntry)>;

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

impl MembershipLog {
    /// A log with only its founder.
    pub fn founded_by(store: StoreId, founder: DeviceId) -> MembershipLog {
        MembershipLog {
            store,
            founder,
            entries: BTreeMap::new(),
            len: 0,
            usage: Usage::default(),
            founder_adds: std::collections::BTreeSet::new(),
            adds: BTreeMap::new(),
        }
    }

    /// Whether this log may hold an entry of `author` numbered `seq`: the
    /// author is the founder or a device an entry of the log adds (a
    /// member at some point of the log, whatever happened later), and
    /// `seq` is within its budget. Entries of throw-away keys are never
    /// stored, so they cannot fill the log.
    pub fn may_hold(&self, author: &DeviceId, seq: u64) -> bool {
        seq <= MAX_ENTRIES_PER_AUTHOR && (*author == self.founder || self.adds.contains_key(author))
    }

    /// The store.
    pub fn store(&self) -> StoreId {
        self.store
    }

    /// The founder.
    pub fn founder(&self) -> DeviceId {
        self.founder
    }

    /// Number of entries held (both versions of an equivocation count).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True with no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, decoded, by author then sequence number.
    pub fn entries(&self) -> impl Iterator<Item = &MemberEntry> {
        self.held().map(|h| &h.entry)
    }

    fn held(&self) -> impl Iterator<Item = &Held> {
        self.entries.values().flat_map(|versions| versions.values())
    }

    /// A digest of the whole log (founder and entries): equal digests, equal
    /// logs. Peers compare it to know whether to send theirs.
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.store.as_bytes());
        hash.update(self.founder.as_bytes());
        for held in self.held() {
            hash.update((held.signed.body.len() as u64).to_be_bytes());
            hash.update(&held.signed.body);
        }
        hash.finalize().into()
    }

    /// What this log holds, for a peer to answer with what it lacks.
    pub fn have(&self) -> MembersHave {
        MembersHave {
            digest: self.digest(),
            tips: self.tips(),
        }
    }

    /// Per author: the last entry of the unbroken chain held from its
    /// first ([`MembershipLog::entry_cut`]), when there is one.
    pub fn tips(&self) -> Vec<(DeviceId, u64, EntryHash)> {
        let authors: std::collections::BTreeSet<DeviceId> =
            self.entries.keys().map(|(author, _)| *author).collect();
        authors
            .into_iter()
            .map(|author| (author, self.entry_cut(&author)))
            .filter(|(_, cut)| cut.seq > 0)
            .map(|(author, cut)| (author, cut.seq, cut.hash))
            .collect()
    }

    /// The entries a replica holding `theirs` lacks, or `None` when it
    /// lacks nothing this side can tell. Per author: nothing when the
    /// replica's chain goes further than this side's entries (it sends its
    /// entries; this side answers any conflict it then sees); the later
    /// entries when the end of its chain is an entry this side holds; every
    /// entry of the author otherwise (no chain, or histories that differ:
    /// the replica needs them to see how). Both versions of a number are
    /// always sent with them, so an equivocation reaches every replica.
    /// (The caller compares digests first: equal logs lack nothing.)
    pub fn missing_for(&self, theirs: &MembersHave) -> Option<MembershipWire> {
        let tips: BTreeMap<DeviceId, (u64, EntryHash)> = theirs
            .tips
            .iter()
            .map(|(author, seq, hash)| (*author, (*seq, *hash)))
            .collect();
        let authors: std::collections::BTreeSet<DeviceId> =
            self.entries.keys().map(|(author, _)| *author).collect();
        let mut entries = Vec::new();
        for author in authors {
            let slots = self.entries.range((author, 0)..=(author, u64::MAX));
            match tips.get(&author) {
                // Ahead of this side: nothing to send.
                Some((seq, _)) if *seq > self.last_seq(&author) => {}
                // Its highest entry is one of ours: what follows, and both
                // versions of any number.
                Some((seq, hash))
                    if self
                        .entries
                        .get(&(author, *seq))
                        .is_some_and(|versions| versions.contains_key(hash)) =>
                {
                    for ((_, n), versions) in slots {
                        if *n > *seq || versions.len() > 1 {
                            entries.extend(versions.values().map(|h| h.signed.clone()));
                        }
                    }
                }
                // Unknown author, or histories that differ: all of them.
                _ => {
                    for (_, versions) in slots {
                        entries.extend(versions.values().map(|h| h.signed.clone()));
                    }
                }
            }
        }
        (!entries.is_empty()).then_some(MembershipWire {
            store: self.store,
            founder: self.founder,
            entries,
        })
    }

    /// The highest entry sequence number of `author` held.
    pub fn last_seq(&self, author: &DeviceId) -> u64 {
        self.entries
            .range((*author, 0)..=(*author, u64::MAX))
            .next_back()
            .map_or(0, |((_, seq), _)| *seq)
    }

    /// Where `author`'s next entry goes: its sequence number and the hash
    /// it must name (the author's last entry held, if only one version).
    pub fn next_position(&self, author: &DeviceId) -> (u64, EntryHash) {
        let last = self.last_seq(author);
        let prev = self
            .entries
            .get(&(*author, last))
            .and_then(|versions| versions.keys().next().copied())
            .unwrap_or([0; 32]);
        (last + 1, prev)
    }

    /// How far this log has seen `device`'s entries: its last entry of an
    /// unbroken chain (what a removal's entry cut names).
    pub fn entry_cut(&self, device: &DeviceId) -> EntryCut {
        let mut cut = EntryCut::NONE;
        let mut prev = [0u8; 32];
        for ((_, seq), versions) in self.entries.range((*device, 0)..=(*device, u64::MAX)) {
            let Some((hash, held)) = versions.iter().next() else {
                break;
            };
            if *seq != cut.seq + 1 || versions.len() > 1 || held.entry.prev != prev {
                break;
            }
            cut = EntryCut {
                seq: *seq,
                hash: *hash,
            };
            prev = *hash;
        }
        cut
    }

    /// `signed` as held, with what its checks found (checked by the
    /// caller: its author may be held, and there is room).
    fn checked(&self, signed: SignedMemberEntry, entry: MemberEntry) -> Held {
        let commit_cut_valid = match &entry.change {
            MemberChange::Remove {
                device,
                commits: Some(cut),
                ..
            } => crate::change::commit_signature_verifies(
                self.store,
                device,
                cut.seq,
                &cut.hash,
                &cut.signature,
            ),
            MemberChange::Fork { device, a, b } => {
                a.seq == b.seq
                    && a.hash != b.hash
                    && [a, b].iter().all(|c| {
                        crate::change::commit_signature_verifies(
                            self.store,
                            device,
                            c.seq,
                            &c.hash,
                            &c.signature,
                        )
                    })
            }
            _ => false,
        };
        let key_valid =
            matches!(&entry.change, MemberChange::Add { device, .. } if device.is_valid_key());
        Held {
            signed,
            entry,
            commit_cut_valid,
            key_valid,
        }
    }

    /// Holds `held` (checked by the caller).
    fn put(&mut self, hash: EntryHash, held: Held) {
        if let MemberChange::Add { device, .. } = &held.entry.change {
            *self.adds.entry(*device).or_insert(0) += 1;
            if held.entry.author == self.founder {
                self.founder_adds.insert(*device);
            }
        }
        let slot = (held.entry.author, held.entry.seq);
        if held.entry.author != self.founder {
            let author = held.entry.author;
            self.usage
                .add(&author, self.tier(&author), entry_bytes(&held.signed));
        }
        self.entries.entry(slot).or_default().insert(hash, held);
        self.len += 1;
    }

    /// Verifies and adds one entry this device signed or received (as a
    /// merge of that one entry: the same rule of what is held); refused if
    /// the log may not hold it or has no room left for it. False if it was
    /// held already, or is a third version of its number with a higher
    /// hash than the two held (or a lower one the full log has no room
    /// for).
    pub fn add(&mut self, signed: SignedMemberEntry) -> Result<bool, MemberError> {
        let entry = signed.verify(self.store)?;
        if !self.may_hold(&entry.author, entry.seq) {
            return Err(not_admitted(&entry));
        }
        let versions = self.entries.get(&(entry.author, entry.seq));
        let held = versions.is_some_and(|versions| versions.contains_key(&signed.hash()));
        let competes = versions.is_some_and(|versions| versions.len() >= MAX_VERSIONS);
        let wire = MembershipWire {
            store: self.store,
            founder: self.founder,
            entries: vec![signed],
        };
        let added = self.merge_until(&wire, u64::MAX)?.added > 0;
        // A new entry with room for its version (its author may be held) is
        // left out only for want of room in the log; a third version
        // competes with the held ones instead.
        if !added && !held && !competes {
            return Err(MemberError::TooLarge);
        }
        Ok(added)
    }

    /// Merges another replica's log: it must name the same store and
    /// founder; every entry is verified (a bad one refuses the whole log,
    /// nothing is added). Returns how many entries were new. Entries this
    /// log may not hold ([`MembershipLog::may_hold`]) are left out, and so
    /// are entries of devices other than the founder once the log is full
    /// ([`MAX_MEMBER_ENTRIES`], [`MAX_MEMBER_BYTES`]): the rest of the log
    /// is still taken.
    pub fn merge(&mut self, other: &MembershipWire) -> Result<usize, MemberError> {
        Ok(self.merge_until(other, u64::MAX)?.added)
    }

    /// [`MembershipLog::merge`], leaving out entries stamped later than
    /// `horizon_ms` (a device's clock plus the skew it allows): a member
    /// cannot date its entries far ahead.
    ///
    /// While the log has room, the result is a function of the entries held
    /// and offered, whatever their order: of each (author, number) the two
    /// lowest hashes, then the entries of the founder and, transitively, of
    /// every device an entry so held adds. Past the room
    /// ([`MAX_MEMBER_ENTRIES`], [`MAX_MEMBER_BYTES`]), what is taken
    /// depends on what came first: nothing held is given up.
    pub fn merge_until(
        &mut self,
        other: &MembershipWire,
        horizon_ms: u64,
    ) -> Result<MergeCount, MemberError> {
        let (offered, count) = self.offered(other, horizon_ms)?;
        if offered.is_empty() {
            return Ok(count);
        }
        if self.only_extends(&offered) {
            return Ok(self.extend(offered, count));
        }
        Ok(self.rebuild(offered, count, true))
    }

    /// The entries of `other` this log may take: verified, not held,
    /// within the horizon and the budget, their author named by an `Add`
    /// held or offered (with the count of those left out).
    fn offered(
        &self,
        other: &MembershipWire,
        horizon_ms: u64,
    ) -> Result<(Offered, MergeCount), MemberError> {
        if other.store != self.store || other.founder != self.founder {
            return Err(MemberError::WrongStore);
        }
        if other.entries.len() > MAX_LOG_ENTRIES {
            return Err(MemberError::TooLarge);
        }
        let mut count = MergeCount::default();
        let mut offered = Vec::new();
        for signed in &other.entries {
            let entry = signed.verify(self.store)?;
            let hash = signed.hash();
            let held = self
                .entries
                .get(&(entry.author, entry.seq))
                .is_some_and(|versions| versions.contains_key(&hash));
            if held {
                continue;
            }
            if entry.hlc.millis() > horizon_ms {
                count.waiting += 1;
            } else if entry.seq > MAX_ENTRIES_PER_AUTHOR {
                count.refused += 1;
            } else {
                offered.push((hash, signed.clone(), entry));
            }
        }
        // An entry whose author is neither the founder nor named by any
        // `Add` held or offered can never be held: left out before anything
        // is built for it (the rebuild below would drop it too), so a log
        // of junk entries costs its reading, not a rebuild's memory.
        let named: std::collections::BTreeSet<DeviceId> = std::iter::once(self.founder)
            .chain(self.adds.keys().copied())
            .chain(
                offered
                    .iter()
                    .filter_map(|(_, _, entry)| match &entry.change {
                        MemberChange::Add { device, .. } => Some(*device),
                        _ => None,
                    }),
            )
            .collect();
        let before = offered.len();
        offered.retain(|(_, _, entry)| named.contains(&entry.author));
        count.refused += before - offered.len();
        Ok((offered, count))
    }

    /// The half of the room `author`'s entries take (not the founder's:
    /// they take none).
    fn tier(&self, author: &DeviceId) -> Tier {
        Tier::of(&self.founder_adds, author)
    }

    /// True when merging `offered` only extends the log: no slot would
    /// hold more than [`MAX_VERSIONS`] (so no held version is displaced,
    /// and no device an `Add` held names loses it), and the log stays
    /// under the cap whatever is admitted. Most merges do (a peer's new
    /// entries), and [`MembershipLog::extend`] then gives what
    /// [`MembershipLog::rebuild`] would, without copying the log.
    fn only_extends(&self, offered: &Offered) -> bool {
        // An `Add` of the founder moves the entries of a device that has
        // some (held or offered) to the founder's tier: the rebuild counts
        // them again. A new device has none yet (pairing).
        let moves = |device: &DeviceId| {
            !self.founder_adds.contains(device)
                && (self
                    .entries
                    .range((*device, 0)..=(*device, u64::MAX))
                    .next()
                    .is_some()
                    || offered.iter().any(|(_, _, entry)| entry.author == *device))
        };
        let mut usage = self.usage.clone();
        for (_, signed, entry) in offered {
            if entry.author == self.founder {
                if let MemberChange::Add { device, .. } = &entry.change {
                    if moves(device) {
                        return false;
                    }
                }
            } else if !usage.take(&entry.author, self.tier(&entry.author), entry_bytes(signed)) {
                return false;
            }
        }
        let mut slots: BTreeMap<(DeviceId, u64), std::collections::BTreeSet<EntryHash>> =
            BTreeMap::new();
        for (hash, _, entry) in offered {
            slots
                .entry((entry.author, entry.seq))
                .or_default()
                .insert(*hash);
        }
        slots.iter().all(|(slot, hashes)| {
            let held = self.entries.get(slot).map_or(0, BTreeMap::len);
            held + hashes.len() <= MAX_VERSIONS
        })
    }

    /// Adds `offered` to the log in place ([`MembershipLog::only_extends`]
    /// holds): from the founder and the devices already added on, each
    /// entry whose author an entry held (or just added) adds, as the
    /// rebuild admits them.
    fn extend(&mut self, offered: Offered, mut count: MergeCount) -> MergeCount {
        let offered_count = offered.len();
        let mut pending = offered;
        loop {
            let before = pending.len();
            let mut rest = Vec::new();
            for (hash, signed, entry) in pending {
                if entry.author != self.founder && !self.adds.contains_key(&entry.author) {
                    rest.push((hash, signed, entry));
                    continue;
                }
                let twice = self
                    .entries
                    .get(&(entry.author, entry.seq))
                    .is_some_and(|versions| versions.contains_key(&hash));
                if twice {
                    continue;
                }
                // Its author is added and its number within the budget
                // (`may_hold`); `only_extends` made room for it.
                debug_assert!(self.may_hold(&entry.author, entry.seq));
                self.put(hash, self.checked(signed, entry));
                count.added += 1;
            }
            pending = rest;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        count.refused += offered_count - count.added;
        count
    }

    /// Rebuilds the log from the union of what it holds and `offered`:
    /// of each (author, number) the two lowest hashes, then the entries of
    /// the founder and, transitively, of every device an entry so held
    /// adds.
    fn rebuild(&mut self, offered: Offered, mut count: MergeCount, limited: bool) -> MergeCount {
        // Every entry held or offered, by position.
        enum Candidate {
            Held(Held),
            Offered(SignedMemberEntry, MemberEntry),
        }
        impl Candidate {
            fn entry(&self) -> &MemberEntry {
                match self {
                    Candidate::Held(held) => &held.entry,
                    Candidate::Offered(_, entry) => entry,
                }
            }
        }
        let mut candidates: BTreeMap<(DeviceId, u64), BTreeMap<EntryHash, Candidate>> =
            BTreeMap::new();
        // (Copies: on an error this log stays as it was.)
        for (slot, versions) in &self.entries {
            for (hash, held) in versions {
                candidates
                    .entry(*slot)
                    .or_default()
                    .insert(*hash, Candidate::Held(held.clone()));
            }
        }
        let offered_count = offered.len();
        for (hash, signed, entry) in offered {
            candidates
                .entry((entry.author, entry.seq))
                .or_default()
                .entry(hash)
                .or_insert(Candidate::Offered(signed, entry));
        }
        let founder = self.founder;
        let keep_lowest = |versions: &mut BTreeMap<EntryHash, Candidate>| {
            while versions.len() > MAX_VERSIONS {
                versions.pop_last();
            }
        };
        // The founder's entries first (they take no room): they say which
        // devices are the founder's, so which tier every other entry takes.
        for (_, versions) in candidates.range_mut((founder, 0)..=(founder, u64::MAX)) {
            keep_lowest(versions);
        }
        let founder_adds: std::collections::BTreeSet<DeviceId> = candidates
            .range((founder, 0)..=(founder, u64::MAX))
            .flat_map(|(_, versions)| versions.values())
            .filter_map(|candidate| match &candidate.entry().change {
                MemberChange::Add { device, .. } => Some(*device),
                _ => None,
            })
            .collect();
        let tier = |author: &DeviceId| Tier::of(&founder_adds, author);
        // What the held entries weigh. Offered ones take the room left, in
        // the order below, and the rest are refused: a full log still
        // takes the founder's entries from a peer whose log is full of
        // others, and never gives up an entry it holds for one offered.
        let mut usage = Usage::default();
        // Offered versions with their room counted already (they displace
        // held ones).
        let mut taken = std::collections::BTreeSet::new();
        for (slot, versions) in &candidates {
            for candidate in versions.values() {
                if let (Candidate::Held(held), true) = (candidate, slot.0 != founder) {
                    usage.add(&slot.0, tier(&slot.0), entry_bytes(&held.signed));
                }
            }
        }
        for (slot, versions) in candidates.iter_mut() {
            if slot.0 == founder || versions.len() <= MAX_VERSIONS {
                continue;
            }
            // Lower versions offered displace a held one only if they
            // are taken: the room of the held versions they displace and
            // then theirs are counted now, or they are refused and the held
            // versions stay as they are.
            let displaces = versions
                .values()
                .skip(MAX_VERSIONS)
                .any(|c| matches!(c, Candidate::Held(_)));
            if displaces && limited {
                let mut trial = usage.clone();
                for candidate in versions.values().skip(MAX_VERSIONS) {
                    if let Candidate::Held(held) = candidate {
                        trial.remove(&slot.0, tier(&slot.0), entry_bytes(&held.signed));
                    }
                }
                let fit = versions
                    .iter()
                    .take(MAX_VERSIONS)
                    .filter_map(|(_, c)| match c {
                        Candidate::Offered(signed, _) => Some(entry_bytes(signed)),
                        _ => None,
                    })
                    .all(|bytes| trial.take(&slot.0, tier(&slot.0), bytes));
                if !fit {
                    versions.retain(|_, c| matches!(c, Candidate::Held(_)));
                    continue;
                }
                usage = trial;
                taken.extend(
                    versions
                        .iter()
                        .take(MAX_VERSIONS)
                        .filter(|(_, c)| matches!(c, Candidate::Offered(..)))
                        .map(|(hash, _)| *hash),
                );
            }
            keep_lowest(versions);
        }
        // From the founder on, each device's entries once an entry adds it.
        let mut rebuilt = MembershipLog::founded_by(self.store, self.founder);
        let mut queue = vec![self.founder];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(author) = queue.pop() {
            if !seen.insert(author) {
                continue;
            }
            let slots: Vec<(DeviceId, u64)> = candidates
                .range((author, 0)..=(author, u64::MAX))
                .map(|(slot, _)| *slot)
                .collect();
            for slot in slots {
                let Some(versions) = candidates.remove(&slot) else {
                    continue;
                };
                for (hash, candidate) in versions {
                    // Offered entries that need no room counted now: taken
                    // already, the founder's, or a log read back whole.
                    let counted = taken.contains(&hash) || slot.0 == founder || !limited;
                    let entry = match candidate {
                        Candidate::Held(held) => {
                            // Held before: kept whatever the room.
                            let entry = held.entry.clone();
                            rebuilt.put(hash, held);
                            entry
                        }
                        Candidate::Offered(signed, entry) => {
                            if !counted && !usage.take(&slot.0, tier(&slot.0), entry_bytes(&signed))
                            {
                                continue;
                            }
                            rebuilt.put(hash, rebuilt.checked(signed, entry.clone()));
                            count.added += 1;
                            entry
                        }
                    };
                    if let MemberChange::Add { device, .. } = entry.change {
                        queue.push(device);
                    }
                }
            }
        }
        count.refused += offered_count - count.added;
        *self = rebuilt;
        count
    }

    /// The wire form.
    pub fn to_wire(&self) -> MembershipWire {
        MembershipWire {
            store: self.store,
            founder: self.founder,
            entries: self.held().map(|h| h.signed.clone()).collect(),
        }
    }

    /// Reads a stored or received log, verifying every entry.
    pub fn from_wire(wire: &MembershipWire) -> Result<MembershipLog, MemberError> {
        let mut log = MembershipLog::founded_by(wire.store, wire.founder);
        let (offered, count) = log.offered(wire, u64::MAX)?;
        // A log as a replica held it: taken whole, past the caps too (a
        // device the founder adds late moves its entries to the founder's
        // tier, which may then hold more than its room).
        log.rebuild(offered, count, false);
        Ok(log)
    }

    /// Encodes for storage.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MemberError> {
        postcard::to_stdvec(&self.to_wire())
            .map_err(|e| MemberError::Malformed(format!("cannot encode: {e}")))
    }

    /// Decodes a stored log.
    pub fn from_bytes(bytes: &[u8]) -> Result<MembershipLog, MemberError> {
        let wire: MembershipWire =
            postcard::from_bytes(bytes).map_err(|e| MemberError::Malformed(e.to_string()))?;
        MembershipLog::from_wire(&wire)
    }

    /// Signs `change` as `identity`'s next entry and adds it. Refuses an
    /// `Add` of bytes that are not a valid device key and a `Key` entry
    /// whose epoch is not one more than an epoch the log records.
    pub fn append(
        &mut self,
        identity: &DeviceIdentity,
        hlc: Hlc,
        change: MemberChange,
    ) -> Result<SignedMemberEntry, MemberError> {
        match &change {
            MemberChange::Add { device, .. } if !device.is_valid_key() => {
                return Err(MemberError::Refused(format!(
                    "{} is not a valid device key",
                    device.short()
                )));
            }
            MemberChange::Key {
                epoch, commitment, ..
            } => {
                let members = self.members();
                let known = members.epoch;
                if *epoch != known.saturating_add(1) && !members.has_epoch(*epoch) {
                    return Err(MemberError::Refused(format!(
                        "key epoch {epoch} does not follow the log's epoch {known}"
                    )));
                }
                if members.epochs.get(epoch).is_some_and(|recorded| {
                    recorded.commitment != *commitment && !recorded.rivals.contains(commitment)
                }) {
                    return Err(MemberError::Refused(format!(
                        "epoch {epoch} is recorded with another key"
                    )));
                }
            }
            _ => {}
        }
        let author = identity.device_id();
        let (seq, prev) = self.next_position(&author);
        let signed = MemberEntry {
            format: MEMBER_ENTRY_FORMAT,
            store: self.store,
            author,
            seq,
            prev,
            hlc,
            change,
        }
        .sign(identity)?;
        self.add(signed.clone())?;
        Ok(signed)
    }

    /// True when a device in `removed` may hold the key of `epoch` with
    /// `commitment`: an entry of a removed device records it, or an entry
    /// grants it to a removed device (whether or not those entries count:
    /// what was signed or sealed to it, it has).
    pub fn exposed(
        &self,
        epoch: u32,
        commitment: &[u8; 32],
        removed: &BTreeMap<DeviceId, Removal>,
    ) -> bool {
        self.held().any(|held| match &held.entry.change {
            MemberChange::Key {
                epoch: e,
                commitment: c,
                grants,
            }
            | MemberChange::KeyCopy {
                epoch: e,
                commitment: c,
                grants,
            } if *e == epoch && c == commitment => {
                removed.contains_key(&held.entry.author)
                    || grants.iter().any(|(to, _)| removed.contains_key(to))
            }
            _ => false,
        })
    }

    /// Who is trusted, the removal cuts, the key epochs and the
    /// equivocations: a pure function of the founder and the set of
    /// entries (see [`derive`]).
    pub fn members(&self) -> Members {
        derive::derive(self)
    }
}
