//! The membership rule: who is a member, which removals count, what of a
//! removed device stays valid, and which data-key epochs are recorded, as
//! one pure function of the founder and the set of entries held.
//!
//! **Chains.** An author's entries count only along an unbroken chain from
//! its entry 1: each held once, each naming the hash of the one before. Two
//! different entries under one (author, seq), or an entry naming a
//! predecessor other than the one held, are an *equivocation*: the chain
//! stops before the fork (neither version counts, nor anything after it),
//! and the author is treated as removed, with no commit admitted beyond
//! what a removal entry proves (members that applied more record removals
//! with their own cuts, as for any removal).
//!
//! **Cuts.** A removal names how far its author had seen the removed
//! device: an entry (seq and hash) and a commit (seq, hash, and the
//! device's own signature over it). An entry cut counts only if the chain
//! held reaches that exact entry; otherwise it proves nothing and keeps
//! nothing of the device's entries. A commit cut counts only with a valid
//! signature: nobody can raise it past a commit the device really wrote.
//!
//! **Removals that remove each other.** "An entry counts if its author was
//! admitted and no removal that counts cuts it" refers to itself: A's
//! removal of B counts only if B's removal of A (past A's removal) does
//! not, and the other way round. Such a system is evaluated with its
//! *well-founded model* (Van Gelder, Ross, Schlipf 1991), by the
//! alternating fixpoint: `count(S)` is the set of entries that count when
//! the removals in `S` are taken to count (a least fixpoint: admission
//! spreads from the founder along Add entries not cut by `S`). `count` is
//! antitone in `S`, so starting from `T = ∅` the sequence
//! `P = removals(count(T)); T = removals(count(P))` makes `T` grow and `P`
//! shrink until `T` stops changing: `T` holds the removals that surely
//! count, `P` those that may. Removals in `P` remove their target (two
//! devices that removed each other are both removed); entries count for
//! admission, labels and keys only if they count under `P`'s cuts (the
//! stricter ones).
//!
//! The well-founded model leaves a removal undecided when it defeats
//! itself: a revoked device that removes the founder with a cut before the
//! founder's `Add` of it cuts its own admission. Such a removal cannot
//! count in any consistent outcome (assumed to count together with the
//! sure ones, it does not count: `count` is antitone), so it is set aside
//! and the fixpoint computed again, until no undecided removal defeats
//! itself. Every step is a function of the set of entries, never of
//! arrival order or clocks, so replicas with the same entries agree.
//!
//! **Key epochs.** Epoch 0 is the store's first key. Epoch `e` is recorded
//! when a Key entry that counts names it and `e - 1` is recorded: a grant
//! of epoch `u32::MAX` records nothing. Two commitments for one epoch are a
//! fork: the lowest commitment wins on every replica.

use std::collections::{BTreeMap, BTreeSet};

use super::{EntryCut, EntryHash, MemberChange, MembershipLog};
use crate::identity::DeviceId;

/// What of a removed device's commits stays valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removal {
    /// Commits below this sequence number stay valid; commit `commits_upto`
    /// itself too when its hash is `commit_hash`.
    pub commits_upto: u64,
    /// The hash the cut commit must have (`None`: two removals proved
    /// different commits at `commits_upto`, so only those below count).
    pub commit_hash: Option<[u8; 32]>,
}

impl Removal {
    /// True when commit `seq` with body hash `hash` stays valid.
    pub fn admits(&self, seq: u64, hash: &[u8; 32]) -> bool {
        seq < self.commits_upto || (seq == self.commits_upto && self.commit_hash == Some(*hash))
    }
}

/// A key sealed to a member by an entry: `(granter, member, commitment of
/// the key, sealed key)`.
pub type SealedGrant = (DeviceId, DeviceId, [u8; 32], Vec<u8>);

/// A recorded data-key epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEpoch {
    /// The commitment of the winning key (the lowest recorded).
    pub commitment: [u8; 32],
    /// Other commitments recorded for the epoch (a fork; they lost).
    pub rivals: Vec<[u8; 32]>,
    /// Every grant of the epoch's keys: `(granter, member, commitment of
    /// the key, sealed key)`.
    pub grants: Vec<SealedGrant>,
}

