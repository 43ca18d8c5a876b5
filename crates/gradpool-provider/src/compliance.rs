//! The isolated tier's host checks ([`gradpool_core::compliance`]): the
//! rules here, the facts through [`Host`], read from `/proc` and `/sys` on
//! a real machine ([`SystemHost`]) and made up in tests.

use gradpool_core::compliance::{Check, CheckName, ComplianceReport};
use std::path::{Path, PathBuf};

/// What the checks read of the machine.
pub trait Host {
    /// Whether the filesystem holding `path` lies on dm-crypt (directly or
    /// under LVM), and the device it found.
    fn encrypted(&self, path: &Path) -> (bool, String);
    /// Active swap areas, each with whether it is encrypted (dm-crypt, or
    /// zram, which never leaves memory).
    fn swaps(&self) -> Vec<(String, bool)>;
    /// Listening sockets (`proto addr:port`) that are not the agent's own.
    fn foreign_listeners(&self) -> Vec<String>;
    /// Logged-in users other than the agent's own.
    fn other_users(&self) -> Vec<String>;
    /// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`),
    /// if the kernel says.
    fn lockdown(&self) -> Option<String>;
    /// Whether UEFI Secure Boot is on, if the firmware says.
    fn secure_boot(&self) -> Option<bool>;
    /// How many IOMMU units are active.
    fn iommus(&self) -> usize;
    /// The GPU's confidential-computing mode: `None` without a GPU that
    /// has one.
    fn gpu_confidential_computing(&self) -> Option<bool>;
}

/// `items` for a check's detail: `none`, or each by name.
fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Runs every check on `host` for an agent whose data lives in `data_dir`.
pub fn run_checks(host: &dyn Host, data_dir: &Path, now: i64) -> ComplianceReport {
    let check = |name, passed, detail: String| Check {
        name,
        passed,
        detail,
    };
    let (encrypted, device) = host.encrypted(data_dir);
    let swaps = host.swaps();
    let clear: Vec<&str> = swaps
        .iter()
        .filter(|(_, e)| !e)
        .map(|(s, _)| s.as_str())
        .collect();
    let listeners = host.foreign_listeners();
    let users = host.other_users();
    let lockdown = host.lockdown();
    let secure_boot = host.secure_boot();
    let iommus = host.iommus();
    let cc = host.gpu_confidential_computing();
    let checks = vec![
        check(
            CheckName::EncryptedDataDir,
            encrypted,
            format!("{} on {device}", data_dir.display()),
        ),
        check(
            CheckName::SwapOffOrEncrypted,
            clear.is_empty(),
            match (swaps.len(), clear.is_empty()) {
                (0, _) => "no swap".to_owned(),
                (_, true) => format!("{} swap areas, all encrypted", swaps.len()),
                (_, false) => format!("unencrypted swap: {}", clear.join(", ")),
            },
        ),
        check(
            CheckName::NoForeignListeners,
            listeners.is_empty(),
            listed(&listeners),
        ),
        check(CheckName::NoOtherUsers, users.is_empty(), listed(&users)),
        check(
            CheckName::KernelLockdown,
            matches!(lockdown.as_deref(), Some("integrity" | "confidentiality")),
            lockdown.unwrap_or_else(|| "not reported by the kernel".into()),
        ),
        check(
            CheckName::SecureBoot,
            secure_boot == Some(true),
            match secure_boot {
                Some(true) => "on".into(),
                Some(false) => "off".into(),
                None => "no UEFI Secure Boot variable".into(),
            },
        ),
        check(
            CheckName::Iommu,
            iommus > 0,
            format!("{iommus} IOMMU units"),
        ),
        check(
            CheckName::GpuConfidentialComputing,
            cc != Some(false),
            match cc {
                Some(true) => "on".into(),
                Some(false) => "off".into(),
                None => "not applicable: no GPU with a confidential-computing mode".into(),
            },
        ),
    ];
    ComplianceReport {
        time: now,
        checks,
        attestation: None,
    }
}

