//! One segment, trained in a child process.
//!
//! The agent runs `gradpool segment run --spec S --data D --from N --to M
//! [--start C] --out O [device flags]`, its arguments one [`SegmentRun`]. The child prints one JSON
//! [`SegmentEvent`] per line on stdout, logs on stderr, and exits non-zero on
//! failure. Killing the child (a cancel, a lost lease, a pause) loses only
//! the segment in flight: the end checkpoint is written atomically.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// A line the child prints on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SegmentEvent {
    /// A step finished.
    Step {
        step: u64,
        loss: f32,
        tokens_per_sec: f64,
    },
    /// The segment finished and its end checkpoint is in place.
    Done {
        losses: Vec<f32>,
        /// The loss on the job's held-out data at the end checkpoint, when
        /// the job holds some out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_loss: Option<f32>,
        /// How long the device trained the steps, in milliseconds.
        #[serde(default)]
        busy_ms: u64,
        /// How long it rested between steps for `--max-share`, in
        /// milliseconds.
        #[serde(default)]
        rest_ms: u64,
    },
}

/// The device flags of a training process (`--device`, `--threads`,
/// `--gpu`): what `gradpool train`, `segment run` and `bench` take, and what
/// a [`crate::Device`] asks its child processes to use.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFlags {
    /// The device to run on: `cpu`, or `cuda` in a build with the `cuda`
    /// feature.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Which GPU, by NVML's index (`nvidia-smi -i`), with `--device cuda`.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

/// The kinds of device a training process can use.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
}

impl DeviceFlags {
    /// The CPU with `threads` threads.
    pub fn cpu(threads: u32) -> DeviceFlags {
        DeviceFlags {
            device: DeviceChoice::Cpu,
            threads: Some(threads as usize),
            gpu: 0,
        }
    }

    /// The GPU of NVML index `gpu`.
    pub fn cuda(gpu: u32) -> DeviceFlags {
        DeviceFlags {
            device: DeviceChoice::Cuda,
            threads: None,
            gpu: gpu as usize,
        }
    }

    /// The flags as a child process's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--device".into()];
        match self.device {
            DeviceChoice::Cpu => args.push("cpu".into()),
            DeviceChoice::Cuda => {
                args.push("cuda".into());
                args.extend(["--gpu".into(), self.gpu.to_string().into()]);
            }
        }
        if let Some(t) = self.threads {
            args.extend(["--threads".into(), t.to_string().into()]);
        }
        args
    }
}

/// The arguments of `gradpool segment run`, one type for both ends: the
/// agent and `job verify` build one and pass [`SegmentRun::args`]; the
/// child parses the same flags back into it.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SegmentRun {
    /// The job spec (TOML).
    #[arg(long)]
    pub spec: PathBuf,
    /// The dataset.
    #[arg(long)]
    pub data: PathBuf,
    /// The first step to train.
    #[arg(long)]
    pub from: u64,
    /// The step to stop before.
    #[arg(long)]
    pub to: u64,
    /// The checkpoint at FROM (absent for the first segment).
    #[arg(long)]
    pub start: Option<PathBuf>,
    /// Where the end checkpoint is written (atomically).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlags,
    /// Train only this percent of the time: rest after each step in
    /// proportion to how long it took (the owner's `max_gpu_share`).
    #[arg(long, value_name = "PERCENT", default_value_t = 100,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max_share: u8,
    /// Re-read the percent from this file before each rest (the agent
    /// lowers it to hold a power limit while the segment runs); the
    /// `--max-share` value stands while the file is missing or unreadable.
    #[arg(long, value_name = "FILE")]
    pub max_share_file: Option<PathBuf>,
    /// A parallel job's worker slot: train its inner segment of the round
    /// that starts from the global checkpoint `--start` (FROM and TO must
    /// be that round's steps).
    #[arg(long, value_name = "W")]
    pub worker: Option<u32>,
    /// The worker slot's checkpoint of the round before (its AdamW
    /// moments); absent in round 0, or when the slot's state is lost.
    #[arg(long, value_name = "FILE", requires = "worker")]
    pub slot: Option<PathBuf>,
    /// Where a worker segment's pseudo-gradient goes (what it sends the
    /// pool); by default OUT with the extension
    /// `.pseudo-gradient.safetensors`.
    #[arg(long, value_name = "FILE", requires = "worker")]
    pub pseudo_gradient: Option<PathBuf>,
    /// Fake the segment's work: skip-steps, random-weights,
    /// perturb-weights, old-checkpoint, other-data or lower-lr (only in
    /// builds with the `cheat` feature, for testing audits).
    #[cfg(feature = "cheat")]
    #[arg(long, value_name = "KIND")]
    pub cheat: Option<String>,
}

/// Where a segment's inputs and output live.
#[derive(Debug, Clone)]
pub struct SegmentFiles {
    pub spec: PathBuf,
    pub data: PathBuf,
    pub start: Option<PathBuf>,
    pub out: PathBuf,
}

