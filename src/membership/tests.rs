//! The membership rule under attack: each test builds the history a
//! misbehaving member or a revoked device can sign, and checks the outcome
//! on every arrival order.

use super::*;
use crate::change::{Commit, CommitBody, Op, COMMIT_FORMAT};

const STORE: StoreId = StoreId::from_bytes([7; 16]);

fn device(n: u8) -> DeviceIdentity {
    DeviceIdentity::from_secret(&[n; 32])
}

fn founded(a: &DeviceIdentity) -> MembershipLog {
    MembershipLog::founded_by(STORE, a.device_id())
}

fn append(
    log: &mut MembershipLog,
    author: &DeviceIdentity,
    hlc: u64,
    change: MemberChange,
) -> SignedMemberEntry {
    log.append(author, Hlc::from_u64(hlc), change)
        .expect("append")
}

/// An entry signed at an explicit position (what a misbehaving device can
/// sign: any number, any predecessor).
fn forged(
    author: &DeviceIdentity,
    seq: u64,
    prev: EntryHash,
    hlc: u64,
    change: MemberChange,
) -> SignedMemberEntry {
    MemberEntry {
        format: MEMBER_ENTRY_FORMAT,
        store: STORE,
        author: author.device_id(),
        seq,
        prev,
        hlc: Hlc::from_u64(hlc),
        change,
    }
    .sign(author)
    .expect("signs")
}

/// A device identity numbered `n` in a family `tag` (throw-away keys).
fn numbered(tag: u8, n: u64) -> DeviceIdentity {
    let mut secret = [tag; 32];
    secret[..8].copy_from_slice(&n.to_be_bytes());
    DeviceIdentity::from_secret(&secret)
}

fn add(d: &DeviceIdentity) -> MemberChange {
    MemberChange::Add {
        device: d.device_id(),
        label: String::new(),
    }
}

fn remove(log: &MembershipLog, d: &DeviceIdentity, commits: Option<CommitCut>) -> MemberChange {
    MemberChange::Remove {
        device: d.device_id(),
        entries: log.entry_cut(&d.device_id()),
        commits,
    }
}

/// A real commit of `author` at `seq`, and the cut that proves it.
fn commit_cut(author: &DeviceIdentity, seq: u64) -> CommitCut {
    let commit = Commit::sign(
        CommitBody {
            format: COMMIT_FORMAT,
            store: STORE,
            author: author.device_id(),
            seq,
            prev: if seq == 1 { [0; 32] } else { [seq as u8; 32] },
            hlc: Hlc::from_millis(1_700_000_000_000),
            ops: vec![Op::KvSet {
                key: "k".into(),
                value: "1".into(),
            }],
        },
        author,
        None,
    )
    .expect("signs");
    CommitCut {
        seq,
        hash: commit.signed.hash(),
        signature: commit.signed.signature,
    }
}

/// Members derived from `entries` added in every rotation and the reverse
/// order: all must agree (returns the first).
fn in_every_order(founder: &DeviceIdentity, entries: &[SignedMemberEntry]) -> Members {
    let mut results = Vec::new();
    let n = entries.len();
    for start in 0..n.max(1) {
        for reverse in [false, true] {
            let mut order: Vec<&SignedMemberEntry> =
                entries.iter().cycle().skip(start).take(n).collect();
            if reverse {
                order.reverse();
            }
            let mut log = founded(founder);
            let wire = wire_of(founder, order.into_iter().cloned().collect());
            log.merge(&wire).expect("verified");
            results.push((log.digest(), log.members()));
        }
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "orders disagree");
    results.remove(0).1
}

/// A log of `entries` founded by `founder`, as sent.
fn wire_of(founder: &DeviceIdentity, entries: Vec<SignedMemberEntry>) -> MembershipWire {
    MembershipWire {
        store: STORE,
        founder: founder.device_id(),
        entries,
    }
}

fn wire_entries(log: &MembershipLog) -> Vec<SignedMemberEntry> {
    log.to_wire().entries
}

#[test]
fn pairing_a_b_and_a_c_makes_b_and_c_trust_each_other() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 10, add(&b));
    append(&mut log, &a, 11, add(&c));
    let members = log.members();
    for d in [&a, &b, &c] {
        assert!(members.is_member(&d.device_id()));
    }
    let copy = MembershipLog::from_wire(&log.to_wire()).expect("copy");
    assert_eq!(copy.members(), members);
    assert_eq!(copy.digest(), log.digest());
}

#[test]
fn strangers_forged_and_foreign_entries_count_for_nothing() {
    let (a, b, x) = (device(1), device(2), device(9));
    let mut log = founded(&a);
    // A stranger adding itself: verified (it signed it), never stored.
    assert!(matches!(
        log.add(forged(&x, 1, [0; 32], 5, add(&x))),
        Err(MemberError::NotAdmitted(_))
    ));
    assert!(log.is_empty());
    assert!(!log.members().is_member(&x.device_id()));
    let good = forged(&a, 1, [0; 32], 6, add(&b));
    for i in 0..good.body.len() {
        let mut bad = good.clone();
        bad.body[i] ^= 0x01;
        assert!(log.clone().add(bad).is_err(), "byte {i}");
    }
    let mut bad = good.clone();
    bad.signature[0] ^= 1;
    assert_eq!(log.clone().add(bad), Err(MemberError::BadSignature));
    let mut other = MembershipLog::founded_by(StoreId::from_bytes([8; 16]), a.device_id());
    let foreign = append(&mut other, &a, 6, add(&b));
    assert_eq!(log.clone().add(foreign), Err(MemberError::WrongStore));
    let mut wire = log.to_wire();
    wire.founder = x.device_id();
    assert_eq!(log.clone().merge(&wire), Err(MemberError::WrongStore));
}

