//! What the membership rule costs on the largest logs a peer can make a
//! device hold, against a log of the same size without removals, in one
//! run: deriving the members (`MembershipLog::members`, run after every
//! merge that changed the log), merging one new entry and deriving again,
//! and a member trickling the whole log one entry per merge.
//!
//! The hostile log is the rule's worst case within the budgets: chains of
//! devices, each added by the one before, each then removing the one that
//! added it, so whether a removal counts depends on the next one, down the
//! whole chain (one chain of 1,023 entries, and two: all a member gone bad
//! can put in the half of the log for devices the founder did not add;
//! with the founder's devices' half full too, the log's 4,096 cap).
//!
//! Run: `cargo bench --bench membership`.

use std::time::{Duration, Instant};

use persist::hlc::Hlc;
use persist::membership::{MemberChange, MembershipLog, MembershipWire};
use persist::{DeviceIdentity, StoreId};

const STORE: StoreId = StoreId::from_bytes([7; 16]);

fn device(chain: u8, n: u32) -> DeviceIdentity {
    let mut secret = [chain; 32];
    secret[..4].copy_from_slice(&n.to_be_bytes());
    DeviceIdentity::from_secret(&secret)
}

fn add(d: &DeviceIdentity) -> MemberChange {
    MemberChange::Add {
        device: d.device_id(),
        label: String::new(),
    }
}

/// `chains` chains of 1 + 2 * `links` entries each: the founder adds the
/// head, each device adds the next; then each device removes the one
/// before it (`hostile`), or adds one more device (the same count, no
/// removal). Two chains of 511 links fill the half of the log's room for
/// devices the founder did not add; `founders_half` fills the other half
/// too, with four devices the founder adds that each add 511 more.
fn log(
    founder: &DeviceIdentity,
    chains: u8,
    links: u32,
    hostile: bool,
    founders_half: bool,
) -> MembershipLog {
    let mut log = MembershipLog::founded_by(STORE, founder.device_id());
    let mut hlc = 0u64;
    let mut next = || {
        hlc += 1;
        Hlc::from_u64(hlc)
    };
    for chain in 1..=chains {
        let head = device(chain, 0);
        log.append(founder, next(), add(&head))
            .expect("add the head");
        for i in 0..links {
            log.append(&device(chain, i), next(), add(&device(chain, i + 1)))
                .expect("add");
        }
        for i in 1..=links {
            let (this, before) = (device(chain, i), device(chain, i - 1));
            let change = if hostile {
                MemberChange::Remove {
                    device: before.device_id(),
                    entries: log.entry_cut(&before.device_id()),
                    commits: None,
                }
            } else {
                add(&device(chain + 100, i))
            };
            log.append(&this, next(), change).expect("append");
        }
    }
    if founders_half {
        for f in 0..4u8 {
            let own = device(200 + f, 0);
            log.append(founder, next(), add(&own)).expect("add");
            for i in 1..=links {
                log.append(&own, next(), add(&device(200 + f, i)))
                    .expect("add");
            }
        }
    }
    log
}

/// The median of `runs` timings of `work`.
fn median(runs: usize, mut work: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let founder = DeviceIdentity::from_secret(&[1; 32]);
    let newcomer = DeviceIdentity::from_secret(&[2; 32]);
    println!("| log | entries | derive (members) | merge of one entry | vs no removals (derive, merge) |");
    println!("|---|---|---|---|---|");
    let rows = [
        ("one chain", 1u8, false),
        ("the cap: two chains, the founder's half full", 2, true),
    ];
    for (name, chains, founders_half) in rows {
        let hostile = log(&founder, chains, 511, true, founders_half);
        let benign = log(&founder, chains, 511, false, founders_half);
        assert_eq!(hostile.len(), benign.len());
        let mut figures = Vec::new();
        for log in [&hostile, &benign] {
            let derive = median(5, || {
                std::hint::black_box(log.members());
            });
            let mut spare = log.clone();
            let entry = spare
                .append(&founder, Hlc::from_u64(1 << 40), add(&newcomer))
                .expect("append");
            let wire = MembershipWire {
                store: STORE,
                founder: founder.device_id(),
                entries: vec![entry],
            };
            // Each run merges into a fresh copy (made outside the timing).
            let mut copies = vec![log.clone(); 5].into_iter();
            let merge = median(5, || {
                let mut copy = copies.next().expect("a copy per run");
                copy.merge(&wire).expect("merge");
                std::hint::black_box(copy.members());
            });
            figures.push((derive, merge));
        }
        let ((d, m), (bd, bm)) = (figures[0], figures[1]);
        println!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1}x, {:.1}x |",
            hostile.len(),
            d.as_secs_f64() * 1e3,
            m.as_secs_f64() * 1e3,
            d.as_secs_f64() / bd.as_secs_f64(),
            m.as_secs_f64() / bm.as_secs_f64()
        );
    }
    println!();
    println!("| the cap's entries trickled one per merge, each merge then derived | total |");
    println!("|---|---|");
    for (name, hostile) in [("hostile (removal chains)", true), ("no removals", false)] {
        let full = log(&founder, 2, 511, hostile, true);
        let took = trickle(&founder, &full);
        println!("| {name} | {:.1} s |", took.as_secs_f64());
    }
}

/// Merges `full`'s entries into an empty log one per merge, in the order
/// they were written, deriving the members after each: what a member that
/// trickles the log costs a device in all.
fn trickle(founder: &DeviceIdentity, full: &MembershipLog) -> Duration {
    let mut entries: Vec<_> = full
        .to_wire()
        .entries
        .into_iter()
        .map(|signed| {
            let hlc = signed.verify(STORE).expect("verifies").hlc;
            (hlc, signed)
        })
        .collect();
    entries.sort_by_key(|(hlc, _)| *hlc);
    let mut log = MembershipLog::founded_by(STORE, founder.device_id());
    let started = Instant::now();
    for (_, signed) in entries {
        let wire = MembershipWire {
            store: STORE,
            founder: founder.device_id(),
            entries: vec![signed],
        };
        log.merge(&wire).expect("merge");
        std::hint::black_box(log.members());
    }
    assert_eq!(log.len(), full.len(), "every entry taken");
    started.elapsed()
}
