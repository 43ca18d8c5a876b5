//! The agent's container images: its own podman storage, apart from the
//! owner's, holding each job image once, by the digest of the archive it
//! came from, under a disk cap with least-recently-used eviction.
//!
//! `index.json` beside the storage records, for each archive digest, the
//! image's podman ID, its size and when a segment last used it. Segments
//! run the image by that ID, never by a name: an archive can carry any
//! names, another job's among them, and loading it moves them. Eviction
//! skips an image a container still uses. Agents that share the store
//! take `store.lock` around loading, eviction and the index.

use super::{io, ContainerError};
use gradpool_core::Sha256Hex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::process::Command;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Entry {
    bytes: u64,
    /// Unix seconds of the last use.
    used: i64,
    /// The image's podman ID (`podman image inspect --format {{.Id}}`);
    /// empty in an index from before IDs were recorded (loaded again).
    #[serde(default)]
    id: String,
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
    /// others while the store is over its cap. Returns the image's ID, by
    /// which segments run it.
    pub async fn ensure(
        &self,
        digest: &Sha256Hex,
        archive: impl FnOnce() -> Option<PathBuf>,
        now: i64,
    ) -> Result<String, ContainerError> {
        let _lock = self.lock().await?;
        let mut index = self.index();
        let id = match self.held(&index, digest).await? {
            Some(id) => id,
            None => {
                let archive = archive().ok_or_else(|| {
                    ContainerError::Image(format!(
                        "image {digest} is not here and no archive was given"
                    ))
                })?;
                let (id, bytes) = self.load(&archive).await?;
                index.insert(
                    digest.to_string(),
                    Entry {
                        bytes,
                        used: now,
                        id: id.clone(),
                    },
                );
                id
            }
        };
        index.entry(digest.to_string()).or_default().used = now;
        self.evict(&mut index, digest).await?;
        self.save_index(&index)?;
        Ok(id)
    }

    /// The ID of the image of `digest`'s archive, if the store holds it.
    async fn held(
        &self,
        index: &BTreeMap<String, Entry>,
        digest: &Sha256Hex,
    ) -> Result<Option<String>, ContainerError> {
        match index.get(digest.as_str()).map(|e| e.id.as_str()) {
            Some(id) if !id.is_empty() && self.exists(id).await? => Ok(Some(id.to_owned())),
            _ => Ok(None),
        }
    }

    /// Whether the store holds the image of the archive of `digest`.
    pub async fn contains(&self, digest: &Sha256Hex) -> Result<bool, ContainerError> {
        Ok(self.held(&self.index(), digest).await?.is_some())
    }

    /// The store's lock, held until the returned file is dropped: one
    /// agent at a time loads, evicts and writes the index.
    async fn lock(&self) -> Result<std::fs::File, ContainerError> {
        let path = self.root.with_file_name("store.lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| io("locking the image store")(std::io::Error::other(e)))?
        .map_err(io("locking the image store"))
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
                " (rootless podman needs newuidmap: a systemd unit must not set \
                 NoNewPrivileges, see packaging/gradpool-provider-containers.conf)"
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

    /// Loads an archive (OCI or Docker, compressed or not); returns its
    /// image's ID and size. Whatever names the archive carried are removed:
    /// only the ID means anything here.
    async fn load(&self, archive: &Path) -> Result<(String, u64), ContainerError> {
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
        let inspect = |format: &'static str, image: String| async move {
            let out = self
                .podman()
                .args(["image", "inspect", "--format", format, &image])
                .output()
                .await
                .map_err(ContainerError::Podman)?;
            Ok::<_, ContainerError>(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let id = inspect("{{.Id}}", loaded.clone()).await?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ContainerError::Image(format!(
                "no image ID for {loaded}: {id:?}"
            )));
        }
        // Untagged, the image has no name another archive could take over.
        let _ = self.podman_ok(&["untag", &id]).await;
        let size = inspect("{{.Size}}", id.clone()).await?.parse().unwrap_or(0);
        Ok((id, size))
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
            let id = index.get(&digest).map(|e| e.id.clone()).unwrap_or_default();
            if id.is_empty() || !self.exists(&id).await? {
                index.remove(&digest);
                continue;
            }
            // Not --force: an image a running segment uses stays.
            match self.podman_ok(&["rmi", &id]).await {
                Ok(()) => {
                    tracing::info!(image = %digest, "evicted an image: the image cache is over its cap");
                    index.remove(&digest);
                }
                Err(e) => {
                    tracing::warn!(image = %digest, error = %e, "could not evict an image (in use?)")
                }
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

    /// Removes the whole store: its containers, its images and its
    /// directories (a confidential task's store, whose plaintext image
    /// must not outlive the task). Rootless podman's files belong to the
    /// user's subordinate IDs: they are removed inside its namespace.
    pub async fn remove_all(&self) -> Result<(), ContainerError> {
        let quiet = |mut cmd: Command| {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cmd
        };
        let mut rm = quiet(self.podman());
        rm.args(["rm", "--all", "--force", "--time", "0"]);
        let _ = rm.status().await;
        if self.rootless {
            let mut unshare = quiet(self.podman());
            unshare
                .args(["unshare", "rm", "-rf", "--"])
                .arg(&self.root)
                .arg(&self.runroot);
            let _ = unshare.status().await;
        }
        for dir in [&self.root, &self.runroot] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("cannot remove {}", dir.display()))(e))
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_file(self.index_path());
        Ok(())
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
