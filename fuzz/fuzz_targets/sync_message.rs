//! `/persist/sync/2` requests and responses, framed, as a node reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persist::net::codec::decode;
use persist::net::{SyncRequest, SyncResponse};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<SyncRequest>(data);
    let _ = decode::<SyncResponse>(data);
});
