//! Balances, the dev faucet, withdrawals, provider earnings and stakes.
//!
//! Every amount moves through the [`ledger`]; this module decides who may
//! move what. Customers authenticate with their API key; providers prove
//! they hold their node key with a [`SignedNonce`] over a single-use nonce
//! (the same challenge registration uses), so a provider's earnings can be
//! read and its stake moved without a running agent.

use crate::error::PoolError;
use crate::escrow::{self, available_account, customer_account, stake_account};
use crate::ledger::{self, AccountKind, LedgerAccountId};
use crate::store::{pico, rfc3339};
use crate::tx::Write;
use crate::{MoneyBackend, Pool};
use gradpool_core::commitment::signed_nonce_message;
use gradpool_core::state::{PayoutKind, PayoutStatus};
use gradpool_core::wire::{
    Balance, DepositAddress, Earnings, PayoutSplit, PayoutView, SignedNonce, StakeAction,
    StakeRequest, Withdraw,
};
use gradpool_core::{AccountId, Piconero, ProviderId};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

/// Payout addresses a provider may name at most.
pub const MAX_PAYOUT_SPLITS: usize = 16;

/// Checks a Monero address for the pool's network, naming `field` when it is
/// refused.
pub fn check_address(pool: &Pool, field: &str, address: &str) -> Result<(), PoolError> {
    let network = pool.inner.config.money.network;
    gradpool_monero::address::Address::parse(address)
        .and_then(|a| a.expect_network(network))
        .map(|_| ())
        .map_err(|e| PoolError::BadRequest(format!("{field}: {e}")))
}

/// Checks a provider's payout splits: valid addresses of the pool's network,
/// positive shares, no address twice, at most [`MAX_PAYOUT_SPLITS`].
pub fn check_payout(pool: &Pool, splits: &[PayoutSplit]) -> Result<(), PoolError> {
    if splits.len() > MAX_PAYOUT_SPLITS {
        return Err(PoolError::BadRequest(format!(
            "payout: at most {MAX_PAYOUT_SPLITS} addresses, not {}",
            splits.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, split) in splits.iter().enumerate() {
        check_address(pool, &format!("payout[{i}].address"), &split.address)?;
        if split.share == 0 {
            return Err(PoolError::BadRequest(format!(
                "payout[{i}].share: a share must be at least 1"
            )));
        }
        if !seen.insert(split.address.as_str()) {
            return Err(PoolError::BadRequest(format!(
                "payout[{i}].address: {} is named twice",
                split.address
            )));
        }
    }
    Ok(())
}

/// Splits `amount` among `shares` in proportion, exactly: each gets
/// `amount × share / total` rounded down, and the first the remainder.
pub fn split_by_shares(amount: u64, shares: &[u32]) -> Vec<u64> {
    let total: u128 = shares.iter().map(|s| u128::from(*s)).sum();
    if total == 0 {
        return vec![0; shares.len()];
    }
    let mut out: Vec<u64> = shares
        .iter()
        .map(|s| {
            let part = u128::from(amount) * u128::from(*s) / total;
            u64::try_from(part).unwrap_or(u64::MAX)
        })
        .collect();
    let given: u64 = out.iter().sum();
    if let Some(first) = out.first_mut() {
        *first += amount - given;
    }
    out
}

async fn balance(conn: &mut AnyConnection, account: &LedgerAccountId) -> Result<u64, PoolError> {
    Ok(u64::try_from(ledger::balance_of(conn, account).await?).unwrap_or(0))
}

/// The sum of balances of accounts of `kind` whose owner matches `pattern`.
async fn balance_like(
    conn: &mut AnyConnection,
    kind: AccountKind,
    pattern: &str,
) -> Result<u64, PoolError> {
    let sum: i64 = sqlx::query_scalar(
        "SELECT COALESCE(CAST(SUM(p.amount) AS BIGINT), 0) FROM postings p \
         JOIN ledger_accounts a ON a.id = p.account_id WHERE a.kind = $1 AND a.owner LIKE $2",
    )
    .bind(kind.as_str())
    .bind(pattern)
    .fetch_one(&mut *conn)
    .await?;
    Ok(u64::try_from(sum).unwrap_or(0))
}

/// Payouts that took money from `account`, newest first.
async fn payouts_from(
    conn: &mut AnyConnection,
    account: &LedgerAccountId,
) -> Result<Vec<PayoutView>, PoolError> {
    let rows: Vec<(String, String, String, i64, Option<String>, i64)> = sqlx::query_as(
        "SELECT p.id, p.status, d.address, d.amount, p.txid, p.created_at FROM payouts p \
         JOIN payout_destinations d ON d.payout_id = p.id WHERE d.ledger_account = $1 \
         ORDER BY p.created_at DESC, p.rowid DESC LIMIT 100",
    )
    .bind(account.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, status, address, amount, txid, at)| {
            Ok(PayoutView {
                id,
                status: status.parse()?,
                address,
                amount: pico(amount),
                txid,
                created_at: rfc3339(at),
            })
        })
        .collect()
}

/// One destination of a payout or withdrawal, for the pool's operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PayoutLine {
    pub id: String,
    pub kind: PayoutKind,
    pub status: PayoutStatus,
    /// The ledger account paid from (`provider_available:prov_…`,
    /// `customer:acct_…`).
    pub account: String,
    pub address: String,
    pub amount: Piconero,
    pub txid: Option<String>,
    pub created_at: String,
}

/// Every payout and withdrawal destination, newest first, at most `limit`:
/// the operator's view of money leaving the pool (`gradpool pool payouts`).
pub async fn payout_lines(db: &sqlx::AnyPool, limit: u32) -> Result<Vec<PayoutLine>, PoolError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        #[sqlx(try_from = "String")]
        kind: PayoutKind,
        #[sqlx(try_from = "String")]
        status: PayoutStatus,
        account: String,
        address: String,
        amount: i64,
        txid: Option<String>,
        created_at: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.id, p.kind, p.status, d.ledger_account AS account, d.address, d.amount, p.txid, \
         p.created_at FROM payouts p JOIN payout_destinations d ON d.payout_id = p.id \
         ORDER BY p.created_at DESC, p.rowid DESC, d.rowid LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PayoutLine {
            id: r.id,
            kind: r.kind,
            status: r.status,
            account: r.account,
            address: r.address,
            amount: pico(r.amount),
            txid: r.txid,
            created_at: rfc3339(r.created_at),
        })
        .collect())
}

