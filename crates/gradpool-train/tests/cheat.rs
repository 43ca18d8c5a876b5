//! Cheating segments (feature `cheat`): each kind's checkpoint loads as the
//! end of its segment and an honest provider can continue from it, but it
//! is not the honest checkpoint and a replay tells them apart.

use gradpool_core::hash::Sha256Hex;
use gradpool_core::verification::CROSS_CLASS_TOLERANCE;
use gradpool_core::JobSpec;
use gradpool_train::cheat::{run_segment_cheating, CheatKind};
use gradpool_train::checkpoint::distance;
use gradpool_train::{run_segment, Dataset, Device, SegmentOutcome, StepReport};
use std::path::Path;

const SHAKESPEARE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/tinyshakespeare.txt"
));

fn spec() -> JobSpec {
    JobSpec::from_toml_str(
        r#"
name = "cheat"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
[data]
format = "text"
[train]
seed = 9
steps = 30
batch_size = 4
checkpoint_every = 10
lr = 0.003
warmup_steps = 3
weight_decay = 0.1
"#,
    )
    .expect("the test spec is valid")
}

/// Runs a segment, checking that `on_step` hears of every step in order.
fn run(
    kind: Option<CheatKind>,
    spec: &JobSpec,
    data: &Dataset,
    start: Option<&Path>,
    from: u64,
    to: u64,
    out: &Path,
) -> SegmentOutcome {
    let mut next = from;
    let mut on_step = |r: StepReport| {
        assert_eq!(r.step, next, "{kind:?}");
        assert!(
            r.loss.is_finite() && r.tokens_per_sec > 0.0,
            "{kind:?}: {r:?}"
        );
        next += 1;
    };
    let outcome = match kind {
        None => run_segment(spec, data, start, from, to, &Device::Cpu, out, &mut on_step),
        Some(kind) => run_segment_cheating(
            kind,
            spec,
            data,
            start,
            from,
            to,
            &Device::Cpu,
            out,
            &mut on_step,
        ),
    }
    .unwrap_or_else(|e| panic!("{kind:?} [{from}, {to}): {e}"));
    assert_eq!(next, to, "{kind:?} reported steps up to {next}");
    assert_eq!(outcome.losses.len() as u64, to - from, "{kind:?}");
    outcome
}

#[test]
fn every_cheat_loads_continues_and_is_caught() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = |name: &str| dir.path().join(format!("{name}.safetensors"));
    let spec = spec();
    let data = Dataset::from_bytes(&spec, &SHAKESPEARE.as_bytes()[..100_000]).expect("data");
    // The first segment (from the initialisation) and the second (from a
    // checkpoint).
    run(None, &spec, &data, None, 0, 10, &path("honest10"));
    run(
        None,
        &spec,
        &data,
        Some(&path("honest10")),
        10,
        20,
        &path("honest20"),
    );
    for kind in CheatKind::ALL {
        for (from, start) in [(0, None), (10, Some(path("honest10")))] {
            let to = from + 10;
            let honest = path(&format!("honest{to}"));
            let cheat = path(&format!("{kind}{to}"));
            run(Some(kind), &spec, &data, start.as_deref(), from, to, &cheat);
            let sha = |p: &Path| Sha256Hex::of_file(p).expect("readable");
            assert_ne!(sha(&cheat), sha(&honest), "{kind} [{from}, {to})");
            // Loads as the checkpoint of step `to`.
            let d = distance(&spec, &data, &cheat, &honest).expect("the cheat loads");
            eprintln!(
                "{kind} [{from}, {to}): distance {:.3e} ({})",
                d.max_rel_l2, d.tensor
            );
            assert!(d.comparable() && d.step_a == to, "{kind}: {d:?}");
            assert!(
                !d.within(CROSS_CLASS_TOLERANCE),
                "{kind} [{from}, {to}) is only {} from the honest checkpoint",
                d.max_rel_l2
            );
            // The next provider continues from it.
            let next = path(&format!("{kind}{to}-next"));
            run(None, &spec, &data, Some(&cheat), to, to + 10, &next);
        }
    }
}

#[test]
fn cheats_are_deterministic_and_keep_the_segment_checks() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = spec();
    let data = Dataset::from_bytes(&spec, &SHAKESPEARE.as_bytes()[..100_000]).expect("data");
    for kind in [CheatKind::RandomWeights, CheatKind::PerturbWeights] {
        let a = dir.path().join(format!("{kind}-a"));
        let b = dir.path().join(format!("{kind}-b"));
        run(Some(kind), &spec, &data, None, 0, 10, &a);
        run(Some(kind), &spec, &data, None, 0, 10, &b);
        assert_eq!(std::fs::read(&a).ok(), std::fs::read(&b).ok(), "{kind}");
    }
    let out = dir.path().join("out");
    let err = run_segment_cheating(
        CheatKind::OldCheckpoint,
        &spec,
        &data,
        None,
        10,
        20,
        &Device::Cpu,
        &out,
        &mut |_| {},
    )
    .expect_err("a later segment needs its start checkpoint");
    assert!(err.to_string().contains("needs the checkpoint"), "{err}");
    let err = run_segment_cheating(
        CheatKind::SkipSteps,
        &spec,
        &data,
        None,
        0,
        31,
        &Device::Cpu,
        &out,
        &mut |_| {},
    )
    .expect_err("past the job's steps");
    assert!(err.to_string().contains("30 steps"), "{err}");
}
