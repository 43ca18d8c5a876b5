//! Money on a real private Monero chain: `monerod --regtest --offline` and
//! `monero-wallet-rpc` processes (see `gradpool_monero::Regtest`), never
//! mocked. Without the binaries these tests fail with a message saying how
//! to install them.
//!
//! The crash test runs the pool's payout in a child process (this test
//! binary again, running `crash_child`) and SIGKILLs it at a stage.

mod common;

use common::*;
use gradpool_core::state::PayoutStatus;
use gradpool_core::wire::*;
use gradpool_core::Piconero;
use gradpool_monero::rpc::{TransferOptions, TransferQuery};
use gradpool_monero::{Address, Network, Regtest, WalletRpcProcess};
use gradpool_pool::db::DatabaseUrl;
use gradpool_pool::wallet::{MoneroBackend, PayoutStage};
use gradpool_pool::{MoneyBackend, Pool, PoolConfig};
use std::collections::BTreeMap;
use std::path::Path;

const XMR: u64 = 1_000_000_000_000;
/// 36 XMR an hour: 10⁷ piconero a millisecond.
const RATE: Piconero = Piconero(36 * XMR);
const CONFIRMATIONS: u64 = 3;

struct Chain {
    regtest: Regtest,
    customer: WalletRpcProcess,
    provider: WalletRpcProcess,
    customer_address: Address,
    dir: tempfile::TempDir,
}

