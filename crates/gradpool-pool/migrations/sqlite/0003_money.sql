-- Money: prices, budgets, escrow, stakes, deposits and payouts.
-- Amounts are integer piconero; rates are piconero per GPU-hour.

-- What a provider asks (its price floor), what its benchmark measured,
-- and where its stake withdrawal stands.
ALTER TABLE providers ADD COLUMN price_per_hour INTEGER NOT NULL DEFAULT 0;
ALTER TABLE providers ADD COLUMN benchmark_gflops REAL;
-- When the provider asked to withdraw its stake (NULL: it did not).
ALTER TABLE providers ADD COLUMN unstake_requested_at INTEGER;

-- What a job may spend.
ALTER TABLE jobs ADD COLUMN budget INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN max_price_per_hour INTEGER;          -- NULL: any price
-- Estimated floating-point operations per training step (NULL: unknown),
-- with the provider's benchmark the cap on a segment's billed time.
ALTER TABLE jobs ADD COLUMN flops_per_step REAL;

-- The rate agreed when the task was leased, and what it was billed.
ALTER TABLE tasks ADD COLUMN price_per_hour INTEGER;
ALTER TABLE tasks ADD COLUMN billed_ms INTEGER;
ALTER TABLE tasks ADD COLUMN price INTEGER;

-- Where a provider's payouts go, split by shares (owner, investor, workshop).
CREATE TABLE payout_splits (
    provider_id TEXT NOT NULL REFERENCES providers(id),
    address     TEXT NOT NULL,
    share       INTEGER NOT NULL CHECK (share > 0),
    PRIMARY KEY (provider_id, address)
);

-- One Monero subaddress of the pool's wallet per depositor.
CREATE TABLE deposit_addresses (
    address        TEXT PRIMARY KEY,
    subaddr_index  INTEGER NOT NULL UNIQUE,
    -- The ledger account credited: customer:acct_… or provider_stake:prov_….
    ledger_account TEXT NOT NULL UNIQUE REFERENCES ledger_accounts(id),
    created_at     INTEGER NOT NULL
);

-- Incoming transfers seen by the deposit watcher, credited once each.
CREATE TABLE deposits (
    txid           TEXT NOT NULL,
    subaddr_index  INTEGER NOT NULL,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    height         INTEGER NOT NULL,
    ledger_account TEXT NOT NULL REFERENCES ledger_accounts(id),
    credited_at    INTEGER NOT NULL,
    PRIMARY KEY (txid, subaddr_index)
);

-- Money leaving the pool: provider payouts (batched) and customer
-- withdrawals. status: reserved → built → relayed, or reserved → cancelled.
CREATE TABLE payouts (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,            -- 'provider' | 'withdrawal'
    status      TEXT NOT NULL,
    txid        TEXT,
    -- The signed transaction as monero-wallet-rpc returned it with
    -- do_not_relay: relayed from here after a crash.
    tx_metadata TEXT,
    fee         INTEGER,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX payouts_status ON payouts(status);

CREATE TABLE payout_destinations (
    payout_id      TEXT NOT NULL REFERENCES payouts(id),
    address        TEXT NOT NULL,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    -- The account the money came from (provider_available:…, customer:…).
    ledger_account TEXT NOT NULL REFERENCES ledger_accounts(id)
);
CREATE INDEX payout_destinations_payout ON payout_destinations(payout_id);
CREATE INDEX payout_destinations_account ON payout_destinations(ledger_account);
