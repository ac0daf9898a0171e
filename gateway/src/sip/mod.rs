//! The SIP signaling node's sans-IO core: parsing, transactions, digest auth, registrar and screening.
//!
//! Nothing in here touches a socket, a database or the clock: bytes, lookup results and `now`
//! come in as arguments, and what to send comes back out, so every path runs on a virtual clock.
//! The exception is `hangup`, the small follower that reads hang-up requests from the log
//! and hands them to the node loop.

pub mod abuse;
pub mod b2bua;
pub mod core_bench;
pub use b2bua::anchoring;
pub mod digest;
pub mod dtmf_info;
pub mod fuzzing;
pub mod hangup;
pub mod message;
pub mod node;
pub mod registrar;
pub mod screening;
pub mod transaction;

#[cfg(test)]
mod torture;

/// A map whose keys are already uniformly random 64 or 128 bits (a keyed SipHash, a MAC): the
/// key is its own hash, not hashed again.
pub type PrehashedMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Prehashed>>;

/// Passes on the `u64` (or folded `u128`) its key writes; other writes are mixed in all the same.
#[derive(Default)]
pub struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}