/// Who is trusted, as derived from a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Current members with their labels (the founder's is empty).
    pub current: BTreeMap<DeviceId, String>,
    /// Removed devices, with what of their commits stays valid.
    pub removed: BTreeMap<DeviceId, Removal>,
    /// Devices that signed two different entries, or two different
    /// commits, under one sequence number (they are in `removed` too).
    pub equivocators: BTreeSet<DeviceId>,
    /// For devices proven to have signed two commits under one number:
    /// the lowest such number (nothing from it on is admitted).
    pub commit_forks: BTreeMap<DeviceId, u64>,
    /// The highest key epoch recorded (0: only the store's first key).
    pub epoch: u32,
    /// Epochs 1..=`epoch`.
    pub epochs: BTreeMap<u32, KeyEpoch>,
    /// Copies of keys of epochs not recorded (`KeyCopy` entries), by epoch.
    pub copies: Vec<(u32, SealedGrant)>,
}

impl Members {
    /// True when a commit (`seq`, body hash `hash`) of `author` is
    /// acceptable: the author is a member, or was removed after writing it.
    pub fn admits_commit(&self, author: &DeviceId, seq: u64, hash: &[u8; 32]) -> bool {
        if let Some(removal) = self.removed.get(author) {
            return removal.admits(seq, hash);
        }
        self.current.contains_key(author)
    }

    /// True when `device` is a current member.
    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.current.contains_key(device) && !self.removed.contains_key(device)
    }

    /// True when `epoch` is recorded (0 always is).
    pub fn has_epoch(&self, epoch: u32) -> bool {
        epoch == 0 || self.epochs.contains_key(&epoch)
    }

    /// Grants addressed to `device`: `(epoch, commitment, winner, granter,
    /// sealed key)`, oldest epoch first, `winner` false for the losing keys
    /// of a forked epoch (still needed to read what they sealed).
    #[allow(clippy::type_complexity)]
    pub fn grants_for(&self, device: &DeviceId) -> Vec<(u32, [u8; 32], bool, DeviceId, Vec<u8>)> {
        let recorded = self.epochs.iter().flat_map(|(epoch, key)| {
            key.grants.iter().filter(|(_, to, _, _)| to == device).map(
                |(from, _, commitment, sealed)| {
                    (
                        *epoch,
                        *commitment,
                        *commitment == key.commitment,
                        *from,
                        sealed.clone(),
                    )
                },
            )
        });
        let copies = self
            .copies
            .iter()
            .filter(|(_, (_, to, _, _))| to == device)
            .map(|(epoch, (from, _, commitment, sealed))| {
                (*epoch, *commitment, false, *from, sealed.clone())
            });
        recorded.chain(copies).collect()
    }

    /// True when the key of `epoch` with `commitment` is known to the log
    /// (recorded, a fork's loser, or copied).
    pub fn knows_key(&self, epoch: u32, commitment: &[u8; 32]) -> bool {
        self.epochs
            .get(&epoch)
            .is_some_and(|key| key.commitment == *commitment || key.rivals.contains(commitment))
            || self
                .copies
                .iter()
                .any(|(e, (_, _, c, _))| *e == epoch && c == commitment)
    }

    /// For every recorded key (each epoch's winner and the losing keys of
    /// forks), the current members other than `except` that hold no grant
    /// of it: `(epoch, commitment, members)`. A member admitted while a key
    /// was granted without it (or re-admitted when the removal of it stopped
    /// counting) needs it to read what was sealed under it.
    pub fn lacking_grants(&self, except: &DeviceId) -> Vec<(u32, [u8; 32], Vec<DeviceId>)> {
        let recorded = self.epochs.iter().flat_map(|(epoch, key)| {
            std::iter::once(&key.commitment)
                .chain(&key.rivals)
                .map(move |commitment| {
                    let granted = key
                        .grants
                        .iter()
                        .filter(|(_, _, c, _)| c == commitment)
                        .map(|(_, to, _, _)| to);
                    (*epoch, *commitment, self.lacking(except, granted))
                })
        });
        let copied: BTreeSet<(u32, [u8; 32])> = self
            .copies
            .iter()
            .map(|(e, (_, _, c, _))| (*e, *c))
            .collect();
        let copies = copied.into_iter().map(|(epoch, commitment)| {
            let granted = self
                .copies
                .iter()
                .filter(move |(e, (_, _, c, _))| *e == epoch && *c == commitment)
                .map(|(_, (_, to, _, _))| to);
            (epoch, commitment, self.lacking(except, granted))
        });
        recorded
            .chain(copies)
            .filter(|(_, _, lacking)| !lacking.is_empty())
            .collect()
    }

    fn lacking<'a>(
        &self,
        except: &DeviceId,
        granted: impl Iterator<Item = &'a DeviceId>,
    ) -> Vec<DeviceId> {
        let granted: BTreeSet<&DeviceId> = granted.collect();
        self.current
            .keys()
            .filter(|d| *d != except && !granted.contains(d))
            .copied()
            .collect()
    }
}

