//! `gradpool provider`.

use clap::Args;
use gradpool_provider::{CpuDevice, ProviderConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct ProviderArgs {
    /// The pool to work for.
    #[arg(long, env = "GRADPOOL_POOL", default_value = "http://127.0.0.1:7070")]
    pool: String,
    /// Node key, cache and tasks in flight.
    #[arg(long, default_value = "gradpool-provider")]
    data_dir: PathBuf,
    /// Name shown in the pool (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// CPU threads training may use (default: all).
    #[arg(long)]
    threads: Option<u32>,
    /// Segments trained at once.
    #[arg(long, default_value_t = 1)]
    max_concurrent_tasks: u32,
}

pub async fn run(a: ProviderArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "provider".to_owned())
    });
    let config = ProviderConfig {
        pool_url: a.pool,
        data_dir: a.data_dir,
        name,
        program: std::env::current_exe()?,
        max_concurrent_tasks: a.max_concurrent_tasks.max(1),
    };
    let device = Arc::new(CpuDevice::new(a.threads));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::interrupted().await;
        stop.cancel();
    });
    gradpool_provider::run(config, device, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
