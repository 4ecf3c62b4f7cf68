use super::envelope::{context, epoch_of};
use super::*;

fn key(byte: u8) -> DataKey {
    DataKey::from_bytes([byte; 32])
}

fn ctx() -> Vec<u8> {
    context(&[b"store", b"notes", b"n1"])
}

#[test]
fn known_answer_vectors() {
    test_vectors::check().unwrap();
}

#[test]
fn seals_and_opens() {
    let mut sealer = Sealer::new(&key(1), 4).unwrap();
    let a = sealer.seal(&ctx(), b"hello").unwrap();
    let b = sealer.seal(&ctx(), b"hello").unwrap();
    assert_ne!(a, b, "two seals of one message differ (index)");
    assert_eq!(a.len(), 5 + ENVELOPE_OVERHEAD);
    assert_eq!(epoch_of(&a).unwrap(), 4);
    let mut opener = Opener::new();
    assert_eq!(opener.open(&key(1), &ctx(), &a).unwrap(), b"hello");
    assert_eq!(opener.open(&key(1), &ctx(), &b).unwrap(), b"hello");
    // A new sealer draws a new salt.
    let c = Sealer::new(&key(1), 4)
        .unwrap()
        .seal(&ctx(), b"hello")
        .unwrap();
    assert_ne!(a[5..29], c[5..29]);
}

#[test]
fn every_flipped_byte_is_refused() {
    let sealed = Sealer::new(&key(1), 2)
        .unwrap()
        .seal(&ctx(), br#"{"secret":"marker"}"#)
        .unwrap();
    for position in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let mut tampered = sealed.clone();
            tampered[position] ^= bit;
            let result = Opener::new().open(&key(1), &ctx(), &tampered);
            let err = result.expect_err(&format!("byte {position} bit {bit:#x} flipped"));
            assert_eq!(err.code(), "DECRYPT_FAILED");
        }
    }
}

