//! `gradpool job verify`: a customer (or anyone holding the job's key)
//! checks the pool's claims without trusting it.
//!
//! For every committed segment: the provider's signature, the links of the
//! commitment chain (`prev` is the previous segment's `H`, the first one
//! the job's genesis), the steps, and the loss trace against its committed
//! hash. For `N` segments drawn at random: the start and end checkpoints are
//! downloaded (a blob that does not match its digest fails), `H_i =
//! BLAKE3(checkpoint_i ‖ H_{i-1})` is recomputed from the bytes, and the
//! segment is trained again here, in a child `gradpool segment run` as a
//! provider runs it. Inside the trainer's reproducibility class the replay
//! must give the same bytes; across classes every tensor must be within the
//! runtime's cross-class tolerance.
//!
//! A parallel job's segment chains from its round's global commitment
//! `G_r` and is replayed as its worker slot, from the round's global
//! checkpoint and the slot's checkpoint of an earlier round. Every outer
//! step is checked, not sampled: its signature, its inputs (exactly the
//! round's segments), its chain hash from the downloaded global
//! checkpoint, and the step itself, computed again here from the
//! workers' pseudo-gradients, which must give the same bytes. The
//! workers keep their checkpoints: the sampled segments' are requested
//! from the pool (`POST /v1/jobs/{id}/checkpoint-requests`), which asks
//! the workers, and waited for; one a worker never delivers is reported
//! `kept by its provider`.

mod container;

use anyhow::Context;
use gradpool_client::{Api, ClientError};
use gradpool_core::commitment::{self, genesis, ChainHash, OuterInput};
use gradpool_core::verification::CROSS_CLASS_TOLERANCE;
use gradpool_core::wire::{JobView, OuterView, RoundView, SegmentView};
use gradpool_core::{JobId, JobSpec, Sha256Hex};
use gradpool_provider::segment::{self, SegmentEnd, SegmentFiles, SegmentRun};
use gradpool_provider::{CpuDevice, Device};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `gradpool job verify` checks and where.
pub struct VerifyOptions {
    /// How many segments to replay (all of them when larger than the job).
    pub segments: usize,
    /// CPU threads for the replays (default: all).
    pub threads: Option<u32>,
    /// The `gradpool` binary that trains the replays.
    pub program: PathBuf,
    /// Where checkpoints and replays are written.
    pub work_dir: PathBuf,
    /// Where a container job's image is loaded to replay its segments.
    pub image_store: PathBuf,
    /// Where a confidential job's data key was kept at submit.
    pub keys: super::confidential::KeyStore,
}

/// The verdict on one segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentCheck {
    pub segment: u32,
    pub start_step: u64,
    pub end_step: u64,
    pub provider: String,
    /// `ok`, or what is wrong with the signature.
    pub signature: String,
    /// `ok`, or which link of the chain is broken.
    pub chain: String,
    /// `ok`, `not downloaded` (not sampled), or what is wrong with the
    /// checkpoint's bytes.
    pub checkpoint: String,
    /// `exact match`, `within tolerance (D)`, `MISMATCH …`, `not sampled`
    /// or why it could not run.
    pub replay: String,
    /// The largest relative L2 distance, when the replay crossed classes.
    pub distance: Option<f64>,
    pub pass: bool,
}

/// The verdict on a parallel job's outer step.
#[derive(Debug, Clone, Serialize)]
pub struct OuterCheck {
    pub round: u64,
    pub provider: String,
    /// `ok`, or what is wrong with the signature.
    pub signature: String,
    /// `ok`, or which link is broken (prev, inputs, chain hash).
    pub chain: String,
    /// `exact match`, or how the step computed here differs.
    pub recomputed: String,
    pub pass: bool,
}

/// The verdict on a job.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub job_id: JobId,
    /// The reproducibility class the replays ran in.
    pub class: String,
    pub segments: Vec<SegmentCheck>,
    pub replayed: usize,
    /// A parallel job's outer steps, every one of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outer_steps: Vec<OuterCheck>,
    pub pass: bool,
}