enum Kind<'a> {
    Add {
        device: DeviceId,
        label: &'a str,
        /// The device's key is a valid point (checked on arrival).
        valid: bool,
    },
    Remove {
        target: DeviceId,
        /// The entry cut, 0 when it proves nothing.
        keeps: u64,
        commits: Option<(u64, [u8; 32])>,
    },
    Key {
        epoch: u32,
        commitment: [u8; 32],
        grants: &'a [(DeviceId, Vec<u8>)],
        /// A `KeyCopy`: read-only, records no epoch.
        copy: bool,
    },
}

struct Node<'a> {
    author: DeviceId,
    seq: u64,
    order: (crate::hlc::Hlc, DeviceId, u64),
    kind: Kind<'a>,
}

/// Each author's chain: its length and its hashes.
struct Chains {
    hashes: BTreeMap<DeviceId, Vec<EntryHash>>,
    forked: BTreeSet<DeviceId>,
}

impl Chains {
    fn of(log: &MembershipLog) -> Chains {
        let mut hashes: BTreeMap<DeviceId, Vec<EntryHash>> = BTreeMap::new();
        let mut forked = BTreeSet::new();
        let mut broken: BTreeSet<DeviceId> = BTreeSet::new();
        for ((author, seq), versions) in &log.entries {
            if broken.contains(author) {
                continue;
            }
            let chain = hashes.entry(*author).or_default();
            if *seq != chain.len() as u64 + 1 {
                // A gap: what follows cannot be placed (yet).
                broken.insert(*author);
                continue;
            }
            let prev = chain.last().copied().unwrap_or([0; 32]);
            let mut only = versions.iter();
            match (only.next(), only.next()) {
                (Some((hash, held)), None) if held.entry.prev == prev => chain.push(*hash),
                (Some(_), None) => {
                    // It names another predecessor: the author signed two
                    // different entries `seq - 1`. Neither counts.
                    chain.pop();
                    forked.insert(*author);
                    broken.insert(*author);
                }
                _ => {
                    forked.insert(*author);
                    broken.insert(*author);
                }
            }
        }
        Chains { hashes, forked }
    }

    /// The entries of `device` an entry cut keeps: its seq if the chain
    /// reaches that exact entry, else 0.
    fn keeps(&self, device: &DeviceId, cut: &EntryCut) -> u64 {
        if cut.seq == 0 {
            return 0;
        }
        let held = self
            .hashes
            .get(device)
            .and_then(|chain| chain.get(usize::try_from(cut.seq - 1).ok()?));
        if held == Some(&cut.hash) {
            cut.seq
        } else {
            0
        }
    }

    fn len(&self, author: &DeviceId) -> u64 {
        self.hashes.get(author).map_or(0, |c| c.len() as u64)
    }
}

/// The result of one `count(S)`: which nodes count, who is admitted.
struct Counted {
    counts: Vec<bool>,
    admitted: BTreeSet<DeviceId>,
}

struct Graph<'a> {
    founder: DeviceId,
    nodes: Vec<Node<'a>>,
    by_author: BTreeMap<DeviceId, Vec<usize>>,
}