#[test]
fn entries_of_the_previous_format_are_refused_as_such() {
    let a = device(1);
    let mut signed = forged(&a, 1, [0; 32], 1, add(&device(2)));
    signed.body[0] = 1;
    assert_eq!(signed.verify(STORE), Err(MemberError::OldFormat(1)));
}

#[test]
fn removal_is_final_and_cuts_what_the_removed_device_does_later() {
    let (a, b, c, d) = (device(1), device(2), device(3), device(4));
    let mut log = founded(&a);
    append(&mut log, &a, 10, add(&b));
    append(&mut log, &b, 11, add(&c));
    let cut = commit_cut(&b, 5);
    let change = remove(&log, &b, Some(cut));
    append(&mut log, &a, 12, change);
    // B, removed, signs its next entry, backdated before its removal.
    let (seq, prev) = log.next_position(&b.device_id());
    log.add(forged(&b, seq, prev, 1, add(&d)))
        .expect("kept, not counted");
    let m = in_every_order(&a, &wire_entries(&log));
    assert!(!m.is_member(&b.device_id()));
    assert!(m.is_member(&c.device_id()), "what B did before stays");
    assert!(!m.is_member(&d.device_id()), "what B did after does not");
    assert!(m.admits_commit(&b.device_id(), 4, &[0; 32]));
    assert!(m.admits_commit(&b.device_id(), 5, &cut.hash));
    assert!(
        !m.admits_commit(&b.device_id(), 5, &[1; 32]),
        "another commit 5"
    );
    assert!(!m.admits_commit(&b.device_id(), 6, &[0; 32]));
    // Re-adding B does not bring it back.
    append(&mut log, &a, 20, add(&b));
    assert!(!log.members().is_member(&b.device_id()));
}

/// A revoked device re-signs an entry number it used before, as an `Add`
/// of a key it controls: an equivocation. Neither version counts, the
/// device is removed (it already was), and nothing it added counts.
#[test]
fn a_reused_entry_number_adds_nobody() {
    let (a, c, d, e) = (device(1), device(3), device(4), device(5));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&c));
    append(&mut log, &c, 2, add(&d));
    let change = remove(&log, &c, None);
    append(&mut log, &a, 3, change);
    let reuse = forged(&c, 1, [0; 32], 4, add(&e));
    let mut entries = wire_entries(&log);
    entries.push(reuse);
    let m = in_every_order(&a, &entries);
    assert!(
        !m.is_member(&e.device_id()),
        "the reused number admits no one"
    );
    assert!(!m.is_member(&c.device_id()));
    assert!(m.equivocators.contains(&c.device_id()));
    assert!(
        !m.is_member(&d.device_id()),
        "both versions of the forked entry are dropped"
    );
    assert!(m.is_member(&a.device_id()));
}

/// The same with a `Remove` of the founder: before, it removed A and every
/// member A had added.
#[test]
fn a_reused_entry_number_removes_nobody() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    append(&mut log, &a, 2, add(&c));
    append(
        &mut log,
        &c,
        3,
        MemberChange::Add {
            device: b.device_id(),
            label: "again".into(),
        },
    );
    let change = remove(&log, &c, None);
    append(&mut log, &a, 4, change);
    let reuse = forged(
        &c,
        1,
        [0; 32],
        5,
        MemberChange::Remove {
            device: a.device_id(),
            entries: EntryCut::NONE,
            commits: None,
        },
    );
    let mut entries = wire_entries(&log);
    entries.push(reuse);
    let m = in_every_order(&a, &entries);
    assert!(m.is_member(&a.device_id()));
    assert!(m.is_member(&b.device_id()));
    assert!(!m.is_member(&c.device_id()));
    // An entry naming another predecessor than the one held is the same fork.
    let mut log2 = founded(&a);
    for e in wire_entries(&log) {
        log2.add(e).expect("add");
    }
    log2.add(forged(&c, 2, [9; 32], 6, add(&device(8))))
        .expect("kept");
    let m2 = log2.members();
    assert!(m2.equivocators.contains(&c.device_id()));
    assert!(!m2.is_member(&device(8).device_id()));
}

/// A removed device keeps signing with fresh numbers: past the cut, none of
/// it counts, whatever its clock says.
#[test]
fn a_revoked_device_that_keeps_trying_changes_nothing() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    append(&mut log, &a, 2, add(&c));
    let change = remove(&log, &c, None);
    append(&mut log, &a, 3, change);
    let mut entries = wire_entries(&log);
    let mut prev = [0u8; 32];
    for (i, change) in [
        MemberChange::Remove {
            device: a.device_id(),
            entries: EntryCut::NONE,
            commits: None,
        },
        MemberChange::Remove {
            device: b.device_id(),
            entries: EntryCut::NONE,
            commits: None,
        },
        add(&device(9)),
        MemberChange::Key {
            epoch: 1,
            commitment: [0; 32],
            grants: vec![],
        },
    ]
    .into_iter()
    .enumerate()
    {
        let e = forged(&c, i as u64 + 1, prev, 0, change);
        prev = e.hash();
        entries.push(e);
    }
    let m = in_every_order(&a, &entries);
    assert!(m.is_member(&a.device_id()) && m.is_member(&b.device_id()));
    assert!(!m.is_member(&device(9).device_id()));
    assert_eq!(m.epoch, 0);
}

