//! A provider that cheats, for testing audits. Only in builds with the
//! `cheat` feature; a normal build has no way to reach any of it.
//!
//! A cheating trainer passes `--cheat KIND` to the segment process for a
//! fraction of its segments (`gradpool segment run --cheat`, see
//! `gradpool_train::cheat`); a lazy validator answers replays with the
//! trainer's own claim instead of computing.

use gradpool_core::TaskId;
use sha2::{Digest, Sha256};

/// How this provider cheats.
#[derive(Debug, Clone, Default)]
pub struct Cheat {
    /// The segment process's `--cheat` kind (`skip-steps`, …); `None`
    /// trains honestly.
    pub kind: Option<String>,
    /// The share of train tasks faked, from 0 to 1.
    pub fraction: f64,
    /// Answer replays with the claimed checkpoint's hash, computing nothing.
    pub lazy_validator: bool,
    /// Commit outer steps whose global checkpoint is altered: one weight
    /// moved by 0.001, a change no training could tell from noise.
    pub forge_outer: bool,
}

impl Cheat {
    /// The `--cheat` kind for `task`, when this task is one of the faked
    /// ones. The choice hashes the task id, so it is the same after a
    /// restart and spread evenly over tasks.
    pub fn kind_for(&self, task: &TaskId) -> Option<&str> {
        let kind = self.kind.as_deref()?;
        let digest = Sha256::digest(task.as_str().as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        let draw = u64::from_le_bytes(head) as f64 / u64::MAX as f64;
        (draw < self.fraction).then_some(kind)
    }
}

/// Alters a computed global checkpoint in place: its first parameter's
/// first value moves by 0.001. The file stays a valid global checkpoint.
pub fn forge_global(path: &std::path::Path) -> Result<(), crate::ProviderError> {
    let io = crate::ProviderError::io(format!("cannot forge {}", path.display()));
    let bytes = std::fs::read(path).map_err(io)?;
    let mut global = gradpool_core::outer::Global::from_bytes(&bytes)
        .map_err(|e| crate::ProviderError::Segment(e.to_string()))?;
    if let Some(v) = global
        .params
        .values_mut()
        .next()
        .and_then(|(_, v)| v.first_mut())
    {
        *v += 0.001;
    }
    let io = crate::ProviderError::io(format!("cannot forge {}", path.display()));
    std::fs::write(path, global.to_bytes()).map_err(io)
}

/// Relabels a container checkpoint written at an earlier step as one at
/// `step`: a segment that trained only part of its steps passes itself off
/// as whole. The file stays a canonical container checkpoint.
pub fn forge_container_step(path: &std::path::Path, step: u64) -> Result<(), crate::ProviderError> {
    let fail = |why: String| crate::ProviderError::Segment(format!("cannot forge: {why}"));
    let bytes = std::fs::read(path).map_err(crate::ProviderError::io(format!(
        "cannot read {}",
        path.display()
    )))?;
    let len = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| fail("too short".into()))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| fail("header size".into()))?;
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| fail(e.to_string()))?;
    header["__metadata__"]["step"] = serde_json::Value::String(step.to_string());
    let text = serde_json::to_vec(&header).map_err(|e| fail(e.to_string()))?;
    let mut relabelled = (text.len() as u64).to_le_bytes().to_vec();
    relabelled.extend_from_slice(&text);
    relabelled.extend_from_slice(&bytes[end..]);
    let (canonical, _) = gradpool_core::container::canonical(&relabelled, step, None)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(path, canonical).map_err(crate::ProviderError::io(format!(
        "cannot forge {}",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_of_faked_tasks_is_close_to_the_one_asked() {
        let cheat = Cheat {
            kind: Some("skip-steps".into()),
            fraction: 0.3,
            lazy_validator: false,
            forge_outer: false,
        };
        let tasks: Vec<TaskId> = (0..2000).map(|_| TaskId::random()).collect();
        let faked = tasks.iter().filter(|t| cheat.kind_for(t).is_some()).count();
        assert!((500..700).contains(&faked), "{faked} of 2000");
        let all = Cheat {
            fraction: 1.0,
            ..cheat.clone()
        };
        assert_eq!(all.kind_for(&tasks[0]), Some("skip-steps"));
        let none = Cheat {
            fraction: 0.0,
            ..cheat
        };
        assert_eq!(none.kind_for(&tasks[0]), None);
    }
}
