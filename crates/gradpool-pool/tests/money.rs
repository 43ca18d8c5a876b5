//! Money through a real pool over HTTP: budgets held in escrow, segments
//! paid at the agreed rate, refunds, withdrawals, stakes. After every
//! scenario the ledger reconciliation must be clean.

mod common;

use common::*;
use gradpool_core::state::{BookingStatus, PayoutKind, PayoutStatus, ProviderStatus};
use gradpool_core::wire::*;
use gradpool_core::{JobId, Piconero, TaskId};
use proptest::prelude::*;
use std::collections::HashMap;

/// A mainnet address (the Monero general fund's).
const ADDRESS: &str =
    "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// 3.6 XMR an hour: exactly 10⁶ piconero a millisecond.
const RATE: Piconero = Piconero(3_600_000_000_000);

fn budgeted(total: &str, max_price: Option<&str>) -> String {
    let mut spec = format!("{SPEC}\n[budget]\ntotal_xmr = \"{total}\"\n");
    if let Some(m) = max_price {
        spec.push_str(&format!("max_price_xmr_per_hour = \"{m}\"\n"));
    }
    spec
}

async fn assert_clean(tp: &TestPool) {
    let report = tp.pool.ledger().reconcile().await.unwrap();
    assert!(report.is_clean(), "ledger reconciliation:\n{report}");
}

async fn balance(c: &Client) -> Balance {
    c.get("/v1/account/balance").await.ok()
}

async fn faucet(c: &Client, xmr: &str) -> Balance {
    c.post(
        "/v1/account/faucet",
        &Faucet {
            amount: xmr.parse().unwrap(),
        },
    )
    .await
    .ok()
}

async fn submit_reply(c: &Client, spec: &str) -> Reply {
    let sha = c.upload(b"some text to train on, long enough").await;
    c.post(
        "/v1/jobs",
        &SubmitJob {
            spec_toml: spec.to_owned(),
            data_sha256: sha,
            booking: None,
            sealed_keys: Vec::new(),
            data_shape: None,
        },
    )
    .await
}

/// Takes, waits a little (so the pool sees more time pass than the
/// provider reports) and commits one segment.
async fn work_one(p: &TestProvider, n: u8) -> (Assignment, CommitReply) {
    let a = p.take().await;
    p.work_for(20);
    let reply = p.finish(&a, &[n; 64]).await;
    (a, reply)
}

#[tokio::test]
async fn a_budget_needs_a_balance_and_is_held_in_escrow() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let spec = budgeted("0.5", None);

    let e = submit_reply(&c, &spec).await.err(402);
    assert_eq!(e.code, "insufficient_funds");
    assert!(e.message.contains("budget.total_xmr"), "{}", e.message);
    // A dev pool has no deposits: it points at its faucet.
    assert!(
        e.message.contains("gradpool account faucet"),
        "{}",
        e.message
    );
    let jobs: Vec<JobView> = c.get("/v1/jobs").await.ok();
    assert!(jobs.is_empty(), "a refused job must not exist");

    assert_eq!(faucet(&c, "2").await.available, Piconero(2_000_000_000_000));
    let job: JobView = submit_reply(&c, &spec).await.ok();
    assert_eq!(job.budget, Piconero(500_000_000_000));
    assert_eq!(job.escrow, job.budget);
    assert_eq!(job.spent, Piconero::ZERO);
    let b = balance(&c).await;
    assert_eq!(b.available, Piconero(1_500_000_000_000));
    assert_eq!(b.escrowed, Piconero(500_000_000_000));
    assert_eq!(b.backend, "dev");

    // Faucet limits; a dev pool has no deposit address.
    let e = c
        .post(
            "/v1/account/faucet",
            &Faucet {
                amount: Piconero::ZERO,
            },
        )
        .await
        .err(400);
    assert!(e.message.contains("amount"), "{}", e.message);
    let e = c
        .post("/v1/account/deposit", &serde_json::json!({}))
        .await
        .err(503);
    assert!(e.message.contains("faucet"), "{}", e.message);
    assert_clean(&tp).await;
}

#[tokio::test]
async fn verified_segments_are_paid_at_the_agreed_rate_and_the_rest_refunded() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    let job: JobView = submit_reply(&c, &budgeted("0.001", Some("5"))).await.ok();
    let p = tp
        .provider_with("rig", |p| {
            p.price = RATE;
            p.compute_ms = 2;
        })
        .await;
    for n in 0..3u8 {
        let (_, reply) = work_one(&p, n).await;
        assert_eq!(reply.job_done, n == 2);
    }

    // 2 ms at 10⁶ piconero/ms = 2·10⁶ a segment; 2% pool fee, 1% validators.
    let done = c.job(&job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.spent, Piconero(6_000_000));
    assert_eq!(done.escrow, Piconero::ZERO);
    let b = balance(&c).await;
    assert_eq!(b.available, Piconero(1_000_000_000_000 - 6_000_000));
    assert_eq!(b.escrowed, Piconero::ZERO);

    let e = earnings(&tp, &p).await;
    assert_eq!(e.available, Piconero(3 * 1_940_000));
    assert_eq!(e.pending, Piconero::ZERO);
    let ledger = tp.pool.ledger();
    assert_eq!(
        ledger
            .balance(&gradpool_pool::escrow::pool_fees_account())
            .await
            .unwrap(),
        3 * 40_000
    );
    assert_eq!(
        ledger
            .balance(&gradpool_pool::escrow::validator_fund_account())
            .await
            .unwrap(),
        3 * 20_000
    );

    // The customer saw each payment, then the settlement, then the end.
    let events = c.events(&job.id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "payment").count(), 3);
    let settled = kinds.iter().position(|k| *k == "settled").unwrap();
    assert_eq!(settled, kinds.len() - 2, "{kinds:?}");
    match &events[settled].2.kind {
        JobEventKind::Settled { refunded, released } => {
            assert_eq!(*refunded, Piconero(1_000_000_000 - 6_000_000));
            assert_eq!(*released, Piconero(3 * 1_940_000));
        }
        other => panic!("{other:?}"),
    }
    assert_clean(&tp).await;
}

