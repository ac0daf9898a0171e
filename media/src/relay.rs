//! The RTP relay's sans-IO core: per leg a port pair (RTP, RTCP), symmetric latching (the
//! peer's real address is learnt from its first packet, which is what makes phones behind NAT
//! work), SSRC, sequence and timestamps passed through (the first stream on a leg goes out as
//! it came, so RTCP, which passes through too, still names the right SSRC) and rewritten only
//! when the source changes, so each outgoing stream stays continuous, RTCP passed through, and PCMU↔PCMA transcoding when the two legs of a call
//! disagree. A datagram is rewritten in place and the core says where it goes; the driver
//! (`relay_driver`) only moves bytes.

use std::collections::HashMap;
use std::net::SocketAddr;

use uuid::Uuid;

use crate::dtmf::{DtmfDetector, TELEPHONE_EVENT_PT};
use crate::g711::{self, Codec};
use crate::rtp;
use crate::stats::{LegStats, Micros};

/// One socket of the relay: a leg's RTP or RTCP port.
pub type SocketId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Rtp,
    Rtcp,
}

/// Where a rewritten datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub socket: SocketId,
    pub to: SocketAddr,
    pub len: usize,
}

/// Something the relay saw that the SIP node cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    Dtmf { call_id: Uuid, leg_id: Uuid, digit: char },
}

/// Where a leg's media goes when it is not another leg of the same call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The other leg of the call.
    Leg(usize),
    /// Audio goes to a conference room (the driver hands it to the mixer).
    Room,
    Nowhere,
}

#[derive(Debug)]
pub struct Leg {
    pub call_id: Uuid,
    pub leg_id: Uuid,
    pub codec: Codec,
    pub rtp_socket: SocketId,
    pub rtcp_socket: SocketId,
    /// Where the SDP said to send; replaced by the latched address.
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub latched: bool,
    pub sink: Sink,
    pub stats: LegStats,
    dtmf: DtmfDetector,
    /// Outgoing stream state: our SSRC, the next sequence number, and the mapping from the
    /// current source's numbering to ours.
    out_ssrc: u32,
    out_seq: u16,
    out_src: Option<(u32, u16, u32)>,
    out_ts_base: u32,
    /// Something went out on the leg already (relayed or originated by this node).
    out_started: bool,
}

impl Leg {
    /// The header of the next packet this node originates on the leg (mixer output, prompts):
    /// the leg's own SSRC, sequence and a timestamp 160 samples on.
    pub fn next_header(&mut self) -> rtp::RtpHeader {
        let header = rtp::RtpHeader {
            marker: false,
            payload_type: self.codec.payload_type(),
            sequence: self.out_seq,
            timestamp: self.out_ts_base,
            ssrc: self.out_ssrc,
        };
        self.out_seq = self.out_seq.wrapping_add(1);
        self.out_ts_base = self.out_ts_base.wrapping_add(160);
        self.out_src = None;
        self.out_started = true;
        header
    }

    /// Rewrite an outgoing packet's SSRC/sequence/timestamp to this leg's own stream.
    fn rewrite_outgoing(&mut self, buf: &mut [u8], ssrc: u32, seq: u16, ts: u32) {
        if !self.out_started {
            // The leg's first stream passes through unchanged: its SSRC and numbering become ours.
            self.out_started = true;
            self.out_ssrc = ssrc;
            self.out_seq = seq;
            self.out_ts_base = ts;
        }
        let (seq_off, ts_off) = match self.out_src {
            Some((src, s_off, t_off)) if src == ssrc => (s_off, t_off),
            _ => {
                // A new source: continue our numbering from where it stopped.
                let s_off = self.out_seq.wrapping_sub(seq);
                let t_off = self.out_ts_base.wrapping_sub(ts);
                self.out_src = Some((ssrc, s_off, t_off));
                (s_off, t_off)
            }
        };
        let out_seq = seq.wrapping_add(seq_off);
        let out_ts = ts.wrapping_add(ts_off);
        if out_seq.wrapping_sub(self.out_seq) < 0x8000 {
            self.out_seq = out_seq.wrapping_add(1);
            self.out_ts_base = out_ts.wrapping_add(160);
        }
        buf[2..4].copy_from_slice(&out_seq.to_be_bytes());
        buf[4..8].copy_from_slice(&out_ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.out_ssrc.to_be_bytes());
    }
}