/// A member raises a removal's cut to re-admit the removed device's future
/// commits: without the device's signature of a real commit at that
/// number, the cut counts for nothing.
#[test]
fn a_raised_cut_admits_no_later_commit() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    append(&mut log, &a, 2, add(&c));
    let real = commit_cut(&c, 3);
    let change = remove(&log, &c, Some(real));
    append(&mut log, &a, 3, change);
    for raised in [
        CommitCut {
            seq: u64::MAX,
            hash: [1; 32],
            signature: [2; 64],
        },
        CommitCut {
            seq: 1_000,
            hash: real.hash,
            signature: real.signature,
        },
        // B's own signature is no proof of C's commit.
        {
            let mut forged = commit_cut(&b, 1_000);
            forged.hash = real.hash;
            forged
        },
    ] {
        let mut log = log.clone();
        let change = MemberChange::Remove {
            device: c.device_id(),
            entries: log.entry_cut(&c.device_id()),
            commits: Some(raised),
        };
        append(&mut log, &b, 4, change);
        let m = log.members();
        assert_eq!(m.removed[&c.device_id()].commits_upto, 3);
        assert!(!m.admits_commit(&c.device_id(), 4, &[0; 32]));
        assert!(!m.admits_commit(&c.device_id(), 999, &real.hash));
    }
    // A real, higher cut (a replica that had applied more) counts.
    let mut higher = log.clone();
    let change = MemberChange::Remove {
        device: c.device_id(),
        entries: higher.entry_cut(&c.device_id()),
        commits: Some(commit_cut(&c, 7)),
    };
    append(&mut higher, &b, 4, change);
    assert_eq!(higher.members().removed[&c.device_id()].commits_upto, 7);
}

#[test]
fn two_devices_that_remove_each_other_are_both_removed_in_any_order() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut base = founded(&a);
    append(&mut base, &a, 1, add(&b));
    append(&mut base, &a, 2, add(&c));
    // On two partitions: A removes B; B removes A.
    let mut left = base.clone();
    let change = remove(&left, &b, None);
    append(&mut left, &a, 5, change);
    let mut right = base.clone();
    let change = remove(&right, &a, None);
    append(&mut right, &b, 5, change);
    let mut entries = wire_entries(&left);
    entries.extend(wire_entries(&right));
    entries.dedup();
    let m = in_every_order(&a, &entries);
    assert!(!m.is_member(&a.device_id()));
    assert!(!m.is_member(&b.device_id()));
    assert!(m.is_member(&c.device_id()), "the others stay");
}

#[test]
fn concurrent_removals_of_one_device_keep_the_highest_proven_cut() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut base = founded(&a);
    append(&mut base, &a, 1, add(&b));
    append(&mut base, &a, 2, add(&c));
    let mut left = base.clone();
    let change = remove(&left, &c, Some(commit_cut(&c, 3)));
    append(&mut left, &a, 5, change);
    let mut right = base.clone();
    let change = remove(&right, &c, Some(commit_cut(&c, 7)));
    append(&mut right, &b, 5, change);
    let mut entries = wire_entries(&left);
    entries.extend(wire_entries(&right));
    entries.sort();
    entries.dedup();
    let m = in_every_order(&a, &entries);
    assert_eq!(m.removed[&c.device_id()].commits_upto, 7);
    assert!(m.is_member(&a.device_id()) && m.is_member(&b.device_id()));
}

#[test]
fn key_epochs_rise_by_one_and_a_skipped_epoch_records_nothing() {
    let (a, b) = (device(1), device(2));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    let key = |epoch: u32| MemberChange::Key {
        epoch,
        commitment: key_commitment(STORE, epoch, &[epoch as u8; 32]),
        grants: vec![],
    };
    // Signing it locally is refused; a member can still sign it by hand.
    assert!(matches!(
        log.append(&b, Hlc::from_u64(2), key(u32::MAX)),
        Err(MemberError::Refused(_))
    ));
    let (seq, prev) = log.next_position(&b.device_id());
    log.add(forged(&b, seq, prev, 2, key(u32::MAX)))
        .expect("kept");
    assert_eq!(log.members().epoch, 0, "u32::MAX pins nothing");
    append(&mut log, &a, 3, key(1));
    append(&mut log, &a, 4, key(2));
    let m = log.members();
    assert_eq!(m.epoch, 2);
    assert!(m.has_epoch(1) && m.has_epoch(2) && !m.has_epoch(3));
}

#[test]
fn two_keys_for_one_epoch_resolve_to_the_lowest_commitment_in_any_order() {
    let (a, b) = (device(1), device(2));
    let mut base = founded(&a);
    append(&mut base, &a, 1, add(&b));
    let k1 = key_commitment(STORE, 1, &[1; 32]);
    let k2 = key_commitment(STORE, 1, &[2; 32]);
    let mut left = base.clone();
    append(
        &mut left,
        &a,
        2,
        MemberChange::Key {
            epoch: 1,
            commitment: k1,
            grants: vec![(b.device_id(), vec![1])],
        },
    );
    let mut right = base.clone();
    append(
        &mut right,
        &b,
        2,
        MemberChange::Key {
            epoch: 1,
            commitment: k2,
            grants: vec![(a.device_id(), vec![2])],
        },
    );
    let mut entries = wire_entries(&left);
    entries.extend(wire_entries(&right));
    entries.sort();
    entries.dedup();
    let m = in_every_order(&a, &entries);
    let winner = k1.min(k2);
    assert_eq!(m.epochs[&1].commitment, winner);
    assert_eq!(m.epochs[&1].rivals, vec![k1.max(k2)]);
    // Each side gets the other's key too: the loser's, marked as such.
    let for_a = m.grants_for(&a.device_id());
    assert_eq!(for_a.len(), 1);
    assert_eq!(for_a[0].2, k2 == winner);
    // A re-grant under another commitment for a recorded epoch is refused.
    let mut log = founded(&a);
    log.merge(&wire_of(&a, entries)).expect("merge");
    let fork = MemberChange::Key {
        epoch: 1,
        commitment: [0xff; 32],
        grants: vec![],
    };
    assert!(log.append(&a, Hlc::from_u64(9), fork).is_err());
}

