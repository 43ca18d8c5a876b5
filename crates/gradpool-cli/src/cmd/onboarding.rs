//! `gradpool provider init`: the few questions a rig owner can answer, the
//! hardware found, a benchmark, what the rig may earn at the pool's current
//! prices, and a config file for `gradpool provider start`.
//!
//! Every answer is checked on the spot and asked again when it is wrong: the
//! pool must answer, the Monero address must be valid on the pool's network,
//! the schedule must parse, every limit must be in range.

use anyhow::{bail, Context};
use gradpool_core::wire::PoolInfo;
use gradpool_core::Piconero;
use gradpool_monero::address::{Address, Network};
use gradpool_provider::gpu::Gpus;
use gradpool_provider::limits::{Limits, Schedule};
use gradpool_provider::segment::{DeviceChoice, DeviceFlags};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Questions on one stream, answers from another (a terminal, or a pipe in
/// tests and scripts). An empty answer takes the default.
pub struct Prompt<R, W> {
    input: R,
    output: W,
}

impl<R: BufRead, W: Write> Prompt<R, W> {
    pub fn new(input: R, output: W) -> Prompt<R, W> {
        Prompt { input, output }
    }

    fn say(&mut self, text: &str) -> anyhow::Result<()> {
        writeln!(self.output, "{text}")?;
        Ok(())
    }

    /// Asks `question`; the answer, or `default` when it is empty.
    fn ask(&mut self, question: &str, default: &str) -> anyhow::Result<String> {
        if default.is_empty() {
            write!(self.output, "{question}: ")?;
        } else {
            write!(self.output, "{question} [{default}]: ")?;
        }
        self.output.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            bail!("no answer to {question:?}: the input ended");
        }
        let answer = line.trim();
        Ok(if answer.is_empty() {
            default.to_owned()
        } else {
            answer.to_owned()
        })
    }

    /// Asks until `check` accepts the answer, saying why it did not.
    fn ask_until<T>(
        &mut self,
        question: &str,
        default: &str,
        mut check: impl FnMut(&str) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        loop {
            let answer = self.ask(question, default)?;
            match check(&answer) {
                Ok(v) => return Ok(v),
                Err(why) => self.say(&format!("  {why}"))?,
            }
        }
    }
}

/// What `init` needs from outside: the pool's information and a benchmark
/// run. The command uses the pool over HTTP and `gradpool bench matmul`.
pub struct Onboarding {
    /// The program to run the benchmark with (this binary).
    pub program: PathBuf,
    /// Where the config file goes.
    pub config: PathBuf,
    /// The default pool URL offered.
    pub default_pool: String,
}

fn yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(true),
        "n" | "no" => Ok(false),
        other => Err(format!("{other:?}: answer yes or no")),
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Fetches the pool's information, with an error a rig owner can act on.
async fn pool_info(url: &str) -> Result<PoolInfo, String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{url:?} is not a pool address: it starts with http:// or https://, e.g. http://pool.example.org:7070"
        ));
    }
    crate::pool_trust::api(url, None)
        .map_err(|e| format!("{e:#}"))?
        .get::<PoolInfo>("/v1/pool")
        .await
        .map_err(|e| {
            format!(
                "cannot reach a gradpool pool at {url}: {} (check the address and that the pool is running)",
                e.report()
            )
        })
}

