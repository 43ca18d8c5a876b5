//! Async clients for `monero-wallet-rpc` ([`WalletRpc`]) and `monerod`
//! ([`DaemonRpc`]), over HTTP with reqwest.
//!
//! Every amount is [`Piconero`](gradpool_core::Piconero) (an integer), never
//! a float. A JSON-RPC error object becomes [`RpcError::Rpc`] with its code
//! and message; [`wallet_error`] names the wallet's codes.

mod daemon;
mod transport;
mod wallet;

pub use daemon::{DaemonRpc, GeneratedBlocks, TxLookup, TxStatus};
pub use wallet::{
    Balance, Destination, Refresh, Subaddress, SubaddressBalance, SubaddressIndex, Transfer,
    TransferOptions, TransferQuery, TransferReceipt, TransferType, Transfers, WalletRpc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why an RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The URL given to a client's constructor is not usable.
    #[error("{url:?} is not a usable RPC URL: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request was refused before it was sent (bad arguments).
    #[error("{method}: {reason}")]
    InvalidRequest {
        /// The RPC method.
        method: String,
        /// What is wrong with the arguments.
        reason: String,
    },
    /// The server could not be reached, or the connection broke or timed
    /// out.
    #[error("{method} at {endpoint}: could not reach the server: {source}")]
    Transport {
        /// The RPC method.
        method: String,
        /// The URL that was called.
        endpoint: String,
        /// The underlying HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an HTTP error status.
    #[error("{method} at {endpoint}: HTTP {status}: {body}")]
    HttpStatus {
        /// The RPC method.
        method: String,
        /// The URL that was called.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The server answered with a JSON-RPC error object.
    #[error("{method} failed: {message} (RPC error {code})")]
    Rpc {
        /// The RPC method.
        method: String,
        /// The JSON-RPC error code (see [`wallet_error`] for the wallet's).
        code: i64,
        /// The server's message.
        message: String,
    },
    /// `monerod` answered with a `status` other than `OK`.
    #[error("{method}: the daemon answered status {status:?}")]
    DaemonStatus {
        /// The RPC method.
        method: String,
        /// The status string.
        status: String,
    },
    /// The answer is not what the method returns.
    #[error("{method}: unexpected answer: {detail}")]
    Decode {
        /// The RPC method.
        method: String,
        /// What did not parse.
        detail: String,
    },
}

impl RpcError {
    /// The JSON-RPC error code, when the server answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The error codes of `monero-wallet-rpc` (from its
/// `wallet_rpc_server_error_codes.h`), as found in [`RpcError::Rpc`].
pub mod wallet_error {
    /// Anything else (for example "Failed to open wallet").
    pub const UNKNOWN_ERROR: i64 = -1;
    /// An address did not parse (wrong network, typo).
    pub const WRONG_ADDRESS: i64 = -2;
    /// The daemon is busy.
    pub const DAEMON_IS_BUSY: i64 = -3;
    /// A transfer or a relay failed ("Failed to commit tx.").
    pub const GENERIC_TRANSFER_ERROR: i64 = -4;
    /// A transaction id is malformed or unknown ("Transaction not found.").
    pub const WRONG_TXID: i64 = -8;
    /// No wallet is open ("No wallet file").
    pub const NOT_OPEN: i64 = -13;
    /// The transaction cannot be built.
    pub const TX_NOT_POSSIBLE: i64 = -16;
    /// The balance does not cover the amount and fee.
    pub const NOT_ENOUGH_MONEY: i64 = -17;
    /// The transaction would be too large.
    pub const TX_TOO_LARGE: i64 = -18;
    /// Not enough outputs on the chain to build rings.
    pub const NOT_ENOUGH_OUTS_TO_MIX: i64 = -19;
    /// A destination has a zero amount.
    pub const ZERO_DESTINATION: i64 = -20;
    /// `create_wallet` with a file name that exists.
    pub const WALLET_ALREADY_EXISTS: i64 = -21;
    /// Wrong wallet password.
    pub const INVALID_PASSWORD: i64 = -22;
    /// The wallet RPC was started without `--wallet-dir`.
    pub const NO_WALLET_DIR: i64 = -23;
    /// Not valid hex.
    pub const BAD_HEX: i64 = -26;
    /// `relay_tx` was given something that is not transaction metadata.
    pub const BAD_TX_METADATA: i64 = -27;
    /// The balance is there but still locked.
    pub const NOT_ENOUGH_UNLOCKED_MONEY: i64 = -37;
    /// The wallet cannot reach its daemon.
    pub const NO_DAEMON_CONNECTION: i64 = -38;
}

/// A transaction hash (txid): 32 bytes as 64 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxHash(String);

/// A string that is not a transaction hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a transaction hash (expected 64 hex digits)")]
pub struct InvalidTxHash(pub String);

impl TxHash {
    /// Parses 64 hex digits (either case; stored lower-case).
    pub fn parse(s: &str) -> Result<TxHash, InvalidTxHash> {
        let t = s.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(TxHash(t.to_ascii_lowercase()))
        } else {
            Err(InvalidTxHash(s.to_string()))
        }
    }

    /// The hex string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxHash({})", self.0)
    }
}

impl FromStr for TxHash {
    type Err = InvalidTxHash;

    fn from_str(s: &str) -> Result<TxHash, InvalidTxHash> {
        TxHash::parse(s)
    }
}

impl Serialize for TxHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TxHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TxHash, D::Error> {
        let s = String::deserialize(deserializer)?;
        TxHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A signed transaction the wallet built but did not relay
/// (`transfer` with `do_not_relay` and `get_tx_metadata`), as the hex
/// string `relay_tx` takes.
///
/// Keep it secret: it holds the transaction's private key (which proves the
/// payment) as well as the transaction. It is specific to the wallet that
/// built it: another wallet's `relay_tx` refuses it ("Failed to commit
/// tx."), because it refers to that wallet's outputs by index. `Debug`
/// prints only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct TxMetadata(String);

/// A string that is not transaction metadata hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transaction metadata must be a non-empty, even-length hex string")]
pub struct InvalidTxMetadata;

impl TxMetadata {
    /// Wraps a hex string (as stored by the caller), checking it is hex.
    pub fn from_hex(hex: impl Into<String>) -> Result<TxMetadata, InvalidTxMetadata> {
        let hex = hex.into();
        if !hex.is_empty() && hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(TxMetadata(hex))
        } else {
            Err(InvalidTxMetadata)
        }
    }

    /// The hex string, for storing.
    pub fn as_hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TxMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxMetadata({} hex digits)", self.0.len())
    }
}