/// What a segment must chain from and start with, and what a replay of it
/// starts from.
struct Expected {
    prev: Result<ChainHash, String>,
    start_step: u64,
    /// The start checkpoint (`None`: the seeded initial weights).
    start: Option<Sha256Hex>,
    /// A parallel job's worker slot and the slot's earlier checkpoint.
    worker: Option<u32>,
    slot: Option<Sha256Hex>,
}

/// What each segment of the job must chain from: the previous segment,
/// or for a parallel job the round's global commitment.
fn expectations(job: &JobView, segments: &[SegmentView], rounds: &[RoundView]) -> Vec<Expected> {
    let Some(p) = &job.parallel else {
        return segments
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let before = i.checked_sub(1).map(|j| &segments[j]);
                Expected {
                    prev: Ok(before.map_or(genesis(&job.id), |b| b.commitment.commitment.hash)),
                    start_step: before.map_or(0, |b| b.commitment.commitment.end_step),
                    start: before.map(|b| b.checkpoint_sha256.clone()),
                    worker: None,
                    slot: None,
                }
            })
            .collect();
    };
    let n = p.workers.max(1);
    let every = job.checkpoint_every;
    segments
        .iter()
        .map(|s| {
            let (round, worker) = (u64::from(s.segment / n), s.segment % n);
            let before = usize::try_from(round)
                .ok()
                .and_then(|r| r.checked_sub(1))
                .map(|r| rounds.get(r).and_then(|v| v.outer.as_ref()));
            let prev = match before {
                None => Ok(genesis(&job.id)),
                Some(Some(o)) => Ok(o.commitment.commitment.hash),
                Some(None) => Err(format!("round {round} has no outer step before it")),
            };
            let slot = segments
                .iter()
                .filter(|e| e.segment % n == worker && e.segment / n < s.segment / n)
                .max_by_key(|e| e.segment)
                .map(|e| e.checkpoint_sha256.clone());
            Expected {
                prev,
                start_step: round * every,
                start: before.flatten().map(|o| o.global_sha256.clone()),
                worker: Some(worker),
                slot,
            }
        })
        .collect()
}

