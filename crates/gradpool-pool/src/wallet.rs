//! Monero: deposits in, payouts out, through the pool's own wallet in
//! `monero-wallet-rpc`.
//!
//! **Deposits.** Each depositor (a customer account) gets a subaddress of
//! the pool's wallet. [`Pool::watch_deposits`] reads the wallet's incoming
//! transfers and credits each `(txid, subaddress)` once, in the same
//! transaction that records it in `deposits`, after
//! [`MoneroBackend::confirmations`] confirmations: a transfer seen again is
//! skipped, one not yet confirmed enough waits.
//!
//! **Payouts.** Provider earnings above [`MoneroBackend::payout_threshold`]
//! and customer withdrawals leave in batches of at most
//! [`MAX_DESTINATIONS`] destinations per transaction. One payout moves at
//! a time through these states, each recorded before the next step:
//!
//! ```text
//! reserved  the amounts moved from provider_available / customer to payout:ID
//! built     the signed transaction (do_not_relay) and its txid stored
//! relayed   handed to the network; payout:ID and the network fee → wallet:monero
//! ```
//!
//! After a crash anywhere, [`Pool::pay_out`] picks up where it stopped:
//! a `reserved` payout is built again (a transaction built with
//! `do_not_relay` and not recorded was never sent, and its inputs were not
//! marked spent), a `built` one is relayed from its stored metadata, and a
//! relay that fails because the transaction is already known counts as
//! relayed. A transaction's inputs can be spent once only, so relaying the
//! same signed transaction twice cannot pay twice; and no payout is built
//! while another is `built`, so two transactions never compete for the same
//! inputs.

use crate::error::PoolError;
use crate::escrow::pool_fees_account;
use crate::ledger::{self, AccountKind, LedgerAccountId};
use crate::money::split_by_shares;
use crate::{MoneyBackend, Pool};
use gradpool_core::state::PayoutStatus;
use gradpool_core::wire::DepositAddress;
use gradpool_core::{AccountId, Piconero};
use gradpool_monero::address::Address;
use gradpool_monero::rpc::{
    DaemonRpc, TransferOptions, TransferQuery, TxHash, TxMetadata, TxStatus, WalletRpc,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Destinations per payout transaction at most (Monero allows 16 outputs;
/// one is the change).
pub const MAX_DESTINATIONS: usize = 15;

/// The pool's Monero wallet and how it pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneroBackend {
    /// `http://127.0.0.1:18083`: a `monero-wallet-rpc` with the pool's
    /// wallet open.
    pub wallet_rpc: String,
    /// `http://127.0.0.1:18081`: the `monerod` the wallet uses, asked
    /// whether a payout's transaction was relayed before a crash.
    pub daemon_rpc: String,
    /// Confirmations before a deposit is credited.
    pub confirmations: u64,
    /// Provider earnings below this wait for the next payout.
    pub payout_threshold: Piconero,
    /// How often deposits are checked and payouts made, in seconds; 0: only
    /// when [`Pool::watch_deposits`] and [`Pool::pay_out`] are called.
    pub poll_seconds: u64,
}

/// Where [`Pool::pay_out`] is in a payout: a test can stop the process at
/// each point (see the crash tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutStage {
    /// The payout is recorded as `built` (with its signed transaction), not
    /// yet relayed.
    Built,
    /// The transaction was relayed; the payout is not yet recorded as
    /// `relayed`.
    Relayed,
}

/// What one [`Pool::pay_out`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayoutReport {
    /// Transactions relayed, with their payout ids.
    pub relayed: Vec<(String, String)>,
    /// Payouts that wait for the wallet's money to unlock.
    pub waiting: Vec<String>,
}

/// What building a reserved payout came to.
enum Built {
    /// Built and recorded: ready to relay.
    Recorded,
    /// More than the wallet's unlocked balance: it waits.
    Waits,
    /// The pool's fees cannot pay the network fee yet.
    FeesShort,
}

/// Unlocked money kept back from payouts for their network fees.
pub const FEE_RESERVE: Piconero = Piconero(1_000_000_000);

/// What payouts may spend now: the wallet's unlocked balance less
/// [`FEE_RESERVE`].
async fn spendable(wallet: &WalletRpc) -> Result<u64, PoolError> {
    let balance = wallet.get_balance().await.map_err(unavailable)?;
    Ok(balance.unlocked_balance.0.saturating_sub(FEE_RESERVE.0))
}

