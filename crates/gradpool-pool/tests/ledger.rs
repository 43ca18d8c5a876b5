//! The money ledger on a real database (a SQLite file, or PostgreSQL): balances, refusals, idempotency,
//! concurrent withdrawals, and random sequences checked against a model.

mod common;

use gradpool_core::Piconero;
use gradpool_pool::db::DatabaseUrl;
use gradpool_pool::ledger::{AccountKind, Ledger, LedgerAccountId, LedgerError};
use gradpool_pool::{Pool, PoolConfig};
use proptest::prelude::*;
use std::collections::HashMap;

/// A pool's database (SQLite in a data directory, or PostgreSQL: see
/// `common::test_database`), migrated by `Pool::open`.
struct Opened {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    database: Option<DatabaseUrl>,
}

impl Opened {
    /// A second connection pool to the same database, as another
    /// process would have.
    async fn connect(&self) -> sqlx::AnyPool {
        gradpool_pool::db::open(&self.path, self.database.as_ref())
            .await
            .expect("open db")
    }
}

/// A migrated pool database and a ledger over a second connection pool to
/// it.
async fn ledger() -> (Opened, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = common::test_database().await;
    let _pool = Pool::open(PoolConfig {
        data_dir: dir.path().to_path_buf(),
        database: database.clone(),
        ..PoolConfig::default()
    })
    .await
    .expect("open pool");
    let opened = Opened {
        path: dir.path().join("pool.sqlite"),
        _dir: dir,
        database,
    };
    let db = opened.connect().await;
    (opened, Ledger::new(db))
}

fn pico(x: u64) -> Piconero {
    Piconero(x)
}

#[tokio::test]
async fn deposit_transfer_withdraw_move_balances() {
    let (_dir, l) = ledger().await;
    let alice = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    let bob = l.account(AccountKind::Customer, "acct_bob").await.unwrap();
    let again = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    assert_eq!(alice, again, "account() gets the existing account");
    assert_eq!(alice.kind(), Some(AccountKind::Customer));
    let wallet = l.wallet().await.unwrap();

    l.deposit(&alice, pico(100), "dep-1").await.unwrap();
    l.transfer(&alice, &bob, pico(30), "tr-1").await.unwrap();
    l.withdraw(&bob, pico(10), "wd-1").await.unwrap();

    assert_eq!(l.balance(&alice).await.unwrap(), 70);
    assert_eq!(l.balance(&bob).await.unwrap(), 20);
    assert_eq!(l.balance(&wallet).await.unwrap(), -90);

    let report = l.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entries, 3);
    assert_eq!(report.accounts, 3);
    assert_eq!(report.postings, 6);
    assert_eq!(report.total, 0);
}

#[tokio::test]
async fn overdraft_is_refused_and_changes_nothing() {
    let (_dir, l) = ledger().await;
    let alice = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    let escrow = l.account(AccountKind::Escrow, "job_1").await.unwrap();
    l.deposit(&alice, pico(50), "dep").await.unwrap();

    match l.withdraw(&alice, pico(51), "wd").await {
        Err(LedgerError::Insufficient {
            account,
            balance,
            needed,
        }) => {
            assert_eq!(account, alice);
            assert_eq!(balance, 50);
            assert_eq!(needed, 51);
        }
        other => panic!("expected Insufficient, got {other:?}"),
    }
    assert!(matches!(
        l.transfer(&alice, &escrow, pico(60), "tr").await,
        Err(LedgerError::Insufficient { .. })
    ));
    // An empty escrow cannot pay out either.
    assert!(matches!(
        l.transfer(&escrow, &alice, pico(1), "tr2").await,
        Err(LedgerError::Insufficient { .. })
    ));
    assert_eq!(l.balance(&alice).await.unwrap(), 50);
    assert_eq!(l.balance(&escrow).await.unwrap(), 0);
    let report = l.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entries, 1, "refused entries are not written");

    // The refused key is free: the same withdrawal within the balance works.
    l.withdraw(&alice, pico(50), "wd").await.unwrap();
    assert_eq!(l.balance(&alice).await.unwrap(), 0);
}