#[tokio::test]
async fn the_billed_time_is_capped_by_what_the_pool_saw() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    let job: JobView = submit_reply(&c, &budgeted("0.001", None)).await.ok();
    // Claims fifty seconds per segment: possible (within the slack the
    // pool allows between its clock and the provider's), but more than
    // the pool saw.
    let p = tp
        .provider_with("greedy", |p| {
            p.price = RATE;
            p.compute_ms = 50_000;
        })
        .await;
    let (_, _) = work_one(&p, 1).await;
    let spent = c.job(&job.id).await.spent;
    // Billed for the milliseconds the pool saw between lease and commit,
    // not for the fifty seconds it claimed.
    assert!(spent.0 >= 20_000_000, "{spent}");
    assert!(spent.0 < 10_000_000_000, "{spent}");
    assert_clean(&tp).await;
}

#[tokio::test]
async fn price_and_budget_decide_who_gets_a_job() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    // A job that pays at most 1 XMR/h, and one without a budget.
    let paid: JobView = submit_reply(&c, &budgeted("0.001", Some("1"))).await.ok();
    let dear = tp.provider_with("dear", |p| p.price = RATE).await;
    assert!(dear.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let cheap = tp
        .provider_with("cheap", |p| p.price = Piconero(500_000_000_000))
        .await;
    let a = cheap.take().await;
    assert_eq!(a.job_id, paid.id);

    // An unbudgeted job goes only to providers that work for free.
    let free_job: JobView = submit_reply(&c, SPEC).await.ok();
    assert!(dear.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let volunteer = tp.provider("volunteer").await;
    assert_eq!(volunteer.take().await.job_id, free_job.id);
    assert_clean(&tp).await;
}

#[tokio::test]
async fn cancel_and_an_exhausted_budget_refund_what_is_left() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    let p = tp
        .provider_with("rig", |p| {
            p.price = RATE;
            p.compute_ms = 2;
        })
        .await;

    // Cancelled after one paid segment: everything else comes back.
    let job: JobView = submit_reply(&c, &budgeted("0.001", None)).await.ok();
    work_one(&p, 1).await;
    let cancelled: JobView = c
        .post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(cancelled.spent, Piconero(2_000_000));
    assert_eq!(cancelled.escrow, Piconero::ZERO);
    assert_eq!(
        balance(&c).await.available,
        Piconero(1_000_000_000_000 - 2_000_000)
    );
    // Cancelling again moves nothing.
    let again: JobView = c
        .post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok();
    assert_eq!(again.status, JobStatus::Cancelled);
    assert_eq!(earnings(&tp, &p).await.available, Piconero(1_940_000));

    // A budget of 3·10⁶ pays one segment and a half: the job fails,
    // having spent exactly its budget.
    let job: JobView = submit_reply(&c, &budgeted("0.000003", None)).await.ok();
    work_one(&p, 2).await;
    work_one(&p, 3).await;
    let failed = c.job(&job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("budget exhausted"),
        "{:?}",
        failed.error
    );
    assert_eq!(failed.spent, Piconero(3_000_000));
    assert_eq!(failed.escrow, Piconero::ZERO);
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert_clean(&tp).await;
}

