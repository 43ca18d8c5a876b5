//! The agent's container images: its own podman storage, apart from the
//! owner's, holding each job image once, by the digest of the archive it
//! came from, under a disk cap with least-recently-used eviction.
//!
//! `index.json` beside the storage records each image's size and when a
//! segment last used it; an image in use is never evicted.

use super::{io, ContainerError};
use gradpool_core::Sha256Hex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The name every job image gets in the store: `PREFIX:<digest>`.
pub const IMAGE_PREFIX: &str = "localhost/gradpool-image";

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Entry {
    bytes: u64,
    /// Unix seconds of the last use.
    used: i64,
}

/// The agent's podman storage and its images.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    runroot: PathBuf,
    cap_bytes: u64,
    rootless: bool,
}

impl ImageStore {
    /// The store under `dir` (created), holding at most `cap_bytes` of
    /// images once a new one is in.
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<ImageStore, ContainerError> {
        let root = dir.join("storage");
        std::fs::create_dir_all(&root).map_err(io(format!("cannot create {}", root.display())))?;
        // podman's run root holds sockets: keep its path short.
        let tag = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
        let runroot = std::env::temp_dir().join(format!("gradpool-podman-{}", &tag[..12]));
        std::fs::create_dir_all(&runroot)
            .map_err(io(format!("cannot create {}", runroot.display())))?;
        Ok(ImageStore {
            root,
            runroot,
            cap_bytes,
            rootless: !running_as_root(),
        })
    }

    /// Whether podman runs rootless here (the agent is not root).
    pub fn rootless(&self) -> bool {
        self.rootless
    }