#[test]
fn truncated_envelopes_are_refused() {
    let sealed = Sealer::new(&key(1), 0)
        .unwrap()
        .seal(&ctx(), b"some value")
        .unwrap();
    for len in 0..sealed.len() {
        let err = Opener::new()
            .open(&key(1), &ctx(), &sealed[..len])
            .unwrap_err();
        assert_eq!(err.code(), "DECRYPT_FAILED", "length {len}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(Opener::new().open(&key(1), &ctx(), &longer).is_err());
}

#[test]
fn another_key_is_caught_by_the_commitment() {
    let sealed = Sealer::new(&key(1), 0).unwrap().seal(&ctx(), b"v").unwrap();
    let mut opener = Opener::new();
    assert_eq!(
        opener.open(&key(2), &ctx(), &sealed),
        Err(CryptoError::WrongKey)
    );
    // The opener's cache never lets a wrong key through after a right one.
    opener.open(&key(1), &ctx(), &sealed).unwrap();
    assert_eq!(
        opener.open(&key(2), &ctx(), &sealed),
        Err(CryptoError::WrongKey)
    );
}

#[test]
fn ciphertext_moved_to_another_record_fails() {
    let sealed = Sealer::new(&key(1), 0).unwrap().seal(&ctx(), b"v").unwrap();
    for other in [
        context(&[b"store", b"notes", b"n2"]),
        context(&[b"store", b"todos", b"n1"]),
        context(&[b"other", b"notes", b"n1"]),
        // Length prefixes: "notesn1" split differently is another context.
        context(&[b"store", b"notesn", b"1"]),
    ] {
        assert_eq!(
            Opener::new().open(&key(1), &other, &sealed),
            Err(CryptoError::Inauthentic)
        );
    }
}

#[test]
fn wrong_epoch_is_refused_by_the_keyring() {
    let store = StoreId::from_bytes([9; 16]);
    let mut ring = Keyring::create(store).unwrap();
    let (epoch, k0) = ring.current();
    assert_eq!(epoch, 0);
    let old = Sealer::new(k0, 0).unwrap().seal(&ctx(), b"old").unwrap();
    assert_eq!(ring.rotate().unwrap(), 1);
    let (_, k1) = ring.current();
    // The envelope names epoch 0: only epoch 0's key opens it.
    assert_eq!(epoch_of(&old).unwrap(), 0);
    assert!(Opener::new().open(k1, &ctx(), &old).is_err());
    let k = ring.key(epoch_of(&old).unwrap()).unwrap();
    assert_eq!(Opener::new().open(k, &ctx(), &old).unwrap(), b"old");
    // Relabelled to epoch 1 (the header is authenticated): refused.
    let mut relabelled = old.clone();
    relabelled[4] = 1;
    assert!(Opener::new().open(k1, &ctx(), &relabelled).is_err());
    assert!(Opener::new().open(k, &ctx(), &relabelled).is_err());
    assert_eq!(ring.key(7).unwrap_err(), CryptoError::UnknownEpoch(7));
}

#[test]
fn keyring_round_trips_and_merges() {
    let store = StoreId::from_bytes([3; 16]);
    let mut ring = Keyring::create(store).unwrap();
    let names = ring
        .name_key()
        .unwrap()
        .hash(NameKind::Collection, "", "notes");
    ring.rotate().unwrap();
    ring.rotate().unwrap();
    let back = Keyring::from_bytes(&ring.to_bytes().unwrap()).unwrap();
    assert_eq!(back, ring);
    assert_eq!(back.epochs().collect::<Vec<_>>(), vec![0, 1, 2]);
    // Rotation never changes the name key (rows keep their keys).
    assert_eq!(
        back.name_key()
            .unwrap()
            .hash(NameKind::Collection, "", "notes"),
        names
    );
    let (epoch, current) = ring.current();
    let mut partial = Keyring::from_key(store, epoch, current.clone());
    partial.merge(&ring);
    assert_eq!(partial, ring);
    assert!(Keyring::from_bytes(b"\x02garbage").is_err());
    assert!(Keyring::from_bytes(&[]).is_err());
}

#[test]
fn name_hashes_separate_kinds_and_scopes() {
    let names = NameKey::derive(&key(5)).expect("derives");
    let a = names.hash(NameKind::Record, "notes", "n1");
    assert_eq!(a, names.hash(NameKind::Record, "notes", "n1"));
    assert_ne!(a, names.hash(NameKind::Record, "todos", "n1"));
    assert_ne!(a, names.hash(NameKind::Key, "notes", "n1"));
    assert_ne!(
        a,
        NameKey::derive(&key(6))
            .expect("derives")
            .hash(NameKind::Record, "notes", "n1")
    );
    assert!(a.starts_with('~') && a.len() == 23);
    assert!(a[1..]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
}

#[test]
fn exported_key_text_catches_typos() {
    let exported = ExportedKey {
        store: StoreId::from_bytes([7; 16]),
        epoch: 12,
        key: key(42),
    };
    let text = exported.to_text();
    assert!(text.starts_with(EXPORTED_KEY_PREFIX));
    assert_eq!(ExportedKey::from_text(&text).unwrap(), exported);
    // Case, grouping and surrounding space do not matter.
    let loose = format!("  {}  ", text.as_str().to_uppercase().replace('-', " "));
    let loose = loose.replacen("PERSIST KEY V1 ", EXPORTED_KEY_PREFIX, 1);
    assert_eq!(ExportedKey::from_text(&loose).unwrap(), exported);
    // Any single mistyped character is caught.
    let body_start = EXPORTED_KEY_PREFIX.len();
    for (i, c) in text.char_indices().skip(body_start) {
        if c == '-' {
            continue;
        }
        let swapped = if c == 'a' { 'b' } else { 'a' };
        let mut typo = text.to_string();
        typo.replace_range(i..i + 1, &swapped.to_string());
        let err = ExportedKey::from_text(&typo).unwrap_err();
        assert_eq!(err.code(), "KEY_INVALID", "typo at {i}: {err}");
    }
    for bad in [
        "",
        "persist-key-v2-aaaa",
        "hello",
        &text[..text.len() - 3],
        &format!("{}aa", text.as_str()),
    ] {
        assert_eq!(
            ExportedKey::from_text(bad).unwrap_err().code(),
            "KEY_INVALID",
            "{bad}"
        );
    }
}
