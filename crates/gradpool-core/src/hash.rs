//! Content addresses: blobs (datasets, checkpoints, models) are named by the
//! sha256 of their bytes; a pool's TLS certificate by its [`Fingerprint`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A sha256 digest as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a sha256 digest: expected 64 lowercase hex characters, got {0:?}")]
pub struct BadDigest(pub String);

impl Sha256Hex {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Checked at construction: 64 lowercase hex digits.
        for (o, pair) in out.iter_mut().zip(self.0.as_bytes().chunks_exact(2)) {
            let digit = |c: u8| {
                if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                }
            };
            *o = digit(pair[0]) << 4 | digit(pair[1]);
        }
        out
    }

    /// The sha256 of a file, read in chunks.
    pub fn of_file(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Self(hex::encode(hasher.finalize())))
    }
}

impl FromStr for Sha256Hex {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadDigest(s.chars().take(80).collect()))
        }
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = BadDigest;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// The SHA-256 of a certificate's DER bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    /// `sha256:` and 64 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A fingerprint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a certificate fingerprint: expected sha256: and 64 hex digits (colons allowed), got {0:?}"
)]
pub struct BadFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// `sha256:ab12…`, `AB:12:…` or plain hex: 32 bytes in any case, with
    /// or without colons.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint(s.chars().take(120).collect());
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let digits: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(digits.to_ascii_lowercase()).map_err(|_| bad())?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_usual_spelling() {
        let fp = Fingerprint::of(b"certificate");
        let plain = hex::encode(fp.0);
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        for text in [
            fp.to_string(),
            plain.clone(),
            colons.join(":"),
            format!("SHA256:{plain}"),
        ] {
            assert_eq!(text.parse::<Fingerprint>().unwrap(), fp, "{text}");
        }
        for bad in ["", "sha256:", "zz", &plain[..62]] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_of_known_bytes() {
        assert_eq!(
            Sha256Hex::of(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_digest_gives_its_bytes() {
        let d = Sha256Hex::of(b"abc");
        assert_eq!(hex::encode(d.to_bytes()), d.as_str());
    }

    #[test]
    fn rejects_malformed_digests() {
        assert!("abc".parse::<Sha256Hex>().is_err());
        assert!("../../etc/passwd".parse::<Sha256Hex>().is_err());
        let upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        assert!(upper.parse::<Sha256Hex>().is_err());
    }
}
