//! Server-side SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): challenges with
//! signed, expiring nonces, verification with replay (nc) tracking and constant-time compares.
//!
//! Nonces are stateless: `issued_at.random.mac`, where the MAC is HMAC-SHA256 under the node
//! secret over (issued_at, realm, random). Every SIP node shares the secret, so any node can
//! check a nonce another issued. What is stateful is the nonce-count memory that refuses a
//! replayed authorization; it is bounded, and a nonce it had to forget is answered as stale.

use super::message::{DigestAlgorithm, DigestCredentials};
use chrono::{DateTime, Utc};
use domain::digest::Ha1;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use subtle::ConstantTimeEq;

/// How the node signs and ages nonces.
#[derive(Clone)]
pub struct DigestConfig {
    /// Shared by every SIP node; from configuration, never from the network.
    pub secret: Vec<u8>,
    /// A nonce older than this is stale: the client is asked to retry with a fresh one.
    pub nonce_lifetime_secs: i64,
    /// How many nonces' last nonce-count the verifier remembers.
    pub max_tracked_nonces: usize,
    /// Offer SHA-256 before MD5 (RFC 8760's order). Off by default: sipp 3.6 and many
    /// deployed phones read only the first challenge and cannot do SHA-256; with MD5 first,
    /// SHA-256 is still offered to clients that look further.
    pub prefer_sha256: bool,
    /// Offer SHA-256 at all. Off for phones that fail on a challenge they cannot answer
    /// instead of skipping it (baresip 1.0 does); SHA-256 credentials still verify.
    pub offer_sha256: bool,
}

impl std::fmt::Debug for DigestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("DigestConfig")
            .field("secret", &"***")
            .field("nonce_lifetime_secs", &self.nonce_lifetime_secs)
            .field("max_tracked_nonces", &self.max_tracked_nonces)
            .field("prefer_sha256", &self.prefer_sha256)
            .field("offer_sha256", &self.offer_sha256)
            .finish()
    }
}

/// One challenge: sent as two `WWW-Authenticate` (or `Proxy-Authenticate`) fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: String,
    pub stale: bool,
    pub sha256_first: bool,
    pub offer_sha256: bool,
}

impl Challenge {
    /// The header fields to add to a 401 (or 407 when `proxy`): both algorithms, in the
    /// configured order (RFC 8760 §2.4 prefers SHA-256 first). Written by hand because rsip renders the
    /// algorithm as `SHA256`, a token RFC 8760 does not define.
    pub fn header_fields(&self, proxy: bool) -> Vec<(&'static str, String)> {
        let name = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let stale = if self.stale { ", stale=true" } else { "" };
        let order: &[&str] = match (self.offer_sha256, self.sha256_first) {
            (false, _) => &["MD5"],
            (true, true) => &["SHA-256", "MD5"],
            (true, false) => &["MD5", "SHA-256"],
        };
        order
            .iter()
            .map(|algorithm| {
                let mut value = String::with_capacity(96 + self.realm.len() + self.nonce.len() + self.opaque.len());
                for part in [
                    "Digest realm=\"",
                    &self.realm,
                    "\", nonce=\"",
                    &self.nonce,
                    "\", opaque=\"",
                    &self.opaque,
                    "\", algorithm=",
                    algorithm,
                    ", qop=\"auth\"",
                    stale,
                ] {
                    value.push_str(part);
                }
                (name, value)
            })
            .collect()
    }
}

/// The outcome of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The response was right but the nonce has expired (or was forgotten): challenge again
    /// with `stale=true` so the client retries without asking its user.
    Stale,
    Invalid(InvalidReason),
}

/// Why credentials were refused; for logs and metrics only, the client always sees the same
/// fresh challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    WrongRealm,
    UnsupportedAlgorithm,
    UnsupportedQop,
    BadNonce,
    BadOpaque,
    WrongResponse,
    UnknownUser,
    Replayed,
}

