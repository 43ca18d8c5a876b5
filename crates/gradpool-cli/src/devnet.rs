//! `gradpool devnet`: the whole system on one machine.
//!
//! Starts a pool (in this process, on a temporary SQLite database) and N
//! provider agents (child processes) on 127.0.0.1, creates a customer
//! account, submits the Shakespeare GPT job, follows it live, fetches the
//! model, samples text from it, and writes `OUT/model.safetensors` and
//! `OUT/summary.json`. Ctrl-C cancels the job and stops everything.

use crate::cmd::job::{fetch_model, submit_text};
use crate::cmd::local::{sample_text, SHAKESPEARE};
use anyhow::{bail, Context};
use clap::Args;
use gradpool_core::wire::{JobStatus, ProviderView, SegmentView};
use gradpool_pool::{Pool, PoolConfig};
use gradpool_provider::client::Api;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The default job: a character-level GPT on Shakespeare.
pub const SHAKESPEARE_SPEC: &str = include_str!("../../../examples/shakespeare-gpt.toml");

/// The sample of text devnet prints starts with this.
const SAMPLE_PROMPT: &str = "ROMEO:";

#[derive(Args)]
pub struct DevnetArgs {
    /// Provider agents to start.
    #[arg(long, default_value_t = 3)]
    providers: usize,
    /// Training steps (overrides the spec).
    #[arg(long)]
    steps: Option<u64>,
    /// Steps per segment (default: the spec's, or a sixth of --steps).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Where model.safetensors and summary.json go.
    #[arg(long, default_value = "devnet-out")]
    out: PathBuf,
    /// Train this spec instead of the Shakespeare GPT.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// The dataset for --spec (default: the spec's data.file).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CPU threads per provider (default: all cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Lease length: how soon a silent provider's segment is handed on.
    #[arg(long, default_value_t = 6)]
    lease_seconds: u32,
    /// Keep the pool's database and the providers' directories and logs.
    #[arg(long)]
    keep: bool,
    /// Characters of text to sample from the trained model.
    #[arg(long, default_value_t = 400)]
    sample_tokens: usize,
}

#[derive(Serialize)]
struct Summary {
    job_id: String,
    steps: u64,
    checkpoint_every: u64,
    initial_loss: f32,
    final_loss: f32,
    wall_seconds: f64,
    providers: Vec<ProviderSummary>,
    sample: String,
    model: PathBuf,
    pool: String,
}

#[derive(Serialize)]
struct ProviderSummary {
    id: String,
    name: String,
    segments: u32,
}

