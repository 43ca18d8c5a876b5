//! The provider's config file: where to work, who gets paid, and the
//! owner's limits.
//!
//! ```toml
//! pool = "https://pool.example:7443"
//! pool_fingerprint = "sha256:3f1c…"   # as `gradpool pool --tls-self-signed` printed it
//! name = "garage-rig"
//! data_dir = "/var/lib/gradpool-provider"
//! network = "mainnet"
//! payout = ["44AFFq5k…=70", "48edfHu7…=30"]
//! min_price_xmr_per_hour = "0.01"
//! max_concurrent_tasks = 1
//! validate = true
//! region = "eu-west"                # jobs with resources.region train only there
//! accept_containers = true          # run customers' own images under podman (off by default)
//! image_cache_gib = 20              # the most disk their images take; oldest removed first
//!
//! [limits]
//! max_gpu_share = 80
//! pause_above_c = 83
//! resume_below_c = 75
//! power_limit_w = 250
//! schedule = "mon-fri 22:00-07:00, sat-sun all-day"
//! pause_when_busy = true
//! ```
//!
//! Every field is optional; flags given on the command line win over the
//! file. A value that is wrong — an unknown field, a payout address with a
//! bad checksum or of another network, a schedule that does not parse, a
//! limit out of range — is refused when the file is read, with the field's
//! name.

use anyhow::{bail, Context};
use gradpool_core::Piconero;
use gradpool_provider::limits::{Limits, Schedule};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub pool: Option<String>,
    /// The SHA-256 fingerprint of the pool's TLS certificate (`sha256:…`).
    pub pool_fingerprint: Option<String>,
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `mainnet`, `stagenet` or `testnet`.
    pub network: Option<String>,
    /// `ADDRESS[=SHARE]` entries, as `--payout` takes them.
    #[serde(default)]
    pub payout: Vec<String>,
    pub min_price_xmr_per_hour: Option<String>,
    pub max_concurrent_tasks: Option<u32>,
    pub threads: Option<u32>,
    /// `auto` (a GPU when NVML finds one, else the CPU), `cpu` or `cuda`.
    pub device: Option<String>,
    /// The GPU to share, by NVML's index (`nvidia-smi -i`).
    pub gpu: Option<u32>,
    pub validate: Option<bool>,
    /// Where the rig is (`eu-west`): 1 to 32 of a-z, 0-9 and '-'.
    pub region: Option<String>,
    /// Run container jobs: customers' own images, under podman in a
    /// sandbox. Off by default.
    pub accept_containers: Option<bool>,
    /// The most disk the container images may take, in GiB (default 20).
    pub image_cache_gib: Option<u32>,
    /// Where container images are kept (default: `images/` in the data
    /// directory).
    pub image_store: Option<PathBuf>,
    /// Where confidential jobs' plaintext lives while a task runs: a
    /// tmpfs (default `/dev/shm`).
    pub plaintext_dir: Option<PathBuf>,
    /// `"isolated"`: run the isolated tier's host checks and send them,
    /// signed, with every registration, for the operator to certify.
    pub tier: Option<Tier>,
    #[serde(default)]
    pub limits: LimitsFile,
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_gpu_share: Option<u8>,
    pub pause_above_c: Option<f32>,
    pub resume_below_c: Option<f32>,
    pub power_limit_w: Option<u32>,
    pub schedule: Option<String>,
    pub pause_when_busy: Option<bool>,
}

impl ProviderFile {
    /// Reads `path`; a parse error names the field and the line.
    pub fn read(path: &Path) -> anyhow::Result<ProviderFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the provider config {}", path.display()))?;
        ProviderFile::from_toml_str(&text)
            .with_context(|| format!("provider config {} refused", path.display()))
    }

    pub fn from_toml_str(text: &str) -> anyhow::Result<ProviderFile> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let message = inner.message().trim().to_owned();
            match line {
                Some(l) => anyhow::anyhow!("{path}: {message} (line {l})"),
                None => anyhow::anyhow!("{path}: {message}"),
            }
        })
    }
}

/// The limits from the file with `overrides` (the flags) applied, checked.
pub fn limits(file: &LimitsFile, overrides: &LimitsFile) -> anyhow::Result<Limits> {
    let schedule = match overrides.schedule.clone().or(file.schedule.clone()) {
        Some(s) => s
            .parse::<Schedule>()
            .map_err(|e| anyhow::anyhow!("limits.schedule: {e}"))?,
        None => Schedule::always(),
    };
    let limits = Limits {
        max_gpu_share: overrides
            .max_gpu_share
            .or(file.max_gpu_share)
            .unwrap_or(100),
        pause_above_c: overrides.pause_above_c.or(file.pause_above_c),
        resume_below_c: overrides.resume_below_c.or(file.resume_below_c),
        power_limit_w: overrides.power_limit_w.or(file.power_limit_w),
        schedule,
        pause_when_busy: overrides
            .pause_when_busy
            .or(file.pause_when_busy)
            .unwrap_or(false),
    };
    limits
        .validate()
        .map_err(|e| anyhow::anyhow!("limits.{e}"))?;
    Ok(limits)
}

/// Parses a price in XMR, naming `field` when it is not one.
pub fn price(field: &str, s: &str) -> anyhow::Result<Piconero> {
    match s.parse::<Piconero>() {
        Ok(p) => Ok(p),
        Err(e) => bail!("{field}: {s:?} is not an amount of XMR: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_wrong_types_name_the_field() {
        let e = ProviderFile::from_toml_str("[limits]\nmax_gpu_shares = 50\n").unwrap_err();
        assert!(e.to_string().starts_with("limits.max_gpu_shares"), "{e}");
        let e = ProviderFile::from_toml_str("[limits]\nmax_gpu_share = \"half\"\n").unwrap_err();
        assert!(e.to_string().starts_with("limits.max_gpu_share"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = ProviderFile::from_toml_str("[limits]\nmax_gpu_share = 300\n").unwrap_err();
        assert!(e.to_string().starts_with("limits.max_gpu_share"), "{e}");
    }

    #[test]
    fn limits_are_checked_and_flags_win() {
        let file = ProviderFile::from_toml_str(
            "[limits]\nmax_gpu_share = 80\npause_above_c = 83\nresume_below_c = 75\nschedule = \"sat-sun all-day\"\n",
        )
        .unwrap();
        let l = limits(&file.limits, &LimitsFile::default()).unwrap();
        assert_eq!(l.max_gpu_share, 80);
        assert_eq!(l.schedule.to_string(), "sat+sun all-day");
        let flags = LimitsFile {
            max_gpu_share: Some(50),
            ..LimitsFile::default()
        };
        assert_eq!(limits(&file.limits, &flags).unwrap().max_gpu_share, 50);

        let bad = LimitsFile {
            resume_below_c: Some(90.0),
            ..LimitsFile::default()
        };
        let e = limits(&file.limits, &bad).unwrap_err().to_string();
        assert!(e.starts_with("limits.resume_below_c"), "{e}");
        let bad = LimitsFile {
            schedule: Some("weekends".into()),
            ..LimitsFile::default()
        };
        let e = limits(&file.limits, &bad).unwrap_err().to_string();
        assert!(e.starts_with("limits.schedule"), "{e}");
        let e = price("min_price_xmr_per_hour", "cheap")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("min_price_xmr_per_hour"), "{e}");
    }
}

/// A provider tier its owner asks for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A dedicated, locked-down machine for confidential work.
    Isolated,
}
