//! Checks every request passes before any other layer sees it, and the OPTIONS answer:
//! Max-Forwards exhausted (483), a loop through this node (482), an unsupported `Require`
//! (420), and OPTIONS answered with what the node accepts.

use super::message::{build_response, SipMessage};

/// The methods this node handles, for `Allow`.
pub const ALLOWED_METHODS: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, INFO, NOTIFY";

/// How this node recognises its own Via entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `host[:port]` values this node writes as its Via sent-by, lower-cased.
    pub sent_by: Vec<String>,
    /// Every branch this node generates starts with this (after the RFC 3261 cookie).
    pub branch_prefix: String,
}

/// What to do with a request after screening.
#[derive(Debug, Clone)]
pub enum Screening {
    /// Hand it on to the transaction layer.
    Pass,
    /// Answer with this response and go no further.
    Respond(rsip::Response),
    /// Drop it silently (an ACK that fails screening has no response).
    Drop,
}

/// Screens a request. `to_tag` is used for any response generated here.
pub fn screen_request(request: &SipMessage, node: &NodeIdentity, to_tag: &str) -> Screening {
    let Some(method) = request.method() else {
        return Screening::Pass;
    };
    let answer = |code: u16, extra: &[(&str, String)]| {
        if method == rsip::Method::Ack {
            Screening::Drop
        } else {
            Screening::Respond(build_response(request, code, to_tag, extra))
        }
    };
    if is_looped(request, node) {
        return answer(482, &[]);
    }
    if request.max_forwards == Some(0) && method != rsip::Method::Options {
        return answer(483, &[]);
    }
    // This node implements no SIP extensions, so any required one is unsupported (§8.2.2.3);
    // CANCEL and ACK are exempt.
    let required: Vec<&str> = request
        .header_values("Require")
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .collect();
    if !required.is_empty() && method != rsip::Method::Cancel {
        return answer(420, &[("Unsupported", required.join(", "))]);
    }
    if method == rsip::Method::Options {
        return Screening::Respond(answer_options(request, to_tag));
    }
    Screening::Pass
}

/// `200 OK` to an OPTIONS addressed to this node (RFC 3261 §11.2).
pub fn answer_options(request: &SipMessage, to_tag: &str) -> rsip::Response {
    build_response(
        request,
        200,
        to_tag,
        &[
            ("Allow", ALLOWED_METHODS.to_string()),
            ("Accept", "application/sdp".to_string()),
            ("Accept-Encoding", "identity".to_string()),
            ("Accept-Language", "en".to_string()),
            ("Supported", String::new()),
        ],
    )
}

/// A request that already passed through this node carries a Via with our sent-by and one of
/// our branches: forwarding it again would loop (RFC 3261 §16.3 step 4, simplified to the
/// branch prefix since this node is a B2BUA and never forwards the same transaction).
fn is_looped(request: &SipMessage, node: &NodeIdentity) -> bool {
    request.vias.iter().any(|via| {
        let ours = node.sent_by.iter().any(|s| s.eq_ignore_ascii_case(&via.sent_by));
        let our_branch = via
            .branch
            .as_deref()
            .is_some_and(|b| b.starts_with(&node.branch_prefix));
        ours && our_branch
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeIdentity {
        NodeIdentity {
            sent_by: vec!["sip1.ledgerline.example:5060".into()],
            branch_prefix: "z9hG4bK-ll-".into(),
        }
    }

    fn request(method: &str, extra: &str) -> SipMessage {
        let text = format!(
            "{method} sip:acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n{extra}\
From: <sip:a@acme.example.com>;tag=1\r\nTo: <sip:acme.example.com>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
Content-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    fn code(screening: Screening) -> Option<u16> {
        match screening {
            Screening::Respond(response) => Some(response.status_code.code()),
            _ => None,
        }
    }

    #[test]
    fn options_gets_200_with_allow_and_accept() {
        let Screening::Respond(response) = screen_request(&request("OPTIONS", ""), &node(), "t") else {
            panic!("OPTIONS must be answered");
        };
        let parsed = SipMessage::from_rsip(response.into()).unwrap();
        assert_eq!(parsed.status(), Some(200));
        assert_eq!(parsed.header("Allow"), Some(ALLOWED_METHODS));
        assert_eq!(parsed.header("Accept"), Some("application/sdp"));
    }

    #[test]
    fn max_forwards_zero_gets_483_but_options_is_still_answered() {
        assert_eq!(
            code(screen_request(&request("INVITE", "Max-Forwards: 0\r\n"), &node(), "t")),
            Some(483)
        );
        assert_eq!(
            code(screen_request(&request("OPTIONS", "Max-Forwards: 0\r\n"), &node(), "t")),
            Some(200)
        );
        assert!(matches!(
            screen_request(&request("INVITE", "Max-Forwards: 1\r\n"), &node(), "t"),
            Screening::Pass
        ));
        assert!(matches!(
            screen_request(&request("ACK", "Max-Forwards: 0\r\n"), &node(), "t"),
            Screening::Drop
        ));
    }

    #[test]
    fn our_own_via_and_branch_is_a_loop() {
        let looped = "Via: SIP/2.0/UDP sip1.ledgerline.example:5060;branch=z9hG4bK-ll-abc\r\n";
        assert_eq!(
            code(screen_request(&request("INVITE", looped), &node(), "t")),
            Some(482)
        );
        // Our host with someone else's branch is not a loop (another process on that host).
        let other = "Via: SIP/2.0/UDP sip1.ledgerline.example:5060;branch=z9hG4bKother\r\n";
        assert!(matches!(
            screen_request(&request("INVITE", other), &node(), "t"),
            Screening::Pass
        ));
    }

    #[test]
    fn required_extensions_get_420() {
        let Screening::Respond(response) =
            screen_request(&request("INVITE", "Require: 100rel, timer\r\n"), &node(), "t")
        else {
            panic!("Require must be refused");
        };
        let parsed = SipMessage::from_rsip(response.into()).unwrap();
        assert_eq!(parsed.status(), Some(420));
        assert_eq!(parsed.header("Unsupported"), Some("100rel, timer"));
    }
}