/// Checks job `id` as the module documentation says.
pub async fn verify_job(api: &Api, id: &str, opts: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let job: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
    let mut segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await?;
    segments.sort_by_key(|s| s.segment);
    let spec = JobSpec::from_toml_str(&job.spec_toml)
        .with_context(|| format!("the spec of job {id} does not parse"))?;
    let rounds: Vec<RoundView> = if job.parallel.is_some() {
        api.get(&format!("/v1/jobs/{id}/rounds")).await?
    } else {
        Vec::new()
    };
    let device = CpuDevice::new(opts.threads);
    let class = match spec.container() {
        Some(c) => container::class(c, &device.hardware())?,
        None => device.hardware().class(),
    };
    let mut staged: Option<container::Staged> = None;
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("cannot create {}", opts.work_dir.display()))?;

    let expected = expectations(&job, &segments, &rounds);
    let mut checks = chain_checks(&job, &segments, &expected);

    let sample = draw(segments.len(), opts.segments);
    let data = opts.work_dir.join("data");
    // A confidential job's sealed files are opened here, with its key.
    let key = match spec.privacy {
        Some(_) => Some(opts.keys.load(id)?),
        None => None,
    };
    if !sample.is_empty() || !rounds.is_empty() {
        let sealed = data.with_extension("sealed");
        let got = if key.is_some() { &sealed } else { &data };
        api.get_blob(&job.data_sha256, got)
            .await
            .with_context(|| format!("cannot download the data of job {id}"))?;
        if let Some(key) = &key {
            gradpool_core::privacy::open_file(key, &sealed, &data)
                .with_context(|| format!("cannot open the sealed data of job {id}"))?;
        }
    }
    let spec_path = opts.work_dir.join("spec.toml");
    std::fs::write(&spec_path, &job.spec_toml)?;
    if job.parallel.is_some() {
        let kept: Vec<Sha256Hex> = sample
            .iter()
            .flat_map(|&i| {
                [
                    Some(segments[i].checkpoint_sha256.clone()),
                    expected[i].slot.clone(),
                ]
            })
            .flatten()
            .collect();
        request_kept(api, &job.id, kept, &opts.work_dir).await;
    }
    // A parallel container job's round 0 starts from its initial checkpoint.
    let initial = initial_checkpoint(api, &spec, &opts.work_dir).await?;
    for &i in &sample {
        let s = &segments[i];
        let Some((end, start, slot)) = replay_inputs(
            api,
            (opts, key.as_ref()),
            s,
            &expected[i],
            &class,
            &mut checks[i],
        )
        .await
        else {
            continue;
        };
        let (replay, distance) = if let Some(c) = spec.container() {
            let ready = match staged.take() {
                Some(ready) => ready,
                None => {
                    let threads = device.hardware().threads;
                    let dirs = (opts.work_dir.as_path(), opts.image_store.as_path());
                    container::stage(api, c, dirs, key.as_ref(), threads).await?
                }
            };
            let worker = match (&initial, expected[i].worker) {
                (Some(initial), Some(worker)) => Some(container::WorkerReplay {
                    worker,
                    slot,
                    initial,
                }),
                _ => None,
            };
            let replayed = container::replay(
                &ready,
                &spec,
                (&data, &opts.work_dir),
                start,
                worker,
                s,
                &end,
                &class,
            )
            .await?;
            staged = Some(ready);
            replayed
        } else {
            replay_segment(
                opts,
                &device,
                (&spec, &spec_path),
                &data,
                (start, expected[i].worker, slot),
                s,
                &end,
                &class,
            )
            .await?
        };
        (checks[i].replay, checks[i].distance) = (replay, distance);
    }
    let outer_steps = check_outer_steps(
        api,
        &job,
        (&spec, &data, initial.as_deref()),
        &segments,
        &rounds,
        opts,
    )
    .await?;
    for c in &mut checks {
        c.pass = c.signature == "ok"
            && c.chain == "ok"
            && matches!(c.checkpoint.as_str(), "ok" | "not downloaded" | KEPT)
            && (c.replay == "not sampled"
                || c.replay == "exact match"
                || c.replay.starts_with("within tolerance")
                || c.replay.ends_with(KEPT));
    }
    Ok(VerifyReport {
        job_id: job.id,
        class,
        replayed: sample.len(),
        pass: checks.iter().all(|c| c.pass) && outer_steps.iter().all(|c| c.pass),
        segments: checks,
        outer_steps,
    })
}

/// Each segment's signature and its link in the chain, against what the
/// job's earlier segments and rounds make `expected`.
fn chain_checks(
    job: &JobView,
    segments: &[SegmentView],
    expected: &[Expected],
) -> Vec<SegmentCheck> {
    let mut checks: Vec<SegmentCheck> = Vec::with_capacity(segments.len());
    for ((i, s), want) in segments.iter().enumerate().zip(expected) {
        let c = &s.commitment.commitment;
        let index_ok = if job.parallel.is_some() {
            c.segment == s.segment
        } else {
            c.segment as usize == i && s.segment as usize == i
        };
        let signature = match s.commitment.verify() {
            Ok(()) if s.commitment.signer() == s.provider => "ok".to_owned(),
            Ok(()) => "signed by another key than the provider's".to_owned(),
            Err(e) => format!("invalid: {e}"),
        };
        let chain = if c.job_id != job.id {
            format!("commitment is for job {}", c.job_id)
        } else if !index_ok {
            format!("segment {} where {} was expected", c.segment, s.segment)
        } else if let Err(e) = &want.prev {
            e.clone()
        } else if Ok(c.prev) != want.prev {
            "prev is not the H it must chain from".to_owned()
        } else if c.start_step != want.start_step
            || c.start_step != s.start_step
            || c.end_step != s.end_step
        {
            format!(
                "steps {}..{} do not start at step {}",
                c.start_step, c.end_step, want.start_step
            )
        } else if c.checkpoint_sha256 != s.checkpoint_sha256 {
            "the pool lists another checkpoint than the one committed".to_owned()
        } else if commitment::loss_trace_hash(&s.loss_trace) != c.loss_trace_blake3 {
            "the loss trace does not match its committed hash".to_owned()
        } else {
            "ok".to_owned()
        };
        checks.push(SegmentCheck {
            segment: s.segment,
            start_step: s.start_step,
            end_step: s.end_step,
            provider: s.provider.to_string(),
            signature,
            chain,
            checkpoint: "not downloaded".to_owned(),
            replay: "not sampled".to_owned(),
            distance: None,
            pass: true,
        });
    }
    checks
}

