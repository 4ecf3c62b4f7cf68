//! Received commits: a signature and body as they arrive, verified for a
//! plain and an encrypted store; and any body that decodes, signed by a
//! known device: what `Commit::sign` produces, `Commit::verify` accepts
//! (sizes aside: those are the store's limits, which its writer checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::change::CommitBody;
use persist::crypto::{DataKey, Keyring, Sealer};
use persist::{Commit, DeviceIdentity, Limits, SignedCommit, StoreId};

const STORE: StoreId = StoreId::from_bytes([7; 16]);

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (signature, body) = data.split_at(64);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(signature);
    let signed = SignedCommit {
        body: body.to_vec(),
        signature: sig,
    };
    let limits = Limits::default();
    let keyring = Keyring::from_key(STORE, 0, DataKey::from_bytes([9; 32]));
    let _ = Commit::verify(signed.clone(), STORE, &limits, None);
    let _ = Commit::verify(signed, STORE, &limits, Some(&keyring));

    let Ok(mut decoded) = postcard::from_bytes::<CommitBody>(body) else {
        return;
    };
    let identity = DeviceIdentity::from_secret(&[3; 32]);
    let unbounded = Limits {
        max_value_bytes: usize::MAX,
        max_commit_bytes: usize::MAX,
        max_commit_ops: usize::MAX,
        max_clock_skew_ms: u64::MAX,
    };
    decoded.store = STORE;
    decoded.author = identity.device_id();
    decoded.format = persist::change::COMMIT_FORMAT;
    if let Ok(commit) = Commit::sign(decoded.clone(), &identity, None) {
        if let Err(reason) = Commit::verify(commit.signed, STORE, &unbounded, None) {
            panic!("a commit signed here is refused: {reason}");
        }
    }
    let Ok(mut sealer) = Sealer::new(&DataKey::from_bytes([9; 32]), 0) else {
        return;
    };
    decoded.format = persist::change::SEALED_COMMIT_FORMAT;
    if let Ok(commit) = Commit::sign(decoded, &identity, Some(&mut sealer)) {
        if let Err(reason) = Commit::verify(commit.signed, STORE, &unbounded, Some(&keyring)) {
            panic!("a sealed commit signed here is refused: {reason}");
        }
    }
});
