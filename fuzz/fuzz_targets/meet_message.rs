//! `/persist/meet/1` messages, framed: what any stranger can send a
//! public `persist node`, and what a device reads back from one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::net::codec::decode;
use persist::net::meet::{MeetRequest, MeetResponse};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<MeetRequest>(data);
    let _ = decode::<MeetResponse>(data);
});
