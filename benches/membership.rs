//! What the membership rule costs on the largest logs a peer can make a
//! device hold, against a log of the same size without removals, in one
//! run: deriving the members (`MembershipLog::members`, run after every
//! merge that changed the log), merging one new entry and deriving again,
//! and a member trickling the whole log one entry per merge.
//!
//! The hostile log is the rule's worst case within the budgets: chains of
//! devices, each added by the one before, each then removing the one that
//! added it, so whether a removal counts depends on the next one, down the
//! whole chain (one chain of 1,023 entries, and four: the log's 4,096 cap,
//! which one member gone bad can reach with eight throw-away devices).
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
/// removal).
fn log(founder: &DeviceIdentity, chains: u8, links: u32, hostile: bool) -> MembershipLog {
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
    for (name, chains) in [("one chain", 1u8), ("four chains: the cap", 4)] {
        let hostile = log(&founder, chains, 511, true);
        let benign = log(&founder, chains, 511, false);
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
        let full = log(&founder, 4, 511, hostile);
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
