use super::*;

fn peer() -> PeerId {
    PeerId::random()
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().expect("ip"))
}

fn addr(text: &str) -> Vec<u8> {
    text.parse::<Multiaddr>().expect("multiaddr").to_vec()
}

const LAN: &str = "/ip4/192.168.1.9/tcp/4001";
const PUBLIC: &str = "/ip4/203.0.114.7/tcp/4001";

fn register(key: [u8; 32], kind: PlaceKind, addrs: &[&str]) -> MeetRequest {
    MeetRequest::Register {
        key,
        kind,
        addrs: addrs.iter().map(|a| addr(a)).collect(),
        ttl_s: 60,
    }
}

fn found(response: MeetResponse) -> Vec<PeerId> {
    match response {
        MeetResponse::Found { peers } => peers
            .iter()
            .map(|p| PeerId::from_bytes(&p.peer).expect("peer id"))
            .collect(),
        other => panic!("expected Found, got {other:?}"),
    }
}

fn lookup(place: Place) -> MeetRequest {
    MeetRequest::Lookup { place }
}

#[test]
fn a_lookup_names_one_place_and_an_unknown_place_answers_nothing() {
    let mut dir = Directory::new(MeetLimits::default());
    let (a, b, stranger) = (peer(), peer(), peer());
    let key = [7; 32];
    let other_key = [8; 32];
    for (p, k) in [(a, key), (b, other_key)] {
        let answer = dir.handle(0, p, ip("10.0.0.1"), register(k, PlaceKind::Store, &[LAN]));
        assert_eq!(answer, MeetResponse::Registered { ttl_s: 60 });
    }
    assert_eq!(
        found(dir.handle(1, stranger, None, lookup(place_of(&key)))),
        [a]
    );
    // The key itself is no place: a lookup by key finds nothing.
    assert!(found(dir.handle(1, stranger, None, lookup(key))).is_empty());
    assert!(found(dir.handle(1, stranger, None, lookup([0; 32]))).is_empty());
    // A device does not find itself.
    assert!(found(dir.handle(1, a, None, lookup(place_of(&key)))).is_empty());
}

#[test]
fn the_first_device_owns_a_pairing_place() {
    let mut dir = Directory::new(MeetLimits::default());
    let (host, squatter) = (peer(), peer());
    let key = pairing_key("ABCD");
    let first = dir.handle(
        0,
        host,
        ip("10.0.0.1"),
        register(key, PlaceKind::Pairing, &[LAN]),
    );
    assert_eq!(first, MeetResponse::Registered { ttl_s: 60 });
    let second = dir.handle(
        0,
        squatter,
        ip("10.0.0.2"),
        register(key, PlaceKind::Pairing, &[LAN]),
    );
    assert_eq!(
        second,
        MeetResponse::Refused {
            refusal: Refusal::Taken
        }
    );
    // A store registration cannot join a pairing place either.
    let mixed = dir.handle(
        0,
        squatter,
        ip("10.0.0.2"),
        register(key, PlaceKind::Store, &[LAN]),
    );
    assert_eq!(
        mixed,
        MeetResponse::Refused {
            refusal: Refusal::Invalid
        }
    );
    // The owner renews; once it leaves, the place is free.
    let renewed = dir.handle(
        5,
        host,
        ip("10.0.0.1"),
        register(key, PlaceKind::Pairing, &[LAN]),
    );
    assert_eq!(renewed, MeetResponse::Registered { ttl_s: 60 });
    assert_eq!(dir.stats().registrations, 1);
    dir.disconnected(&host);
    assert_eq!(dir.stats().registrations, 0);
    let after = dir.handle(
        6,
        squatter,
        ip("10.0.0.2"),
        register(key, PlaceKind::Pairing, &[LAN]),
    );
    assert_eq!(after, MeetResponse::Registered { ttl_s: 60 });
}

