//! Parallel (DiLoCo) jobs trained here: deterministic to the byte, every
//! worker's segment replayable from the files it started from, workers on
//! their own shards, the outer step checkable by anyone, int8 transfers.

use gradpool_core::outer::Global;
use gradpool_core::JobSpec;
use gradpool_train::parallel::{self, train_parallel, WorkerTask};
use gradpool_train::{Dataset, Device, StepReport};
use std::path::{Path, PathBuf};

const SHAKESPEARE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/tinyshakespeare.txt"
));

fn spec(workers: u32, compression: &str) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        r#"
name = "tiny-diloco"
[model]
kind = "gpt"
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
[data]
format = "text"
[train]
seed = 11
steps = 12
batch_size = 4
lr = 0.01
[parallel]
workers = {workers}
inner_steps = 4
compression = "{compression}"
"#
    ))
    .unwrap()
}

fn data(spec: &JobSpec) -> Dataset {
    Dataset::from_bytes(spec, &SHAKESPEARE.as_bytes()[..60_000]).unwrap()
}

/// Trains the whole job in `dir`; returns the final global checkpoint's
/// bytes and every step's loss, by worker.
fn train(spec: &JobSpec, dir: &Path) -> (Vec<u8>, Vec<(u32, f32)>) {
    let mut losses = Vec::new();
    let mut rounds = Vec::new();
    let global = train_parallel(
        spec,
        &data(spec),
        dir,
        &Device::Cpu,
        &mut |w, r: StepReport| losses.push((w, r.loss)),
        &mut |r| rounds.push(r.clone()),
    )
    .unwrap();
    assert_eq!(rounds.len(), 3);
    assert!(rounds.iter().all(|r| r.worker_losses.len() == 3));
    (std::fs::read(global).unwrap(), losses)
}

#[test]
fn a_parallel_job_gives_the_same_bytes_every_time() {
    for compression in ["none", "int8"] {
        let spec = spec(3, compression);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (first, losses) = train(&spec, a.path());
        let (second, _) = train(&spec, b.path());
        assert_eq!(first, second, "{compression}");
        // 3 rounds × 3 workers × 4 steps, and it learns.
        assert_eq!(losses.len(), 36);
        let global = Global::from_bytes(&first).unwrap();
        assert_eq!((global.round, global.step), (3, 12));
        assert_eq!(global.workers, vec![0, 1, 2]);
        let (start, end) = (losses[0].1, losses[losses.len() - 1].1);
        assert!(end < start, "{compression}: loss {start} → {end}");
    }
}

#[test]
fn compression_changes_the_result_but_not_its_determinism() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (plain, _) = train(&spec(3, "none"), a.path());
    let (int8, _) = train(&spec(3, "int8"), b.path());
    assert_ne!(plain, int8);
    let (p, q) = (
        Global::from_bytes(&plain).unwrap(),
        Global::from_bytes(&int8).unwrap(),
    );
    // The two runs stay close: the codebook's error is small.
    for (name, (_, x)) in &p.params {
        let y = &q.params[name].1;
        let diff: f32 = x
            .iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 0.05, "{name}: {diff}");
    }
}

/// Worker `w`'s inner segment of the round `global` starts, from its
/// slot's checkpoint `slot`, written to `out`, on the CPU; returns its
/// losses.
fn worker(
    spec: &JobSpec,
    data: &Dataset,
    global: &Path,
    slot: Option<&Path>,
    w: u32,
    out: &Path,
) -> Result<Vec<f32>, gradpool_train::TrainError> {
    let task = WorkerTask {
        global: Some(global),
        slot,
        worker: w,
        steps: None,
    };
    let sent = sent(out);
    let out = parallel::WorkerOut {
        checkpoint: out,
        pseudo_gradient: &sent,
    };
    parallel::run_worker_segment(spec, data, &task, &Device::Cpu, out, &mut |_| {})
        .map(|o| o.losses)
}

/// Where [`worker`] writes the pseudo-gradient of the checkpoint `out`.
fn sent(out: &Path) -> PathBuf {
    out.with_extension("pseudo-gradient.safetensors")
}