#[tokio::test]
async fn withdrawals_are_checked_idempotent_and_never_overdraw() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    let withdraw = |to: &str, amount: u64, key: &str| Withdraw {
        to: to.to_owned(),
        amount: Piconero(amount),
        idempotency_key: key.to_owned(),
    };

    let e = c
        .post(
            "/v1/account/withdraw",
            &withdraw("4AFFq5kSiGBoZ4NM", 1, "k"),
        )
        .await
        .err(400);
    assert!(e.message.starts_with("to:"), "{}", e.message);
    // One character changed: the checksum catches it.
    let typo = ADDRESS.replacen("44AFFq5", "44AFFq6", 1);
    let e = c
        .post("/v1/account/withdraw", &withdraw(&typo, 1, "k"))
        .await
        .err(400);
    assert!(e.message.starts_with("to:"), "{}", e.message);
    let e = c
        .post("/v1/account/withdraw", &withdraw(ADDRESS, 0, "k"))
        .await
        .err(400);
    assert!(e.message.contains("amount"), "{}", e.message);
    let e = c
        .post("/v1/account/withdraw", &withdraw(ADDRESS, u64::MAX, "k"))
        .await
        .err(400);
    assert!(e.message.contains("amount"), "{}", e.message);
    let e = c
        .post(
            "/v1/account/withdraw",
            &withdraw(ADDRESS, 2_000_000_000_000, "k"),
        )
        .await
        .err(402);
    assert_eq!(e.code, "insufficient_funds");
    assert_eq!(balance(&c).await.available, Piconero(1_000_000_000_000));

    // The same key twice withdraws once.
    let first: PayoutView = c
        .post("/v1/account/withdraw", &withdraw(ADDRESS, 100, "once"))
        .await
        .ok();
    let second: PayoutView = c
        .post("/v1/account/withdraw", &withdraw(ADDRESS, 100, "once"))
        .await
        .ok();
    assert_eq!(first, second);
    assert_eq!(first.status, PayoutStatus::Settled);
    let e = c
        .post("/v1/account/withdraw", &withdraw(ADDRESS, 101, "once"))
        .await
        .err(409);
    assert!(e.message.contains("once"), "{}", e.message);
    assert_eq!(
        balance(&c).await.available,
        Piconero(1_000_000_000_000 - 100)
    );

    // Ten concurrent withdrawals of 0.3 XMR from 0.9999999999 XMR: three
    // succeed, the others are refused, the balance never goes negative.
    let mut handles = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            c.post(
                "/v1/account/withdraw",
                &withdraw(ADDRESS, 300_000_000_000, &format!("race-{i}")),
            )
            .await
            .status
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap().as_u16() {
            200 => ok += 1,
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(
        balance(&c).await.available,
        Piconero(1_000_000_000_000 - 100 - 900_000_000_000)
    );
    assert_clean(&tp).await;

    // The operator's listing (`gradpool pool payouts`) has each withdrawal
    // once, from a second connection to the same database.
    let db = gradpool_pool::db::open(
        &tp.pool.config().data_dir.join("pool.sqlite"),
        tp.pool.config().database.as_ref(),
    )
    .await
    .unwrap();
    let lines = gradpool_pool::money::payout_lines(&db, 50).await.unwrap();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l.kind == PayoutKind::Withdrawal
        && l.status == PayoutStatus::Settled
        && l.address == ADDRESS));
    assert_eq!(
        lines.iter().map(|l| l.amount.0).sum::<u64>(),
        100 + 900_000_000_000
    );
    assert!(lines
        .iter()
        .all(|l| l.account.starts_with("customer:acct_")));
    assert_eq!(
        gradpool_pool::money::payout_lines(&db, 2)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn large_jobs_need_a_stake_and_a_stake_comes_back_after_its_cooldown() {
    let tp = TestPool::start_with(|c| {
        c.money.stake_required_above = Piconero(10_000_000);
        c.money.min_stake = Piconero(1_000_000);
        c.money.unstake_cooldown_seconds = 1;
    })
    .await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    let p = tp
        .provider_with("rig", |p| {
            p.price = RATE;
            p.compute_ms = 2;
        })
        .await;

    // A small job earns the provider 3 × 1 940 000.
    submit_reply(&c, &budgeted("0.000006", None))
        .await
        .ok::<JobView>();
    for n in 0..3 {
        work_one(&p, n).await;
    }
    // A large job is not offered to a provider without a stake.
    let large: JobView = submit_reply(&c, &budgeted("0.001", None)).await.ok();
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());

    // Staking more than it has is refused; staking enough gets it the job.
    let too_much = StakeRequest {
        signed_nonce: signed_nonce(&tp, &p, "stake").await,
        action: StakeAction::Add {
            amount: Piconero(10_000_000),
        },
    };
    let e = tp
        .anon()
        .post("/v1/providers/stake", &too_much)
        .await
        .err(402);
    assert_eq!(e.code, "insufficient_funds");
    // A proof for another purpose is worthless here.
    let wrong = StakeRequest {
        signed_nonce: signed_nonce(&tp, &p, "earnings").await,
        action: StakeAction::Add {
            amount: Piconero(1_000_000),
        },
    };
    tp.anon().post("/v1/providers/stake", &wrong).await.err(401);
    // A dev pool has no Monero wallet to deposit a stake from.
    let deposit = StakeRequest {
        signed_nonce: signed_nonce(&tp, &p, "stake").await,
        action: StakeAction::Deposit,
    };
    let e = tp
        .anon()
        .post("/v1/providers/stake", &deposit)
        .await
        .err(503);
    assert!(
        e.message.contains("without a Monero wallet"),
        "{}",
        e.message
    );
    let add = StakeRequest {
        signed_nonce: signed_nonce(&tp, &p, "stake").await,
        action: StakeAction::Add {
            amount: Piconero(1_000_000),
        },
    };
    let e: Earnings = tp.anon().post("/v1/providers/stake", &add).await.ok();
    assert_eq!(e.stake, Piconero(1_000_000));
    assert_eq!(e.available, Piconero(3 * 1_940_000 - 1_000_000));
    // The nonce is single-use: replaying the request is refused.
    tp.anon().post("/v1/providers/stake", &add).await.err(401);
    assert_eq!(p.take().await.job_id, large.id);

    // Withdrawing starts the cool-down, during which large jobs wait.
    let w = StakeRequest {
        signed_nonce: signed_nonce(&tp, &p, "stake").await,
        action: StakeAction::Withdraw,
    };
    let e: Earnings = tp.anon().post("/v1/providers/stake", &w).await.ok();
    assert!(e.unstake_at.is_some());
    assert_eq!(e.stake, Piconero(1_000_000));
    tp.advance(1100);
    let e = earnings(&tp, &p).await;
    assert_eq!(e.stake, Piconero::ZERO);
    assert_eq!(e.unstake_at, None);
    assert_eq!(e.available, Piconero(3 * 1_940_000));
    assert_clean(&tp).await;
}

