//! SIP digest HA1 values: the only form in which an extension's password is ever kept.

use md5::Md5;
use sha2::{Digest, Sha256};

/// `HA1 = H(username ":" realm ":" password)` for MD5 (RFC 2617) and SHA-256 (RFC 8760).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha1 {
    pub md5: String,
    pub sha256: String,
}

impl Ha1 {
    pub fn compute(username: &str, realm: &str, password: &str) -> Self {
        let input = format!("{username}:{realm}:{password}");
        Ha1 {
            md5: hex::encode(Md5::digest(input.as_bytes())),
            sha256: hex::encode(Sha256::digest(input.as_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_matches_rfc_2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life.
        let ha1 = Ha1::compute("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert_eq!(ha1.md5, "939e7578ed9e3c518a452acee763bce9");
        assert_eq!(ha1.sha256.len(), 64);
        assert_ne!(
            ha1.sha256,
            Ha1::compute("Mufasa", "testrealm@host.com", "circle of life").sha256
        );
    }
}
