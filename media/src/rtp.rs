//! RTP (RFC 3550) and RTCP packets: parsing that never panics on any input, and building.
//! RTP and RTCP may share a port (RFC 5761); `is_rtcp` tells them apart by payload type.

/// The fixed RTP header is 12 bytes; anything shorter is not RTP.
pub const RTP_HEADER_LEN: usize = 12;
/// The largest datagram the media node reads or writes.
pub const MAX_PACKET: usize = 1_500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("not RTP version 2")]
    BadVersion,
    #[error("header runs past the end of the packet")]
    Truncated,
    #[error("padding longer than the payload")]
    BadPadding,
    #[error("RTCP length field does not match the packet")]
    BadRtcpLength,
}

/// A parsed RTP packet, borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Where the payload starts in the datagram (after CSRCs and the extension).
    pub payload_offset: usize,
    pub payload: &'a [u8],
}

/// Is this datagram RTCP rather than RTP (RFC 5761 §4: packet types 192–223)?
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 8 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1])
}

pub fn parse(buf: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if buf.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort(buf.len()));
    }
    if buf[0] >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let csrc_count = (buf[0] & 0x0F) as usize;
    let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
    if extension {
        // The extension header: 16-bit profile, 16-bit length in 32-bit words.
        let Some(ext) = buf.get(offset..offset + 4) else {
            return Err(RtpError::Truncated);
        };
        offset += 4 + 4 * u16::from_be_bytes([ext[2], ext[3]]) as usize;
    }
    if offset > buf.len() {
        return Err(RtpError::Truncated);
    }
    let mut end = buf.len();
    if padding {
        let pad = buf[buf.len() - 1] as usize;
        if pad == 0 || offset + pad > end {
            return Err(RtpError::BadPadding);
        }
        end -= pad;
    }
    Ok(RtpPacket {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7F,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload_offset: offset,
        payload: &buf[offset..end],
    })
}

/// The header fields a sender chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Write the 12-byte fixed header (no CSRCs, no extension, no padding).
    pub fn write(&self, out: &mut [u8; RTP_HEADER_LEN]) {
        out[0] = 0x80;
        out[1] = (self.payload_type & 0x7F) | if self.marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }
}

/// Build a whole packet into `out` (cleared first).
pub fn build(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    let mut fixed = [0u8; RTP_HEADER_LEN];
    header.write(&mut fixed);
    out.clear();
    out.extend_from_slice(&fixed);
    out.extend_from_slice(payload);
}

/// One packet of an RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpHeader {
    pub packet_type: u8,
    /// Reception report count / subtype.
    pub count: u8,
    /// The packet's length in bytes, header included.
    pub len: usize,
    /// The sender's SSRC (the first word after the header), if present.
    pub ssrc: Option<u32>,
}

/// Walk an RTCP compound packet; every length field must land exactly on the end.
pub fn parse_rtcp(buf: &[u8]) -> Result<Vec<RtcpHeader>, RtpError> {
    let mut out = Vec::new();
    let mut rest = buf;
    if rest.len() < 4 {
        return Err(RtpError::TooShort(rest.len()));
    }
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtpError::BadRtcpLength);
        }
        if rest[0] >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let len = 4 * (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1);
        if len > rest.len() {
            return Err(RtpError::BadRtcpLength);
        }
        let ssrc = rest
            .get(4..8)
            .filter(|_| len >= 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        out.push(RtcpHeader {
            packet_type: rest[1],
            count: rest[0] & 0x1F,
            len,
            ssrc,
        });
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_csrcs_extensions_and_padding() {
        let mut buf = vec![
            0x80 | 0x20 | 0x10 | 0x01,
            0x80 | 8,
            0x12,
            0x34,
            0,
            0,
            0,
            160,
            1,
            2,
            3,
            4,
        ];
        buf.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 1, 7, 7, 7, 7]); // extension of one word
        buf.extend_from_slice(&[0xD5; 160]);
        buf.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = parse(&buf).unwrap();
        assert!(p.marker);
        assert_eq!(
            (p.payload_type, p.sequence, p.timestamp, p.ssrc),
            (8, 0x1234, 160, 0x0102_0304)
        );
        assert_eq!(p.payload, &[0xD5; 160][..]);
        assert_eq!(parse(&buf[..11]), Err(RtpError::TooShort(11)));
        assert_eq!(parse(&[0x40; 12]), Err(RtpError::BadVersion));
        assert_eq!(
            parse(&[0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::Truncated)
        );
        let mut pad = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200];
        assert_eq!(parse(&pad), Err(RtpError::BadPadding));
        pad[12] = 0;
        assert_eq!(parse(&pad), Err(RtpError::BadPadding));
    }

    #[test]
    fn rtcp_compound_packets_are_walked_and_checked() {
        // A receiver report (no blocks) followed by an SDES with one empty chunk.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 7];
        let sdes = [0x81, 202, 0, 1, 0, 0, 0, 7];
        let compound: Vec<u8> = rr.iter().chain(sdes.iter()).copied().collect();
        assert!(is_rtcp(&compound));
        let headers = parse_rtcp(&compound).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!((headers[0].packet_type, headers[0].ssrc), (201, Some(7)));
        assert_eq!(parse_rtcp(&compound[..12]), Err(RtpError::BadRtcpLength));
        let rtp = [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(!is_rtcp(&rtp));
    }

    proptest! {
        #[test]
        fn no_input_panics_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = parse(&bytes) {
                prop_assert!(p.payload_offset + p.payload.len() <= bytes.len());
            }
            let _ = parse_rtcp(&bytes);
            let _ = is_rtcp(&bytes);
        }

        #[test]
        fn build_then_parse_round_trips(
            marker in any::<bool>(), pt in 0u8..128, seq in any::<u16>(), ts in any::<u32>(), ssrc in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let header = RtpHeader { marker, payload_type: pt, sequence: seq, timestamp: ts, ssrc };
            let mut out = Vec::new();
            build(&header, &payload, &mut out);
            let p = parse(&out).unwrap();
            prop_assert_eq!((p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc), (marker, pt, seq, ts, ssrc));
            prop_assert_eq!(p.payload, &payload[..]);
        }
    }
}