/// The files to replay segment `s` from: its end checkpoint (downloaded,
/// its `H` checked into `check`), its start and its worker slot's
/// checkpoint; `None` (with the reason in `check.replay`) when it cannot
/// be replayed.
async fn replay_inputs(
    api: &Api,
    (opts, key): (&VerifyOptions, Option<&gradpool_core::privacy::DataKey>),
    s: &SegmentView,
    want: &Expected,
    class: &str,
    check: &mut SegmentCheck,
) -> Option<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    let end = opts
        .work_dir
        .join(format!("{}.safetensors", s.checkpoint_sha256));
    let Ok(prev) = want.prev.clone() else {
        check.replay = "not run: no chain to check against".to_owned();
        return None;
    };
    // A parallel job's worker keeps its checkpoints until the pool
    // asks for one (an audit, a slot's move): it may not be there.
    let worker = s.commitment.commitment.pseudo_gradient_sha256.is_some();
    // A confidential job's H chains the plaintext: the sealed file opened.
    let downloaded = async {
        download(api, &s.checkpoint_sha256, &end).await?;
        match key {
            Some(key) => opened(key, &end),
            None => Ok(end.clone()),
        }
    };
    let mut end = end.clone();
    check.checkpoint = match downloaded.await {
        Ok(plain) => match commitment::chain_file(&plain, &prev) {
            Ok(h) if h == s.commitment.commitment.hash => {
                end = plain;
                "ok".to_owned()
            }
            Ok(_) => "H does not match the checkpoint's bytes".to_owned(),
            Err(e) => format!("cannot hash: {e}"),
        },
        Err(e) if worker && e == MISSING => KEPT.to_owned(),
        Err(e) => e,
    };
    let comparable = check.checkpoint == "ok"
        || (check.checkpoint == KEPT && s.commitment.commitment.class == class);
    if !comparable {
        check.replay = match check.checkpoint.as_str() {
            KEPT => format!("not run: the checkpoint is {KEPT}"),
            _ => "not run: no valid end checkpoint".to_owned(),
        };
        return None;
    }
    let mut inputs = Vec::new();
    for sha in [&want.start, &want.slot] {
        inputs.push(match sha {
            Some(sha) => match cached(api, sha, &opts.work_dir)
                .await
                .and_then(|path| match key {
                    Some(key) => opened(key, &path),
                    None => Ok(path),
                }) {
                Ok(path) => Some(path),
                Err(e) if worker && e == MISSING => {
                    check.replay = format!("not run: the slot's checkpoint is {KEPT}");
                    break;
                }
                Err(e) => {
                    check.replay = format!("not run: start checkpoint {e}");
                    break;
                }
            },
            None => None,
        });
    }
    if inputs.len() < 2 {
        return None;
    }
    let slot = inputs.pop().flatten();
    let start = inputs.pop().flatten();
    Some((end, start, slot))
}

/// The sealed file `sealed` opened with `key` beside it.
fn opened(key: &gradpool_core::privacy::DataKey, sealed: &Path) -> Result<PathBuf, String> {
    let plain = sealed.with_extension("plain.safetensors");
    gradpool_core::privacy::open_file(key, sealed, &plain)
        .map_err(|e| format!("does not open with the job's data key: {e}"))?;
    Ok(plain)
}

/// A blob in the work directory under its digest, downloaded once.
async fn cached(api: &Api, sha: &Sha256Hex, dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join(format!("{sha}.safetensors"));
    if !path.is_file() || Sha256Hex::of_file(&path).ok().as_ref() != Some(sha) {
        download(api, sha, &path).await?;
    }
    Ok(path)
}

