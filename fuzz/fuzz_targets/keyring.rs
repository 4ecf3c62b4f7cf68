//! Keyrings as stored and as carried by a welcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::crypto::Keyring;

fuzz_target!(|data: &[u8]| {
    if let Ok(keyring) = Keyring::from_bytes(data) {
        let _ = keyring.current();
        if let Ok(bytes) = keyring.to_bytes() {
            let again = Keyring::from_bytes(&bytes).expect("a keyring written here reads back");
            assert_eq!(again.current().0, keyring.current().0);
        }
    }
});