/// The outer step on files, writing only the global checkpoint.
fn outer_step(
    spec: &JobSpec,
    data: &Dataset,
    global: Option<&Path>,
    inputs: &[(u32, PathBuf)],
    out: &Path,
) -> Result<Global, gradpool_train::TrainError> {
    let sent: Vec<(u32, PathBuf)> = inputs.iter().map(|(w, p)| (*w, sent(p))).collect();
    let out = parallel::OuterOut {
        global: out,
        update: None,
    };
    parallel::outer_step(spec, data, global, &sent, out)
}

/// The files of a job trained in `dir` to the end of round `rounds`.
fn round_files(spec: &JobSpec, data: &Dataset, dir: &Path, rounds: u64) -> PathBuf {
    let global = dir.join("g0.safetensors");
    std::fs::write(&global, parallel::initial_global(spec, data).unwrap()).unwrap();
    let mut current = global;
    for round in 0..rounds {
        let mut inputs = Vec::new();
        for w in 0..3u32 {
            let slot = (round > 0).then(|| dir.join(format!("r{}-w{w}.safetensors", round - 1)));
            let out = dir.join(format!("r{round}-w{w}.safetensors"));
            worker(spec, data, &current, slot.as_deref(), w, &out).unwrap();
            inputs.push((w, out));
        }
        let next = dir.join(format!("g{}.safetensors", round + 1));
        outer_step(spec, data, Some(&current), &inputs, &next).unwrap();
        current = next;
    }
    current
}

#[test]
fn every_worker_segment_replays_to_the_same_bytes_and_the_outer_step_too() {
    let spec = spec(3, "int8");
    let data = data(&spec);
    let dir = tempfile::tempdir().unwrap();
    let end = round_files(&spec, &data, dir.path(), 2);
    // The same as the whole job's loop to that point.
    let whole = tempfile::tempdir().unwrap();
    let full = train_parallel(
        &spec,
        &data,
        whole.path(),
        &Device::Cpu,
        &mut |_, _| {},
        &mut |_| {},
    )
    .unwrap();
    let g2 = Global::from_bytes(&std::fs::read(&end).unwrap()).unwrap();
    assert_eq!((g2.round, g2.step), (2, 8));
    // A validator replays worker 1's segment of round 1 from its inputs.
    let replay = dir.path().join("replay.safetensors");
    worker(
        &spec,
        &data,
        &dir.path().join("g1.safetensors"),
        Some(&dir.path().join("r0-w1.safetensors")),
        1,
        &replay,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&replay).unwrap(),
        std::fs::read(dir.path().join("r1-w1.safetensors")).unwrap()
    );
    // Anyone recomputes the outer step from the committed files.
    let again = dir.path().join("g2-again.safetensors");
    let inputs: Vec<(u32, PathBuf)> = (0..3)
        .map(|w| (w, dir.path().join(format!("r1-w{w}.safetensors"))))
        .collect();
    outer_step(
        &spec,
        &data,
        Some(&dir.path().join("g1.safetensors")),
        &inputs,
        &again,
    )
    .unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&end).unwrap());
    // Finishing round 2 by hand gives the whole job's bytes.
    let by_hand = tempfile::tempdir().unwrap();
    let g3 = round_files(&spec, &data, by_hand.path(), 3);
    assert_eq!(std::fs::read(g3).unwrap(), std::fs::read(full).unwrap());
}

