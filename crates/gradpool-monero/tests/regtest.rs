//! Against a real `monerod --regtest` and real `monero-wallet-rpc`
//! processes (never mocked). The tests fail, not skip, when the binaries are
//! missing.

use gradpool_monero::rpc::{
    wallet_error, Subaddress, TransferOptions, TransferQuery, TransferType, TxStatus,
};
use gradpool_monero::{
    Address, Piconero, Regtest, RegtestError, TxHash, TxMetadata, WalletRpcProcess,
};
use std::path::Path;
use std::time::Instant;

const XMR: u64 = 1_000_000_000_000;
/// The Monero general fund's address: mining to it pays neither test wallet.
const DONATION: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// A chain, dropped before its directory.
struct Chain {
    regtest: Regtest,
    _dir: tempfile::TempDir,
}

async fn start_chain() -> Chain {
    if let Err(message) = Regtest::binaries_available() {
        panic!("these tests need monerod and monero-wallet-rpc: {message}");
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let regtest = Regtest::start(dir.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Chain { regtest, _dir: dir }
}

/// Blocks mined to wallet A before it spends. Coinbase outputs unlock after
/// 60 blocks, and a transaction needs rings of 16 unlocked outputs: after 70
/// blocks A has unlocked money but `transfer` fails with "not enough outputs
/// to use" (NOT_ENOUGH_OUTS_TO_MIX); 80 gives 20 unlocked coinbases.
const FUNDING_BLOCKS: u64 = 80;

/// Wallet A (funded with [`FUNDING_BLOCKS`] coinbases) in the chain's first
/// wallet RPC, wallet B (empty) in a second process.
async fn two_wallets(chain: &Chain) -> (Address, WalletRpcProcess) {
    let rt = &chain.regtest;
    // Wallet B's process starts while A's coinbases are mined.
    let fund_a = async {
        rt.wallet().create_wallet("a", "").await.unwrap();
        let a = rt.wallet().get_address().await.unwrap();
        let started = Instant::now();
        let mined = rt.mine(FUNDING_BLOCKS, &a).await.unwrap();
        eprintln!("mined {FUNDING_BLOCKS} blocks in {:?}", started.elapsed());
        (a, mined)
    };
    let start_b = async {
        let b = rt.spawn_wallet_rpc().await.unwrap();
        b.wallet().create_wallet("b", "").await.unwrap();
        b
    };
    let ((a, mined), b) = tokio::join!(fund_a, start_b);
    assert_eq!(mined.blocks.len() as u64, FUNDING_BLOCKS);
    // The genesis block is height 0: the chain has one block more.
    assert_eq!(mined.height, FUNDING_BLOCKS);
    assert_eq!(rt.daemon().get_height().await.unwrap(), FUNDING_BLOCKS + 1);
    assert_eq!(
        rt.daemon().get_block_count().await.unwrap(),
        FUNDING_BLOCKS + 1
    );

    let refresh = rt.wallet().refresh().await.unwrap();
    assert!(refresh.received_money);
    assert_eq!(rt.wallet().get_height().await.unwrap(), FUNDING_BLOCKS + 1);
    let balance = rt.wallet().get_balance().await.unwrap();
    assert!(balance.balance > Piconero::ZERO);
    assert!(balance.unlocked_balance > Piconero::ZERO, "{balance:?}");
    assert!(balance.unlocked_balance < balance.balance);
    // The coinbases are listed as incoming, typed `block`.
    let coinbases = rt
        .wallet()
        .get_transfers(&TransferQuery::incoming())
        .await
        .unwrap();
    assert_eq!(coinbases.incoming.len() as u64, FUNDING_BLOCKS);
    assert!(coinbases
        .incoming
        .iter()
        .all(|t| t.transfer_type == TransferType::Block && t.address == a));
    (a, b)
}

async fn incoming(wallet: &WalletRpcProcess) -> Vec<gradpool_monero::rpc::Transfer> {
    wallet.wallet().refresh().await.unwrap();
    wallet
        .wallet()
        .get_transfers(&TransferQuery::incoming_with_pool())
        .await
        .unwrap()
        .incoming
}

/// The wallet's incoming transfers once it has seen `txid` (a refresh can
/// return while the wallet's own background refresh still holds the new
/// block, so it is asked again, a bounded number of times).
async fn incoming_with(
    wallet: &WalletRpcProcess,
    txid: &gradpool_monero::TxHash,
) -> Vec<gradpool_monero::rpc::Transfer> {
    for _ in 0..50 {
        let transfers = incoming(wallet).await;
        if transfers.iter().any(|t| &t.txid == txid) {
            return transfers;
        }
    }
    incoming(wallet).await
}

/// One chain for every payment scenario: funding a wallet takes 80 blocks,
/// the slow part (RandomX hashes), so the scenarios share it.
#[tokio::test]
async fn payments_on_a_private_chain() {
    let started = Instant::now();
    let chain = start_chain().await;
    let (a, b) = two_wallets(&chain).await;
    eprintln!("chain and funded wallet ready in {:?}", started.elapsed());
    let first = a_prepared_transfer_pays_once_however_often_it_is_relayed(&chain, &a, &b).await;
    a_batch_transfer_pays_every_destination(&chain, &a, &b).await;
    relaying_again_after_a_wallet_rpc_crash_pays_once(chain, &a, b, first).await;
    eprintln!("payments took {:?}", started.elapsed());
}

async fn a_prepared_transfer_pays_once_however_often_it_is_relayed(
    chain: &Chain,
    a: &Address,
    b: &WalletRpcProcess,
) -> TxHash {
    let rt = &chain.regtest;
    let sub: Subaddress = b.wallet().create_address(Some("customer 1")).await.unwrap();
    assert_eq!(sub.index, 1);
    assert!(sub.address.is_subaddress());

    let amount = Piconero(3 * XMR / 2);
    let receipt = rt
        .wallet()
        .transfer(
            &[(sub.address.clone(), amount)],
            &TransferOptions::prepare_only(),
        )
        .await
        .unwrap();
    assert_eq!(receipt.amount, amount);
    assert!(receipt.fee > Piconero::ZERO);
    assert!(receipt.tx_blob.is_none());
    let metadata = receipt.tx_metadata.clone().expect("metadata was asked for");
    eprintln!("fee {} weight {}", receipt.fee, receipt.weight);

    // Not relayed: the daemon does not know it.
    let daemon = rt.daemon();
    assert_eq!(
        daemon.tx_status(&receipt.tx_hash).await.unwrap(),
        TxStatus::Unknown
    );

    let relayed = rt.wallet().relay_tx(&metadata).await.unwrap();
    assert_eq!(relayed, receipt.tx_hash);
    assert_eq!(
        daemon.tx_status(&receipt.tx_hash).await.unwrap(),
        TxStatus::InPool
    );

    // Relaying again while it is in the pool: the same hash, no error.
    let again = rt.wallet().relay_tx(&metadata).await;
    eprintln!("second relay (in the pool): {again:?}");
    assert_eq!(again.unwrap(), receipt.tx_hash);

    // B sees it in the pool after a refresh.
    b.wallet().refresh().await.unwrap();
    let pool = b
        .wallet()
        .get_transfers(&TransferQuery::incoming_with_pool())
        .await
        .unwrap();
    assert!(pool.incoming.is_empty());
    assert_eq!(pool.pool.len(), 1, "{pool:#?}");
    assert_eq!(pool.pool[0].transfer_type, TransferType::Pool);
    assert_eq!(pool.pool[0].amount, amount);
    assert_eq!((pool.pool[0].height, pool.pool[0].confirmations), (0, 0));

    let mined = rt.mine(1, a).await.unwrap();
    assert_eq!(
        daemon.tx_status(&receipt.tx_hash).await.unwrap(),
        TxStatus::InBlock {
            height: mined.height,
            confirmations: 1
        }
    );

    // Relaying again after it was mined: still the same hash, no error.
    let third = rt.wallet().relay_tx(&metadata).await;
    eprintln!("third relay (mined): {third:?}");
    assert_eq!(third.unwrap(), receipt.tx_hash);

    rt.mine(2, a).await.unwrap();
    let transfers = incoming(b).await;
    assert_eq!(transfers.len(), 1, "{transfers:#?}");
    let t = &transfers[0];
    assert_eq!(t.txid, receipt.tx_hash);
    assert_eq!(t.amount, amount);
    assert_eq!(t.transfer_type, TransferType::In);
    assert_eq!(t.subaddr_index.major, 0);
    assert_eq!(t.subaddr_index.minor, sub.index);
    assert_eq!(t.address, sub.address);
    assert_eq!(t.height, mined.height);
    // Mined in one block, two more on top: 3 confirmations.
    assert_eq!(t.confirmations, 3);
    assert!(t.locked, "a received output stays locked for 10 blocks");

    let by_txid = b
        .wallet()
        .get_transfer_by_txid(&receipt.tx_hash)
        .await
        .unwrap();
    assert_eq!(by_txid.len(), 1);
    assert_eq!(by_txid[0].amount, amount);

    let balance = b.wallet().get_balance().await.unwrap();
    assert_eq!(balance.balance, amount);
    assert_eq!(balance.unlocked_balance, Piconero::ZERO);
    assert_eq!(balance.per_subaddress.len(), 1);
    assert_eq!(balance.per_subaddress[0].address_index, sub.index);

    // A's side: one outgoing transfer of that hash, nothing pending.
    rt.wallet().refresh().await.unwrap();
    let out = rt
        .wallet()
        .get_transfers(&TransferQuery::outgoing())
        .await
        .unwrap();
    assert_eq!(out.outgoing.len(), 1, "{out:#?}");
    assert!(out.pending.is_empty() && out.failed.is_empty(), "{out:#?}");
    assert_eq!(out.outgoing[0].txid, receipt.tx_hash);
    assert_eq!(out.outgoing[0].amount, amount);
    assert_eq!(out.outgoing[0].fee, receipt.fee);
    assert_eq!(out.outgoing[0].destinations.len(), 1);
    assert_eq!(out.outgoing[0].destinations[0].address, sub.address);

    // Another wallet cannot relay A's metadata.
    let foreign = b.wallet().relay_tx(&metadata).await.unwrap_err();
    eprintln!("relay in another wallet: {foreign}");
    assert_eq!(foreign.code(), Some(wallet_error::GENERIC_TRANSFER_ERROR));

    // More blocks: still exactly one payment.
    rt.mine(5, a).await.unwrap();
    let transfers = incoming(b).await;
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].confirmations, 8);
    receipt.tx_hash
}

