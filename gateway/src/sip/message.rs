//! The one wrapper around `rsip`: every workaround for its gaps lives here, each with a test.
//!
//! `rsip` 0.4 parses the start line, the request URI and the header syntax well, and builds
//! messages, but it has gaps that matter on a public port:
//! - compact header names (`i`, `v`, `f`, ...) are not recognised, so they are expanded first;
//! - folded header lines (continuations starting with a space) are not unfolded;
//! - whitespace before a header's colon is refused;
//! - comma-separated lists (`Via: a, b`, `Contact: a, b`) stay one header;
//! - the body is "the rest of the datagram": `Content-Length` is not honoured;
//! - unknown methods and RFC 8760's `SHA-256` token are refused, digest `nc` is read as a
//!   decimal `u8` (it is 8 hex digits), and `-sess` algorithms have no handling;
//! - a URI re-serialized by rsip may differ from the bytes sent (URI headers are dropped),
//!   which would break the digest `uri=` check, so raw URI text is kept wherever it matters.
//!
//! So this module reads the start line and splits and normalizes the head itself (rsip's
//! grammar costs microseconds a message; it is asked only about URIs of uncommon shape),
//! validates what the core relies on (one Call-ID, a CSeq matching the method, From, To, a Via
//! with a branch), keeps the normalized header list as the one source of truth for reading
//! values and for rendering a parsed message again, and never panics on any input. rsip still
//! builds every message the node composes (`build_response` and friends, rendered by
//! [`into_bytes`]).

use std::borrow::Cow;
use std::fmt;

/// The largest message accepted, over any transport; a larger datagram or frame is refused.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The most header fields (after splitting comma lists) one message may carry.
pub const MAX_HEADERS: usize = 128;
/// The most parameters a digest credential may carry; real clients send about ten.
const MAX_DIGEST_PARAMS: usize = 32;

/// Every method rsip knows, with its token as rsip's `Display` writes it. rsip's `Display`
/// upper-cases the variant's name into a fresh String each time, and its `FromStr` runs its
/// tokenizer: on the hot path these are a table lookup instead (a test checks both against rsip).
const METHODS: [(rsip::Method, &str); 14] = [
    (rsip::Method::Ack, "ACK"),
    (rsip::Method::Bye, "BYE"),
    (rsip::Method::Cancel, "CANCEL"),
    (rsip::Method::Info, "INFO"),
    (rsip::Method::Invite, "INVITE"),
    (rsip::Method::Message, "MESSAGE"),
    (rsip::Method::Notify, "NOTIFY"),
    (rsip::Method::Options, "OPTIONS"),
    (rsip::Method::PRack, "PRACK"),
    (rsip::Method::Publish, "PUBLISH"),
    (rsip::Method::Refer, "REFER"),
    (rsip::Method::Register, "REGISTER"),
    (rsip::Method::Subscribe, "SUBSCRIBE"),
    (rsip::Method::Update, "UPDATE"),
];

/// A method's token, as rsip's `Display` writes it.
pub fn method_name(method: rsip::Method) -> &'static str {
    METHODS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, name)| *name)
        .unwrap_or("UNKNOWN")
}

/// The method a token names, matched without regard to case (as rsip's `FromStr` does).
fn method_ignoring_case(token: &str) -> Option<rsip::Method> {
    METHODS
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(token))
        .map(|(m, _)| *m)
}

/// Header fields in order as `(canonical name, value)`. The values are kept one after
/// another in one String (a message's fields cost one allocation, not one each).
#[derive(Debug, Clone, Default)]
pub struct HeaderFields {
    text: String,
    fields: Vec<(Cow<'static, str>, u32, u32)>,
}

impl HeaderFields {
    fn with_capacity(fields: usize, text: usize) -> HeaderFields {
        HeaderFields {
            text: String::with_capacity(text),
            fields: Vec::with_capacity(fields),
        }
    }

    fn push(&mut self, name: Cow<'static, str>, value: &str) {
        let start = self.text.len();
        self.text.push_str(value);
        // A message is at most MAX_MESSAGE_BYTES, far below u32::MAX.
        self.fields.push((name, start as u32, self.text.len() as u32));
    }

    /// Appends to the last field's value (an unfolded continuation line); `false` when there is none.
    fn extend_last(&mut self, more: &str) -> bool {
        let Some(last) = self.fields.last_mut() else {
            return false;
        };
        // The last field's value ends the text, so it grows in place.
        self.text.push_str(more);
        last.2 = self.text.len() as u32;
        true
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Every field in order, as `(canonical name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields.iter().map(|(name, start, end)| {
            (
                name.as_ref(),
                self.text.get(*start as usize..*end as usize).unwrap_or(""),
            )
        })
    }
}

impl PartialEq for HeaderFields {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HeaderFields {}

/// Why bytes were refused as a SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    TooLarge {
        len: usize,
    },
    TooManyHeaders,
    NoEndOfHeaders,
    NotUtf8,
    BadHeaderLine,
    BadContentLength,
    TruncatedBody {
        declared: usize,
        received: usize,
    },
    /// rsip refused the normalized text; its message says where.
    Rsip(String),
    UnsupportedVersion,
    MissingHeader(&'static str),
    BadHeader(&'static str),
    CSeqMethodMismatch,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLarge { len } => write!(f, "message of {len} bytes exceeds {MAX_MESSAGE_BYTES}"),
            ParseError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
            ParseError::NoEndOfHeaders => write!(f, "no empty line ends the headers"),
            ParseError::NotUtf8 => write!(f, "the head is not UTF-8"),
            ParseError::BadHeaderLine => write!(f, "a header line has no name or colon"),
            ParseError::BadContentLength => write!(f, "Content-Length is not a number"),
            ParseError::TruncatedBody { declared, received } => {
                write!(f, "Content-Length {declared} but only {received} body bytes")
            }
            ParseError::Rsip(e) => write!(f, "rsip: {e}"),
            ParseError::UnsupportedVersion => write!(f, "not SIP/2.0"),
            ParseError::MissingHeader(h) => write!(f, "missing {h}"),
            ParseError::BadHeader(h) => write!(f, "malformed {h}"),
            ParseError::CSeqMethodMismatch => write!(f, "CSeq method differs from the request method"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A parsed, validated SIP message: what its start line says, and the fields the core relies on.
#[derive(Debug, Clone)]
pub struct SipMessage {
    /// What the start line says.
    start: StartLine,
    /// The start line as checked (a request's user part escaped, see [`read_start_line`]).
    start_line: String,
    /// The Request-URI exactly as sent; rsip's parsed form may differ (see [`uri_user_host`]).
    pub request_uri: Option<String>,
    /// Every header field in order, with canonical (long) names and comma lists split.
    pub headers: HeaderFields,
    pub call_id: String,
    pub cseq: CSeq,
    pub from: NameAddr,
    pub to: NameAddr,
    /// Every Via value, topmost first; never empty.
    pub vias: Vec<Via>,
    pub max_forwards: Option<u32>,
    pub body: Vec<u8>,
}

/// A request's method or a response's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartLine {
    Request(rsip::Method),
    Response(u16),
}

/// `CSeq: 4711 INVITE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: rsip::Method,
}

/// A From or To value: the URI as sent and its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The URI exactly as sent (inside `<>` when present).
    pub uri: String,
    pub tag: Option<String>,
    /// The whole header value, for copying into responses unchanged.
    pub value: String,
}

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, ... upper-cased.
    pub transport: String,
    /// `host[:port]` as sent.
    pub sent_by: String,
    pub branch: Option<String>,
    pub value: String,
}

/// One Contact of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    /// `Contact: *`, only valid with `Expires: 0`.
    Star,
    Uri {
        /// The URI exactly as sent: stored and returned without rsip's re-serialization.
        uri: String,
        expires: Option<u32>,
    },
}

/// The digest algorithms a credential may name (RFC 7616, RFC 8760).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
    Other(String),
}