#[tokio::test]
async fn bad_amounts_and_entries_are_refused() {
    let (_dir, l) = ledger().await;
    let alice = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    let bob = l.account(AccountKind::Customer, "acct_bob").await.unwrap();
    let wallet = l.wallet().await.unwrap();

    assert!(matches!(
        l.deposit(&alice, pico(0), "a").await,
        Err(LedgerError::ZeroAmount)
    ));
    assert!(matches!(
        l.deposit(&alice, pico(u64::MAX), "b").await,
        Err(LedgerError::AmountTooLarge(_))
    ));
    assert!(matches!(
        l.deposit(&alice, pico(i64::MAX as u64 + 1), "c").await,
        Err(LedgerError::AmountTooLarge(_))
    ));
    // The largest amount fits once; a second would overflow the balance.
    l.deposit(&alice, pico(i64::MAX as u64), "d").await.unwrap();
    assert!(matches!(
        l.deposit(&alice, pico(1), "e").await,
        Err(LedgerError::Overflow(_))
    ));
    assert!(matches!(
        l.transfer(&alice, &alice, pico(1), "f").await,
        Err(LedgerError::SameAccount(_))
    ));
    // Deposits go to customers only.
    assert!(matches!(
        l.deposit(&wallet, pico(1), "g").await,
        Err(LedgerError::WrongKind { .. })
    ));

    // Raw postings: empty, zero, unbalanced (a negative amount alone),
    // unbalanced beyond i64.
    assert!(matches!(
        l.post("h", "", &[]).await,
        Err(LedgerError::Empty)
    ));
    assert!(matches!(
        l.post("i", "", &[(alice.clone(), 0), (bob.clone(), 0)])
            .await,
        Err(LedgerError::ZeroPosting(_))
    ));
    assert!(matches!(
        l.post("j", "", &[(alice.clone(), -5)]).await,
        Err(LedgerError::Unbalanced(-5))
    ));
    assert!(matches!(
        l.post("k", "", &[(alice.clone(), -5), (bob.clone(), 4)])
            .await,
        Err(LedgerError::Unbalanced(-1))
    ));
    assert!(matches!(
        l.post(
            "l",
            "",
            &[
                (bob.clone(), i64::MAX),
                (bob.clone(), i64::MAX),
                (wallet.clone(), 2)
            ]
        )
        .await,
        Err(LedgerError::Unbalanced(_))
    ));
    // Any balanced entry between existing accounts goes through.
    let validator = l.account(AccountKind::Validator, "val_1").await.unwrap();
    l.post("m", "fee", &[(validator.clone(), 1), (wallet.clone(), -1)])
        .await
        .unwrap();
    assert!(matches!(
        l.post("", "", &[]).await,
        Err(LedgerError::BadKey)
    ));
    assert!(matches!(
        l.account(AccountKind::Customer, "").await,
        Err(LedgerError::BadOwner)
    ));

    assert_eq!(l.balance(&alice).await.unwrap(), i64::MAX);
    assert_eq!(l.balance(&bob).await.unwrap(), 0);
    let report = l.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entries, 2);
}

#[tokio::test]
async fn an_idempotency_key_moves_money_once() {
    let (_dir, l) = ledger().await;
    let alice = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    let bob = l.account(AccountKind::Customer, "acct_bob").await.unwrap();

    let first = l.deposit(&alice, pico(100), "dep-1").await.unwrap();
    let again = l.deposit(&alice, pico(100), "dep-1").await.unwrap();
    assert_eq!(first, again);
    assert_eq!(l.balance(&alice).await.unwrap(), 100);

    // Same postings in another order: the same entry.
    let wallet = l.wallet().await.unwrap();
    let reordered = l
        .post(
            "dep-1",
            "retry",
            &[(alice.clone(), 100), (wallet.clone(), -100)],
        )
        .await
        .unwrap();
    assert_eq!(first, reordered);

    // Same key, other postings: refused, nothing moves.
    match l.deposit(&alice, pico(101), "dep-1").await {
        Err(LedgerError::KeyReused { key, entry }) => {
            assert_eq!(key, "dep-1");
            assert_eq!(entry, first);
        }
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert!(matches!(
        l.deposit(&bob, pico(100), "dep-1").await,
        Err(LedgerError::KeyReused { .. })
    ));
    // A retried withdrawal succeeds even though the balance no longer
    // covers a second one.
    let wd = l.withdraw(&alice, pico(80), "wd-1").await.unwrap();
    assert_eq!(l.withdraw(&alice, pico(80), "wd-1").await.unwrap(), wd);
    assert_eq!(l.balance(&alice).await.unwrap(), 20);
    assert_eq!(l.balance(&bob).await.unwrap(), 0);
    let report = l.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_cannot_overdraw() {
    let (dir, l) = ledger().await;
    let alice = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    l.deposit(&alice, pico(100), "dep").await.unwrap();

    // Two connection pools on the same file, as two processes would be.
    let other = Ledger::new(dir.connect().await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let l = if i % 2 == 0 { l.clone() } else { other.clone() };
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            l.withdraw(&alice, pico(10), &format!("wd-{i}")).await
        }));
    }
    let mut ok = 0;
    let mut insufficient = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LedgerError::Insufficient { .. }) => insufficient += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(insufficient, 10);
    assert_eq!(l.balance(&alice).await.unwrap(), 0);
    let report = l.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entries, 11);
}

#[tokio::test]
async fn reconciliation_finds_tampering() {
    let (dir, l) = ledger().await;
    let alice = l
        .account(AccountKind::Customer, "acct_alice")
        .await
        .unwrap();
    l.deposit(&alice, pico(10), "dep").await.unwrap();
    assert!(l.reconcile().await.unwrap().is_clean());

    let db = dir.connect().await;
    sqlx::query("UPDATE postings SET amount = -25 WHERE account_id = $1")
        .bind(alice.as_str())
        .execute(&db)
        .await
        .unwrap();
    let report = l.reconcile().await.unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.total, -35);
    assert_eq!(report.negative, vec![(alice.clone(), -25)]);
    assert_eq!(report.unbalanced_entries.len(), 1);
    assert!(report.to_string().contains("NOT CLEAN"));
}

