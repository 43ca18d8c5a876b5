//! `gradpool bench verify`: how well audits catch cheaters, and at what
//! cost, measured on real pools.
//!
//! Each scenario is a fresh pool on 127.0.0.1 with two dedicated validators
//! (1 and 2 threads) and one trainer (1 thread) that starts with no record,
//! training a standard-verification job of one-step segments, every segment
//! trained and every replay re-executed by `gradpool segment run` child
//! processes. The honest scenario trains `--honest-segments` segments; each
//! cheating scenario (every kind × every fraction) runs until the cheater is
//! found at fault or has trained `--cheat-segments` segments.
//!
//! Reported, one JSON line: `detection_rate` (cheaters caught ÷ cheaters,
//! overall and per kind and fraction), `false_positive_rate` (verdicts
//! against honest parties ÷ audits of honest work), `verification_overhead`
//! (validators' compute ÷ the trainer's, in the honest scenario) and
//! `segments`, each beside what [`gradpool_core::verification::predict`]
//! expects for the same sampling.

use clap::Args;

/// `gradpool bench verify` options.
#[derive(Args, Debug, Clone)]
pub struct VerifyBenchArgs {
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Segments the honest provider trains.
    #[arg(long, default_value_t = 2000)]
    pub honest_segments: u64,
    /// The most segments a cheater trains before the run counts it as
    /// undetected.
    #[arg(long, default_value_t = 1000)]
    pub cheat_segments: u64,
    /// The shares of its segments each cheater fakes.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,1.0")]
    pub fractions: Vec<f64>,
    /// The cheat kinds (default: all six).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
}

#[cfg(not(feature = "cheat"))]
pub async fn run(_: VerifyBenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!(
        "this gradpool was built without cheating providers; build the benchmark with \
         `cargo run --release --features cheat -- bench verify`"
    )
}

#[cfg(feature = "cheat")]
pub use imp::run;

#[cfg(feature = "cheat")]
mod imp {
    use super::VerifyBenchArgs;
    use anyhow::Context;
    use gradpool_client::Api;
    use gradpool_core::verification::{predict, Sampling};
    use gradpool_core::wire::{JobView, ProviderView};
    use gradpool_core::NodeKey;
    use gradpool_pool::{Pool, PoolConfig};
    use gradpool_provider::cheat::Cheat;
    use gradpool_provider::{CpuDevice, ProviderConfig};
    use gradpool_train::cheat::CheatKind;
    use serde::Serialize;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;

    /// The plant rate of the pools (the default).
    const PLANT_RATE: f64 = 0.05;

    /// What one scenario measured.
    #[derive(Debug, Clone, Serialize)]
    struct Outcome {
        kind: Option<String>,
        fraction: f64,
        /// Segments the trainer committed.
        segments: u64,
        /// Of those, faked.
        faked: u64,
        /// Decided audits of the trainer's segments.
        audits: u64,
        /// Verdicts that found the trainer at fault.
        provider_faults: u64,
        /// Verdicts that found a (honest) validator at fault.
        validator_faults: u64,
        replays: u64,
        train_ms: u64,
        replay_ms: u64,
        seconds: f64,
    }

    #[derive(Serialize)]
    struct Rate {
        measured: f64,
        predicted: f64,
        cheaters: u64,
        caught: u64,
    }

    #[derive(Serialize)]
    struct Report {
        detection_rate: f64,
        detection_rate_predicted: f64,
        detection_rate_by_kind: BTreeMap<String, Rate>,
        detection_rate_by_fraction: BTreeMap<String, Rate>,
        false_positive_rate: f64,
        honest_audits: u64,
        verification_overhead: f64,
        verification_overhead_predicted: f64,
        segments: u64,
        honest_segments: u64,
        cheat_segments_limit: u64,
        sampling: Sampling,
        plant_rate: f64,
        scenarios: Vec<Outcome>,
        seconds: f64,
    }

