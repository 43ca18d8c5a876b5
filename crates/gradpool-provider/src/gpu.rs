//! NVIDIA GPUs through NVML.
//!
//! NVML (`libnvidia-ml.so`, part of the driver) is loaded at run time by
//! `nvml-wrapper`, so the same binary runs on a machine without a driver:
//! [`Gpus::open`] then fails with [`GpuError::NoDriver`] and the agent
//! trains on the CPU. [`Gpus::list`] describes every GPU (name, UUID,
//! memory, compute capability, driver and CUDA version, PCIe link, power
//! limit); [`NvmlDevice`] is one GPU as a [`Device`]: its telemetry (every
//! heartbeat: temperature, utilization, memory used, power draw, clocks, and
//! the processes other than gradpool's using it) and its power cap.

use crate::device::{Device, Load, PowerCapError};
use gradpool_core::hardware::{CudaRuntime, DeviceKind, Hardware, Telemetry};
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;
use std::sync::Arc;

/// Why a GPU cannot be used, said so a rig owner knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no NVIDIA driver found ({0}): install the NVIDIA driver (Debian: `apt install nvidia-driver`) \
         and check that `nvidia-smi` lists the GPUs; until then the CPU is used"
    )]
    NoDriver(String),
    #[error(
        "the NVIDIA driver is installed but not loaded: reboot, or check `nvidia-smi`; until then \
         the CPU is used"
    )]
    DriverNotLoaded,
    #[error(
        "no permission to talk to the NVIDIA driver: run the provider as a user in the `video` \
         group (or as the service user of the shipped systemd unit)"
    )]
    NoPermission,
    #[error(
        "GPU {index} does not exist: this rig has {count} GPU(s) (see `gradpool provider init`)"
    )]
    NoSuchGpu { index: u32, count: u32 },
    #[error(
        "no permission to set GPU {index}'s power limit: run `sudo nvidia-smi -i {index} -pl {watts}` \
         once, or run the provider as root; until then the limit is held by resting between steps"
    )]
    PowerLimitDenied { index: u32, watts: u32 },
    #[error("{watts} W is outside GPU {index}'s power limit range, {min}–{max} W")]
    PowerLimitRange {
        index: u32,
        watts: u32,
        min: u32,
        max: u32,
    },
    #[error("NVML: {0}")]
    Nvml(#[from] NvmlError),
}

fn opening(e: NvmlError) -> GpuError {
    match e {
        NvmlError::LibloadingError(e) => GpuError::NoDriver(e.to_string()),
        NvmlError::FailedToLoadSymbol(s) => GpuError::NoDriver(format!("symbol {s} missing")),
        NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded,
        NvmlError::NoPermission => GpuError::NoPermission,
        e => GpuError::Nvml(e),
    }
}

/// One GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// NVML's index (`nvidia-smi -i`).
    pub index: u32,
    /// "NVIDIA GeForce RTX 3090".
    pub name: String,
    /// "GPU-5c4d3a2b-…": one physical device.
    pub uuid: String,
    pub memory_bytes: u64,
    /// "8.6".
    pub compute_capability: String,
    /// "550.54.15".
    pub driver_version: String,
    /// The CUDA version the driver supports, "12.4".
    pub cuda_version: String,
    /// "gen4 x16", when NVML tells.
    pub pcie_link: Option<String>,
    /// The power limit in force, in watts.
    pub power_limit_w: Option<u32>,
    /// The range the power limit may be set in, in watts.
    pub power_limit_range_w: Option<(u32, u32)>,
}

/// NVML, loaded.
#[derive(Clone)]
pub struct Gpus {
    nvml: Arc<Nvml>,
}

impl Gpus {
    /// Loads NVML; fails on a machine without the NVIDIA driver.
    pub fn open() -> Result<Gpus, GpuError> {
        let nvml = Nvml::init().map_err(opening)?;
        Ok(Gpus {
            nvml: Arc::new(nvml),
        })
    }

    /// Every GPU, in NVML's order.
    pub fn list(&self) -> Result<Vec<GpuInfo>, GpuError> {
        let count = self.nvml.device_count()?;
        (0..count).map(|i| self.info(i)).collect()
    }