impl Graph<'_> {
    /// The entries that count when the removals in `assumed` count.
    fn count(&self, assumed: &[bool]) -> Counted {
        // The strictest cut each device gets from the assumed removals.
        let mut keeps: BTreeMap<DeviceId, u64> = BTreeMap::new();
        for (node, _) in self.nodes.iter().zip(assumed).filter(|(_, a)| **a) {
            if let Kind::Remove {
                target, keeps: k, ..
            } = &node.kind
            {
                let entry = keeps.entry(*target).or_insert(u64::MAX);
                *entry = (*entry).min(*k);
            }
        }
        let mut counts = vec![false; self.nodes.len()];
        let mut admitted = BTreeSet::from([self.founder]);
        let mut queue = vec![self.founder];
        while let Some(author) = queue.pop() {
            let limit = keeps.get(&author).copied().unwrap_or(u64::MAX);
            for &index in self.by_author.get(&author).into_iter().flatten() {
                let node = &self.nodes[index];
                if node.seq > limit {
                    continue;
                }
                counts[index] = true;
                if let Kind::Add { device, valid, .. } = &node.kind {
                    if *valid && admitted.insert(*device) {
                        queue.push(*device);
                    }
                }
            }
        }
        Counted { counts, admitted }
    }

    /// The alternating fixpoint with the `defeated` removals taken as not
    /// counting: `(sure, maybe, count(sure))`, removals that surely count,
    /// those that may, and what counts under the sure ones.
    fn well_founded(&self, defeated: &[bool]) -> (Vec<bool>, Vec<bool>, Counted) {
        let removals = |counted: &Counted| -> Vec<bool> {
            let mut out = self.removals(counted);
            for (slot, gone) in out.iter_mut().zip(defeated) {
                *slot &= !gone;
            }
            out
        };
        // `sure` grows and `maybe` shrinks: at most one round per removal.
        let mut sure = vec![false; self.nodes.len()];
        loop {
            let possible = self.count(&sure);
            let maybe = removals(&possible);
            let next = removals(&self.count(&maybe));
            if next == sure {
                return (sure, maybe, possible);
            }
            sure = next;
        }
    }

    fn removals(&self, counted: &Counted) -> Vec<bool> {
        self.nodes
            .iter()
            .zip(&counted.counts)
            .map(|(node, counts)| *counts && matches!(node.kind, Kind::Remove { .. }))
            .collect()
    }
}