    /// A podman command on this store.
    pub fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot);
        if let Some(runtime) = runtime() {
            cmd.arg("--runtime").arg(runtime);
        }
        cmd
    }

    fn index_path(&self) -> PathBuf {
        self.root.with_file_name("index.json")
    }

    fn index(&self) -> BTreeMap<String, Entry> {
        std::fs::read(self.index_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_index(&self, index: &BTreeMap<String, Entry>) -> Result<(), ContainerError> {
        let path = self.index_path();
        let partial = path.with_extension("partial");
        let text = serde_json::to_vec_pretty(index).unwrap_or_default();
        std::fs::write(&partial, text)
            .map_err(io(format!("cannot write {}", partial.display())))?;
        std::fs::rename(&partial, &path).map_err(io(format!("cannot write {}", path.display())))
    }

    /// The image of the archive of `digest`, loading it from `archive`
    /// when the store lacks it, then evicting the least recently used
    /// others while the store is over its cap. Returns the image's name.
    pub async fn ensure(
        &self,
        digest: &Sha256Hex,
        archive: impl FnOnce() -> Option<PathBuf>,
        now: i64,
    ) -> Result<String, ContainerError> {
        let name = format!("{IMAGE_PREFIX}:{digest}");
        let mut index = self.index();
        if !self.exists(&name).await? {
            let archive = archive().ok_or_else(|| {
                ContainerError::Image(format!(
                    "image {digest} is not here and no archive was given"
                ))
            })?;
            let bytes = self.load(&archive, &name).await?;
            index.insert(digest.to_string(), Entry { bytes, used: now });
        }
        index.entry(digest.to_string()).or_default().used = now;
        self.evict(&mut index, digest).await?;
        self.save_index(&index)?;
        Ok(name)
    }

    /// Whether the store holds the image of the archive of `digest`.
    pub async fn contains(&self, digest: &Sha256Hex) -> Result<bool, ContainerError> {
        self.exists(&format!("{IMAGE_PREFIX}:{digest}")).await
    }

    /// Whether podman runs on this store and can hold a container to the
    /// sandbox's limits: the check before the agent offers to run
    /// container jobs. Rootless podman caps memory, processes and CPUs
    /// only on cgroups v2 with those controllers delegated to the user; on
    /// cgroups v1 it ignores the limits (and says so in a warning), so a
    /// store that cannot enforce them is refused.
    pub async fn check(&self) -> Result<(), ContainerError> {
        let out = self
            .podman()
            .args([
                "info",
                "--format",
                "{{.Host.Security.Rootless}}|{{.Host.CgroupsVersion}}|{{.Host.CgroupControllers}}",
            ])
            .output()
            .await
            .map_err(ContainerError::Podman)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let hint = if err.contains("newuidmap") {
                " (rootless podman needs newuidmap: a systemd unit must not set                  NoNewPrivileges, see packaging/gradpool-provider-containers.conf)"
            } else {
                ""
            };
            return Err(ContainerError::Image(format!(
                "podman info: {}{hint}",
                err.trim()
            )));
        }
        limits_problem(&String::from_utf8_lossy(&out.stdout))
            .map_or(Ok(()), |why| Err(ContainerError::Limits(why)))
    }

    /// Removes every container `owner` ran in this store: those of
    /// segments a crashed agent left running. Other agents sharing the
    /// store keep theirs.
    pub async fn remove_containers_of(&self, owner: &str) {
        let _ = self
            .podman()
            .args(["rm", "--force", "--time", "0", "--filter"])
            .arg(format!("label={}={owner}", super::OWNER_LABEL))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }

    /// How many images the store in `dir` holds and their bytes, as
    /// recorded when they were loaded; read without podman or any change
    /// to the store.
    pub fn usage(dir: &Path) -> (usize, u64) {
        let index: BTreeMap<String, Entry> = std::fs::read(dir.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        (index.len(), index.values().map(|e| e.bytes).sum())
    }

    /// The most bytes of images the store keeps.
    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    /// The total size of the images held, as recorded when loaded.
    pub fn held_bytes(&self) -> u64 {
        self.index().values().map(|e| e.bytes).sum()
    }

    async fn exists(&self, name: &str) -> Result<bool, ContainerError> {
        let status = self
            .podman()
            .args(["image", "exists", name])
            .status()
            .await
            .map_err(ContainerError::Podman)?;
        Ok(status.success())
    }

    /// Loads an archive (OCI or Docker, compressed or not) and names its
    /// image `name`; returns the image's size.
    async fn load(&self, archive: &Path, name: &str) -> Result<u64, ContainerError> {
        let out = self
            .podman()
            .arg("load")
            .arg("--quiet")
            .arg("--input")
            .arg(archive)
            .output()
            .await
            .map_err(ContainerError::Podman)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(ContainerError::Image(format!(
                "podman load: {}",
                err.trim()
            )));
        }
        let loaded = loaded_name(&text)
            .ok_or_else(|| ContainerError::Image(format!("podman load said {:?}", text.trim())))?;
        self.podman_ok(&["tag", &loaded, name]).await?;
        if loaded != name && !loaded.starts_with("sha256:") {
            // The archive's own name means nothing here: only the digest's.
            self.podman_ok(&["untag", name, &loaded]).await.ok();
        }
        let size = self
            .podman()
            .args(["image", "inspect", "--format", "{{.Size}}", name])
            .output()
            .await
            .map_err(ContainerError::Podman)?;
        Ok(String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    async fn podman_ok(&self, args: &[&str]) -> Result<(), ContainerError> {
        let out = self
            .podman()
            .args(args)
            .output()
            .await
            .map_err(ContainerError::Podman)?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(ContainerError::Image(format!(
                "podman {}: {}",
                args.join(" "),
                err.trim()
            )))
        }
    }

    /// Removes the least recently used images but `keep` while the store
    /// is over its cap.
    async fn evict(
        &self,
        index: &mut BTreeMap<String, Entry>,
        keep: &Sha256Hex,
    ) -> Result<(), ContainerError> {
        let mut by_age: Vec<(i64, String)> = index
            .iter()
            .filter(|(d, _)| d.as_str() != keep.as_str())
            .map(|(d, e)| (e.used, d.clone()))
            .collect();
        by_age.sort();
        for (_, digest) in by_age {
            if index.values().map(|e| e.bytes).sum::<u64>() <= self.cap_bytes {
                break;
            }
            let name = format!("{IMAGE_PREFIX}:{digest}");
            match self.podman_ok(&["rmi", "--force", &name]).await {
                Ok(()) => {
                    tracing::info!(image = %digest, "evicted an image: the image cache is over its cap");
                    index.remove(&digest);
                }
                Err(e) => tracing::warn!(image = %digest, error = %e, "could not evict an image"),
            }
        }
        Ok(())
    }

    /// Whether the container `name` was killed for going over its memory.
    pub async fn out_of_memory(&self, name: &str) -> bool {
        let out = self
            .podman()
            .args(["inspect", "--format", "{{.State.OOMKilled}}", name])
            .output()
            .await;
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "true")
    }

    /// Removes the container `name`, running or not (nothing if absent).
    pub async fn remove_container(&self, name: &str) {
        let _ = self
            .podman()
            .args(["rm", "--force", "--time", "0", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// Why podman, as `podman info` describes it (`ROOTLESS|CGROUPS|[CONTROLLERS]`),
/// cannot hold a container to its memory, process and CPU limits; `None`
/// when it can. Rootful podman can on either cgroups version.
fn limits_problem(info: &str) -> Option<String> {
    let mut parts = info.trim().splitn(3, '|');
    let (rootless, version, controllers) = (parts.next()?, parts.next()?, parts.next()?);
    if rootless != "true" {
        return None;
    }
    if version != "v2" {
        return Some(format!(
            "rootless podman on cgroups {version} ignores memory, process and CPU limits; \
             boot with cgroups v2 (Debian 12's default) or run the agent as root"
        ));
    }
    let have: Vec<&str> = controllers
        .trim_matches(|c| c == '[' || c == ']')
        .split_whitespace()
        .collect();
    let missing: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "rootless podman here lacks the cgroup controllers {} (delegated: {controllers}); \
             delegate them to the agent's user (Delegate= in its systemd unit, see \
             packaging/gradpool-provider-containers.conf)",
            missing.join(", ")
        )
    })
}

/// The image name `podman load` reports (`Loaded image: NAME` or `Loaded
/// image(s): NAME,…`).
fn loaded_name(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.starts_with("Loaded image"))
        })
        .filter_map(|(_, v)| v.split(',').next().map(|n| n.trim().to_owned()))
        .find(|n| !n.is_empty())
}

