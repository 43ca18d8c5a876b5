//! The money ledger: double-entry bookkeeping in the pool's database.
//!
//! Every movement of money is one journal entry: postings of signed
//! piconero to accounts that sum to zero, so the sum over all accounts is
//! always zero. An entry carries an idempotency key: posting the same key
//! again with the same postings returns the original entry (a retried
//! request moves money once); with different postings it is refused.
//!
//! Balances are derived (the sum of an account's postings), never stored.
//! Only `wallet` accounts may go negative: they mirror money that entered or
//! left through Monero. Every other account is refused a posting that would
//! take it below zero, inside the same write transaction (`db::begin_write`) that
//! writes the entry, so concurrent withdrawals cannot overdraw.
//!
//! The `*_in` functions post on a connection inside the caller's
//! transaction, so a money movement commits together with the state change
//! that causes it (a job submitted, a segment accepted); the [`Ledger`]
//! methods post in a transaction of their own.
//!
//! Schema: `migrations/0002_ledger.sql`.

use crate::clock::Clock;
use futures::TryStreamExt;
use gradpool_core::Piconero;
use sqlx::{AnyConnection, AnyPool};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What a ledger account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountKind {
    /// A customer's spendable balance.
    Customer,
    /// A job's budget while it runs.
    Escrow,
    /// A provider's earnings not yet released.
    ProviderPending,
    /// A provider's earnings ready to be paid out.
    ProviderAvailable,
    /// A provider's stake.
    ProviderStake,
    /// A validator's fees.
    Validator,
    /// The pool's fees.
    PoolFees,
    /// The outside world: money that entered or left through Monero (or,
    /// with the dev backend, the faucet). The only kind that may go
    /// negative.
    Wallet,
    /// Money on its way out: a payout or withdrawal built but not yet
    /// settled on chain.
    Payout,
}

impl AccountKind {
    pub const ALL: [AccountKind; 9] = [
        AccountKind::Customer,
        AccountKind::Escrow,
        AccountKind::ProviderPending,
        AccountKind::ProviderAvailable,
        AccountKind::ProviderStake,
        AccountKind::Validator,
        AccountKind::PoolFees,
        AccountKind::Wallet,
        AccountKind::Payout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::Escrow => "escrow",
            AccountKind::ProviderPending => "provider_pending",
            AccountKind::ProviderAvailable => "provider_available",
            AccountKind::ProviderStake => "provider_stake",
            AccountKind::Validator => "validator",
            AccountKind::PoolFees => "pool_fees",
            AccountKind::Wallet => "wallet",
            AccountKind::Payout => "payout",
        }
    }

    /// Whether accounts of this kind may have a negative balance.
    pub fn may_go_negative(self) -> bool {
        self == AccountKind::Wallet
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccountKind {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown account kind {s:?}")))
    }
}

/// A ledger account: `<kind>:<owner>` (`customer:acct_…`, `escrow:job_…`,
/// `wallet:monero`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerAccountId(String);

impl LedgerAccountId {
    /// The id of the account of `kind` owned by `owner` (whether or not it
    /// exists yet).
    pub fn new(kind: AccountKind, owner: &str) -> LedgerAccountId {
        LedgerAccountId(format!("{}:{owner}", kind.as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id as the database stores it (`ledger_accounts.id`): posting to
    /// an id that names no account is refused by [`post_in`].
    pub(crate) fn from_stored(id: String) -> LedgerAccountId {
        LedgerAccountId(id)
    }

    /// The kind named by the id's prefix.
    pub fn kind(&self) -> Option<AccountKind> {
        let (kind, _) = self.0.split_once(':')?;
        kind.parse().ok()
    }

    /// The owner: what follows the kind's prefix.
    pub fn owner(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, owner)| owner)
    }
}

impl fmt::Display for LedgerAccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A journal entry's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub i64);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("a journal entry needs postings")]
    Empty,
    #[error("a posting of zero to {0}")]
    ZeroPosting(LedgerAccountId),
    #[error("unbalanced entry: its postings sum to {0} piconero, not 0")]
    Unbalanced(i128),
    #[error("an amount must be more than zero")]
    ZeroAmount,
    #[error("{0} piconero is more than the ledger holds (at most {max})", max = i64::MAX)]
    AmountTooLarge(u64),
    #[error("the balance of {0} would overflow")]
    Overflow(LedgerAccountId),
    #[error("{account} has {balance} piconero, {needed} needed")]
    Insufficient {
        account: LedgerAccountId,
        balance: i64,
        needed: i64,
    },
    #[error("idempotency key {key:?} was already used by entry {entry} with other postings")]
    KeyReused { key: String, entry: EntryId },
    #[error("an idempotency key must be 1 to 200 characters")]
    BadKey,
    #[error("an account owner must be 1 to 200 characters without control characters")]
    BadOwner,
    #[error("no ledger account {0}")]
    UnknownAccount(LedgerAccountId),
    #[error("{account} is not a {expected} account")]
    WrongKind {
        account: LedgerAccountId,
        expected: AccountKind,
    },
    #[error("a transfer from {0} to itself")]
    SameAccount(LedgerAccountId),
    #[error("corrupt ledger data: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What [`Ledger::reconcile`] found, recomputed from every posting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Journal entries.
    pub entries: u64,
    /// Ledger accounts.
    pub accounts: u64,
    /// Postings.
    pub postings: u64,
    /// The sum over all accounts: 0 in a clean ledger.
    pub total: i128,
    /// Accounts that may not go negative, with their negative balance.
    pub negative: Vec<(LedgerAccountId, i128)>,
    /// Entries whose postings do not sum to zero.
    pub unbalanced_entries: Vec<i64>,
    /// Entries without postings.
    pub empty_entries: Vec<i64>,
    /// Accounts whose kind is unknown or whose `may_go_negative` disagrees
    /// with their kind.
    pub bad_accounts: Vec<String>,
}

