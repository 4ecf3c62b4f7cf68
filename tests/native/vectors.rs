//! Golden byte vectors of every message of the network protocols and of
//! the signed items they carry. Each vector is built from fixed keys and
//! inputs, compared with `tests/vectors/protocol-v2.txt`, decoded back
//! (and encoded again to the same bytes), and must appear verbatim in
//! `docs/sync-protocol.md`: a change of the wire format fails here until
//! the vectors and the document are updated together.
//!
//! `PERSIST_UPDATE_VECTORS=1` rewrites the vectors file (then paste its
//! content into the document's "Test vectors" block).

use persist::change::{CommitBody, Op, COMMIT_FORMAT};
use persist::crypto::{DataKey, Sealer};
use persist::hlc::Hlc;
use persist::membership::{
    key_commitment, CommitCut, EntryCut, MemberChange, MemberEntry, MembershipWire,
    SignedMemberEntry, MEMBER_ENTRY_FORMAT,
};
use persist::net::live::LiveMessage;
use persist::net::meet::{MeetPeer, MeetRequest, MeetResponse, PlaceKind, Refusal};
use persist::net::{PairRequest, PairResponse, SyncRequest, SyncResponse};
use persist::{Commit, DeviceIdentity, SignedCommit, StoreId};
use serde::de::DeserializeOwned;
use serde::Serialize;

const VECTORS: &str = "tests/vectors/protocol-v2.txt";
const DOC: &str = "docs/sync-protocol.md";

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encodes")
}

/// Decodes `bytes` as `T` and encodes it again: the same bytes.
fn round_trip<T: Serialize + DeserializeOwned>(name: &str, bytes: &[u8]) {
    let value: T = postcard::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(encode(&value), bytes, "{name}: decoded and encoded again");
}

type Check = fn(&str, &[u8]);