/// Parameters of an `Authorization` or `Proxy-Authorization` digest credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    /// The `uri=` value exactly as sent, since the response hash covers these bytes.
    pub uri: String,
    pub response: String,
    pub algorithm: DigestAlgorithm,
    pub qop: Option<String>,
    pub cnonce: Option<String>,
    /// The nonce count, read as the 8 hex digits RFC 7616 specifies.
    pub nc: Option<u32>,
    pub nc_text: Option<String>,
    pub opaque: Option<String>,
}

impl SipMessage {
    /// Parses one complete datagram (or one frame cut by `transport::framing::Framer`).
    pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ParseError::TooLarge { len: bytes.len() });
        }
        let bytes = skip_leading_crlf(bytes);
        let (head_end, body_start) = find_end_of_headers(bytes).ok_or(ParseError::NoEndOfHeaders)?;
        // `find_end_of_headers` returns positions inside `bytes`, so these slices are in bounds.
        let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| ParseError::NotUtf8)?;
        let (start_line, headers) = normalize_head(head)?;
        let (start, start_line, request_uri) = read_start_line(start_line)?;
        let available = &bytes[body_start..];
        let body = match content_length(&headers)? {
            Some(declared) if declared > available.len() => {
                return Err(ParseError::TruncatedBody {
                    declared,
                    received: available.len(),
                })
            }
            // Bytes after Content-Length are ignored over UDP (RFC 3261 §18.3).
            // In bounds: the arm above took every `declared` larger than what is available.
            Some(declared) => &available[..declared],
            None => available,
        };
        let mut message = Self::validate(start, start_line, headers, body.to_vec())?;
        message.request_uri = request_uri;
        Ok(message)
    }

    /// Builds the validated form of a message this node composed itself.
    pub fn from_rsip(message: rsip::SipMessage) -> Result<SipMessage, ParseError> {
        SipMessage::parse(&to_bytes(&message))
    }

    fn validate(
        start: StartLine,
        start_line: String,
        headers: HeaderFields,
        body: Vec<u8>,
    ) -> Result<SipMessage, ParseError> {
        let call_id = single(&headers, "Call-ID")?.to_string();
        if call_id.is_empty() || call_id.contains(char::is_whitespace) {
            return Err(ParseError::BadHeader("Call-ID"));
        }
        let cseq = parse_cseq(single(&headers, "CSeq")?)?;
        if let StartLine::Request(method) = start {
            if method != cseq.method {
                return Err(ParseError::CSeqMethodMismatch);
            }
        }
        let from = parse_name_addr(single(&headers, "From")?).ok_or(ParseError::BadHeader("From"))?;
        let to = parse_name_addr(single(&headers, "To")?).ok_or(ParseError::BadHeader("To"))?;
        let mut vias = Vec::new();
        for (name, value) in headers.iter() {
            if name == "Via" {
                vias.push(parse_via(value).ok_or(ParseError::BadHeader("Via"))?);
            }
        }
        if vias.is_empty() {
            return Err(ParseError::MissingHeader("Via"));
        }
        let max_forwards = match optional_single(&headers, "Max-Forwards")? {
            Some(value) => Some(
                value
                    .parse::<u32>()
                    .map_err(|_| ParseError::BadHeader("Max-Forwards"))?,
            ),
            None => None,
        };
        Ok(SipMessage {
            start,
            start_line,
            request_uri: None,
            headers,
            call_id,
            cseq,
            from,
            to,
            vias,
            max_forwards,
            body,
        })
    }

    /// The request's method, or `None` for a response.
    pub fn method(&self) -> Option<rsip::Method> {
        match self.start {
            StartLine::Request(method) => Some(method),
            StartLine::Response(_) => None,
        }
    }

    /// The response's status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Request(_) => None,
            StartLine::Response(code) => Some(code),
        }
    }

    /// The request URI's host, lower-cased: the tenant's domain for a REGISTER.
    pub fn request_domain(&self) -> Option<String> {
        let (_, host) = uri_user_host(self.request_uri.as_deref()?)?;
        Some(host)
    }

    /// The top Via's branch, which names the transaction (RFC 3261 §17.2.3).
    pub fn branch(&self) -> Option<&str> {
        self.vias.first().and_then(|via| via.branch.as_deref())
    }

    /// The values of every header field with this (long, case-insensitive) name, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of a header, if any.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.header_values(name).next()
    }

    /// `Expires` as delta-seconds; `Err` when present but not a number.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        match self.header("Expires") {
            Some(value) => parse_delta_seconds(value)
                .map(Some)
                .ok_or(ParseError::BadHeader("Expires")),
            None => Ok(None),
        }
    }

    /// Every Contact, `*` included; `Err` when one is malformed.
    pub fn contacts(&self) -> Result<Vec<Contact>, ParseError> {
        let mut contacts = Vec::new();
        for value in self.header_values("Contact") {
            contacts.push(parse_contact(value).ok_or(ParseError::BadHeader("Contact"))?);
        }
        Ok(contacts)
    }

    /// The digest credentials in `Authorization` (or `Proxy-Authorization` when `proxy`).
    /// `None` when absent, `Some(Err)` when present but malformed.
    pub fn digest_credentials(&self, proxy: bool) -> Option<Result<DigestCredentials, ParseError>> {
        let name = if proxy { "Proxy-Authorization" } else { "Authorization" };
        self.header(name)
            .map(|value| parse_digest_credentials(value).ok_or(ParseError::BadHeader("Authorization")))
    }

    /// Serializes the message: the start line, every header field but Content-Length as
    /// parsed (canonical names, one field per list item), the body's real Content-Length and
    /// the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let fields: usize = self.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        let mut out = Vec::with_capacity(self.start_line.len() + fields + 32 + self.body.len());
        out.extend_from_slice(self.start_line.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in self.headers.iter().filter(|(n, _)| *n != "Content-Length") {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        write_content_length(&mut out, self.body.len());
        out.extend_from_slice(&self.body);
        out
    }
}

/// The user (still %-escaped, as sent) and the lower-cased host of a SIP URI, read from its
/// raw text: rsip ends the user part at the first `.`, so it cannot be trusted for this.
pub fn uri_user_host(uri: &str) -> Option<(Option<String>, String)> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let (user, host_part) = match rest.split_once('@') {
        Some((userinfo, host_part)) => {
            let user = userinfo.split(':').next().unwrap_or(userinfo);
            (Some(user.to_string()), host_part)
        }
        None => (None, rest),
    };
    let host = if let Some(v6) = host_part.strip_prefix('[') {
        format!("[{}]", v6.split(']').next().unwrap_or(""))
    } else {
        host_part.split([':', ';', '?']).next().unwrap_or("").to_string()
    };
    if host.is_empty() || host == "[]" || host.contains(|c: char| c.is_whitespace() || "<>\"@".contains(c)) {
        return None;
    }
    Some((user.filter(|u| !u.is_empty()), host.to_ascii_lowercase()))
}

