//! What the agent trains on.
//!
//! The [`Device`] trait hides the hardware: it describes itself (for the
//! pool's matching and the reproducibility class), reports telemetry, and
//! says how a segment's child process should use it. [`CpuDevice`] is the
//! default; GPU devices come with NVML support.

use gradpool_core::hardware::{DeviceKind, Hardware, Telemetry};

/// The load the agent puts on the device when it reads its telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Tasks running on the device.
    pub tasks_running: u32,
    /// The percent of the time they may train (`max_gpu_share`, lowered
    /// further to hold a power limit).
    pub share: u8,
}

/// Why a device's power limit was not set.
#[derive(Debug, thiserror::Error)]
pub enum PowerCapError {
    #[error("this device has no power limit the agent can set")]
    Unsupported,
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// A device the agent can train on.
pub trait Device: Send + Sync {
    /// The hardware as advertised to the pool.
    fn hardware(&self) -> Hardware;
    /// A fresh telemetry reading under `load`.
    fn telemetry(&self, load: Load) -> Telemetry;
    /// The device flags of the training processes (`gradpool segment
    /// run`, `bench proof`) that run here.
    fn segment_device(&self) -> crate::segment::DeviceFlags;
    /// Sets the device's own power limit. When this fails the agent holds
    /// the limit itself, by resting between steps against the measured
    /// power draw.
    fn set_power_limit(&self, watts: u32) -> Result<(), PowerCapError> {
        let _ = watts;
        Err(PowerCapError::Unsupported)
    }
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
            memory_bytes: host_memory_bytes().unwrap_or(0),
            isa: isa_level().to_owned(),
            uuid: None,
            host_isa: None,
            host_memory_bytes: None,
        }
    }

    fn telemetry(&self, load: Load) -> Telemetry {
        let total = meminfo_kib("MemTotal:").unwrap_or(0);
        let available = meminfo_kib("MemAvailable:").unwrap_or(total);
        Telemetry {
            load: load_average().unwrap_or(0.0),
            memory_used_bytes: total.saturating_sub(available) * 1024,
            tasks_running: load.tasks_running,
            ..Telemetry::default()
        }
    }

    fn segment_device(&self) -> crate::segment::DeviceFlags {
        crate::segment::DeviceFlags::cpu(self.threads)
    }
}

/// A device for tests of the agent's control logic: it trains on the CPU,
/// but its readings follow the load the agent puts on it. Each reading moves
/// the temperature halfway from where it was to `busy_c` while tasks run,
/// to `idle_c` while none do; the power draw is `idle_w` plus the share of
/// the time the tasks may train times `busy_w - idle_w`; utilization is
/// that share. Foreign processes appear when a test says so.
#[derive(Debug)]
pub struct SimulatedDevice {
    cpu: CpuDevice,
    idle_c: f32,
    busy_c: std::sync::Mutex<f32>,
    temperature: std::sync::Mutex<f32>,
    idle_w: f32,
    busy_w: f32,
    foreign: std::sync::atomic::AtomicU32,
}

impl SimulatedDevice {
    pub fn new(idle_c: f32, busy_c: f32) -> SimulatedDevice {
        SimulatedDevice {
            cpu: CpuDevice::new(Some(1)),
            idle_c,
            busy_c: std::sync::Mutex::new(busy_c),
            temperature: std::sync::Mutex::new(idle_c),
            idle_w: 30.0,
            busy_w: 300.0,
            foreign: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Sets the power draw idle and when training all the time.
    pub fn with_power(mut self, idle_w: f32, busy_w: f32) -> SimulatedDevice {
        self.idle_w = idle_w;
        self.busy_w = busy_w;
        self
    }

    /// Sets the temperature the device approaches under load (better or
    /// worse cooling).
    pub fn set_busy_c(&self, c: f32) {
        *self
            .busy_c
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
    }

    /// Sets how many foreign processes use the device.
    pub fn set_foreign_processes(&self, n: u32) {
        self.foreign.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Device for SimulatedDevice {
    fn hardware(&self) -> Hardware {
        self.cpu.hardware()
    }

    fn telemetry(&self, load: Load) -> Telemetry {
        let busy = load.tasks_running > 0;
        let target = if busy {
            *self
                .busy_c
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            self.idle_c
        };
        let temperature = {
            let mut t = self
                .temperature
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *t += (target - *t) / 2.0;
            *t
        };
        let duty = if busy {
            f32::from(load.share.min(100)) / 100.0
        } else {
            0.0
        };
        Telemetry {
            temperature_c: Some(temperature),
            foreign_processes: self.foreign.load(std::sync::atomic::Ordering::Relaxed),
            utilization_pct: Some(duty * 100.0),
            power_w: Some(self.idle_w + (self.busy_w - self.idle_w) * duty),
            ..self.cpu.telemetry(load)
        }
    }

    fn segment_device(&self) -> crate::segment::DeviceFlags {
        self.cpu.segment_device()
    }
}

/// The machine's RAM, from `/proc/meminfo`.
pub fn host_memory_bytes() -> Option<u64> {
    meminfo_kib("MemTotal:").map(|k| k * 1024)
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

/// The one-minute load average of the machine.
pub(crate) fn load_average() -> Option<f64> {
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
        assert_eq!(
            cpu.segment_device().args(),
            ["--device", "cpu", "--threads", "2"]
        );
    }
}
