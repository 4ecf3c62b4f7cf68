//! Text people paste or type: pairing codes, invites, exported keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::crypto::ExportedKey;
use persist::net::{Invite, PairingCode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = PairingCode::parse(text) {
        let again = PairingCode::parse(&code.text()).expect("a code's text parses");
        assert_eq!(*again.text(), *code.text());
        assert_eq!(again.nameplate(), code.nameplate());
    }
    let _ = Invite::parse(text);
    let _ = ExportedKey::from_text(text);
});
