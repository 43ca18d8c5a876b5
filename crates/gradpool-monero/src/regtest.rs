//! A private Monero chain for tests and local runs: `monerod --regtest`
//! plus `monero-wallet-rpc` processes, on free local ports, killed on drop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use gradpool_monero::regtest::Regtest;
//! let dir = std::env::temp_dir().join("chain");
//! let chain = Regtest::start(&dir).await?;
//! chain.wallet().create_wallet("pool", "").await?;
//! let pool = chain.wallet().get_address().await?;
//! chain.mine(70, &pool).await?; // coinbase unlocks after 60 blocks
//! chain.wallet().refresh().await?;
//! // A second wallet needs its own wallet RPC process:
//! let customer = chain.spawn_wallet_rpc().await?;
//! customer.wallet().create_wallet("customer", "").await?;
//! # Ok(()) }
//! ```
//!
//! Layout of `dir`: `monerod/` (the chain), `monerod.log` and
//! `monerod.console.log`, `wallets/` (every wallet RPC's `--wallet-dir`),
//! `ringdb/`, and `wallet-rpc-N.log` / `wallet-rpc-N.console.log` per wallet
//! RPC process.
//!
//! The processes are killed (SIGKILL, then reaped) when their handle is
//! dropped. They stay in the caller's process group, so a Ctrl-C that kills
//! the test binary before its destructors run also stops them.

use crate::address::Address;
use crate::rpc::{DaemonRpc, GeneratedBlocks, RpcError, WalletRpc};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long `monerod` or a wallet RPC may take to answer after it starts.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

const MONEROD: &str = "monerod";
const WALLET_RPC: &str = "monero-wallet-rpc";
/// Attempts to start a process, with fresh ports each time (another
/// process may take a port between choosing it and binding it).
const START_ATTEMPTS: usize = 3;
/// Lines of each log file quoted in a startup error.
const LOG_TAIL_LINES: usize = 15;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why a regtest chain or a wallet RPC could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RegtestError {
    /// `monerod` or `monero-wallet-rpc` is not installed.
    #[error("{0}")]
    MissingBinaries(String),
    /// A file or directory could not be prepared.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No free local port could be found.
    #[error("could not pick a free local port: {0}")]
    NoPort(#[source] io::Error),
    /// The program could not be started.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The program exited before it answered.
    #[error("{program} exited during startup ({status}); the end of its logs:\n{log_tail}")]
    Exited {
        /// The program.
        program: &'static str,
        /// Its exit status.
        status: String,
        /// The last lines of its log files.
        log_tail: String,
    },
    /// The program did not answer in time.
    #[error(
        "{program} did not answer at {url} within {} s; the end of its logs:\n{log_tail}",
        timeout.as_secs()
    )]
    Timeout {
        /// The program.
        program: &'static str,
        /// Where it was asked.
        url: String,
        /// How long it was given.
        timeout: Duration,
        /// The last lines of its log files.
        log_tail: String,
    },
    /// A client could not be built.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// A running `monerod --regtest` with one wallet RPC.
///
/// A `monero-wallet-rpc` has at most one wallet open at a time, so the
/// pool's wallet, a customer's and each provider's need a process each:
/// [`Regtest::wallet`] is the first, [`Regtest::spawn_wallet_rpc`] starts
/// more against the same daemon.
///
/// Dropping it kills the wallet RPC and the daemon (kill, then wait).
/// Drop the handles of extra wallet RPCs before or with it.
#[derive(Debug)]
pub struct Regtest {
    // Dropped in this order: the wallet RPC before the daemon.
    wallet: WalletRpcProcess,
    daemon_process: Guard,
    daemon: DaemonRpc,
    daemon_port: u16,
    dir: PathBuf,
    wallet_rpcs: AtomicUsize,
}

/// A running `monero-wallet-rpc`, killed (and reaped) on drop.
///
/// The kill is a SIGKILL: the open wallet is not saved. Call
/// [`WalletRpc::close_wallet`] or [`WalletRpc::store`] first when its file
/// must be current (to open it again in another process).
#[derive(Debug)]
pub struct WalletRpcProcess {
    client: WalletRpc,
    port: u16,
    log: PathBuf,
    process: Guard,
}

impl Regtest {
    /// `Ok` when `monerod` and `monero-wallet-rpc` are on `PATH`; otherwise
    /// a message naming what is missing and how to install it.
    pub fn binaries_available() -> Result<(), String> {
        binaries_on(std::env::var_os("PATH").as_deref())
    }