impl Onboarding {
    /// Asks, detects, measures, estimates and writes the config. Returns
    /// the config's path.
    pub async fn run<R: BufRead, W: Write>(&self, p: &mut Prompt<R, W>) -> anyhow::Result<PathBuf> {
        p.say("Setting up this rig to train for a gradpool pool. Press Enter to take the value in brackets.")?;
        if self.config.exists() {
            let replace = p.ask_until(
                &format!("{} exists; replace it? (yes/no)", self.config.display()),
                "no",
                yes_no,
            )?;
            if !replace {
                bail!("kept {}; nothing written", self.config.display());
            }
        }

        // The pool: it must answer, and it says its network and prices.
        let (pool, info) = loop {
            let url = p.ask("Pool address", &self.default_pool)?;
            let url = url.trim_end_matches('/').to_owned();
            match pool_info(&url).await {
                Ok(info) => break (url, info),
                Err(why) => p.say(&format!("  {why}"))?,
            }
        };
        let network: Network = info
            .network
            .parse()
            .map_err(|e| anyhow::anyhow!("the pool's network {:?}: {e}", info.network))?;
        p.say(&format!(
            "  pool {} ({} backend, {network}): fees {:.1}% + {:.1}% for validators, {} providers, {} jobs open",
            pool,
            info.backend,
            f64::from(info.pool_fee_bps) / 100.0,
            f64::from(info.validator_fee_bps) / 100.0,
            info.providers_connected,
            info.jobs_open
        ))?;

        let address = p.ask_until(
            &format!("Monero address for your earnings ({network})"),
            "",
            |a| {
                if a.is_empty() {
                    return Err("an address is needed to be paid (your wallet's main address or a subaddress)".into());
                }
                Address::parse(a)
                    .and_then(|addr| addr.expect_network(network))
                    .map(|_| a.to_owned())
                    .map_err(|e| format!("{a:.12}…: {e}"))
            },
        )?;
        let host = super::provider::host_name().unwrap_or_else(|| "my-rig".to_owned());
        let name = p.ask_until("Name shown at the pool", &host, |n| {
            if n.is_empty() || n.len() > 128 {
                Err("1 to 128 characters".into())
            } else {
                Ok(n.to_owned())
            }
        })?;

        // The hardware.
        let on_cpu = || {
            (
                "cpu",
                None,
                DeviceFlags {
                    device: DeviceChoice::Cpu,
                    threads: None,
                    gpu: 0,
                },
                gradpool_provider::gpu::cpu_summary(),
            )
        };
        let (device, gpu, device_args, device_name) = match Gpus::open().and_then(|g| g.list()) {
            Ok(gpus) if !gpus.is_empty() => {
                for g in &gpus {
                    p.say(&format!(
                        "  GPU {}: {} ({} GiB, compute {}, driver {}, CUDA {}{}{})",
                        g.index,
                        g.name,
                        g.memory_bytes >> 30,
                        g.compute_capability,
                        g.driver_version,
                        g.cuda_version,
                        g.pcie_link
                            .as_deref()
                            .map(|l| format!(", PCIe {l}"))
                            .unwrap_or_default(),
                        g.power_limit_w
                            .map(|w| format!(", power limit {w} W"))
                            .unwrap_or_default()
                    ))?;
                }
                let count = gpus.len() as u32;
                let index = p.ask_until("GPU to share (one agent per GPU)", "0", |s| {
                    s.parse::<u32>()
                        .ok()
                        .filter(|i| *i < count)
                        .ok_or_else(|| format!("{s:?}: a GPU number from 0 to {}", count - 1))
                })?;
                let name = gpus[index as usize].name.clone();
                if cfg!(feature = "cuda") {
                    ("cuda", Some(index), DeviceFlags::cuda(index), name)
                } else {
                    p.say("  this gradpool was built without CUDA: it trains on the CPU until you build it with `cargo build --release --features cuda`")?;
                    on_cpu()
                }
            }
            Ok(_) => on_cpu(),
            Err(e) => {
                p.say(&format!("  {e}"))?;
                on_cpu()
            }
        };
        p.say(&format!("  training on: {device_name}"))?;

        // The owner's limits, each checked as Limits::validate checks it.
        let share = p.ask_until(
            "Percent of the time the GPU may train (1-100)",
            "100",
            |s| {
                s.parse::<u8>()
                    .ok()
                    .filter(|v| (1..=100).contains(v))
                    .ok_or_else(|| format!("{s:?}: a percentage from 1 to 100"))
            },
        )?;
        let pause_above = p.ask_until(
            "Pause above this temperature, °C (none: no limit)",
            "83",
            |s| {
                if s == "none" {
                    return Ok(None);
                }
                s.parse::<f32>()
                    .ok()
                    .filter(|c| (30.0..=110.0).contains(c))
                    .map(Some)
                    .ok_or_else(|| format!("{s:?}: a temperature from 30 to 110 °C, or none"))
            },
        )?;
        let power = p.ask_until("Power limit in watts (none: no limit)", "none", |s| {
            if s == "none" {
                return Ok(None);
            }
            s.parse::<u32>()
                .ok()
                .filter(|w| (10..=2000).contains(w))
                .map(Some)
                .ok_or_else(|| format!("{s:?}: watts from 10 to 2000, or none"))
        })?;
        let schedule = p.ask_until(
            "When may it work, local time (e.g. mon-fri 22:00-07:00, sat-sun all-day)",
            "always",
            |s| {
                s.parse::<Schedule>()
                    .map(|_| s.to_owned())
                    .map_err(|e| e.to_string())
            },
        )?;
        let pause_when_busy = p.ask_until(
            "Stop when you use the GPU yourself, e.g. for a game (yes/no)",
            "yes",
            yes_no,
        )?;
        let limits = Limits {
            max_gpu_share: share,
            pause_above_c: pause_above,
            resume_below_c: None,
            power_limit_w: power,
            schedule: schedule
                .parse()
                .map_err(|e| anyhow::anyhow!("schedule: {e}"))?,
            pause_when_busy,
        };
        limits
            .validate()
            .map_err(|e| anyhow::anyhow!("limits.{e}"))?;

        let suggested = info
            .median_job_price_per_hour
            .or(info.median_provider_price_per_hour)
            .unwrap_or(Piconero(10_000_000_000));
        let price: Piconero = p.ask_until(
            "Least you take, XMR per GPU-hour",
            &suggested.xmr().to_string(),
            |s| {
                s.parse::<Piconero>()
                    .map_err(|e| format!("{s:?} is not an amount of XMR: {e}"))
            },
        )?;

        // The benchmark and the estimate.
        p.say("  measuring the device (a few seconds)…")?;
        let gflops = match super::provider::matmul_gflops(&self.program, device_args).await {
            Ok(g) => {
                p.say(&format!("  {g:.1} GFLOP/s"))?;
                Some(g)
            }
            Err(e) => {
                p.say(&format!(
                    "  {e:#}; the pool will measure it with its hardware proof"
                ))?;
                None
            }
        };
        let fees_bps = u64::from(info.pool_fee_bps + info.validator_fee_bps).min(10_000);
        let per_hour = price.0 / 10_000 * (10_000 - fees_bps);
        let hours = limits.schedule.hours_per_week() / 7.0 * f64::from(share) / 100.0;
        // To 0.0001 XMR: an estimate, not an amount.
        let per_day = Piconero((per_hour as f64 * hours / 1e8).round() as u64 * 100_000_000);
        p.say(&format!(
            "Expected earnings at {price}/hour, after the pool's fees: {} an hour of work; \
             with {hours:.1} working hours a day, up to {per_day} a day when the pool has work for this rig.",
            Piconero(per_hour)
        ))?;
        if info.jobs_open == 0 {
            p.say("  (the pool has no jobs open right now)")?;
        } else if let Some(job_price) = info.median_job_price_per_hour {
            if price > job_price {
                p.say(&format!(
                    "  note: half the open jobs pay at most {job_price}/hour, less than your price"
                ))?;
            }
        }

        let mut text = format!(
            "# gradpool provider config, written by `gradpool provider init`.\n\
             # Run with: gradpool provider start --config {}\n\n\
             pool = {}\nname = {}\nnetwork = {}\n\
             payout = [{}]\nmin_price_xmr_per_hour = {}\ndevice = {}\n",
            self.config.display(),
            toml_str(&pool),
            toml_str(&name),
            toml_str(network.as_str()),
            toml_str(&address),
            toml_str(&price.xmr().to_string()),
            toml_str(device),
        );
        if let Some(g) = gpu {
            text.push_str(&format!("gpu = {g}\n"));
        }
        text.push_str(&format!(
            "\n[limits]\nmax_gpu_share = {share}\nschedule = {}\npause_when_busy = {pause_when_busy}\n",
            toml_str(&schedule)
        ));
        if let Some(c) = pause_above {
            text.push_str(&format!("pause_above_c = {c}\n"));
        }
        if let Some(w) = power {
            text.push_str(&format!("power_limit_w = {w}\n"));
        }
        if let Some(g) = gflops {
            text.push_str(&format!("\n# Measured by init: {g:.1} GFLOP/s.\n"));
        }
        // The file must read back as the agent will read it.
        crate::provider_config::ProviderFile::from_toml_str(&text)
            .context("the config init wrote")?;
        if let Some(dir) = self.config.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.config)
            .with_context(|| format!("cannot write {}", self.config.display()))?;
        p.say(&format!(
            "Wrote {}. Start sharing with:\n  gradpool provider start --config {}\n\
             or as a service: see packaging/gradpool-provider.service.",
            self.config.display(),
            self.config.display()
        ))?;
        Ok(self.config.clone())
    }
}
