//! Boxes sealed to a device (key grants) and one-time boxes (welcomes):
//! opened by the device, and what is sealed opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::crypto::device_box::{open_as_device, open_once, seal_to_device};
use persist::DeviceIdentity;

fuzz_target!(|data: &[u8]| {
    let me = DeviceIdentity::from_secret(&[5; 32]);
    let _ = open_as_device(&me, b"grant", data);
    let _ = open_once(&[6; 32], b"welcome", data);
    if let Ok(sealed) = seal_to_device(&me.device_id(), b"grant", data) {
        let opened = open_as_device(&me, b"grant", &sealed).expect("a box sealed to me opens");
        assert_eq!(opened.as_slice(), data);
    }
});
