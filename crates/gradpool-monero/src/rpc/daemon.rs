//! The `monerod` client.

use super::transport::Endpoint;
use super::{RpcError, TxHash};
use crate::address::Address;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;

/// A client for `monerod`'s RPC (`--rpc-bind-port`).
#[derive(Debug, Clone)]
pub struct DaemonRpc {
    endpoint: Endpoint,
}

/// What `generateblocks` mined.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GeneratedBlocks {
    /// The height of the last block mined (the chain now has `height + 1`
    /// blocks).
    pub height: u64,
    /// The hashes of the mined blocks, oldest first.
    #[serde(default)]
    pub blocks: Vec<String>,
}

/// Where the daemon has a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// Neither in the pool nor in a block: never relayed, dropped, or
    /// unknown.
    Unknown,
    /// In the pool, waiting for a block.
    InPool,
    /// In a block.
    InBlock {
        /// The block's height.
        height: u64,
        /// 1 when that block is the top block.
        confirmations: u64,
    },
}

/// One transaction asked for in [`DaemonRpc::get_transactions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxLookup {
    /// The transaction hash asked for.
    pub txid: TxHash,
    /// Where the daemon has it.
    pub status: TxStatus,
}

#[derive(Deserialize)]
struct CountAnswer {
    count: u64,
}

#[derive(Deserialize)]
struct HeightAnswer {
    height: u64,
}

#[derive(Deserialize)]
struct TransactionsAnswer {
    #[serde(default)]
    txs: Vec<TxEntry>,
}

#[derive(Deserialize)]
struct TxEntry {
    tx_hash: TxHash,
    #[serde(default)]
    in_pool: bool,
    #[serde(default)]
    block_height: u64,
    #[serde(default)]
    confirmations: u64,
}

impl DaemonRpc {
    /// A client for the daemon at `url` (its root, like
    /// `http://127.0.0.1:18081`), with a 10 s connect timeout and a 10 min
    /// call timeout.
    pub fn new(url: &str) -> Result<DaemonRpc, RpcError> {
        Ok(DaemonRpc {
            endpoint: Endpoint::new(url)?,
        })
    }

    /// A client that sends with the given HTTP client.
    pub fn with_client(url: &str, http: reqwest::Client) -> Result<DaemonRpc, RpcError> {
        Ok(DaemonRpc {
            endpoint: Endpoint::with_client(url, http)?,
        })
    }

    /// The daemon's root URL.
    pub fn url(&self) -> &str {
        self.endpoint.base()
    }

    /// The number of blocks in the chain (JSON-RPC `get_block_count`); the
    /// top block's height is one less.
    pub async fn get_block_count(&self) -> Result<u64, RpcError> {
        let answer: CountAnswer = self
            .endpoint
            .json_rpc("get_block_count", &json!({}), true)
            .await?;
        Ok(answer.count)
    }

    /// The number of blocks in the chain (`/get_height`); the same number
    /// as [`get_block_count`](DaemonRpc::get_block_count) and as a
    /// refreshed wallet's `get_height`.
    pub async fn get_height(&self) -> Result<u64, RpcError> {
        let answer: HeightAnswer = self.endpoint.plain("/get_height", &json!({})).await?;
        Ok(answer.height)
    }

    /// Mines `amount_of_blocks` blocks paying their rewards to
    /// `wallet_address` (regtest and fixed-difficulty chains only). A
    /// coinbase output unlocks 60 blocks after its block.
    pub async fn generate_blocks(
        &self,
        amount_of_blocks: u64,
        wallet_address: &Address,
    ) -> Result<GeneratedBlocks, RpcError> {
        self.endpoint
            .json_rpc(
                "generateblocks",
                &json!({
                    "amount_of_blocks": amount_of_blocks,
                    "wallet_address": wallet_address.as_str(),
                }),
                true,
            )
            .await
    }

    /// Where the daemon has each of `txids` (`/get_transactions`), in the
    /// order asked.
    pub async fn get_transactions(&self, txids: &[TxHash]) -> Result<Vec<TxLookup>, RpcError> {
        if txids.is_empty() {
            return Ok(Vec::new());
        }
        let hashes: Vec<&str> = txids.iter().map(TxHash::as_str).collect();
        let answer: TransactionsAnswer = self
            .endpoint
            .plain(
                "/get_transactions",
                &json!({"txs_hashes": hashes, "decode_as_json": false, "prune": true}),
            )
            .await?;
        let found: HashMap<TxHash, TxStatus> = answer
            .txs
            .into_iter()
            .map(|tx| {
                let status = if tx.in_pool {
                    TxStatus::InPool
                } else {
                    TxStatus::InBlock {
                        height: tx.block_height,
                        confirmations: tx.confirmations,
                    }
                };
                (tx.tx_hash, status)
            })
            .collect();
        Ok(txids
            .iter()
            .map(|txid| TxLookup {
                txid: txid.clone(),
                status: found.get(txid).copied().unwrap_or(TxStatus::Unknown),
            })
            .collect())
    }

    /// Where the daemon has one transaction.
    pub async fn tx_status(&self, txid: &TxHash) -> Result<TxStatus, RpcError> {
        let lookups = self.get_transactions(std::slice::from_ref(txid)).await?;
        Ok(lookups
            .into_iter()
            .next()
            .map_or(TxStatus::Unknown, |l| l.status))
    }
}