/// A parallel container job's initial checkpoint, downloaded into `dir`;
/// `None` for other jobs.
async fn initial_checkpoint(
    api: &Api,
    spec: &JobSpec,
    dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let Some(sha) = spec
        .container()
        .filter(|_| spec.parallel.is_some())
        .and_then(|c| c.initial_sha256.as_ref())
    else {
        return Ok(None);
    };
    cached(api, sha, dir)
        .await
        .map(Some)
        .map_err(|e| anyhow::anyhow!("the job's initial checkpoint {sha}: {e}"))
}

/// Checks every outer step of a parallel job (none for other jobs).
async fn check_outer_steps(
    api: &Api,
    job: &JobView,
    (spec, data, initial): (&JobSpec, &Path, Option<&Path>),
    segments: &[SegmentView],
    rounds: &[RoundView],
    opts: &VerifyOptions,
) -> anyhow::Result<Vec<OuterCheck>> {
    let mut out = Vec::new();
    let mut prev = genesis(&job.id);
    let mut global: Option<Sha256Hex> = None;
    for view in rounds {
        let Some(o) = &view.outer else { break };
        let cm = &o.commitment.commitment;
        let signature = match o.commitment.verify() {
            Ok(()) if o.commitment.signer() == o.provider => "ok".to_owned(),
            Ok(()) => "signed by another key than the provider's".to_owned(),
            Err(e) => format!("invalid: {e}"),
        };
        let inputs: Vec<OuterInput> = view
            .workers
            .iter()
            .filter_map(|w| {
                let s = segments.iter().find(|s| s.segment == w.segment)?;
                Some(OuterInput {
                    worker: w.worker,
                    checkpoint_sha256: s.checkpoint_sha256.clone(),
                    commitment: s.commitment.commitment.hash,
                    pseudo_gradient_sha256: s
                        .commitment
                        .commitment
                        .pseudo_gradient_sha256
                        .clone()?,
                })
            })
            .collect();
        let mut chain = if cm.job_id != job.id || cm.round != view.round {
            format!("commitment is for job {} round {}", cm.job_id, cm.round)
        } else if cm.prev != prev {
            "prev is not the round's global commitment".to_owned()
        } else if cm.inputs != inputs || inputs.len() != view.workers.len() {
            "its inputs are not the round's committed segments".to_owned()
        } else if cm.global_sha256 != o.global_sha256 {
            "the pool lists another global checkpoint than the one committed".to_owned()
        } else {
            "ok".to_owned()
        };
        let recomputed = if chain == "ok" {
            let (again, hash_ok) = recompute_outer(
                api,
                (spec, data, initial),
                global.as_ref(),
                &inputs,
                o,
                &prev,
                opts,
            )
            .await;
            if !hash_ok && again == "exact match" {
                chain = "H does not match the global checkpoint's bytes".to_owned();
            }
            again
        } else {
            "not run: the commitment does not check out".to_owned()
        };
        out.push(OuterCheck {
            round: view.round,
            provider: o.provider.to_string(),
            pass: signature == "ok" && chain == "ok" && recomputed == "exact match",
            signature,
            chain,
            recomputed,
        });
        prev = cm.hash;
        global = Some(o.global_sha256.clone());
    }
    Ok(out)
}

