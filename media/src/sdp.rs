//! Just enough SDP (RFC 4566) for anchoring: read the audio stream's address, port and
//! codecs, and rewrite the address and port to the media node's own. Garbage is an error.

use std::net::{IpAddr, SocketAddr};

use crate::dtmf::TELEPHONE_EVENT_PT;
use crate::g711::Codec;

/// The largest SDP body accepted.
pub const MAX_SDP: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP too large")]
    TooLarge,
    #[error("not SDP: {0}")]
    Malformed(String),
    #[error("no audio stream")]
    NoAudio,
    #[error("no connection address for the audio stream")]
    NoAddress,
    #[error("no common codec (PCMU or PCMA)")]
    NoCodec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStream {
    /// Where the party wants to receive RTP (`None` when the port is 0 or the address 0.0.0.0:
    /// on hold, or learn by latching).
    pub remote: Option<SocketAddr>,
    /// G.711 codecs in the party's order of preference.
    pub codecs: Vec<Codec>,
    /// The telephone-event payload type, if offered.
    pub telephone_event: Option<u8>,
    /// The connection address is 0.0.0.0 (RFC 2543's hold, still sent by many phones).
    pub unspecified_address: bool,
}

impl AudioStream {
    pub fn preferred(&self) -> Codec {
        self.codecs[0]
    }
}

