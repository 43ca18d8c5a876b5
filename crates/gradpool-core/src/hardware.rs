//! What a provider runs on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// The device a provider trains on, as it advertises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hardware {
    pub device: DeviceKind,
    /// "AMD EPYC 7B13" or "NVIDIA GeForce RTX 3090".
    pub name: String,
    /// CPU threads the runtime uses.
    pub threads: u32,
    pub memory_bytes: u64,
    /// CPU instruction-set level (`x86-64-v3`, `aarch64`) or GPU model and
    /// driver.
    pub isa: String,
    /// A GPU's UUID as NVML reports it (`GPU-…`): one physical device, so
    /// the pool holds two providers that claim the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// A GPU rig's CPU instruction-set level: what a container segment
    /// that runs on its CPU is classed by (`None` on a CPU rig, whose
    /// `isa` it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_isa: Option<String>,
    /// A GPU rig's RAM, in bytes: what a container job's `memory_gib` is
    /// matched against (`None` on a CPU rig, whose `memory_bytes` it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_memory_bytes: Option<u64>,
}

impl Hardware {
    /// The memory a container segment runs in: the host's RAM (0 for a
    /// GPU rig that does not say).
    pub fn host_memory(&self) -> u64 {
        match self.device {
            DeviceKind::Cpu => self.memory_bytes,
            DeviceKind::Cuda => self.host_memory_bytes.unwrap_or(0),
        }
    }

    /// The reproducibility class: runtime version, device kind and
    /// instruction set. Inside a class, the same segment gives bit-identical
    /// checkpoints.
    pub fn class(&self) -> String {
        format!("{}/{}/{}", crate::RUNTIME_VERSION, self.device, self.isa)
    }
}

/// What the CUDA runtime tells of a GPU beyond NVML's description. cuBLAS
/// picks its GEMM algorithms by the number of SMs (a MIG slice of a GPU has
/// fewer than the whole card, under the same name) and its own version, so
/// both name a GPU's reproducibility class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CudaRuntime {
    /// Streaming multiprocessors the device has (or the MIG slice).
    pub sm_count: u32,
    /// The cuBLAS library loaded, "13.1.0".
    pub cublas_version: String,
}

/// What a provider reports with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Telemetry {
    /// One-minute load average of the machine.
    #[serde(deserialize_with = "crate::finite::f64")]
    pub load: f64,
    pub memory_used_bytes: u64,
    pub tasks_running: u32,
    /// The device's temperature, where it can tell.
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f32",
        skip_serializing_if = "Option::is_none"
    )]
    pub temperature_c: Option<f32>,
    /// Processes other than gradpool's using the device (a game, the
    /// owner's own work).
    #[serde(default)]
    pub foreign_processes: u32,
    /// How busy the device is, in percent, where it can tell.
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f32",
        skip_serializing_if = "Option::is_none"
    )]
    pub utilization_pct: Option<f32>,
    /// The device's power draw in watts, where it can tell.
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f32",
        skip_serializing_if = "Option::is_none"
    )]
    pub power_w: Option<f32>,
    /// The device's graphics clock in MHz, where it can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_mhz: Option<u32>,
}

impl Telemetry {
    /// Checks that every reading is one a device can give: a refusal names
    /// the field.
    pub fn check(&self) -> Result<(), String> {
        use crate::finite::check_range;
        check_range("telemetry.load", self.load, 0.0, 1e6)?;
        if let Some(t) = self.temperature_c {
            check_range("telemetry.temperature_c", t, -100.0, 250.0)?;
        }
        if let Some(u) = self.utilization_pct {
            check_range("telemetry.utilization_pct", u, 0.0, 100.0)?;
        }
        if let Some(w) = self.power_w {
            check_range("telemetry.power_w", w, 0.0, 100_000.0)?;
        }
        Ok(())
    }
}