/// The relay's state: legs and which socket belongs to which leg.
#[derive(Default)]
pub struct Relay {
    legs: Vec<Option<Leg>>,
    by_socket: HashMap<SocketId, (usize, Channel)>,
    by_leg_id: HashMap<Uuid, usize>,
    events: std::collections::VecDeque<RelayEvent>,
    /// Audio for conference rooms: (leg index, payload range in the buffer) is read by the
    /// driver right after `handle_datagram` returns `Delivered::Room`.
    pub dropped: u64,
}

/// What became of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Forward(Transmit),
    /// Audio for the conference leg `leg_id`; payload at `offset..offset + len` in the buffer,
    /// in the leg's codec.
    Room {
        leg: usize,
        offset: usize,
        len: usize,
    },
    Dropped,
}

impl Relay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a leg on a pair of sockets the driver has opened. Returns its index.
    pub fn add_leg(
        &mut self,
        call_id: Uuid,
        leg_id: Uuid,
        codec: Codec,
        rtp_socket: SocketId,
        rtcp_socket: SocketId,
        remote_rtp: Option<SocketAddr>,
    ) -> usize {
        let index = self.legs.iter().position(Option::is_none).unwrap_or(self.legs.len());
        let out_ssrc = u32::from_be_bytes(leg_id.as_bytes()[..4].try_into().expect("a uuid has 16 bytes"));
        let leg = Leg {
            call_id,
            leg_id,
            codec,
            rtp_socket,
            rtcp_socket,
            remote_rtp,
            remote_rtcp: remote_rtp.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1))),
            latched: false,
            sink: Sink::Nowhere,
            stats: LegStats::default(),
            dtmf: DtmfDetector::default(),
            out_ssrc,
            out_seq: (out_ssrc >> 16) as u16,
            out_src: None,
            out_ts_base: out_ssrc.rotate_left(8),
            out_started: false,
        };
        if index == self.legs.len() {
            self.legs.push(Some(leg));
        } else {
            self.legs[index] = Some(leg);
        }
        self.by_socket.insert(rtp_socket, (index, Channel::Rtp));
        self.by_socket.insert(rtcp_socket, (index, Channel::Rtcp));
        self.by_leg_id.insert(leg_id, index);
        index
    }

    pub fn leg(&self, index: usize) -> Option<&Leg> {
        self.legs.get(index).and_then(Option::as_ref)
    }

    pub fn leg_mut(&mut self, index: usize) -> Option<&mut Leg> {
        self.legs.get_mut(index).and_then(Option::as_mut)
    }

    pub fn find(&self, leg_id: &Uuid) -> Option<usize> {
        self.by_leg_id.get(leg_id).copied()
    }

    /// Connect two legs of a call both ways.
    pub fn bridge(&mut self, a: usize, b: usize) {
        if let Some(leg) = self.leg_mut(a) {
            leg.sink = Sink::Leg(b);
        }
        if let Some(leg) = self.leg_mut(b) {
            leg.sink = Sink::Leg(a);
        }
    }

    pub fn set_sink(&mut self, index: usize, sink: Sink) {
        if let Some(leg) = self.leg_mut(index) {
            leg.sink = sink;
        }
    }

    /// Remove a leg; returns it (with its stats) and frees its sockets.
    pub fn remove_leg(&mut self, index: usize) -> Option<Leg> {
        let leg = self.legs.get_mut(index)?.take()?;
        self.by_socket.remove(&leg.rtp_socket);
        self.by_socket.remove(&leg.rtcp_socket);
        self.by_leg_id.remove(&leg.leg_id);
        for other in self.legs.iter_mut().flatten() {
            if other.sink == Sink::Leg(index) {
                other.sink = Sink::Nowhere;
            }
        }
        Some(leg)
    }

    /// Indices of the legs of a call.
    pub fn legs_of_call(&self, call_id: &Uuid) -> Vec<usize> {
        (0..self.legs.len())
            .filter(|i| self.leg(*i).is_some_and(|l| l.call_id == *call_id))
            .collect()
    }

    /// A datagram arrived on `socket` from `from`: rewrite `buf[..len]` in place and say
    /// where it goes. Never panics on any input.
    pub fn handle_datagram(
        &mut self,
        socket: SocketId,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Micros,
    ) -> Delivered {
        let Some(&(index, channel)) = self.by_socket.get(&socket) else {
            self.dropped += 1;
            return Delivered::Dropped;
        };
        let len = len.min(buf.len());
        match channel {
            Channel::Rtcp => self.handle_rtcp(index, from, &buf[..len]),
            Channel::Rtp => self.handle_rtp(index, from, &mut buf[..len], now),
        }
    }

    fn handle_rtcp(&mut self, index: usize, from: SocketAddr, buf: &[u8]) -> Delivered {
        let Some(leg) = self.legs[index].as_mut() else {
            return Delivered::Dropped;
        };
        if rtp::parse_rtcp(buf).is_err() {
            self.dropped += 1;
            return Delivered::Dropped;
        }
        leg.remote_rtcp = Some(from);
        let Sink::Leg(other) = leg.sink else {
            return Delivered::Dropped;
        };
        match self.leg(other) {
            Some(out) => match out.remote_rtcp {
                Some(to) => Delivered::Forward(Transmit {
                    socket: out.rtcp_socket,
                    to,
                    len: buf.len(),
                }),
                None => Delivered::Dropped,
            },
            None => Delivered::Dropped,
        }
    }

    fn handle_rtp(&mut self, index: usize, from: SocketAddr, buf: &mut [u8], now: Micros) -> Delivered {
        let Ok(packet) = rtp::parse(buf) else {
            self.dropped += 1;
            return Delivered::Dropped;
        };
        let (pt, seq, ts, ssrc, offset, payload_len) = (
            packet.payload_type,
            packet.sequence,
            packet.timestamp,
            packet.ssrc,
            packet.payload_offset,
            packet.payload.len(),
        );
        let Some(leg) = self.legs[index].as_mut() else {
            return Delivered::Dropped;
        };
        // Symmetric RTP: the first packet fixes the peer; later packets from elsewhere are
        // refused (nobody can hijack a latched stream).
        if leg.latched {
            if leg.remote_rtp != Some(from) {
                self.dropped += 1;
                return Delivered::Dropped;
            }
        } else {
            leg.latched = true;
            leg.remote_rtp = Some(from);
        }
        leg.stats.received(seq, ts, payload_len, now);
        let in_codec = leg.codec;
        if pt == TELEPHONE_EVENT_PT {
            if let Some(digit) = leg.dtmf.handle(ts, &buf[offset..offset + payload_len]) {
                self.events.push_back(RelayEvent::Dtmf {
                    call_id: leg.call_id,
                    leg_id: leg.leg_id,
                    digit,
                });
            }
        }
        let sink = leg.sink;
        match sink {
            Sink::Nowhere => Delivered::Dropped,
            Sink::Room => {
                if Codec::from_payload_type(pt) == Some(in_codec) {
                    Delivered::Room {
                        leg: index,
                        offset,
                        len: payload_len,
                    }
                } else {
                    Delivered::Dropped
                }
            }
            Sink::Leg(other) => {
                let Some(out) = self.legs.get_mut(other).and_then(Option::as_mut) else {
                    return Delivered::Dropped;
                };
                let Some(to) = out.remote_rtp else {
                    return Delivered::Dropped;
                };
                if let Some(codec) = Codec::from_payload_type(pt) {
                    if codec != out.codec {
                        g711::transcode(codec, out.codec, &mut buf[offset..offset + payload_len]);
                        buf[1] = (buf[1] & 0x80) | out.codec.payload_type();
                    }
                }
                out.rewrite_outgoing(buf, ssrc, seq, ts);
                out.stats.sent(payload_len);
                Delivered::Forward(Transmit {
                    socket: out.rtp_socket,
                    to,
                    len: buf.len(),
                })
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        rtp::build(
            &rtp::RtpHeader {
                marker: false,
                payload_type: pt,
                sequence: seq,
                timestamp: ts,
                ssrc,
            },
            payload,
            &mut out,
        );
        out
    }

    fn call() -> (Relay, usize, usize) {
        let mut r = Relay::new();
        let a = r.add_leg(Uuid::nil(), Uuid::from_u128(1), Codec::Pcmu, 0, 1, Some(addr(4000)));
        let b = r.add_leg(Uuid::nil(), Uuid::from_u128(2), Codec::Pcma, 2, 3, Some(addr(5000)));
        r.bridge(a, b);
        (r, a, b)
    }

    #[test]
    fn latches_transcodes_and_keeps_the_outgoing_stream_continuous() {
        let (mut r, _, b) = call();
        // The phone is behind NAT: its packets come from another port than its SDP said.
        let nat = addr(40_000);
        let mut p = packet(0, 100, 1000, 7, &[0xFF; 160]);
        let len = p.len();
        let Delivered::Forward(t) = r.handle_datagram(0, nat, &mut p, len, 0) else {
            panic!("forwarded")
        };
        assert_eq!((t.socket, t.to), (2, addr(5000)));
        let out = rtp::parse(&p[..t.len]).unwrap();
        assert_eq!(out.payload_type, 8, "PCMU became PCMA");
        assert_eq!(
            (out.ssrc, out.sequence, out.timestamp),
            (7, 100, 1000),
            "SSRC, sequence and timestamp pass through"
        );
        assert_eq!(out.payload, &[0xD5; 160][..], "µ-law silence is A-law silence");
        let first_seq = out.sequence;
        // B answers: it goes to the latched address, not the SDP one.
        let mut back = packet(8, 9, 50, 99, &[0xD5; 160]);
        let len = back.len();
        let Delivered::Forward(t) = r.handle_datagram(2, addr(5000), &mut back, len, 0) else {
            panic!("forwarded")
        };
        assert_eq!(t.to, nat);
        // Another address cannot hijack the latched stream.
        let mut evil = packet(0, 101, 1160, 7, &[0; 160]);
        let len = evil.len();
        assert_eq!(r.handle_datagram(0, addr(6666), &mut evil, len, 0), Delivered::Dropped);
        // The source restarts with a new SSRC and numbering: the outgoing stream continues.
        let mut p2 = packet(0, 5, 777, 8, &[0xFF; 160]);
        let len = p2.len();
        let Delivered::Forward(t) = r.handle_datagram(0, nat, &mut p2, len, 20_000) else {
            panic!()
        };
        let out2 = rtp::parse(&p2[..t.len]).unwrap();
        assert_eq!(out2.sequence, first_seq.wrapping_add(1));
        assert_eq!((out2.ssrc, out2.timestamp), (out.ssrc, 1160));
        let stats = &r.leg(b).unwrap().stats;
        assert_eq!((stats.packets_sent, stats.bytes_sent), (2, 320));
    }

    #[test]
    fn rtcp_passes_through_and_dtmf_is_reported_once() {
        let (mut r, _, _) = call();
        let mut rr = vec![0x80, 201, 0, 1, 0, 0, 0, 7];
        let Delivered::Forward(t) = r.handle_datagram(1, addr(4001), &mut rr, 8, 0) else {
            panic!()
        };
        assert_eq!((t.socket, t.to, t.len), (3, addr(5001), 8));
        let mut junk = vec![1, 2, 3];
        assert_eq!(r.handle_datagram(1, addr(4001), &mut junk, 3, 0), Delivered::Dropped);
        for _ in 0..3 {
            let mut ev = packet(TELEPHONE_EVENT_PT, 1, 8000, 7, &[5, 0x80, 3, 0x20]);
            let len = ev.len();
            r.handle_datagram(0, addr(4000), &mut ev, len, 0);
        }
        assert_eq!(
            r.poll_event(),
            Some(RelayEvent::Dtmf {
                call_id: Uuid::nil(),
                leg_id: Uuid::from_u128(1),
                digit: '5'
            })
        );
        assert_eq!(r.poll_event(), None);
    }

    proptest! {
        #[test]
        fn no_datagram_panics_the_relay(
            bytes in proptest::collection::vec(any::<u8>(), 0..400), socket in 0usize..6, claimed in 0usize..500,
        ) {
            let (mut r, _, _) = call();
            let mut buf = bytes.clone();
            let _ = r.handle_datagram(socket, addr(4000), &mut buf, claimed, 0);
        }
    }
}