/// Renders an rsip message, replacing any Content-Length with the body's real length.
///
/// Renders what rsip's `Display` would, but writes the header fields this node composes
/// straight into the buffer (rsip formats each header into a String of its own, joins them
/// into another, and renders the body through a lossy UTF-8 conversion, which would corrupt
/// a binary body); a test compares the two.
pub fn to_bytes(message: &rsip::SipMessage) -> Vec<u8> {
    use std::io::Write;
    let (headers, body) = match message {
        rsip::SipMessage::Request(request) => (&request.headers, &request.body),
        rsip::SipMessage::Response(response) => (&response.headers, &response.body),
    };
    let mut out = Vec::with_capacity(64 + 96 * headers.iter().count() + body.len());
    // Writing into a Vec cannot fail.
    let _ = match message {
        rsip::SipMessage::Request(r) => write!(out, "{} {} {}\r\n", r.method, r.uri, r.version),
        rsip::SipMessage::Response(r) => write!(out, "{} {}\r\n", r.version, r.status_code),
    };
    for header in headers.iter() {
        write_header(&mut out, header);
    }
    write_content_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// `Content-Length: n` and the empty line that ends the head.
fn write_content_length(out: &mut Vec<u8>, length: usize) {
    out.extend_from_slice(b"Content-Length: ");
    write_decimal(out, length as u64);
    out.extend_from_slice(b"\r\n\r\n");
}

/// `n` in decimal, without the formatting machinery.
pub fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// [`to_bytes`] for a message the caller is done with.
pub fn into_bytes(message: rsip::SipMessage) -> Vec<u8> {
    to_bytes(&message)
}

/// One header field and its CRLF, as rsip's `Display` writes it; Content-Length is left out
/// (the caller writes the body's own).
fn write_header(out: &mut Vec<u8>, header: &rsip::Header) {
    use rsip::headers::UntypedHeader;
    let (name, value): (&str, &str) = match header {
        rsip::Header::ContentLength(_) => return,
        rsip::Header::Via(h) => ("Via", h.value()),
        rsip::Header::From(h) => ("From", h.value()),
        rsip::Header::To(h) => ("To", h.value()),
        rsip::Header::CallId(h) => ("Call-ID", h.value()),
        rsip::Header::CSeq(h) => ("CSeq", h.value()),
        rsip::Header::Contact(h) => ("Contact", h.value()),
        rsip::Header::Other(name, value) => (name, value),
        other => {
            let _ = std::io::Write::write_fmt(out, format_args!("{other}\r\n"));
            return;
        }
    };
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `4711 INVITE`.
pub fn cseq_text(cseq: &CSeq) -> String {
    let method = method_name(cseq.method);
    let mut out = Vec::with_capacity(11 + method.len());
    write_decimal(&mut out, u64::from(cseq.seq));
    out.push(b' ');
    out.extend_from_slice(method.as_bytes());
    // Digits, a space and an ASCII token.
    String::from_utf8(out).unwrap_or_default()
}

/// Builds a response to `request`: Via, From, To, Call-ID and CSeq copied, a To-tag added
/// when the request had none (RFC 3261 §8.2.6.2), and `extra` headers appended.
pub fn build_response(request: &SipMessage, code: u16, to_tag: &str, extra: &[(&str, String)]) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for via in &request.vias {
        headers.push(rsip::Header::Via(via.value.clone().into()));
    }
    headers.push(rsip::Header::From(request.from.value.clone().into()));
    let to = match &request.to.tag {
        Some(_) => request.to.value.clone(),
        // A 100 carries no tag of ours; every other response does.
        None if code == 100 => request.to.value.clone(),
        None => {
            let mut to = String::with_capacity(request.to.value.len() + 5 + to_tag.len());
            to.push_str(&request.to.value);
            to.push_str(";tag=");
            to.push_str(to_tag);
            to
        }
    };
    headers.push(rsip::Header::To(to.into()));
    headers.push(rsip::Header::CallId(request.call_id.clone().into()));
    headers.push(rsip::Header::CSeq(cseq_text(&request.cseq).into()));
    for (name, value) in extra {
        headers.push(rsip::Header::Other((*name).to_string(), value.clone()));
    }
    rsip::Response {
        status_code: rsip::StatusCode::from(code),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// Builds the ACK a client INVITE transaction sends for a non-2xx final response
/// (RFC 3261 §17.1.1.3): same Request-URI, top Via, From, Call-ID and CSeq number as the
/// INVITE, the To of the response, and the INVITE's Route headers.
pub fn build_ack_for_non_2xx(invite: &SipMessage, response: &SipMessage) -> Option<SipMessage> {
    let StartLine::Request(_) = invite.start else {
        return None;
    };
    // The Request-URI as checked on the way in; rsip parses it only for this rare ACK.
    let uri = rsip::Uri::try_from(invite.start_line.split(' ').nth(1)?).ok()?;
    let mut headers = rsip::Headers::default();
    headers.push(rsip::Header::Via(invite.vias.first()?.value.clone().into()));
    headers.push(rsip::Header::MaxForwards("70".to_string().into()));
    headers.push(rsip::Header::From(invite.from.value.clone().into()));
    headers.push(rsip::Header::To(response.to.value.clone().into()));
    headers.push(rsip::Header::CallId(invite.call_id.clone().into()));
    headers.push(rsip::Header::CSeq(format!("{} ACK", invite.cseq.seq).into()));
    for route in invite.header_values("Route") {
        headers.push(rsip::Header::Route(route.to_string().into()));
    }
    let ack = rsip::Request {
        method: rsip::Method::Ack,
        uri,
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    };
    SipMessage::from_rsip(ack.into()).ok()
}

/// The long form of a compact header name (RFC 3261 §7.3.3, RFC 3515, RFC 3841, RFC 4028...).
pub fn expand_compact_name(name: &str) -> Option<&'static str> {
    let &[letter] = name.as_bytes() else {
        return None;
    };
    let expanded = match letter.to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'e' => "Content-Encoding",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'f' => "From",
        b's' => "Subject",
        b'k' => "Supported",
        b't' => "To",
        b'v' => "Via",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'u' => "Allow-Events",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        b'a' => "Accept-Contact",
        b'j' => "Reject-Contact",
        b'd' => "Request-Disposition",
        _ => return None,
    };
    Some(expanded)
}

/// The spelling used for names the core reads, so lookups need no case folding games
/// and rsip (which matches case-insensitively) sees the names it knows.
fn canonical_name(name: &str) -> Cow<'static, str> {
    if let Some(long) = expand_compact_name(name) {
        return Cow::Borrowed(long);
    }
    const KNOWN: &[&str] = &[
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Expires",
        "From",
        "Max-Forwards",
        "Min-Expires",
        "Proxy-Authorization",
        "Authorization",
        "Record-Route",
        "Route",
        "To",
        "Via",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Require",
        "Proxy-Require",
        "Supported",
        "Allow",
        // Common in phones' requests: known, they cost no allocation.
        "User-Agent",
        "Server",
        "Allow-Events",
        "Accept",
        "Event",
        "Refer-To",
        "Referred-By",
        "Session-Expires",
        "Date",
        "Subject",
        "Unsupported",
        "Retry-After",
        "P-Asserted-Identity",
        "Privacy",
    ];
    for known in KNOWN {
        if known.eq_ignore_ascii_case(name) {
            return Cow::Borrowed(known);
        }
    }
    Cow::Owned(name.to_string())
}

/// Headers whose comma-separated values are separate fields (RFC 3261 §7.3.1).
fn is_list_header(name: &str) -> bool {
    matches!(name, "Via" | "Contact" | "Route" | "Record-Route")
}

fn skip_leading_crlf(mut bytes: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// Where the head ends and the body starts: after `CRLFCRLF`, or a bare `LFLF` that some
/// broken clients send.
fn find_end_of_headers(bytes: &[u8]) -> Option<(usize, usize)> {
    // The first line feed that ends an empty line: `\n\n`, or `\n\r\n` (whose head ends at
    // the `\r` before the first `\n`, where CRLFCRLF starts).
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'\n', &bytes[at..]).map(|i| at + i) {
        match &bytes[i + 1..] {
            [b'\n', ..] => return Some((i, i + 2)),
            [b'\r', b'\n', ..] if i > 0 && bytes[i - 1] == b'\r' => return Some((i - 1, i + 3)),
            _ => at = i + 1,
        }
    }
    None
}