    fn info(&self, index: u32) -> Result<GpuInfo, GpuError> {
        let count = self.nvml.device_count()?;
        if index >= count {
            return Err(GpuError::NoSuchGpu { index, count });
        }
        let d = self.nvml.device_by_index(index)?;
        let cc = d.cuda_compute_capability()?;
        let cuda = self.nvml.sys_cuda_driver_version()?;
        let pcie = match (d.current_pcie_link_gen(), d.current_pcie_link_width()) {
            (Ok(g), Ok(w)) => Some(format!("gen{g} x{w}")),
            _ => None,
        };
        Ok(GpuInfo {
            index,
            name: d.name()?,
            uuid: d.uuid()?,
            memory_bytes: d.memory_info()?.total,
            compute_capability: format!("{}.{}", cc.major, cc.minor),
            driver_version: self.nvml.sys_driver_version()?,
            cuda_version: format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(cuda),
                nvml_wrapper::cuda_driver_version_minor(cuda)
            ),
            pcie_link: pcie,
            power_limit_w: d.power_management_limit().ok().map(|mw| mw / 1000),
            power_limit_range_w: d
                .power_management_limit_constraints()
                .ok()
                .map(|c| (c.min_limit / 1000, c.max_limit / 1000)),
        })
    }

    /// GPU `index` as a device to train on.
    pub fn device(&self, index: u32) -> Result<NvmlDevice, GpuError> {
        let info = self.info(index)?;
        Ok(NvmlDevice {
            nvml: self.nvml.clone(),
            info,
            runtime: None,
        })
    }
}

/// One NVIDIA GPU: training runs there (`--device cuda`), telemetry comes
/// from NVML.
pub struct NvmlDevice {
    nvml: Arc<Nvml>,
    info: GpuInfo,
    runtime: Option<CudaRuntime>,
}

impl NvmlDevice {
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Adds what the CUDA runtime tells (SM count, cuBLAS version) to the
    /// GPU's reproducibility class. A CUDA build asks it before training;
    /// without it the class names what NVML tells only.
    pub fn with_runtime(mut self, runtime: CudaRuntime) -> NvmlDevice {
        self.runtime = Some(runtime);
        self
    }

    /// Tries the power cap: sets the limit 10% lower (within the driver's
    /// range), reads it back from the driver, and restores the limit that
    /// was in force. What `gradpool bench nvml --power-cap` reports.
    pub fn check_power_cap(&self) -> PowerCapCheck {
        let mut check = PowerCapCheck {
            original_w: self.info.power_limit_w,
            range_w: self.info.power_limit_range_w,
            set_w: None,
            read_back_w: None,
            restored_w: None,
            error: None,
        };
        let (Some(original), Some((min, _))) = (check.original_w, check.range_w) else {
            check.error = Some("the driver reports no power limit for this GPU".into());
            return check;
        };
        let target = (original - original / 10).max(min);
        if target == original {
            check.error = Some(format!("the limit is already the lowest allowed, {min} W"));
            return check;
        }
        if let Err(e) = self.set_power_limit(target) {
            check.error = Some(e.to_string());
            return check;
        }
        check.set_w = Some(target);
        check.read_back_w = self.limit_now();
        if let Err(e) = self.set_power_limit(original) {
            check.error = Some(format!("could not restore {original} W: {e}"));
        }
        check.restored_w = self.limit_now();
        check
    }

    /// The power limit in force now, in watts.
    fn limit_now(&self) -> Option<u32> {
        let d = self.nvml.device_by_index(self.info.index).ok()?;
        d.power_management_limit().ok().map(|mw| mw / 1000)
    }
}

/// What trying the power cap found ([`NvmlDevice::check_power_cap`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerCapCheck {
    /// The limit in force before, in watts.
    pub original_w: Option<u32>,
    /// The range the driver allows.
    pub range_w: Option<(u32, u32)>,
    /// The limit set, when the driver took it.
    pub set_w: Option<u32>,
    /// The limit the driver reported after setting it.
    pub read_back_w: Option<u32>,
    /// The limit the driver reported after restoring the original.
    pub restored_w: Option<u32>,
    /// Why the cap could not be set or restored (no permission, no limit).
    pub error: Option<String>,
}

/// Whether `pid` runs this same program (a segment process of this agent,
/// or another gradpool): such processes are not foreign.
fn is_gradpool(pid: u32) -> bool {
    let Ok(ours) = std::env::current_exe() else {
        return false;
    };
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == ours)
}

impl Device for NvmlDevice {
    fn hardware(&self) -> Hardware {
        Hardware {
            device: DeviceKind::Cuda,
            name: self.info.name.clone(),
            threads: 1,
            memory_bytes: self.info.memory_bytes,
            // Rounding differs by architecture, model (cuBLAS picks its
            // algorithms by model and SM count), driver, CUDA and cuBLAS
            // version.
            isa: cuda_class(&self.info, self.runtime.as_ref()),
            uuid: Some(self.info.uuid.clone()),
            host_isa: Some(crate::device::isa_level().to_owned()),
            host_memory_bytes: crate::device::host_memory_bytes(),
        }
    }

