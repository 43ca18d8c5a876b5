-- The double-entry ledger. Amounts are signed integer piconero; every
-- journal entry's postings sum to zero, so the sum over all accounts is zero.
-- Balances are derived: SUM(postings.amount) per account.

CREATE TABLE ledger_accounts (
    -- '<kind>:<owner>', e.g. 'customer:acct_…', 'escrow:job_…', 'wallet:pool'.
    id              TEXT PRIMARY KEY,
    -- customer | escrow | provider_pending | provider_available |
    -- provider_stake | validator | pool_fees | wallet
    kind            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    -- 1 only for 'wallet': money that entered or left through Monero.
    may_go_negative INTEGER NOT NULL CHECK (may_go_negative IN (0, 1)),
    created_at      INTEGER NOT NULL,
    UNIQUE (kind, owner)
);

CREATE TABLE journal_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- A retried request carries the same key and moves money once.
    idempotency_key TEXT NOT NULL UNIQUE,
    memo            TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE postings (
    entry_id    INTEGER NOT NULL REFERENCES journal_entries(id),
    account_id  TEXT NOT NULL REFERENCES ledger_accounts(id),
    amount      INTEGER NOT NULL CHECK (amount <> 0)   -- signed, piconero
);

CREATE INDEX postings_by_account ON postings(account_id);
CREATE INDEX postings_by_entry ON postings(entry_id);