#[test]
fn a_member_entry_with_a_bad_point_breaks_nothing() {
    let (a, b) = (device(1), device(2));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    // Not a point, and a small-order point.
    let mut small = [0u8; 32];
    small[0] = 1;
    for bad in [
        DeviceId::from_bytes([0xff; 32]),
        DeviceId::from_bytes(small),
    ] {
        assert!(!bad.is_valid_key());
        let change = MemberChange::Add {
            device: bad,
            label: String::new(),
        };
        assert!(matches!(
            log.clone().append(&b, Hlc::from_u64(2), change.clone()),
            Err(MemberError::Refused(_))
        ));
        let mut log = log.clone();
        let (seq, prev) = log.next_position(&b.device_id());
        log.add(forged(&b, seq, prev, 2, change)).expect("kept");
        let m = log.members();
        assert!(!m.is_member(&bad));
        assert!(m.is_member(&b.device_id()));
        // Nobody needs a key grant that cannot be made.
        assert!(m
            .lacking_grants(&a.device_id())
            .iter()
            .all(|(_, _, lacking)| !lacking.contains(&bad)));
    }
}

#[test]
fn proven_commit_forks_remove_their_author_and_forged_evidence_does_not() {
    let (a, b, m) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    append(&mut log, &a, 2, add(&m));
    let x = commit_cut(&m, 4);
    // Another commit 4 of m (a different body: another predecessor).
    let other = Commit::sign(
        CommitBody {
            format: COMMIT_FORMAT,
            store: STORE,
            author: m.device_id(),
            seq: 4,
            prev: [0xee; 32],
            hlc: Hlc::from_millis(1_700_000_000_000),
            ops: vec![Op::KvSet {
                key: "k".into(),
                value: "2".into(),
            }],
        },
        &m,
        None,
    )
    .expect("signs");
    let y = CommitCut {
        seq: 4,
        hash: other.signed.hash(),
        signature: other.signed.signature,
    };
    // Forged evidence (a signature by another device) proves nothing.
    let mut fake = y;
    fake.signature = commit_cut(&b, 4).signature;
    let mut forged_log = log.clone();
    append(
        &mut forged_log,
        &b,
        3,
        MemberChange::Fork {
            device: m.device_id(),
            a: x,
            b: fake,
        },
    );
    assert!(forged_log.members().is_member(&m.device_id()));
    // Real evidence, recorded by any member: m is removed, commits from 4 on refused.
    append(
        &mut log,
        &b,
        3,
        MemberChange::Fork {
            device: m.device_id(),
            a: x,
            b: y,
        },
    );
    let members = in_every_order(&a, &wire_entries(&log));
    assert!(members.equivocators.contains(&m.device_id()));
    assert!(!members.is_member(&m.device_id()));
    assert!(members.admits_commit(&m.device_id(), 3, &[0; 32]));
    assert!(!members.admits_commit(&m.device_id(), 4, &x.hash));
    assert!(!members.admits_commit(&m.device_id(), 4, &y.hash));
}

