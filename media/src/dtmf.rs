//! RFC 4733 telephone-events: parse the 4-byte payload and turn a stream of them into
//! digits, once each (an event's end packet is sent three times; a new RTP timestamp is a
//! new event), and build them for tests and for sending.

/// The payload type we offer for `telephone-event/8000`.
pub const TELEPHONE_EVENT_PT: u8 = 101;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

/// Parse a telephone-event payload (the first 4 bytes; more are redundant blocks).
pub fn parse_event(payload: &[u8]) -> Option<TelephoneEvent> {
    let b = payload.get(..4)?;
    Some(TelephoneEvent {
        event: b[0],
        end: b[1] & 0x80 != 0,
        volume: b[1] & 0x3F,
        duration: u16::from_be_bytes([b[2], b[3]]),
    })
}

pub fn build_event(e: &TelephoneEvent) -> [u8; 4] {
    let d = e.duration.to_be_bytes();
    [e.event, (e.volume & 0x3F) | if e.end { 0x80 } else { 0 }, d[0], d[1]]
}

/// The digit an event code stands for (0–9, `*`, `#`, A–D).
pub fn digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

pub fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        _ => None,
    }
}

/// Turns telephone-event packets into digits: one digit per event (its RTP timestamp and
/// event code), reported at its first end packet; retransmitted ends and late updates are
/// ignored. The code is part of the key because some senders (sipp replaying one pcap per
/// digit) reuse a timestamp for different digits.
#[derive(Debug, Default, Clone)]
pub struct DtmfDetector {
    /// The timestamp and event code of the last event reported.
    reported: Option<(u32, u8)>,
}

impl DtmfDetector {
    pub fn handle(&mut self, rtp_timestamp: u32, payload: &[u8]) -> Option<char> {
        let event = parse_event(payload)?;
        if !event.end || self.reported == Some((rtp_timestamp, event.event)) {
            return None;
        }
        self.reported = Some((rtp_timestamp, event.event));
        digit(event.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn three_end_packets_make_one_digit_and_a_repeat_is_a_new_event() {
        let mut d = DtmfDetector::default();
        let mut got = String::new();
        for (ts, ev, end) in [
            (1000, 1, false),
            (1000, 1, false),
            (1000, 1, true),
            (1000, 1, true),
            (1000, 1, true),
            (2000, 1, false),
            (2000, 1, true),
            (2000, 1, true),
            (2000, 2, true),
            (2000, 2, true),
            (3000, 10, true),
            (4000, 11, true),
            (5000, 200, true),
        ] {
            let p = build_event(&TelephoneEvent {
                event: ev,
                end,
                volume: 10,
                duration: 800,
            });
            got.extend(d.handle(ts, &p));
        }
        assert_eq!(got, "112*#");
        assert_eq!(d.handle(6000, &[1, 0x80]), None, "a short payload is ignored");
    }

    proptest! {
        #[test]
        fn events_round_trip_and_garbage_never_panics(
            event in any::<u8>(), end in any::<bool>(), volume in 0u8..64, duration in any::<u16>(),
            junk in proptest::collection::vec(any::<u8>(), 0..10), ts in any::<u32>(),
        ) {
            let e = TelephoneEvent { event, end, volume, duration };
            prop_assert_eq!(parse_event(&build_event(&e)), Some(e));
            let _ = DtmfDetector::default().handle(ts, &junk);
        }
    }

    #[test]
    fn digits_and_codes_agree() {
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(digit(event_code(c).unwrap()), Some(c));
        }
        assert_eq!(event_code('x'), None);
    }
}