fn vectors() -> Vec<(&'static str, Vec<u8>, Check)> {
    let a = DeviceIdentity::from_secret(&[1; 32]);
    let b = DeviceIdentity::from_secret(&[2; 32]);
    let c = DeviceIdentity::from_secret(&[3; 32]);
    let store = StoreId::from_bytes([7; 16]);
    let hlc = Hlc::from_millis(1_700_000_000_000);
    let body = |author: &DeviceIdentity, seq: u64, prev: [u8; 32]| CommitBody {
        format: COMMIT_FORMAT,
        store,
        author: author.device_id(),
        seq,
        prev,
        hlc,
        ops: vec![Op::RecordPut {
            collection: "notes".into(),
            id: "n1".into(),
            value: r#"{"title":"hi"}"#.into(),
            base: None,
        }],
    };
    let plain = Commit::sign(body(&a, 1, [0; 32]), &a, None)
        .expect("signs")
        .signed;
    let mut sealer = Sealer::with_salt_for_test_vectors(&DataKey::from_bytes([9; 32]), 0, [5; 24])
        .expect("sealer");
    let sealed = Commit::sign(body(&a, 2, plain.hash()), &a, Some(&mut sealer))
        .expect("signs")
        .signed;
    let of_b = Commit::sign(body(&b, 1, [0; 32]), &b, None)
        .expect("signs")
        .signed;
    let entry = |seq: u64, prev: [u8; 32], change: MemberChange| {
        MemberEntry {
            format: MEMBER_ENTRY_FORMAT,
            store,
            author: a.device_id(),
            seq,
            prev,
            hlc,
            change,
        }
        .sign(&a)
        .expect("signs")
    };
    let add = entry(
        1,
        [0; 32],
        MemberChange::Add {
            device: b.device_id(),
            label: "laptop".into(),
        },
    );
    let remove = entry(
        2,
        add.hash(),
        MemberChange::Remove {
            device: b.device_id(),
            entries: EntryCut::NONE,
            commits: Some(CommitCut {
                seq: 1,
                hash: of_b.hash(),
                signature: of_b.signature,
            }),
        },
    );
    let key = entry(
        3,
        remove.hash(),
        MemberChange::Key {
            epoch: 1,
            commitment: key_commitment(store, 1, &[9; 32]),
            grants: vec![(c.device_id(), vec![0xee; 80])],
        },
    );
    let fork = entry(
        4,
        key.hash(),
        MemberChange::Fork {
            device: b.device_id(),
            a: CommitCut {
                seq: 1,
                hash: of_b.hash(),
                signature: of_b.signature,
            },
            b: CommitCut {
                seq: 1,
                hash: [0x66; 32],
                signature: [0x77; 64],
            },
        },
    );
    let key_copy = entry(
        5,
        fork.hash(),
        MemberChange::KeyCopy {
            epoch: 1,
            commitment: key_commitment(store, 1, &[9; 32]),
            grants: vec![(b.device_id(), vec![0xee; 80])],
        },
    );
    let log = MembershipWire {
        store,
        founder: a.device_id(),
        entries: vec![add.clone(), remove.clone(), key.clone()],
    };
    let have = vec![(a.device_id(), 2), (b.device_id(), 1)];
    vec![
        (
            "commit, plain (format 3)",
            encode(&plain),
            round_trip::<SignedCommit>,
        ),
        (
            "commit, sealed (format 4)",
            encode(&sealed),
            round_trip::<SignedCommit>,
        ),
        (
            "membership entry, Add",
            encode(&add),
            round_trip::<SignedMemberEntry>,
        ),
        (
            "membership entry, Remove",
            encode(&remove),
            round_trip::<SignedMemberEntry>,
        ),
        (
            "membership entry, Key",
            encode(&key),
            round_trip::<SignedMemberEntry>,
        ),
        (
            "membership entry, Fork",
            encode(&fork),
            round_trip::<SignedMemberEntry>,
        ),
        (
            "membership entry, KeyCopy",
            encode(&key_copy),
            round_trip::<SignedMemberEntry>,
        ),
        ("membership log", encode(&log), round_trip::<MembershipWire>),
        (
            "sync Pull",
            encode(&SyncRequest::Pull {
                store,
                have: have.clone(),
                tips: vec![plain.hash(), of_b.hash()],
                limit: 1_000,
                members: persist::membership::MembersHave {
                    digest: [0xdd; 32],
                    tips: vec![(have[0].0, 1, [0xee; 32])],
                },
            }),
            round_trip::<SyncRequest>,
        ),
        (
            "sync Push",
            encode(&SyncRequest::Push {
                store,
                commits: vec![plain.clone()],
                members: None,
            }),
            round_trip::<SyncRequest>,
        ),
        (
            "sync Hello",
            encode(&SyncRequest::Hello {
                store,
                log: log.clone(),
            }),
            round_trip::<SyncRequest>,
        ),
        (
            "sync Commits",
            encode(&SyncResponse::Commits {
                commits: vec![plain.clone()],
                more: false,
                remaining: 0,
                members: Some(MembershipWire {
                    store,
                    founder: a.device_id(),
                    entries: vec![add],
                }),
            }),
            round_trip::<SyncResponse>,
        ),
        (
            "sync Ack",
            encode(&SyncResponse::Ack {
                applied: 1,
                rejected: 1,
                have: Some(have.clone()),
            }),
            round_trip::<SyncResponse>,
        ),
        (
            "sync Refused",
            encode(&SyncResponse::Refused("NOT_TRUSTED".into())),
            round_trip::<SyncResponse>,
        ),
        (
            "sync Greeted",
            encode(&SyncResponse::Greeted {
                members: persist::membership::MembersHave {
                    digest: [0xdd; 32],
                    tips: vec![(have[0].0, 1, [0xee; 32])],
                },
            }),
            round_trip::<SyncResponse>,
        ),
        (
            "live Commits",
            encode(&LiveMessage::Commits {
                commits: vec![plain],
                members: None,
            }),
            round_trip::<LiveMessage>,
        ),
        (
            "live Have",
            encode(&LiveMessage::Have { have }),
            round_trip::<LiveMessage>,
        ),
        (
            "pair Start",
            encode(&PairRequest::Start {
                nameplate: "ABCD".into(),
                pake: vec![0x11; 33],
                label: "phone".into(),
            }),
            round_trip::<PairRequest>,
        ),
        (
            "pair Finish",
            encode(&PairRequest::Finish {
                confirm: [0x22; 32],
            }),
            round_trip::<PairRequest>,
        ),
        (
            "pair Abort",
            encode(&PairRequest::Abort),
            round_trip::<PairRequest>,
        ),
        (
            "pair Challenge",
            encode(&PairResponse::Challenge {
                pake: vec![0x33; 33],
                confirm: [0x44; 32],
            }),
            round_trip::<PairResponse>,
        ),
        (
            "pair Welcome",
            encode(&PairResponse::Welcome {
                sealed: vec![0x55; 48],
            }),
            round_trip::<PairResponse>,
        ),
        (
            "pair Refused",
            encode(&PairResponse::Refused {
                code: "PAIRING_CODE_INVALID".into(),
                reason: "wrong code".into(),
            }),
            round_trip::<PairResponse>,
        ),
        (
            "pair Aborted",
            encode(&PairResponse::Aborted),
            round_trip::<PairResponse>,
        ),
        (
            "meet Register",
            encode(&MeetRequest::Register {
                key: [0x88; 32],
                kind: PlaceKind::Store,
                addrs: vec!["/ip4/203.0.113.7/tcp/4001"
                    .parse::<libp2p::Multiaddr>()
                    .expect("addr")
                    .to_vec()],
                ttl_s: 120,
            }),
            round_trip::<MeetRequest>,
        ),
        (
            "meet Unregister",
            encode(&MeetRequest::Unregister { place: [0x99; 32] }),
            round_trip::<MeetRequest>,
        ),
        (
            "meet Lookup",
            encode(&MeetRequest::Lookup { place: [0x99; 32] }),
            round_trip::<MeetRequest>,
        ),
        (
            "meet Registered",
            encode(&MeetResponse::Registered { ttl_s: 120 }),
            round_trip::<MeetResponse>,
        ),
        (
            "meet Unregistered",
            encode(&MeetResponse::Unregistered),
            round_trip::<MeetResponse>,
        ),
        (
            "meet Found",
            encode(&MeetResponse::Found {
                peers: vec![MeetPeer {
                    peer: persist::net::keypair(&b)
                        .expect("keypair")
                        .public()
                        .to_peer_id()
                        .to_bytes(),
                    addrs: vec!["/ip4/203.0.113.7/tcp/4001"
                        .parse::<libp2p::Multiaddr>()
                        .expect("addr")
                        .to_vec()],
                }],
            }),
            round_trip::<MeetResponse>,
        ),
        (
            "meet Refused",
            encode(&MeetResponse::Refused {
                refusal: Refusal::Taken,
            }),
            round_trip::<MeetResponse>,
        ),
    ]
}