/// Moves a provider's stake to its available earnings once the
/// cool-down after its withdrawal request has passed. `NotFound` for a
/// provider the pool does not know.
pub(crate) async fn release_stake_if_due(
    w: &mut Write<'_>,
    provider: &str,
    cooldown_seconds: u64,
) -> Result<(), PoolError> {
    let requested: Option<i64> =
        sqlx::query_scalar("SELECT unstake_requested_at FROM providers WHERE id = $1")
            .bind(provider)
            .fetch_optional(w.conn())
            .await?
            .ok_or_else(|| PoolError::not_found(format!("provider {provider}")))?;
    let Some(requested) = requested else {
        return Ok(());
    };
    let cooldown_ms = i64::try_from(cooldown_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    if w.now < requested.saturating_add(cooldown_ms) {
        return Ok(());
    }
    let stake = w.account(AccountKind::ProviderStake, provider).await?;
    let available = w.account(AccountKind::ProviderAvailable, provider).await?;
    let amount = balance(w.conn(), &stake).await?;
    if amount > 0 {
        w.transfer(
            &stake,
            &available,
            Piconero(amount),
            &format!("stake:{provider}:release:{requested}"),
            &format!("stake of {provider} returned after its cool-down"),
        )
        .await?;
    }
    sqlx::query("UPDATE providers SET unstake_requested_at = NULL WHERE id = $1")
        .bind(provider)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// Slashes a provider caught cheating on `job_id`: its pending earnings
/// from the job go back to the job's escrow, and its stake goes to the
/// job's customer, less `validator_bps` of it to the validator that
/// caught it. Its reputation and the job's rollback are the verifier's
/// business. Idempotent per (provider, job).
pub(crate) async fn slash(
    w: &mut Write<'_>,
    provider: &str,
    job_id: &str,
    customer: &str,
    validator: Option<&str>,
    validator_bps: u32,
) -> Result<(Piconero, Piconero), PoolError> {
    let pending = escrow::pending_account(provider, job_id);
    let forfeited = balance(w.conn(), &pending).await?;
    if forfeited > 0 {
        let escrow = w.account(AccountKind::Escrow, job_id).await?;
        w.transfer(
            &pending,
            &escrow,
            Piconero(forfeited),
            &format!("slash:{provider}:{job_id}:forfeit"),
            &format!("unpaid earnings of {provider} from job {job_id} forfeited for fraud"),
        )
        .await?;
    }
    let stake = w.account(AccountKind::ProviderStake, provider).await?;
    let slashed = balance(w.conn(), &stake).await?;
    if slashed > 0 {
        let to_validator = match validator {
            Some(_) => {
                u64::try_from(u128::from(slashed) * u128::from(validator_bps.min(10_000)) / 10_000)
                    .unwrap_or(0)
            }
            None => 0,
        };
        let to_customer = slashed - to_validator;
        let mut postings = vec![(stake, -i64::try_from(slashed).unwrap_or(i64::MAX))];
        if to_customer > 0 {
            let c = w.account(AccountKind::Customer, customer).await?;
            postings.push((c, i64::try_from(to_customer).unwrap_or(i64::MAX)));
        }
        if let (Some(v), true) = (validator, to_validator > 0) {
            let v = w.account(AccountKind::ProviderAvailable, v).await?;
            postings.push((v, i64::try_from(to_validator).unwrap_or(i64::MAX)));
        }
        w.post(
            &format!("slash:{provider}:{job_id}:stake"),
            &format!("stake of {provider} slashed for fraud on job {job_id}"),
            &postings,
        )
        .await?;
    }
    Ok((Piconero(forfeited), Piconero(slashed)))
}

/// Slashes a validator that answered a replay wrongly: its whole stake
/// goes to the validator fund. Returns the amount.
pub(crate) async fn slash_validator(
    w: &mut Write<'_>,
    validator: &str,
    audit_id: &str,
) -> Result<Piconero, PoolError> {
    let stake = w.account(AccountKind::ProviderStake, validator).await?;
    let slashed = balance(w.conn(), &stake).await?;
    if slashed > 0 {
        let fund = w.account(AccountKind::Validator, "fund").await?;
        w.transfer(
            &stake,
            &fund,
            Piconero(slashed),
            &format!("slash:{validator}:{audit_id}:validator"),
            &format!(
                "stake of validator {validator} slashed for a wrong replay in audit {audit_id}"
            ),
        )
        .await?;
    }
    Ok(Piconero(slashed))
}

impl Pool {
    /// Slashes `provider` for fraud on `job_id` (see the verifier): its
    /// pending earnings from the job go back to the job's escrow, its stake
    /// to the job's customer, less [`crate::MoneyConfig::slash_validator_bps`]
    /// of it to the validator that caught it. Returns (forfeited, slashed).
    /// Slashing the same provider for the same job twice moves nothing more.
    pub async fn slash_provider(
        &self,
        provider: &ProviderId,
        job_id: &str,
        validator: Option<&ProviderId>,
    ) -> Result<(Piconero, Piconero), PoolError> {
        let bps = self.inner.config.money.slash_validator_bps;
        let mut w = self.write().await?;
        let customer: String = sqlx::query_scalar("SELECT account_id FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(w.conn())
            .await?
            .ok_or_else(|| PoolError::not_found(format!("job {job_id}")))?;
        let out = crate::money::slash(
            &mut w,
            provider.as_str(),
            job_id,
            &customer,
            validator.map(ProviderId::as_str),
            bps,
        )
        .await?;
        w.commit().await?;
        tracing::warn!(provider = %provider, job = %job_id, forfeited = %out.0, slashed = %out.1, "provider slashed");
        Ok(out)
    }

    /// A customer's balance.
    pub async fn balance(&self, account: &AccountId) -> Result<Balance, PoolError> {
        let mut conn = self.inner.db.acquire().await?;
        let available = balance(&mut conn, &customer_account(account.as_str())).await?;
        // Jobs' budgets and bookings' holds.
        let escrowed: i64 = sqlx::query_scalar(
            "SELECT COALESCE(CAST(SUM(p.amount) AS BIGINT), 0) FROM postings p WHERE p.account_id IN \
               (SELECT 'escrow:' || id FROM jobs WHERE account_id = $1 \
                UNION ALL SELECT 'escrow:' || id FROM bookings WHERE account_id = $1)",
        )
        .bind(account.as_str())
        .fetch_one(&mut *conn)
        .await?;
        let withdrawing: i64 = sqlx::query_scalar(
            "SELECT COALESCE(CAST(SUM(d.amount) AS BIGINT), 0) FROM payout_destinations d JOIN payouts p ON p.id = d.payout_id \
             WHERE d.ledger_account = $1 AND p.status IN ('reserved', 'built')",
        )
        .bind(customer_account(account.as_str()).as_str())
        .fetch_one(&mut *conn)
        .await?;
        Ok(Balance {
            account_id: account.clone(),
            available: Piconero(available),
            escrowed: pico(escrowed),
            withdrawing: pico(withdrawing),
            backend: self.inner.config.money.backend.name().to_owned(),
        })
    }

    /// The Monero subaddress that funds a customer's account, created on
    /// first use.
    pub async fn deposit_address(&self, account: &AccountId) -> Result<DepositAddress, PoolError> {
        match &self.inner.config.money.backend {
            MoneyBackend::Dev => Err(PoolError::Unavailable(
                "this is a dev pool without a Monero wallet: fund the account with `gradpool account faucet --amount X`"
                    .into(),
            )),
            MoneyBackend::Monero(_) => self.customer_deposit_address(account).await,
        }
    }

    /// Credits free money to a customer: the dev backend's faucet.
    pub async fn faucet(
        &self,
        account: &AccountId,
        amount: Piconero,
    ) -> Result<Balance, PoolError> {
        if self.inner.config.money.backend != MoneyBackend::Dev {
            return Err(PoolError::Unavailable(
                "this pool runs on Monero: it has no faucet; fund the account with `gradpool account deposit`"
                    .into(),
            ));
        }
        let limit = self.inner.config.money.faucet_limit;
        if amount.0 == 0 || amount > limit {
            return Err(PoolError::BadRequest(format!(
                "amount: the faucet gives more than 0 and at most {limit} at a time"
            )));
        }
        let mut w = self.write().await?;
        let wallet = w.account(AccountKind::Wallet, "dev").await?;
        let customer = w.account(AccountKind::Customer, account.as_str()).await?;
        let key = format!("faucet:{}:{}", account, gradpool_core::id::random_hex(8));
        w.transfer(
            &wallet,
            &customer,
            amount,
            &key,
            &format!("dev faucet: {amount} to {account}"),
        )
        .await?;
        w.commit().await?;
        tracing::info!(account = %account, %amount, "faucet");
        self.balance(account).await
    }

    /// Withdraws from a customer's balance to a Monero address. The same
    /// idempotency key withdraws once. With the dev backend the money
    /// leaves the ledger at once (there is no Monero wallet); with Monero it is
    /// reserved now and sent by the payout loop.
    pub async fn withdraw(
        &self,
        account: &AccountId,
        req: Withdraw,
    ) -> Result<PayoutView, PoolError> {
        check_address(self, "to", &req.to)?;
        if req.amount.0 == 0 {
            return Err(PoolError::BadRequest(
                "amount: a withdrawal must be more than 0".into(),
            ));
        }
        let amount = i64::try_from(req.amount.0)
            .map_err(|_| PoolError::BadRequest("amount: too large".into()))?;
        let key = req.idempotency_key.trim();
        if key.is_empty() || key.len() > 100 {
            return Err(PoolError::BadRequest(
                "idempotency_key: 1 to 100 characters".into(),
            ));
        }
        let id = format!(
            "wd_{}",
            &hex::encode(Sha256::digest(format!("{account}\n{key}").as_bytes()))[..24]
        );
        let dev = self.inner.config.money.backend == MoneyBackend::Dev;
        let mut w = self.write().await?;
        let customer = w.account(AccountKind::Customer, account.as_str()).await?;
        let existing: Option<(String, i64)> = sqlx::query_as(
            "SELECT d.address, d.amount FROM payout_destinations d WHERE d.payout_id = $1",
        )
        .bind(&id)
        .fetch_optional(w.conn())
        .await?;
        if let Some((address, previous)) = existing {
            if address != req.to || previous != amount {
                return Err(PoolError::Conflict(format!(
                    "idempotency_key {key:?} was used for another withdrawal"
                )));
            }
        } else {
            let (to, status) = if dev {
                (
                    w.account(AccountKind::Wallet, "dev").await?,
                    PayoutStatus::Settled,
                )
            } else {
                (
                    w.account(AccountKind::Payout, &id).await?,
                    PayoutStatus::Reserved,
                )
            };
            w.transfer(
                &customer,
                &to,
                req.amount,
                &format!("withdraw:{id}"),
                &format!("withdrawal {id} of {} to {}", req.amount, req.to),
            )
            .await?;
            let now = w.now;
            sqlx::query(
                "INSERT INTO payouts (id, kind, status, created_at, updated_at) VALUES ($1, 'withdrawal', $2, $3, $4)",
            )
            .bind(&id)
            .bind(status.as_str())
            .bind(now)
            .bind(now)
            .execute(w.conn())
            .await?;
            sqlx::query(
                "INSERT INTO payout_destinations (payout_id, address, amount, ledger_account) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(&req.to)
            .bind(amount)
            .bind(customer.as_str())
            .execute(w.conn())
            .await?;
            tracing::info!(account = %account, payout = %id, amount = %req.amount, "withdrawal");
        }
        let view = payouts_from(w.conn(), &customer)
            .await?
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| PoolError::Internal("withdrawal vanished".into()))?;
        w.commit().await?;
        Ok(view)
    }

    /// Checks a [`SignedNonce`] for `purpose` and returns the provider whose
    /// key signed it. The nonce is consumed.
    pub(crate) async fn verify_signed_nonce(
        &self,
        purpose: &str,
        signed: &SignedNonce,
    ) -> Result<ProviderId, PoolError> {
        let now_s = self.now() / 1000;
        if !crate::challenge::within_skew(signed.time, now_s) {
            return Err(PoolError::Unauthorized(format!(
                "signed nonce time {} is too far from the pool's clock ({now_s})",
                signed.time
            )));
        }
        signed
            .public_key
            .verifying_key()
            .map_err(|e| PoolError::BadRequest(format!("public_key: {e}")))?;
        let message = signed_nonce_message(purpose, &signed.public_key, signed.time, &signed.nonce);
        if !signed.public_key.verifies(&message, &signed.signature) {
            return Err(PoolError::Unauthorized(
                "the nonce's signature does not verify".into(),
            ));
        }
        self.inner
            .challenges
            .take(&signed.nonce, self.now())
            .await?;
        Ok(ProviderId::from_public_key(&signed.public_key.0))
    }

    /// A provider's earnings, stake and payouts (releasing its stake first
    /// if its cool-down has passed).
    pub async fn earnings(&self, provider: &ProviderId) -> Result<Earnings, PoolError> {
        let cooldown = self.inner.config.money.unstake_cooldown_seconds;
        let mut w = self.write().await?;
        crate::money::release_stake_if_due(&mut w, provider.as_str(), cooldown).await?;
        let earnings = self.earnings_in(w.conn(), provider).await?;
        w.commit().await?;
        Ok(earnings)
    }

    /// [`Pool::earnings`], read only: the stake as it stands.
    pub(crate) async fn earnings_in(
        &self,
        conn: &mut AnyConnection,
        provider: &ProviderId,
    ) -> Result<Earnings, PoolError> {
        let p = provider.as_str();
        let pending = balance_like(conn, AccountKind::ProviderPending, &format!("{p}:%")).await?;
        let available_id = available_account(p);
        let available = balance(conn, &available_id).await?;
        let stake = balance(conn, &stake_account(p)).await?;
        let requested: Option<i64> =
            sqlx::query_scalar("SELECT unstake_requested_at FROM providers WHERE id = $1")
                .bind(p)
                .fetch_optional(&mut *conn)
                .await?
                .flatten();
        let cooldown_ms = i64::try_from(
            self.inner
                .config
                .money
                .unstake_cooldown_seconds
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        let payouts = payouts_from(conn, &available_id).await?;
        let paid = payouts
            .iter()
            .filter(|p| p.status.is_paid())
            .map(|p| p.amount.0)
            .sum();
        let payout: Vec<PayoutSplit> = sqlx::query_as::<_, (String, i64)>(
            "SELECT address, share FROM payout_splits WHERE provider_id = $1 ORDER BY rowid",
        )
        .bind(p)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(address, share)| PayoutSplit {
            address,
            share: u32::try_from(share).unwrap_or(0),
        })
        .collect();
        let stake_deposit_address: Option<String> =
            sqlx::query_scalar("SELECT address FROM deposit_addresses WHERE ledger_account = $1")
                .bind(stake_account(p).as_str())
                .fetch_optional(&mut *conn)
                .await?;
        Ok(Earnings {
            provider_id: provider.clone(),
            pending: Piconero(pending),
            available: Piconero(available),
            stake: Piconero(stake),
            unstake_at: requested.map(|r| rfc3339(r.saturating_add(cooldown_ms))),
            paid: Piconero(paid),
            payout,
            payouts,
            stake_deposit_address,
        })
    }

    /// Adds to a provider's stake from its available earnings, starts the
    /// cool-down of a stake withdrawal, or gives the subaddress that funds
    /// the stake from outside (credited by [`Pool::watch_deposits`]).
    pub async fn stake(
        &self,
        provider: &ProviderId,
        req: &StakeRequest,
    ) -> Result<Earnings, PoolError> {
        let cooldown = self.inner.config.money.unstake_cooldown_seconds;
        let p = provider.as_str();
        if let StakeAction::Deposit = req.action {
            // Its own write: created in the wallet first, then recorded.
            self.deposit_subaddress(&stake_account(p)).await?;
        }
        let mut w = self.write().await?;
        crate::money::release_stake_if_due(&mut w, p, cooldown).await?;
        match &req.action {
            StakeAction::Deposit => {}
            StakeAction::Add { amount } => {
                if amount.0 == 0 {
                    return Err(PoolError::BadRequest(
                        "amount: a stake must be more than 0".into(),
                    ));
                }
                let from = w.account(AccountKind::ProviderAvailable, p).await?;
                let to = w.account(AccountKind::ProviderStake, p).await?;
                w.transfer(
                    &from,
                    &to,
                    *amount,
                    &format!("stake:{p}:add:{}", req.signed_nonce.nonce),
                    &format!("{amount} of {p}'s earnings staked"),
                )
                .await?;
                // Adding to the stake cancels a withdrawal under way.
                sqlx::query("UPDATE providers SET unstake_requested_at = NULL WHERE id = $1")
                    .bind(p)
                    .execute(w.conn())
                    .await?;
            }
            StakeAction::Withdraw => {
                let stake = balance(w.conn(), &stake_account(p)).await?;
                if stake == 0 {
                    return Err(PoolError::BadRequest(
                        "there is no stake to withdraw".into(),
                    ));
                }
                let now = w.now;
                sqlx::query(
                    "UPDATE providers SET unstake_requested_at = COALESCE(unstake_requested_at, $1) WHERE id = $2",
                )
                .bind(now)
                .bind(p)
                .execute(w.conn())
                .await?;
            }
        }
        let earnings = self.earnings_in(w.conn(), provider).await?;
        w.commit().await?;
        tracing::info!(provider = %provider, stake = %earnings.stake, "stake changed");
        Ok(earnings)
    }
}

#[cfg(test)]
mod tests {
    use super::split_by_shares;

    #[test]
    fn shares_split_exactly_with_the_remainder_to_the_first() {
        assert_eq!(split_by_shares(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(split_by_shares(10, &[70, 20, 10]), vec![7, 2, 1]);
        assert_eq!(
            split_by_shares(u64::MAX, &[u32::MAX, 1])
                .iter()
                .map(|x| u128::from(*x))
                .sum::<u128>(),
            u128::from(u64::MAX)
        );
        assert_eq!(split_by_shares(5, &[0]), vec![0]);
    }
}
