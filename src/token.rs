//! The node token: proof that a boot request comes from a medium bootforge built for that host.
//!
//! The token is the lower-case hex HMAC-SHA256 of the hostname, keyed with the exact bytes of the
//! secret file (no trimming: the file is the key). The media builder writes it into each node's
//! script; the boot service recomputes it and compares in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// The key every node token is derived from: the bytes of `--secret-file`. The HMAC is keyed
/// once, here, and cloned per token: a boot storm verifies a token per request.
#[derive(Clone)]
pub struct Secret(HmacSha256);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key, not even in debug output.
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Wraps key bytes; an empty key is refused because it would make every token guessable.
    pub fn new(bytes: Vec<u8>) -> anyhow::Result<Self> {
        anyhow::ensure!(!bytes.is_empty(), "the secret is empty: a node token needs a real key");
        Ok(Secret(HmacSha256::new_from_slice(&bytes).expect("HMAC takes keys of any length")))
    }

    /// Reads the secret file, naming the file in any error.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read secret file {}: {e}", path.display()))?;
        Self::new(bytes).map_err(|e| anyhow::anyhow!("secret file {}: {e}", path.display()))
    }

    /// The node token for `hostname`: lower-case hex HMAC-SHA256(key = secret, message = hostname).
    pub fn node_token(&self, hostname: &str) -> String {
        hex::encode(self.mac(hostname).finalize().into_bytes())
    }

    /// Checks a token a node presented, in constant time. Malformed input is simply "not valid".
    pub fn verify(&self, hostname: &str, presented: &str) -> bool {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(presented, &mut bytes) {
            Ok(()) => self.mac(hostname).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// A second key for another `purpose`, independent of the node tokens: keyed with the
    /// HMAC of a message no host name can be (host names hold no NUL).
    pub fn derive(&self, purpose: &str) -> Secret {
        let key = self.mac(&format!("\0bootforge key\0{purpose}")).finalize().into_bytes();
        Secret::new(key.to_vec()).expect("a 32-byte key is not empty")
    }

    fn mac(&self, hostname: &str) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(hostname.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_rfc4231_style_vector() {
        // HMAC-SHA256(key="key", msg="The quick brown fox jumps over the lazy dog"), a widely
        // published vector, proves the construction (key = file bytes, message = hostname).
        let secret = Secret::new(b"key".to_vec()).unwrap();
        assert_eq!(
            secret.node_token("The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn verify_accepts_only_the_right_token() {
        let secret = Secret::new(b"s3cret\n".to_vec()).unwrap();
        let good = secret.node_token("node01");
        assert!(secret.verify("node01", &good));
        assert!(!secret.verify("node02", &good));
        assert!(!secret.verify("node01", "zz"));
        assert!(!secret.verify("node01", &good[..62]));
        assert!(Secret::new(Vec::new()).is_err());
    }
}
