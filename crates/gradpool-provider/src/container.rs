//! Container segments: a job's own training script, run under podman in a
//! sandbox.
//!
//! A container job's segment is one `podman run` of the job's image with
//! the segment contract's mounts and variables (the `gradpool.segment`
//! Python package documents them from the inside):
//!
//! | path | what | mode |
//! |---|---|---|
//! | `/data` | the job's data file | read-only |
//! | `/job` | the job's files | read-only |
//! | `/in` | the start checkpoint (absent for the first segment) | read-only |
//! | `/out` | the end checkpoint and the loss trace | the only writable mount |
//! | `/tmp` | scratch | tmpfs |
//!
//! The sandbox ([`Sandbox::args`]): no network, a read-only root
//! filesystem, every capability dropped, no new privileges, a PID limit,
//! memory capped at the job's `memory_gib` (no swap on top), CPUs capped
//! by the owner's share, a non-root user inside (`nobody` under rootful
//! podman; the agent's own unprivileged user under rootless podman, which
//! is what the agent runs when it is not root), lowered file and process
//! limits, the GPU through CDI only when the job asked for CUDA, and a
//! wall-clock limit after which podman kills it.
//!
//! The agent reads the loss trace (`/out/trace.jsonl`) while the script
//! runs, so progress shows live, and once it exits checks the checkpoint
//! and rewrites it in the one encoding that is hashed
//! ([`gradpool_core::container::canonical`]). Images live in the agent's
//! own podman storage ([`ImageStore`]), apart from the owner's, capped in
//! size with least-recently-used eviction.

mod image;
mod trace;

pub use image::ImageStore;
pub use trace::{Trace, TraceLine};

use gradpool_core::container::{canonical, Layout};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The label naming who runs a segment's container.
pub const OWNER_LABEL: &str = "gradpool.owner";

/// Why a container segment failed: each is shown to the customer.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("podman could not run: {0} (is podman installed?)")]
    Podman(std::io::Error),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("the image could not be loaded: {0}")]
    Image(String),
    #[error("the sandbox cannot hold a container to its limits here: {0}")]
    Limits(String),
    #[error("the script was killed, most likely for going over its memory ({gib} GiB, container.memory_gib)")]
    OutOfMemory { gib: u32 },
    #[error("the script ran past its time limit of {secs} s and was killed")]
    TimedOut { secs: u64 },
    #[error("the script exited with status {code}{}", tail_of(.output))]
    Exited { code: i32, output: String },
    #[error("the script's loss trace: {0}")]
    Trace(String),
    #[error("the script wrote no checkpoint to /out/checkpoint.safetensors")]
    NoCheckpoint,
    #[error("the script wrote more than {limit} to /out and was killed")]
    OutputTooLarge { limit: String },
    #[error("the script's checkpoint: {0}")]
    Checkpoint(#[from] gradpool_core::checkpoint::CheckpointDefect),
}

fn tail_of(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", output.trim())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let context = context.into();
    move |error| ContainerError::Io { context, error }
}

/// How long past its time limit a container whose agent is gone lives:
/// podman's own `--timeout`.
const TIMEOUT_BACKSTOP: Duration = Duration::from_secs(60);

/// What a container may use: the job's memory, the owner's share of the
/// CPUs, the lease's time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// The job's `container.memory_gib`.
    pub memory_gib: u32,
    /// CPUs, fractional: threads × the owner's share.
    pub cpus: f64,
    /// The most processes and threads inside.
    pub pids: u32,
    /// The tmpfs `/tmp`, in MiB (counted in the memory cap).
    pub tmp_mib: u32,
    /// Killed after this long.
    pub time_limit: Duration,
    /// The GPU, by index, passed through CDI (`nvidia.com/gpu=N`).
    pub gpu: Option<u32>,
    /// The most the script may write to `/out`: a checkpoint holds what
    /// was in its memory, so by default its memory and a GiB more.
    pub output_bytes: u64,
}

impl Sandbox {
    /// A sandbox of `memory_gib` and `threads` whole CPUs, for at most
    /// `time_limit`.
    pub fn new(memory_gib: u32, threads: u32, time_limit: Duration) -> Sandbox {
        Sandbox {
            memory_gib,
            cpus: f64::from(threads.max(1)),
            pids: 256,
            tmp_mib: 256,
            time_limit,
            gpu: None,
            output_bytes: (u64::from(memory_gib) << 30).saturating_add(1 << 30),
        }
    }

