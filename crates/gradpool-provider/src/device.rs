//! What the agent trains on.
//!
//! The [`Device`] trait hides the hardware: it describes itself (for the
//! pool's matching and the reproducibility class), reports telemetry, and
//! says how a segment's child process should use it. [`CpuDevice`] is the
//! default; GPU devices come with NVML support.

use gradpool_core::hardware::{DeviceKind, Hardware, Telemetry};

/// A device the agent can train on.
pub trait Device: Send + Sync {
    /// The hardware as advertised to the pool.
    fn hardware(&self) -> Hardware;
    /// A fresh telemetry reading.
    fn telemetry(&self) -> Telemetry;
    /// Arguments passed to `gradpool segment run` so it trains here.
    fn segment_args(&self) -> Vec<String>;
}

/// The CPU, with a fixed number of threads.
#[derive(Debug, Clone)]
pub struct CpuDevice {
    pub threads: u32,
}

impl CpuDevice {
    /// The CPU with `threads` threads, or all of them when `None`.
    pub fn new(threads: Option<u32>) -> CpuDevice {
        let available = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        CpuDevice {
            threads: threads.unwrap_or(available).max(1),
        }
    }
}

impl Device for CpuDevice {
    fn hardware(&self) -> Hardware {
        Hardware {
            device: DeviceKind::Cpu,
            name: cpu_model_name().unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
            threads: self.threads,
            memory_bytes: meminfo_kib("MemTotal:").unwrap_or(0) * 1024,
            isa: isa_level().to_owned(),
        }
    }

    fn telemetry(&self) -> Telemetry {
        let total = meminfo_kib("MemTotal:").unwrap_or(0);
        let available = meminfo_kib("MemAvailable:").unwrap_or(total);
        Telemetry {
            load: load_average().unwrap_or(0.0),
            memory_used_bytes: total.saturating_sub(available) * 1024,
            tasks_running: 0,
        }
    }

    fn segment_args(&self) -> Vec<String> {
        vec![
            "--device".into(),
            "cpu".into(),
            "--threads".into(),
            self.threads.to_string(),
        ]
    }
}

/// The instruction-set level the CPU supports: part of the reproducibility
/// class, since vectorised kernels may round differently across levels.
pub fn isa_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512cd")
            && has!("avx512dq")
            && has!("avx512vl")
        {
            return "x86-64-v4";
        }
        if has!("avx2") && has!("fma") && has!("bmi2") && has!("f16c") && has!("movbe") {
            return "x86-64-v3";
        }
        if has!("sse4.2") && has!("popcnt") && has!("ssse3") {
            return "x86-64-v2";
        }
        "x86-64"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

fn cpu_model_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_describes_itself() {
        let cpu = CpuDevice::new(Some(2));
        let hw = cpu.hardware();
        assert_eq!(hw.device, DeviceKind::Cpu);
        assert_eq!(hw.threads, 2);
        assert!(hw.class().contains("/cpu/"), "{}", hw.class());
        assert_eq!(cpu.segment_args(), ["--device", "cpu", "--threads", "2"]);
    }
}
