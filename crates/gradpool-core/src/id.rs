//! Typed identifiers.
//!
//! Ids are short random strings with a prefix that tells what they name
//! (`job_…`, `task_…`, `acct_…`). A provider's id is derived from its node
//! public key, so a provider keeps its id across restarts and pools.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        ///
        /// Ids from outside (the network, a file) are checked when they are
        /// deserialised: the prefix, `_`, then lowercase hex. They are used in
        /// paths and URLs, so nothing else may pass.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn random() -> Self {
                Self(format!("{}_{}", $prefix, random_hex(8)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Checks the shape of an id read from outside.
            pub fn parse(s: &str) -> Result<Self, BadId> {
                if well_formed(s, $prefix) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(BadId {
                        kind: stringify!($name),
                        value: s.chars().take(80).collect(),
                    })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = BadId;
            fn try_from(s: String) -> Result<Self, BadId> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        /// For ids the program made or stored itself; ids from outside go
        /// through [`Self::parse`] or deserialisation.
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_type!(
    /// A customer account.
    AccountId,
    "acct"
);
id_type!(
    /// A training job submitted by a customer.
    JobId,
    "job"
);
id_type!(
    /// One lease of one segment of a job on one provider.
    TaskId,
    "task"
);
id_type!(
    /// A provider, derived from its node public key.
    ProviderId,
    "prov"
);

impl ProviderId {
    /// The id of the provider holding this Ed25519 public key.
    pub fn from_public_key(key: &[u8; 32]) -> Self {
        let digest = blake3::hash(key);
        Self(format!("prov_{}", &digest.to_hex()[..16]))
    }
}

/// An id that does not have the shape of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}")]
pub struct BadId {
    pub kind: &'static str,
    pub value: String,
}

/// `prefix_` followed by 1 to 64 lowercase hex digits.
fn well_formed(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| {
            (1..=64).contains(&hex.len())
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// `n` random bytes from the operating system, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS random source does not fail on any supported platform; if it
    // ever does there is no safe fallback for ids and keys.
    getrandom::getrandom(&mut buf).expect("operating system random source failed");
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_outside_are_checked() {
        let ok: TaskId = serde_json::from_str("\"task_0123456789abcdef\"").unwrap();
        assert_eq!(ok.as_str(), "task_0123456789abcdef");
        for bad in [
            "\"/home/alice\"",
            "\"task_../..\"",
            "\"job_0123\"",
            "\"task_\"",
            "\"task_ABC\"",
        ] {
            assert!(serde_json::from_str::<TaskId>(bad).is_err(), "{bad}");
        }
        assert!(TaskId::parse(TaskId::random().as_str()).is_ok());
        let key = [7u8; 32];
        assert!(ProviderId::parse(ProviderId::from_public_key(&key).as_str()).is_ok());
    }
}