    /// The `podman run` flags of the sandbox (everything but mounts,
    /// variables, the image and the command). `rootless` is whether
    /// podman runs as an unprivileged user.
    pub fn args(&self, rootless: bool) -> Vec<OsString> {
        let mut args: Vec<String> = vec![
            "--network=none".into(),
            "--read-only".into(),
            "--read-only-tmpfs=false".into(),
            format!(
                "--tmpfs=/tmp:rw,nosuid,nodev,size={}m,mode=1777",
                self.tmp_mib
            ),
            "--cap-drop=all".into(),
            "--security-opt=no-new-privileges".into(),
            format!("--pids-limit={}", self.pids),
            format!("--memory={}g", self.memory_gib),
            format!("--memory-swap={}g", self.memory_gib),
            format!("--cpus={:.2}", self.cpus.max(0.01)),
            "--ulimit=nofile=1024:1024".into(),
            "--ulimit=nproc=1024:1024".into(),
            // The agent ends the segment at `time_limit` itself (conmon's
            // timer fires up to a second early and leaves no exit code);
            // this only catches a container whose agent died.
            format!(
                "--timeout={}",
                (self.time_limit + TIMEOUT_BACKSTOP).as_secs().max(1)
            ),
        ];
        if rootless {
            // Inside, the agent's own uid: not root, and owner of /out.
            args.push("--userns=keep-id".into());
        } else {
            args.push("--user=65534:65534".into());
        }
        if let Some(gpu) = self.gpu {
            args.push(format!("--device=nvidia.com/gpu={gpu}"));
        }
        args.into_iter().map(OsString::from).collect()
    }
}

/// One container segment: steps `[from, to)` of a job.
#[derive(Debug, Clone)]
pub struct ContainerSegment {
    /// The image, by the ID [`ImageStore::ensure`] returned.
    pub image: String,
    pub command: Vec<String>,
    pub data: PathBuf,
    /// The directory of the job's files, mounted at `/job`.
    pub job_files: PathBuf,
    pub start: Option<PathBuf>,
    /// A fresh directory of the agent's: `/out` is its `out`.
    pub work: PathBuf,
    pub from: u64,
    pub to: u64,
    /// `GRADPOOL_*` variables beyond the step range (seed, threads, the
    /// spec's training values).
    pub env: Vec<(String, String)>,
    /// Who runs it (an agent's provider id), as the container's
    /// `gradpool.owner` label: agents sharing one image store each remove
    /// only their own leftovers ([`ImageStore::remove_containers_of`]).
    pub owner: String,
}

/// A finished container segment.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEnd {
    pub losses: Vec<f32>,
    pub eval_loss: Option<f32>,
    /// The canonical end checkpoint's layout.
    pub layout: Layout,
}

impl ContainerSegment {
    /// The container's name, unique to the work directory, so a segment
    /// killed with its process can be removed by whoever comes next.
    pub fn name(&self) -> String {
        ContainerSegment::name_for(&self.work)
    }

    /// The name of the container of the segment working in `work`.
    pub fn name_for(work: &Path) -> String {
        let hash = blake3::hash(work.as_os_str().as_encoded_bytes());
        format!("gradpool-segment-{}", &hash.to_hex()[..16])
    }

    fn out_dir(&self) -> PathBuf {
        self.work.join("out")
    }

    fn mounts(&self) -> Vec<OsString> {
        let mut mounts = vec![
            mount(&self.data, "/data", "ro"),
            mount(&self.job_files, "/job", "ro"),
            mount(&self.out_dir(), "/out", "rw"),
        ];
        if let Some(start) = &self.start {
            mounts.push(mount(start, "/in", "ro"));
        }
        mounts
    }

    fn variables(&self) -> Vec<OsString> {
        let mut env = vec![
            ("GRADPOOL_FROM".to_owned(), self.from.to_string()),
            ("GRADPOOL_TO".to_owned(), self.to.to_string()),
        ];
        env.extend(self.env.iter().cloned());
        env.into_iter()
            .flat_map(|(k, v)| [OsString::from("--env"), OsString::from(format!("{k}={v}"))])
            .collect()
    }