/// Issues challenges and verifies credentials, remembering nonce-counts.
#[derive(Debug)]
pub struct DigestVerifier {
    config: DigestConfig,
    /// nonce -> (issued_at, highest nc accepted).
    /// Keyed by the nonce's MAC (its first 128 bits): unique to each nonce this node family
    /// signed, and already uniformly random, so it is its own hash and no String is kept.
    seen: super::PrehashedMap<u128, (i64, u32)>,
    /// First-use order, to evict the oldest when full.
    order: VecDeque<u128>,
    /// Nonces issued at or before this second that are not in `seen` were forgotten, and
    /// are answered as stale rather than trusted with a fresh nonce-count.
    forgotten_through: i64,
    /// HMAC-SHA256 keyed with the secret, cloned for each MAC.
    keyed: HmacSha256,
    /// The opaque of the realm asked for last (a realm's opaque never changes).
    last_opaque: Option<(String, String)>,
}

type HmacSha256 = Hmac<Sha256>;

impl DigestVerifier {
    pub fn new(config: DigestConfig) -> DigestVerifier {
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = HmacSha256::new_from_slice(&config.secret).expect("HMAC takes any key length");
        DigestVerifier {
            keyed,
            config,
            seen: HashMap::default(),
            order: VecDeque::new(),
            forgotten_through: i64::MIN,
            last_opaque: None,
        }
    }

    /// A fresh challenge for `realm`. `random` comes from the shell's CSPRNG, which keeps this
    /// core deterministic under test.
    pub fn challenge(&mut self, realm: &str, now: DateTime<Utc>, random: [u8; 16], stale: bool) -> Challenge {
        let issued_at = now.timestamp();
        let random_hex = hex_lower(&random);
        let mac = self.nonce_mac(issued_at, realm, &random_hex);
        let mut nonce = String::with_capacity(16 + 1 + random_hex.len() + 1 + mac.len());
        // `{issued_at:x}`: a negative time is written as its two's complement, as `format!` does.
        nonce.push_str(&hex_u64(issued_at as u64));
        nonce.push('.');
        nonce.push_str(&random_hex);
        nonce.push('.');
        nonce.push_str(&mac);
        Challenge {
            realm: realm.to_string(),
            nonce,
            opaque: self.opaque(realm),
            stale,
            sha256_first: self.config.prefer_sha256,
            offer_sha256: self.config.offer_sha256,
        }
    }

    /// Checks `credentials` for a request with `method`, against the user's HA1 values, or
    /// `None` for an unknown user, in which case a dummy HA1 is hashed and compared all the
    /// same so that the work (and the answer) is the same as for a wrong password.
    pub fn verify(
        &mut self,
        credentials: &DigestCredentials,
        method: &str,
        expected_realm: &str,
        ha1: Option<&Ha1>,
        now: DateTime<Utc>,
    ) -> Verdict {
        if credentials.realm != expected_realm {
            return Verdict::Invalid(InvalidReason::WrongRealm);
        }
        let sha256 = match credentials.algorithm {
            DigestAlgorithm::Md5 => false,
            DigestAlgorithm::Sha256 => true,
            // We never offer -sess, so a client using it did not follow our challenge.
            DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess | DigestAlgorithm::Other(_) => {
                return Verdict::Invalid(InvalidReason::UnsupportedAlgorithm)
            }
        };
        let (Some(qop), Some(cnonce), Some(nc), Some(nc_text)) = (
            &credentials.qop,
            &credentials.cnonce,
            credentials.nc,
            &credentials.nc_text,
        ) else {
            return Verdict::Invalid(InvalidReason::UnsupportedQop);
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return Verdict::Invalid(InvalidReason::UnsupportedQop);
        }
        let Some((issued_at, nonce_key)) = self.check_nonce(&credentials.nonce, expected_realm) else {
            return Verdict::Invalid(InvalidReason::BadNonce);
        };
        if let Some(opaque) = &credentials.opaque {
            if !bool::from(opaque.as_bytes().ct_eq(self.opaque(expected_realm).as_bytes())) {
                return Verdict::Invalid(InvalidReason::BadOpaque);
            }
        }
        // The dummy is computed for known users too, so both paths do the same work (only in
        // the algorithm used: the other would be the same work for both, and wasted).
        let dummy = dummy_ha1(sha256, &credentials.username, expected_realm);
        let (ha1_hex, known) = match ha1 {
            Some(ha1) => (if sha256 { &ha1.sha256 } else { &ha1.md5 }, true),
            None => (&dummy, false),
        };
        let expected = compute_response(
            sha256,
            ha1_hex,
            &credentials.nonce,
            nc_text,
            cnonce,
            "auth",
            method,
            &credentials.uri,
        );
        let matches = eq_ignoring_case_constant_time(expected.as_bytes(), credentials.response.as_bytes());
        if !known {
            return Verdict::Invalid(InvalidReason::UnknownUser);
        }
        if !matches {
            return Verdict::Invalid(InvalidReason::WrongResponse);
        }
        if now.timestamp().saturating_sub(issued_at) > self.config.nonce_lifetime_secs {
            return Verdict::Stale;
        }
        self.accept_nonce_count(nonce_key, issued_at, nc, now)
    }