/// The machine the agent runs on.
pub struct SystemHost;

/// The `major:minor` of the filesystem holding `path`: the longest mount
/// point above it in `/proc/self/mountinfo`.
fn device_of(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let point = PathBuf::from(f.get(4)?.replace("\\040", " "));
            let dev = (*f.get(2)?).to_owned();
            path.starts_with(&point).then_some((point, dev))
        })
        .max_by_key(|(p, _)| p.as_os_str().len())
        .map(|(_, dev)| dev)
}

/// Whether the block device at `/sys/.../DEV` is dm-crypt or stacked on
/// it (its slaves, a few levels down).
fn dm_crypt(sys: &Path, depth: u32) -> bool {
    let uuid = std::fs::read_to_string(sys.join("dm/uuid")).unwrap_or_default();
    if uuid.starts_with("CRYPT-") {
        return true;
    }
    depth < 4
        && std::fs::read_dir(sys.join("slaves")).is_ok_and(|d| {
            d.flatten()
                .any(|s| dm_crypt(&Path::new("/sys/block").join(s.file_name()), depth + 1))
        })
}

/// The socket inodes this process holds.
fn own_sockets() -> std::collections::HashSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Host for SystemHost {
    fn encrypted(&self, path: &Path) -> (bool, String) {
        match device_of(path) {
            Some(dev) => (dm_crypt(&Path::new("/sys/dev/block").join(&dev), 0), dev),
            None => (false, "an unknown device".into()),
        }
    }

    fn swaps(&self) -> Vec<(String, bool)> {
        let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|name| {
                let dev = Path::new(name);
                let encrypted = name.starts_with("/dev/zram")
                    || match dev.file_name() {
                        Some(n) if name.starts_with("/dev/") => {
                            dm_crypt(&Path::new("/sys/class/block").join(n), 0)
                        }
                        _ => self.encrypted(dev).0,
                    };
                (name.to_owned(), encrypted)
            })
            .collect()
    }

    fn foreign_listeners(&self) -> Vec<String> {
        let own = own_sockets();
        let mut out = Vec::new();
        for (proto, file, listening) in [
            ("tcp", "/proc/net/tcp", "0A"),
            ("tcp6", "/proc/net/tcp6", "0A"),
            ("udp", "/proc/net/udp", "07"),
            ("udp6", "/proc/net/udp6", "07"),
        ] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for l in text.lines().skip(1) {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                    continue;
                };
                if *state == listening && !own.contains(*inode) {
                    out.push(format!("{proto} {local}"));
                }
            }
        }
        out
    }

    fn other_users(&self) -> Vec<String> {
        let me = std::env::var("USER").unwrap_or_default();
        let who = std::process::Command::new("who").output();
        let mut users: Vec<String> = who
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|u| *u != me)
            .collect();
        users.sort();
        users.dedup();
        users
    }

    fn lockdown(&self) -> Option<String> {
        let text = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
        let start = text.find('[')?;
        let end = text[start..].find(']')?;
        Some(text[start + 1..start + end].to_owned())
    }

    fn secure_boot(&self) -> Option<bool> {
        let var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
        // Four bytes of attributes, then the value.
        std::fs::read(var).ok()?.get(4).map(|v| *v == 1)
    }

    fn iommus(&self) -> usize {
        std::fs::read_dir("/sys/class/iommu").map_or(0, |d| d.count())
    }

    fn gpu_confidential_computing(&self) -> Option<bool> {
        use nvml_wrapper::error::NvmlError;
        // No NVIDIA driver or no GPU: nothing to check.
        let nvml = nvml_wrapper::Nvml::init().ok()?;
        let device = nvml.device_by_index(0).ok()?;
        let production = |dev_mode: Result<bool, NvmlError>| matches!(dev_mode, Ok(false));
        match device.is_cc_enabled() {
            // On, and not the development mode (which attests nothing).
            Ok(true) => Some(production(device.is_cc_dev_mode_enabled())),
            Ok(false) => Some(false),
            // A GPU (or a driver) without the mode.
            Err(
                NvmlError::NotSupported
                | NvmlError::FunctionNotFound
                | NvmlError::FailedToLoadSymbol(_),
            ) => None,
            // It has the mode and cannot say how it stands: not passed.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the GPU's confidential-computing mode");
                Some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A locked-down workstation, one fact changed by each test.
    #[derive(Clone)]
    struct Fake {
        encrypted: bool,
        swaps: Vec<(String, bool)>,
        listeners: Vec<String>,
        users: Vec<String>,
        lockdown: Option<String>,
        secure_boot: Option<bool>,
        iommus: usize,
        cc: Option<bool>,
    }

    impl Host for Fake {
        fn encrypted(&self, _: &Path) -> (bool, String) {
            (self.encrypted, "253:1".into())
        }
        fn swaps(&self) -> Vec<(String, bool)> {
            self.swaps.clone()
        }
        fn foreign_listeners(&self) -> Vec<String> {
            self.listeners.clone()
        }
        fn other_users(&self) -> Vec<String> {
            self.users.clone()
        }
        fn lockdown(&self) -> Option<String> {
            self.lockdown.clone()
        }
        fn secure_boot(&self) -> Option<bool> {
            self.secure_boot
        }
        fn iommus(&self) -> usize {
            self.iommus
        }
        fn gpu_confidential_computing(&self) -> Option<bool> {
            self.cc
        }
    }

    fn locked_down() -> Fake {
        Fake {
            encrypted: true,
            swaps: vec![("/dev/zram0".into(), true)],
            listeners: vec![],
            users: vec![],
            lockdown: Some("integrity".into()),
            secure_boot: Some(true),
            iommus: 1,
            cc: None,
        }
    }

    /// One change away from a locked-down workstation.
    type Gap = fn(&mut Fake);

    fn failures(host: Fake) -> Vec<&'static str> {
        run_checks(&host, Path::new("/data"), 0).failures()
    }

    #[test]
    fn a_locked_down_workstation_passes_and_each_gap_fails_its_check() {
        let report = run_checks(&locked_down(), Path::new("/data"), 7);
        assert!(report.passed(), "{report:#?}");
        assert_eq!(report.time, 7);
        let gpu = report
            .checks
            .iter()
            .find(|c| c.name == CheckName::GpuConfidentialComputing)
            .unwrap();
        assert!(gpu.detail.contains("not applicable"));
        let cases: [(Gap, &str); 8] = [
            (|h| h.encrypted = false, "encrypted_data_dir"),
            (
                |h| h.swaps.push(("/dev/sda2".into(), false)),
                "swap_off_or_encrypted",
            ),
            (
                |h| h.listeners.push("tcp 00000000:0016".into()),
                "no_foreign_listeners",
            ),
            (|h| h.users.push("mallory".into()), "no_other_users"),
            (|h| h.lockdown = Some("none".into()), "kernel_lockdown"),
            (|h| h.secure_boot = None, "secure_boot"),
            (|h| h.iommus = 0, "iommu"),
            (|h| h.cc = Some(false), "gpu_confidential_computing"),
        ];
        for (change, failed) in cases {
            let mut host = locked_down();
            change(&mut host);
            assert_eq!(failures(host), [failed]);
        }
    }

    #[test]
    fn this_machine_is_read_without_failing() {
        // Whatever it finds, the real host gives a complete report; this
        // sandbox's data directory is no dm-crypt volume.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let report = run_checks(&SystemHost, dir.path(), 0);
        assert_eq!(report.checks.len(), CheckName::ALL.len());
        assert!(report.failures().contains(&"encrypted_data_dir"));
        assert!(report.check().is_ok());
    }
}