    /// Starts `monerod --regtest --offline --fixed-difficulty 1` with its
    /// data in `dir` (created if needed) and one wallet RPC, on free local
    /// ports, and waits until both answer (at most [`STARTUP_TIMEOUT`]
    /// each). A failure quotes the end of the process's logs.
    pub async fn start(dir: &Path) -> Result<Regtest, RegtestError> {
        Regtest::binaries_available().map_err(RegtestError::MissingBinaries)?;
        create_dir(dir)?;
        let dir = dir.canonicalize().map_err(|source| RegtestError::Io {
            what: "could not resolve",
            path: dir.to_path_buf(),
            source,
        })?;
        create_dir(&dir.join("wallets"))?;
        create_dir(&dir.join("ringdb"))?;

        let mut attempt = 0;
        let (daemon_process, daemon, daemon_port) = loop {
            attempt += 1;
            match start_daemon(&dir).await {
                Ok(started) => break started,
                Err(RegtestError::Exited { ref log_tail, .. })
                    if attempt < START_ATTEMPTS && port_clash(log_tail) =>
                {
                    tracing::warn!(
                        attempt,
                        "monerod could not bind its ports; retrying on others"
                    );
                }
                Err(e) => return Err(e),
            }
        };
        let wallet = start_wallet_rpc(&dir, daemon_port, 0).await?;
        tracing::info!(
            daemon = daemon.url(),
            wallet = wallet.client.url(),
            "regtest chain started"
        );
        Ok(Regtest {
            wallet,
            daemon_process,
            daemon,
            daemon_port,
            dir,
            wallet_rpcs: AtomicUsize::new(1),
        })
    }

    /// The daemon's client.
    pub fn daemon(&self) -> &DaemonRpc {
        &self.daemon
    }

    /// The first wallet RPC's client (no wallet open until you create or
    /// open one).
    pub fn wallet(&self) -> &WalletRpc {
        &self.wallet.client
    }

    /// The first wallet RPC's process handle.
    pub fn wallet_process(&self) -> &WalletRpcProcess {
        &self.wallet
    }

    /// `127.0.0.1:PORT` of the daemon's RPC, as `--daemon-address` takes it.
    pub fn daemon_address(&self) -> String {
        format!("127.0.0.1:{}", self.daemon_port)
    }

    /// The daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon_process.child.id()
    }

    /// The directory holding the chain, the wallets and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The wallet directory shared by every wallet RPC of this chain (two
    /// processes must not open the same wallet file).
    pub fn wallet_dir(&self) -> PathBuf {
        self.dir.join("wallets")
    }

    /// Mines `blocks` blocks to `to` (`generateblocks`). Coinbase outputs
    /// unlock 60 blocks later; wallets see the blocks after a `refresh`.
    pub async fn mine(&self, blocks: u64, to: &Address) -> Result<GeneratedBlocks, RpcError> {
        self.daemon.generate_blocks(blocks, to).await
    }

    /// Starts another `monero-wallet-rpc` against this chain's daemon, with
    /// the same wallet directory, and waits until it answers.
    pub async fn spawn_wallet_rpc(&self) -> Result<WalletRpcProcess, RegtestError> {
        let n = self.wallet_rpcs.fetch_add(1, Ordering::Relaxed);
        start_wallet_rpc(&self.dir, self.daemon_port, n).await
    }
}

impl WalletRpcProcess {
    /// The client.
    pub fn wallet(&self) -> &WalletRpc {
        &self.client
    }