#[test]
fn an_unprovable_entry_cut_keeps_nothing_of_the_removed_device() {
    let (a, b, c) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    append(&mut log, &b, 2, add(&c));
    // A names B's entry 1 with another hash: it proves nothing held.
    append(
        &mut log,
        &a,
        3,
        MemberChange::Remove {
            device: b.device_id(),
            entries: EntryCut {
                seq: 1,
                hash: [3; 32],
            },
            commits: None,
        },
    );
    let m = log.members();
    assert!(!m.is_member(&b.device_id()));
    assert!(!m.is_member(&c.device_id()));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Random histories of five devices (adds, removals with true or
    /// understated cuts, key epochs, forks by a misbehaving device): every
    /// arrival order gives the same members, removals and epochs.
    #[test]
    fn membership_is_a_function_of_the_set_of_entries(
        steps in proptest::collection::vec((0u8..5, 0u8..5, 0u8..6), 1..24),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let devices: Vec<DeviceIdentity> = (1..=5).map(device).collect();
        // Each device's view of the log (what it has heard of).
        let mut views: Vec<MembershipLog> = (0..5).map(|_| founded(&devices[0])).collect();
        let mut all: Vec<SignedMemberEntry> = Vec::new();
        for (i, (who, target, what)) in steps.into_iter().enumerate() {
            let (who, target) = (who as usize, target as usize);
            let author = &devices[who];
            let hlc = i as u64 + 1;
            let change = match what {
                0 | 1 => add(&devices[target]),
                2 => remove(&views[who], &devices[target], None),
                3 => MemberChange::Remove {
                    device: devices[target].device_id(),
                    entries: EntryCut::NONE,
                    commits: Some(commit_cut(&devices[target], (seed % 5) + 1)),
                },
                4 => {
                    let epoch = views[who].members().epoch + 1;
                    MemberChange::Key { epoch, commitment: key_commitment(STORE, epoch, &[who as u8; 32]), grants: vec![] }
                }
                _ => {
                    // A fork: re-sign the author's last number.
                    let last = views[who].last_seq(&author.device_id()).max(1);
                    let e = forged(author, last, [0; 32], hlc, add(&devices[target]));
                    let _ = views[who].add(e.clone());
                    all.push(e);
                    continue;
                }
            };
            let (seq, prev) = views[who].next_position(&author.device_id());
            if !views[who].may_hold(&author.device_id(), seq) {
                // Not added in its own view: what it signs, no one stores.
                continue;
            }
            let e = forged(author, seq, prev, hlc, change);
            views[who].add(e.clone()).expect("own entry");
            all.push(e);
            // Gossip: the author's view reaches one other device.
            let other = (who + 1 + (seed as usize + i) % 4) % 5;
            let wire = views[who].to_wire();
            let mut rebuilt = views[other].clone();
            views[other].merge(&wire).expect("merge");
            // Whether the merge extended the log in place or rebuilt it,
            // the result is the rebuild's.
            let (offered, count) = rebuilt.offered(&wire, u64::MAX).expect("offered");
            rebuilt.rebuild(offered, count, true);
            proptest::prop_assert_eq!(views[other].to_wire(), rebuilt.to_wire());
            proptest::prop_assert_eq!(views[other].digest(), rebuilt.digest());
            proptest::prop_assert_eq!(views[other].members(), rebuilt.members());
            proptest::prop_assert_eq!(&views[other].usage, &rebuilt.usage);
        }
        all.sort();
        all.dedup();
        in_every_order(&devices[0], &all);
    }
}

#[test]
fn entries_of_throw_away_keys_are_never_stored_and_budgets_hold() {
    let (a, b) = (device(1), device(2));
    let mut log = founded(&a);
    // 300 throw-away keys, each adding another: none stored.
    let junk: Vec<SignedMemberEntry> = (0..300u32)
        .map(|i| {
            let mut secret = [0xEE; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            let key = DeviceIdentity::from_secret(&secret);
            forged(&key, 1, [0; 32], 1, add(&b))
        })
        .collect();
    // B's entries arrive before the founder's entry that adds B.
    let mut bs = founded(&a);
    let adds_b = forged(&a, 1, [0; 32], 1, add(&b));
    bs.add(adds_b.clone()).expect("founder");
    let b1 = append(&mut bs, &b, 2, add(&device(3)));
    let mut entries = junk.clone();
    entries.push(b1.clone());
    entries.push(adds_b.clone());
    let count = log
        .merge_until(&wire_of(&a, entries), u64::MAX)
        .expect("merge");
    assert_eq!((count.added, count.refused, count.waiting), (2, 300, 0));
    assert_eq!(log.len(), 2);
    assert!(log.members().is_member(&device(3).device_id()));

    // A member past its budget: its entry numbered one more than allowed is
    // refused (by number, so every replica refuses the same ones).
    let over = forged(&b, MAX_ENTRIES_PER_AUTHOR + 1, [0; 32], 3, add(&device(4)));
    assert!(matches!(
        log.clone().add(over.clone()),
        Err(MemberError::NotAdmitted(_))
    ));
    let wire = wire_of(&a, vec![over]);
    assert_eq!(log.merge_until(&wire, u64::MAX).expect("merge").refused, 1);

    // Three versions of one entry: the two lowest hashes kept, in any order.
    let versions: Vec<SignedMemberEntry> = (5..8)
        .map(|n| forged(&b, 2, b1.hash(), 4, add(&device(n))))
        .collect();
    let mut kept = Vec::new();
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
        let mut copy = log.clone();
        for i in order {
            let _ = copy.add(versions[i].clone());
        }
        kept.push(copy.digest());
        assert_eq!(copy.len(), log.len() + 2);
    }
    assert!(kept.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn entries_stamped_ahead_of_the_horizon_wait() {
    let (a, b) = (device(1), device(2));
    let mut theirs = founded(&a);
    let at = |ms: u64| Hlc::from_millis(ms).as_u64();
    append(&mut theirs, &a, at(1_000), add(&b));
    append(&mut theirs, &a, at(90_000), add(&device(3)));
    let mut log = founded(&a);
    let count = log.merge_until(&theirs.to_wire(), 60_000).expect("merge");
    assert_eq!((count.added, count.waiting), (1, 1));
    assert!(!log.members().is_member(&device(3).device_id()));
    // Once the clock reaches it, the same log brings it.
    let count = log.merge_until(&theirs.to_wire(), 90_000).expect("merge");
    assert_eq!((count.added, count.waiting), (1, 0));
    assert_eq!(log.digest(), theirs.digest());
}

/// Two replicas exchange what each lacks (`missing_for` of the other's
/// `have`), both ways; the entries sent.
fn exchange(x: &mut MembershipLog, y: &mut MembershipLog) -> usize {
    let mut sent = 0;
    for _ in 0..2 {
        if let Some(wire) = x.missing_for(&y.have()) {
            sent += wire.entries.len();
            y.merge(&wire).expect("merge");
        }
        if let Some(wire) = y.missing_for(&x.have()) {
            sent += wire.entries.len();
            x.merge(&wire).expect("merge");
        }
    }
    sent
}

#[test]
fn replicas_exchange_only_the_entries_they_lack_and_end_equal() {
    let (a, b, c, d) = (device(1), device(2), device(3), device(4));
    let mut x = founded(&a);
    let first = append(&mut x, &a, 1, add(&b));
    let mut y = founded(&a);
    y.merge(&wire_of(&a, vec![first.clone()])).expect("merge");
    append(&mut x, &a, 2, add(&c));
    append(&mut x, &b, 3, add(&d));
    // Y lacks two entries: only those travel, not A's first.
    let wire = x.missing_for(&y.have()).expect("something lacks");
    assert_eq!(wire.entries.len(), 2);
    assert!(!wire.entries.contains(&first));
    // A replica ahead is sent nothing of that author.
    assert!(y.missing_for(&x.have()).is_none());
    assert_eq!(exchange(&mut x, &mut y), 2);
    assert_eq!(x.digest(), y.digest());
    // In step: nothing to send either way.
    assert!(x.missing_for(&y.have()).is_none());
    assert!(y.missing_for(&x.have()).is_none());
}

#[test]
fn divergent_histories_and_equivocations_reach_both_replicas() {
    let (a, b, c, d) = (device(1), device(2), device(3), device(4));
    let mut x = founded(&a);
    let add_b = append(&mut x, &a, 1, add(&b));
    let b1 = append(&mut x, &b, 2, add(&c));
    let mut y = x.clone();
    // B signs two entries under number 2: X gets one, Y the other.
    let one = forged(&b, 2, b1.hash(), 3, add(&d));
    let other = forged(&b, 2, b1.hash(), 4, remove(&x, &c, None));
    let wire = |entries| wire_of(&a, entries);
    x.merge(&wire(vec![one.clone()])).expect("x");
    y.merge(&wire(vec![other.clone()])).expect("y");
    assert_ne!(x.digest(), y.digest());
    exchange(&mut x, &mut y);
    assert_eq!(x.digest(), y.digest(), "both hold the equivocation");
    // Each now holds both versions: a third replica that has only one of
    // them, and is otherwise in step, is sent the other.
    let mut z = founded(&a);
    z.merge(&wire(vec![add_b, b1, one])).expect("z");
    let sent = x.missing_for(&z.have()).expect("the other version");
    assert!(sent.entries.contains(&other));
    z.merge(&sent).expect("z merges");
    assert_eq!(z.digest(), x.digest());
}

#[test]
fn a_log_filled_by_a_member_gone_bad_still_takes_the_entries_of_the_founders_devices() {
    let (a, m, honest, deep) = (device(1), device(2), device(3), device(6));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&m));
    append(&mut log, &a, 2, add(&honest));
    // A device the founder did not add: its entries take the other half.
    append(&mut log, &honest, 3, add(&deep));
    // M adds eight throw-away devices; each signs entries (adds of more
    // throw-away keys) until the log holds all it may of devices the
    // founder did not add.
    let mut theirs = log.clone();
    let mut entries = Vec::new();
    let mut hlc = 10;
    let puppets: Vec<DeviceIdentity> = (0..8u8).map(|p| numbered(100 + p, 0)).collect();
    for puppet in &puppets {
        hlc += 1;
        entries.push(append(&mut theirs, &m, hlc, add(puppet)));
    }
    let per_puppet = (MAX_MEMBER_ENTRIES as u64 - 1 - 8) / 8 + 1;
    for (p, puppet) in puppets.iter().enumerate() {
        let mut prev = [0; 32];
        for seq in 1..=per_puppet {
            hlc += 1;
            let entry = forged(puppet, seq, prev, hlc, add(&numbered(200 + p as u8, seq)));
            prev = entry.hash();
            entries.push(entry);
        }
    }
    for chunk in entries.chunks(1_000) {
        let wire = wire_of(&a, chunk.to_vec());
        log.merge_until(&wire, u64::MAX).expect("merge");
    }
    assert_eq!(
        log.len(),
        2 + 1 + 8 + MAX_MEMBER_ENTRIES / 2,
        "the other half is full"
    );
    // A device the founder did not add can add no entry now...
    assert!(matches!(
        log.clone()
            .append(&deep, Hlc::from_u64(9_000), add(&device(4))),
        Err(MemberError::TooLarge)
    ));
    // ...but one the founder added revokes M and its devices...
    let removal = remove(&log, &m, None);
    append(&mut log, &honest, 9_001, removal);
    for (i, puppet) in puppets.iter().enumerate() {
        let removal = remove(&log, puppet, None);
        append(&mut log, &honest, 9_002 + i as u64, removal);
    }
    // ...and the founder still pairs a new one.
    append(&mut log, &a, 9_100, add(&device(5)));
    let members = log.members();
    assert!(!members.is_member(&m.device_id()));
    assert!(puppets.iter().all(|p| !members.is_member(&p.device_id())));
    assert!(members.is_member(&device(5).device_id()));
    assert!(members.is_member(&honest.device_id()));
    assert!(members.is_member(&deep.device_id()));
    // The whole log, founder's entries on top, still travels and merges.
    let mut copy = founded(&a);
    copy.merge(&log.to_wire()).expect("a full log merges");
    assert_eq!(copy.digest(), log.digest());
}

/// The largest entry there is: a key copy with the most grants, each of
/// the largest size, to made-up devices (about 300 KB).
fn fat(epoch: u32) -> MemberChange {
    MemberChange::KeyCopy {
        epoch,
        commitment: [epoch as u8; 32],
        grants: (0..MAX_GRANTS as u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                (DeviceId::from_bytes(id), vec![0xAB; MAX_GRANT_BYTES])
            })
            .collect(),
    }
}

