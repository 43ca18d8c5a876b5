//! Where the customer commands find their pool and API key.
//!
//! In order: `--pool` / `--api-key` flags, the `GRADPOOL_POOL` /
//! `GRADPOOL_API_KEY` environment variables, then the credentials file that
//! `gradpool account create` writes (`$GRADPOOL_HOME/credentials.toml`,
//! `~/.gradpool/credentials.toml` by default, mode 0600).

use anyhow::{bail, Context};
use clap::Args;
use gradpool_client::Api;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub pool: String,
    pub account_id: String,
    pub api_key: String,
}

/// The flags every customer command takes.
#[derive(Args, Debug, Clone)]
pub struct CustomerArgs {
    /// The pool's URL.
    #[arg(long, env = "GRADPOOL_POOL", global = true)]
    pub pool: Option<String>,
    /// Your API key (see `gradpool account create`).
    #[arg(long, env = "GRADPOOL_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("GRADPOOL_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".gradpool"))
        .unwrap_or_else(|| PathBuf::from(".gradpool"))
}

pub fn path() -> PathBuf {
    home().join("credentials.toml")
}

pub fn load() -> anyhow::Result<Option<Credentials>> {
    let p = path();
    match std::fs::read_to_string(&p) {
        Ok(text) => Ok(Some(toml::from_str(&text).with_context(|| {
            format!("{} is not a valid credentials file", p.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

pub fn save(c: &Credentials) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("cannot write {}", p.display()))?;
    f.write_all(toml::to_string(c)?.as_bytes())?;
    Ok(p)
}

impl CustomerArgs {
    /// The pool URL alone (for commands that need no key).
    pub fn pool_url(&self) -> anyhow::Result<String> {
        if let Some(p) = &self.pool {
            return Ok(p.clone());
        }
        match load()? {
            Some(c) => Ok(c.pool),
            None => Ok("http://127.0.0.1:7070".to_owned()),
        }
    }

    /// An authenticated client.
    pub fn api(&self) -> anyhow::Result<Api> {
        let saved = load()?;
        let pool = match (&self.pool, &saved) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => c.pool.clone(),
            (None, None) => "http://127.0.0.1:7070".to_owned(),
        };
        let key = match (&self.api_key, &saved) {
            (Some(k), _) => k.clone(),
            (None, Some(c)) if c.pool == pool => c.api_key.clone(),
            _ => bail!(
                "no API key for {pool}: run `gradpool account create --pool {pool}`, or pass --api-key / set GRADPOOL_API_KEY"
            ),
        };
        crate::pool_trust::api(&pool, Some(key))
    }
}
