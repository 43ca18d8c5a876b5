//! The agent's data directory.
//!
//! ```text
//! DIR/node.key                     Ed25519 node key (0600)
//! DIR/blobs/<sha256>               cache of datasets and checkpoints, verified
//! DIR/tasks/<task_id>/assignment.json   a task in flight (written first)
//! DIR/tasks/<task_id>/spec.toml
//! DIR/tasks/<task_id>/end.safetensors   the segment's end checkpoint
//! DIR/tasks/<task_id>/done.json         its loss trace, once training ended
//! DIR/agent.lock                   locked while an agent runs on DIR
//! DIR/agent.json                   what that agent runs with (RunningAgent)
//! ```
//!
//! A task directory exists exactly while the task is the agent's. After a
//! crash, the agent lists them and tells the pool what it was doing; a
//! segment whose `done.json` is present is committed without retraining.
//!
//! One agent per directory: two would share a node key, and so one
//! session at the pool, and keep taking it from each other. The agent
//! holds an exclusive lock on `agent.lock` while it runs (the operating
//! system releases it when the process ends, however it ends); a second
//! agent is refused. `gradpool provider status` reads `agent.json` while
//! the lock is held to show what the running agent actually uses.

use crate::ProviderError;
use gradpool_core::wire::{Assignment, PayoutSplit};
use gradpool_core::{Piconero, ProviderId, Sha256Hex, TaskId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a running agent uses, as it records it in `agent.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningAgent {
    /// The agent's process.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    pub provider_id: ProviderId,
    pub pool: String,
    pub name: String,
    /// The device it trains on, as it describes itself.
    pub device: String,
    /// CPU threads training may use (`None`: all).
    pub threads: Option<u32>,
    pub max_concurrent_tasks: u32,
    /// The least it takes per hour.
    pub price_per_hour: Piconero,
    pub payout: Vec<PayoutSplit>,
    /// It takes replay tasks.
    pub validate: bool,
    /// It takes training tasks.
    pub train: bool,
    pub limits: crate::limits::Limits,
    /// Where its container images are kept, when it runs container jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerSettings>,
}

/// A rig's container settings, as `provider status` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSettings {
    /// The image store.
    pub image_store: PathBuf,
    /// Its cap, in bytes.
    pub image_cache_bytes: u64,
}

/// What a finished segment measured, kept in its task's `done.json` until
/// it is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trained {
    /// The training loss of every step.
    pub losses: Vec<f32>,
    /// The held-out loss at the end checkpoint, if the job holds data out.
    #[serde(default)]
    pub eval_loss: Option<f32>,
}

/// An agent's hold on its data directory: released when dropped or when
/// the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> Result<DataDir, ProviderError> {
        for sub in ["blobs", "tasks"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(ProviderError::io(format!("cannot create {}", p.display())))?;
        }
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_path(root: &Path) -> PathBuf {
        root.join("agent.lock")
    }

    fn agent_path(root: &Path) -> PathBuf {
        root.join("agent.json")
    }

    /// Takes the directory for one agent: locks `agent.lock`, refusing
    /// with [`ProviderError::DataDirInUse`] when another agent holds it.
    /// The lock lasts as long as the returned value.
    pub fn lock(&self) -> Result<DataDirLock, ProviderError> {
        let path = Self::lock_path(&self.root);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ProviderError::io(format!("cannot open {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(DataDir::in_use(
                &self.root,
                DataDir::running_agent_record(&self.root).as_ref(),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(ProviderError::Io {
                context: format!("cannot lock {}", path.display()),
                error: e,
            }),
        }
    }

    /// Records what the agent holding the lock runs with.
    pub fn record_agent(
        &self,
        _lock: &DataDirLock,
        agent: &RunningAgent,
    ) -> Result<(), ProviderError> {
        let json =
            serde_json::to_vec_pretty(agent).map_err(|e| ProviderError::Segment(e.to_string()))?;
        write_atomic(&Self::agent_path(&self.root), &json)
    }

    /// The agent running on the directory at `root` now, if one is:
    /// the lock is held and it recorded its settings.
    pub fn running_agent(root: &Path) -> Option<RunningAgent> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(Self::lock_path(root))
            .ok()?;
        match file.try_lock() {
            // Nobody holds it: no agent runs (the lock goes with `file`).
            Ok(()) => None,
            Err(_) => DataDir::running_agent_record(root),
        }
    }

    /// The refusal of an agent on the directory at `root`, which `holder`
    /// (when it recorded itself) holds.
    pub fn in_use(root: &Path, holder: Option<&RunningAgent>) -> ProviderError {
        ProviderError::DataDirInUse {
            dir: root.to_owned(),
            holder: holder
                .map(|a| format!(" (pid {}, running since {})", a.pid, a.started_at))
                .unwrap_or_default(),
        }
    }

    fn running_agent_record(root: &Path) -> Option<RunningAgent> {
        let bytes = std::fs::read(Self::agent_path(root)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// The X25519 key confidential jobs' data keys are sealed to.
    pub fn encryption_key_path(&self) -> PathBuf {
        self.root.join("encryption.key")
    }

    pub fn blob_path(&self, sha: &Sha256Hex) -> PathBuf {
        self.root.join("blobs").join(sha.as_str())
    }

    /// Where the weights of a parallel job's global checkpoint `sha` go
    /// when this provider rebuilt them from an outer update.
    pub fn weights_path(&self, sha: &Sha256Hex) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("weights-{}", sha.as_str()))
    }

    pub fn task_dir(&self, task: &TaskId) -> PathBuf {
        self.root.join("tasks").join(task.as_str())
    }

    /// Records a task as the agent's, before any work starts on it.
    pub fn begin_task(&self, a: &Assignment) -> Result<PathBuf, ProviderError> {
        let dir = self.task_dir(&a.task_id);
        std::fs::create_dir_all(&dir).map_err(ProviderError::io(format!(
            "cannot create {}",
            dir.display()
        )))?;
        write_atomic(&dir.join("spec.toml"), a.spec_toml.as_bytes())?;
        let json =
            serde_json::to_vec_pretty(a).map_err(|e| ProviderError::Segment(e.to_string()))?;
        write_atomic(&dir.join("assignment.json"), &json)?;
        Ok(dir)
    }

    /// Records what a finished segment measured (its checkpoint is
    /// already in place).
    pub fn finish_training(&self, task: &TaskId, trained: &Trained) -> Result<(), ProviderError> {
        let json =
            serde_json::to_vec(trained).map_err(|e| ProviderError::Segment(e.to_string()))?;
        write_atomic(&self.task_dir(task).join("done.json"), &json)
    }

    /// What a segment whose training finished measured, if it did. (An
    /// agent from before the held-out loss wrote the bare loss trace.)
    pub fn finished(&self, task: &TaskId) -> Option<Trained> {
        let dir = self.task_dir(task);
        if !dir.join("end.safetensors").is_file() {
            return None;
        }
        let bytes = std::fs::read(dir.join("done.json")).ok()?;
        serde_json::from_slice(&bytes).ok().or_else(|| {
            let losses = serde_json::from_slice(&bytes).ok()?;
            Some(Trained {
                losses,
                eval_loss: None,
            })
        })
    }

    /// Forgets a task: it was committed, cancelled or dropped.
    pub fn end_task(&self, task: &TaskId) {
        let dir = self.task_dir(task);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(task = %task, error = %e, "cannot remove task directory");
            }
        }
    }

    /// The tasks in flight when the agent last stopped.
    pub fn tasks_in_flight(&self) -> Vec<Assignment> {
        let Ok(entries) = std::fs::read_dir(self.root.join("tasks")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join("assignment.json");
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Assignment>(&b)) {
                Ok(Ok(a)) => out.push(a),
                _ => {
                    tracing::warn!(dir = %entry.path().display(), "removing an unreadable task directory");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        out
    }
}

/// Writes a file so that readers see either the old or the whole new
/// content: temp file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProviderError> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(ProviderError::io(format!(
        "cannot write {}",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradpool_core::{JobId, Sha256Hex};

    fn running(pid: u32) -> RunningAgent {
        RunningAgent {
            pid,
            started_at: "2026-12-03T10:00:00Z".into(),
            provider_id: ProviderId::from("prov_1"),
            pool: "http://127.0.0.1:7070".into(),
            name: "attic".into(),
            device: "cpu".into(),
            threads: Some(2),
            max_concurrent_tasks: 1,
            price_per_hour: Piconero(1),
            payout: Vec::new(),
            validate: true,
            train: true,
            limits: crate::limits::Limits::default(),
            containers: Some(ContainerSettings {
                image_store: "/srv/images".into(),
                image_cache_bytes: 20 << 30,
            }),
        }
    }

    #[test]
    fn one_agent_holds_a_data_dir_and_says_what_it_runs_with() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert_eq!(DataDir::running_agent(tmp.path()), None);
        let lock = dir.lock().unwrap();
        dir.record_agent(&lock, &running(42)).unwrap();
        assert_eq!(DataDir::running_agent(tmp.path()), Some(running(42)));
        let err = DataDir::open(tmp.path()).unwrap().lock().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ProviderError::DataDirInUse { .. }), "{text}");
        assert!(
            text.contains("pid 42") && text.contains("--data-dir"),
            "{text}"
        );
        drop(lock);
        // Released: the record stays, but no agent runs.
        assert_eq!(DataDir::running_agent(tmp.path()), None);
        let _again = dir.lock().unwrap();
    }

    fn assignment() -> Assignment {
        Assignment {
            task_id: TaskId::from("task_1"),
            job_id: JobId::from("job_1"),
            segment: 2,
            start_step: 20,
            end_step: 30,
            spec_toml: "name = 'x'".into(),
            data_sha256: Sha256Hex::of(b"data"),
            start_checkpoint_sha256: Some(Sha256Hex::of(b"ckpt")),
            prev_commitment: gradpool_core::commitment::ChainHash([0; 32]),
            lease_seconds: 10,
            kind: Default::default(),
            replay: None,
            model: gradpool_core::model::ModelMeta::Mlp {
                inputs: 2,
                hidden: vec![4],
                classes: 2,
            },
            round: None,
            sealed_key: None,
        }
    }

    #[test]
    fn tasks_survive_a_restart_until_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let a = assignment();
        dir.begin_task(&a).unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert_eq!(dir.tasks_in_flight(), vec![a.clone()]);
        assert_eq!(dir.finished(&a.task_id), None);
        std::fs::write(dir.task_dir(&a.task_id).join("end.safetensors"), b"x").unwrap();
        let trained = Trained {
            losses: vec![1.0, 2.0],
            eval_loss: Some(1.5),
        };
        dir.finish_training(&a.task_id, &trained).unwrap();
        assert_eq!(dir.finished(&a.task_id), Some(trained));
        // What an older agent wrote still reads.
        std::fs::write(dir.task_dir(&a.task_id).join("done.json"), b"[1.0]").unwrap();
        assert_eq!(
            dir.finished(&a.task_id).map(|t| (t.losses, t.eval_loss)),
            Some((vec![1.0], None))
        );
        dir.end_task(&a.task_id);
        assert!(dir.tasks_in_flight().is_empty());
    }
}