/// Splits the head into its start line and `(canonical name, value)` fields: continuation
/// lines unfolded, space before the colon dropped, compact names expanded, lists split.
fn normalize_head(head: &str) -> Result<(&str, HeaderFields), ParseError> {
    let mut lines = head.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let start_line = lines.next().unwrap_or("");
    let mut folded = HeaderFields::with_capacity(16, head.len());
    for line in lines {
        if line.starts_with([' ', '\t']) {
            if !folded.extend_last(" ") {
                return Err(ParseError::BadHeaderLine);
            }
            folded.extend_last(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::BadHeaderLine)?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::BadHeaderLine);
        }
        folded.push(canonical_name(name), value.trim());
        if folded.len() > MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
    }
    // Most messages have no list to split: then the fields stand as they are.
    let splits = |(name, value): (&str, &str)| {
        // (An empty list is no field at all, as `split_list` has it.)
        is_list_header(name) && (value.contains(',') || value.is_empty()) && !(name == "Contact" && value == "*")
    };
    if !folded.iter().any(splits) {
        return Ok((start_line, folded));
    }
    let mut headers = HeaderFields::with_capacity(folded.len() + 4, folded.text.len());
    for (name, start, end) in &folded.fields {
        let value = folded.text.get(*start as usize..*end as usize).unwrap_or("");
        if is_list_header(name) && !(name == "Contact" && value == "*") {
            for item in split_list(value) {
                headers.push(name.clone(), item);
            }
        } else {
            headers.push(name.clone(), value);
        }
        if headers.len() > MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
    }
    Ok((start_line, headers))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Splits at commas that are outside quoted strings and `<...>`: the items, trimmed, as
/// slices of `value`.
fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut item_start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut in_angle = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => in_angle = false,
            ',' if !in_quotes && !in_angle => {
                let item = value[item_start..i].trim();
                if !item.is_empty() {
                    items.push(item);
                }
                item_start = i + 1;
            }
            _ => {}
        }
    }
    let item = value[item_start..].trim();
    if !item.is_empty() {
        items.push(item);
    }
    items
}

fn content_length(headers: &HeaderFields) -> Result<Option<usize>, ParseError> {
    match optional_single(headers, "Content-Length")? {
        Some(value) => {
            let length = value.parse::<usize>().map_err(|_| ParseError::BadContentLength)?;
            Ok(Some(length))
        }
        None => Ok(None),
    }
}

fn single<'a>(headers: &'a HeaderFields, name: &'static str) -> Result<&'a str, ParseError> {
    optional_single(headers, name)?.ok_or(ParseError::MissingHeader(name))
}

/// A header that may appear at most once (RFC 4475 §3.1.2.19: two Call-IDs get a 400).
fn optional_single<'a>(headers: &'a HeaderFields, name: &'static str) -> Result<Option<&'a str>, ParseError> {
    let mut found = None;
    for (n, v) in headers.iter() {
        if n == name {
            if found.is_some() {
                return Err(ParseError::BadHeader(name));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn parse_cseq(value: &str) -> Result<CSeq, ParseError> {
    let mut parts = value.split_whitespace();
    let seq = parts
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or(ParseError::BadHeader("CSeq"))?;
    // RFC 3261 §8.1.1.5: the sequence number is below 2**31.
    if seq >= 1 << 31 {
        return Err(ParseError::BadHeader("CSeq"));
    }
    let method_text = parts.next().ok_or(ParseError::BadHeader("CSeq"))?;
    if parts.next().is_some() {
        return Err(ParseError::BadHeader("CSeq"));
    }
    // Methods are case-sensitive (RFC 3261 §7.1).
    let method = METHODS
        .iter()
        .find(|(_, name)| *name == method_text)
        .map(|(m, _)| *m)
        .ok_or(ParseError::BadHeader("CSeq"))?;
    Ok(CSeq { seq, method })
}

/// Reads the start line without rsip's message grammar, which tokenizes every URI with
/// error messages formatted for each alternative it tries (a few microseconds a message).
/// What it accepts is what rsip accepted, or narrower:
/// - a response: `SIP/2.0`, spaces, a status code of three digits (100 to 699), a space and
///   any reason phrase;
/// - a request: exactly three parts separated by single spaces (rsip also takes a
///   Request-URI in `<>` and other junk, RFC 4475 `ltgtruri`); a method rsip knows; a URI
///   with a scheme and none of the characters that only surround URIs, of the common shape
///   (see [`is_common_sip_uri`]) or else one rsip accepts; and `SIP/2.0`.
///
/// Returns the line as the node keeps it (a request's user part escaped, see
/// [`escape_user_part`]) and a request's URI exactly as sent.
fn read_start_line(line: &str) -> Result<(StartLine, String, Option<String>), ParseError> {
    if line.starts_with("SIP/") {
        let (version, rest) = line
            .split_once(' ')
            .ok_or(ParseError::Rsip("malformed status line".into()))?;
        check_version(version)?;
        let rest = rest.trim_start_matches([' ', '\t']);
        let code = rest
            .get(..3)
            .filter(|code| code.bytes().all(|b| b.is_ascii_digit()) && rest[3..].starts_with(' '))
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|code| (100..=699).contains(code))
            .ok_or(ParseError::Rsip("malformed status code".into()))?;
        return Ok((StartLine::Response(code), line.to_string(), None));
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Rsip(
            "request line is not `method SP uri SP version`".into(),
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) || !is_plain_uri(uri) {
        return Err(ParseError::Rsip("malformed request line".into()));
    }
    let parsed = method_ignoring_case(method).ok_or_else(|| ParseError::Rsip(format!("unknown method {method}")))?;
    let escaped = escape_user_part(uri);
    if !is_common_sip_uri(uri) && rsip::Uri::try_from(escaped.as_ref()).is_err() {
        return Err(ParseError::Rsip("malformed Request-URI".into()));
    }
    check_version(version)?;
    let kept = match escaped {
        // Nothing to escape: the line is kept as sent.
        Cow::Borrowed(_) => line.to_string(),
        Cow::Owned(escaped) => format!("{method} {escaped} {version}"),
    };
    Ok((StartLine::Request(parsed), kept, Some(uri.to_string())))
}

/// `SIP/2.0`; another version of the same shape is unsupported, anything else malformed.
fn check_version(version: &str) -> Result<(), ParseError> {
    if version == "SIP/2.0" {
        return Ok(());
    }
    let numbered = version
        .strip_prefix("SIP/")
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
    match numbered {
        true => Err(ParseError::UnsupportedVersion),
        false => Err(ParseError::Rsip("malformed SIP version".into())),
    }
}

/// rsip cannot tokenize `;`, `=`, `&` and similar characters in a URI's user part
/// (RFC 4475 `semiuri`: `sip:user;par=u%40example.net@example.com`), and it ends the user
/// part at the first `.`, so `sip:j.user@example.com` would lose its user. RFC 3261 §19.1.4
/// compares user parts after unescaping, so %-escaping them names the same user.
fn escape_user_part(uri: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Cow::Borrowed(uri);
    };
    let Some((user, host)) = rest.split_once('@') else {
        return Cow::Borrowed(uri);
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_!~*'()%:".contains(c);
    if user.chars().all(plain) {
        return Cow::Borrowed(uri);
    }
    let mut escaped = String::with_capacity(uri.len() + 8);
    escaped.push_str(scheme);
    escaped.push(':');
    for c in user.chars() {
        if plain(c) {
            escaped.push(c);
        } else {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                escaped.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    escaped.push('@');
    escaped.push_str(host);
    Cow::Owned(escaped)
}

/// A URI with a scheme and no quote, angle bracket or whitespace in it.
fn is_plain_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    scheme_ok && !rest.is_empty() && !uri.contains(|c: char| c.is_whitespace() || "<>\"".contains(c))
}

/// Whether `uri` has the plain shape nearly every phone sends (`sip:user@host:port;name=value`)
/// in a character set rsip is known to accept (a property test below checks that rsip parses
/// every URI this accepts): such a URI needs no second tokenization to be validated. Anything
/// else is handed to rsip.
fn is_common_sip_uri(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:")) else {
        return false;
    };
    let (address, params) = match rest.split_once(';') {
        Some((address, params)) => (address, Some(params)),
        None => (rest, None),
    };
    let host_port = match address.split_once('@') {
        Some((user, host_port)) => {
            if user.is_empty() || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return false;
            }
            host_port
        }
        None => address,
    };
    let (host, port) = match host_port.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.split('.').all(label_ok) {
        return false;
    }
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return false;
        }
    }
    let word = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    params.is_none_or(|params| {
        params.split(';').all(|param| match param.split_once('=') {
            Some((name, value)) => word(name) && word(value),
            None => word(param),
        })
    })
}

/// A display name is a quoted string or tokens separated by spaces (RFC 4475 `baddn`).
fn is_display_name(text: &str) -> bool {
    let text = text.trim();
    if text.starts_with('"') {
        return text.len() >= 2 && text.ends_with('"');
    }
    text.split_whitespace().all(|word| word.bytes().all(is_token_byte))
}

/// Whether every quoted string is closed (RFC 4475 `quotbal`).
fn quotes_balanced(value: &str) -> bool {
    let mut in_quotes = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            _ => {}
        }
    }
    !in_quotes
}

