//! Membership logs as stored and as received: decoded, merged into a log
//! with members, and the members derived from the result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::membership::{MemberChange, MembershipLog, MembershipWire};
use persist::{hlc::Hlc, DeviceIdentity, StoreId};

const STORE: StoreId = StoreId::from_bytes([7; 16]);

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = MembershipLog::from_bytes(data) {
        let _ = log.members();
        let _ = log.digest();
    }
    if let Ok(wire) = postcard::from_bytes::<MembershipWire>(data) {
        let founder = DeviceIdentity::from_secret(&[1; 32]);
        let mut log = MembershipLog::founded_by(STORE, founder.device_id());
        let member = DeviceIdentity::from_secret(&[2; 32]).device_id();
        let added = log.append(
            &founder,
            Hlc::from_millis(1),
            MemberChange::Add {
                device: member,
                label: "member".into(),
            },
        );
        assert!(added.is_ok(), "the founder adds a member");
        let wire = MembershipWire {
            store: STORE,
            founder: founder.device_id(),
            entries: wire.entries,
        };
        if log.merge_until(&wire, 1 << 40).is_ok() {
            let members = log.members();
            assert!(members.is_member(&founder.device_id()) || !members.removed.is_empty());
        }
    }
});
