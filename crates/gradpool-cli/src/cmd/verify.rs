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

use anyhow::Context;
use gradpool_client::{Api, ClientError};
use gradpool_core::commitment::{self, genesis};
use gradpool_core::verification::CROSS_CLASS_TOLERANCE;
use gradpool_core::wire::{JobView, SegmentView};
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

/// The verdict on a job.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub job_id: JobId,
    /// The reproducibility class the replays ran in.
    pub class: String,
    pub segments: Vec<SegmentCheck>,
    pub replayed: usize,
    pub pass: bool,
}

/// Checks job `id` as the module documentation says.
pub async fn verify_job(api: &Api, id: &str, opts: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let job: JobView = api.get(&format!("/v1/jobs/{id}")).await?;
    let mut segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await?;
    segments.sort_by_key(|s| s.segment);
    let spec = JobSpec::from_toml_str(&job.spec_toml)
        .with_context(|| format!("the spec of job {id} does not parse"))?;
    let device = CpuDevice::new(opts.threads);
    let class = device.hardware().class();
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("cannot create {}", opts.work_dir.display()))?;

    let mut checks: Vec<SegmentCheck> = Vec::with_capacity(segments.len());
    let mut prev_hash = genesis(&job.id);
    let mut prev_end = 0u64;
    for (i, s) in segments.iter().enumerate() {
        let c = &s.commitment.commitment;
        let signature = match s.commitment.verify() {
            Ok(()) if s.commitment.signer() == s.provider => "ok".to_owned(),
            Ok(()) => "signed by another key than the provider's".to_owned(),
            Err(e) => format!("invalid: {e}"),
        };
        let chain = if c.job_id != job.id {
            format!("commitment is for job {}", c.job_id)
        } else if c.segment as usize != i || s.segment as usize != i {
            format!("segment {} where {i} was expected", c.segment)
        } else if c.prev != prev_hash {
            "prev is not the previous segment's H".to_owned()
        } else if c.start_step != prev_end
            || c.start_step != s.start_step
            || c.end_step != s.end_step
        {
            format!(
                "steps {}..{} do not follow step {prev_end}",
                c.start_step, c.end_step
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
        prev_hash = c.hash;
        prev_end = c.end_step;
    }

    let sample = draw(segments.len(), opts.segments);
    let data = opts.work_dir.join("data");
    if !sample.is_empty() {
        api.get_blob(&job.data_sha256, &data)
            .await
            .with_context(|| format!("cannot download the data of job {id}"))?;
    }
    let spec_path = opts.work_dir.join("spec.toml");
    std::fs::write(&spec_path, &job.spec_toml)?;
    for &i in &sample {
        let s = &segments[i];
        let end = opts.work_dir.join(format!("segment-{i}.safetensors"));
        let prev = if i == 0 {
            genesis(&job.id)
        } else {
            segments[i - 1].commitment.commitment.hash
        };
        checks[i].checkpoint = match download(api, &s.checkpoint_sha256, &end).await {
            Ok(()) => match commitment::chain_file(&end, &prev) {
                Ok(h) if h == s.commitment.commitment.hash => "ok".to_owned(),
                Ok(_) => "H does not match the checkpoint's bytes".to_owned(),
                Err(e) => format!("cannot hash: {e}"),
            },
            Err(e) => e,
        };
        if checks[i].checkpoint != "ok" {
            checks[i].replay = "not run: no valid end checkpoint".to_owned();
            continue;
        }
        let start = if i == 0 {
            None
        } else {
            let path = opts.work_dir.join(format!("segment-{}.safetensors", i - 1));
            let sha = &segments[i - 1].checkpoint_sha256;
            if !path.is_file() || Sha256Hex::of_file(&path).ok().as_ref() != Some(sha) {
                if let Err(e) = download(api, sha, &path).await {
                    checks[i].replay = format!("not run: start checkpoint {e}");
                    continue;
                }
            }
            Some(path)
        };
        let (replay, distance) = replay_segment(
            opts,
            &device,
            (&spec, &spec_path),
            &data,
            start,
            s,
            &end,
            &class,
        )
        .await?;
        checks[i].replay = replay;
        checks[i].distance = distance;
    }
    for c in &mut checks {
        c.pass = c.signature == "ok"
            && c.chain == "ok"
            && matches!(c.checkpoint.as_str(), "ok" | "not downloaded")
            && (c.replay == "not sampled"
                || c.replay == "exact match"
                || c.replay.starts_with("within tolerance"));
    }
    Ok(VerifyReport {
        job_id: job.id,
        class,
        replayed: sample.len(),
        pass: checks.iter().all(|c| c.pass),
        segments: checks,
    })
}

/// Downloads a blob, checking its digest; the error is a table cell.
async fn download(api: &Api, sha: &Sha256Hex, dest: &Path) -> Result<(), String> {
    match api.get_blob(sha, dest).await {
        Ok(()) => Ok(()),
        Err(ClientError::CorruptBlob { .. }) => {
            Err("does not match its digest (tampered or corrupt)".to_owned())
        }
        Err(ClientError::Refused { status: 404, .. }) => {
            Err("missing from the pool's blob store".to_owned())
        }
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
    start: Option<PathBuf>,
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
    let end = segment::run_child(
        &opts.program,
        &SegmentRun::new(files, s.start_step, s.end_step, device.segment_device()),
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
        return Ok(if sha == s.checkpoint_sha256 {
            ("exact match".to_owned(), None)
        } else {
            (
                format!(
                    "MISMATCH: replay gives {}…",
                    sha.as_str().get(..12).unwrap_or_default()
                ),
                None,
            )
        });
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
    for p in &problems {
        println!("{p}");
    }
    let failed = r.segments.iter().filter(|c| !c.pass).count();
    if r.pass {
        println!("PASS: every commitment checks out and every replay matches");
    } else {
        println!("FAIL: {failed} of {} segments", r.segments.len());
    }
}
