//! DTMF carried by SIP INFO, the fallback of phones and carriers that do not send RFC 4733
//! events: the body of an `application/dtmf-relay` request (`Signal=5\r\nDuration=160`) or
//! of an `application/dtmf` one (the digit alone). A conference caller's digits reach the
//! media node's collector this way as well as in RTP.
//!
//! Pure: bytes in, a digit (or why not) out. The body comes from the network, so nothing here
//! panics and its size is bounded.

/// The longest body looked at; a DTMF body is a few dozen bytes.
pub const MAX_BODY: usize = 512;
/// The longest tone a `Duration` may announce, in ms (a minute; anything above is nonsense).
pub const MAX_DURATION_MS: u32 = 60_000;

/// What an INFO body says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoDtmf {
    /// One digit: `0`–`9`, `*`, `#`, `A`–`D`.
    Digit(char),
    /// Not a DTMF content type: some other INFO package, none of ours.
    NotDtmf,
}

/// Why a DTMF body is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfBodyError {
    #[error("the body is too long")]
    TooLong,
    #[error("the body is not text")]
    NotText,
    #[error("no Signal")]
    NoSignal,
    #[error("more than one Signal")]
    TwoSignals,
    #[error("not a DTMF signal: {0:?}")]
    BadSignal(String),
    #[error("bad Duration: {0:?}")]
    BadDuration(String),
    #[error("a line without '=': {0:?}")]
    BadLine(String),
}

/// Reads an INFO's body by its `Content-Type` (parameters and case ignored).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<InfoDtmf, DtmfBodyError> {
    let media_type = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some("application/dtmf-relay") => parse_relay(body).map(InfoDtmf::Digit),
        Some("application/dtmf") => parse_plain(body).map(InfoDtmf::Digit),
        _ => Ok(InfoDtmf::NotDtmf),
    }
}

/// `application/dtmf-relay`: `key=value` lines; `Signal` is required, once; `Duration`, if
/// present, is a number of ms; other keys are ignored (vendors add their own).
pub fn parse_relay(body: &[u8]) -> Result<char, DtmfBodyError> {
    let text = text(body)?;
    let mut signal = None;
    for line in text.split(['\r', '\n']) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(DtmfBodyError::BadLine(shorten(line)));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.eq_ignore_ascii_case("signal") {
            if signal.is_some() {
                return Err(DtmfBodyError::TwoSignals);
            }
            signal = Some(digit(value)?);
        } else if key.eq_ignore_ascii_case("duration") {
            match value.parse::<u32>() {
                Ok(ms) if ms <= MAX_DURATION_MS => {}
                _ => return Err(DtmfBodyError::BadDuration(shorten(value))),
            }
        }
    }
    signal.ok_or(DtmfBodyError::NoSignal)
}

/// `application/dtmf`: the digit alone (surrounding white space allowed).
pub fn parse_plain(body: &[u8]) -> Result<char, DtmfBodyError> {
    let value = text(body)?.trim();
    if value.is_empty() {
        return Err(DtmfBodyError::NoSignal);
    }
    digit(value)
}

fn text(body: &[u8]) -> Result<&str, DtmfBodyError> {
    if body.len() > MAX_BODY {
        return Err(DtmfBodyError::TooLong);
    }
    std::str::from_utf8(body).map_err(|_| DtmfBodyError::NotText)
}

/// A signal: the character itself, or its RFC 4733 event code (`10` is `*`, `11` is `#`,
/// `12`–`15` are `A`–`D`), as some gateways send it.
fn digit(value: &str) -> Result<char, DtmfBodyError> {
    let bad = || DtmfBodyError::BadSignal(shorten(value));
    let mut chars = value.chars();
    let (Some(first), rest) = (chars.next(), chars.as_str()) else {
        return Err(bad());
    };
    if rest.is_empty() {
        let c = first.to_ascii_uppercase();
        return match c {
            '0'..='9' | '*' | '#' | 'A'..='D' => Ok(c),
            _ => Err(bad()),
        };
    }
    match value {
        "10" => Ok('*'),
        "11" => Ok('#'),
        "12" => Ok('A'),
        "13" => Ok('B'),
        "14" => Ok('C'),
        "15" => Ok('D'),
        _ => Err(bad()),
    }
}

