//! A throwaway PostgreSQL cluster for `gradpool devnet --postgres`,
//! `gradpool bench pool --database postgres` and the tests: Debian's
//! `initdb` and `pg_ctl` (package `postgresql`) in a temporary directory of
//! its own, listening on 127.0.0.1 only, stopped and removed when dropped.
//! As root it runs as the package's `postgres` user, since the server
//! refuses to run as root.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

impl Cluster {
    /// Makes a cluster in a new temporary directory and starts it on a
    /// free port.
    pub fn start() -> anyhow::Result<Cluster> {
        let bin = server_bin()?;
        let tmp = tempfile::Builder::new()
            .prefix("gradpool-postgres-")
            .tempdir()
            .context("cannot make a directory for the cluster")?;
        let dir = tmp.path();
        let data = dir.join("data");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(dir))?;
        }
        run(as_owner(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data))
        .context("initdb failed")?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c max_wal_size=64MB -c min_wal_size=32MB \
             -c max_connections=200",
            dir.display()
        );
        run(as_owner(&bin.join("pg_ctl"))
            .args(["-w", "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "start"]))
        .with_context(|| format!("pg_ctl start failed (see {})", dir.join("log").display()))?;
        Ok(Cluster {
            bin,
            data,
            _dir: tmp,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .args(["-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// The newest server's binaries under /usr/lib/postgresql.
fn server_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server here (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install postgresql"
        ),
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::current().is_root()
}

/// `program`, run as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let out = c
        .output()
        .with_context(|| format!("cannot run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}: {}",
            c.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}