    pub async fn run(a: VerifyBenchArgs) -> anyhow::Result<ExitCode> {
        let program = std::env::current_exe()?;
        let root = tempfile::tempdir()?;
        let kinds: Vec<CheatKind> = if a.kinds.is_empty() {
            CheatKind::ALL.to_vec()
        } else {
            a.kinds
                .iter()
                .map(|k| k.parse::<CheatKind>())
                .collect::<Result<_, _>>()?
        };
        for f in &a.fractions {
            anyhow::ensure!(
                (0.1..=1.0).contains(f),
                "--fractions: {f} is outside 0.1..=1 (the benchmark measures cheaters faking at least 10%)"
            );
        }
        let started = Instant::now();
        let sampling = Sampling::default();
        let progress = |o: &Outcome| {
            if !a.json {
                eprintln!(
                    "  {:<16} {:>4}  {:>5} segments, {:>4} faked, {:>3} audits → {}",
                    o.kind.as_deref().unwrap_or("honest"),
                    o.fraction,
                    o.segments,
                    o.faked,
                    o.audits,
                    if o.provider_faults > 0 {
                        "caught"
                    } else {
                        "not caught"
                    }
                );
            }
        };

        let mut scenarios = Vec::new();
        let honest = scenario(
            &program,
            &root.path().join("honest"),
            None,
            0.0,
            a.honest_segments,
        )
        .await
        .context("the honest scenario")?;
        progress(&honest);
        scenarios.push(honest.clone());
        for kind in &kinds {
            for &fraction in &a.fractions {
                let o = scenario(
                    &program,
                    &root.path().join(format!("{kind}-{fraction}")),
                    Some(*kind),
                    fraction,
                    a.cheat_segments,
                )
                .await
                .with_context(|| format!("the {kind} scenario at {fraction}"))?;
                progress(&o);
                scenarios.push(o);
            }
        }

        let cheats: Vec<&Outcome> = scenarios.iter().filter(|o| o.kind.is_some()).collect();
        let rate = |set: &[&&Outcome]| {
            let caught = set.iter().filter(|o| o.provider_faults > 0).count() as u64;
            let predicted = set
                .iter()
                .map(|o| predict(o.fraction, a.cheat_segments, sampling).detection)
                .sum::<f64>()
                / set.len().max(1) as f64;
            Rate {
                measured: caught as f64 / set.len().max(1) as f64,
                predicted,
                cheaters: set.len() as u64,
                caught,
            }
        };
        let all: Vec<&&Outcome> = cheats.iter().collect();
        let overall = rate(&all);
        let mut by_kind = BTreeMap::new();
        for kind in &kinds {
            let set: Vec<&&Outcome> = cheats
                .iter()
                .filter(|o| o.kind.as_deref() == Some(kind.name()))
                .collect();
            by_kind.insert(kind.name().to_owned(), rate(&set));
        }
        let mut by_fraction = BTreeMap::new();
        for f in &a.fractions {
            let set: Vec<&&Outcome> = cheats.iter().filter(|o| o.fraction == *f).collect();
            by_fraction.insert(f.to_string(), rate(&set));
        }
        // Every validator is honest, and so is the honest trainer: any
        // verdict against them is a false positive.
        let wrongly_accused =
            honest.provider_faults + scenarios.iter().map(|o| o.validator_faults).sum::<u64>();
        let honest_judged = honest.audits + scenarios.iter().map(|o| o.replays).sum::<u64>();
        let report = Report {
            detection_rate: overall.measured,
            detection_rate_predicted: overall.predicted,
            detection_rate_by_kind: by_kind,
            detection_rate_by_fraction: by_fraction,
            false_positive_rate: wrongly_accused as f64 / honest_judged.max(1) as f64,
            honest_audits: honest.audits,
            verification_overhead: honest.replay_ms as f64 / honest.train_ms.max(1) as f64,
            verification_overhead_predicted: predict(0.0, a.honest_segments, sampling).audits
                * (1.0 + PLANT_RATE)
                / a.honest_segments.max(1) as f64,
            segments: scenarios.iter().map(|o| o.segments).sum(),
            honest_segments: honest.segments,
            cheat_segments_limit: a.cheat_segments,
            sampling,
            plant_rate: PLANT_RATE,
            scenarios,
            seconds: started.elapsed().as_secs_f64(),
        };
        if a.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "detection rate        {:.3} (predicted {:.3}; {} of {} cheaters caught)",
                report.detection_rate,
                report.detection_rate_predicted,
                overall.caught,
                overall.cheaters
            );
            for (k, r) in &report.detection_rate_by_kind {
                println!("  {k:<18} {:.3} (predicted {:.3})", r.measured, r.predicted);
            }
            for (f, r) in &report.detection_rate_by_fraction {
                println!(
                    "  faking {f:<11} {:.3} (predicted {:.3})",
                    r.measured, r.predicted
                );
            }
            println!(
                "false positive rate   {} ({} honest audits and replays)",
                report.false_positive_rate, honest_judged
            );
            println!(
                "verification overhead {:.4} (predicted {:.4}) over {} honest segments",
                report.verification_overhead,
                report.verification_overhead_predicted,
                report.honest_segments
            );
            println!(
                "segments              {} in {:.0} s",
                report.segments, report.seconds
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    /// A small GPT of one-step segments at standard verification.
    fn spec(name: &str, segments: u64) -> String {
        format!(
            r#"name = "{name}"
[model]
kind = "gpt"
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
[data]
format = "text"
[train]
seed = 1
steps = {segments}
batch_size = 4
checkpoint_every = 1
lr = 0.003
warmup_steps = 5
[verification]
level = "standard"
"#
        )
    }

    async fn scenario(
        program: &Path,
        dir: &Path,
        kind: Option<CheatKind>,
        fraction: f64,
        segments: u64,
    ) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let pool = Pool::open(PoolConfig {
            data_dir: dir.join("pool"),
            lease_seconds: 10,
            heartbeat_seconds: 1,
            ..PoolConfig::default()
        })
        .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let serve = {
            let stop = stop.clone();
            tokio::spawn(
                pool.clone()
                    .serve(listener, async move { stop.cancelled().await }),
            )
        };
        let account = pool.create_account("bench").await?;
        let api = Api::new(
            &url,
            Some(account.api_key),
            &gradpool_client::Trust::default(),
        )?;

        let trainer_dir = dir.join("trainer");
        std::fs::create_dir_all(&trainer_dir)?;
        let trainer_id = NodeKey::load_or_create(&trainer_dir.join("node.key"))?.provider_id();
        let cheat = Cheat {
            kind: kind.map(|k| k.name().to_owned()),
            fraction,
            lazy_validator: false,
            forge_outer: false,
        };
        let agents = CancellationToken::new();
        let mut handles = Vec::new();
        let mut start = |name: &str, threads: u32, f: &dyn Fn(&mut ProviderConfig)| {
            let mut c = ProviderConfig {
                pool_url: url.clone(),
                data_dir: dir.join(name),
                name: name.to_owned(),
                program: program.to_owned(),
                ..ProviderConfig::default()
            };
            f(&mut c);
            handles.push(tokio::spawn(gradpool_provider::run(
                c,
                Arc::new(CpuDevice::new(Some(threads))),
                agents.clone(),
            )));
        };
        let validator = |c: &mut ProviderConfig| {
            c.validate = true;
            c.train = false;
        };
        start("validator-1", 1, &validator);
        start("validator-2", 2, &validator);
        // Audits are drawn only while a validator is connected.
        wait_for_providers(&api, 2).await?;
        start("trainer", 1, &|c| c.cheat = cheat.clone());

        let data = dir.join("corpus.txt");
        std::fs::write(&data, &super::super::local::SHAKESPEARE[..60_000])?;
        let job =
            super::super::job::submit_text(&api, &spec("bench", segments), &data, false).await?;
        let id = job.id.to_string();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let j: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
            if j.status.is_final() {
                break;
            }
            if kind.is_some() {
                let caught = pool
                    .audit_stats()
                    .await?
                    .iter()
                    .any(|s| s.provider == trainer_id && s.provider_faults > 0);
                if caught {
                    break;
                }
            }
        }
        agents.cancel();
        for h in handles {
            h.await??;
        }
        let stats = pool.audit_stats().await?;
        stop.cancel();
        let _ = serve.await;

        let trainer = stats
            .iter()
            .find(|s| s.provider == trainer_id)
            .context("the trainer never registered")?;
        let faked = trainer
            .train_tasks
            .iter()
            .filter(|t| cheat.kind_for(t).is_some())
            .count() as u64;
        Ok(Outcome {
            kind: kind.map(|k| k.name().to_owned()),
            fraction,
            segments: trainer.train_tasks.len() as u64,
            faked,
            audits: trainer.audited,
            provider_faults: trainer.provider_faults,
            validator_faults: stats.iter().map(|s| s.validator_faults).sum(),
            replays: stats.iter().map(|s| s.replays).sum(),
            train_ms: stats.iter().map(|s| s.train_ms).sum(),
            replay_ms: stats.iter().map(|s| s.replay_ms).sum(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    async fn wait_for_providers(api: &Api, n: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let all: Vec<ProviderView> = api.get("/v1/providers").await?;
            if all.len() >= n {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the validators did not register"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
