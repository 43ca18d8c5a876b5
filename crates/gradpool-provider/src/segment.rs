//! One segment, trained in a child process.
//!
//! The agent runs `gradpool segment run --spec S --data D --from N --to M
//! [--start C] --out O [device args]`. The child prints one JSON
//! [`SegmentEvent`] per line on stdout, logs on stderr, and exits non-zero on
//! failure. Killing the child (a cancel, a lost lease, a pause) loses only
//! the segment in flight: the end checkpoint is written atomically.

use serde::{Deserialize, Serialize};
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
        /// How long the device trained the steps, in milliseconds.
        #[serde(default)]
        busy_ms: u64,
        /// How long it rested between steps for `--max-share`, in
        /// milliseconds.
        #[serde(default)]
        rest_ms: u64,
    },
}

/// Where a segment's inputs and output live.
#[derive(Debug, Clone)]
pub struct SegmentFiles {
    pub spec: PathBuf,
    pub data: PathBuf,
    pub start: Option<PathBuf>,
    pub out: PathBuf,
}

/// How a segment ended.
#[derive(Debug)]
pub enum SegmentEnd {
    Done {
        losses: Vec<f32>,
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
    files: &SegmentFiles,
    steps: (u64, u64),
    device_args: &[String],
    stall: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
    mut on_step: impl FnMut(u64, f32, f64),
) -> std::io::Result<SegmentEnd> {
    let mut cmd = Command::new(program);
    cmd.arg("segment")
        .arg("run")
        .arg("--spec")
        .arg(&files.spec)
        .arg("--data")
        .arg(&files.data)
        .arg("--from")
        .arg(steps.0.to_string())
        .arg("--to")
        .arg(steps.1.to_string())
        .arg("--out")
        .arg(&files.out);
    if let Some(start) = &files.start {
        cmd.arg("--start").arg(start);
    }
    cmd.args(device_args)
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
                        Ok(SegmentEvent::Done { losses, busy_ms, rest_ms }) => done = Some((losses, busy_ms, rest_ms)),
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
        (true, Some((losses, busy_ms, rest_ms))) => Ok(SegmentEnd::Done {
            losses,
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
                busy_ms: 0,
                rest_ms: 0
            }
        );
    }

    fn files(dir: &Path) -> SegmentFiles {
        SegmentFiles {
            spec: dir.join("spec.toml"),
            data: dir.join("data"),
            start: None,
            out: dir.join("out"),
        }
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
            &files(tmp.path()),
            (0, 10),
            &[],
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
            &files(tmp.path()),
            (0, 1),
            &[],
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
            &files(tmp.path()),
            (0, 1),
            &[],
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
}