    /// Refuses a nonce-count not above the last one accepted for this nonce (a replay).
    fn accept_nonce_count(&mut self, nonce: u128, issued_at: i64, nc: u32, now: DateTime<Utc>) -> Verdict {
        match self.seen.get_mut(&nonce) {
            Some((_, last)) => {
                if nc <= *last {
                    return Verdict::Invalid(InvalidReason::Replayed);
                }
                *last = nc;
                Verdict::Ok
            }
            None => {
                if issued_at <= self.forgotten_through {
                    return Verdict::Stale;
                }
                self.make_room(now);
                self.seen.insert(nonce, (issued_at, nc));
                self.order.push_back(nonce);
                Verdict::Ok
            }
        }
    }

    /// Drops the oldest entries while they have expired (they are refused as stale anyway),
    /// then while the memory is full. Only the front of `order` is touched, so each nonce is
    /// dropped once and a new one costs O(1) amortized, however full the memory is (a full
    /// scan here made every new nonce cost O(n) once 100,000 were tracked, and a node under
    /// load stopped answering).
    fn make_room(&mut self, now: DateTime<Utc>) {
        let lifetime = self.config.nonce_lifetime_secs;
        let capacity = self.config.max_tracked_nonces.max(1);
        while let Some(oldest) = self.order.front() {
            let expired = self
                .seen
                .get(oldest)
                .is_none_or(|(issued_at, _)| now.timestamp().saturating_sub(*issued_at) > lifetime);
            if !expired && self.seen.len() < capacity {
                break;
            }
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((issued_at, _)) = self.seen.remove(&oldest) {
                if !expired {
                    self.forgotten_through = self.forgotten_through.max(issued_at);
                }
            }
        }
    }

