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
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
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
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
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

/// `n` random bytes from the operating system, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS random source does not fail on any supported platform; if it
    // ever does there is no safe fallback for ids and keys.
    getrandom::getrandom(&mut buf).expect("operating system random source failed");
    hex::encode(buf)
}