async fn a_batch_transfer_pays_every_destination(chain: &Chain, a: &Address, b: &WalletRpcProcess) {
    let rt = &chain.regtest;
    let mut destinations = Vec::new();
    for i in 1..=3u64 {
        let sub = b.wallet().create_address(None).await.unwrap();
        destinations.push((sub, Piconero(i * XMR / 10)));
    }
    let pay: Vec<(Address, Piconero)> = destinations
        .iter()
        .map(|(sub, amount)| (sub.address.clone(), *amount))
        .collect();
    let receipt = rt
        .wallet()
        .transfer(
            &pay,
            &TransferOptions {
                get_tx_hex: true,
                ..TransferOptions::relay()
            },
        )
        .await
        .unwrap();
    assert_eq!(receipt.amount, Piconero(6 * XMR / 10));
    assert!(receipt.tx_metadata.is_none());
    assert!(receipt
        .tx_blob
        .as_deref()
        .is_some_and(|hex| !hex.is_empty()));
    assert_eq!(
        rt.daemon().tx_status(&receipt.tx_hash).await.unwrap(),
        TxStatus::InPool
    );

    let mined = rt.mine(1, a).await.unwrap();
    let transfers: Vec<_> = incoming_with(b, &receipt.tx_hash)
        .await
        .into_iter()
        .filter(|t| t.txid == receipt.tx_hash)
        .collect();
    // One entry per receiving subaddress.
    assert_eq!(transfers.len(), 3, "{transfers:#?}");
    for (sub, amount) in &destinations {
        let paid: Vec<_> = transfers
            .iter()
            .filter(|t| t.subaddr_index.minor == sub.index)
            .collect();
        assert_eq!(paid.len(), 1, "subaddress {}", sub.index);
        assert_eq!(paid[0].amount, *amount);
        assert_eq!(paid[0].address, sub.address);
        assert_eq!(paid[0].height, mined.height);
        assert_eq!(paid[0].confirmations, 1);
    }
    // One subaddress only.
    let only = b
        .wallet()
        .get_transfers(&TransferQuery {
            incoming: true,
            subaddr_indices: vec![destinations[1].0.index],
            ..TransferQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(only.incoming.len(), 1);
    assert_eq!(only.incoming[0].amount, destinations[1].1);

    // B's money is all locked: spending it is refused with a typed error.
    let err = b
        .wallet()
        .transfer(
            &[(a.clone(), Piconero(XMR / 10))],
            &TransferOptions::relay(),
        )
        .await
        .unwrap_err();
    eprintln!("spending locked money: {err}");
    assert_eq!(
        err.code(),
        Some(wallet_error::NOT_ENOUGH_UNLOCKED_MONEY),
        "{err}"
    );
    // Far more than A has.
    let err = rt
        .wallet()
        .transfer(
            &[(a.clone(), Piconero(1_000_000 * XMR))],
            &TransferOptions::relay(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(wallet_error::NOT_ENOUGH_MONEY), "{err}");
}

/// Wallet A in its own process prepares and relays a payment, then the
/// process is killed (SIGKILL: A's file is as `close_wallet` saved it,
/// before this payment). A new process opens A and relays the stored
/// metadata again, once while the transaction is in the pool and once
/// after it was mined.
async fn relaying_again_after_a_wallet_rpc_crash_pays_once(
    chain: Chain,
    a: &Address,
    b: WalletRpcProcess,
    earlier_payment: TxHash,
) {
    let rt = &chain.regtest;
    let sub = b.wallet().create_address(None).await.unwrap();
    let amount = Piconero(XMR / 4);
    rt.wallet().close_wallet().await.unwrap();
    let payer = rt.spawn_wallet_rpc().await.unwrap();
    payer.wallet().open_wallet("a", "").await.unwrap();
    payer.wallet().refresh().await.unwrap();
    let receipt = payer
        .wallet()
        .transfer(
            &[(sub.address.clone(), amount)],
            &TransferOptions::prepare_only(),
        )
        .await
        .unwrap();
    // What the pool would store, as hex.
    let stored = receipt.tx_metadata.as_ref().unwrap().as_hex().to_string();
    payer
        .wallet()
        .relay_tx(receipt.tx_metadata.as_ref().unwrap())
        .await
        .unwrap();
    let pid = payer.pid();
    drop(payer);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "wallet RPC {pid} still there"
    );

    let recovered = rt.spawn_wallet_rpc().await.unwrap();
    recovered.wallet().open_wallet("a", "").await.unwrap();
    recovered.wallet().refresh().await.unwrap();
    let metadata = TxMetadata::from_hex(stored).unwrap();
    let again = recovered.wallet().relay_tx(&metadata).await;
    eprintln!("relay after the crash (in the pool): {again:?}");
    assert_eq!(again.unwrap(), receipt.tx_hash);

    rt.mine(1, a).await.unwrap();
    recovered.wallet().refresh().await.unwrap();
    // Once more after it was mined, in the reopened wallet that has seen
    // it in a block.
    let before = recovered.wallet().get_balance().await.unwrap();
    let late = recovered.wallet().relay_tx(&metadata).await;
    eprintln!("relay after the crash (mined): {late:?}");
    assert_eq!(late.unwrap(), receipt.tx_hash);
    let right_after = recovered.wallet().get_balance().await.unwrap();
    // A block that pays neither wallet.
    rt.mine(1, &Address::parse(DONATION).unwrap())
        .await
        .unwrap();
    recovered.wallet().refresh().await.unwrap();
    let after = recovered.wallet().get_balance().await.unwrap();
    eprintln!(
        "A's balance around the late relay: before {} / {} unlocked, right after {} / {}, a block later {} / {}",
        before.balance,
        before.unlocked_balance,
        right_after.balance,
        right_after.unlocked_balance,
        after.balance,
        after.unlocked_balance
    );
    // monero-wallet-rpc 0.18 counts the re-relayed transaction's change
    // again in `balance` (not in `unlocked_balance`), and keeps doing so.
    // WalletRpc::relay_tx documents this; if these fail, the wallet was
    // fixed: update that documentation.
    assert!(right_after.balance > before.balance);
    assert_eq!(right_after.unlocked_balance, before.unlocked_balance);
    assert_eq!(after.balance, right_after.balance);

    let paid: Vec<_> = incoming(&b)
        .await
        .into_iter()
        .filter(|t| t.subaddr_index.minor == sub.index)
        .collect();
    assert_eq!(paid.len(), 1, "{paid:#?}");
    assert_eq!(paid[0].amount, amount);
    assert_eq!(paid[0].txid, receipt.tx_hash);
    assert_eq!(paid[0].confirmations, 2);

    recovered.wallet().refresh().await.unwrap();
    let out = recovered
        .wallet()
        .get_transfers(&TransferQuery::outgoing())
        .await
        .unwrap();
    let ids = |list: &[gradpool_monero::rpc::Transfer]| -> Vec<TxHash> {
        let mut ids: Vec<TxHash> = list.iter().map(|t| t.txid.clone()).collect();
        ids.sort();
        ids
    };
    eprintln!(
        "A's lists after relaying a mined transaction: out {:?}, pending {:?}, failed {:?}",
        ids(&out.outgoing),
        ids(&out.pending),
        ids(&out.failed)
    );
    assert!(ids(&out.outgoing).contains(&earlier_payment));
    assert!(ids(&out.outgoing).contains(&receipt.tx_hash));
    // The wallet lists the re-relayed, already mined transaction under
    // `pending` as well (no money moves twice).
    assert_eq!(ids(&out.pending), vec![receipt.tx_hash.clone()]);

    // Dropping the chain kills the daemon and every wallet RPC.
    let pids = [
        rt.daemon_pid(),
        rt.wallet_process().pid(),
        recovered.pid(),
        b.pid(),
    ];
    drop(recovered);
    drop(b);
    drop(chain);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still there"
        );
    }
}

