//! Signing a delivery and checking a signature: `Ledgerline-Signature: v1=<hex HMAC-SHA256>`
//! over `"{timestamp}.{body}"`, so a receiver can tell the body came from us and is fresh.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header names every delivery carries.
pub const EVENT_ID_HEADER: &str = "Ledgerline-Event-Id";
pub const TIMESTAMP_HEADER: &str = "Ledgerline-Timestamp";
pub const SIGNATURE_HEADER: &str = "Ledgerline-Signature";

/// The signature scheme's version tag.
pub const SCHEME: &str = "v1";

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "{SCHEME}={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a delivery's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp header is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now, more than the tolerance")]
    Stale(i64),
    #[error("no `v1=` signature in the signature header")]
    NoSignature,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Check a delivery as a receiver would: the `Ledgerline-Timestamp` and
/// `Ledgerline-Signature` header values, the raw body, the receiver's clock (Unix seconds)
/// and how far apart the two clocks may be. The comparison is constant-time, and a header
/// may carry several comma-separated `v1=` values (any one matching is enough).
pub fn verify_signature(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_unix.saturating_sub(timestamp);
    if skew.saturating_abs() > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    let mut any = false;
    for candidate in signature_header.split(',') {
        let Some(hex_mac) = candidate.trim().strip_prefix("v1=") else {
            continue;
        };
        any = true;
        let Ok(bytes) = hex::decode(hex_mac) else {
            continue;
        };
        if mac(secret, timestamp, body).verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    if any {
        Err(SignatureError::Mismatch)
    } else {
        Err(SignatureError::NoSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let body = br#"{"event_id":"x"}"#;
        let signature = sign(b"secret-0123456789", 1_700_000_000, body);
        assert!(signature.starts_with("v1="));
        assert_eq!(signature.len(), 3 + 64);
        let ok = verify_signature(b"secret-0123456789", "1700000000", &signature, body, 1_700_000_010, 300);
        assert_eq!(ok, Ok(()));
        let several = format!("v1=00, {signature}");
        assert_eq!(
            verify_signature(b"secret-0123456789", "1700000000", &several, body, 1_700_000_000, 300),
            Ok(())
        );
        assert_eq!(
            verify_signature(
                b"other-secret-000000",
                "1700000000",
                &signature,
                body,
                1_700_000_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"secret-0123456789", "1700000001", &signature, body, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(
                b"secret-0123456789",
                "1700000000",
                &signature,
                b"{}",
                1_700_000_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"secret-0123456789", "1700000000", &signature, body, 1_700_001_000, 300),
            Err(SignatureError::Stale(1000))
        );
        assert_eq!(
            verify_signature(b"secret-0123456789", "soon", &signature, body, 0, 300),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify_signature(b"secret-0123456789", "1700000000", "sha1=abc", body, 1_700_000_000, 300),
            Err(SignatureError::NoSignature)
        );
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256("key", "0.The quick brown fox") computed independently (Python's hmac).
        assert_eq!(
            sign(b"key", 0, b"The quick brown fox"),
            format!(
                "v1={}",
                "10c3ae5bdd0fd5c9ad60a05ea4051bb529622def626c0d64295951b2039454ed"
            )
        );
    }
}