#[tokio::test]
async fn payout_addresses_are_checked_at_registration() {
    let tp = TestPool::start().await;
    let mut p = tp.provider("rig").await;
    p.payout = vec![PayoutSplit {
        address: ADDRESS.replacen("44AFFq5", "44AFFq6", 1),
        share: 1,
    }];
    let body = p.register_body(vec![]).await;
    let e = p
        .client
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.starts_with("payout[0].address:"), "{}", e.message);
    p.payout = vec![
        PayoutSplit {
            address: ADDRESS.into(),
            share: 70,
        },
        PayoutSplit {
            address: ADDRESS.into(),
            share: 30,
        },
    ];
    let body = p.register_body(vec![]).await;
    let e = p
        .client
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.contains("named twice"), "{}", e.message);
    p.payout = vec![PayoutSplit {
        address: ADDRESS.into(),
        share: 3,
    }];
    p.register(vec![]).await;
    assert_eq!(earnings(&tp, &p).await.payout, p.payout);
}

// --- random sequences through the whole pool --------------------------------

/// One step of a random scenario, all through the HTTP API of a dev pool.
#[derive(Debug, Clone)]
enum MoneyOp {
    /// The faucet credits a customer (0 is refused).
    Faucet { customer: usize, amount: u64 },
    /// A customer submits a job with this budget (refused above its
    /// balance).
    Submit { customer: usize, budget: u64 },
    /// A provider takes the next task, if any, and commits it.
    Work { provider: usize },
    /// A provider takes the next task, if any, and reports it failed.
    Fail { provider: usize },
    /// The provider that committed last sends the same commit again.
    Recommit,
    /// A customer cancels one of its jobs (refused once it has ended).
    Cancel { customer: usize, job: usize },
    /// A customer withdraws (refused above its balance, or at 0).
    Withdraw {
        customer: usize,
        amount: u64,
        key: u8,
    },
    /// A provider stakes some of its available earnings.
    Stake { provider: usize, amount: u64 },
}

const MONEY_CUSTOMERS: usize = 2;
const MONEY_PROVIDERS: usize = 2;

fn money_op() -> impl Strategy<Value = MoneyOp> {
    // A segment costs about 10⁷ piconero (10 ms at RATE): budgets from
    // less than one segment to the whole job, so budgets run out.
    let amount = prop_oneof![1 => Just(0u64), 6 => 1u64..60_000_000];
    prop_oneof![
        2 => (0..MONEY_CUSTOMERS, amount.clone())
            .prop_map(|(customer, amount)| MoneyOp::Faucet { customer, amount }),
        2 => (0..MONEY_CUSTOMERS, 5_000_000u64..50_000_000)
            .prop_map(|(customer, budget)| MoneyOp::Submit { customer, budget }),
        4 => (0..MONEY_PROVIDERS).prop_map(|provider| MoneyOp::Work { provider }),
        1 => (0..MONEY_PROVIDERS).prop_map(|provider| MoneyOp::Fail { provider }),
        1 => Just(MoneyOp::Recommit),
        1 => (0..MONEY_CUSTOMERS, 0usize..4).prop_map(|(customer, job)| MoneyOp::Cancel { customer, job }),
        1 => (0..MONEY_CUSTOMERS, amount.clone(), 0u8..4)
            .prop_map(|(customer, amount, key)| MoneyOp::Withdraw { customer, amount, key }),
        1 => (0..MONEY_PROVIDERS, amount)
            .prop_map(|(provider, amount)| MoneyOp::Stake { provider, amount }),
    ]
}

/// The status an HTTP reply must have: a success when the model says the
/// operation is allowed (`ok`), else `refused`.
fn expect_status(op: &MoneyOp, reply: &Reply, ok: bool, refused: u16) -> Result<(), TestCaseError> {
    prop_assert_eq!(reply.status.is_success(), ok, "{:?}: {}", op, reply.body);
    if !ok {
        prop_assert_eq!(reply.status.as_u16(), refused, "{:?}: {}", op, reply.body);
    }
    Ok(())
}