pub async fn run(a: DevnetArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if a.providers == 0 {
        bail!("--providers must be at least 1");
    }
    let work = tempfile::Builder::new()
        .prefix("gradpool-devnet-")
        .tempdir()?;
    let work_path = work.path().to_owned();
    let (spec_text, data_path) = job_input(&a, &work_path)?;

    // The pool.
    let pool = Pool::open(PoolConfig {
        data_dir: work_path.join("pool"),
        lease_seconds: a.lease_seconds,
        heartbeat_seconds: 1,
        ..PoolConfig::default()
    })
    .await
    .context("cannot start the pool")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop_pool = CancellationToken::new();
    let pool_task = {
        let stop = stop_pool.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.serve(listener, async move { stop.cancelled().await })
                .await
        })
    };
    println!(
        "pool       {url}  (SQLite in {})",
        work_path.join("pool").display()
    );

    // The providers.
    let mut providers = Vec::new();
    for i in 0..a.providers {
        providers.push(start_provider(&url, &work_path, i, a.threads)?);
    }
    println!(
        "providers  {} agents, logs in {}/provider-*.log",
        a.providers,
        work_path.display()
    );

    let outcome = tokio::select! {
        r = drive(&a, &pool, &url, &spec_text, &data_path, started) => r,
        _ = crate::cmd::interrupted() => Err(anyhow::anyhow!("interrupted")),
    };

    // Shut down in order: providers first (their segments die with them),
    // then the pool.
    for p in &mut providers {
        stop_provider(p).await;
    }
    stop_pool.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), pool_task).await;
    if a.keep {
        let kept = work.keep();
        println!("kept       {}", kept.display());
    }
    match outcome {
        Ok(code) => Ok(code),
        Err(e) if e.to_string() == "interrupted" => {
            eprintln!("devnet interrupted: pool and providers stopped");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// The spec text (with --steps applied) and the data file.
fn job_input(a: &DevnetArgs, work: &Path) -> anyhow::Result<(String, PathBuf)> {
    let (text, default_data) = match &a.spec {
        Some(p) => {
            let spec = gradpool_core::JobSpec::from_file(p)?;
            (std::fs::read_to_string(p)?, spec.data.file)
        }
        None => {
            let data = work.join("tinyshakespeare.txt");
            std::fs::write(&data, SHAKESPEARE)?;
            (SHAKESPEARE_SPEC.to_owned(), Some(data))
        }
    };
    let data = a
        .data
        .clone()
        .or(default_data)
        .context("no data for the spec: pass --data FILE")?;
    let mut doc: toml::Table = toml::from_str(&text)?;
    let train = doc
        .get_mut("train")
        .and_then(|t| t.as_table_mut())
        .context("the spec has no [train] table")?;
    if let Some(steps) = a.steps {
        train.insert("steps".into(), toml::Value::Integer(steps as i64));
        let every = a
            .checkpoint_every
            .unwrap_or_else(|| steps.div_ceil(6).max(1));
        train.insert(
            "checkpoint_every".into(),
            toml::Value::Integer(every as i64),
        );
        if let Some(w) = train.get("warmup_steps").and_then(|w| w.as_integer()) {
            train.insert(
                "warmup_steps".into(),
                toml::Value::Integer(w.min(steps as i64 / 10)),
            );
        }
    } else if let Some(every) = a.checkpoint_every {
        train.insert(
            "checkpoint_every".into(),
            toml::Value::Integer(every as i64),
        );
    }
    // The pool receives the spec alone: the data goes as a blob.
    if let Some(d) = doc.get_mut("data").and_then(|t| t.as_table_mut()) {
        d.remove("file");
    }
    let text = toml::to_string(&doc)?;
    gradpool_core::JobSpec::from_toml_str(&text)?;
    Ok((text, data))
}

async fn drive(
    a: &DevnetArgs,
    pool: &Pool,
    url: &str,
    spec_text: &str,
    data: &Path,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let account = pool.create_account("devnet customer").await?;
    println!("customer   {}", account.account_id);
    let api = Api::new(url, Some(account.api_key));
    let job = submit_text(&api, spec_text, data, true).await?;
    println!(
        "job        {}  ({} steps, {} segments of {})\n",
        job.id, job.steps, job.segments_total, job.checkpoint_every
    );
    let id = job.id.to_string();
    let end = crate::watch::follow(&api, &id, true).await?;
    if end.status != JobStatus::Succeeded {
        bail!(
            "job {id} {}: {}",
            end.status.as_str(),
            end.error.unwrap_or_default()
        );
    }
    let model = fetch_model(&api, &id, &a.out, false).await?;
    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await?;
    let provider_views: Vec<ProviderView> = api.get("/v1/providers").await?;
    let names: BTreeMap<String, String> = provider_views
        .into_iter()
        .map(|p| (p.id.to_string(), p.name))
        .collect();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for s in &segments {
        *counts.entry(s.provider.to_string()).or_default() += 1;
    }
    let initial_loss = segments
        .first()
        .and_then(|s| s.loss_trace.first().copied())
        .unwrap_or(f32::NAN);
    let final_loss = segments
        .last()
        .and_then(|s| s.loss_trace.last().copied())
        .unwrap_or(f32::NAN);

    let tokens = a.sample_tokens;
    let model_path = model.clone();
    let sample = tokio::task::spawn_blocking(move || {
        sample_text(
            &model_path,
            SAMPLE_PROMPT,
            tokens,
            0.8,
            0,
            &gradpool_train::Device::Cpu,
        )
    })
    .await??;
    let sample = format!("{SAMPLE_PROMPT}{sample}");

    let summary = Summary {
        job_id: id.clone(),
        steps: end.steps,
        checkpoint_every: end.checkpoint_every,
        initial_loss,
        final_loss,
        wall_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        providers: counts
            .iter()
            .map(|(id, n)| ProviderSummary {
                id: id.clone(),
                name: names.get(id).cloned().unwrap_or_default(),
                segments: *n,
            })
            .collect(),
        sample,
        model: model.clone(),
        pool: url.to_owned(),
    };
    let summary_path = a.out.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;

    println!("── sample ─────────────────────────────────────────────");
    println!("{}", summary.sample);
    println!("───────────────────────────────────────────────────────\n");
    println!("job           {}", summary.job_id);
    println!(
        "steps         {} in {} segments",
        summary.steps,
        segments.len()
    );
    println!(
        "loss          {:.4} → {:.4}",
        summary.initial_loss, summary.final_loss
    );
    println!("wall time     {:.1} s", summary.wall_seconds);
    println!("\n{:<24} {:<12} {:>8}", "PROVIDER", "NAME", "SEGMENTS");
    for p in &summary.providers {
        println!("{:<24} {:<12} {:>8}", p.id, p.name, p.segments);
    }
    println!("\nwrote {} and {}", model.display(), summary_path.display());
    Ok(ExitCode::SUCCESS)
}

struct ProviderProcess {
    name: String,
    child: Child,
}

fn start_provider(
    url: &str,
    work: &Path,
    i: usize,
    threads: Option<u32>,
) -> anyhow::Result<ProviderProcess> {
    let name = format!("devnet-{}", i + 1);
    let log = std::fs::File::create(work.join(format!("provider-{}.log", i + 1)))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("provider")
        .arg("--pool")
        .arg(url)
        .arg("--data-dir")
        .arg(work.join(format!("provider-{}", i + 1)))
        .arg("--name")
        .arg(&name);
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Own process group: Ctrl-C reaches devnet, which stops providers in order.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start provider {name}"))?;
    Ok(ProviderProcess { name, child })
}

async fn stop_provider(p: &mut ProviderProcess) {
    if let Some(pid) = p.child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), p.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(provider = %p.name, "provider did not stop; killing it");
        let _ = p.child.kill().await;
    }
}
