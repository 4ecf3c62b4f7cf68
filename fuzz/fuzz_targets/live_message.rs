//! `/persist/live/2` messages, framed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::net::codec::decode;
use persist::net::live::LiveMessage;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<LiveMessage>(data);
});
