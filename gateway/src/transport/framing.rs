//! Stream framing for SIP over TCP (RFC 3261 §18.3): a message ends where its headers end
//! plus `Content-Length` bytes of body. Bounded: a peer cannot make us buffer without limit.

/// Largest SIP message we accept on any transport.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest header section we look through for its end.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("the header section exceeds {MAX_HEADER_BYTES} bytes")]
    HeadersTooLong,
    #[error("Content-Length is missing")]
    NoContentLength,
    #[error("Content-Length `{0}` is not a number")]
    BadContentLength(String),
    #[error("the message exceeds {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
}

/// What the framer found in the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole SIP message.
    Message(Vec<u8>),
    /// A keep-alive (RFC 5626 double CRLF): answer with a single CRLF.
    KeepAlive,
}

/// Accumulates bytes from a stream and cuts them into messages.
#[derive(Debug, Default)]
pub struct Framer {
    buffer: Vec<u8>,
}

impl Framer {
    pub fn new() -> Self {
        Framer::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or an error after
    /// which the connection should be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        // Keep-alives and stray line ends between messages.
        if self.buffer.starts_with(b"\r\n\r\n") {
            self.buffer.drain(..4);
            return Ok(Some(Frame::KeepAlive));
        }
        let leading = self.buffer.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
        if leading > 0 && leading < self.buffer.len() {
            self.buffer.drain(..leading);
        }
        let Some(header_end) = find(&self.buffer, b"\r\n\r\n") else {
            if self.buffer.len() > MAX_HEADER_BYTES {
                return Err(FramingError::HeadersTooLong);
            }
            return Ok(None);
        };
        if header_end > MAX_HEADER_BYTES {
            return Err(FramingError::HeadersTooLong);
        }
        let body_len = content_length(&self.buffer[..header_end])?;
        let total = header_end + 4 + body_len;
        if total > MAX_MESSAGE_BYTES {
            return Err(FramingError::TooLarge);
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let rest = self.buffer.split_off(total);
        let message = std::mem::replace(&mut self.buffer, rest);
        Ok(Some(Frame::Message(message)))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of `Content-Length` (or its compact form `l`) in a header section.
fn content_length(headers: &[u8]) -> Result<usize, FramingError> {
    let text = String::from_utf8_lossy(headers);
    let mut found = None;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            let value = value.trim();
            let length: usize = value
                .parse()
                .map_err(|_| FramingError::BadContentLength(value.chars().take(20).collect()))?;
            found = Some(length);
        }
    }
    found.ok_or(FramingError::NoContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INVITE: &[u8] =
        b"INVITE sip:bob@b.test SIP/2.0\r\nVia: SIP/2.0/TCP a.test;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";
    const OPTIONS: &[u8] = b"OPTIONS sip:b.test SIP/2.0\r\nl: 0\r\n\r\n";

    fn frames(framer: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame().unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn cuts_back_to_back_messages_and_keepalives() {
        let mut framer = Framer::new();
        let mut bytes = INVITE.to_vec();
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(OPTIONS);
        framer.push(&bytes);
        assert_eq!(
            frames(&mut framer),
            vec![
                Frame::Message(INVITE.to_vec()),
                Frame::KeepAlive,
                Frame::Message(OPTIONS.to_vec())
            ]
        );
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn waits_for_the_whole_body() {
        let mut framer = Framer::new();
        framer.push(&INVITE[..INVITE.len() - 2]);
        assert_eq!(framer.next_frame(), Ok(None));
        framer.push(&INVITE[INVITE.len() - 2..]);
        assert_eq!(framer.next_frame(), Ok(Some(Frame::Message(INVITE.to_vec()))));
    }

    #[test]
    fn refuses_what_would_grow_without_bound() {
        let mut framer = Framer::new();
        framer.push(b"INVITE sip:x SIP/2.0\r\nContent-Length: 999999999\r\n\r\n");
        assert_eq!(framer.next_frame(), Err(FramingError::TooLarge));
        let mut framer = Framer::new();
        framer.push(&vec![b'a'; MAX_HEADER_BYTES + 1]);
        assert_eq!(framer.next_frame(), Err(FramingError::HeadersTooLong));
        let mut framer = Framer::new();
        framer.push(b"INVITE sip:x SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(framer.next_frame(), Err(FramingError::NoContentLength));
        let mut framer = Framer::new();
        framer.push(b"INVITE sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(framer.next_frame(), Err(FramingError::BadContentLength(_))));
    }

    proptest! {
        #[test]
        fn any_split_of_the_stream_gives_the_same_messages(cuts in proptest::collection::vec(0usize..80, 0..6)) {
            let mut stream = INVITE.to_vec();
            stream.extend_from_slice(OPTIONS);
            stream.extend_from_slice(INVITE);
            let mut framer = Framer::new();
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts {
                let end = (at + cut).min(stream.len());
                framer.push(&stream[at..end]);
                at = end;
                got.extend(frames(&mut framer));
            }
            framer.push(&stream[at..]);
            got.extend(frames(&mut framer));
            prop_assert_eq!(got, vec![Frame::Message(INVITE.to_vec()), Frame::Message(OPTIONS.to_vec()), Frame::Message(INVITE.to_vec())]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut framer = Framer::new();
            framer.push(&bytes);
            for _ in 0..64 {
                match framer.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