    /// Prepares `/out`: empty, and writable by the user inside.
    fn prepare(&self, rootless: bool) -> Result<(), ContainerError> {
        let out = self.out_dir();
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(io(format!("cannot clear {}", out.display())))?;
        }
        std::fs::create_dir_all(&out).map_err(io(format!("cannot create {}", out.display())))?;
        if !rootless {
            // `nobody` inside must write it; the work directory above it
            // stays the agent's own.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).map_err(io(
                format!("cannot open {} to the container", out.display()),
            ))?;
        }
        Ok(())
    }

    /// Runs the segment under `store`'s podman in `sandbox`, calling
    /// `on_step(step, loss)` as the trace grows, then checks the checkpoint
    /// against the start's layout and writes it canonically to `out`.
    pub async fn run(
        &self,
        store: &ImageStore,
        sandbox: &Sandbox,
        start_layout: Option<&Layout>,
        out: &Path,
        mut on_step: impl FnMut(u64, f32),
    ) -> Result<ContainerEnd, ContainerError> {
        let rootless = store.rootless();
        self.prepare(rootless)?;
        let name = self.name();
        store.remove_container(&name).await;
        let mut cmd = store.podman();
        cmd.arg("run")
            .arg(format!("--name={name}"))
            .arg(format!("--label={OWNER_LABEL}={}", self.owner));
        cmd.args(sandbox.args(rootless))
            .args(self.mounts())
            .args(self.variables())
            .arg("--workdir=/job")
            .arg(&self.image)
            .args(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // conmon leaves files (an `oom` marker) in its working
            // directory: the segment's own.
            .current_dir(&self.work)
            .kill_on_drop(true);
        let result = self.watch(cmd, sandbox, &mut on_step).await;
        let oom = store.out_of_memory(&name).await;
        store.remove_container(&name).await;
        let (trace, code, output) = result?;
        // The OOM killer's SIGKILL (137) reaches the script's process
        // whether or not podman flags the container.
        if oom || code == 137 {
            return Err(ContainerError::OutOfMemory {
                gib: sandbox.memory_gib,
            });
        }
        if code != 0 {
            return Err(ContainerError::Exited { code, output });
        }
        let (losses, eval_loss) = trace.finish().map_err(ContainerError::Trace)?;
        // Up to the script's memory in size: off the async threads.
        let (me, start, out, limit) = (
            self.clone(),
            start_layout.cloned(),
            out.to_owned(),
            sandbox.output_bytes,
        );
        let layout =
            tokio::task::spawn_blocking(move || me.keep_checkpoint(start.as_ref(), &out, limit))
                .await
                .map_err(|e| io("checking the checkpoint")(std::io::Error::other(e)))??;
        Ok(ContainerEnd {
            losses,
            eval_loss,
            layout,
        })
    }

    /// Runs `cmd`, reading the trace while it runs; its exit code and the
    /// tail of what it printed.
    async fn watch(
        &self,
        mut cmd: Command,
        sandbox: &Sandbox,
        on_step: &mut impl FnMut(u64, f32),
    ) -> Result<(Trace, i32, String), ContainerError> {
        let started = std::time::Instant::now();
        let mut child = cmd.spawn().map_err(ContainerError::Podman)?;
        let output = drain(child.stdout.take(), child.stderr.take());
        let mut trace = Trace::new(self.out_dir().join("trace.jsonl"), self.from, self.to);
        let deadline = tokio::time::Instant::now() + sandbox.time_limit;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let limit = sandbox.output_bytes;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(ContainerError::Podman)?,
                _ = tick.tick() => {
                    for (step, loss) in trace.read().map_err(ContainerError::Trace)? {
                        on_step(step, loss);
                    }
                    if !output_within(&self.out_dir(), limit) {
                        let _ = child.kill().await;
                        return Err(ContainerError::OutputTooLarge {
                            limit: gradpool_core::model::human_bytes(limit),
                        });
                    }
                    if tokio::time::Instant::now() >= deadline {
                        // The caller removes the container.
                        let _ = child.kill().await;
                        return Err(ContainerError::TimedOut { secs: sandbox.time_limit.as_secs() });
                    }
                }
            }
        };
        for (step, loss) in trace.read().map_err(ContainerError::Trace)? {
            on_step(step, loss);
        }
        let output = output.await.unwrap_or_default();
        let code = status.code().unwrap_or(-1);
        // Past the limit, whatever the exit: conmon's backstop fired.
        if code != 0 && started.elapsed() >= sandbox.time_limit {
            return Err(ContainerError::TimedOut {
                secs: sandbox.time_limit.as_secs(),
            });
        }
        Ok((trace, code, output))
    }

    /// Checks the script's checkpoint and writes it canonically to `out`
    /// (atomically).
    fn keep_checkpoint(
        &self,
        start: Option<&Layout>,
        out: &Path,
        limit: u64,
    ) -> Result<Layout, ContainerError> {
        use std::io::Read;
        let written = self.out_dir().join("checkpoint.safetensors");
        let context = || format!("cannot read {}", written.display());
        let Some(file) = open_output(&written).map_err(io(context()))? else {
            return Err(ContainerError::NoCheckpoint);
        };
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io(context()))?;
        if bytes.len() as u64 > limit {
            return Err(ContainerError::OutputTooLarge {
                limit: gradpool_core::model::human_bytes(limit),
            });
        }
        let (bytes, layout) = canonical(&bytes, self.to, start)?;
        let partial = out.with_extension("partial");
        std::fs::write(&partial, &bytes)
            .map_err(io(format!("cannot write {}", partial.display())))?;
        std::fs::rename(&partial, out).map_err(io(format!("cannot write {}", out.display())))?;
        Ok(layout)
    }
}