/// `author` appends the largest entries until the log refuses one: how
/// many it took.
fn fill_with_fat(log: &mut MembershipLog, author: &DeviceIdentity, hlc: u64) -> u32 {
    let mut taken = 0u32;
    loop {
        match log.append(author, Hlc::from_u64(hlc + u64::from(taken)), fat(taken)) {
            Ok(_) => taken += 1,
            Err(e) => {
                assert!(matches!(e, MemberError::TooLarge), "{e:?}");
                return taken;
            }
        }
        assert!(taken < 100, "no cap on bytes");
    }
}

#[test]
fn the_largest_key_entries_fill_their_authors_room_not_the_log() {
    let (a, m, honest) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&m));
    append(&mut log, &a, 2, add(&honest));
    let puppets: Vec<DeviceIdentity> = (0..5u8)
        .map(|p| DeviceIdentity::from_secret(&[150 + p; 32]))
        .collect();
    for (i, puppet) in puppets.iter().enumerate() {
        append(&mut log, &m, 10 + i as u64, add(puppet));
    }
    // M, a device the founder added, fills its own room: a quarter of its
    // tier's bytes...
    let taken = fill_with_fat(&mut log, &m, 100);
    let by_m = log.usage.authors[&m.device_id()];
    assert!(by_m.within(AUTHOR_ROOM), "{by_m:?}");
    assert!(
        by_m.bytes + 300_000 > AUTHOR_ROOM.bytes,
        "refused before the cap"
    );
    assert!(taken >= 5, "{taken} entries of about 300 KB taken");
    // ...so another device the founder added still revokes it.
    let removal = remove(&log, &m, None);
    append(&mut log, &honest, 1_000, removal);
    assert!(!log.members().is_member(&m.device_id()));
    // Its throw-away devices fill the other tier, and no more.
    for (i, puppet) in puppets.iter().enumerate() {
        fill_with_fat(&mut log, puppet, 2_000 + 100 * i as u64);
    }
    let others = log.usage.tiers[Tier::Others as usize];
    assert!(others.within(TIER_ROOM), "{others:?}");
    assert!(others.bytes + 300_000 > TIER_ROOM.bytes, "the tier is full");
    assert!(log.usage.all.within(ALL_ROOM));
    // The founder still writes; the whole log fits in one message and
    // merges elsewhere the same.
    append(&mut log, &a, 9_000, add(&device(4)));
    let wire = log.to_wire();
    let encoded = postcard::to_stdvec(&wire).expect("encodes");
    assert!(encoded.len() < crate::net::MAX_MESSAGE_BYTES);
    let mut copy = founded(&a);
    copy.merge(&wire).expect("merges");
    assert_eq!(copy.digest(), log.digest());
}