    /// The RPC's root URL.
    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// The RPC's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The wallet RPC's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// A child process that is killed and reaped on drop.
#[derive(Debug)]
struct Guard {
    program: &'static str,
    child: Child,
    logs: Vec<PathBuf>,
}

impl Guard {
    fn log_tail(&self) -> String {
        self.logs
            .iter()
            .map(|path| format!("--- {}\n{}", path.display(), tail(path, LOG_TAIL_LINES)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = self.child.id();
        // Already exited (kill fails then): wait still reaps it.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => tracing::debug!(program = self.program, pid, %status, "stopped"),
            Err(e) => tracing::warn!(program = self.program, pid, error = %e, "could not reap"),
        }
    }
}

async fn start_daemon(dir: &Path) -> Result<(Guard, DaemonRpc, u16), RegtestError> {
    let [rpc_port, p2p_port] = free_ports()?;
    let data_dir = dir.join("monerod");
    let log = dir.join("monerod.log");
    let console = dir.join("monerod.console.log");
    let args: Vec<String> = vec![
        "--regtest".into(),
        "--offline".into(),
        "--fixed-difficulty".into(),
        "1".into(),
        "--data-dir".into(),
        path_arg(&data_dir),
        "--rpc-bind-ip".into(),
        "127.0.0.1".into(),
        "--rpc-bind-port".into(),
        rpc_port.to_string(),
        "--p2p-bind-ip".into(),
        "127.0.0.1".into(),
        "--p2p-bind-port".into(),
        p2p_port.to_string(),
        "--no-zmq".into(),
        "--no-igd".into(),
        "--non-interactive".into(),
        "--check-updates".into(),
        "disabled".into(),
        // Plain HTTP on 127.0.0.1; autodetect would make a certificate at
        // every start (about a second).
        "--rpc-ssl".into(),
        "disabled".into(),
        "--disable-dns-checkpoints".into(),
        // Tests ask on purpose for things that fail; do not ban 127.0.0.1.
        "--disable-rpc-ban".into(),
        "--log-level".into(),
        "0".into(),
        "--log-file".into(),
        path_arg(&log),
    ];
    let mut guard = spawn(MONEROD, &args, &console, vec![console.clone(), log])?;
    let client = DaemonRpc::new(&format!("http://127.0.0.1:{rpc_port}"))?;
    let probe = client.clone();
    wait_until_ready(&mut guard, client.url(), || {
        let probe = probe.clone();
        async move { probe.get_height().await.is_ok() }
    })
    .await?;
    Ok((guard, client, rpc_port))
}

async fn start_wallet_rpc(
    dir: &Path,
    daemon_port: u16,
    n: usize,
) -> Result<WalletRpcProcess, RegtestError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_wallet_rpc_once(dir, daemon_port, n).await {
            Err(RegtestError::Exited { ref log_tail, .. })
                if attempt < START_ATTEMPTS && port_clash(log_tail) =>
            {
                tracing::warn!(
                    attempt,
                    "monero-wallet-rpc could not bind its port; retrying on another"
                );
            }
            result => return result,
        }
    }
}

async fn start_wallet_rpc_once(
    dir: &Path,
    daemon_port: u16,
    n: usize,
) -> Result<WalletRpcProcess, RegtestError> {
    let [port] = free_ports()?;
    let log = dir.join(format!("wallet-rpc-{n}.log"));
    let console = dir.join(format!("wallet-rpc-{n}.console.log"));
    // No network flag: a regtest chain uses mainnet addresses, and
    // --testnet would make the wallet refuse them.
    let args: Vec<String> = vec![
        "--daemon-address".into(),
        format!("127.0.0.1:{daemon_port}"),
        "--trusted-daemon".into(),
        "--rpc-bind-ip".into(),
        "127.0.0.1".into(),
        "--rpc-bind-port".into(),
        port.to_string(),
        "--disable-rpc-login".into(),
        "--rpc-ssl".into(),
        "disabled".into(),
        "--daemon-ssl".into(),
        "disabled".into(),
        "--wallet-dir".into(),
        path_arg(&dir.join("wallets")),
        // Keep the ring database out of ~/.shared-ringdb: every regtest
        // chain has mainnet's genesis, so their rings would mix there.
        "--shared-ringdb-dir".into(),
        path_arg(&dir.join("ringdb")),
        "--non-interactive".into(),
        "--log-level".into(),
        "0".into(),
        "--log-file".into(),
        path_arg(&log),
    ];
    let mut guard = spawn(
        WALLET_RPC,
        &args,
        &console,
        vec![console.clone(), log.clone()],
    )?;
    let client = WalletRpc::new(&format!("http://127.0.0.1:{port}"))?;
    let probe = client.clone();
    wait_until_ready(&mut guard, client.url(), || {
        let probe = probe.clone();
        async move { probe.get_version().await.is_ok() }
    })
    .await?;
    Ok(WalletRpcProcess {
        client,
        port,
        log,
        process: guard,
    })
}

