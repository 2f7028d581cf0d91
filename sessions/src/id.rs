//! Session ids and owner tokens: 128 random bits from the operating system, hex-encoded;
//! tokens are compared in constant time.

use serde::{Deserialize, Serialize};
use std::fmt;

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session's public identity: what a watch link carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn random() -> SessionId {
        SessionId(random_hex())
    }

    /// Accepts exactly 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<SessionId> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| SessionId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret that lets its holder control a session (steer, pause, record, close).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnerToken(String);

impl OwnerToken {
    pub fn random() -> OwnerToken {
        OwnerToken(random_hex())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    pub fn verify(&self, candidate: &str) -> bool {
        Self::constant_time_eq(&self.0, candidate)
    }

    /// String equality in time independent of where the strings differ (for secrets).
    pub fn constant_time_eq(a: &str, b: &str) -> bool {
        use subtle::ConstantTimeEq;
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerToken(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_128_bit_hex() {
        let a = SessionId::random();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, SessionId::random());
        assert_eq!(SessionId::parse(a.as_str()), Some(a));
        assert_eq!(SessionId::parse("../etc/passwd"), None);
        assert_eq!(SessionId::parse(&"A".repeat(32)), None);
    }

    #[test]
    fn tokens_verify_only_themselves() {
        let t = OwnerToken::random();
        assert!(t.verify(t.as_str()));
        assert!(!t.verify(OwnerToken::random().as_str()));
        assert!(!t.verify(""));
        assert!(!t.verify(&t.as_str()[..31]));
    }
}