impl Pool {
    fn monero(&self) -> Result<(&MoneroBackend, WalletRpc), PoolError> {
        match &self.inner.config.money.backend {
            MoneyBackend::Monero(m) => Ok((m, WalletRpc::new(&m.wallet_rpc).map_err(unavailable)?)),
            MoneyBackend::Dev => Err(PoolError::Unavailable(
                "this is a dev pool without a Monero wallet".into(),
            )),
        }
    }

    /// The subaddress that funds `ledger_account`, created in the pool's
    /// wallet on first use.
    pub(crate) async fn deposit_subaddress(
        &self,
        ledger_account: &LedgerAccountId,
    ) -> Result<DepositAddress, PoolError> {
        let (m, wallet) = self.monero()?;
        let confirmations = m.confirmations;
        let known: Option<String> =
            sqlx::query_scalar("SELECT address FROM deposit_addresses WHERE ledger_account = $1")
                .bind(ledger_account.as_str())
                .fetch_optional(&self.inner.db)
                .await?;
        if let Some(address) = known {
            return Ok(DepositAddress {
                address,
                confirmations,
            });
        }
        let sub = wallet
            .create_address(Some(ledger_account.as_str()))
            .await
            .map_err(unavailable)?;
        let mut w = self.write().await?;
        let kind = ledger_account
            .kind()
            .ok_or_else(|| PoolError::Internal(format!("bad account {ledger_account}")))?;
        w.account(kind, ledger_account.owner()).await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO deposit_addresses (address, subaddr_index, ledger_account, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (ledger_account) DO NOTHING",
        )
        .bind(sub.address.as_str())
        .bind(i64::from(sub.index))
        .bind(ledger_account.as_str())
        .bind(now)
        .execute(w.conn())
        .await?;
        // Another request may have won the race: its address stands.
        let address: String =
            sqlx::query_scalar("SELECT address FROM deposit_addresses WHERE ledger_account = $1")
                .bind(ledger_account.as_str())
                .fetch_one(w.conn())
                .await?;
        w.commit().await?;
        Ok(DepositAddress {
            address,
            confirmations,
        })
    }

    /// A customer's deposit address.
    pub(crate) async fn customer_deposit_address(
        &self,
        account: &AccountId,
    ) -> Result<DepositAddress, PoolError> {
        self.deposit_subaddress(&LedgerAccountId::new(
            AccountKind::Customer,
            account.as_str(),
        ))
        .await
    }

    /// The subaddress that funds the pool's fee account: the operator's
    /// money for the network fees of payouts.
    pub async fn fee_deposit_address(&self) -> Result<DepositAddress, PoolError> {
        self.deposit_subaddress(&pool_fees_account()).await
    }