impl Serialize for TxMetadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TxMetadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TxMetadata, D::Error> {
        let s = String::deserialize(deserializer)?;
        TxMetadata::from_hex(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_hashes_are_64_hex_digits() {
        let h = "5895EC2F33CE5B662A0455D477E789B9FEEB465F9A25F3F2E5E5FAF852485DA7";
        let parsed = TxHash::parse(h).unwrap();
        assert_eq!(parsed.as_str(), h.to_ascii_lowercase());
        assert!(TxHash::parse(&h[1..]).is_err());
        assert!(TxHash::parse(&format!("{}g", &h[1..])).is_err());
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<TxHash>(&json).unwrap(), parsed);
    }

    #[test]
    fn tx_metadata_is_hex_and_debug_hides_it() {
        let m = TxMetadata::from_hex("0102ab").unwrap();
        assert_eq!(format!("{m:?}"), "TxMetadata(6 hex digits)");
        assert!(TxMetadata::from_hex("").is_err());
        assert!(TxMetadata::from_hex("012").is_err());
        assert!(TxMetadata::from_hex("zz").is_err());
    }

    #[test]
    fn rpc_errors_carry_their_code() {
        let e = RpcError::Rpc {
            method: "transfer".into(),
            code: wallet_error::NOT_ENOUGH_MONEY,
            message: "not enough money".into(),
        };
        assert_eq!(e.code(), Some(-17));
        assert_eq!(
            e.to_string(),
            "transfer failed: not enough money (RPC error -17)"
        );
    }
}
