//! Per-leg media statistics: packets, bytes, loss from the extended sequence number (with
//! wrap, RFC 3550 A.1) and interarrival jitter (A.8) computed in integer microseconds, so
//! the figures that reach `CallEnded` are integers and replays compare byte for byte.

use domain::call::LegMedia;
use uuid::Uuid;

/// Microseconds on the node's monotonic clock, passed in as input.
pub type Micros = u64;

/// µs per RTP timestamp unit at 8 kHz.
const US_PER_TICK: i64 = 125;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegStats {
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    base_seq: Option<u32>,
    /// Highest sequence number seen, extended with the wrap count.
    max_ext_seq: u32,
    last_transit_us: Option<i64>,
    /// Jitter ×16, as the RFC's integer form keeps it.
    jitter16_us: u64,
}

impl LegStats {
    /// One received RTP packet (payload bytes only count as bytes).
    pub fn received(&mut self, sequence: u16, timestamp: u32, payload_len: usize, now: Micros) {
        self.packets_received += 1;
        self.bytes_received += payload_len as u64;
        match self.base_seq {
            None => {
                self.base_seq = Some(sequence as u32);
                self.max_ext_seq = sequence as u32;
            }
            Some(_) => {
                let max_low = self.max_ext_seq as u16;
                let delta = sequence.wrapping_sub(max_low);
                // Ahead by less than half the space: newer (possibly wrapped); else late/duplicate.
                if delta != 0 && delta < 0x8000 {
                    self.max_ext_seq = self.max_ext_seq.wrapping_add(delta as u32);
                }
            }
        }
        let transit = now as i64 - timestamp as i64 * US_PER_TICK;
        if let Some(last) = self.last_transit_us {
            let d = (transit - last).unsigned_abs();
            // J += (|D| - J) / 16, in the ×16 integer form.
            self.jitter16_us = self.jitter16_us + d - ((self.jitter16_us + 8) >> 4);
        }
        self.last_transit_us = Some(transit);
    }

    pub fn sent(&mut self, payload_len: usize) {
        self.packets_sent += 1;
        self.bytes_sent += payload_len as u64;
    }

    /// Packets expected from the sequence numbers but not received (never negative).
    pub fn lost(&self) -> u64 {
        match self.base_seq {
            None => 0,
            Some(base) => {
                let expected = (self.max_ext_seq as u64).saturating_sub(base as u64) + 1;
                expected.saturating_sub(self.packets_received)
            }
        }
    }

    pub fn jitter_us(&self) -> u64 {
        self.jitter16_us >> 4
    }

    pub fn to_leg_media(&self, leg_id: Uuid, codec: &str) -> LegMedia {
        LegMedia {
            leg_id,
            codec: codec.to_string(),
            packets_received: self.packets_received,
            packets_sent: self.packets_sent,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            packets_lost: self.lost(),
            jitter_us: self.jitter_us(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn loss_counts_across_the_sequence_wrap() {
        let mut s = LegStats::default();
        let mut seq: u16 = 65_530;
        for i in 0..20u32 {
            // Drop packets 3 and 9 (those sequence numbers never arrive).
            if i != 3 && i != 9 {
                s.received(seq, i * 160, 160, i as u64 * 20_000);
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(s.packets_received, 18);
        assert_eq!(s.lost(), 2);
        assert_eq!(s.jitter_us(), 0, "perfectly paced packets have no jitter");
        // A late duplicate does not move the highest sequence number.
        s.received(65_531, 160, 160, 400_000);
        assert_eq!(s.lost(), 1);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut s = LegStats::default();
        // Every other packet arrives 1 ms late: |D| is 1000 µs each time.
        for i in 0..2000u64 {
            let late = if i % 2 == 1 { 1_000 } else { 0 };
            s.received(i as u16, i as u32 * 160, 160, i * 20_000 + late);
        }
        // J converges to the mean |D|.
        assert!((990..=1000).contains(&s.jitter_us()), "{}", s.jitter_us());
        let m = s.to_leg_media(Uuid::nil(), "PCMU");
        assert_eq!(
            (m.packets_received, m.bytes_received, m.packets_lost),
            (2000, 320_000, 0)
        );
    }

    proptest! {
        #[test]
        fn any_arrival_order_keeps_counters_sane(
            seqs in proptest::collection::vec(any::<u16>(), 1..200),
            times in proptest::collection::vec(0u64..10_000_000, 1..200),
        ) {
            let mut s = LegStats::default();
            for (i, seq) in seqs.iter().enumerate() {
                s.received(*seq, *seq as u32 * 160, 160, times[i % times.len()]);
            }
            prop_assert_eq!(s.packets_received, seqs.len() as u64);
            prop_assert!(s.lost() < 1 << 32);
        }
    }
}
