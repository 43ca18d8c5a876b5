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

/// The device init found, and what the agent is told to train on.
struct Found {
    /// `cpu` or `cuda`, for the config's `device`.
    device: &'static str,
    /// The GPU's index, on a GPU.
    gpu: Option<u32>,
    flags: DeviceFlags,
    /// What it is, in words.
    name: String,
}

impl Found {
    fn cpu() -> Found {
        Found {
            device: "cpu",
            gpu: None,
            flags: DeviceFlags {
                device: DeviceChoice::Cpu,
                threads: None,
                gpu: 0,
            },
            name: gradpool_provider::gpu::cpu_summary(),
        }
    }
}

/// The answers, as the config file takes them.
#[derive(Default)]
struct Answers {
    pool: String,
    network: Option<Network>,
    address: String,
    name: String,
    threads: Option<u32>,
    limits: Limits,
    price: Piconero,
    validate: bool,
    data_dir: PathBuf,
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
        let mut a = Answers::default();
        let info = self.ask_pool(p, &mut a).await?;
        self.ask_owner(p, &mut a)?;
        let found = self.find_device(p)?;
        p.say(&format!("  training on: {}", found.name))?;
        let mut flags = found.flags;
        if found.gpu.is_some() {
            self.ask_gpu_limits(p, &mut a)?;
        } else {
            a.threads = Some(self.ask_threads(p)?);
            flags.threads = a.threads.map(|t| t as usize);
        }
        a.limits.schedule = p.ask_until(
            "When may it work, local time (e.g. mon-fri 22:00-07:00, sat-sun all-day)",
            "always",
            |s| s.parse::<Schedule>().map_err(|e| e.to_string()),
        )?;
        a.limits
            .validate()
            .map_err(|e| anyhow::anyhow!("limits.{e}"))?;
        a.price = self.ask_price(p, &info, found.gpu.is_some())?;
        a.validate = self.ask_validate(p)?;
        a.data_dir = self.ask_data_dir(p)?;
        let gflops = self.measure(p, flags).await;
        self.estimate(p, &info, &a)?;
        self.write(&a, &found, gflops)?;
        p.say(&format!(
            "Wrote {}. Start sharing with:\n  gradpool provider start --config {} --data-dir {}\n\
             or as a service: see packaging/gradpool-provider.service. One agent per data \
             directory: a second one on it is refused.",
            self.config.display(),
            self.config.display(),
            a.data_dir.display()
        ))?;
        Ok(self.config.clone())
    }

    /// The pool: it must answer, and it says its network and prices.
    async fn ask_pool<R: BufRead, W: Write>(
        &self,
        p: &mut Prompt<R, W>,
        a: &mut Answers,
    ) -> anyhow::Result<PoolInfo> {
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
        a.pool = pool;
        a.network = Some(network);
        Ok(info)
    }

    /// Who is paid, and the rig's name.
    fn ask_owner<R: BufRead, W: Write>(
        &self,
        p: &mut Prompt<R, W>,
        a: &mut Answers,
    ) -> anyhow::Result<()> {
        let network = a.network.unwrap_or(Network::Mainnet);
        a.address = p.ask_until(
            &format!("Monero address for your earnings ({network})"),
            "",
            |s| {
                if s.is_empty() {
                    return Err("an address is needed to be paid (your wallet's main address or a subaddress)".into());
                }
                Address::parse(s)
                    .and_then(|addr| addr.expect_network(network))
                    .map(|_| s.to_owned())
                    .map_err(|e| format!("{s:.12}…: {e}"))
            },
        )?;
        let host = super::provider::host_name().unwrap_or_else(|| "my-rig".to_owned());
        a.name = p.ask_until("Name shown at the pool", &host, |n| {
            if n.is_empty() || n.len() > 128 {
                Err("1 to 128 characters".into())
            } else {
                Ok(n.to_owned())
            }
        })?;
        Ok(())
    }

    /// The GPUs NVML lists, one picked; the CPU when there is none (or
    /// this build has no CUDA).
    fn find_device<R: BufRead, W: Write>(&self, p: &mut Prompt<R, W>) -> anyhow::Result<Found> {
        let gpus = match Gpus::open().and_then(|g| g.list()) {
            Ok(gpus) if !gpus.is_empty() => gpus,
            Ok(_) => return Ok(Found::cpu()),
            Err(e) => {
                p.say(&format!("  {e}"))?;
                return Ok(Found::cpu());
            }
        };
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
        if !cfg!(feature = "cuda") {
            p.say("  this gradpool was built without CUDA: it trains on the CPU until you build it with `cargo build --release --features cuda`")?;
            return Ok(Found::cpu());
        }
        Ok(Found {
            device: "cuda",
            gpu: Some(index),
            flags: DeviceFlags::cuda(index),
            name: gpus[index as usize].name.clone(),
        })
    }

    /// A GPU's limits, each checked as `Limits::validate` checks it.
    fn ask_gpu_limits<R: BufRead, W: Write>(
        &self,
        p: &mut Prompt<R, W>,
        a: &mut Answers,
    ) -> anyhow::Result<()> {
        a.limits.max_gpu_share = p.ask_until(
            "Percent of the time the GPU may train (1-100)",
            "100",
            |s| {
                s.parse::<u8>()
                    .ok()
                    .filter(|v| (1..=100).contains(v))
                    .ok_or_else(|| format!("{s:?}: a percentage from 1 to 100"))
            },
        )?;
        a.limits.pause_above_c = p.ask_until(
            "Pause above this GPU temperature, °C (none: no limit)",
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
        a.limits.power_limit_w =
            p.ask_until("GPU power limit in watts (none: no limit)", "none", |s| {
                if s == "none" {
                    return Ok(None);
                }
                s.parse::<u32>()
                    .ok()
                    .filter(|w| (10..=2000).contains(w))
                    .map(Some)
                    .ok_or_else(|| format!("{s:?}: watts from 10 to 2000, or none"))
            })?;
        a.limits.pause_when_busy = p.ask_until(
            "Stop when you use the GPU yourself, e.g. for a game (yes/no)",
            "yes",
            yes_no,
        )?;
        Ok(())
    }

    /// A CPU's share: how many of its threads training may use.
    fn ask_threads<R: BufRead, W: Write>(&self, p: &mut Prompt<R, W>) -> anyhow::Result<u32> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        p.ask_until(
            &format!(
                "CPU threads training may use (1-{cores}; fewer leave the machine responsive)"
            ),
            &cores.to_string(),
            |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|t| (1..=cores).contains(t))
                    .ok_or_else(|| format!("{s:?}: a number of threads from 1 to {cores}"))
            },
        )
    }

    fn ask_price<R: BufRead, W: Write>(
        &self,
        p: &mut Prompt<R, W>,
        info: &PoolInfo,
        gpu: bool,
    ) -> anyhow::Result<Piconero> {
        let suggested = info
            .median_job_price_per_hour
            .or(info.median_provider_price_per_hour)
            .unwrap_or(Piconero(10_000_000_000));
        p.ask_until(
            if gpu {
                "Least you take, XMR per GPU-hour"
            } else {
                "Least you take, XMR per hour of this CPU"
            },
            &suggested.xmr().to_string(),
            |s| {
                s.parse::<Piconero>()
                    .map_err(|e| format!("{s:?} is not an amount of XMR: {e}"))
            },
        )
    }

    /// Whether to validate, with the payout-address rule.
    fn ask_validate<R: BufRead, W: Write>(&self, p: &mut Prompt<R, W>) -> anyhow::Result<bool> {
        p.say(
            "  Validators replay segments other rigs trained, so customers can trust the \
             work, and are paid for it at your price. A validator never checks a rig paid \
             to the same Monero address: if you run several rigs and want them to check each \
             other, give each its own address (a subaddress of your wallet will do).",
        )?;
        p.ask_until("Also validate other rigs' work (yes/no)", "yes", yes_no)
    }

    /// Where the agent keeps its node key and its work.
    fn ask_data_dir<R: BufRead, W: Write>(&self, p: &mut Prompt<R, W>) -> anyhow::Result<PathBuf> {
        let default = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".gradpool-provider"))
            .unwrap_or_else(|| PathBuf::from("gradpool-provider"));
        p.ask_until(
            "Data directory (node key, cache, work in flight; one per agent)",
            &default.display().to_string(),
            |s| {
                let path = PathBuf::from(s);
                if path.is_file() {
                    return Err(format!("{s}: a file, not a directory"));
                }
                if let Some(agent) = gradpool_provider::state::DataDir::running_agent(&path) {
                    return Err(format!(
                        "{s}: an agent runs on it now (pid {}, {}): pick another",
                        agent.pid, agent.name
                    ));
                }
                Ok(path)
            },
        )
    }

    /// The device's speed, or `None` (the pool then measures it).
    async fn measure<R: BufRead, W: Write>(
        &self,
        p: &mut Prompt<R, W>,
        flags: DeviceFlags,
    ) -> Option<f64> {
        p.say("  measuring the device (a few seconds)…").ok()?;
        match super::provider::matmul_gflops(&self.program, flags).await {
            Ok(g) => {
                p.say(&format!("  {g:.1} GFLOP/s")).ok()?;
                Some(g)
            }
            Err(e) => {
                let _ = p.say(&format!(
                    "  {e:#}; the pool will measure it with its hardware proof"
                ));
                None
            }
        }
    }

    /// What the rig may earn at the pool's prices.
    fn estimate<R: BufRead, W: Write>(
        &self,
        p: &mut Prompt<R, W>,
        info: &PoolInfo,
        a: &Answers,
    ) -> anyhow::Result<()> {
        let price = a.price;
        let share = a.limits.max_gpu_share;
        let fees_bps = u64::from(info.pool_fee_bps + info.validator_fee_bps).min(10_000);
        let per_hour = price.0 / 10_000 * (10_000 - fees_bps);
        let hours = a.limits.schedule.hours_per_week() / 7.0 * f64::from(share) / 100.0;
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
        Ok(())
    }

    /// Writes the config, checked by reading it back as the agent will.
    fn write(&self, a: &Answers, found: &Found, gflops: Option<f64>) -> anyhow::Result<()> {
        let network = a.network.unwrap_or(Network::Mainnet);
        let mut text = format!(
            "# gradpool provider config, written by `gradpool provider init`.\n\
             # Run with: gradpool provider start --config {}\n\n\
             pool = {}\nname = {}\nnetwork = {}\n\
             payout = [{}]\nmin_price_xmr_per_hour = {}\ndevice = {}\nvalidate = {}\ndata_dir = {}\n",
            self.config.display(),
            toml_str(&a.pool),
            toml_str(&a.name),
            toml_str(network.as_str()),
            toml_str(&a.address),
            toml_str(&a.price.xmr().to_string()),
            toml_str(found.device),
            a.validate,
            toml_str(&a.data_dir.display().to_string()),
        );
        if let Some(g) = found.gpu {
            text.push_str(&format!("gpu = {g}\n"));
        }
        if let Some(t) = a.threads {
            text.push_str(&format!("threads = {t}\n"));
        }
        let l = &a.limits;
        text.push_str(&format!(
            "\n[limits]\nschedule = {}\n",
            toml_str(&l.schedule.to_string())
        ));
        if found.gpu.is_some() {
            text.push_str(&format!(
                "max_gpu_share = {}\npause_when_busy = {}\n",
                l.max_gpu_share, l.pause_when_busy
            ));
        }
        if let Some(c) = l.pause_above_c {
            text.push_str(&format!("pause_above_c = {c}\n"));
        }
        if let Some(w) = l.power_limit_w {
            text.push_str(&format!("power_limit_w = {w}\n"));
        }
        if let Some(g) = gflops {
            text.push_str(&format!("\n# Measured by init: {g:.1} GFLOP/s.\n"));
        }
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
        Ok(())
    }
}
