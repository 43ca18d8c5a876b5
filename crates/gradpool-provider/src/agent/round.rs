//! A parallel job's transfers, on the provider's side: where a worker's
//! segment starts (the round's weights rebuilt from the round before's
//! and the outer update when this provider holds them, a fraction of the
//! global checkpoint's bytes), and the committed checkpoints the pool
//! asks for ([`upload_kept`]), which a worker keeps instead of uploading
//! them: for an audit, or for its slot to move to another provider.

use super::{fetch, Shared};
use crate::ProviderError;
use gradpool_core::delta::{self, DeltaKind};
use gradpool_core::outer::Weights;
use gradpool_core::wire::{Assignment, RoundUpdate};
use gradpool_core::Sha256Hex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a parallel job's segment starts: `None` in round 0 (the seeded
/// initial weights, computed by the segment), else the round's global
/// checkpoint from the cache, the weights rebuilt from the outer update,
/// or the global checkpoint downloaded, in that order. `native` holds a
/// native job's spec and data, from which round 0's weights can be
/// computed here; a container job's are cached by its round-0 segments.
pub(super) async fn start(
    shared: &Arc<Shared>,
    a: &Assignment,
    native: Option<(&Path, &Path)>,
) -> Result<Option<PathBuf>, ProviderError> {
    let Some(global) = &a.start_checkpoint_sha256 else {
        return Ok(None);
    };
    for cached in [
        shared.dir.blob_path(global),
        shared.dir.weights_path(global),
    ] {
        if cached.is_file() {
            return Ok(Some(cached));
        }
    }
    let round = a.round.as_ref();
    if let Some(update) = round.and_then(|r| r.update.as_ref()) {
        let first = native.filter(|_| round.is_some_and(|r| r.round == 1));
        match rebuild(shared, global, update, first).await {
            Ok(Some(path)) => return Ok(Some(path)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot rebuild the round's weights; downloading its global checkpoint")
            }
        }
    }
    Ok(Some(fetch(shared, global).await?))
}

/// The weights of `global` from those of the global checkpoint before it
/// and its outer update, checked against the digest the pool computed;
/// `None` when this provider does not hold the earlier weights. Round 0's
/// are the seeded initial weights, which it computes from `first` (the
/// spec and data) when given.
async fn rebuild(
    shared: &Arc<Shared>,
    global: &Sha256Hex,
    update: &RoundUpdate,
    first: Option<(&Path, &Path)>,
) -> Result<Option<PathBuf>, ProviderError> {
    let from = &update.from_global_sha256;
    let held = [shared.dir.blob_path(from), shared.dir.weights_path(from)]
        .into_iter()
        .find(|p| p.is_file());
    let base = match held {
        Some(path) => path,
        None => match first {
            Some((spec, data)) => match initial(shared, from, spec, data).await? {
                Some(path) => path,
                None => return Ok(None),
            },
            None => return Ok(None),
        },
    };
    let update_file = fetch(shared, &update.update_sha256).await?;
    let rebuilt = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let weights = Weights::from_bytes(&read(&base)?).map_err(|e| e.to_string())?;
        let d =
            delta::decode(&read(&update_file)?, DeltaKind::Update).map_err(|e| e.to_string())?;
        Ok(weights.next(&d).map_err(|e| e.to_string())?.to_bytes())
    })
    .await
    .map_err(|e| ProviderError::Segment(format!("rebuilding the weights: {e}")))?
    .map_err(ProviderError::Segment)?;
    let got = Sha256Hex::of(&rebuilt);
    if got != update.weights_sha256 {
        tracing::warn!(%got, want = %update.weights_sha256, "rebuilt weights differ from the pool's");
        return Ok(None);
    }
    let path = shared.dir.weights_path(global);
    write_atomic(&path, &rebuilt)?;
    tracing::info!(global = %global, "round weights rebuilt from the outer update");
    Ok(Some(path))
}

/// Round 0's global checkpoint, the seeded initial weights, computed with
/// `gradpool checkpoint initial` into the cache; `None` if it is not the
/// one the pool started from.
async fn initial(
    shared: &Arc<Shared>,
    want: &Sha256Hex,
    spec: &Path,
    data: &Path,
) -> Result<Option<PathBuf>, ProviderError> {
    let out = shared.dir.blob_path(want).with_extension("initial");
    let output = tokio::process::Command::new(&shared.config.program)
        .args(["checkpoint", "initial", "--spec"])
        .arg(spec)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(ProviderError::io("cannot compute round 0's weights"))?;
    if !output.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&output.stderr).trim(), "cannot compute round 0's weights");
        return Ok(None);
    }
    let sha = Sha256Hex::of_file(&out)
        .map_err(ProviderError::io(format!("cannot read {}", out.display())))?;
    if &sha != want {
        let _ = std::fs::remove_file(&out);
        tracing::warn!(%sha, %want, "round 0's weights computed here are not the pool's");
        return Ok(None);
    }
    let path = shared.dir.blob_path(want);
    std::fs::rename(&out, &path).map_err(ProviderError::io(format!(
        "cannot write {}",
        path.display()
    )))?;
    Ok(Some(path))
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProviderError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(ProviderError::io(format!(
            "cannot write {}",
            path.display()
        )))
}

/// Uploads, beside the running tasks, the committed checkpoints the pool
/// asked for that this provider holds; each at most once at a time.
pub(super) fn upload_kept(shared: &Arc<Shared>, kept: Vec<Sha256Hex>) {
    for sha in kept {
        let path = shared.dir.blob_path(&sha);
        if !path.is_file() {
            tracing::warn!(checkpoint = %sha, "the pool asks for a checkpoint this provider no longer holds");
            continue;
        }
        let fresh = shared
            .uploading
            .lock()
            .map(|mut set| set.insert(sha.clone()))
            .unwrap_or(false);
        if !fresh {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let api = shared.api.read().await.clone();
            match api.put_blob(&path, &sha, |_| {}).await {
                Ok(_) => tracing::info!(checkpoint = %sha, "committed checkpoint uploaded"),
                Err(e) => {
                    tracing::warn!(checkpoint = %sha, error = %e.report(), "cannot upload a committed checkpoint; the pool will ask again")
                }
            }
            if let Ok(mut set) = shared.uploading.lock() {
                set.remove(&sha);
            }
        });
    }
}