#[test]
fn registrations_are_capped_per_device_per_address_per_place_and_in_total() {
    let limits = MeetLimits {
        max_registrations: 10,
        per_peer: 2,
        per_ip: 4,
        peers_per_place: 3,
        ..MeetLimits::default()
    };
    let full = MeetResponse::Refused {
        refusal: Refusal::Full,
    };
    let mut dir = Directory::new(limits);
    // Per device.
    let hoarder = peer();
    for i in 0..2u8 {
        let r = dir.handle(
            0,
            hoarder,
            ip("10.0.0.1"),
            register([i; 32], PlaceKind::Store, &[LAN]),
        );
        assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    }
    let r = dir.handle(
        0,
        hoarder,
        ip("10.0.0.1"),
        register([9; 32], PlaceKind::Store, &[LAN]),
    );
    assert_eq!(r, full);
    // Per IP address: fresh peer ids from one address.
    for i in 0..2u8 {
        let r = dir.handle(
            0,
            peer(),
            ip("10.0.0.1"),
            register([20 + i; 32], PlaceKind::Store, &[LAN]),
        );
        assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    }
    let r = dir.handle(
        0,
        peer(),
        ip("10.0.0.1"),
        register([30; 32], PlaceKind::Store, &[LAN]),
    );
    assert_eq!(r, full);
    // Per store place.
    let crowded = [40; 32];
    for i in 0..3u8 {
        let from = ip(&format!("10.0.1.{i}"));
        let r = dir.handle(0, peer(), from, register(crowded, PlaceKind::Store, &[LAN]));
        assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    }
    let r = dir.handle(
        0,
        peer(),
        ip("10.0.2.1"),
        register(crowded, PlaceKind::Store, &[LAN]),
    );
    assert_eq!(r, full);
    // In total (4 + 3 held; 3 more fit).
    for i in 0..3u8 {
        let from = ip(&format!("10.0.3.{i}"));
        let r = dir.handle(
            0,
            peer(),
            from,
            register([50 + i; 32], PlaceKind::Store, &[LAN]),
        );
        assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    }
    let r = dir.handle(
        0,
        peer(),
        ip("10.0.4.1"),
        register([60; 32], PlaceKind::Store, &[LAN]),
    );
    assert_eq!(r, full);
    assert_eq!(dir.stats().registrations, 10);
}

#[test]
fn registrations_expire_and_lifetimes_are_capped() {
    let mut dir = Directory::new(MeetLimits::default());
    let a = peer();
    let long = MeetRequest::Register {
        key: [1; 32],
        kind: PlaceKind::Store,
        addrs: vec![addr(LAN)],
        ttl_s: u32::MAX,
    };
    assert_eq!(
        dir.handle(0, a, None, long),
        MeetResponse::Registered { ttl_s: MAX_TTL_S }
    );
    let place = place_of(&[1; 32]);
    let until = u64::from(MAX_TTL_S) * 1000;
    assert_eq!(
        found(dir.handle(until - 1, peer(), None, lookup(place))).len(),
        1
    );
    assert!(found(dir.handle(until, peer(), None, lookup(place))).is_empty());
    // Swept at most once a second.
    dir.handle(until + 1000, peer(), None, lookup(place));
    assert_eq!(dir.stats().registrations, 0, "swept");
}