pub(super) fn derive(log: &MembershipLog) -> Members {
    let chains = Chains::of(log);
    let mut nodes = Vec::new();
    for held in log.held() {
        let entry = &held.entry;
        if entry.seq > chains.len(&entry.author) {
            continue;
        }
        let kind = match &entry.change {
            MemberChange::Fork { .. } => continue,
            MemberChange::Add { device, label } => Kind::Add {
                device: *device,
                label,
                valid: held.key_valid,
            },
            MemberChange::Remove {
                device,
                entries,
                commits,
            } => Kind::Remove {
                target: *device,
                keeps: chains.keeps(device, entries),
                commits: commits
                    .filter(|_| held.commit_cut_valid)
                    .map(|cut| (cut.seq, cut.hash)),
            },
            MemberChange::Key {
                epoch,
                commitment,
                grants,
            }
            | MemberChange::KeyCopy {
                epoch,
                commitment,
                grants,
            } => Kind::Key {
                epoch: *epoch,
                commitment: *commitment,
                grants,
                copy: matches!(entry.change, MemberChange::KeyCopy { .. }),
            },
        };
        nodes.push(Node {
            author: entry.author,
            seq: entry.seq,
            order: (entry.hlc, entry.author, entry.seq),
            kind,
        });
    }
    let mut by_author: BTreeMap<DeviceId, Vec<usize>> = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        by_author.entry(node.author).or_default().push(index);
    }
    let graph = Graph {
        founder: log.founder,
        nodes,
        by_author,
    };

    // The alternating fixpoint, then self-defeating removals set aside
    // until none is left (each round sets one aside or ends).
    let mut defeated = vec![false; graph.nodes.len()];
    let (maybe, possible) = loop {
        let (sure, maybe, possible) = graph.well_founded(&defeated);
        let mut changed = false;
        for index in (0..graph.nodes.len()).filter(|i| maybe[*i] && !sure[*i]) {
            let mut assumed = sure.clone();
            assumed[index] = true;
            if !graph.count(&assumed).counts[index] {
                defeated[index] = true;
                changed = true;
            }
        }
        if !changed {
            break (maybe, possible);
        }
    };
    let definite = graph.count(&maybe);

    let mut members = Members::default();
    let mut forked_commits = BTreeSet::new();
    for (node, _) in graph.nodes.iter().zip(&maybe).filter(|(_, m)| **m) {
        if let Kind::Remove {
            target, commits, ..
        } = &node.kind
        {
            let removal = members.removed.entry(*target).or_default();
            if let Some((seq, hash)) = commits {
                if *seq > removal.commits_upto {
                    *removal = Removal {
                        commits_upto: *seq,
                        commit_hash: Some(*hash),
                    };
                } else if *seq == removal.commits_upto && removal.commit_hash != Some(*hash) {
                    // Two proven commits under one number: a fork, proven
                    // by the device's own signatures.
                    removal.commit_hash = None;
                    forked_commits.insert(*target);
                    let fork = members.commit_forks.entry(*target).or_insert(*seq);
                    *fork = (*fork).min(*seq);
                }
            }
        }
    }
    for device in chains.forked.iter().chain(&forked_commits) {
        if possible.admitted.contains(device) {
            members.equivocators.insert(*device);
            members.removed.entry(*device).or_default();
        }
    }
    // Proven forks of commits, whoever recorded them (the proof is the
    // device's own signatures): removed, nothing from the fork on admitted.
    for held in log.held().filter(|h| h.commit_cut_valid) {
        if let MemberChange::Fork { device, a, .. } = &held.entry.change {
            if possible.admitted.contains(device) {
                members.equivocators.insert(*device);
                let fork = members.commit_forks.entry(*device).or_insert(a.seq);
                *fork = (*fork).min(a.seq);
            }
        }
    }
    for (device, seq) in &members.commit_forks {
        // Commits before the fork stay valid (unless a removal cut lower).
        let capped = Removal {
            commits_upto: *seq,
            commit_hash: None,
        };
        match members.removed.get_mut(device) {
            Some(removal) if removal.commits_upto < *seq => {}
            Some(removal) => *removal = capped,
            None => {
                members.removed.insert(*device, capped);
            }
        }
    }

    // Labels and keys from the entries that surely count, in a fixed order.
    let mut counted: Vec<&Node> = graph
        .nodes
        .iter()
        .zip(&definite.counts)
        .filter(|(_, c)| **c)
        .map(|(n, _)| n)
        .collect();
    counted.sort_by_key(|n| n.order);
    members.current.insert(graph.founder, String::new());
    type Grants = BTreeMap<u32, BTreeMap<[u8; 32], Vec<SealedGrant>>>;
    let mut epochs: Grants = BTreeMap::new();
    let mut copied: Grants = BTreeMap::new();
    for node in counted {
        match &node.kind {
            Kind::Add { device, label, .. } if definite.admitted.contains(device) => {
                members
                    .current
                    .entry(*device)
                    .or_insert_with(|| (*label).to_owned());
            }
            Kind::Key {
                epoch,
                commitment,
                grants,
                copy,
            } => {
                let target = if *copy { &mut copied } else { &mut epochs };
                let slot = target
                    .entry(*epoch)
                    .or_default()
                    .entry(*commitment)
                    .or_default();
                slot.extend(
                    grants
                        .iter()
                        .map(|(to, sealed)| (node.author, *to, *commitment, sealed.clone())),
                );
            }
            _ => {}
        }
    }
    members
        .current
        .retain(|device, _| !members.removed.contains_key(device));
    let mut next = 1u32;
    while let Some(mut versions) = epochs.remove(&next) {
        let Some(commitment) = versions.keys().next().copied() else {
            break;
        };
        // Copies of this epoch's keys join it (read-only: never the winner).
        for (c, grants) in copied.remove(&next).unwrap_or_default() {
            versions.entry(c).or_default().extend(grants);
        }
        members.epochs.insert(
            next,
            KeyEpoch {
                commitment,
                rivals: versions
                    .keys()
                    .filter(|c| **c != commitment)
                    .copied()
                    .collect(),
                grants: versions.into_values().flatten().collect(),
            },
        );
        members.epoch = next;
        let Some(after) = next.checked_add(1) else {
            break;
        };
        next = after;
    }
    members.copies = copied
        .into_iter()
        .flat_map(|(epoch, versions)| {
            versions
                .into_values()
                .flatten()
                .map(move |grant| (epoch, grant))
        })
        .collect();
    members
}
