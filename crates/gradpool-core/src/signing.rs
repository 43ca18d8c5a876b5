//! Hashes, keys and signatures as types, and the one fixed encoding that
//! is signed.
//!
//! Each is a fixed number of bytes, written as lowercase hex in JSON and in
//! the pool's database; a value that is not exactly that many hex bytes is
//! refused when it is read, naming what it should have been.
//!
//! **What is signed.** A signature covers bytes built by [`Encoding`], never
//! a re-serialisation of a struct (whose JSON could change with a serde
//! version, a field order or a float's formatting). The encoding is:
//!
//! ```text
//! tag       the domain, as bytes, then one 0x00    ("gradpool/commitment/v2")
//! u32, u64  little-endian
//! bytes     a u32 length, little-endian, then the bytes (strings as UTF-8)
//! fixed     a hash or digest, its 32 bytes as they are
//! option    0x00 for none; 0x01 then the value
//! f64       its IEEE-754 bits, as a u64
//! ```
//!
//! Fields follow in the order the type's `signing_bytes` documents. A
//! verifier rebuilds the bytes from the fields it received, so a message
//! verifies exactly when its fields are the ones signed.

use ed25519_dalek::VerifyingKey;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A value that is not the hex bytes it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {what}: expected {len} hex-encoded bytes")]
pub struct BadBytes {
    pub what: &'static str,
    pub len: usize,
}

macro_rules! hex_bytes {
    ($(#[$meta:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = BadBytes;
            fn from_str(s: &str) -> Result<Self, BadBytes> {
                let bad = BadBytes {
                    what: $what,
                    len: $len,
                };
                if s.len() != 2 * $len {
                    return Err(bad);
                }
                let bytes = hex::decode(s).map_err(|_| bad.clone())?;
                Ok($name(bytes.try_into().map_err(|_| bad)?))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(D::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        crate::openapi::hex_schema!($name, Some($len as usize), $what);
    };
}

hex_bytes!(
    /// A link of a job's commitment chain: `BLAKE3(checkpoint ‖ previous)`.
    ChainHash,
    32,
    "chain hash"
);

hex_bytes!(
    /// BLAKE3 over a loss trace's little-endian `f32`s.
    TraceHash,
    32,
    "loss trace hash"
);

hex_bytes!(
    /// An Ed25519 public key: a provider's node key.
    PublicKey,
    32,
    "public key"
);

hex_bytes!(
    /// An Ed25519 signature.
    Signature,
    64,
    "signature"
);

impl PublicKey {
    /// The key as ed25519-dalek checks signatures with it; a point that
    /// is not on the curve is refused.
    pub fn verifying_key(&self) -> Result<VerifyingKey, BadBytes> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| BadBytes {
            what: "public key (not an Ed25519 point)",
            len: 32,
        })
    }

    /// Whether `signature` is this key's (strict Ed25519 verification) over
    /// `message`.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.verifying_key().is_ok_and(|k| {
            k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature.0))
                .is_ok()
        })
    }
}

/// Builds the bytes a signature covers (see the module docs).
#[derive(Debug, Default)]
pub struct Encoding(Vec<u8>);

impl Encoding {
    /// Starts with the domain tag `tag` and a 0x00.
    pub fn new(tag: &str) -> Encoding {
        let mut out = tag.as_bytes().to_vec();
        out.push(0);
        Encoding(out)
    }

    pub fn u32(mut self, x: u32) -> Encoding {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }

    pub fn u64(mut self, x: u64) -> Encoding {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }

    /// A u32 length, then the bytes.
    pub fn bytes(mut self, b: &[u8]) -> Encoding {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(&b[..len as usize]);
        self
    }

    pub fn str(self, s: &str) -> Encoding {
        self.bytes(s.as_bytes())
    }

    /// 32 bytes as they are.
    pub fn fixed(mut self, b: &[u8; 32]) -> Encoding {
        self.0.extend_from_slice(b);
        self
    }

    /// 0x00 for none, 0x01 and the float's bits for some.
    pub fn option_f64(mut self, x: Option<f64>) -> Encoding {
        match x {
            None => self.0.push(0),
            Some(x) => {
                self.0.push(1);
                self.0.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_types_round_trip_and_refuse_the_wrong_length() {
        let h = ChainHash([7; 32]);
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(text, format!("\"{}\"", "07".repeat(32)));
        assert_eq!(serde_json::from_str::<ChainHash>(&text).unwrap(), h);
        let err = serde_json::from_str::<Signature>(&text).unwrap_err();
        assert!(err.to_string().contains("64 hex-encoded bytes"), "{err}");
        assert!("zz".repeat(32).parse::<ChainHash>().is_err());
    }

    #[test]
    fn the_encoding_is_fixed() {
        let bytes = Encoding::new("t")
            .u32(1)
            .str("ab")
            .option_f64(None)
            .option_f64(Some(1.0))
            .finish();
        let mut want = vec![b't', 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 0, 1];
        want.extend_from_slice(&1.0f64.to_bits().to_le_bytes());
        assert_eq!(bytes, want);
    }
}