#[test]
fn a_device_on_a_public_address_registers_only_public_and_relayed_addresses() {
    let mut dir = Directory::new(MeetLimits::default());
    let relayed = "/ip4/203.0.114.9/tcp/4001/p2p/12D3KooWCRS8kJRpAFAWPwU41G2XE3SqknHTEDmjWRyyZ8d5JGtL/p2p-circuit";
    let (remote, local) = (peer(), peer());
    let r = dir.handle(
        0,
        remote,
        ip("198.51.99.1"),
        register([1; 32], PlaceKind::Store, &[LAN, PUBLIC, relayed]),
    );
    assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    // Only private addresses, from the Internet: nothing to register.
    let r = dir.handle(
        0,
        peer(),
        ip("198.51.99.2"),
        register([1; 32], PlaceKind::Store, &[LAN]),
    );
    assert_eq!(
        r,
        MeetResponse::Refused {
            refusal: Refusal::Invalid
        }
    );
    // A device on the node's own network keeps its LAN address.
    let r = dir.handle(
        0,
        local,
        ip("192.168.1.20"),
        register([1; 32], PlaceKind::Store, &[LAN]),
    );
    assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    let MeetResponse::Found { peers } = dir.handle(1, peer(), None, lookup(place_of(&[1; 32])))
    else {
        panic!("found");
    };
    let of = |who: PeerId| {
        peers
            .iter()
            .find(|p| p.peer == who.to_bytes())
            .map(|p| p.addrs.clone())
            .expect("registered")
    };
    assert_eq!(of(remote), vec![addr(PUBLIC), addr(relayed)]);
    assert_eq!(of(local), vec![addr(LAN)]);
    // Junk and oversized addresses are dropped, at most MAX_ADDRS kept.
    let mut junk = vec![vec![0xff; 3], vec![4; MAX_ADDR_BYTES + 1]];
    junk.extend((0..20).map(|_| addr(PUBLIC)));
    let r = dir.handle(
        0,
        peer(),
        ip("198.51.99.3"),
        MeetRequest::Register {
            key: [2; 32],
            kind: PlaceKind::Store,
            addrs: junk,
            ttl_s: 60,
        },
    );
    assert_eq!(r, MeetResponse::Registered { ttl_s: 60 });
    let MeetResponse::Found { peers } = dir.handle(1, peer(), None, lookup(place_of(&[2; 32])))
    else {
        panic!("found");
    };
    assert_eq!(peers[0].addrs.len(), MAX_ADDRS);
}

#[test]
fn lookups_are_rate_limited_per_device_and_per_address() {
    let limits = MeetLimits {
        lookups_per_peer: (5.0, 1.0),
        lookups_per_ip: (8.0, 2.0),
        ..MeetLimits::default()
    };
    let slow = MeetResponse::Refused {
        refusal: Refusal::Slow,
    };
    let mut dir = Directory::new(limits);
    let scanner = peer();
    let from = ip("198.51.99.1");
    let answered = (0..100u8)
        .filter(|i| dir.handle(0, scanner, from, lookup([*i; 32])) != slow)
        .count();
    assert_eq!(answered, 5, "the device's burst");
    // Fresh peer ids from the same address share its budget (8 in all).
    let answered = (0..100u8)
        .filter(|i| dir.handle(0, peer(), from, lookup([*i; 32])) != slow)
        .count();
    assert_eq!(answered, 3);
    // Over a minute, an address gets its rate and no more.
    let mut answered = 0;
    for second in 1..=60u64 {
        for _ in 0..10 {
            if dir.handle(second * 1000, peer(), from, lookup([0; 32])) != slow {
                answered += 1;
            }
        }
    }
    assert_eq!(answered, 120, "2 per second for 60 s");
}

#[test]
fn message_limits_fit_the_largest_valid_messages() {
    let big = MeetRequest::Register {
        key: [0xff; 32],
        kind: PlaceKind::Store,
        addrs: vec![vec![0xff; MAX_ADDR_BYTES]; MAX_ADDRS],
        ttl_s: u32::MAX,
    };
    let bytes = postcard::to_stdvec(&big).expect("encode");
    assert!(
        bytes.len() <= MeetRequest::max_bytes(bytes[0]),
        "{}",
        bytes.len()
    );
    let found = MeetResponse::Found {
        peers: vec![
            MeetPeer {
                peer: PeerId::random().to_bytes(),
                addrs: vec![vec![0xff; MAX_ADDR_BYTES]; MAX_ADDRS],
            };
            MAX_FOUND
        ],
    };
    let bytes = postcard::to_stdvec(&found).expect("encode");
    assert!(
        bytes.len() <= MeetResponse::max_bytes(bytes[0]),
        "{}",
        bytes.len()
    );
    for small in [
        MeetRequest::Lookup { place: [0xff; 32] },
        MeetRequest::Unregister { place: [0xff; 32] },
    ] {
        let bytes = postcard::to_stdvec(&small).expect("encode");
        assert!(bytes.len() <= MeetRequest::max_bytes(bytes[0]));
    }
    let refused = postcard::to_stdvec(&MeetResponse::Refused {
        refusal: Refusal::Invalid,
    })
    .expect("encode");
    assert!(refused.len() <= MeetResponse::max_bytes(refused[0]));
}