/// The OCI runtime: `runc` where it is installed (crun fails on hosts with
/// hybrid cgroups), else podman's default; `GRADPOOL_PODMAN_RUNTIME`
/// overrides.
fn runtime() -> Option<String> {
    if let Ok(r) = std::env::var("GRADPOOL_PODMAN_RUNTIME") {
        return (!r.is_empty()).then_some(r);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .any(|dir| dir.join("runc").is_file())
        .then(|| "runc".to_owned())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_image_is_read_from_what_podman_says() {
        assert_eq!(
            loaded_name("Loaded image: localhost/gradpool-build:1\n").as_deref(),
            Some("localhost/gradpool-build:1")
        );
        assert_eq!(
            loaded_name("Loaded image(s): sha256:abc,localhost/x:y\n").as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(loaded_name("Error: nothing\n"), None);
    }

    #[test]
    fn a_store_that_cannot_cap_its_containers_is_refused() {
        assert_eq!(limits_problem("false|v1|[cpu memory pids]\n"), None);
        assert_eq!(limits_problem("true|v2|[cpuset cpu io memory pids]"), None);
        let v1 = limits_problem("true|v1|[]").unwrap();
        assert!(v1.contains("cgroups v1 ignores"), "{v1}");
        let undelegated = limits_problem("true|v2|[cpu]").unwrap();
        assert!(undelegated.contains("memory, pids"), "{undelegated}");
    }
}