/// Computes an outer step again from its committed files: `exact match`
/// or what differs, and whether the committed chain hash is that of the
/// global checkpoint's bytes.
async fn recompute_outer(
    api: &Api,
    (spec, data, initial): (&JobSpec, &Path, Option<&Path>),
    global: Option<&Sha256Hex>,
    inputs: &[OuterInput],
    o: &OuterView,
    prev: &ChainHash,
    opts: &VerifyOptions,
) -> (String, bool) {
    let dir = &opts.work_dir;
    let claimed = match cached(api, &o.global_sha256, dir).await {
        Ok(p) => p,
        Err(e) => return (format!("global checkpoint {e}"), false),
    };
    let start = match global {
        Some(sha) => match cached(api, sha, dir).await {
            Ok(p) => Some(p),
            Err(e) => return (format!("the round's global checkpoint {e}"), false),
        },
        None => None,
    };
    let mut workers = Vec::with_capacity(inputs.len());
    for i in inputs {
        match cached(api, &i.pseudo_gradient_sha256, dir).await {
            Ok(p) => workers.push((i.worker, p)),
            Err(e) => return (format!("worker {}'s pseudo-gradient {e}", i.worker), false),
        }
    }
    let mine = dir.join(format!(
        "outer-{}.safetensors",
        o.commitment.commitment.round
    ));
    let result = (|| -> anyhow::Result<(bool, bool)> {
        match (spec.parallel, initial) {
            // A container job's step is over the files alone.
            (Some(p), Some(initial)) => {
                let g = match &start {
                    Some(path) => gradpool_core::outer::Global::from_bytes(&std::fs::read(path)?)?,
                    None => gradpool_core::container::initial_global(&std::fs::read(initial)?)
                        .map_err(|e| anyhow::anyhow!("the initial checkpoint: {e}"))?,
                };
                let files = workers
                    .iter()
                    .map(|(w, path)| Ok((*w, std::fs::read(path)?)))
                    .collect::<std::io::Result<Vec<_>>>()?;
                let next = gradpool_core::outer::step_files(&g, &files, &p, spec.train.steps)?;
                std::fs::write(&mine, next.global.to_bytes())?;
            }
            _ => {
                let bytes = std::fs::read(data)?;
                let dataset = gradpool_train::Dataset::from_bytes(spec, &bytes)?;
                let out = gradpool_train::parallel::OuterOut {
                    global: &mine,
                    update: None,
                };
                gradpool_train::parallel::outer_step(
                    spec,
                    &dataset,
                    start.as_deref(),
                    &workers,
                    out,
                )?;
            }
        }
        let claimed = std::fs::read(&claimed)?;
        let hash_ok =
            commitment::outer_chain(&claimed, prev, inputs) == o.commitment.commitment.hash;
        Ok((std::fs::read(&mine)? == claimed, hash_ok))
    })();
    match result {
        Ok((true, hash_ok)) => ("exact match".to_owned(), hash_ok),
        Ok((false, hash_ok)) => (
            "MISMATCH: the step computed here gives other bytes".to_owned(),
            hash_ok,
        ),
        Err(e) => (format!("cannot compute the step: {e:#}"), false),
    }
}

/// How long `job verify` waits for the checkpoints workers keep.
const KEPT_WAIT: Duration = Duration::from_secs(120);