    /// The issue time of a nonce this node family signed for `realm`, and the key its
    /// nonce-count is remembered under (the MAC's first 128 bits), or `None`.
    fn check_nonce(&self, nonce: &str, realm: &str) -> Option<(i64, u128)> {
        let mut parts = nonce.split('.');
        let (issued_hex, random_hex, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || issued_hex.len() > 16 {
            return None;
        }
        let issued_at = i64::from_str_radix(issued_hex, 16).ok()?;
        let expected = self.nonce_mac_bytes(issued_at, realm, random_hex);
        let matches = bool::from(hex_lower(&expected).as_bytes().ct_eq(mac.as_bytes()));
        let mut key = [0u8; 16];
        key.copy_from_slice(&expected[..16]);
        matches.then_some((issued_at, u128::from_be_bytes(key)))
    }

    fn nonce_mac(&self, issued_at: i64, realm: &str, random_hex: &str) -> String {
        hex_lower(&self.nonce_mac_bytes(issued_at, realm, random_hex))
    }

    fn nonce_mac_bytes(&self, issued_at: i64, realm: &str, random_hex: &str) -> [u8; 32] {
        self.hmac(&[
            b"nonce",
            &issued_at.to_be_bytes(),
            realm.as_bytes(),
            random_hex.as_bytes(),
        ])
    }

    /// Opaque is a per-realm constant: it only proves the credentials answer our challenge.
    fn opaque(&mut self, realm: &str) -> String {
        if let Some((cached_realm, opaque)) = &self.last_opaque {
            if cached_realm == realm {
                return opaque.clone();
            }
        }
        // An HMAC-SHA256 output is 32 bytes, so the first 8 always exist.
        let opaque = hex_lower(&self.hmac(&[b"opaque", realm.as_bytes()])[..8]);
        self.last_opaque = Some((realm.to_string(), opaque.clone()));
        opaque
    }

    fn hmac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // Keyed once in `new`; a clone skips hashing the key pads again for every MAC.
        let mut mac = self.keyed.clone();
        for part in parts {
            // Length-prefix each part so ("ab","c") and ("a","bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The HA1 of a user that does not exist, in one algorithm: what [`Ha1::compute`] gives for
/// a password nobody has.
fn dummy_ha1(sha256: bool, username: &str, realm: &str) -> String {
    hash_hex(sha256, &[username, ":", realm, ":\u{0}dummy\u{0}"])
}

/// The lower-case hex hash of the concatenated parts.
fn hash_hex(sha256: bool, parts: &[&str]) -> String {
    fn digest<D: Digest>(parts: &[&str]) -> String {
        let mut hasher = D::new();
        for part in parts {
            hasher.update(part.as_bytes());
        }
        hex_lower(&hasher.finalize())
    }
    if sha256 {
        digest::<Sha256>(parts)
    } else {
        digest::<Md5>(parts)
    }
}

/// Bytes in lower-case hex, as `hex::encode` writes them (which goes a char at a time
/// through an iterator: a few percent of a registration's CPU).
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// `n` in lower-case hex without leading zeros, as `format!("{n:x}")` writes it.
fn hex_u64(n: u64) -> String {
    let full = hex_lower(&n.to_be_bytes());
    let digits = full.trim_start_matches('0');
    if digits.is_empty() {
        "0".to_string()
    } else {
        digits.to_string()
    }
}

/// Whether `expected` (lower-case hex) equals `given` read without regard to case, in time
/// that depends only on the lengths.
fn eq_ignoring_case_constant_time(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    let difference = expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()));
    bool::from(difference.ct_eq(&0))
}

/// `response = H(HA1:nonce:nc:cnonce:qop:H(method:uri))` in lower-case hex (RFC 7616 §3.4.1).
#[allow(clippy::too_many_arguments)]
pub fn compute_response(
    sha256: bool,
    ha1_hex: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = hash_hex(sha256, &[method, ":", uri]);
    hash_hex(
        sha256,
        &[ha1_hex, ":", nonce, ":", nc, ":", cnonce, ":", qop, ":", &ha2],
    )
}

/// The parameters of a `WWW-Authenticate`/`Proxy-Authenticate` digest challenge.
fn challenge_params(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.trim();
    let (scheme, rest) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.find(',') {
                Some(comma) => (&after[..comma], &after[comma..]),
                None => (after, ""),
            }
        };
        params.insert(name, val.trim().to_string());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(params)
}