impl Reconciliation {
    /// Whether every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.total == 0
            && self.negative.is_empty()
            && self.unbalanced_entries.is_empty()
            && self.empty_entries.is_empty()
            && self.bad_accounts.is_empty()
    }
}

impl fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "entries:  {}", self.entries)?;
        writeln!(f, "accounts: {}", self.accounts)?;
        writeln!(f, "postings: {}", self.postings)?;
        writeln!(f, "total:    {} piconero", self.total)?;
        for (account, balance) in &self.negative {
            writeln!(f, "NEGATIVE: {account} has {balance} piconero")?;
        }
        for entry in &self.unbalanced_entries {
            writeln!(f, "UNBALANCED: entry #{entry}")?;
        }
        for entry in &self.empty_entries {
            writeln!(f, "EMPTY: entry #{entry} has no postings")?;
        }
        for account in &self.bad_accounts {
            writeln!(f, "BAD ACCOUNT: {account}")?;
        }
        if self.total != 0 {
            writeln!(f, "NOT ZERO: the accounts sum to {} piconero", self.total)?;
        }
        write!(
            f,
            "{}",
            if self.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            }
        )
    }
}

/// The ledger over the pool's database (a cheap clone of its connection
/// pool). Each [`Ledger::post`] is one write transaction (`db::begin_write`).
#[derive(Clone)]
pub struct Ledger {
    db: AnyPool,
    clock: Arc<dyn Clock>,
}

const MAX_TEXT: usize = 200;

/// A positive amount as a signed posting.
fn positive(amount: Piconero) -> Result<i64, LedgerError> {
    if amount.0 == 0 {
        return Err(LedgerError::ZeroAmount);
    }
    i64::try_from(amount.0).map_err(|_| LedgerError::AmountTooLarge(amount.0))
}

/// Postings sorted by account then amount: the form compared for an
/// idempotent retry.
fn canonical(postings: &[(LedgerAccountId, i64)]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = postings.iter().map(|(a, x)| (a.0.clone(), *x)).collect();
    v.sort();
    v
}

async fn balance_in(conn: &mut AnyConnection, account: &str) -> Result<i64, LedgerError> {
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(CAST(SUM(amount) AS BIGINT), 0) FROM postings WHERE account_id = $1",
    )
    .bind(account)
    .fetch_one(&mut *conn)
    .await?;
    Ok(sum)
}