/// `"Name" <uri>;tag=x` or `uri;tag=x`: the URI as sent and the tag.
/// Every slice below starts or ends at an ASCII delimiter found by `find`, so it is in bounds
/// and on a character boundary.
fn parse_name_addr(value: &str) -> Option<NameAddr> {
    if !quotes_balanced(value) {
        return None;
    }
    let (uri, params) = match find_unquoted(value, '<') {
        Some(open) => {
            if !is_display_name(&value[..open]) {
                return None;
            }
            let rest = &value[open + 1..];
            let close = rest.find('>')?;
            (&rest[..close], &rest[close + 1..])
        }
        None => {
            // Without angle brackets, parameters after the URI belong to the header.
            match value.find(';') {
                Some(semi) => (&value[..semi], &value[semi..]),
                None => (value, ""),
            }
        }
    };
    let uri = uri.trim();
    if !is_plain_uri(uri) || !(is_common_sip_uri(uri) || rsip::Uri::try_from(uri).is_ok()) {
        return None;
    }
    let tag = header_param(params, "tag");
    Some(NameAddr {
        uri: uri.to_string(),
        tag,
        value: value.to_string(),
    })
}

/// `SIP/2.0/UDP host:port;branch=z9hG4bK...;received=...`.
/// Whitespace may surround the slashes of the sent-protocol (RFC 4475 `wsinv`).
fn parse_via(value: &str) -> Option<Via> {
    let mut protocol_parts = value.splitn(3, '/');
    let name = protocol_parts.next()?.trim();
    let version = protocol_parts.next()?.trim();
    if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
        return None;
    }
    let (transport, rest) = protocol_parts
        .next()?
        .trim_start()
        .split_once(|c: char| c.is_whitespace())?;
    if transport.is_empty() || !transport.bytes().all(is_token_byte) {
        return None;
    }
    let transport = transport.to_ascii_uppercase();
    let rest = rest.trim();
    let (sent_by, params) = match rest.find(';') {
        Some(semi) => (rest[..semi].trim(), &rest[semi..]),
        None => (rest, ""),
    };
    if sent_by.is_empty() || sent_by.contains(char::is_whitespace) {
        return None;
    }
    let branch = header_param(params, "branch");
    Some(Via {
        transport,
        sent_by: sent_by.to_string(),
        branch,
        value: value.to_string(),
    })
}

fn parse_contact(value: &str) -> Option<Contact> {
    if value.trim() == "*" {
        return Some(Contact::Star);
    }
    let addr = parse_name_addr(value)?;
    let params = match find_unquoted(value, '<') {
        Some(_) => value.rsplit_once('>').map(|(_, p)| p).unwrap_or(""),
        None => value.find(';').map(|semi| &value[semi..]).unwrap_or(""),
    };
    let expires = match header_param(params, "expires") {
        Some(text) => Some(parse_delta_seconds(&text)?),
        None => None,
    };
    Some(Contact::Uri { uri: addr.uri, expires })
}

/// Delta-seconds; values past `u32` saturate, as RFC 3261 §20.19 allows large values.
fn parse_delta_seconds(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u32>().unwrap_or(u32::MAX))
}

/// Reads `;name=value` from a header parameter list (case-insensitive name).
fn header_param(params: &str, name: &str) -> Option<String> {
    for param in params.split(';') {
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key.trim(), value.trim()),
            None => (param.trim(), ""),
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value.trim_matches('"').to_string());
        }
    }
    None
}

fn find_unquoted(value: &str, target: char) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == target && !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parses `Digest k=v, k="v", ...` ourselves: rsip refuses `SHA-256`, reads `nc` as a
/// decimal `u8` and does not unescape quoted strings.
pub fn parse_digest_credentials(value: &str) -> Option<DigestCredentials> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(|c: char| c.is_whitespace())?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let params = parse_auth_params(rest)?;
    let get = |name: &str| -> Option<String> {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    };
    let algorithm = match get("algorithm") {
        None => DigestAlgorithm::Md5,
        Some(a) if a.eq_ignore_ascii_case("MD5") => DigestAlgorithm::Md5,
        Some(a) if a.eq_ignore_ascii_case("MD5-sess") => DigestAlgorithm::Md5Sess,
        Some(a) if a.eq_ignore_ascii_case("SHA-256") => DigestAlgorithm::Sha256,
        Some(a) if a.eq_ignore_ascii_case("SHA-256-sess") => DigestAlgorithm::Sha256Sess,
        Some(a) => DigestAlgorithm::Other(a),
    };
    let nc_text = get("nc");
    let nc = match &nc_text {
        Some(text) if text.len() == 8 => Some(u32::from_str_radix(text, 16).ok()?),
        Some(_) => return None,
        None => None,
    };
    Some(DigestCredentials {
        username: get("username")?,
        realm: get("realm")?,
        nonce: get("nonce")?,
        uri: get("uri")?,
        response: get("response")?,
        algorithm,
        qop: get("qop"),
        cnonce: get("cnonce"),
        nc,
        nc_text,
        opaque: get("opaque"),
    })
}