/// Asks the pool for a parallel job's checkpoints that its workers keep,
/// and downloads each into `dir` as it arrives, for at most
/// [`KEPT_WAIT`]. What does not arrive is reported where it is used.
async fn request_kept(api: &Api, job: &JobId, shas: Vec<Sha256Hex>, dir: &Path) {
    let mut unique: Vec<Sha256Hex> = Vec::new();
    for sha in shas {
        if !unique.contains(&sha) {
            unique.push(sha);
        }
    }
    let mut waiting = Vec::new();
    for chunk in unique.chunks(gradpool_core::wire::CheckpointRequest::MAX) {
        let request = gradpool_core::wire::CheckpointRequest {
            checkpoint_sha256: chunk.to_vec(),
        };
        let path = format!("/v1/jobs/{job}/checkpoint-requests");
        match api
            .post::<_, gradpool_core::wire::CheckpointRequestReply>(&path, &request)
            .await
        {
            Ok(reply) => waiting.extend(reply.asked),
            Err(e) => {
                tracing::warn!(error = %e.report(), "cannot ask the pool for the workers' checkpoints");
                return;
            }
        }
    }
    if !waiting.is_empty() {
        eprintln!(
            "asking the workers for {} checkpoints they keep (up to {} s)",
            waiting.len(),
            KEPT_WAIT.as_secs()
        );
    }
    let deadline = tokio::time::Instant::now() + KEPT_WAIT;
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for sha in waiting {
            let path = dir.join(format!("{sha}.safetensors"));
            if download(api, &sha, &path).await.is_err() {
                still.push(sha);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A blob the pool does not have.
const MISSING: &str = "missing from the pool's blob store";
/// A parallel job's checkpoint its worker keeps until the pool asks for it.
const KEPT: &str = "kept by its provider";

/// Downloads a blob, checking its digest; the error is a table cell.
async fn download(api: &Api, sha: &Sha256Hex, dest: &Path) -> Result<(), String> {
    match api.get_blob(sha, dest).await {
        Ok(()) => Ok(()),
        Err(ClientError::CorruptBlob { .. }) => {
            Err("does not match its digest (tampered or corrupt)".to_owned())
        }
        Err(ClientError::Refused { status: 404, .. }) => Err(MISSING.to_owned()),
        Err(e) => Err(format!("cannot download: {}", e.report())),
    }
}

/// Trains segment `s` again and compares the result with `claimed`.
#[allow(clippy::too_many_arguments)]
async fn replay_segment(
    opts: &VerifyOptions,
    device: &CpuDevice,
    (spec, spec_path): (&JobSpec, &Path),
    data: &Path,
    (start, worker, slot): (Option<PathBuf>, Option<u32>, Option<PathBuf>),
    s: &SegmentView,
    claimed: &Path,
    class: &str,
) -> anyhow::Result<(String, Option<f64>)> {
    let out = opts
        .work_dir
        .join(format!("replay-{}.safetensors", s.segment));
    let files = SegmentFiles {
        spec: spec_path.to_owned(),
        data: data.to_owned(),
        start,
        out: out.clone(),
    };
    let run = SegmentRun {
        worker,
        slot,
        ..SegmentRun::new(files, s.start_step, s.end_step, device.segment_device())
    };
    let end = segment::run_child(
        &opts.program,
        &run,
        Duration::from_secs(600),
        tokio_util::sync::CancellationToken::new(),
        |_, _, _| {},
    )
    .await
    .context("cannot run the replay")?;
    match end {
        SegmentEnd::Done { .. } => {}
        SegmentEnd::Failed { reason } => return Ok((format!("replay failed: {reason}"), None)),
        SegmentEnd::Cancelled => return Ok(("replay cancelled".to_owned(), None)),
    }
    if s.commitment.commitment.class == class {
        let sha = Sha256Hex::of_file(&out)?;
        // A confidential job's claim was opened: compared in the clear.
        if spec.privacy.is_some() {
            return Ok(by_hash(&sha, &Sha256Hex::of_file(claimed)?));
        }
        if let Some(claimed) = &s.commitment.commitment.pseudo_gradient_sha256 {
            let sent = Sha256Hex::of_file(&run.pseudo_gradient_path())?;
            if &sent != claimed {
                return Ok((
                    "MISMATCH: the replay's pseudo-gradient is not the one sent".to_owned(),
                    None,
                ));
            }
        }
        return Ok(by_hash(&sha, &s.checkpoint_sha256));
    }
    let bytes = std::fs::read(data)?;
    let dataset = gradpool_train::Dataset::from_bytes(spec, &bytes)?;
    let d = gradpool_train::checkpoint::distance(spec, &dataset, &out, claimed)?;
    Ok(if d.within(CROSS_CLASS_TOLERANCE) {
        (
            format!("within tolerance ({:.1e})", d.max_rel_l2),
            Some(d.max_rel_l2),
        )
    } else {
        (
            format!(
                "MISMATCH: {} is {:.1e} apart (tolerance {CROSS_CLASS_TOLERANCE:.1e})",
                d.tensor, d.max_rel_l2
            ),
            Some(d.max_rel_l2),
        )
    })
}

/// A replay in the trainer's class: its checkpoint `sha` must be the
/// claimed one.
fn by_hash(sha: &Sha256Hex, claimed: &Sha256Hex) -> (String, Option<f64>) {
    if sha == claimed {
        ("exact match".to_owned(), None)
    } else {
        (
            format!(
                "MISMATCH: replay gives {}…",
                sha.as_str().get(..12).unwrap_or_default()
            ),
            None,
        )
    }
}

/// `n` distinct indices below `len`, drawn with the operating system's
/// randomness, in increasing order.
fn draw(len: usize, n: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..len).collect();
    let n = n.min(len);
    let mut seed = [0u8; 8];
    if getrandom::getrandom(&mut seed).is_err() {
        // No randomness: the first n are as good a choice as any.
        all.truncate(n);
        return all;
    }
    let mut rng = gradpool_train::rng::Rng::new(u64::from_le_bytes(seed));
    for i in 0..n {
        let j = i + rng.below((len - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(n);
    all.sort_unstable();
    all
}

/// Prints the report as a table.
pub fn print_report(r: &VerifyReport) {
    println!(
        "job {}: {} segments, {} replayed here ({})",
        r.job_id,
        r.segments.len(),
        r.replayed,
        r.class
    );
    println!(
        "{:>4} {:>13}  {:<22} {:<9} {:<6} {:<11} {:<24} RESULT",
        "SEG", "STEPS", "PROVIDER", "SIGNATURE", "CHAIN", "CHECKPOINT", "REPLAY"
    );
    let mut problems = Vec::new();
    for c in &r.segments {
        let short = |s: &str, ok: &[&str]| {
            if ok.contains(&s) {
                s.to_owned()
            } else {
                "FAIL".to_owned()
            }
        };
        println!(
            "{:>4} {:>6}-{:<6}  {:<22} {:<9} {:<6} {:<11} {:<24} {}",
            c.segment,
            c.start_step,
            c.end_step,
            c.provider,
            short(&c.signature, &["ok"]),
            short(&c.chain, &["ok"]),
            short(&c.checkpoint, &["ok", "not downloaded"]).replace("not downloaded", "-"),
            if c.replay.starts_with("within tolerance") || c.replay == "exact match" {
                c.replay.clone()
            } else if c.replay == "not sampled" {
                "-".to_owned()
            } else {
                "FAIL".to_owned()
            },
            if c.pass { "PASS" } else { "FAIL" }
        );
        for (what, v) in [
            ("signature", &c.signature),
            ("chain", &c.chain),
            ("checkpoint", &c.checkpoint),
            ("replay", &c.replay),
        ] {
            if !c.pass
                && !matches!(
                    v.as_str(),
                    "ok" | "not downloaded" | "not sampled" | "exact match"
                )
                && !v.starts_with("within")
            {
                problems.push(format!("  segment {}: {what}: {v}", c.segment));
            }
        }
    }
    if !r.outer_steps.is_empty() {
        println!(
            "\n{:>5}  {:<22} {:<9} {:<6} RECOMPUTED",
            "ROUND", "OUTER STEP BY", "SIGNATURE", "CHAIN"
        );
        for o in &r.outer_steps {
            let cell = |v: &str| if v == "ok" { "ok" } else { "FAIL" };
            println!(
                "{:>5}  {:<22} {:<9} {:<6} {}",
                o.round,
                o.provider,
                cell(&o.signature),
                cell(&o.chain),
                o.recomputed
            );
            for (what, v) in [("signature", &o.signature), ("chain", &o.chain)] {
                if v != "ok" {
                    problems.push(format!("  outer step of round {}: {what}: {v}", o.round));
                }
            }
        }
    }
    for p in &problems {
        println!("{p}");
    }
    let failed = r.segments.iter().filter(|c| !c.pass).count();
    let outer_failed = r.outer_steps.iter().filter(|o| !o.pass).count();
    if r.pass && r.outer_steps.is_empty() {
        println!("PASS: every commitment checks out and every replay matches");
    } else if r.pass {
        println!(
            "PASS: every commitment checks out, every replay matches and all {} outer steps compute to the same bytes",
            r.outer_steps.len()
        );
    } else {
        println!(
            "FAIL: {failed} of {} segments, {outer_failed} of {} outer steps",
            r.segments.len(),
            r.outer_steps.len()
        );
    }
}
