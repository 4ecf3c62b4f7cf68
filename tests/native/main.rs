//! Native-only integration tests: SQLite files on disk, the keyfile, the
//! `persist` command, and crash durability under SIGKILL.

#![cfg(not(all(target_family = "wasm", target_os = "unknown")))]

mod cli;
mod disk_full;
mod durability;
mod encrypted;
mod host_storage;
mod p2p;
mod p2p_trust;
mod pair_confirm;
mod public_node;
mod sealed;
mod server_processes;
mod sqlite;
mod strangers;
mod sync_server;
mod trust_attacks;
mod vectors;

/// A small deterministic generator for test schedules (seed printed by callers).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> (Rng, u64) {
        let seed = std::env::var("PERSIST_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        (Rng(seed | 1), seed)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}