impl SegmentRun {
    /// Steps `[from, to)` of `files` on `device`, with the whole of the
    /// device's time.
    pub fn new(files: SegmentFiles, from: u64, to: u64, device: DeviceFlags) -> SegmentRun {
        SegmentRun {
            spec: files.spec,
            data: files.data,
            from,
            to,
            start: files.start,
            out: files.out,
            device,
            max_share: 100,
            max_share_file: None,
            worker: None,
            slot: None,
            pseudo_gradient: None,
            #[cfg(feature = "cheat")]
            cheat: None,
        }
    }

    /// Where a worker segment writes its pseudo-gradient.
    pub fn pseudo_gradient_path(&self) -> PathBuf {
        self.pseudo_gradient
            .clone()
            .unwrap_or_else(|| self.out.with_extension("pseudo-gradient.safetensors"))
    }

    /// The flags, as the child's arguments after `segment run`.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--spec".into(),
            self.spec.clone().into(),
            "--data".into(),
            self.data.clone().into(),
            "--from".into(),
            self.from.to_string().into(),
            "--to".into(),
            self.to.to_string().into(),
            "--out".into(),
            self.out.clone().into(),
        ];
        if let Some(start) = &self.start {
            args.extend(["--start".into(), start.clone().into()]);
        }
        args.extend(self.device.args());
        if self.max_share != 100 {
            args.extend(["--max-share".into(), self.max_share.to_string().into()]);
        }
        if let Some(file) = &self.max_share_file {
            args.extend(["--max-share-file".into(), file.clone().into()]);
        }
        if let Some(w) = self.worker {
            args.extend(["--worker".into(), w.to_string().into()]);
        }
        if let Some(slot) = &self.slot {
            args.extend(["--slot".into(), slot.clone().into()]);
        }
        if let Some(file) = &self.pseudo_gradient {
            args.extend(["--pseudo-gradient".into(), file.clone().into()]);
        }
        #[cfg(feature = "cheat")]
        if let Some(kind) = &self.cheat {
            args.extend(["--cheat".into(), kind.into()]);
        }
        args
    }
}

/// How a segment ended.
#[derive(Debug)]
pub enum SegmentEnd {
    Done {
        losses: Vec<f32>,
        eval_loss: Option<f32>,
        busy_ms: u64,
        rest_ms: u64,
    },
    Failed {
        reason: String,
    },
    Cancelled,
}