fn lines(sdp: &str) -> Result<Vec<&str>, SdpError> {
    if sdp.len() > MAX_SDP {
        return Err(SdpError::TooLarge);
    }
    let lines: Vec<&str> = sdp
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect();
    if lines.first().map(|l| l.starts_with("v=")) != Some(true) {
        return Err(SdpError::Malformed("must start with v=".into()));
    }
    for l in &lines {
        let b = l.as_bytes();
        if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
            return Err(SdpError::Malformed(format!(
                "bad line `{}`",
                l.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(lines)
}

fn connection_ip(line: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1 (a multicast TTL suffix `/127` is cut off).
    let mut parts = line[2..].split_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SdpError::Malformed(format!("bad connection line `{line}`")));
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    addr.parse()
        .map_err(|_| SdpError::Malformed(format!("bad address `{addr}`")))
}

/// Read the first audio stream.
pub fn parse(sdp: &str) -> Result<AudioStream, SdpError> {
    let lines = lines(sdp)?;
    let mut session_ip = None;
    let mut in_audio = false;
    let mut seen_audio = false;
    let mut media_ip = None;
    let mut port = None;
    let mut formats: Vec<u8> = Vec::new();
    let mut rtpmaps: Vec<(u8, String)> = Vec::new();
    for line in lines {
        if let Some(m) = line.strip_prefix("m=") {
            if seen_audio {
                in_audio = false;
                continue;
            }
            let parts: Vec<&str> = m.split_whitespace().collect();
            if parts.len() < 4 {
                return Err(SdpError::Malformed(format!("bad media line `{line}`")));
            }
            in_audio = parts[0] == "audio";
            if in_audio {
                seen_audio = true;
                port = Some(
                    parts[1]
                        .split('/')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| SdpError::Malformed(format!("bad port in `{line}`")))?,
                );
                for f in &parts[3..] {
                    formats.push(
                        f.parse()
                            .map_err(|_| SdpError::Malformed(format!("bad format `{f}`")))?,
                    );
                }
            }
        } else if line.starts_with("c=") {
            let ip = connection_ip(line)?;
            if in_audio {
                media_ip = Some(ip);
            } else if !seen_audio {
                session_ip = Some(ip);
            }
        } else if in_audio {
            if let Some(map) = line.strip_prefix("a=rtpmap:") {
                let mut it = map.splitn(2, ' ');
                if let (Some(pt), Some(name)) = (it.next().and_then(|p| p.parse().ok()), it.next()) {
                    rtpmaps.push((pt, name.to_ascii_lowercase()));
                }
            }
        }
    }
    if !seen_audio {
        return Err(SdpError::NoAudio);
    }
    let ip = media_ip.or(session_ip).ok_or(SdpError::NoAddress)?;
    let port = port.unwrap_or(0);
    let codecs: Vec<Codec> = formats.iter().filter_map(|pt| Codec::from_payload_type(*pt)).collect();
    if codecs.is_empty() {
        return Err(SdpError::NoCodec);
    }
    let telephone_event = rtpmaps
        .iter()
        .find(|(pt, name)| name.starts_with("telephone-event") && formats.contains(pt))
        .map(|(pt, _)| *pt);
    let remote = if port == 0 || ip.is_unspecified() {
        None
    } else {
        Some(SocketAddr::new(ip, port))
    };
    Ok(AudioStream {
        remote,
        codecs,
        telephone_event,
        unspecified_address: ip.is_unspecified(),
    })
}

/// Rewrite the audio stream to `ip:rtp_port` (RTCP on `rtcp_port`), offering `codec` (and
/// telephone-event) when given, else keeping the formats. Other streams are left alone.
///
/// A hold written as connection address 0.0.0.0 keeps that address (the other side must
/// still read it as a hold); only the port and `o=` name us.
pub fn rewrite(sdp: &str, ip: IpAddr, rtp_port: u16, rtcp_port: u16, codec: Option<Codec>) -> Result<String, SdpError> {
    let audio = parse(sdp)?;
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let origin_ip = ip;
    let ip = if audio.unspecified_address {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    } else {
        ip
    };
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_audio = false;
    let mut done_audio = false;
    for line in lines(sdp)? {
        let keep = if let Some(m) = line.strip_prefix("m=") {
            in_audio = !done_audio && m.starts_with("audio ");
            if in_audio {
                done_audio = true;
                let parts: Vec<&str> = m.split_whitespace().collect();
                let formats = match codec {
                    Some(c) => format!("{} {TELEPHONE_EVENT_PT}", c.payload_type()),
                    None => parts[3..].join(" "),
                };
                out.push_str(&format!("m=audio {rtp_port} {} {formats}\r\n", parts[2]));
                out.push_str(&format!("c=IN {family} {ip}\r\na=rtcp:{rtcp_port}\r\n"));
                if let Some(c) = codec {
                    out.push_str(&format!(
                        "a=rtpmap:{} {}/8000\r\na=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\r\na=fmtp:{TELEPHONE_EVENT_PT} 0-16\r\n",
                        c.payload_type(),
                        c.name()
                    ));
                }
                continue;
            }
            true
        } else if line.starts_with("c=") {
            // Session-level c= points at us too; the audio stream's own c= was written above;
            // other streams keep theirs.
            if in_audio {
                false
            } else if !done_audio {
                out.push_str(&format!("c=IN {family} {ip}\r\n"));
                false
            } else {
                true
            }
        } else if in_audio {
            let drop = line.starts_with("a=rtcp:")
                || (codec.is_some() && (line.starts_with("a=rtpmap:") || line.starts_with("a=fmtp:")));
            !drop
        } else if let Some(o) = line.strip_prefix("o=") {
            // o=<user> <id> <version> IN IP4 <addr>: announce ourselves.
            let parts: Vec<&str> = o.split_whitespace().collect();
            if parts.len() == 6 {
                out.push_str(&format!(
                    "o={} {} {} IN {family} {origin_ip}\r\n",
                    parts[0], parts[1], parts[2]
                ));
                false
            } else {
                true
            }
        } else {
            true
        };
        if keep {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:49171\r\na=sendrecv\r\n\
m=video 0 RTP/AVP 96\r\n";

    #[test]
    fn reads_the_audio_stream() {
        let a = parse(OFFER).unwrap();
        assert_eq!(a.remote, Some("10.0.0.5:49170".parse().unwrap()));
        assert_eq!(a.codecs, vec![Codec::Pcma, Codec::Pcmu]);
        assert_eq!(a.telephone_event, Some(101));
        assert_eq!(a.preferred(), Codec::Pcma);
        // A media-level c= wins over the session's; port 0 means no address yet.
        let held = OFFER.replace(
            "m=audio 49170 RTP/AVP 8 0 101\r\n",
            "m=audio 0 RTP/AVP 0\r\nc=IN IP4 10.9.9.9\r\n",
        );
        assert_eq!(parse(&held).unwrap().remote, None);
    }

    #[test]
    fn rewrites_address_and_port_and_keeps_the_rest() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let out = rewrite(OFFER, ip, 30000, 30001, None).unwrap();
        let back = parse(&out).unwrap();
        assert_eq!(back.remote, Some("203.0.113.7:30000".parse().unwrap()));
        assert_eq!(back.codecs, vec![Codec::Pcma, Codec::Pcmu]);
        assert!(out.contains("a=rtcp:30001\r\n") && !out.contains("49171"));
        assert!(out.contains("o=alice 1 1 IN IP4 203.0.113.7\r\n"));
        assert!(out.contains("a=sendrecv\r\n") && out.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(!out.contains("10.0.0.5"));
        let one = rewrite(OFFER, ip, 30000, 30001, Some(Codec::Pcmu)).unwrap();
        assert_eq!(parse(&one).unwrap().codecs, vec![Codec::Pcmu]);
        assert_eq!(parse(&one).unwrap().telephone_event, Some(101));
    }

    #[test]
    fn a_hold_keeps_its_direction_and_an_unspecified_address() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let sendonly = OFFER.replace("a=sendrecv", "a=sendonly");
        let out = rewrite(&sendonly, ip, 30000, 30001, None).unwrap();
        assert!(out.contains("a=sendonly\r\n") && !out.contains("a=sendrecv"));
        assert_eq!(parse(&out).unwrap().remote, Some("203.0.113.7:30000".parse().unwrap()));
        // RFC 2543 hold: c=0.0.0.0 stays, or the other side would take it as a resume.
        let old_style = OFFER.replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0");
        let out = rewrite(&old_style, ip, 30000, 30001, Some(Codec::Pcma)).unwrap();
        assert!(out.contains("c=IN IP4 0.0.0.0\r\n"), "{out}");
        assert!(!out.contains("c=IN IP4 203.0.113.7"), "{out}");
        assert!(out.contains("o=alice 1 1 IN IP4 203.0.113.7\r\n"));
        let back = parse(&out).unwrap();
        assert!(back.unspecified_address && back.remote.is_none());
        assert!(!parse(OFFER).unwrap().unspecified_address);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "hello",
            "v=0\r\nm=audio x RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\n",
            "v=0\r\nc=IN IP4 1.2.3.4\r\n",
            "v=0\r\nm=audio 1 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 18\r\n",
            "v=0\r\nc=IN IP4 999.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
            "v=0\r\nxx\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
            assert!(rewrite(bad, "127.0.0.1".parse().unwrap(), 1, 2, None).is_err());
        }
        assert_eq!(parse(&"v=0\r\n".repeat(5000)), Err(SdpError::TooLarge));
    }

    proptest! {
        #[test]
        fn no_text_panics_the_parser(s in "\\PC{0,300}", tail in "[a-z]=[ -~]{0,40}") {
            let _ = parse(&s);
            let _ = parse(&format!("v=0\r\n{tail}\r\nm=audio 1 RTP/AVP 0\r\n{s}"));
            let _ = rewrite(&format!("v=0\r\nc=IN IP4 1.2.3.4\r\n{tail}\r\nm=audio 1 RTP/AVP 0\r\n"), "::1".parse().unwrap(), 1, 2, None);
        }
    }
}
