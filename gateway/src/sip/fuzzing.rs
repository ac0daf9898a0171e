//! The parser's fuzz entry point, shared by `gateway/fuzz` (cargo fuzz) and the proptests that
//! stand in for it on stable Rust, so both exercise exactly the same paths.

use super::message::{build_response, SipMessage};
use crate::transport::framing::Framer;

/// Parses `bytes` as a datagram and as a stream, and runs every reader and builder on what
/// parses. Must never panic; a response built from an accepted request must itself parse.
pub fn exercise_parser(bytes: &[u8]) {
    let mut framer = Framer::new();
    framer.push(bytes);
    // Bounded: each frame consumes bytes, and a frame is at least a keep-alive's four.
    for _ in 0..bytes.len() / 4 + 1 {
        if !matches!(framer.next_frame(), Ok(Some(_))) {
            break;
        }
    }
    let Ok(message) = SipMessage::parse(bytes) else {
        return;
    };
    let _ = message.expires();
    let _ = message.contacts();
    let _ = message.digest_credentials(false);
    let _ = message.digest_credentials(true);
    let _ = message.request_domain();
    let _ = super::transaction::TransactionKey::of(&message);
    if message.method().is_some() {
        let response = build_response(&message, 400, "fuzz", &[]);
        assert!(
            SipMessage::from_rsip(response.into()).is_ok(),
            "a response to an accepted request must parse"
        );
    }
    let _ = SipMessage::parse(&message.to_bytes());
}