/// Our answer to a carrier's digest challenge, as the value of an `Authorization` or
/// `Proxy-Authorization` header (outbound trunk credentials). MD5 or SHA-256, `qop=auth`
/// when offered; the cnonce is derived from the nonce, so the node stays free of randomness.
pub fn answer_challenge(challenge: &str, username: &str, password: &str, method: &str, uri: &str) -> Option<String> {
    let params = challenge_params(challenge)?;
    let realm = params.get("realm")?;
    let nonce = params.get("nonce")?;
    let algorithm = params.get("algorithm").map(|a| a.to_ascii_uppercase());
    let sha256 = match algorithm.as_deref() {
        None | Some("MD5") => false,
        Some("SHA-256") => true,
        Some(_) => return None,
    };
    let ha1 = Ha1::compute(username, realm, password);
    let ha1_hex = if sha256 { ha1.sha256 } else { ha1.md5 };
    let qop_auth = params
        .get("qop")
        .is_some_and(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")));
    let algorithm_text = if sha256 { "SHA-256" } else { "MD5" };
    let mut header = if qop_auth {
        let cnonce = hex::encode(&Sha256::digest(format!("{nonce}:{uri}").as_bytes())[..8]);
        let response = compute_response(sha256, &ha1_hex, nonce, "00000001", &cnonce, "auth", method, uri);
        format!(
            "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm={algorithm_text}, qop=auth, nc=00000001, cnonce=\"{cnonce}\""
        )
    } else {
        let hash = |text: String| -> String {
            if sha256 {
                hex::encode(Sha256::digest(text.as_bytes()))
            } else {
                hex::encode(Md5::digest(text.as_bytes()))
            }
        };
        let response = hash(format!("{ha1_hex}:{nonce}:{}", hash(format!("{method}:{uri}"))));
        format!(
            "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm={algorithm_text}"
        )
    };
    if let Some(opaque) = params.get("opaque") {
        header.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_digest_credentials;
    use chrono::TimeZone;

    #[test]
    fn hand_written_hex_and_comparison_agree_with_the_obvious_ones() {
        for n in [0i64, 1, 15, 16, 0x6756_1234, i64::MAX, -1, i64::MIN] {
            assert_eq!(hex_u64(n as u64), format!("{n:x}"));
        }
        let expected = b"0a1b2c";
        assert!(eq_ignoring_case_constant_time(expected, b"0a1b2c"));
        assert!(eq_ignoring_case_constant_time(expected, b"0A1B2C"));
        assert!(!eq_ignoring_case_constant_time(expected, b"0a1b2d"));
        assert!(!eq_ignoring_case_constant_time(expected, b"0a1b2"));
        assert!(!eq_ignoring_case_constant_time(expected, b""));
        for bytes in [&[][..], &[0], &[0x0f, 0xf0, 0xab], &[0xff; 33]] {
            assert_eq!(hex_lower(bytes), hex::encode(bytes));
        }
        assert_eq!(hash_hex(false, &["a", ":", "b"]), hex::encode(Md5::digest(b"a:b")));
        assert_eq!(hash_hex(true, &["a", ":", "b"]), hex::encode(Sha256::digest(b"a:b")));
    }

    #[test]
    fn the_dummy_ha1_is_the_full_computation_in_one_algorithm() {
        let full = Ha1::compute("1001", "acme.test", "\u{0}dummy\u{0}");
        assert_eq!(dummy_ha1(false, "1001", "acme.test"), full.md5);
        assert_eq!(dummy_ha1(true, "1001", "acme.test"), full.sha256);
    }

    #[test]
    fn our_answer_to_a_challenge_verifies_with_our_own_verifier() {
        let mut verifier = DigestVerifier::new(config());
        for sha256 in [false, true] {
            let challenge = verifier.challenge("carrier.example", at(0), [9 + u8::from(sha256); 16], false);
            let fields = challenge.header_fields(false);
            let wanted = if sha256 { "SHA-256" } else { "MD5" };
            let (_, value) = fields
                .iter()
                .find(|(_, v)| v.contains(&format!("algorithm={wanted}")))
                .unwrap();
            let answer = answer_challenge(value, "trunk1", "secret-pw", "INVITE", "sip:100@carrier.example").unwrap();
            let credentials = parse_digest_credentials(&answer).unwrap();
            let ha1 = Ha1::compute("trunk1", "carrier.example", "secret-pw");
            assert_eq!(
                verifier.verify(&credentials, "INVITE", "carrier.example", Some(&ha1), at(1)),
                Verdict::Ok
            );
        }
        assert!(answer_challenge("Basic realm=\"x\"", "u", "p", "INVITE", "sip:x").is_none());
        assert!(answer_challenge(
            "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512",
            "u",
            "p",
            "INVITE",
            "sip:x"
        )
        .is_none());
    }

    #[test]
    fn md5_only_offers_one_challenge_and_still_accepts_sha256() {
        let mut config = config();
        config.offer_sha256 = false;
        let mut verifier = DigestVerifier::new(config);
        let challenge = verifier.challenge(REALM, at(0), [3; 16], false);
        let fields = challenge.header_fields(false);
        assert_eq!(fields.len(), 1);
        assert!(fields[0].1.contains("algorithm=MD5"));
        let credentials = answer(&challenge, "s3cret", true, 1);
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(1)),
            Verdict::Ok
        );
    }

    #[test]
    fn rfc_2617_example_response() {
        let ha1 = Ha1::compute("Mufasa", "testrealm@host.com", "Circle Of Life");
        let response = compute_response(
            false,
            &ha1.md5,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            "auth",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc_7616_examples_for_md5_and_sha256() {
        let ha1 = Ha1::compute("Mufasa", "http-auth@example.org", "Circle of Life");
        let args = (
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        let md5 = compute_response(
            false,
            &ha1.md5,
            args.0,
            args.1,
            args.2,
            "auth",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(md5, "8ca523f5e9506fed4657c9700eebdbec");
        let sha = compute_response(
            true,
            &ha1.sha256,
            args.0,
            args.1,
            args.2,
            "auth",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(sha, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
    }

    fn config() -> DigestConfig {
        DigestConfig {
            secret: b"node secret".to_vec(),
            nonce_lifetime_secs: 300,
            max_tracked_nonces: 3,
            prefer_sha256: true,
            offer_sha256: true,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
    }

    /// What a phone sends for `challenge` with `password`.
    fn answer(challenge: &Challenge, password: &str, sha256: bool, nc: u32) -> DigestCredentials {
        let ha1 = Ha1::compute("1001", &challenge.realm, password);
        let nc_text = format!("{nc:08x}");
        let uri = "sip:acme.example.com";
        let response = compute_response(
            sha256,
            if sha256 { &ha1.sha256 } else { &ha1.md5 },
            &challenge.nonce,
            &nc_text,
            "cn0nce",
            "auth",
            "REGISTER",
            uri,
        );
        let value = format!(
            "Digest username=\"1001\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", \
algorithm={}, qop=auth, nc={nc_text}, cnonce=\"cn0nce\", opaque=\"{}\"",
            challenge.realm,
            challenge.nonce,
            if sha256 { "SHA-256" } else { "MD5" },
            challenge.opaque
        );
        parse_digest_credentials(&value).unwrap()
    }

    const REALM: &str = "acme.example.com";

    fn ha1() -> Ha1 {
        Ha1::compute("1001", REALM, "s3cret")
    }

    #[test]
    fn challenge_offers_sha256_before_md5_with_the_rfc_8760_token() {
        let mut verifier = DigestVerifier::new(config());
        let fields = verifier.challenge(REALM, at(0), [7; 16], true).header_fields(false);
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].0, "WWW-Authenticate");
        assert!(fields[0].1.contains("algorithm=SHA-256"), "{}", fields[0].1);
        assert!(fields[1].1.contains("algorithm=MD5"));
        assert!(fields[0].1.contains("qop=\"auth\"") && fields[0].1.ends_with("stale=true"));
        let proxy = verifier.challenge(REALM, at(0), [7; 16], false).header_fields(true);
        assert_eq!(proxy[0].0, "Proxy-Authenticate");
        assert!(!proxy[0].1.contains("stale"));
        let mut compatible = DigestVerifier::new(DigestConfig {
            prefer_sha256: false,
            offer_sha256: true,
            ..config()
        });
        let fields = compatible.challenge(REALM, at(0), [7; 16], false).header_fields(false);
        assert!(fields[0].1.contains("algorithm=MD5") && fields[1].1.contains("algorithm=SHA-256"));
    }

    #[test]
    fn correct_credentials_pass_with_both_algorithms() {
        let mut verifier = DigestVerifier::new(config());
        let challenge = verifier.challenge(REALM, at(0), [1; 16], false);
        for (sha256, nc) in [(true, 1), (false, 2)] {
            let credentials = answer(&challenge, "s3cret", sha256, nc);
            assert_eq!(
                verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(5)),
                Verdict::Ok
            );
        }
    }

    #[test]
    fn a_replayed_nonce_count_is_refused() {
        let mut verifier = DigestVerifier::new(config());
        let challenge = verifier.challenge(REALM, at(0), [1; 16], false);
        let first = answer(&challenge, "s3cret", true, 1);
        assert_eq!(
            verifier.verify(&first, "REGISTER", REALM, Some(&ha1()), at(1)),
            Verdict::Ok
        );
        assert_eq!(
            verifier.verify(&first, "REGISTER", REALM, Some(&ha1()), at(2)),
            Verdict::Invalid(InvalidReason::Replayed)
        );
        let next = answer(&challenge, "s3cret", true, 2);
        assert_eq!(
            verifier.verify(&next, "REGISTER", REALM, Some(&ha1()), at(3)),
            Verdict::Ok
        );
        // The same nonce spelled with a leading zero is the same nonce: its count goes on.
        let mut respelled = challenge.clone();
        respelled.nonce = format!("0{}", challenge.nonce);
        let again = answer(&respelled, "s3cret", true, 2);
        assert_eq!(
            verifier.verify(&again, "REGISTER", REALM, Some(&ha1()), at(4)),
            Verdict::Invalid(InvalidReason::Replayed)
        );
        let after = answer(&respelled, "s3cret", true, 3);
        assert_eq!(
            verifier.verify(&after, "REGISTER", REALM, Some(&ha1()), at(5)),
            Verdict::Ok
        );
    }

    #[test]
    fn an_expired_nonce_is_stale_only_when_the_password_was_right() {
        let mut verifier = DigestVerifier::new(config());
        let challenge = verifier.challenge(REALM, at(0), [1; 16], false);
        let good = answer(&challenge, "s3cret", true, 1);
        assert_eq!(
            verifier.verify(&good, "REGISTER", REALM, Some(&ha1()), at(301)),
            Verdict::Stale
        );
        let bad = answer(&challenge, "guess", true, 1);
        assert_eq!(
            verifier.verify(&bad, "REGISTER", REALM, Some(&ha1()), at(301)),
            Verdict::Invalid(InvalidReason::WrongResponse)
        );
    }

    #[test]
    fn forged_nonces_other_realms_and_sess_are_refused() {
        let mut verifier = DigestVerifier::new(config());
        let challenge = verifier.challenge(REALM, at(0), [1; 16], false);
        let mut forged = challenge.clone();
        forged.nonce = forged.nonce.replacen('.', "0.", 1);
        assert_eq!(
            verifier.verify(
                &answer(&forged, "s3cret", true, 1),
                "REGISTER",
                REALM,
                Some(&ha1()),
                at(1)
            ),
            Verdict::Invalid(InvalidReason::BadNonce)
        );
        // A nonce signed for another tenant's realm does not verify in this one.
        let other = verifier.challenge("other.example.com", at(0), [1; 16], false);
        let mut moved = answer(&other, "s3cret", true, 1);
        moved.realm = REALM.into();
        assert_eq!(
            verifier.verify(&moved, "REGISTER", REALM, Some(&ha1()), at(1)),
            Verdict::Invalid(InvalidReason::BadNonce)
        );
        let mut sess = answer(&challenge, "s3cret", true, 1);
        sess.algorithm = DigestAlgorithm::Sha256Sess;
        assert_eq!(
            verifier.verify(&sess, "REGISTER", REALM, Some(&ha1()), at(1)),
            Verdict::Invalid(InvalidReason::UnsupportedAlgorithm)
        );
        let mut no_qop = answer(&challenge, "s3cret", true, 1);
        no_qop.qop = None;
        assert_eq!(
            verifier.verify(&no_qop, "REGISTER", REALM, Some(&ha1()), at(1)),
            Verdict::Invalid(InvalidReason::UnsupportedQop)
        );
    }

    #[test]
    fn unknown_users_are_refused_like_wrong_passwords() {
        let mut verifier = DigestVerifier::new(config());
        let challenge = verifier.challenge(REALM, at(0), [1; 16], false);
        let credentials = answer(&challenge, "s3cret", true, 1);
        let verdict = verifier.verify(&credentials, "REGISTER", REALM, None, at(1));
        assert!(matches!(verdict, Verdict::Invalid(_)));
        // Even a nonce past its lifetime gets the same refusal, not a stale hint.
        let late = verifier.verify(&credentials, "REGISTER", REALM, None, at(400));
        assert_eq!(late, Verdict::Invalid(InvalidReason::UnknownUser));
    }

    #[test]
    fn expired_nonces_leave_memory_without_making_live_ones_stale() {
        let mut verifier = DigestVerifier::new(config());
        // Two nonces used early, then a third issued (not yet used) shortly before they expire.
        for i in 0..2u8 {
            let challenge = verifier.challenge(REALM, at(i64::from(i)), [i; 16], false);
            let credentials = answer(&challenge, "s3cret", true, 1);
            assert_eq!(
                verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(5)),
                Verdict::Ok
            );
        }
        let late = verifier.challenge(REALM, at(250), [7; 16], false);
        let fresh = verifier.challenge(REALM, at(310), [8; 16], false);
        let credentials = answer(&fresh, "s3cret", true, 1);
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(320)),
            Verdict::Ok
        );
        // The two expired nonces made room; nothing live was evicted, so the nonce issued
        // at 250 is still trusted with its first nonce-count rather than answered as stale.
        assert_eq!(verifier.seen.len(), 1);
        assert_eq!(verifier.order.len(), 1);
        let credentials = answer(&late, "s3cret", true, 1);
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(321)),
            Verdict::Ok
        );
    }

    #[test]
    fn a_full_nonce_memory_keeps_its_bound_and_its_order() {
        let mut verifier = DigestVerifier::new(DigestConfig {
            max_tracked_nonces: 1_000,
            ..config()
        });
        let mut first = None;
        for i in 0..5_000u32 {
            let mut random = [0u8; 16];
            random[..4].copy_from_slice(&i.to_be_bytes());
            // 100 new nonces a second, each used once at once (a registration storm).
            let second = i64::from(i / 100);
            let challenge = verifier.challenge(REALM, at(second), random, false);
            let credentials = answer(&challenge, "s3cret", true, 1);
            assert_eq!(
                verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(second)),
                Verdict::Ok
            );
            first.get_or_insert(challenge);
            assert!(verifier.seen.len() <= 1_000 && verifier.order.len() == verifier.seen.len());
        }
        // The oldest were evicted while live: their next use is stale, never a fresh start.
        let again = answer(&first.unwrap(), "s3cret", true, 2);
        assert_eq!(
            verifier.verify(&again, "REGISTER", REALM, Some(&ha1()), at(51)),
            Verdict::Stale
        );
    }

    #[test]
    fn nonce_memory_is_bounded_and_forgotten_nonces_are_stale() {
        let mut verifier = DigestVerifier::new(config());
        let mut challenges = Vec::new();
        for i in 0..4u8 {
            let challenge = verifier.challenge(REALM, at(i64::from(i)), [i; 16], false);
            let credentials = answer(&challenge, "s3cret", true, 1);
            assert_eq!(
                verifier.verify(&credentials, "REGISTER", REALM, Some(&ha1()), at(10)),
                Verdict::Ok
            );
            challenges.push(challenge);
        }
        assert!(verifier.seen.len() <= 3);
        // The first nonce was evicted: its nc=2 cannot be checked against memory, so it is stale.
        let again = answer(&challenges[0], "s3cret", true, 2);
        assert_eq!(
            verifier.verify(&again, "REGISTER", REALM, Some(&ha1()), at(11)),
            Verdict::Stale
        );
    }
}
