//! The loss trace a container segment writes, read while it grows.
//!
//! One JSON object per line: `{"step": S, "loss": L}` for each step, in
//! order from the segment's first, then at most one `{"eval_loss": E}`.
//! Lines are read as they are completed; a line cut short is read once
//! finished. Anything else ends the segment with the reason.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// The longest trace read: a step's line is a few dozen bytes.
const MAX_TRACE_BYTES: u64 = 64 << 20;

/// One line of the trace.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum TraceLine {
    Step { step: u64, loss: f64 },
    Eval { eval_loss: f64 },
}

/// A trace being read.
#[derive(Debug)]
pub struct Trace {
    path: PathBuf,
    from: u64,
    to: u64,
    read: u64,
    pending: Vec<u8>,
    losses: Vec<f32>,
    eval_loss: Option<f32>,
}

impl Trace {
    /// The trace at `path` of steps `[from, to)`.
    pub fn new(path: PathBuf, from: u64, to: u64) -> Trace {
        Trace {
            path,
            from,
            to,
            read: 0,
            pending: Vec::new(),
            losses: Vec::new(),
            eval_loss: None,
        }
    }

    /// The steps completed since the last read, with their losses.
    pub fn read(&mut self) -> Result<Vec<(u64, f32)>, String> {
        let mut file = match super::open_output(&self.path) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len > MAX_TRACE_BYTES {
            return Err(format!("over {MAX_TRACE_BYTES} bytes"));
        }
        file.seek(SeekFrom::Start(self.read))
            .map_err(|e| e.to_string())?;
        let mut fresh = Vec::new();
        file.take(len.saturating_sub(self.read))
            .read_to_end(&mut fresh)
            .map_err(|e| e.to_string())?;
        self.read += fresh.len() as u64;
        self.pending.extend_from_slice(&fresh);
        let mut steps = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if let Some(step) = self.line(&line[..line.len() - 1])? {
                steps.push(step);
            }
        }
        Ok(steps)
    }

    fn line(&mut self, bytes: &[u8]) -> Result<Option<(u64, f32)>, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let next = self.from + self.losses.len() as u64;
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        let line: TraceLine = serde_json::from_slice(bytes)
            .map_err(|_| format!("line {shown:?} is not {{\"step\": S, \"loss\": L}}"))?;
        if self.eval_loss.is_some() {
            return Err("a line after the eval_loss".into());
        }
        match line {
            TraceLine::Step { step, loss } => {
                if step != next || step >= self.to {
                    return Err(format!("step {step} where step {next} was due"));
                }
                let loss = finite(loss)
                    .ok_or_else(|| format!("step {step}'s loss {loss} is not a finite number"))?;
                self.losses.push(loss);
                Ok(Some((step, loss)))
            }
            TraceLine::Eval { eval_loss } => {
                self.eval_loss = Some(
                    finite(eval_loss)
                        .ok_or_else(|| format!("eval_loss {eval_loss} is not a finite number"))?,
                );
                Ok(None)
            }
        }
    }

    /// Every step's loss and the held-out loss, once the script exited:
    /// an error unless every step of the segment was logged.
    pub fn finish(mut self) -> Result<(Vec<f32>, Option<f32>), String> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.line(&rest)?;
        }
        let want = (self.to - self.from) as usize;
        if self.losses.len() != want {
            return Err(format!(
                "{} of the segment's {want} steps logged (log every step with seg.log)",
                self.losses.len()
            ));
        }
        Ok((self.losses, self.eval_loss))
    }
}

fn finite(x: f64) -> Option<f32> {
    let y = x as f32;
    (x.is_finite() && y.is_finite() && x >= 0.0).then_some(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_are_read_as_they_are_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let mut trace = Trace::new(path.clone(), 10, 13);
        assert_eq!(trace.read().unwrap(), []);
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "{{\"step\": 10, \"loss\": 2.5}}\n{{\"step\": 11, \"lo").unwrap();
        assert_eq!(trace.read().unwrap(), [(10, 2.5)]);
        write!(
            f,
            "ss\": 2.25}}\n{{\"step\": 12, \"loss\": 2.0}}\n{{\"eval_loss\": 2.125}}"
        )
        .unwrap();
        assert_eq!(trace.read().unwrap(), [(11, 2.25), (12, 2.0)]);
        assert_eq!(trace.finish().unwrap(), (vec![2.5, 2.25, 2.0], Some(2.125)));
    }

    #[test]
    fn a_trace_that_skips_repeats_or_stops_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let mut trace = Trace::new(path.clone(), 0, 2);
            trace.read().and_then(|_| trace.finish())
        };
        assert!(read("{\"step\": 1, \"loss\": 1}\n")
            .unwrap_err()
            .contains("step 0 was due"));
        assert!(
            read("{\"step\": 0, \"loss\": 1}\n{\"step\": 0, \"loss\": 1}\n")
                .unwrap_err()
                .contains("step 1 was due")
        );
        assert!(read("{\"step\": 0, \"loss\": 1}\n")
            .unwrap_err()
            .contains("1 of the segment's 2"));
        assert!(read("{\"step\": 0, \"loss\": -1}\n")
            .unwrap_err()
            .contains("not a finite"));
        assert!(read("{\"step\": 0, \"loss\": 1e39}\n")
            .unwrap_err()
            .contains("not a finite"));
        assert!(read("hello\n").unwrap_err().contains("is not"));
        assert!(read("{\"step\": 0, \"loss\": 1, \"x\": 2}\n").is_err());
        assert_eq!(
            read("{\"step\": 0, \"loss\": 1}\n{\"step\": 1, \"loss\": 0.5}")
                .unwrap()
                .0,
            [1.0, 0.5]
        );
    }
}