/// Runs `ops` on a fresh pool. After every operation: the ledger reconciliation is
/// clean; each customer's balance is what it put in, less withdrawals, less
/// what its jobs spent and still hold; a running job's escrow plus its
/// spending is its budget, an ended job's escrow is empty (the rest was
/// refunded); and everything
/// jobs spent sits with providers (pending, available or staked), the pool's
/// fees and the validator fund.
async fn run_money_ops(ops: Vec<MoneyOp>) -> Result<(), TestCaseError> {
    let tp = TestPool::start_with(|c| {
        // No audits: every segment's money moves at its commit.
        c.verification.sampling.p_new = 0.0;
        c.verification.sampling.floor = 0.0;
    })
    .await;
    let mut customers = Vec::new();
    for i in 0..MONEY_CUSTOMERS {
        customers.push(tp.customer(&format!("c{i}")).await);
    }
    let mut providers = Vec::new();
    for i in 0..MONEY_PROVIDERS {
        providers.push(
            tp.provider_with(&format!("p{i}"), |p| {
                p.price = RATE;
                p.compute_ms = 10;
            })
            .await,
        );
    }
    let mut put_in = [0u64; MONEY_CUSTOMERS];
    let mut taken_out = [0u64; MONEY_CUSTOMERS];
    let mut jobs: Vec<Vec<JobId>> = vec![Vec::new(); MONEY_CUSTOMERS];
    let mut withdrawals: HashMap<(usize, u8), u64> = HashMap::new();
    let mut last_commit: Option<(usize, TaskId, Commit)> = None;

    for op in ops {
        match &op {
            &MoneyOp::Faucet { customer, amount } => {
                let reply = customers[customer]
                    .post(
                        "/v1/account/faucet",
                        &Faucet {
                            amount: Piconero(amount),
                        },
                    )
                    .await;
                expect_status(&op, &reply, amount > 0, 400)?;
                if amount > 0 {
                    put_in[customer] += amount;
                }
            }
            &MoneyOp::Submit { customer, budget } => {
                let c = &customers[customer];
                let available = balance(c).await.available.0;
                let spec = format!("{SPEC}\n[budget]\ntotal_xmr = \"{}\"\n", Piconero(budget));
                let reply = submit_reply(c, &spec).await;
                expect_status(&op, &reply, budget <= available, 402)?;
                if budget <= available {
                    jobs[customer].push(reply.ok::<JobView>().id);
                }
            }
            &MoneyOp::Work { provider } | &MoneyOp::Fail { provider } => {
                let p = &providers[provider];
                let reply = p.heartbeat(&[], 1, 0).await;
                if let Some(a) = reply.assignments.into_iter().next() {
                    if matches!(op, MoneyOp::Work { .. }) {
                        let ckpt = checkpoint(&a, &[a.segment as u8, provider as u8, 7, 7]);
                        p.client.upload(&ckpt).await;
                        let commit = p.commit_for(&a, &ckpt);
                        let reply = p.commit(&a.task_id, &commit).await;
                        prop_assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
                        last_commit = Some((provider, a.task_id, commit));
                    } else {
                        let reply = p
                            .client
                            .post(
                                &format!("/v1/tasks/{}/fail", a.task_id),
                                &TaskFailed {
                                    reason: "out of memory".into(),
                                },
                            )
                            .await;
                        prop_assert_eq!(reply.status.as_u16(), 204, "{}", reply.body);
                    }
                }
            }
            MoneyOp::Recommit => {
                if let Some((provider, task, commit)) = &last_commit {
                    // Answered like the first time or refused; never paid twice
                    // (the conservation checks below would see it).
                    let reply = providers[*provider].commit(task, commit).await;
                    let s = reply.status.as_u16();
                    prop_assert!(s == 200 || s == 409, "recommit: {} {}", s, reply.body);
                }
            }
            &MoneyOp::Cancel { customer, job } => {
                if let Some(id) = jobs[customer].get(job) {
                    let c = &customers[customer];
                    let before = c.job(id).await;
                    let reply = c.post(&format!("/v1/jobs/{id}/cancel"), &()).await;
                    // Cancelling is idempotent: a cancelled job answers
                    // with itself; a job that ended otherwise refuses.
                    let ok = !before.status.is_final() || before.status == JobStatus::Cancelled;
                    expect_status(&op, &reply, ok, 409)?;
                }
            }
            &MoneyOp::Withdraw {
                customer,
                amount,
                key,
            } => {
                let c = &customers[customer];
                let available = balance(c).await.available.0;
                let reply = c
                    .post(
                        "/v1/account/withdraw",
                        &Withdraw {
                            to: ADDRESS.into(),
                            amount: Piconero(amount),
                            idempotency_key: format!("w{key}"),
                        },
                    )
                    .await;
                match withdrawals.get(&(customer, key)) {
                    // Nothing to withdraw is a bad request, whatever the key.
                    _ if amount == 0 => expect_status(&op, &reply, false, 400)?,
                    // The same key again: the same withdrawal, once.
                    Some(&previous) if previous == amount => expect_status(&op, &reply, true, 0)?,
                    Some(_) => expect_status(&op, &reply, false, 409)?,
                    None => {
                        expect_status(&op, &reply, amount <= available, 402)?;
                        if amount <= available {
                            withdrawals.insert((customer, key), amount);
                            taken_out[customer] += amount;
                        }
                    }
                }
            }
            &MoneyOp::Stake { provider, amount } => {
                let p = &providers[provider];
                let available = earnings(&tp, p).await.available.0;
                let reply = tp
                    .anon()
                    .post(
                        "/v1/providers/stake",
                        &StakeRequest {
                            signed_nonce: signed_nonce(&tp, p, "stake").await,
                            action: StakeAction::Add {
                                amount: Piconero(amount),
                            },
                        },
                    )
                    .await;
                let refused = if amount == 0 { 400 } else { 402 };
                expect_status(&op, &reply, amount > 0 && amount <= available, refused)?;
            }
        }

        // The invariants, after every operation.
        let report = tp.pool.ledger().reconcile().await.unwrap();
        prop_assert!(report.is_clean(), "after {:?}:\n{}", op, report);
        let mut spent_total = 0u64;
        for (i, c) in customers.iter().enumerate() {
            let mut held = 0u64;
            for id in &jobs[i] {
                let j = c.job(id).await;
                if j.status.is_final() {
                    // The rest was refunded.
                    prop_assert_eq!(j.escrow.0, 0, "ended job {} holds money", id);
                    prop_assert!(j.spent <= j.budget, "job {} overspent", id);
                } else {
                    prop_assert_eq!(
                        j.escrow.0 + j.spent.0,
                        j.budget.0,
                        "job {} after {:?}",
                        id,
                        op
                    );
                }
                held += j.escrow.0 + j.spent.0;
                spent_total += j.spent.0;
            }
            let b = balance(c).await.available.0;
            prop_assert_eq!(
                b,
                put_in[i] - taken_out[i] - held,
                "customer {} after {:?}",
                i,
                op
            );
        }
        let mut earned = 0u64;
        for p in &providers {
            let e = earnings(&tp, p).await;
            earned += e.pending.0 + e.available.0 + e.stake.0;
        }
        let l = tp.pool.ledger();
        let fees = l
            .balance(&gradpool_pool::escrow::pool_fees_account())
            .await
            .unwrap();
        let fund = l
            .balance(&gradpool_pool::escrow::validator_fund_account())
            .await
            .unwrap();
        prop_assert_eq!(
            earned as i64 + fees + fund,
            spent_total as i64,
            "spent money is not all with providers, fees and validators after {:?}",
            op
        );
    }
    tp.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_escrow_payment_and_settlement_sequences_conserve_money(
        ops in proptest::collection::vec(money_op(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_money_ops(ops))?;
    }
}

/// `GET /v1/pool` needs no key: what the pool charges and what its
/// providers and jobs pay, as medians.
#[tokio::test]
async fn the_pool_says_what_it_pays_to_anyone() {
    let tp = TestPool::start().await;
    let info: PoolInfo = tp.anon().get("/v1/pool").await.ok();
    assert_eq!(info.backend, "dev");
    assert_eq!(info.network, "mainnet");
    assert_eq!((info.pool_fee_bps, info.validator_fee_bps), (200, 100));
    assert_eq!(info.providers_connected, 0);
    assert_eq!(info.median_provider_price_per_hour, None);

    for (name, xmr) in [("a", "0.01"), ("b", "0.03"), ("c", "0.02")] {
        tp.provider_with(name, |p| p.price = xmr.parse().unwrap())
            .await;
    }
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;
    submit_reply(&c, &budgeted("0.1", Some("0.05")))
        .await
        .ok::<JobView>();
    let info: PoolInfo = tp.anon().get("/v1/pool").await.ok();
    assert_eq!(info.providers_connected, 3);
    assert_eq!(
        info.median_provider_price_per_hour,
        Some("0.02".parse().unwrap())
    );
    assert_eq!(
        info.median_job_price_per_hour,
        Some("0.05".parse().unwrap())
    );
    assert_eq!(info.jobs_open, 1);
}

/// `ms` milliseconds after `now` (unix milliseconds), in RFC 3339.
fn in_ms(now: i64, ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now + ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A job submitted into a booking trains only on the booking's providers,
/// inside its window, and says why it waits before; the hold shows as
/// escrowed; someone else's booking is refused; when the booking ends, the
/// job goes on outside it.
#[tokio::test]
async fn a_job_inside_a_booking_waits_for_its_window_and_its_providers() {
    let tp = TestPool::start().await;
    let xmr_h = |s: &str| s.parse::<Piconero>().unwrap();
    let booked = tp
        .provider_with("booked", |p| {
            p.gflops = Some(100.0);
            p.price = xmr_h("0.01");
        })
        .await;
    let other = tp
        .provider_with("other", |p| {
            p.gflops = Some(10.0);
            p.price = xmr_h("0.01");
        })
        .await;
    let alice = tp.customer("alice").await;
    let bob = tp.customer("bob").await;
    faucet(&alice, "1").await;
    let now = tp.pool.now();
    let b: BookingView = alice
        .post(
            "/v1/bookings",
            &Book {
                gpus: 1,
                from: in_ms(now, 60_000),
                until: in_ms(now, 3_660_000),
                min_score: None,
            },
        )
        .await
        .ok();
    assert_eq!(b.providers, vec![booked.key.provider_id()]);
    let bal = balance(&alice).await;
    assert_eq!(bal.escrowed, b.held, "the hold is in escrow");
    assert_eq!(bal.available, Piconero(1_000_000_000_000 - b.held.0));

    let submit = |c: &Client, booking: &str| {
        let c = c.clone();
        let booking = booking.to_owned();
        async move {
            let sha = c.upload(b"some text to train on, long enough").await;
            c.post(
                "/v1/jobs",
                &SubmitJob {
                    spec_toml: budgeted("0.1", None),
                    data_sha256: sha,
                    booking: Some(booking),
                    sealed_keys: Vec::new(),
                    data_shape: None,
                },
            )
            .await
        }
    };
    let e = submit(&bob, &b.id).await.err(400);
    assert!(e.message.starts_with("booking:"), "{}", e.message);
    let job: JobView = submit(&alice, &b.id).await.ok();
    assert_eq!(job.booking.as_deref(), Some(b.id.as_str()));
    // Before the window nobody takes it, and it says why.
    let waiting = alice.job(&job.id).await.waiting.unwrap_or_default();
    assert!(waiting.contains("outside the job's booking"), "{waiting}");
    assert!(other.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert!(booked.heartbeat(&[], 1, 0).await.assignments.is_empty());
    // Inside it, only the booking's provider does.
    tp.advance(61_000);
    assert!(other.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let a = booked.take().await;
    assert_eq!(a.job_id, job.id);
    booked.work_for(20);
    booked.finish(&a, &[1]).await;
    // The booking ends before the job: the job goes on outside it.
    tp.advance(3_600_000);
    tp.pool.end_bookings().await.unwrap();
    let view = alice.job(&job.id).await;
    assert_eq!(view.booking, None);
    let a = other.take().await;
    assert_eq!((a.job_id, a.segment), (job.id.clone(), 1));
    assert_eq!(balance(&alice).await.escrowed, view.escrow);
    assert_clean(&tp).await;
}

/// Booking: the best free providers are reserved and their price for the
/// window held; inside the window a reserved provider trains only for the
/// booker; when the window ends (or the booking is cancelled) the hold
/// returns. Refusals name what is missing.
#[tokio::test]
async fn a_booking_reserves_the_best_providers_and_holds_their_price() {
    let tp = TestPool::start().await;
    let xmr_h = |s: &str| s.parse::<Piconero>().unwrap();
    let slow = tp
        .provider_with("slow", |p| {
            p.gflops = Some(10.0);
            p.price = xmr_h("0.01");
        })
        .await;
    let mid = tp
        .provider_with("mid", |p| {
            p.gflops = Some(50.0);
            p.price = xmr_h("0.02");
        })
        .await;
    let fast = tp
        .provider_with("fast", |p| {
            p.gflops = Some(100.0);
            p.price = xmr_h("3.6");
        })
        .await;
    let alice = tp.customer("alice").await;
    let bob = tp.customer("bob").await;
    faucet(&alice, "1").await;

    let now = tp.pool.now();
    let book = |gpus: u32, from: i64, until: i64, min_score: Option<f64>| Book {
        gpus,
        from: in_ms(now, from),
        until: in_ms(now, until),
        min_score,
    };
    // 3 s of the fast rig at 3.6 XMR/h: 0.003 XMR.
    let b: BookingView = alice
        .post("/v1/bookings", &book(1, 1_500, 4_500, Some(60.0)))
        .await
        .ok();
    assert_eq!(b.providers, vec![fast.key.provider_id()]);
    assert_eq!(b.status, BookingStatus::Reserved);
    assert_eq!(b.held, Piconero(3_000_000_000));
    assert_eq!(
        balance(&alice).await.available,
        Piconero(1_000_000_000_000 - 3_000_000_000)
    );
    let views: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let status = |name: &str| {
        views
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.status)
            .unwrap()
    };
    assert_eq!(status("fast"), ProviderStatus::Reserved);
    assert_eq!(status("mid"), ProviderStatus::Idle);

    // Nobody else scores 60; more GPUs than exist; no money.
    let e = bob
        .post("/v1/bookings", &book(1, 1_500, 4_500, Some(60.0)))
        .await
        .err(409);
    assert!(
        e.message.contains("only 0 connected provider(s)"),
        "{}",
        e.message
    );
    let e = bob
        .post("/v1/bookings", &book(2, 1_500, 4_500, None))
        .await
        .err(402);
    assert_eq!(e.code, "insufficient_funds");
    let e = bob
        .post("/v1/bookings", &book(1, -3_600_000, 4_500, None))
        .await
        .err(400);
    assert!(e.message.starts_with("from:"), "{}", e.message);
    faucet(&bob, "1").await;
    let later: BookingView = bob
        .post("/v1/bookings", &book(2, 60_000, 120_000, None))
        .await
        .ok();
    // Alice's window is over by then: the fast rig is free again.
    assert_eq!(
        later.providers,
        vec![fast.key.provider_id(), mid.key.provider_id()]
    );
    // Overlapping hers, the fast rig is taken: the next best come.
    let overlapping: BookingView = bob
        .post("/v1/bookings", &book(2, 2_000, 3_000, None))
        .await
        .ok();
    assert_eq!(
        overlapping.providers,
        vec![mid.key.provider_id(), slow.key.provider_id()]
    );

    // Inside alice's window the fast rig trains only for her.
    tp.advance(1_700);
    let mine: Vec<BookingView> = alice.get("/v1/bookings").await.ok();
    assert_eq!(mine[0].status, BookingStatus::Active);
    let bobs_job = submit_reply(&bob, &budgeted("0.1", None))
        .await
        .ok::<JobView>();
    assert!(fast.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let alices_job = submit_reply(&alice, &budgeted("0.1", None))
        .await
        .ok::<JobView>();
    let a = fast.take().await;
    assert_eq!(a.job_id, alices_job.id);

    // After it, the hold is back and the rig takes anyone's work.
    tp.advance(3_500);
    tp.pool.end_bookings().await.unwrap();
    let mine: Vec<BookingView> = alice.get("/v1/bookings").await.ok();
    assert_eq!(mine[0].status, BookingStatus::Ended);
    let alice_job_now = alice.job(&alices_job.id).await;
    assert_eq!(
        balance(&alice).await.available,
        Piconero(1_000_000_000_000 - alice_job_now.budget.0),
        "the hold returned; the job's budget is held by the job"
    );
    fast.finish(&a, &[1, 2, 3]).await;
    let next = fast.take().await;
    assert!(next.job_id == bobs_job.id || next.job_id == alices_job.id);

    // Bob cancels his: the hold returns, the rigs are free.
    let cancelled: BookingView = bob
        .post(&format!("/v1/bookings/{}/cancel", later.id), &())
        .await
        .ok();
    assert_eq!(cancelled.status, BookingStatus::Cancelled);
    bob.post(&format!("/v1/bookings/{}/cancel", later.id), &())
        .await
        .err(409);
    let b = balance(&bob).await.available;
    assert_eq!(b.0, 1_000_000_000_000 - bobs_job.budget.0);
    assert_clean(&tp).await;
}

/// A job no connected provider can take says why, at submit and while it
/// is queued: a price below every provider's, a budget that needs a stake
/// nobody has, no provider at all. One a provider can take says nothing.
#[tokio::test]
async fn a_job_no_provider_can_take_says_why_it_waits() {
    let tp = TestPool::start_with(|c| {
        c.money.stake_required_above = Piconero(10_000_000);
        c.money.min_stake = Piconero(1_000_000);
    })
    .await;
    let c = tp.customer("alice").await;
    faucet(&c, "1").await;

    let alone: JobView = submit_reply(&c, &budgeted("0.000006", None)).await.ok();
    let why = alone.waiting.expect("a reason with no provider");
    assert!(why.contains("no provider is connected"), "{why}");

    // RATE is 3.6 XMR/h.
    let p = tp.provider_with("rig", |p| p.price = RATE).await;
    let cheap: JobView = submit_reply(&c, &budgeted("0.000006", Some("1")))
        .await
        .ok();
    assert_eq!(cheap.status, JobStatus::Queued);
    let why = cheap.waiting.clone().expect("a reason at submit");
    assert!(
        why.contains("1 provider asking more than the job's maximum of 1 XMR/h"),
        "{why}"
    );
    assert!(why.contains("the cheapest asks 3.6 XMR/h"), "{why}");
    assert_eq!(
        c.job(&cheap.id).await.waiting,
        cheap.waiting,
        "and while queued"
    );

    let large: JobView = submit_reply(&c, &budgeted("0.001", None)).await.ok();
    let why = large.waiting.expect("a reason at submit");
    assert!(
        why.contains("1 provider without the stake a budget of 0.001 XMR needs"),
        "{why}"
    );

    // A job the provider can take waits for nothing, and the provider
    // takes it (not the two it cannot).
    let fits: JobView = submit_reply(&c, &budgeted("0.000006", None)).await.ok();
    assert_eq!(fits.waiting, None);
    let jobs: Vec<JobView> = c.get("/v1/jobs").await.ok();
    let waiting: Vec<&JobId> = jobs
        .iter()
        .filter(|j| j.waiting.is_some())
        .map(|j| &j.id)
        .collect();
    assert_eq!(waiting, [&large.id, &cheap.id], "newest first");
    let a = p.take().await;
    assert_eq!(a.job_id, alone.id);
}

/// The sequences the property test above once failed on, kept: cancelling
/// a cancelled job answers it again, and withdrawing nothing is a bad
/// request even under a key already used.
#[tokio::test]
async fn money_sequences_found_by_the_property_test() {
    let cases = [
        vec![
            MoneyOp::Faucet {
                customer: 1,
                amount: 34_201_816,
            },
            MoneyOp::Submit {
                customer: 1,
                budget: 5_000_000,
            },
            MoneyOp::Cancel {
                customer: 1,
                job: 0,
            },
            MoneyOp::Cancel {
                customer: 1,
                job: 0,
            },
        ],
        vec![
            MoneyOp::Faucet {
                customer: 1,
                amount: 29_418_873,
            },
            MoneyOp::Withdraw {
                customer: 1,
                amount: 1,
                key: 2,
            },
            MoneyOp::Withdraw {
                customer: 1,
                amount: 0,
                key: 2,
            },
        ],
    ];
    for ops in cases {
        run_money_ops(ops.clone())
            .await
            .unwrap_or_else(|e| panic!("{ops:?}: {e}"));
    }
}