/// The account of `kind` owned by `owner`, created if missing, on `conn`
/// (inside the caller's transaction, if any).
pub async fn account_in(
    conn: &mut AnyConnection,
    now: i64,
    kind: AccountKind,
    owner: &str,
) -> Result<LedgerAccountId, LedgerError> {
    if owner.is_empty() || owner.len() > MAX_TEXT || owner.chars().any(char::is_control) {
        return Err(LedgerError::BadOwner);
    }
    let id = LedgerAccountId::new(kind, owner);
    sqlx::query(
        "INSERT INTO ledger_accounts (id, kind, owner, may_go_negative, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(kind.as_str())
    .bind(owner)
    .bind(i64::from(kind.may_go_negative()))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// An account's balance on `conn`; 0 for an account that does not exist.
pub async fn balance_of(
    conn: &mut AnyConnection,
    account: &LedgerAccountId,
) -> Result<i64, LedgerError> {
    balance_in(conn, account.as_str()).await
}

/// Posts one journal entry on `conn`, which must be inside a write
/// transaction (the caller commits it, together with whatever else it
/// changed). Refuses an empty entry, a zero posting, postings that do not
/// sum to zero, an unknown account, a balance that would overflow, and a
/// posting that would take an account other than a wallet below zero. A key
/// seen before returns the original entry if its postings are the same (in
/// any order), and [`LedgerError::KeyReused`] if not.
pub async fn post_in(
    conn: &mut AnyConnection,
    now: i64,
    key: &str,
    memo: &str,
    postings: &[(LedgerAccountId, i64)],
) -> Result<EntryId, LedgerError> {
    if key.is_empty() || key.len() > MAX_TEXT {
        return Err(LedgerError::BadKey);
    }
    if postings.is_empty() {
        return Err(LedgerError::Empty);
    }
    let mut sum: i128 = 0;
    let mut net: BTreeMap<&str, i128> = BTreeMap::new();
    for (account, amount) in postings {
        if *amount == 0 {
            return Err(LedgerError::ZeroPosting(account.clone()));
        }
        sum += i128::from(*amount);
        *net.entry(account.as_str()).or_default() += i128::from(*amount);
    }
    if sum != 0 {
        return Err(LedgerError::Unbalanced(sum));
    }
    let wanted = canonical(postings);

    let seen: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM journal_entries WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((id,)) = seen {
        let mut stored: Vec<(String, i64)> =
            sqlx::query_as("SELECT account_id, amount FROM postings WHERE entry_id = $1")
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
        stored.sort();
        return if stored == wanted {
            Ok(EntryId(id))
        } else {
            Err(LedgerError::KeyReused {
                key: key.to_owned(),
                entry: EntryId(id),
            })
        };
    }

    for (account, change) in &net {
        let id = LedgerAccountId((*account).to_owned());
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT kind, may_go_negative FROM ledger_accounts WHERE id = $1")
                .bind(*account)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((kind, may_go_negative)) = row else {
            return Err(LedgerError::UnknownAccount(id));
        };
        let kind: AccountKind = kind.parse()?;
        let may_go_negative = kind.may_go_negative() && may_go_negative == 1;
        let balance = balance_in(conn, account).await?;
        let after = i128::from(balance) + change;
        if i64::try_from(after).is_err() {
            return Err(LedgerError::Overflow(id));
        }
        if after < 0 && !may_go_negative {
            return Err(LedgerError::Insufficient {
                account: id,
                balance,
                // |change| <= |after| + |balance| fits: after >= i64::MIN.
                needed: i64::try_from(-change).unwrap_or(i64::MAX),
            });
        }
    }

    let entry: i64 = sqlx::query_scalar(
        "INSERT INTO journal_entries (idempotency_key, memo, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(key)
    .bind(memo)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    for (account, amount) in postings {
        sqlx::query("INSERT INTO postings (entry_id, account_id, amount) VALUES ($1, $2, $3)")
            .bind(entry)
            .bind(account.as_str())
            .bind(*amount)
            .execute(&mut *conn)
            .await?;
    }
    Ok(EntryId(entry))
}

/// Moves a positive `amount` from one account to another on `conn` (see
/// [`post_in`]).
pub async fn transfer_in(
    conn: &mut AnyConnection,
    now: i64,
    from: &LedgerAccountId,
    to: &LedgerAccountId,
    amount: Piconero,
    key: &str,
    memo: &str,
) -> Result<EntryId, LedgerError> {
    let x = positive(amount)?;
    if from == to {
        return Err(LedgerError::SameAccount(from.clone()));
    }
    post_in(conn, now, key, memo, &[(from.clone(), -x), (to.clone(), x)]).await
}

impl Ledger {
    /// A ledger over a migrated pool database (see [`crate::db::open`]),
    /// stamping entries with the system's clock.
    pub fn new(db: AnyPool) -> Ledger {
        Ledger::with_clock(db, Arc::new(crate::clock::SystemClock))
    }

    /// A ledger that stamps entries with `clock`.
    pub fn with_clock(db: AnyPool, clock: Arc<dyn Clock>) -> Ledger {
        Ledger { db, clock }
    }

    /// The account of `kind` owned by `owner`, created if missing.
    pub async fn account(
        &self,
        kind: AccountKind,
        owner: &str,
    ) -> Result<LedgerAccountId, LedgerError> {
        let mut conn = self.db.acquire().await?;
        account_in(&mut conn, self.clock.now_ms(), kind, owner).await
    }

    /// The pool's Monero wallet: where deposits come from and withdrawals go.
    pub async fn wallet(&self) -> Result<LedgerAccountId, LedgerError> {
        self.account(AccountKind::Wallet, "monero").await
    }

    /// An account's balance in piconero (negative only for a wallet).
    pub async fn balance(&self, account: &LedgerAccountId) -> Result<i64, LedgerError> {
        let mut conn = self.db.acquire().await?;
        balance_in(&mut conn, account.as_str()).await
    }

    /// Posts one journal entry in a write transaction of its own;
    /// see [`post_in`].
    pub async fn post(
        &self,
        key: &str,
        memo: &str,
        postings: &[(LedgerAccountId, i64)],
    ) -> Result<EntryId, LedgerError> {
        let mut tx = crate::db::begin_write(&self.db).await?;
        let entry = post_in(&mut tx, self.clock.now_ms(), key, memo, postings).await?;
        tx.commit().await?;
        Ok(entry)
    }

    fn expect_kind(account: &LedgerAccountId, expected: AccountKind) -> Result<(), LedgerError> {
        if account.kind() == Some(expected) {
            Ok(())
        } else {
            Err(LedgerError::WrongKind {
                account: account.clone(),
                expected,
            })
        }
    }

    /// Money that arrived through Monero: wallet → `customer`.
    pub async fn deposit(
        &self,
        customer: &LedgerAccountId,
        amount: Piconero,
        key: &str,
    ) -> Result<EntryId, LedgerError> {
        Self::expect_kind(customer, AccountKind::Customer)?;
        let x = positive(amount)?;
        let wallet = self.wallet().await?;
        self.post(
            key,
            &format!("deposit of {amount} to {customer}"),
            &[(wallet, -x), (customer.clone(), x)],
        )
        .await
    }

    /// Moves `amount` from one account to another.
    pub async fn transfer(
        &self,
        from: &LedgerAccountId,
        to: &LedgerAccountId,
        amount: Piconero,
        key: &str,
    ) -> Result<EntryId, LedgerError> {
        let mut tx = crate::db::begin_write(&self.db).await?;
        let entry = transfer_in(
            &mut tx,
            self.clock.now_ms(),
            from,
            to,
            amount,
            key,
            &format!("transfer of {amount} from {from} to {to}"),
        )
        .await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// Money that leaves through Monero: `customer` → wallet.
    pub async fn withdraw(
        &self,
        customer: &LedgerAccountId,
        amount: Piconero,
        key: &str,
    ) -> Result<EntryId, LedgerError> {
        Self::expect_kind(customer, AccountKind::Customer)?;
        let x = positive(amount)?;
        let wallet = self.wallet().await?;
        self.post(
            key,
            &format!("withdrawal of {amount} from {customer}"),
            &[(customer.clone(), -x), (wallet, x)],
        )
        .await
    }

    /// Recomputes every balance and entry sum from the postings (in one read
    /// transaction, exact in i128) and reports what breaks the invariants.
    pub async fn reconcile(&self) -> Result<Reconciliation, LedgerError> {
        let mut tx = self.db.begin().await?;
        let mut report = Reconciliation::default();

        let accounts: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT id, kind, may_go_negative FROM ledger_accounts ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        report.accounts = accounts.len() as u64;
        let mut may_go_negative: BTreeMap<String, bool> = BTreeMap::new();
        for (id, kind, flag) in accounts {
            let ok = match kind.parse::<AccountKind>() {
                Ok(kind) => {
                    if i64::from(kind.may_go_negative()) != flag {
                        report.bad_accounts.push(format!(
                            "{id}: may_go_negative = {flag} for a {kind} account"
                        ));
                    }
                    kind.may_go_negative() && flag == 1
                }
                Err(_) => {
                    report
                        .bad_accounts
                        .push(format!("{id}: unknown kind {kind:?}"));
                    false
                }
            };
            may_go_negative.insert(id, ok);
        }

        let entries: Vec<(i64,)> = sqlx::query_as("SELECT id FROM journal_entries ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        report.entries = entries.len() as u64;
        let mut without_postings: BTreeSet<i64> = entries.into_iter().map(|(id,)| id).collect();

        let mut balances: BTreeMap<String, i128> = BTreeMap::new();
        let mut entry_sums: BTreeMap<i64, i128> = BTreeMap::new();
        {
            let mut rows = sqlx::query_as::<_, (i64, String, i64)>(
                "SELECT entry_id, account_id, amount FROM postings",
            )
            .fetch(&mut *tx);
            while let Some((entry, account, amount)) = rows.try_next().await? {
                report.postings += 1;
                report.total += i128::from(amount);
                *balances.entry(account).or_default() += i128::from(amount);
                *entry_sums.entry(entry).or_default() += i128::from(amount);
                without_postings.remove(&entry);
            }
        }
        tx.commit().await?;

        for (account, balance) in balances {
            let allowed = may_go_negative.get(&account).copied().unwrap_or(false);
            if balance < 0 && !allowed {
                report.negative.push((LedgerAccountId(account), balance));
            }
        }
        report.unbalanced_entries = entry_sums
            .into_iter()
            .filter(|(_, sum)| *sum != 0)
            .map(|(entry, _)| entry)
            .collect();
        report.empty_entries = without_postings.into_iter().collect();
        Ok(report)
    }
}