// --- random sequences against a model ---------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, u64, u8),
    Transfer(usize, usize, u64, u8),
    Withdraw(usize, u64, u8),
}

const CUSTOMERS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    // Small amounts (0 included) so overdrafts and zero amounts happen;
    // few keys so they are reused.
    let amount = prop_oneof![4 => 0u64..60, 1 => Just(0u64)];
    let key = 0u8..12;
    prop_oneof![
        (0..CUSTOMERS, amount.clone(), key.clone()).prop_map(|(c, a, k)| Op::Deposit(c, a, k)),
        (0..CUSTOMERS, 0..CUSTOMERS, amount.clone(), key.clone())
            .prop_map(|(f, t, a, k)| Op::Transfer(f, t, a, k)),
        (0..CUSTOMERS, amount, key).prop_map(|(c, a, k)| Op::Withdraw(c, a, k)),
    ]
}

/// What the model expects of one operation.
#[derive(Debug, PartialEq)]
enum Expect {
    Applied,
    Replayed,
    Zero,
    Same,
    Reused,
    Insufficient,
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (_dir, l) = ledger().await;
    let mut ids: Vec<LedgerAccountId> = Vec::new();
    for i in 0..CUSTOMERS {
        ids.push(
            l.account(AccountKind::Customer, &format!("acct_{i}"))
                .await
                .unwrap(),
        );
    }
    // Model: balances, and for each used key the canonical postings
    // (customer index or usize::MAX for the wallet, amount).
    let mut bal = [0i64; CUSTOMERS];
    let mut keys: HashMap<u8, Vec<(usize, i64)>> = HashMap::new();
    let (mut deposited, mut withdrawn) = (0i64, 0i64);

    for op in ops {
        const W: usize = usize::MAX;
        let (key, amount, postings) = match op {
            Op::Deposit(c, a, k) => (k, a, vec![(W, -(a as i64)), (c, a as i64)]),
            Op::Transfer(f, t, a, k) => (k, a, vec![(f, -(a as i64)), (t, a as i64)]),
            Op::Withdraw(c, a, k) => (k, a, vec![(c, -(a as i64)), (W, a as i64)]),
        };
        let mut canon = postings.clone();
        canon.sort();
        let expect = if amount == 0 {
            Expect::Zero
        } else if matches!(op, Op::Transfer(f, t, ..) if f == t) {
            Expect::Same
        } else if let Some(seen) = keys.get(&key) {
            if *seen == canon {
                Expect::Replayed
            } else {
                Expect::Reused
            }
        } else if postings.iter().any(|&(c, x)| c != W && bal[c] + x < 0) {
            Expect::Insufficient
        } else {
            Expect::Applied
        };

        let k = format!("key-{key}");
        let got = match op {
            Op::Deposit(c, a, _) => l.deposit(&ids[c], Piconero(a), &k).await,
            Op::Transfer(f, t, a, _) => l.transfer(&ids[f], &ids[t], Piconero(a), &k).await,
            Op::Withdraw(c, a, _) => l.withdraw(&ids[c], Piconero(a), &k).await,
        };
        let got = match got {
            Ok(_) if expect == Expect::Replayed => Expect::Replayed,
            Ok(_) => Expect::Applied,
            Err(LedgerError::ZeroAmount) => Expect::Zero,
            Err(LedgerError::SameAccount(_)) => Expect::Same,
            Err(LedgerError::KeyReused { .. }) => Expect::Reused,
            Err(LedgerError::Insufficient { .. }) => Expect::Insufficient,
            Err(e) => return Err(TestCaseError::fail(format!("{op:?}: {e}"))),
        };
        prop_assert_eq!(&got, &expect, "{:?}", op);
        if expect == Expect::Applied {
            for &(c, x) in &postings {
                if c != W {
                    bal[c] += x;
                }
            }
            match op {
                Op::Deposit(..) => deposited += amount as i64,
                Op::Withdraw(..) => withdrawn += amount as i64,
                Op::Transfer(..) => {}
            }
            keys.insert(key, canon);
        }
    }

    let report = l.reconcile().await.unwrap();
    prop_assert!(report.is_clean(), "{}", report);
    let mut sum = 0;
    for (i, id) in ids.iter().enumerate() {
        let b = l.balance(id).await.unwrap();
        prop_assert_eq!(b, bal[i]);
        sum += b;
    }
    prop_assert_eq!(sum, deposited - withdrawn);
    let wallet = l.wallet().await.unwrap();
    prop_assert_eq!(l.balance(&wallet).await.unwrap(), -(deposited - withdrawn));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_the_ledger_clean(ops in proptest::collection::vec(op(), 0..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_ops(ops))?;
    }
}
