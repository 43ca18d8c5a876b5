//! Monero for gradpool: the pool is paid and pays in Monero.
//!
//! - [`address`]: parse and validate Monero addresses (base58, Keccak
//!   checksum, network and kind), with errors a user can act on.
//! - [`rpc`]: async clients for `monero-wallet-rpc` ([`WalletRpc`]) and
//!   `monerod` ([`DaemonRpc`]); every amount is [`Piconero`].
//! - [`regtest`]: a private, offline chain (`monerod --regtest` and wallet
//!   RPC processes) for tests and local runs.

#![warn(missing_docs)]

pub mod address;
pub mod regtest;
pub mod rpc;

pub use address::{Address, AddressError, AddressKind, Network};
pub use gradpool_core::Piconero;
pub use regtest::{Regtest, RegtestError, WalletRpcProcess};
pub use rpc::{DaemonRpc, RpcError, TxHash, TxMetadata, TxStatus, WalletRpc};