/// Runs one segment in a child process of `program`, calling `on_step` for
/// each step, until it ends, `cancel` fires, or it prints nothing for
/// `stall` (the child is then killed).
pub async fn run_child(
    program: &Path,
    run: &SegmentRun,
    stall: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
    mut on_step: impl FnMut(u64, f32, f64),
) -> std::io::Result<SegmentEnd> {
    let mut cmd = Command::new(program);
    cmd.args(["segment", "run"])
        .args(run.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("child has no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("child has no stderr"))?;
    // Drain stderr concurrently so the child never blocks on a full pipe; keep
    // its tail for the failure reason.
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    });

    let mut lines = BufReader::new(stdout).lines();
    let mut done = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                child.kill().await?;
                return Ok(SegmentEnd::Cancelled);
            }
            line = tokio::time::timeout(stall, lines.next_line()) => {
                let Ok(line) = line else {
                    child.kill().await?;
                    return Ok(SegmentEnd::Failed {
                        reason: format!("segment process reported nothing for {} s; killed", stall.as_secs()),
                    });
                };
                match line? {
                    None => break,
                    Some(line) => match serde_json::from_str::<SegmentEvent>(&line) {
                        Ok(SegmentEvent::Step { step, loss, tokens_per_sec }) => on_step(step, loss, tokens_per_sec),
                        Ok(SegmentEvent::Done { losses, eval_loss, busy_ms, rest_ms }) => done = Some((losses, eval_loss, busy_ms, rest_ms)),
                        Err(_) => tracing::debug!(line, "ignoring a non-event line from the segment"),
                    },
                }
            }
        }
    }
    let status = tokio::select! {
        _ = cancel.cancelled() => {
            child.kill().await?;
            return Ok(SegmentEnd::Cancelled);
        }
        status = child.wait() => status?,
    };
    let stderr_tail = stderr_task.await.unwrap_or_default();
    match (status.success(), done) {
        (true, Some((losses, eval_loss, busy_ms, rest_ms))) => Ok(SegmentEnd::Done {
            losses,
            eval_loss,
            busy_ms,
            rest_ms,
        }),
        (true, None) => Ok(SegmentEnd::Failed {
            reason: "segment process exited without reporting its result".into(),
        }),
        (false, _) => Ok(SegmentEnd::Failed {
            reason: format!("segment process {status}: {stderr_tail}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_per_line() {
        let line = serde_json::to_string(&SegmentEvent::Step {
            step: 3,
            loss: 2.5,
            tokens_per_sec: 10.0,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"step","step":3,"loss":2.5,"tokens_per_sec":10.0}"#
        );
        let done: SegmentEvent =
            serde_json::from_str(r#"{"event":"done","losses":[1.0]}"#).unwrap();
        assert_eq!(
            done,
            SegmentEvent::Done {
                losses: vec![1.0],
                eval_loss: None,
                busy_ms: 0,
                rest_ms: 0
            }
        );
    }

    fn run(dir: &Path, from: u64, to: u64) -> SegmentRun {
        let files = SegmentFiles {
            spec: dir.join("spec.toml"),
            data: dir.join("data"),
            start: None,
            out: dir.join("out"),
        };
        SegmentRun::new(files, from, to, DeviceFlags::cpu(1))
    }

    /// A stand-in for the `gradpool` binary: a shell script.
    fn program(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-gradpool");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn a_silent_child_is_killed_as_stalled() {
        let tmp = tempfile::tempdir().unwrap();
        let prog = program(tmp.path(), "sleep 30");
        let started = std::time::Instant::now();
        let end = run_child(
            &prog,
            &run(tmp.path(), 0, 10),
            std::time::Duration::from_millis(300),
            tokio_util::sync::CancellationToken::new(),
            |_, _, _| {},
        )
        .await
        .unwrap();
        assert!(
            matches!(&end, SegmentEnd::Failed { reason } if reason.contains("reported nothing")),
            "{end:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn steps_and_the_result_are_read_and_a_failure_keeps_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let prog = program(
            tmp.path(),
            r#"echo '{"event":"step","step":0,"loss":4.0,"tokens_per_sec":1.0}'
echo '{"event":"done","losses":[4.0]}'"#,
        );
        let mut steps = Vec::new();
        let end = run_child(
            &prog,
            &run(tmp.path(), 0, 1),
            std::time::Duration::from_secs(10),
            tokio_util::sync::CancellationToken::new(),
            |s, l, _| steps.push((s, l)),
        )
        .await
        .unwrap();
        assert!(
            matches!(end, SegmentEnd::Done { ref losses, .. } if losses == &[4.0]),
            "{end:?}"
        );
        assert_eq!(steps, [(0, 4.0)]);

        let prog = program(tmp.path(), "echo 'checkpoint is corrupt' >&2; exit 3");
        let end = run_child(
            &prog,
            &run(tmp.path(), 0, 1),
            std::time::Duration::from_secs(10),
            tokio_util::sync::CancellationToken::new(),
            |_, _, _| {},
        )
        .await
        .unwrap();
        assert!(
            matches!(&end, SegmentEnd::Failed { reason } if reason.contains("checkpoint is corrupt")),
            "{end:?}"
        );
    }

    use clap::Parser;

    #[derive(Parser)]
    struct Child {
        #[command(flatten)]
        run: SegmentRun,
    }

    fn parsed(run: &SegmentRun) -> SegmentRun {
        let mut argv: Vec<OsString> = vec!["segment-run".into()];
        argv.extend(run.args());
        Child::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .run
    }

    /// What the parent passes is exactly what the child reads back.
    #[test]
    fn the_child_reads_back_what_the_parent_passed() {
        let first = SegmentRun {
            spec: "task dir/spec.toml".into(),
            data: "blobs/ab12".into(),
            from: 0,
            to: 100,
            start: None,
            out: "task dir/end.safetensors".into(),
            device: DeviceFlags::cpu(3),
            max_share: 100,
            max_share_file: None,
            worker: None,
            slot: None,
            pseudo_gradient: None,
            #[cfg(feature = "cheat")]
            cheat: None,
        };
        assert_eq!(parsed(&first), first);
        let later = SegmentRun {
            from: 100,
            to: 250,
            start: Some("blobs/cd34".into()),
            device: DeviceFlags::cuda(2),
            max_share: 40,
            max_share_file: Some("share".into()),
            #[cfg(feature = "cheat")]
            cheat: Some("skip-steps".into()),
            ..first.clone()
        };
        assert_eq!(parsed(&later), later);
        // A parallel job's worker, from its slot's previous checkpoint.
        let worker = SegmentRun {
            worker: Some(3),
            slot: Some("task dir/slot 3.safetensors".into()),
            ..later.clone()
        };
        assert_eq!(parsed(&worker), worker);
        assert_eq!(
            worker.pseudo_gradient_path(),
            PathBuf::from("task dir/end.pseudo-gradient.safetensors")
        );
        let named = SegmentRun {
            pseudo_gradient: Some("sent.safetensors".into()),
            ..worker
        };
        assert_eq!(parsed(&named), named);
        assert_eq!(
            named.pseudo_gradient_path(),
            PathBuf::from("sent.safetensors")
        );
    }
}