/// The variables of worker slot `worker` of a parallel job of `workers`:
/// the segment contract's `GRADPOOL_WORKER` and `GRADPOOL_WORKERS`.
pub fn worker_env(worker: u32, workers: u32) -> Vec<(String, String)> {
    vec![
        ("GRADPOOL_WORKER".to_owned(), worker.to_string()),
        ("GRADPOOL_WORKERS".to_owned(), workers.to_string()),
    ]
}

/// The segment contract's variables a job fixes: the spec's seed, steps
/// and `[train]` values, the thread count and the device (`cpu` or
/// `cuda`). The step range is the segment's own.
pub fn job_env(
    spec: &gradpool_core::spec::JobSpec,
    threads: u32,
    device: &str,
) -> Vec<(String, String)> {
    let t = &spec.train;
    [
        ("GRADPOOL_STEPS", t.steps.to_string()),
        ("GRADPOOL_SEED", t.seed.to_string()),
        ("GRADPOOL_THREADS", threads.max(1).to_string()),
        ("GRADPOOL_DEVICE", device.to_owned()),
        ("GRADPOOL_BATCH_SIZE", t.batch_size.to_string()),
        ("GRADPOOL_LR", format!("{:?}", t.lr)),
        ("GRADPOOL_MIN_LR", format!("{:?}", t.min_lr)),
        ("GRADPOOL_WARMUP_STEPS", t.warmup_steps.to_string()),
        ("GRADPOOL_WEIGHT_DECAY", format!("{:?}", t.weight_decay)),
        (
            "GRADPOOL_EVAL_FRACTION",
            format!("{:?}", spec.data.eval_fraction),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Opens a file the script wrote under `/out`, as a regular file only:
/// never through a symbolic link (which could name the agent's own files)
/// nor a FIFO or a device (which could block the agent or never end).
/// `Ok(None)` when there is none.
pub(crate) fn open_output(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(std::io::Error::other("it is a symbolic link"))
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    Ok(Some(file))
}

/// The most entries `/out` may hold.
const MAX_OUTPUT_ENTRIES: usize = 10_000;

/// Whether what the script wrote under `dir` stays within `limit` bytes
/// and [`MAX_OUTPUT_ENTRIES`] entries (links are counted, never followed).
fn output_within(dir: &Path, limit: u64) -> bool {
    let (mut bytes, mut entries) = (0u64, 0usize);
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let Ok(listing) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in listing.flatten() {
            entries += 1;
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            }
            bytes = bytes.saturating_add(meta.len());
            if bytes > limit || entries > MAX_OUTPUT_ENTRIES {
                return false;
            }
        }
    }
    true
}

/// A bind mount; podman takes a relative host path for a volume's name.
fn mount(host: &Path, inside: &str, mode: &str) -> OsString {
    let host = std::path::absolute(host).unwrap_or_else(|_| host.to_owned());
    let mut arg = OsString::from("--volume=");
    arg.push(host.as_os_str());
    arg.push(format!(":{inside}:{mode}"));
    arg
}

/// What is kept of each of a script's output streams: its end.
const OUTPUT_TAIL: usize = 64 << 10;

/// Reads `stream` to its end, keeping the last [`OUTPUT_TAIL`] bytes in
/// `kept`: a script that prints without end costs no memory.
async fn tail(stream: Option<impl tokio::io::AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    let Some(mut stream) = stream else { return };
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    if kept.len() > OUTPUT_TAIL {
        kept.drain(..kept.len() - OUTPUT_TAIL);
    }
}

/// Reads a child's stdout and stderr to the end; the last lines of both.
fn drain(
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        tokio::join!(tail(stdout, &mut out), tail(stderr, &mut err));
        out.extend_from_slice(&err);
        let text = String::from_utf8_lossy(&out).into_owned();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_shuts_every_door() {
        let sandbox = Sandbox {
            gpu: Some(1),
            cpus: 1.5,
            ..Sandbox::new(2, 2, Duration::from_secs(600))
        };
        let args: Vec<String> = sandbox
            .args(false)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        for flag in [
            "--network=none",
            "--read-only",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            "--pids-limit=256",
            "--memory=2g",
            "--memory-swap=2g",
            "--cpus=1.50",
            "--timeout=660", // the backstop: the agent ends it at 600 s
            "--user=65534:65534",
            "--device=nvidia.com/gpu=1",
        ] {
            assert!(
                args.iter().any(|a| a == flag),
                "{flag} missing from {args:?}"
            );
        }
        let rootless: Vec<OsString> = Sandbox::new(1, 1, Duration::from_secs(5)).args(true);
        assert!(rootless.contains(&OsString::from("--userns=keep-id")));
        assert!(!rootless
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--user=")));
        assert!(!rootless
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--device")));
    }
}
