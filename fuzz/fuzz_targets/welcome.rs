//! The welcome a joiner decodes after pairing: its membership log and
//! keyring, read as `Store::join` reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::crypto::Keyring;
use persist::membership::MembershipLog;
use persist::store::Welcome;

fuzz_target!(|data: &[u8]| {
    let Ok(welcome) = postcard::from_bytes::<Welcome>(data) else {
        return;
    };
    if let Ok(log) = MembershipLog::from_wire(&welcome.membership) {
        let _ = log.members();
    }
    if let Some(bytes) = &welcome.keyring {
        let _ = Keyring::from_bytes(bytes);
    }
});