    /// Credits every incoming transfer to a deposit subaddress that has
    /// enough confirmations and was not credited before. Returns how many
    /// were credited now.
    pub async fn watch_deposits(&self) -> Result<usize, PoolError> {
        let (m, wallet) = self.monero()?;
        let confirmations = m.confirmations;
        wallet.refresh().await.map_err(unavailable)?;
        let incoming = wallet
            .get_transfers(&TransferQuery::incoming())
            .await
            .map_err(unavailable)?
            .incoming;
        let mut credited = 0;
        for t in incoming {
            // Account 0 holds the deposit subaddresses; a locked transfer
            // (an unlock time in the future) is not money yet.
            if t.subaddr_index.major != 0
                || t.confirmations < confirmations
                || t.amount.0 == 0
                || t.locked && t.unlock_time > 0
            {
                continue;
            }
            let subaddr = t.subaddr_index.minor;
            let mut w = self.write().await?;
            let account: Option<String> = sqlx::query_scalar(
                "SELECT ledger_account FROM deposit_addresses WHERE subaddr_index = $1",
            )
            .bind(i64::from(subaddr))
            .fetch_optional(w.conn())
            .await?;
            let Some(account) = account else {
                continue;
            };
            let amount = i64::try_from(t.amount.0)
                .map_err(|_| PoolError::Internal(format!("deposit {} too large", t.txid)))?;
            let now = w.now;
            let inserted = sqlx::query(
                "INSERT INTO deposits (txid, subaddr_index, amount, height, ledger_account, credited_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(t.txid.as_str())
            .bind(i64::from(subaddr))
            .bind(amount)
            .bind(i64::try_from(t.height).unwrap_or(i64::MAX))
            .bind(account.as_str())
            .bind(now)
            .execute(w.conn())
            .await?
            .rows_affected();
            if inserted == 0 {
                continue;
            }
            let wallet_account = w.account(AccountKind::Wallet, "monero").await?;
            // Created with its deposit address.
            let to = LedgerAccountId::from_stored(account);
            w.transfer(
                &wallet_account,
                &to,
                t.amount,
                &format!("deposit:{}:{subaddr}", t.txid.as_str()),
                &format!("deposit {} of {} to {to}", t.txid.as_str(), t.amount),
            )
            .await?;
            w.commit().await?;
            credited += 1;
            tracing::info!(txid = %t.txid.as_str(), amount = %t.amount, account = %to, "deposit credited");
        }
        Ok(credited)
    }

    /// Moves provider earnings above the threshold into a new `reserved`
    /// payout of at most [`MAX_DESTINATIONS`] destinations and at most
    /// `spendable` piconero, split by each provider's shares. Returns its
    /// id, or `None` if nobody is due (or nobody's earnings fit).
    async fn reserve_provider_payout(&self, spendable: u64) -> Result<Option<String>, PoolError> {
        let (m, _) = self.monero()?;
        let threshold = i64::try_from(m.payout_threshold.0).unwrap_or(i64::MAX);
        let mut w = self.write().await?;
        let due: Vec<(String, i64)> = sqlx::query_as(
            "SELECT a.owner, CAST(SUM(p.amount) AS BIGINT) AS balance FROM ledger_accounts a \
             JOIN postings p ON p.account_id = a.id \
             WHERE a.kind = 'provider_available' \
               AND EXISTS (SELECT 1 FROM payout_splits s WHERE s.provider_id = a.owner) \
             GROUP BY a.id, a.owner HAVING SUM(p.amount) >= CASE WHEN $1 > 1 THEN $1 ELSE 1 END \
             ORDER BY balance DESC",
        )
        .bind(threshold)
        .fetch_all(w.conn())
        .await?;
        let id = format!("po_{}", gradpool_core::id::random_hex(12));
        let payout_account = w.account(AccountKind::Payout, &id).await?;
        let mut destinations = 0;
        let mut left = spendable;
        let mut postings: Vec<(LedgerAccountId, i64)> = Vec::new();
        let mut rows: Vec<(String, i64, LedgerAccountId)> = Vec::new();
        for (provider, balance) in due {
            let splits: Vec<(String, i64)> = sqlx::query_as(
                "SELECT address, share FROM payout_splits WHERE provider_id = $1 ORDER BY rowid",
            )
            .bind(&provider)
            .fetch_all(w.conn())
            .await?;
            let amount = u64::try_from(balance).unwrap_or(0);
            if destinations + splits.len() > MAX_DESTINATIONS || amount > left {
                continue;
            }
            left -= amount;
            let shares: Vec<u32> = splits
                .iter()
                .map(|(_, s)| u32::try_from(*s).unwrap_or(1))
                .collect();
            let parts = split_by_shares(u64::try_from(balance).unwrap_or(0), &shares);
            let from = LedgerAccountId::new(AccountKind::ProviderAvailable, &provider);
            postings.push((from.clone(), -balance));
            for ((address, _), part) in splits.into_iter().zip(parts) {
                if part > 0 {
                    rows.push((
                        address,
                        i64::try_from(part).unwrap_or(i64::MAX),
                        from.clone(),
                    ));
                    destinations += 1;
                }
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let total: i64 = rows.iter().map(|(_, a, _)| *a).sum();
        postings.push((payout_account, total));
        w.post(
            &format!("payout:{id}:reserve"),
            &format!("payout {id} to {destinations} destinations"),
            &postings,
        )
        .await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO payouts (id, kind, status, created_at, updated_at) VALUES ($1, 'provider', 'reserved', $2, $3)",
        )
        .bind(&id)
        .bind(now)
        .bind(now)
        .execute(w.conn())
        .await?;
        for (address, amount, from) in rows {
            sqlx::query(
                "INSERT INTO payout_destinations (payout_id, address, amount, ledger_account) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(address)
            .bind(amount)
            .bind(from.as_str())
            .execute(w.conn())
            .await?;
        }
        w.commit().await?;
        tracing::info!(payout = %id, destinations, total, "payout reserved");
        Ok(Some(id))
    }

    /// Marks a payout relayed and settles it in the ledger: the reserved
    /// amount and the network fee leave through the wallet.
    async fn settle_relayed(&self, id: &str, fee: Piconero) -> Result<(), PoolError> {
        let mut w = self.write().await?;
        let payout = LedgerAccountId::new(AccountKind::Payout, id);
        let wallet = w.account(AccountKind::Wallet, "monero").await?;
        let held = ledger::balance_of(w.conn(), &payout).await?;
        if held > 0 {
            w.transfer(
                &payout,
                &wallet,
                Piconero(u64::try_from(held).unwrap_or(0)),
                &format!("payout:{id}:sent"),
                &format!("payout {id} relayed"),
            )
            .await?;
        }
        if fee.0 > 0 {
            let fees = w.account(AccountKind::PoolFees, "pool").await?;
            w.transfer(
                &fees,
                &wallet,
                fee,
                &format!("payout:{id}:fee"),
                &format!("network fee of payout {id}"),
            )
            .await?;
        }
        let now = w.now;
        sqlx::query("UPDATE payouts SET status = 'relayed', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(w.conn())
            .await?;
        w.commit().await
    }

    /// One round of payouts: finishes a payout left `built` or `reserved`
    /// by a crash, then pays every provider due and every withdrawal
    /// waiting, one transaction at a time. `at` is called at each
    /// [`PayoutStage`] (crash tests stop the process there).
    ///
    /// Only unlocked money is spent: a payout larger than the wallet's
    /// unlocked balance (its change from the previous payout is locked for
    /// ten blocks) waits for a later round, listed in
    /// [`PayoutReport::waiting`], and new provider payouts are reserved only
    /// up to the unlocked balance.
    pub async fn pay_out(
        &self,
        at: &(dyn Fn(PayoutStage) + Sync),
    ) -> Result<PayoutReport, PoolError> {
        let (m, wallet) = self.monero()?;
        let daemon = DaemonRpc::new(&m.daemon_rpc).map_err(unavailable)?;
        let mut report = PayoutReport::default();
        // New provider payouts are reserved only once nothing is in flight.
        let mut reserved_new = false;
        loop {
            let next: Option<(String, String)> = sqlx::query_as(&format!(
                "SELECT id, status FROM payouts WHERE status IN ('built', 'reserved') \
                   AND id NOT IN ({}) \
                 ORDER BY CASE status WHEN 'built' THEN 0 ELSE 1 END, created_at, rowid LIMIT 1",
                self.dialect().json_text_elements("$1")
            ))
            .bind(serde_json::to_string(&report.waiting)?)
            .fetch_optional(&self.inner.db)
            .await?;
            let Some((id, status)) = next else {
                if reserved_new || !report.waiting.is_empty() {
                    break;
                }
                reserved_new = true;
                let spendable = spendable(&wallet).await?;
                if self.reserve_provider_payout(spendable).await?.is_none() {
                    break;
                }
                continue;
            };
            if status.parse::<PayoutStatus>()? == PayoutStatus::Built {
                let txid = self.relay_built(&id, &wallet, &daemon).await?;
                at(PayoutStage::Relayed);
                self.settle_built(&id).await?;
                tracing::info!(payout = %id, txid = %txid, "payout relayed");
                report.relayed.push((id, txid));
                continue;
            }
            match self.build_reserved(&id, &wallet).await? {
                Built::Recorded => at(PayoutStage::Built),
                Built::Waits => report.waiting.push(id),
                Built::FeesShort => break,
            }
        }
        Ok(report)
    }

    /// Relays a `built` payout's stored transaction, unless the daemon knows
    /// it already (relayed before a crash). Returns its txid.
    async fn relay_built(
        &self,
        id: &str,
        wallet: &WalletRpc,
        daemon: &DaemonRpc,
    ) -> Result<String, PoolError> {
        let (txid, metadata): (Option<String>, Option<String>) =
            sqlx::query_as("SELECT txid, tx_metadata FROM payouts WHERE id = $1")
                .bind(id)
                .fetch_one(&self.inner.db)
                .await?;
        let txid = txid.unwrap_or_default();
        let metadata = TxMetadata::from_hex(metadata.unwrap_or_default())
            .map_err(|e| PoolError::Internal(format!("payout {id}: {e}")))?;
        let hash =
            TxHash::parse(&txid).map_err(|e| PoolError::Internal(format!("payout {id}: {e}")))?;
        if daemon.tx_status(&hash).await.map_err(unavailable)? == TxStatus::Unknown {
            wallet.relay_tx(&metadata).await.map_err(unavailable)?;
        } else {
            tracing::info!(payout = %id, txid = %txid, "payout was relayed before a restart");
        }
        Ok(txid)
    }

    /// Settles a relayed payout with the network fee recorded when it was
    /// built.
    async fn settle_built(&self, id: &str) -> Result<(), PoolError> {
        let fee: Option<i64> = sqlx::query_scalar("SELECT fee FROM payouts WHERE id = $1")
            .bind(id)
            .fetch_one(&self.inner.db)
            .await?;
        self.settle_relayed(id, Piconero(u64::try_from(fee.unwrap_or(0)).unwrap_or(0)))
            .await
    }

    /// Builds a `reserved` payout's transaction (signed, not relayed) and
    /// records it as `built`, if the wallet's unlocked balance covers it and
    /// the pool's fees cover its network fee.
    async fn build_reserved(&self, id: &str, wallet: &WalletRpc) -> Result<Built, PoolError> {
        let network = self.inner.config.money.network;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT address, amount FROM payout_destinations WHERE payout_id = $1 ORDER BY rowid",
        )
        .bind(id)
        .fetch_all(&self.inner.db)
        .await?;
        let mut destinations = Vec::new();
        for (address, amount) in rows {
            let address = Address::parse(&address)
                .and_then(|a| a.expect_network(network))
                .map_err(|e| PoolError::Internal(format!("payout {id}: {e}")))?;
            destinations.push((address, Piconero(u64::try_from(amount).unwrap_or(0))));
        }
        let total = destinations
            .iter()
            .fold(0u64, |sum, (_, amount)| sum.saturating_add(amount.0));
        let balance = wallet.get_balance().await.map_err(unavailable)?;
        if balance.unlocked_balance.0 < total.saturating_add(FEE_RESERVE.0) {
            tracing::info!(payout = %id, needs = total, unlocked = %balance.unlocked_balance,
                blocks_to_unlock = balance.blocks_to_unlock,
                "payout waits for the wallet's money to unlock");
            return Ok(Built::Waits);
        }
        let built = wallet
            .transfer(&destinations, &TransferOptions::prepare_only())
            .await
            .map_err(unavailable)?;
        let metadata = built.tx_metadata.ok_or_else(|| {
            PoolError::Internal("the wallet returned no transaction metadata".into())
        })?;
        let fees_balance =
            ledger::balance_of(&mut *self.inner.db.acquire().await?, &pool_fees_account()).await?;
        if u64::try_from(fees_balance).unwrap_or(0) < built.fee.0 {
            // The transaction was never relayed: dropping it is safe.
            tracing::warn!(payout = %id, fee = %built.fee, pool_fees = fees_balance,
                "the pool's fees cannot pay this payout's network fee yet; it waits");
            return Ok(Built::FeesShort);
        }
        let mut w = self.write().await?;
        let now = w.now;
        sqlx::query(
            "UPDATE payouts SET status = 'built', txid = $1, tx_metadata = $2, fee = $3, updated_at = $4 \
             WHERE id = $5 AND status = 'reserved'",
        )
        .bind(built.tx_hash.as_str())
        .bind(metadata.as_hex())
        .bind(i64::try_from(built.fee.0).unwrap_or(i64::MAX))
        .bind(now)
        .bind(id)
        .execute(w.conn())
        .await?;
        w.commit().await?;
        tracing::info!(payout = %id, txid = %built.tx_hash.as_str(), fee = %built.fee, "payout built");
        Ok(Built::Recorded)
    }

    /// Watches deposits and makes payouts every
    /// [`MoneroBackend::poll_seconds`] until `stop`.
    pub(crate) async fn run_wallet(self, stop: CancellationToken) {
        let MoneyBackend::Monero(m) = &self.inner.config.money.backend else {
            return;
        };
        if m.poll_seconds == 0 {
            return;
        }
        let period = Duration::from_secs(m.poll_seconds.max(1));
        // Two loops: a payout round that waits on the wallet never delays
        // the crediting of deposits.
        let deposits = async {
            loop {
                if self.inner.leadership.lead().await {
                    if let Err(e) = self.watch_deposits().await {
                        tracing::warn!(error = %e, "deposit watch failed");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        };
        let payouts = async {
            loop {
                if self.inner.leadership.lead().await {
                    match self.pay_out(&|_| {}).await {
                        Ok(report) if !report.waiting.is_empty() => {
                            tracing::info!(waiting = ?report.waiting, "payouts wait for unlocked money");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "payout failed; retrying later"),
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        };
        tokio::join!(deposits, payouts);
    }
}

fn unavailable(e: impl std::fmt::Display) -> PoolError {
    PoolError::Unavailable(format!("monero wallet: {e}"))
}