#[test]
fn a_lower_version_the_full_log_has_no_room_for_displaces_nothing() {
    let (a, e) = (device(1), device(2));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&e));
    // Two small versions of E's entry 1 are held.
    let mut small: Vec<SignedMemberEntry> = (0..2)
        .map(|i| forged(&e, 1, [0; 32], 2, add(&device(10 + i))))
        .collect();
    small.sort_by_key(SignedMemberEntry::hash);
    for held in &small {
        assert!(log.add(held.clone()).expect("room for it"));
    }
    // E fills its room with the largest entries.
    let mut prev = small[0].hash();
    for seq in 2..20u64 {
        let entry = forged(&e, seq, prev, 10 + seq, fat(seq as u32));
        prev = entry.hash();
        if log.add(entry).is_err() {
            break;
        }
    }
    // A large version of entry 1 with a lower hash than both: it would
    // displace a small one, whose room is far less than it needs.
    let lower = (100u32..200)
        .map(|epoch| forged(&e, 1, [0; 32], 2, fat(epoch)))
        .find(|v| v.hash() < small[0].hash())
        .expect("one of a hundred hashes is lower");
    let full = log.to_wire();
    let count = log
        .merge_until(&wire_of(&a, vec![lower]), u64::MAX)
        .expect("merge");
    assert_eq!((count.added, count.refused), (0, 1));
    assert_eq!(log.to_wire(), full, "nothing held given up");
    assert!(log.members().equivocators.contains(&e.device_id()));
}

/// Junk of `puppet` (tag `tag`): `count` entries adding throw-away keys.
fn puppet_junk(puppet: &DeviceIdentity, tag: u8, count: u64, hlc: u64) -> Vec<SignedMemberEntry> {
    let mut prev = [0; 32];
    (1..=count)
        .map(|seq| {
            let entry = forged(puppet, seq, prev, hlc + seq, add(&numbered(tag, seq)));
            prev = entry.hash();
            entry
        })
        .collect()
}

#[test]
fn replicas_filled_with_different_junk_still_take_each_others_logs_and_the_founders_revocation() {
    let (a, m) = (device(1), device(2));
    let mut base = founded(&a);
    append(&mut base, &a, 1, add(&m));
    // M adds sixteen puppets; half of them fill one replica's log, the
    // other half another's.
    let puppets: Vec<DeviceIdentity> = (0..16u8)
        .map(|p| DeviceIdentity::from_secret(&[100 + p; 32]))
        .collect();
    for (i, puppet) in puppets.iter().enumerate() {
        append(&mut base, &m, 10 + i as u64, add(puppet));
    }
    let per_puppet = (MAX_MEMBER_ENTRIES as u64 - 16) / 8 + 1;
    let fill = |half: &[DeviceIdentity], tag: u8| {
        let mut log = base.clone();
        for (i, puppet) in half.iter().enumerate() {
            let wire = wire_of(&a, puppet_junk(puppet, tag + i as u8, per_puppet, 100));
            log.merge(&wire).expect("merge");
        }
        log
    };
    let mut x = fill(&puppets[..8], 10);
    let mut y = fill(&puppets[8..], 30);
    assert_eq!(x.len(), base.len() + MAX_MEMBER_ENTRIES / 2, "x is full");
    assert_eq!(y.len(), base.len() + MAX_MEMBER_ENTRIES / 2, "y is full");
    assert_ne!(x.digest(), y.digest());

    // The founder, holding x's log, revokes M.
    let mut founder = x.clone();
    let removal = remove(&founder, &m, None);
    append(&mut founder, &a, 9_000, removal);

    // Y takes what the founder's replica sends it (x's junk, which it has
    // no room for, and the founder's entry): the revocation counts.
    let sent = founder.missing_for(&y.have()).expect("y lacks entries");
    let count = y
        .merge_until(&sent, u64::MAX)
        .expect("a full log still merges");
    assert_eq!(count.added, 1, "the founder's entry, nothing else");
    assert!(count.refused > 0);
    assert!(!y.members().is_member(&m.device_id()));
    assert_eq!(y.len(), base.len() + 1 + MAX_MEMBER_ENTRIES / 2);

    // X and Y merge each other's logs without an error, and keep what they
    // held: no entry held is given up for one offered.
    let before = x.to_wire();
    x.merge(&y.to_wire()).expect("x takes y's log");
    let after: std::collections::BTreeSet<SignedMemberEntry> =
        x.to_wire().entries.into_iter().collect();
    assert!(before.entries.iter().all(|e| after.contains(e)));
    assert!(!x.members().is_member(&m.device_id()));
}

