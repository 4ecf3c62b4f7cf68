//! Sealed envelopes (records, commits, keyrings): opened with a key, and
//! what a sealer produces opens again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::crypto::{DataKey, Opener, Sealer};

fuzz_target!(|data: &[u8]| {
    let key = DataKey::from_bytes([9; 32]);
    let _ = Opener::new().open(&key, b"context", data);
    let Ok(mut sealer) = Sealer::new(&key, 3) else {
        return;
    };
    let Ok(sealed) = sealer.seal(b"context", data) else {
        return;
    };
    let opened = Opener::new().open(&key, b"context", &sealed);
    assert_eq!(opened.as_deref().ok(), Some(data), "a sealed message opens");
    assert!(Opener::new().open(&key, b"other", &sealed).is_err());
});