#[test]
fn workers_train_on_their_own_shards() {
    let spec = spec(3, "none");
    let data = data(&spec);
    let dir = tempfile::tempdir().unwrap();
    let global = dir.path().join("g0.safetensors");
    std::fs::write(&global, parallel::initial_global(&spec, &data).unwrap()).unwrap();
    let losses: Vec<Vec<f32>> = (0..3u32)
        .map(|w| {
            worker(
                &spec,
                &data,
                &global,
                None,
                w,
                &dir.path().join(format!("w{w}.safetensors")),
            )
            .unwrap()
        })
        .collect();
    // Same start, different batches: different first losses.
    assert_ne!(losses[0][0], losses[1][0]);
    assert_ne!(losses[1][0], losses[2][0]);
    // A worker that does not exist, a round past the end: refused.
    let e = worker(
        &spec,
        &data,
        &global,
        None,
        3,
        &dir.path().join("w3.safetensors"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("parallel.workers"), "{e}");
    // A global checkpoint of another spec is refused.
    let other = self::spec(2, "none");
    let e = worker(
        &other,
        &data,
        &global,
        None,
        0,
        &dir.path().join("x.safetensors"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("another job spec"), "{e}");
}

#[test]
fn the_outer_step_refuses_workers_below_the_minimum_and_closes_with_fewer() {
    let text = spec(3, "none");
    let mut spec = text;
    if let Some(p) = spec.parallel.as_mut() {
        p.min_workers = 2;
    }
    let data = data(&spec);
    let dir = tempfile::tempdir().unwrap();
    let global = dir.path().join("g0.safetensors");
    std::fs::write(&global, parallel::initial_global(&spec, &data).unwrap()).unwrap();
    let mut inputs = Vec::new();
    for w in [0u32, 2] {
        let out = dir.path().join(format!("w{w}.safetensors"));
        worker(&spec, &data, &global, None, w, &out).unwrap();
        inputs.push((w, out));
    }
    let next = dir.path().join("g1.safetensors");
    let g1 = outer_step(&spec, &data, Some(&global), &inputs, &next).unwrap();
    assert_eq!(g1.workers, vec![0, 2]);
    let e = outer_step(&spec, &data, Some(&global), &inputs[..1], &next).unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
    // A pseudo-gradient of the wrong round is refused.
    let e = outer_step(
        &spec,
        &data,
        Some(&next),
        &inputs,
        &dir.path().join("g2.safetensors"),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the outer step takes round 1's at step 8"),
        "{e}"
    );
}

#[test]
fn round_zero_needs_no_file_and_the_pool_computes_it_from_a_pseudo_gradient() {
    let spec = spec(2, "none");
    let data = data(&spec);
    let dir = tempfile::tempdir().unwrap();
    let global = dir.path().join("g0.safetensors");
    let g0 = parallel::initial_global(&spec, &data).unwrap();
    std::fs::write(&global, &g0).unwrap();
    let from_file = dir.path().join("from-file.safetensors");
    worker(&spec, &data, &global, None, 1, &from_file).unwrap();
    // A worker of round 0 computes the initial weights itself.
    let task = WorkerTask {
        global: None,
        slot: None,
        worker: 1,
        steps: Some((0, 4)),
    };
    let computed = dir.path().join("computed.safetensors");
    let computed_sent = sent(&computed);
    let out = parallel::WorkerOut {
        checkpoint: &computed,
        pseudo_gradient: &computed_sent,
    };
    parallel::run_worker_segment(&spec, &data, &task, &Device::Cpu, out, &mut |_| {}).unwrap();
    let worker_bytes = std::fs::read(&computed).unwrap();
    assert_eq!(worker_bytes, std::fs::read(&from_file).unwrap());
    // So does the outer step of round 0.
    let inputs = vec![(1u32, computed.clone())];
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut one = spec.clone();
    if let Some(p) = one.parallel.as_mut() {
        p.min_workers = 1;
    }
    outer_step(&one, &data, Some(&global), &inputs, &a).unwrap();
    outer_step(&one, &data, None, &inputs, &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // The pool, without candle, gets round 0's global checkpoint from the
    // model, the seed and what any pseudo-gradient of the job carries:
    // byte for byte.
    let meta = data.model_meta(&spec).unwrap();
    let pg = std::fs::read(&computed_sent).unwrap();
    let pg =
        gradpool_core::delta::decode(&pg, gradpool_core::delta::DeltaKind::PseudoGradient).unwrap();
    let pool_g0 = Global::initial_for(&meta, spec.train.seed, &pg.metadata);
    assert_eq!(pool_g0.to_bytes(), g0);
}