/// A chain with three wallets: the pool's (in the chain's own wallet RPC),
/// a funded customer's and an empty provider's.
async fn start_chain() -> Chain {
    if let Err(message) = Regtest::binaries_available() {
        panic!("these tests need monerod and monero-wallet-rpc: {message}");
    }
    let dir = tempfile::tempdir().unwrap();
    let regtest = Regtest::start(&dir.path().join("chain"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    regtest.wallet().create_wallet("pool", "").await.unwrap();
    let customer = regtest.spawn_wallet_rpc().await.unwrap();
    customer
        .wallet()
        .create_wallet("customer", "")
        .await
        .unwrap();
    let provider = regtest.spawn_wallet_rpc().await.unwrap();
    provider
        .wallet()
        .create_wallet("provider", "")
        .await
        .unwrap();
    let customer_address = customer.wallet().get_address().await.unwrap();
    // Coinbases unlock after 60 blocks; spending needs rings of 16.
    regtest.mine(80, &customer_address).await.unwrap();
    customer.wallet().refresh().await.unwrap();
    Chain {
        regtest,
        customer,
        provider,
        customer_address,
        dir,
    }
}

/// A pool on the regtest chain, in `data_dir`, on `database` (see
/// `common::test_database`).
fn monero_config(chain: &Chain, data_dir: &Path, database: Option<DatabaseUrl>) -> PoolConfig {
    let mut config = PoolConfig {
        data_dir: data_dir.to_owned(),
        lease_seconds: 5,
        heartbeat_seconds: 1,
        // Its test providers answer no hardware proof.
        hardware_proof: false,
        database,
        ..PoolConfig::default()
    };
    config.money.backend = MoneyBackend::Monero(MoneroBackend {
        wallet_rpc: chain.regtest.wallet_process().url().to_owned(),
        daemon_rpc: format!("http://{}", chain.regtest.daemon_address()),
        confirmations: CONFIRMATIONS,
        payout_threshold: Piconero(1),
        poll_seconds: 0,
    });
    config.money.network = Network::Mainnet;
    // No sampled audits: these jobs have no validator to serve them.
    config.verification.sampling.p_new = 0.0;
    config.verification.sampling.floor = 0.0;
    config
}

impl Chain {
    /// Mines `n` blocks (to the customer) and lets every wallet see them.
    async fn mine(&self, n: u64) {
        self.regtest.mine(n, &self.customer_address).await.unwrap();
        for w in [
            self.regtest.wallet(),
            self.customer.wallet(),
            self.provider.wallet(),
        ] {
            w.refresh().await.unwrap();
        }
    }

    /// The customer's wallet pays `amount` to `to` (relayed at once).
    async fn send(&self, to: &str, amount: u64) -> String {
        let to = Address::parse(to).unwrap();
        let receipt = self
            .customer
            .wallet()
            .transfer(&[(to, Piconero(amount))], &TransferOptions::relay())
            .await
            .unwrap();
        receipt.tx_hash.as_str().to_owned()
    }

    /// What the provider's wallet received, per subaddress index.
    /// What the provider's wallet received, by subaddress, once a block
    /// holds it: mines a block and looks, up to five times, until `n`
    /// subaddresses were paid (the relayed transaction may reach the
    /// daemon's pool just after a block was mined).
    async fn received_after_a_block(&self, n: usize) -> BTreeMap<u32, u64> {
        let mut received = BTreeMap::new();
        for _ in 0..5 {
            self.mine(1).await;
            received = self.provider_received().await;
            if received.len() >= n {
                break;
            }
        }
        received
    }

    async fn provider_received(&self) -> BTreeMap<u32, u64> {
        self.provider.wallet().refresh().await.unwrap();
        let mut out = BTreeMap::new();
        for t in self
            .provider
            .wallet()
            .get_transfers(&TransferQuery::incoming())
            .await
            .unwrap()
            .incoming
        {
            *out.entry(t.subaddr_index.minor).or_default() += t.amount.0;
        }
        out
    }
}

async fn assert_clean(pool: &Pool) {
    let report = pool.ledger().reconcile().await.unwrap();
    assert!(report.is_clean(), "ledger reconciliation:\n{report}");
}

/// The pool's ledger mirrors its real wallet: what the `wallet:monero`
/// account let out equals what the wallet holds.
async fn assert_wallet_mirrors_chain(pool: &Pool, chain: &Chain) {
    let ledger = pool
        .ledger()
        .balance(&gradpool_pool::ledger::LedgerAccountId::new(
            gradpool_pool::ledger::AccountKind::Wallet,
            "monero",
        ))
        .await
        .unwrap();
    chain.regtest.wallet().refresh().await.unwrap();
    let real = chain.regtest.wallet().get_balance().await.unwrap().balance;
    assert_eq!(
        -ledger, real.0 as i64,
        "ledger wallet account vs real wallet"
    );
}

/// Credits deposits until `expected` have been credited: the pool's wallet
/// may see a transfer's block one round late (it syncs from the daemon on
/// its own), so up to five rounds run, one block apart, as the pool's own
/// watcher would. Then nothing is credited twice.
async fn credited(tp: &TestPool, chain: &Chain, expected: usize) {
    let mut total = 0;
    for _ in 0..5 {
        total += tp.pool.watch_deposits().await.unwrap();
        if total >= expected {
            break;
        }
        chain.mine(1).await;
    }
    assert_eq!(total, expected, "deposits credited");
    assert_eq!(tp.pool.watch_deposits().await.unwrap(), 0, "credited twice");
}

/// Funds the customer `c` with `xmr` and the pool's fee account with 1 XMR,
/// both through real deposits, and waits for the pool to credit them.
async fn fund(tp: &TestPool, chain: &Chain, c: &Client, amount: u64) -> Vec<String> {
    let deposit: DepositAddress = c
        .post("/v1/account/deposit", &serde_json::json!({}))
        .await
        .ok();
    assert_eq!(deposit.confirmations, CONFIRMATIONS);
    let again: DepositAddress = c
        .post("/v1/account/deposit", &serde_json::json!({}))
        .await
        .ok();
    assert_eq!(again.address, deposit.address, "one subaddress per account");
    let fees = tp.pool.fee_deposit_address().await.unwrap();
    let t1 = chain.send(&deposit.address, amount).await;
    let t2 = chain.send(&fees.address, XMR).await;
    chain.mine(CONFIRMATIONS).await;
    credited(tp, chain, 2).await;
    vec![t1, t2]
}

/// Runs a three-segment job paid at [`RATE`] for `compute_ms` a segment.
async fn run_job(c: &Client, p: &TestProvider, budget: &str) -> JobView {
    let spec = format!("{SPEC}\n[budget]\ntotal_xmr = \"{budget}\"\n");
    let sha = c.upload(b"text for the job, long enough to train").await;
    let job: JobView = c
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: spec,
                data_sha256: sha,
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .ok();
    for n in 0..3u8 {
        let a = p.take().await;
        p.work_for(30);
        p.finish(&a, &[n, 7, 7, 7]).await;
    }
    let done = c.job(&job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    done
}

/// A provider paid 70/30 to the provider wallet's main address and a
/// subaddress of it.
async fn split_provider(tp: &TestPool, chain: &Chain) -> TestProvider {
    let main = chain.provider.wallet().get_address().await.unwrap();
    let investor = chain
        .provider
        .wallet()
        .create_address(Some("investor"))
        .await
        .unwrap();
    tp.provider_with("rig", |p| {
        p.price = RATE;
        p.compute_ms = 20;
        p.payout = vec![
            PayoutSplit {
                address: main.as_str().to_owned(),
                share: 70,
            },
            PayoutSplit {
                address: investor.address.as_str().to_owned(),
                share: 30,
            },
        ];
    })
    .await
}

#[tokio::test]
async fn deposits_are_credited_once_after_enough_confirmations() {
    let chain = start_chain().await;
    let tp = TestPool::start_with(|c| {
        let d = c.data_dir.clone();
        *c = monero_config(&chain, &d, c.database.clone());
    })
    .await;
    let c = tp.customer("alice").await;
    let deposit: DepositAddress = c
        .post("/v1/account/deposit", &serde_json::json!({}))
        .await
        .ok();
    assert!(Address::parse(&deposit.address).unwrap().is_subaddress());

    chain.send(&deposit.address, 2 * XMR).await;
    // In the pool, then one and two confirmations: not yet.
    assert_eq!(tp.pool.watch_deposits().await.unwrap(), 0);
    for _ in 0..CONFIRMATIONS - 1 {
        chain.mine(1).await;
        assert_eq!(tp.pool.watch_deposits().await.unwrap(), 0);
        let b: Balance = c.get("/v1/account/balance").await.ok();
        assert_eq!(b.available, Piconero::ZERO);
    }
    chain.mine(1).await;
    assert_eq!(tp.pool.watch_deposits().await.unwrap(), 1);
    // Seen again (and after more blocks): credited once.
    assert_eq!(tp.pool.watch_deposits().await.unwrap(), 0);
    chain.mine(2).await;
    assert_eq!(tp.pool.watch_deposits().await.unwrap(), 0);
    let b: Balance = c.get("/v1/account/balance").await.ok();
    assert_eq!(b.available, Piconero(2 * XMR));
    assert_eq!(b.backend, "monero");

    // The faucet is a dev pool's only; wrong-network addresses are refused.
    let e = c
        .post(
            "/v1/account/faucet",
            &Faucet {
                amount: Piconero(1),
            },
        )
        .await
        .err(503);
    assert!(e.message.contains("deposit"), "{}", e.message);

    // A provider funds its stake from outside: its own subaddress, credited
    // to the stake (not to its earnings) after the same confirmations.
    let p = tp.provider("rig").await;
    let stake = |action: StakeAction| {
        let tp = &tp;
        let p = &p;
        async move {
            let signed_nonce = signed_nonce(tp, p, "stake").await;
            tp.anon()
                .post(
                    "/v1/providers/stake",
                    &StakeRequest {
                        signed_nonce,
                        action,
                    },
                )
                .await
                .ok::<Earnings>()
        }
    };
    let e = stake(StakeAction::Deposit).await;
    let stake_address = e.stake_deposit_address.clone().expect("a stake address");
    assert!(Address::parse(&stake_address).unwrap().is_subaddress());
    assert_ne!(stake_address, deposit.address);
    assert_eq!(
        stake(StakeAction::Deposit).await.stake_deposit_address,
        Some(stake_address.clone()),
        "one stake subaddress per provider"
    );
    // The customer's change from its deposit unlocks after 10 blocks.
    chain.mine(10).await;
    chain.send(&stake_address, XMR / 4).await;
    chain.mine(CONFIRMATIONS).await;
    credited(&tp, &chain, 1).await;
    let e = earnings(&tp, &p).await;
    assert_eq!(e.stake, Piconero(XMR / 4));
    assert_eq!(e.available, Piconero::ZERO);
    assert_eq!(e.stake_deposit_address, Some(stake_address));
    assert_clean(&tp.pool).await;
    assert_wallet_mirrors_chain(&tp.pool, &chain).await;
}

#[tokio::test]
async fn a_job_pays_its_provider_on_chain_exactly() {
    let chain = start_chain().await;
    let tp = TestPool::start_with(|c| {
        let d = c.data_dir.clone();
        *c = monero_config(&chain, &d, c.database.clone());
    })
    .await;
    let c = tp.customer("alice").await;
    fund(&tp, &chain, &c, 2 * XMR).await;
    let p = split_provider(&tp, &chain).await;
    let job = run_job(&c, &p, "0.1").await;
    let earned = earnings(&tp, &p).await.available.0;
    assert!(earned > 0);
    assert_eq!(job.spent.0 * 97 / 100, earned, "3% fees off the price");

    // Deposits need 10 blocks before the pool's wallet can spend them.
    chain.mine(10).await;
    let report = tp.pool.pay_out(&|_| {}).await.unwrap();
    assert_eq!(report.relayed.len(), 1);
    let received = chain.received_after_a_block(2).await;
    let investor = earned * 30 / 100;
    assert_eq!(received.get(&1).copied(), Some(investor));
    assert_eq!(received.get(&0).copied(), Some(earned - investor));
    let e = earnings(&tp, &p).await;
    assert_eq!(e.available, Piconero::ZERO);
    assert_eq!(e.paid, Piconero(earned));
    assert!(e.payouts.iter().all(|p| p.status == PayoutStatus::Relayed));
    // Nothing more is due: another round pays nothing.
    assert!(tp.pool.pay_out(&|_| {}).await.unwrap().relayed.is_empty());

    // A withdrawal goes out the same way.
    let to = chain
        .customer
        .wallet()
        .create_address(Some("back"))
        .await
        .unwrap();
    let w: PayoutView = c
        .post(
            "/v1/account/withdraw",
            &Withdraw {
                to: to.address.as_str().to_owned(),
                amount: Piconero(XMR / 2),
                idempotency_key: "w1".into(),
            },
        )
        .await
        .ok();
    assert_eq!(w.status, PayoutStatus::Reserved);
    assert_eq!(tp.pool.pay_out(&|_| {}).await.unwrap().relayed.len(), 1);
    chain.mine(1).await;
    let back: u64 = chain
        .customer
        .wallet()
        .get_transfers(&TransferQuery::incoming())
        .await
        .unwrap()
        .incoming
        .iter()
        .filter(|t| t.subaddr_index.minor == to.index)
        .map(|t| t.amount.0)
        .sum();
    assert_eq!(back, XMR / 2);
    assert_clean(&tp.pool).await;
    assert_wallet_mirrors_chain(&tp.pool, &chain).await;
}

/// A payout round right after another, while the wallet's change is still
/// locked, neither hangs nor fails: a withdrawal larger than the unlocked
/// balance waits, no provider payout is reserved beyond it, and later
/// rounds pay them as the change unlocks (one transaction per unlock, since
/// each leaves only locked change).
#[tokio::test]
async fn a_round_while_the_change_is_locked_waits_and_pays_later() {
    let chain = start_chain().await;
    let tp = TestPool::start_with(|c| {
        let d = c.data_dir.clone();
        *c = monero_config(&chain, &d, c.database.clone());
    })
    .await;
    let c = tp.customer("alice").await;
    // One deposit: the pool's wallet holds a single output, so a payout
    // leaves nothing unlocked until its change unlocks. The pool's fees
    // (2% of what the jobs spend) pay the network fees.
    let deposit: DepositAddress = c
        .post("/v1/account/deposit", &serde_json::json!({}))
        .await
        .ok();
    chain.send(&deposit.address, 2 * XMR).await;
    chain.mine(CONFIRMATIONS).await;
    credited(&tp, &chain, 1).await;
    chain.mine(10).await;
    let main = chain.provider.wallet().get_address().await.unwrap();
    let p = tp
        .provider_with("rig", |p| {
            // 10¹⁰ piconero a millisecond: 0.2 XMR a segment.
            p.price = Piconero(36_000 * XMR);
            p.compute_ms = 20;
            p.payout = vec![PayoutSplit {
                address: main.as_str().to_owned(),
                share: 1,
            }];
        })
        .await;
    run_job(&c, &p, "0.7").await;
    let first = tp.pool.pay_out(&|_| {}).await.unwrap();
    assert_eq!(first.relayed.len(), 1, "{first:?}");
    chain.mine(1).await;

    // Now everything the wallet has is change, locked for ten blocks.
    let locked = chain.regtest.wallet().get_balance().await.unwrap();
    assert_eq!(locked.unlocked_balance, Piconero::ZERO, "{locked:?}");
    let to = chain.customer.wallet().get_address().await.unwrap();
    let w: PayoutView = c
        .post(
            "/v1/account/withdraw",
            &Withdraw {
                to: to.as_str().to_owned(),
                amount: Piconero(XMR / 4),
                idempotency_key: "w1".into(),
            },
        )
        .await
        .ok();
    run_job(&c, &p, "0.7").await;
    let due = earnings(&tp, &p).await.available;
    assert!(due > Piconero::ZERO);
    let round = tp.pool.pay_out(&|_| {}).await.unwrap();
    assert!(round.relayed.is_empty(), "{round:?}");
    assert_eq!(round.waiting, vec![w.id.clone()]);
    assert_eq!(
        earnings(&tp, &p).await.available,
        due,
        "nothing reserved beyond the unlocked balance"
    );
    assert_clean(&tp.pool).await;

    // The change unlocks: the withdrawal goes, which locks the change again.
    chain.mine(10).await;
    let round = tp.pool.pay_out(&|_| {}).await.unwrap();
    assert_eq!(round.relayed.len(), 1, "{round:?}");
    assert!(round.waiting.is_empty());
    assert_eq!(earnings(&tp, &p).await.available, due);
    // Ten blocks more: the provider.
    chain.mine(10).await;
    let round = tp.pool.pay_out(&|_| {}).await.unwrap();
    assert_eq!(round.relayed.len(), 1, "{round:?}");
    chain.mine(1).await;
    let e = earnings(&tp, &p).await;
    assert_eq!(e.available, Piconero::ZERO);
    assert!(e.payouts.iter().all(|p| p.status == PayoutStatus::Relayed));
    assert_clean(&tp.pool).await;
    assert_wallet_mirrors_chain(&tp.pool, &chain).await;
}

/// The child side of the crash test: runs one payout round on the pool in
/// `GRADPOOL_CRASH_DIR` and stops dead (until killed) at the stage named by
/// `GRADPOOL_CRASH_AT`. Run only by that test, as `--ignored`.
#[tokio::test]
#[ignore = "the child process of a_payout_killed_before_or_after_relaying_pays_exactly_once"]
async fn crash_child() {
    let (Ok(dir), Ok(at), Ok(config)) = (
        std::env::var("GRADPOOL_CRASH_DIR"),
        std::env::var("GRADPOOL_CRASH_AT"),
        std::env::var("GRADPOOL_CRASH_CONFIG"),
    ) else {
        panic!("crash_child runs only as the crash test's child process");
    };
    let parts: Vec<&str> = config.split(' ').collect();
    let database = std::env::var("GRADPOOL_CRASH_DATABASE")
        .ok()
        .map(|url| DatabaseUrl::parse(&url).unwrap());
    let mut config = PoolConfig {
        data_dir: dir.clone().into(),
        hardware_proof: false,
        database,
        ..PoolConfig::default()
    };
    config.money.backend = MoneyBackend::Monero(MoneroBackend {
        wallet_rpc: parts[0].to_owned(),
        daemon_rpc: parts[1].to_owned(),
        confirmations: CONFIRMATIONS,
        payout_threshold: Piconero(1),
        poll_seconds: 0,
    });
    let pool = Pool::open(config).await.unwrap();
    let stage = if at == "built" {
        PayoutStage::Built
    } else {
        PayoutStage::Relayed
    };
    pool.pay_out(&|s| {
        if s == stage {
            use std::io::Write;
            // The parent reads this line, then kills this process.
            let mut out = std::io::stdout();
            writeln!(out, "{CRASH_POINT}").unwrap();
            out.flush().unwrap();
            loop {
                std::thread::park();
            }
        }
    })
    .await
    .unwrap();
    panic!("the payout never reached the stage {at}");
}

/// What the crash child prints when it stops at its stage.
const CRASH_POINT: &str = "gradpool-crash-point-reached";

/// Runs a payout in a child process and SIGKILLs it at `at`.
async fn pay_out_and_die(chain: &Chain, tp: &TestPool, at: &str) {
    let data_dir = &tp.pool.config().data_dir;
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    if let Some(database) = &tp.pool.config().database {
        command.env("GRADPOOL_CRASH_DATABASE", database.as_str());
    }
    let mut child = command
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env("GRADPOOL_CRASH_DIR", data_dir)
        .env("GRADPOOL_CRASH_AT", at)
        .env(
            "GRADPOOL_CRASH_CONFIG",
            format!(
                "{} http://{}",
                chain.regtest.wallet_process().url(),
                chain.regtest.daemon_address()
            ),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait on the child's own word that it stopped at the stage (its
    // stdout closes, and this fails, if it exits first).
    let stdout = child.stdout.take().unwrap();
    let reached = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(CRASH_POINT))
    })
    .await
    .unwrap();
    assert!(
        reached,
        "the child exited before {at}: {:?}",
        child.try_wait()
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test]
async fn a_payout_killed_before_or_after_relaying_pays_exactly_once() {
    let chain = start_chain().await;
    let data_dir = chain.dir.path().join("pool");
    let tp =
        TestPool::start_with(|c| *c = monero_config(&chain, &data_dir, c.database.clone())).await;
    let c = tp.customer("alice").await;
    fund(&tp, &chain, &c, 2 * XMR).await;
    chain.mine(10).await;
    let p = split_provider(&tp, &chain).await;
    let mut expected = 0;

    for at in ["built", "relayed"] {
        run_job(&c, &p, "0.1").await;
        let earned = earnings(&tp, &p).await.available.0;
        expected += earned;
        pay_out_and_die(&chain, &tp, at).await;
        // After the restart (this process opens the same database), the
        // payout is finished, not repeated.
        let after = tp.pool.pay_out(&|_| {}).await.unwrap();
        assert_eq!(after.relayed.len(), 1, "{at}: {after:?}");
        assert!(tp.pool.pay_out(&|_| {}).await.unwrap().relayed.is_empty());
        chain.mine(10).await;
        let received: u64 = chain.provider_received().await.values().sum();
        assert_eq!(received, expected, "after a crash at {at}");
        let e = earnings(&tp, &p).await;
        assert_eq!(e.available, Piconero::ZERO);
        assert_eq!(e.paid, Piconero(expected));
    }
    assert_clean(&tp.pool).await;
    assert_wallet_mirrors_chain(&tp.pool, &chain).await;
}