#[tokio::test]
async fn unknown_transactions_and_closed_wallets_are_typed() {
    let chain = start_chain().await;
    let rt = &chain.regtest;
    let unknown = TxHash::parse(&"ab".repeat(32)).unwrap();
    assert_eq!(
        rt.daemon().tx_status(&unknown).await.unwrap(),
        TxStatus::Unknown
    );
    let lookups = rt
        .daemon()
        .get_transactions(std::slice::from_ref(&unknown))
        .await
        .unwrap();
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].txid, unknown);

    // No wallet open yet.
    let err = rt.wallet().get_address().await.unwrap_err();
    assert_eq!(err.code(), Some(wallet_error::NOT_OPEN), "{err}");

    rt.wallet().create_wallet("w", "secret").await.unwrap();
    assert!(rt
        .wallet()
        .get_transfer_by_txid(&unknown)
        .await
        .unwrap()
        .is_empty());
    let err = rt.wallet().create_wallet("w", "").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(wallet_error::WALLET_ALREADY_EXISTS),
        "{err}"
    );
    rt.wallet().close_wallet().await.unwrap();
    let err = rt.wallet().open_wallet("w", "wrong").await.unwrap_err();
    eprintln!("wrong password: {err}");
    assert!(err.code().is_some(), "{err}");
    rt.wallet().open_wallet("w", "secret").await.unwrap();
    let bad = TxMetadata::from_hex("0102").unwrap();
    let err = rt.wallet().relay_tx(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some(wallet_error::BAD_TX_METADATA), "{err}");

    // A daemon that cannot start: its data directory is a file. The error
    // says so and quotes its logs.
    let blocked = tempfile::tempdir().unwrap();
    std::fs::write(blocked.path().join("monerod"), "not a directory").unwrap();
    let started = Instant::now();
    let err = Regtest::start(blocked.path()).await.unwrap_err();
    eprintln!(
        "a daemon that cannot start, after {:?}: {err}",
        started.elapsed()
    );
    assert!(matches!(err, RegtestError::Exited { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("monerod exited during startup"),
        "{message}"
    );
    assert!(message.contains("monerod.console.log"), "{message}");
    // The first chain still answers.
    assert!(rt.daemon().get_height().await.is_ok());
}
