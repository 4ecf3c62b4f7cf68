//! What a device reads back from its own disk: a sealed row's plaintext
//! (record and key rows of an encrypted store), the keyfile and legacy
//! identity texts, and the plaintext of the sealed secrets file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    persist::storage::fuzz_row_decoder(data);
    persist::platform::native::fuzz_key_files(data);
});