/// `k=v` pairs separated by commas; values are tokens or quoted strings with `\` escapes.
/// A repeated name refuses the whole credential, since which one counts would be a guess.
/// Names and values are slices of `text` (a value is copied only when it holds an escape).
fn parse_auth_params(text: &str) -> Option<Vec<(&str, Cow<'_, str>)>> {
    let mut params: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(12);
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let name_end = rest.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(rest.len());
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start_matches(char::is_whitespace);
        rest = rest.strip_prefix('=')?;
        if name.is_empty() {
            return None;
        }
        rest = rest.trim_start_matches(char::is_whitespace);
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut unescaped: Option<String> = None;
            let mut segment = 0;
            let mut end = None;
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        let (j, escaped) = chars.next()?;
                        let buffer = unescaped.get_or_insert_with(String::new);
                        buffer.push_str(&quoted[segment..i]);
                        buffer.push(escaped);
                        segment = j + escaped.len_utf8();
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end?;
            rest = &quoted[end + 1..];
            match unescaped {
                Some(mut buffer) => {
                    buffer.push_str(&quoted[segment..end]);
                    Cow::Owned(buffer)
                }
                None => Cow::Borrowed(&quoted[..end]),
            }
        } else {
            let end = rest.find(|c: char| c == ',' || c.is_whitespace()).unwrap_or(rest.len());
            let value = &rest[..end];
            rest = &rest[end..];
            Cow::Borrowed(value)
        };
        if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) || params.len() >= MAX_DIGEST_PARAMS {
            return None;
        }
        params.push((name, value));
    }
    Some(params)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rendering as first written (rsip's `Display`): the oracle for [`to_bytes`].
    fn bytes_by_display(mut message: rsip::SipMessage) -> Vec<u8> {
        let length = message.body().len();
        let headers = match &mut message {
            rsip::SipMessage::Request(request) => &mut request.headers,
            rsip::SipMessage::Response(response) => &mut response.headers,
        };
        headers.retain(|h| !matches!(h, rsip::Header::ContentLength(_)));
        headers.push(rsip::Header::ContentLength(length.to_string().into()));
        message.to_string().into_bytes()
    }

    /// The parameter reader as first written, char by char into new Strings: the oracle for
    /// [`parse_auth_params`].
    fn auth_params_by_chars(text: &str) -> Option<Vec<(String, String)>> {
        let mut params: Vec<(String, String)> = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                name.push(c);
                chars.next();
            }
            while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') || name.is_empty() {
                return None;
            }
            while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next()?),
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return None;
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' || c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(&name)) || params.len() >= MAX_DIGEST_PARAMS {
                return None;
            }
            params.push((name, value));
        }
        Some(params)
    }

    #[test]
    fn the_method_table_reads_and_writes_as_rsip_does() {
        for (method, name) in METHODS {
            assert_eq!(method.to_string(), name);
            assert_eq!(method_name(method), name);
            assert_eq!(name.parse::<rsip::Method>().ok(), Some(method));
            let lower = name.to_ascii_lowercase();
            assert_eq!(method_ignoring_case(&lower), lower.parse::<rsip::Method>().ok());
        }
        assert_eq!(method_ignoring_case("FOO"), None);
        let cseq = CSeq {
            seq: 4711,
            method: rsip::Method::Invite,
        };
        assert_eq!(cseq_text(&cseq), "4711 INVITE");
        for n in [0u64, 7, 10, 4711, u64::MAX] {
            let mut out = Vec::new();
            write_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn rendering_writes_what_rsip_displays() {
        let request = SipMessage::parse(
            b"INVITE sip:1001@acme.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, \
SIP/2.0/TCP 192.0.2.2;branch=z9hG4bKb\r\nFrom: \"A\" <sip:1000@acme.test>;tag=x\r\nTo: <sip:1001@acme.test>\r\n\
Call-ID: c1@h\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\nRoute: <sip:p.test;lr>\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let extras: Vec<(&str, String)> = vec![
            ("Contact", "<sip:1001@192.0.2.9:5060>;expires=3600".into()),
            ("WWW-Authenticate", "Digest realm=\"acme.test\", nonce=\"n\"".into()),
            ("Min-Expires", "60".into()),
        ];
        for code in [100, 180, 200, 401, 486] {
            let mut response = build_response(&request, code, "tag1", &extras);
            // Typed headers rsip renders itself, and a stale Content-Length to be replaced.
            response
                .headers
                .push(rsip::Header::Contact("<sip:x@y>".to_string().into()));
            response.headers.push(rsip::Header::Expires("60".to_string().into()));
            response
                .headers
                .push(rsip::Header::ContentLength("99".to_string().into()));
            if code == 200 {
                response.body = b"v=0\r\n".to_vec();
            }
            let message = rsip::SipMessage::from(response);
            assert_eq!(
                String::from_utf8(into_bytes(message.clone())).unwrap(),
                String::from_utf8(bytes_by_display(message)).unwrap()
            );
        }
        let answer = SipMessage::parse(&into_bytes(build_response(&request, 486, "t", &[]).into())).unwrap();
        let ack = build_ack_for_non_2xx(&request, &answer).unwrap();
        let ack = rsip::SipMessage::try_from(ack.to_bytes().as_slice()).unwrap();
        assert_eq!(into_bytes(ack.clone()), bytes_by_display(ack));

        // A binary body goes out as it is (rsip's Display would replace invalid UTF-8).
        let mut response = build_response(&request, 200, "t", &[]);
        response.body = vec![0xff, 0x00, 0xfe];
        let bytes = into_bytes(response.into());
        assert!(bytes.ends_with(b"Content-Length: 3\r\n\r\n\xff\x00\xfe"));
    }

    /// The head's end as first written (two scans, the earlier match wins): the oracle for
    /// the one-scan [`find_end_of_headers`].
    fn end_of_headers_by_two_scans(bytes: &[u8]) -> Option<(usize, usize)> {
        let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
        let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
        match (crlf, lf) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The list splitter as first written, char by char into new Strings: the oracle for
    /// [`split_list`].
    fn split_list_by_chars(value: &str) -> Vec<String> {
        let mut items = Vec::new();
        let mut current = String::new();
        let mut in_quotes = false;
        let mut escaped = false;
        let mut in_angle = false;
        for c in value.chars() {
            if escaped {
                escaped = false;
                current.push(c);
                continue;
            }
            match c {
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '<' if !in_quotes => in_angle = true,
                '>' if !in_quotes => in_angle = false,
                ',' if !in_quotes && !in_angle => {
                    let item = current.trim();
                    if !item.is_empty() {
                        items.push(item.to_string());
                    }
                    current.clear();
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        let item = current.trim();
        if !item.is_empty() {
            items.push(item.to_string());
        }
        items
    }

    /// Header fields as first written (every list value through `split_list`): the oracle
    /// for [`normalize_head`]'s fast path.
    fn fields_by_splitting_every_list(head: &str) -> Option<Vec<(String, String)>> {
        let (_, fields) = normalize_head(head).ok()?;
        let mut out = Vec::new();
        for (name, value) in fields.iter() {
            out.push((name.to_string(), value.to_string()));
        }
        // Re-split what came out: a field the fast path left whole must be one item.
        let mut again = Vec::new();
        for (name, value) in &out {
            if is_list_header(name) && !(name == "Contact" && value == "*") {
                for item in split_list(value) {
                    again.push((name.clone(), item.to_string()));
                }
            } else {
                again.push((name.clone(), value.clone()));
            }
        }
        (again == out).then_some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn auth_params_read_as_the_char_reader_read_them(
            text in "[ab=,\"\\\\ \t\u{a0}é]{0,40}",
            real in proptest::sample::select(vec![
                r#"username="1000", realm="acme.test", nonce="6f.ab.cd", uri="sip:acme.test", response="0a", algorithm=MD5, qop=auth, nc=00000001, cnonce="x""#,
                r#"username = "a\"b" ,realm="r\\", nonce=n"#,
                r#"a=1,a=2"#,
            ]),
            cut in 0usize..200,
        ) {
            let owned = |params: Option<Vec<(&str, Cow<'_, str>)>>| {
                params.map(|ps| ps.into_iter().map(|(k, v)| (k.to_string(), v.into_owned())).collect::<Vec<_>>())
            };
            prop_assert_eq!(owned(parse_auth_params(&text)), auth_params_by_chars(&text));
            let mut end = cut.min(real.len());
            while !real.is_char_boundary(end) {
                end -= 1;
            }
            for sample in [real, &real[..end], &format!("{}{}", &real[..end], text)] {
                prop_assert_eq!(owned(parse_auth_params(sample)), auth_params_by_chars(sample));
            }
        }

        #[test]
        fn lists_split_as_the_char_splitter_split_them(value in "[a,<>\"\\\\ \u{a0}é]{0,30}") {
            prop_assert_eq!(split_list(&value), split_list_by_chars(&value));
        }

        #[test]
        fn one_scan_finds_the_same_end_of_headers(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b':')], 0..40)
        ) {
            prop_assert_eq!(find_end_of_headers(&bytes), end_of_headers_by_two_scans(&bytes));
        }

        #[test]
        fn list_fields_come_out_split_whatever_the_path(
            values in proptest::collection::vec("[a-z<>\",; ]{0,12}", 1..5),
            names in proptest::collection::vec(prop_oneof![Just("Via"), Just("m"), Just("Route"), Just("Subject"), Just("Contact")], 1..5),
        ) {
            let mut head = String::from("OPTIONS sip:a@b SIP/2.0");
            for (name, value) in names.iter().zip(&values) {
                head.push_str(&format!("\r\n{name}: {value}"));
            }
            if normalize_head(&head).is_ok() {
                prop_assert!(fields_by_splitting_every_list(&head).is_some(), "a list field left unsplit in {:?}", head);
            }
        }

        /// The fast path only ever accepts what rsip accepts, so skipping rsip for it changes
        /// no answer.
        #[test]
        fn every_common_uri_is_one_rsip_accepts(
            uri in "sips?:([A-Za-z0-9._-]{1,12}@)?[A-Za-z0-9.-]{1,24}(:[0-9]{0,6})?(;[A-Za-z0-9._-]{0,8}(=[A-Za-z0-9._-]{0,8})?){0,3}"
        ) {
            if is_common_sip_uri(&uri) {
                prop_assert!(rsip::Uri::try_from(uri.as_str()).is_ok(), "rsip refuses {}", uri);
                // The Request-URI check takes the fast path on the URI as sent, while rsip
                // used to see its user part escaped.
                let escaped = escape_user_part(&uri);
                prop_assert!(rsip::Uri::try_from(escaped.as_ref()).is_ok(), "rsip refuses {}", escaped);
            }
        }

        /// Every start line read here is one rsip's message grammar accepts, with the same
        /// method or status code.
        #[test]
        fn every_start_line_read_here_is_one_rsip_reads_alike(
            line in prop_oneof![
                "(REGISTER|INVITE|ACK|BYE|OPTIONS|register|FOO|SIP/2.0|) {1,2}(sips?|tel|x):([A-Za-z0-9.;=%-]{1,10}@)?[A-Za-z0-9.-]{1,16}(:[0-9]{1,6})? {1,2}SIP/[0-9]{1,2}\\.[0-9]",
                "SIP/[0-9]\\.[0-9][ \t]{1,3}[0-9A-Za-z]{2,4}( [A-Za-z ]{0,12})?",
            ]
        ) {
            if let Ok((start, kept, _)) = read_start_line(&line) {
                let framed = format!("{kept}\r\n\r\n");
                match (start, rsip::SipMessage::try_from(framed.as_bytes())) {
                    (StartLine::Request(method), Ok(rsip::SipMessage::Request(r))) => {
                        prop_assert_eq!(method, r.method);
                        prop_assert_eq!(r.version, rsip::Version::V2);
                    }
                    (StartLine::Response(code), Ok(rsip::SipMessage::Response(r))) => {
                        prop_assert_eq!(code, r.status_code.code());
                        prop_assert_eq!(r.version, rsip::Version::V2);
                    }
                    (start, other) => prop_assert!(false, "{:?} read as {:?}, rsip: {:?}", line, start, other),
                }
            }
        }
    }

    #[test]
    fn start_lines_are_read_strictly() {
        let ok = [
            ("REGISTER sip:example.com SIP/2.0", Some(rsip::Method::Register), None),
            (
                "INVITE sip:j.user@example.com:5070;transport=udp SIP/2.0",
                Some(rsip::Method::Invite),
                None,
            ),
            ("SIP/2.0 200 OK", None, Some(200)),
            ("SIP/2.0  486 ", None, Some(486)),
            ("SIP/2.0 699 Whatever it says", None, Some(699)),
        ];
        for (line, method, status) in ok {
            let (start, _, _) = read_start_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let read = match start {
                StartLine::Request(m) => (Some(m), None),
                StartLine::Response(code) => (None, Some(code)),
            };
            assert_eq!(read, (method, status), "{line}");
        }
        for line in ["OPTIONS sip:a@example.com SIP/1.0", "SIP/7.0 200 OK", "SIP/2.1 200 OK"] {
            assert_eq!(
                read_start_line(line).unwrap_err(),
                ParseError::UnsupportedVersion,
                "{line}"
            );
        }
        for line in [
            "SIP/2.0 20 OK",
            "SIP/2.0 200",
            "SIP/2.0 099 Low",
            "SIP/2.0 2x0 OK",
            "SIP/2.0x 200 OK",
            "OPTIONS sip:a@example.com SIP/2.0x",
            "OPTIONS sip:a@example.com sip/2.0",
            "OPTIONS  sip:a@example.com SIP/2.0",
            "OPTIONS <sip:a@example.com> SIP/2.0",
            "NOTAMETHOD sip:a@example.com SIP/2.0",
            "OPT(IONS sip:a@example.com SIP/2.0",
        ] {
            assert!(
                matches!(read_start_line(line), Err(ParseError::Rsip(_))),
                "{line} is malformed"
            );
        }
    }

    #[test]
    fn the_common_uri_shape_is_narrow() {
        for uri in [
            "sip:1001@192.0.2.10:5060",
            "sip:bob@example.com",
            "sips:alice.smith@pbx-1.example.com;transport=tls",
            "sip:example.com;lr",
        ] {
            assert!(is_common_sip_uri(uri), "{uri}");
        }
        for uri in [
            "tel:+15551234",
            "sip:user;x=y@example.com",
            "sip:@example.com",
            "sip:bob@exa mple.com",
            "sip:bob@example.com:99999",
            "sip:bob@-example.com",
            "sip:bob@example..com",
            "sip:bob@[2001:db8::1]:5060",
            "sip:bob@example.com;=x",
            "sip:%62ob@example.com",
        ] {
            assert!(!is_common_sip_uri(uri), "{uri} goes to rsip");
        }
    }

    pub(crate) const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Bob <sip:bob@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.10:5060>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

    fn parse(text: &str) -> SipMessage {
        match SipMessage::parse(text.as_bytes()) {
            Ok(message) => message,
            Err(e) => panic!("{e}: {text}"),
        }
    }

    #[test]
    fn parses_a_register_and_reads_its_fields() {
        let m = parse(REGISTER);
        assert_eq!(m.method(), Some(rsip::Method::Register));
        assert_eq!(m.call_id, "843817637684230@998sdasdh09");
        assert_eq!(
            m.cseq,
            CSeq {
                seq: 1826,
                method: rsip::Method::Register
            }
        );
        assert_eq!(m.from.tag.as_deref(), Some("456248"));
        assert_eq!(m.to.tag, None);
        assert_eq!(m.branch(), Some("z9hG4bKnashds7"));
        assert_eq!(m.vias[0].transport, "UDP");
        assert_eq!(m.vias[0].sent_by, "192.0.2.10:5060");
        assert_eq!(m.max_forwards, Some(70));
        assert_eq!(m.expires(), Ok(Some(7200)));
        assert_eq!(m.request_domain().as_deref(), Some("example.com"));
        assert_eq!(
            m.contacts(),
            Ok(vec![Contact::Uri {
                uri: "sip:bob@192.0.2.10:5060".into(),
                expires: None
            }])
        );
    }

    #[test]
    fn workaround_compact_header_names_are_expanded() {
        let text = "OPTIONS sip:example.com SIP/2.0\r\n\
v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
t: <sip:a@example.com>\r\nf: <sip:b@example.com>;tag=1\r\ni: abc\r\nCSeq: 1 OPTIONS\r\n\
m: <sip:b@h.example.com>\r\nl: 0\r\n\r\n";
        let m = parse(text);
        assert_eq!(m.call_id, "abc");
        assert_eq!(m.branch(), Some("z9hG4bK1"));
        assert_eq!(m.from.tag.as_deref(), Some("1"));
        assert_eq!(m.header("Contact"), Some("<sip:b@h.example.com>"));
        assert_eq!(expand_compact_name("k"), Some("Supported"));
        assert_eq!(expand_compact_name("zz"), None);
    }

    #[test]
    fn workaround_folded_lines_and_space_before_colon() {
        let text = "OPTIONS sip:example.com SIP/2.0\r\n\
Via  : SIP/2.0/UDP h.example.com\r\n  ;branch=z9hG4bK2\r\n\
To: <sip:a@example.com>\r\nFrom: <sip:b@example.com>\r\n\t;tag=9\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let m = parse(text);
        assert_eq!(m.branch(), Some("z9hG4bK2"));
        assert_eq!(m.from.tag.as_deref(), Some("9"));
        // rsip alone refuses the folded message.
        assert!(rsip::SipMessage::try_from(text).is_err());
    }

    #[test]
    fn workaround_comma_lists_become_separate_fields() {
        let text = REGISTER.replace(
            "Contact: <sip:bob@192.0.2.10:5060>",
            "Contact: \"B, ob\" <sip:bob@192.0.2.10:5060>;expires=60, <sip:bob@198.51.100.3>",
        );
        let text = text.replace(
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7, SIP/2.0/TCP p.example.com;branch=z9hG4bKx",
        );
        let m = parse(&text);
        assert_eq!(m.vias.len(), 2);
        assert_eq!(m.vias[1].transport, "TCP");
        assert_eq!(
            m.contacts(),
            Ok(vec![
                Contact::Uri {
                    uri: "sip:bob@192.0.2.10:5060".into(),
                    expires: Some(60)
                },
                Contact::Uri {
                    uri: "sip:bob@198.51.100.3".into(),
                    expires: None
                },
            ])
        );
    }

    #[test]
    fn workaround_the_start_line_is_read_here_and_the_header_list_renders_the_message() {
        let text =
            "MESSAGE sip:a@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK3, SIP/2.0/TCP p;branch=z9hG4bK4\r\n\
t: <sip:a@example.com>\r\nf: <sip:b@example.com>\r\n ;tag=1\r\ni: y\r\nCSeq: 2 MESSAGE\r\n\
X-Odd : kept as sent\r\nl: 5\r\n\r\nhello and junk";
        let m = parse(text);
        assert_eq!(m.method(), Some(rsip::Method::Message));
        let rendered = String::from_utf8(m.to_bytes()).unwrap();
        assert_eq!(
            rendered,
            "MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\r\n\
Via: SIP/2.0/TCP p;branch=z9hG4bK4\r\nTo: <sip:a@example.com>\r\nFrom: <sip:b@example.com> ;tag=1\r\n\
Call-ID: y\r\nCSeq: 2 MESSAGE\r\nX-Odd: kept as sent\r\nContent-Length: 5\r\n\r\nhello"
        );
        let again = parse(&rendered);
        assert_eq!((again.headers, again.body), (m.headers, m.body));
        // A response's start line keeps its reason phrase.
        let built = build_response(&parse(REGISTER), 423, "t", &[]);
        let composed = String::from_utf8(into_bytes(built.clone().into())).unwrap();
        let response = SipMessage::from_rsip(built.into()).unwrap();
        assert_eq!(response.status(), Some(423));
        assert_eq!(String::from_utf8(response.to_bytes()).unwrap(), composed);
        assert!(composed.starts_with("SIP/2.0 423 "), "{composed}");
    }

    #[test]
    fn star_contact_is_recognised() {
        let text = REGISTER.replace("Contact: <sip:bob@192.0.2.10:5060>", "Contact: *");
        assert_eq!(parse(&text).contacts(), Ok(vec![Contact::Star]));
    }

    #[test]
    fn workaround_content_length_cuts_the_body() {
        let text = "MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\r\n\
To: <sip:a@example.com>\r\nFrom: <sip:b@example.com>;tag=1\r\nCall-ID: y\r\nCSeq: 2 MESSAGE\r\n\
Content-Length: 5\r\n\r\nhello and junk";
        assert_eq!(parse(text).body, b"hello");
        let short = text.replace("Content-Length: 5", "Content-Length: 500");
        assert!(matches!(
            SipMessage::parse(short.as_bytes()),
            Err(ParseError::TruncatedBody { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let big = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            SipMessage::parse(&big).unwrap_err(),
            ParseError::TooLarge {
                len: MAX_MESSAGE_BYTES + 1
            }
        );
        let many = REGISTER.replace("Expires: 7200\r\n", &"X-A: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(
            SipMessage::parse(many.as_bytes()).unwrap_err(),
            ParseError::TooManyHeaders
        );
    }

    #[test]
    fn workaround_digest_sha256_nc_hex_and_sess() {
        let value =
            "Digest username=\"bob\", realm=\"example.com\", nonce=\"n1\", uri=\"sip:example.com;transport=tcp\", \
response=\"abc\", algorithm=SHA-256, qop=auth, nc=0000000a, cnonce=\"c\\\"q\", opaque=\"o\"";
        let c = parse_digest_credentials(value).unwrap();
        assert_eq!(c.algorithm, DigestAlgorithm::Sha256);
        assert_eq!(c.nc, Some(10));
        assert_eq!(c.cnonce.as_deref(), Some("c\"q"));
        assert_eq!(c.uri, "sip:example.com;transport=tcp");
        // rsip itself refuses SHA-256 with a dash and reads nc=0000000a as an error.
        let header = rsip::headers::Authorization::from(value.to_string());
        assert!(rsip::headers::typed::Authorization::try_from(header).is_err());
        let sess = value.replace("SHA-256", "MD5-sess");
        assert_eq!(
            parse_digest_credentials(&sess).unwrap().algorithm,
            DigestAlgorithm::Md5Sess
        );
        assert!(parse_digest_credentials(&value.replace("nc=0000000a", "nc=12")).is_none());
        assert!(parse_digest_credentials(&format!("{value}, nonce=\"again\"")).is_none());
        assert!(parse_digest_credentials("Basic Zm9vOmJhcg==").is_none());
    }

    #[test]
    fn workaround_raw_uri_is_kept_where_rsip_would_rewrite_it() {
        let raw = "sip:bob@192.0.2.10:5060;transport=tcp?X-Hdr=1";
        let rendered = rsip::Uri::try_from(raw).map(|u| u.to_string());
        assert_ne!(
            rendered.as_deref(),
            Ok(raw),
            "rsip drops URI headers, so the raw text must be kept"
        );
        let text = REGISTER.replace("<sip:bob@192.0.2.10:5060>", &format!("<{raw}>"));
        assert_eq!(
            parse(&text).contacts(),
            Ok(vec![Contact::Uri {
                uri: raw.into(),
                expires: None
            }])
        );
    }

    #[test]
    fn workaround_request_uri_user_part_is_escaped_for_rsip() {
        let text = REGISTER.replace(
            "REGISTER sip:example.com",
            "REGISTER sip:user;par=u%40ex.net@example.com",
        );
        assert!(rsip::SipMessage::try_from(text.as_str()).is_err());
        let m = parse(&text);
        assert_eq!(m.request_domain().as_deref(), Some("example.com"));
        assert_eq!(escape_user_part("sip:a;b=c@h;lr"), "sip:a%3Bb%3Dc@h;lr");
        assert_eq!(escape_user_part("sip:j.user@h"), "sip:j%2Euser@h");
        assert_eq!(escape_user_part("sip:h.example.com;lr"), "sip:h.example.com;lr");
    }

    #[test]
    fn workaround_uri_user_and_host_come_from_the_raw_text() {
        let rsip_view = rsip::Uri::try_from("sip:j.user@Example.com:5070;lr").unwrap();
        assert_eq!(rsip_view.user(), None, "rsip stops the user part at the first dot");
        assert_eq!(
            uri_user_host("sip:j.user@Example.com:5070;lr"),
            Some((Some("j.user".into()), "example.com".into()))
        );
        assert_eq!(
            uri_user_host("sips:[2001:db8::1]:5061"),
            Some((None, "[2001:db8::1]".into()))
        );
        assert_eq!(uri_user_host("tel:+1555"), None);
        assert_eq!(uri_user_host("sip:@"), None);
    }

    #[test]
    fn builds_a_response_with_copied_headers_and_a_to_tag() {
        let m = parse(REGISTER);
        let response = build_response(&m, 200, "srv1", &[("Expires", "60".into())]);
        let parsed = SipMessage::from_rsip(response.into()).unwrap();
        assert_eq!(parsed.status(), Some(200));
        assert_eq!(parsed.call_id, m.call_id);
        assert_eq!(parsed.cseq, m.cseq);
        assert_eq!(parsed.to.tag.as_deref(), Some("srv1"));
        assert_eq!(parsed.vias, m.vias);
        assert_eq!(parsed.header("Expires"), Some("60"));
        assert_eq!(parsed.header("Content-Length"), Some("0"));
    }

    #[test]
    fn cseq_must_match_the_method_and_call_id_must_be_single() {
        let wrong = REGISTER.replace("CSeq: 1826 REGISTER", "CSeq: 1826 INVITE");
        assert_eq!(
            SipMessage::parse(wrong.as_bytes()).unwrap_err(),
            ParseError::CSeqMethodMismatch
        );
        let twice = REGISTER.replace("Expires: 7200", "Call-ID: other");
        assert_eq!(
            SipMessage::parse(twice.as_bytes()).unwrap_err(),
            ParseError::BadHeader("Call-ID")
        );
    }
}