/// The vectors as text: `name: hex`, one per line.
fn text() -> String {
    vectors()
        .iter()
        .map(|(name, bytes, _)| format!("{name}: {}\n", hex::encode(bytes)))
        .collect()
}

#[test]
fn the_wire_format_matches_the_vectors_and_the_document() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = text();
    if std::env::var_os("PERSIST_UPDATE_VECTORS").is_some() {
        std::fs::write(root.join(VECTORS), &built).expect("writes the vectors");
    }
    let stored = std::fs::read_to_string(root.join(VECTORS)).expect("reads the vectors");
    assert_eq!(
        stored, built,
        "the encoding changed: PERSIST_UPDATE_VECTORS=1 rewrites {VECTORS}, then update {DOC}"
    );
    // Every stored vector decodes as its type and encodes back.
    for ((name, _, check), line) in vectors().iter().zip(stored.lines()) {
        let hex_part = line
            .strip_prefix(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{VECTORS}: line for {name}"));
        let bytes = hex::decode(hex_part).expect("hex");
        check(name, &bytes);
    }
    let doc = std::fs::read_to_string(root.join(DOC)).expect("reads the document");
    assert!(
        doc.contains(&format!("```text\n{built}```")),
        "{DOC} does not quote the current vectors (its \"Test vectors\" block)"
    );
}
