//! `/persist/pair/2` moves, framed: what a stranger may send a device that
//! offers a code, and what the joiner reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::net::codec::decode;
use persist::net::{PairRequest, PairResponse};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<PairRequest>(data);
    let _ = decode::<PairResponse>(data);
});