fn spawn(
    program: &'static str,
    args: &[String],
    console: &Path,
    logs: Vec<PathBuf>,
) -> Result<Guard, RegtestError> {
    let io_error = |what, source| RegtestError::Io {
        what,
        path: console.to_path_buf(),
        source,
    };
    let out = fs::File::create(console).map_err(|e| io_error("could not create", e))?;
    let err = out.try_clone().map_err(|e| io_error("could not open", e))?;
    let binary = find_on_path(program).unwrap_or_else(|| PathBuf::from(program));
    tracing::debug!(program, ?args, "starting");
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| RegtestError::Spawn { program, source })?;
    Ok(Guard {
        program,
        child,
        logs,
    })
}

/// Polls `ready` until it says yes, the process exits, or the timeout.
async fn wait_until_ready<F, Fut>(
    guard: &mut Guard,
    url: &str,
    ready: F,
) -> Result<(), RegtestError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            return Err(RegtestError::Exited {
                program: guard.program,
                status: status.to_string(),
                log_tail: guard.log_tail(),
            });
        }
        if ready().await {
            tracing::debug!(program = guard.program, elapsed = ?started.elapsed(), "ready");
            return Ok(());
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            return Err(RegtestError::Timeout {
                program: guard.program,
                url: url.to_string(),
                timeout: STARTUP_TIMEOUT,
                log_tail: guard.log_tail(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `N` distinct free local ports: bound to port 0 together, then released.
fn free_ports<const N: usize>() -> Result<[u16; N], RegtestError> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(RegtestError::NoPort)?;
        *port = listener.local_addr().map_err(RegtestError::NoPort)?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

fn create_dir(path: &Path) -> Result<(), RegtestError> {
    fs::create_dir_all(path).map_err(|source| RegtestError::Io {
        what: "could not create",
        path: path.to_path_buf(),
        source,
    })
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn binaries_on(path: Option<&OsStr>) -> Result<(), String> {
    let missing: Vec<&str> = [MONEROD, WALLET_RPC]
        .into_iter()
        .filter(|name| find_on(path, name).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not found on PATH: install them with apt-get install -y monero",
            missing.join(" and ")
        ))
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    find_on(std::env::var_os("PATH").as_deref(), name)
}

/// The first executable file `name` in the directories of `path`.
fn find_on(path: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether a startup log says a port was taken (another process bound it
/// between our choosing it and the program binding it).
fn port_clash(log_tail: &str) -> bool {
    let log = log_tail.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("failed to bind")
}

/// The last `lines` lines of a file, colour codes removed (or why it could
/// not be read).
fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = strip_ansi(&String::from_utf8_lossy(&bytes));
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(could not read: {e})"),
    }
}

/// Removes terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports().unwrap();
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&path, 2), "3\n4");
        assert_eq!(tail(&path, 10), "1\n2\n3\n4");
        assert!(tail(&dir.path().join("nope"), 2).starts_with("(could not read"));
        fs::write(
            &path,
            "\u{1b}[0;36m2026 I Binding\n\u{1b}[0m\u{1b}[0;31mE boom\n",
        )
        .unwrap();
        assert_eq!(tail(&path, 5), "2026 I Binding\nE boom");
    }

    #[test]
    fn port_clashes_are_recognised() {
        assert!(port_clash("E Failed to bind server"));
        assert!(port_clash("bind: Address already in use"));
        assert!(!port_clash("Not a directory"));
    }

    #[test]
    fn missing_binaries_say_how_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let msg = binaries_on(Some(empty.path().as_os_str())).unwrap_err();
        assert_eq!(
            msg,
            "monerod and monero-wallet-rpc not found on PATH: install them with apt-get install -y monero"
        );
        assert!(binaries_on(None).is_err());

        // One of the two, executable; a non-executable file does not count.
        use std::os::unix::fs::PermissionsExt;
        let monerod = empty.path().join(MONEROD);
        fs::write(&monerod, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&monerod, fs::Permissions::from_mode(0o755)).unwrap();
        let wallet = empty.path().join(WALLET_RPC);
        fs::write(&wallet, "").unwrap();
        fs::set_permissions(&wallet, fs::Permissions::from_mode(0o644)).unwrap();
        let msg = binaries_on(Some(empty.path().as_os_str())).unwrap_err();
        assert!(
            msg.starts_with("monero-wallet-rpc not found on PATH"),
            "{msg}"
        );
        fs::set_permissions(&wallet, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(binaries_on(Some(empty.path().as_os_str())).is_ok());
    }
}