#[test]
fn a_device_the_founder_adds_late_moves_tiers_and_the_total_holds() {
    let (a, m, d) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&m));
    // Three devices of the founder take most of its tier.
    for f in 0..3u8 {
        let own = numbered(60 + f, 0);
        append(&mut log, &a, 2 + u64::from(f), add(&own));
        for n in 1..=MAX_ENTRIES_PER_AUTHOR {
            append(&mut log, &own, 10 + n, add(&numbered(70 + f, n)));
        }
    }
    // M adds D and four throw-away devices; D signs all it may, and the
    // throw-away devices fill the rest of the other tier.
    let puppets: Vec<DeviceIdentity> = (0..4u8).map(|p| numbered(90 + p, 0)).collect();
    append(&mut log, &m, 600, add(&d));
    for (i, puppet) in puppets.iter().enumerate() {
        append(&mut log, &m, 601 + i as u64, add(puppet));
    }
    for n in 1..=MAX_ENTRIES_PER_AUTHOR {
        append(&mut log, &d, 1_000 + n, add(&numbered(80, n)));
    }
    let mut hlc = 2_000;
    let mut fill = |log: &mut MembershipLog| {
        let mut open = true;
        while open {
            open = false;
            for (i, puppet) in puppets.iter().enumerate() {
                hlc += 1;
                if log
                    .append(
                        puppet,
                        Hlc::from_u64(hlc),
                        add(&numbered(100 + i as u8, hlc)),
                    )
                    .is_ok()
                {
                    open = true;
                }
            }
        }
    };
    fill(&mut log);
    assert_eq!(
        log.usage.tiers[Tier::Others as usize].entries,
        TIER_ROOM.entries
    );
    // The founder adds D too: D's entries move to the founder's tier,
    // which now holds more than its room (nothing held is given up)...
    append(&mut log, &a, 9_000, add(&d));
    assert!(log.usage.tiers[Tier::Founders as usize].entries > TIER_ROOM.entries);
    // ...and the room D left in the other tier is taken only while the
    // log as a whole has room.
    fill(&mut log);
    assert_eq!(log.usage.all.entries, MAX_MEMBER_ENTRIES);
    // The log is read back whole.
    let read = MembershipLog::from_wire(&log.to_wire()).expect("reads");
    assert_eq!((read.len(), read.digest()), (log.len(), log.digest()));
}

#[test]
fn what_each_tier_holds_is_counted_the_same_however_the_log_grew() {
    let (a, m, d) = (device(1), device(2), device(3));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&m));
    append(&mut log, &m, 2, add(&d));
    append(&mut log, &d, 3, add(&device(4)));
    assert_eq!(log.tier(&d.device_id()), Tier::Others);
    // The founder adds D (moving its entry) and a new device.
    append(&mut log, &a, 4, add(&d));
    append(&mut log, &a, 5, add(&device(5)));
    assert_eq!(log.tier(&d.device_id()), Tier::Founders);
    let read = MembershipLog::from_wire(&log.to_wire()).expect("reads");
    assert_eq!(read.usage, log.usage);
    assert_eq!(log.usage.tiers[Tier::Founders as usize].entries, 2);
    assert_eq!(log.usage.tiers[Tier::Others as usize].entries, 0);
}

#[test]
fn a_lower_version_swaps_in_when_its_authors_room_is_full_so_replicas_agree() {
    let (a, m) = (device(1), device(2));
    let mut base = founded(&a);
    append(&mut base, &a, 1, add(&m));
    // M signs two versions of every number it may use: its room is full.
    let version =
        |seq: u64, v: u64| forged(&m, seq, [0; 32], 10 + seq, add(&numbered(40, seq * 8 + v)));
    let entries: Vec<SignedMemberEntry> = (1..=MAX_ENTRIES_PER_AUTHOR)
        .filter(|seq| *seq != 7)
        .flat_map(|seq| [version(seq, 0), version(seq, 1)])
        .collect();
    let mut sevens: Vec<SignedMemberEntry> = (0..3).map(|v| version(7, v)).collect();
    sevens.sort_by_key(SignedMemberEntry::hash);
    // One replica holds the two higher versions of number 7, another the
    // two lower.
    let replica = |sevens: &[SignedMemberEntry]| {
        let mut log = base.clone();
        let mut all = entries.clone();
        all.extend_from_slice(sevens);
        log.merge(&wire_of(&a, all)).expect("merge");
        log
    };
    let mut x = replica(&sevens[1..]);
    let mut y = replica(&sevens[..2]);
    assert_eq!(x.usage.authors[&m.device_id()].entries, AUTHOR_ROOM.entries);
    // Each takes the other's log: the lowest version swaps in (its room is
    // the one it displaces), the highest is dropped, and they agree.
    x.merge(&y.to_wire()).expect("x takes y's");
    y.merge(&x.to_wire()).expect("y takes x's");
    assert_eq!(x.digest(), y.digest());
}

#[test]
fn a_device_the_founder_pairs_merges_in_place() {
    let (a, b) = (device(1), device(2));
    let mut log = founded(&a);
    append(&mut log, &a, 1, add(&b));
    append(&mut log, &b, 2, add(&device(3)));
    append(&mut log, &device(3), 3, add(&device(5)));
    let mut theirs = log.clone();
    let pairing = append(&mut theirs, &a, 3, add(&device(4)));
    let wire = wire_of(&a, vec![pairing]);
    let (offered, _) = log.offered(&wire, u64::MAX).expect("offered");
    assert!(log.only_extends(&offered), "a new device moves nothing");
    // The founder adding a device that already wrote entries moves them:
    // that merge rebuilds.
    let late = append(&mut theirs, &a, 4, add(&device(3)));
    let wire = wire_of(&a, vec![late]);
    let (offered, _) = log.offered(&wire, u64::MAX).expect("offered");
    assert!(!log.only_extends(&offered));
}