    fn telemetry(&self, load: Load) -> Telemetry {
        let mut t = Telemetry {
            tasks_running: load.tasks_running,
            ..Telemetry::default()
        };
        let Ok(d) = self.nvml.device_by_index(self.info.index) else {
            return t;
        };
        t.temperature_c = d.temperature(TemperatureSensor::Gpu).ok().map(|c| c as f32);
        t.utilization_pct = d.utilization_rates().ok().map(|u| u.gpu as f32);
        t.memory_used_bytes = d.memory_info().map(|m| m.used).unwrap_or(0);
        t.power_w = d.power_usage().ok().map(|mw| mw as f32 / 1000.0);
        t.clock_mhz = d.clock_info(Clock::Graphics).ok();
        let mut pids: Vec<u32> = d
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .chain(d.running_graphics_processes().unwrap_or_default())
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        t.foreign_processes = pids.into_iter().filter(|p| !is_gradpool(*p)).count() as u32;
        t.load = crate::device::load_average().unwrap_or(0.0);
        t
    }

    fn segment_device(&self) -> crate::segment::DeviceFlags {
        crate::segment::DeviceFlags::cuda(self.info.index)
    }

    fn set_power_limit(&self, watts: u32) -> Result<(), PowerCapError> {
        let index = self.info.index;
        if let Some((min, max)) = self.info.power_limit_range_w {
            if !(min..=max).contains(&watts) {
                return Err(GpuError::PowerLimitRange {
                    index,
                    watts,
                    min,
                    max,
                }
                .into());
            }
        }
        let mut d = self.nvml.device_by_index(index).map_err(GpuError::from)?;
        match d.set_power_management_limit(watts.saturating_mul(1000)) {
            Ok(()) => Ok(()),
            Err(NvmlError::NoPermission) => Err(GpuError::PowerLimitDenied { index, watts }.into()),
            Err(NvmlError::NotSupported) => Err(PowerCapError::Unsupported),
            Err(e) => Err(GpuError::from(e).into()),
        }
    }
}

/// The CPU's description for `gradpool provider init`, beside the GPUs:
/// all its threads, as the agent would use them by default.
pub fn cpu_summary() -> String {
    let hw = crate::device::CpuDevice::new(None).hardware();
    format!(
        "{} ({} threads, {}, {:.1} GiB)",
        hw.name,
        hw.threads,
        hw.isa,
        hw.memory_bytes as f64 / (1u64 << 30) as f64
    )
}

/// The device part of a GPU's reproducibility class:
/// `sm<cc>-<model>-<N>sm-driver<version>-cuda<version>-cublas<version>`,
/// e.g. `sm90-nvidia-h200-132sm-driver570.86.15-cuda12.8-cublas13.1.0`;
/// without `runtime` (a build without CUDA) the SM count and cuBLAS parts
/// are left out.
pub fn cuda_class(info: &GpuInfo, runtime: Option<&CudaRuntime>) -> String {
    let model: String = info
        .name
        .to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let sms = runtime
        .map(|r| format!("-{}sm", r.sm_count))
        .unwrap_or_default();
    let cublas = runtime
        .map(|r| format!("-cublas{}", r.cublas_version))
        .unwrap_or_default();
    format!(
        "sm{}-{model}{sms}-driver{}-cuda{}{cublas}",
        info.compute_capability.replace('.', ""),
        info.driver_version,
        info.cuda_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_class_names_its_architecture_model_driver_and_cuda() {
        let info = GpuInfo {
            index: 0,
            name: "NVIDIA GeForce RTX 3090".into(),
            uuid: "GPU-1".into(),
            memory_bytes: 24 << 30,
            compute_capability: "8.6".into(),
            driver_version: "550.54.15".into(),
            cuda_version: "12.4".into(),
            pcie_link: None,
            power_limit_w: None,
            power_limit_range_w: None,
        };
        assert_eq!(
            cuda_class(&info, None),
            "sm86-nvidia-geforce-rtx-3090-driver550.54.15-cuda12.4"
        );
        // A MIG slice of the same card would have fewer SMs: another class.
        let runtime = CudaRuntime {
            sm_count: 82,
            cublas_version: "13.1.0".into(),
        };
        assert_eq!(
            cuda_class(&info, Some(&runtime)),
            "sm86-nvidia-geforce-rtx-3090-82sm-driver550.54.15-cuda12.4-cublas13.1.0"
        );
    }

    /// On a machine without the driver (CI, this crate's tests) NVML does
    /// not load, and the error says what to do.
    #[test]
    fn without_a_driver_the_error_says_what_to_do() {
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            return; // A real GPU machine: the device tests run there.
        }
        let e = Gpus::open().err().expect("no NVML without a driver");
        let text = e.to_string();
        assert!(
            text.contains("NVIDIA driver") && text.contains("the CPU is used"),
            "{text}"
        );
    }
}