/// At most 32 characters of a bad value, for the error.
fn shorten(value: &str) -> String {
    value.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RELAY: Option<&str> = Some("application/dtmf-relay");
    const PLAIN: Option<&str> = Some("application/dtmf");

    #[test]
    fn dtmf_relay_bodies_as_phones_send_them() {
        let cases: &[(&[u8], char)] = &[
            (b"Signal=5\r\nDuration=160\r\n", '5'),
            (b"Signal=5\r\nDuration=160", '5'),
            (b"Signal= 1\nDuration= 250\n", '1'),
            (b"signal=*\r\nduration=100\r\n", '*'),
            (b"Signal=#\r\n", '#'),
            (b"Signal=10\r\nDuration=160\r\n", '*'),
            (b"Signal=11\r\nDuration=160\r\n", '#'),
            (b"Signal=d\r\nDuration=160\r\n", 'D'),
            (b"Signal=0\r\nDuration=160\r\nVolume=10\r\n", '0'),
            (b"\r\nSignal=9\r\n\r\n", '9'),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse(RELAY, body),
                Ok(InfoDtmf::Digit(*want)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse(Some("Application/DTMF-Relay; charset=utf-8"), b"Signal=7"),
            Ok(InfoDtmf::Digit('7'))
        );
    }

    #[test]
    fn dtmf_bodies_are_the_digit_alone() {
        assert_eq!(parse(PLAIN, b"5"), Ok(InfoDtmf::Digit('5')));
        assert_eq!(parse(PLAIN, b"#\r\n"), Ok(InfoDtmf::Digit('#')));
        assert_eq!(parse(PLAIN, b" 11 "), Ok(InfoDtmf::Digit('#')));
        assert_eq!(parse(PLAIN, b"b"), Ok(InfoDtmf::Digit('B')));
    }

    #[test]
    fn malformed_dtmf_bodies_are_refused() {
        let relay: &[(&[u8], DtmfBodyError)] = &[
            (b"", DtmfBodyError::NoSignal),
            (b"Duration=160\r\n", DtmfBodyError::NoSignal),
            (b"Signal=\r\n", DtmfBodyError::BadSignal(String::new())),
            (b"Signal=55\r\n", DtmfBodyError::BadSignal("55".into())),
            (b"Signal=x\r\n", DtmfBodyError::BadSignal("x".into())),
            (b"Signal=16\r\n", DtmfBodyError::BadSignal("16".into())),
            (b"Signal=5\r\nSignal=6\r\n", DtmfBodyError::TwoSignals),
            (b"Signal=5\r\nDuration=-1\r\n", DtmfBodyError::BadDuration("-1".into())),
            (
                b"Signal=5\r\nDuration=99999999999\r\n",
                DtmfBodyError::BadDuration("99999999999".into()),
            ),
            (b"Signal 5\r\n", DtmfBodyError::BadLine("Signal 5".into())),
            (b"Signal=\xff\r\n", DtmfBodyError::NotText),
            (b"Signal=\xc3\xa9\r\n", DtmfBodyError::BadSignal("\u{e9}".into())),
        ];
        for (body, want) in relay {
            assert_eq!(
                parse(RELAY, body).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(parse(PLAIN, b""), Err(DtmfBodyError::NoSignal));
        assert_eq!(parse(PLAIN, b"12 3"), Err(DtmfBodyError::BadSignal("12 3".into())));
        let long = vec![b'1'; MAX_BODY + 1];
        assert_eq!(parse(RELAY, &long), Err(DtmfBodyError::TooLong));
        assert_eq!(parse(PLAIN, &long), Err(DtmfBodyError::TooLong));
    }

    #[test]
    fn other_content_types_are_not_dtmf() {
        for content_type in [None, Some("application/sdp"), Some("text/plain"), Some("")] {
            assert_eq!(parse(content_type, b"Signal=5"), Ok(InfoDtmf::NotDtmf));
        }
    }

    proptest! {
        /// Whatever the bytes, the parser answers (a digit of the DTMF set, or an error).
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..700), relay in any::<bool>()) {
            let content_type = if relay { RELAY } else { PLAIN };
            if let Ok(InfoDtmf::Digit(c)) = parse(content_type, &body) {
                prop_assert!(matches!(c, '0'..='9' | '*' | '#' | 'A'..='D'));
            }
        }

        /// Mutated real bodies, too.
        #[test]
        fn mutated_bodies_never_panic(at in 0usize..24, byte in any::<u8>()) {
            let mut body = b"Signal=5\r\nDuration=160\r\n".to_vec();
            let at = at % body.len();
            body[at] = byte;
            let _ = parse(RELAY, &body);
        }
    }
}
