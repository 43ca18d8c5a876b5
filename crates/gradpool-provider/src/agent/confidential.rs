//! A confidential job's tasks on this agent: the data key opened from the
//! sealed key the assignment carries (refused unless it names this
//! provider and this job's sealed dataset), the plaintext (dataset, start
//! and end checkpoints) only in a directory of the task's own on a tmpfs,
//! removed when the task ends, and what goes back to the pool sealed
//! under the data key. The blob cache holds sealed files only.

use super::Shared;
use crate::ProviderError;
use gradpool_core::privacy::{self, DataKey};
use gradpool_core::wire::Assignment;
use gradpool_core::Sha256Hex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where plaintext lives when the owner names no place: memory.
const DEFAULT_PLAINTEXT_DIR: &str = "/dev/shm";

/// A confidential task's key and plaintext directory; the directory goes
/// with it.
pub(super) struct Plain {
    key: DataKey,
    dir: PathBuf,
}

impl Drop for Plain {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a confidential task's plaintext");
            }
        }
        // The agent's own directory too, once no task of its is left.
        if let Some(agent) = self.dir.parent() {
            let _ = std::fs::remove_dir(agent);
        }
    }
}

impl Plain {
    /// The key and directory of `a`, when its job is confidential.
    pub(super) fn open(
        shared: &Arc<Shared>,
        a: &Assignment,
    ) -> Result<Option<Plain>, ProviderError> {
        let Some(sealed) = &a.sealed_key else {
            return Ok(None);
        };
        let key = sealed.open(
            &shared.encryption,
            &shared.key.provider_id(),
            &a.data_sha256,
        )?;
        let base = plaintext_base(&shared.config);
        if !on_tmpfs(&base) {
            return Err(ProviderError::Segment(format!(
                "a confidential job's plaintext must stay in memory, and {} is not a tmpfs \
                 (set plaintext_dir to one)",
                base.display()
            )));
        }
        let dir = base
            .join(format!("gradpool-{}", shared.key.provider_id()))
            .join(a.task_id.as_str());
        std::fs::create_dir_all(&dir).map_err(ProviderError::io(format!(
            "cannot create {}",
            dir.display()
        )))?;
        restrict(&dir)?;
        Ok(Some(Plain { key, dir }))
    }

    /// Where the task's plaintext file `name` goes.
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens the sealed file `sealed` (from the blob cache) as `name`.
    pub(super) fn opened(&self, sealed: &Path, name: &str) -> Result<PathBuf, ProviderError> {
        let to = self.path(name);
        privacy::open_file(&self.key, sealed, &to)?;
        Ok(to)
    }

    /// [`Plain::opened`] off the async threads: for a large file (a
    /// container job's image).
    pub(super) async fn opened_apart(
        &self,
        sealed: &Path,
        name: &str,
    ) -> Result<PathBuf, ProviderError> {
        let (key, sealed, to) = (self.key.clone(), sealed.to_owned(), self.path(name));
        tokio::task::spawn_blocking(move || {
            privacy::open_file(&key, &sealed, &to)?;
            Ok(to)
        })
        .await
        .map_err(|e| ProviderError::Segment(format!("opening {name}: {e}")))?
    }

    /// Opens the sealed file `sealed` to `to`, which must lie in the
    /// task's directory.
    pub(super) fn open_to(&self, sealed: &Path, to: &Path) -> Result<(), ProviderError> {
        if !to.starts_with(&self.dir) {
            return Err(ProviderError::Segment(format!(
                "{} is outside the task's plaintext directory",
                to.display()
            )));
        }
        privacy::open_file(&self.key, sealed, to)?;
        Ok(())
    }

    /// Seals the plaintext file `plain` beside the blob cache's `dir`; the
    /// sealed file and its digest.
    pub(super) fn sealed(
        &self,
        plain: &Path,
        dir: &Path,
    ) -> Result<(PathBuf, Sha256Hex), ProviderError> {
        let to = dir.join(format!(
            "{}.sealed",
            plain.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        let sha = privacy::seal_file(&self.key, plain, &to)?;
        Ok((to, sha))
    }
}

/// Removes what tasks of `provider` left on the tmpfs when the agent
/// last stopped without ending them (a crash, a kill): their plaintext,
/// and a container task's image store with its containers. Such a task is
/// trained again from its start checkpoint if it comes back.
pub(super) async fn sweep(config: &super::ProviderConfig, provider: &str) {
    let agent = plaintext_base(config).join(format!("gradpool-{provider}"));
    let Ok(tasks) = std::fs::read_dir(&agent) else {
        return;
    };
    for task in tasks.flatten() {
        let images = task.path().join("images");
        if images.join("storage").is_dir() {
            match crate::container::ImageStore::open(&images, 0) {
                Ok(store) => {
                    if let Err(e) = store.remove_all().await {
                        tracing::warn!(error = %e, "cannot remove a confidential task's image store");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a confidential task's image store")
                }
            }
        }
    }
    match std::fs::remove_dir_all(&agent) {
        Ok(()) => {
            tracing::info!(dir = %agent.display(), "removed the plaintext of tasks left by the last run")
        }
        Err(e) => {
            tracing::warn!(dir = %agent.display(), error = %e, "cannot remove the plaintext of tasks left by the last run")
        }
    }
}

/// Where confidential plaintext goes: the owner's `plaintext_dir`, or
/// memory.
fn plaintext_base(config: &super::ProviderConfig) -> PathBuf {
    config
        .plaintext_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLAINTEXT_DIR))
}

/// Whether this agent can hold a confidential job's plaintext in memory:
/// only then does it announce its encryption key (so no customer seals a
/// job's key to it), and it says why not.
pub(super) fn can_hold_plaintext(config: &super::ProviderConfig) -> bool {
    let base = plaintext_base(config);
    let ok = on_tmpfs(&base);
    if !ok {
        tracing::warn!(plaintext_dir = %base.display(), "not a tmpfs: announcing no encryption key, so no confidential job comes here (set plaintext_dir to a tmpfs)");
    }
    ok
}

/// The directory only this user may enter.
fn restrict(dir: &Path) -> Result<(), ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
        ProviderError::io(format!("cannot restrict {}", dir.display())),
    )
}

/// Whether `path` lies on a tmpfs or ramfs: the filesystem of the longest
/// mount point above it in `/proc/self/mounts`.
pub(super) fn on_tmpfs(path: &Path) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            // Spaces in mount points are written as \040.
            let point = PathBuf::from(point.replace("\\040", " "));
            path.starts_with(&point).then_some((point, kind.to_owned()))
        })
        .max_by_key(|(point, _)| point.as_os_str().len())
        .is_some_and(|(_, kind)| kind == "tmpfs" || kind == "ramfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_memory_and_the_working_directory_is_not() {
        assert!(on_tmpfs(Path::new("/dev/shm")), "/dev/shm is a tmpfs here");
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(!on_tmpfs(dir.path()));
        assert!(!on_tmpfs(Path::new("/no/such/place")));
    }
}
