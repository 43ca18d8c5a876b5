//! Determinism, resumption and checkpoint validation.

use gradpool_core::JobSpec;
use gradpool_train::{
    export_model, logits, run_segment, sample, Dataset, Device, LogitsInput, SegmentOutcome,
    TrainError,
};
use std::path::Path;

const SHAKESPEARE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/tinyshakespeare.txt"
));

fn gpt_spec(seed: u64, steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        r#"
name = "tiny-gpt"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
[data]
format = "text"
[train]
seed = {seed}
steps = {steps}
batch_size = 4
checkpoint_every = 8
lr = 0.003
warmup_steps = 3
"#
    ))
    .unwrap()
}

fn mlp_spec() -> JobSpec {
    JobSpec::from_toml_str(
        r#"
name = "tiny-mlp"
[model]
kind = "mlp"
hidden = [32, 16]
[data]
format = "csv"
label_column = "species"
[train]
seed = 3
steps = 300
batch_size = 16
checkpoint_every = 8
lr = 0.03
"#,
    )
    .unwrap()
}

/// A small CSV: two noisy clusters per class.
fn csv_bytes() -> Vec<u8> {
    let mut s = String::from("a,b,species,c\n");
    let mut x: u64 = 12345;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    for i in 0..120 {
        let (name, cx) = match i % 3 {
            0 => ("setosa", 1.0),
            1 => ("versicolor", 3.0),
            _ => ("virginica", 5.0),
        };
        s.push_str(&format!(
            "{:.3},{:.3},{name},{:.3}\n",
            cx + next(),
            2.0 * cx + next(),
            next()
        ));
    }
    s.into_bytes()
}

fn text_data(spec: &JobSpec) -> Dataset {
    Dataset::from_bytes(spec, &SHAKESPEARE.as_bytes()[..200_000]).unwrap()
}

fn run(
    spec: &JobSpec,
    data: &Dataset,
    start: Option<&Path>,
    a: u64,
    b: u64,
    out: &Path,
) -> Result<SegmentOutcome, TrainError> {
    let mut n = 0;
    let outcome = run_segment(spec, data, start, a, b, &Device::Cpu, out, &mut |r| {
        assert_eq!(r.step, a + n);
        n += 1;
    })?;
    assert_eq!(n, b - a);
    Ok(outcome)
}

#[test]
fn gpt_same_spec_gives_identical_checkpoints_and_resume_matches() {
    let dir = tempfile::tempdir().unwrap();
    let spec = gpt_spec(7, 20);
    let data = text_data(&spec);
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let mid = dir.path().join("mid.safetensors");
    let c = dir.path().join("c.safetensors");
    let full = run(&spec, &data, None, 0, 20, &a).unwrap();
    run(&spec, &data, None, 0, 20, &b).unwrap();
    assert_eq!(full.losses.len(), 20);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let first = run(&spec, &data, None, 0, 8, &mid).unwrap();
    let second = run(&spec, &data, Some(&mid), 8, 20, &c).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    let mut joined = first.losses.clone();
    joined.extend(second.losses);
    assert_eq!(joined, full.losses);
}

#[test]
fn mlp_resume_matches_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let spec = mlp_spec();
    let data = Dataset::from_bytes(&spec, &csv_bytes()).unwrap();
    assert_eq!(data.vocab_size(), 3);
    assert_eq!(data.eval_len(), 24);
    let a = dir.path().join("a.safetensors");
    let mid = dir.path().join("mid.safetensors");
    let c = dir.path().join("c.safetensors");
    let full = run(&spec, &data, None, 0, 300, &a).unwrap();
    run(&spec, &data, None, 0, 8, &mid).unwrap();
    let resumed = run(&spec, &data, Some(&mid), 8, 300, &c).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    assert_eq!(full.eval_loss, resumed.eval_loss);
    let eval = gradpool_train::evaluate(&spec, &data, &a, &Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(eval.step, 300);
    assert!(eval.accuracy > 0.9, "{eval:?}");
    // Sampling refuses an MLP with a clear error.
    let model = dir.path().join("model.safetensors");
    export_model(&spec, &a, &model).unwrap();
    let err = sample(&model, "x", 5, 0.0, 1, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("GPT"), "{err}");
    // Its logits: one row of class scores per row of raw features.
    let rows = vec![vec![5.1, 3.5, 1.4], vec![6.7, 3.0, 5.2]];
    let scores = logits(&model, LogitsInput::Features(&rows), &Device::Cpu).unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores
        .iter()
        .all(|r| r.len() == 3 && r.iter().all(|v| v.is_finite())));
    assert_ne!(scores[0], scores[1]);
    let short = vec![vec![5.1, 3.5]];
    assert_eq!(scores[0].len(), data.vocab_size());
    let err = logits(&model, LogitsInput::Features(&short), &Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Input(_)), "{err}");
    assert!(err.to_string().contains("row 1 has 2 features"), "{err}");
    let err = logits(&model, LogitsInput::Text("x"), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("feature rows"), "{err}");
}

#[test]
fn bad_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = gpt_spec(7, 20);
    let data = text_data(&spec);
    let good = dir.path().join("good.safetensors");
    run(&spec, &data, None, 0, 8, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let out = dir.path().join("out.safetensors");

    let refuse = |path: &Path, start: u64, needle: &str| {
        let err = run(&spec, &data, Some(path), start, start + 1, &out).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TrainError::Checkpoint { .. }), "{msg}");
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    };

    // Truncated.
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refuse(&truncated, 8, "truncated or corrupt");
    std::fs::write(&truncated, &bytes[..5]).unwrap();
    refuse(&truncated, 8, "truncated or corrupt");

    // Wrong step.
    refuse(&good, 9, "expected step 9");

    // Another spec (different seed).
    let other_spec = gpt_spec(8, 20);
    let other = dir.path().join("other.safetensors");
    run(&other_spec, &data, None, 0, 8, &other).unwrap();
    refuse(&other, 8, "another job spec");

    // A tensor with the wrong shape: rewrite the header of the good file.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let key = "\"param.ln_f.bias\":{\"data_offsets\":[";
    let at = header.find(key).unwrap() + key.len();
    let rest = &header[at..];
    let close = rest.find(']').unwrap();
    let offs: Vec<usize> = rest[..close]
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(offs[1] - offs[0], 32 * 4);
    let shape_key = "\"shape\":[32]";
    let shape_at = at + rest.find(shape_key).unwrap();
    let mut new_header = header.to_owned();
    new_header.replace_range(shape_at..shape_at + shape_key.len(), "\"shape\":[4,8]");
    while new_header.len() & 7 != 0 {
        new_header.push(' ');
    }
    let mut wrong = (new_header.len() as u64).to_le_bytes().to_vec();
    wrong.extend_from_slice(new_header.as_bytes());
    wrong.extend_from_slice(&bytes[8 + n..]);
    let wrong_shape = dir.path().join("wrong_shape.safetensors");
    std::fs::write(&wrong_shape, wrong).unwrap();
    refuse(
        &wrong_shape,
        8,
        "param.ln_f.bias has shape [4, 8], expected [32]",
    );

    // Not a file at all.
    let err = run(&spec, &data, Some(&dir.path().join("nope")), 8, 9, &out).unwrap_err();
    assert!(matches!(err, TrainError::Io { .. }), "{err}");

    // A start step without a checkpoint.
    let err = run(&spec, &data, None, 8, 9, &out).unwrap_err();
    assert!(matches!(err, TrainError::Segment(_)), "{err}");
}

#[test]
fn loss_falls_on_shakespeare_and_sampling_works() {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::from_toml_str(
        r#"
name = "shakespeare"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
[data]
format = "text"
[train]
seed = 1
steps = 120
batch_size = 8
checkpoint_every = 120
lr = 0.01
warmup_steps = 10
"#,
    )
    .unwrap();
    let data = Dataset::from_bytes(&spec, SHAKESPEARE.as_bytes()).unwrap();
    assert_eq!(data.vocab_size(), 65);
    let ckpt = dir.path().join("ckpt.safetensors");
    let out = run(&spec, &data, None, 0, 120, &ckpt).unwrap();
    let head: f32 = out.losses[..10].iter().sum::<f32>() / 10.0;
    let tail: f32 = out.losses[110..].iter().sum::<f32>() / 10.0;
    assert!(out.losses[0] > 4.0, "{:?}", out.losses[0]);
    assert!(tail < head - 1.0, "head {head} tail {tail}");
    let model = dir.path().join("model.safetensors");
    export_model(&spec, &ckpt, &model).unwrap();
    // The pool makes the same model file from the checkpoint's bytes alone.
    assert_eq!(
        gradpool_core::checkpoint::model_file(&std::fs::read(&ckpt).unwrap()).unwrap(),
        std::fs::read(&model).unwrap()
    );
    let text = sample(&model, "ROMEO:", 50, 0.8, 42, &Device::Cpu).unwrap();
    assert_eq!(text.chars().count(), 50);
    assert_eq!(
        text,
        sample(&model, "ROMEO:", 50, 0.8, 42, &Device::Cpu).unwrap()
    );
    let greedy = sample(&model, "", 10, 0.0, 0, &Device::Cpu).unwrap();
    assert_eq!(greedy.chars().count(), 10);
    let err = sample(&model, "ROMEO: ☃€", 5, 1.0, 0, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("'☃'") && msg.contains("'€'"), "{msg}");
    // Its logits: a row per character, the last predicting what greedy
    // sampling writes next.
    let rows = logits(&model, LogitsInput::Text("ROMEO:"), &Device::Cpu).unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.len() == 65));
    let last = &rows[5];
    let best = (0..65).fold(0, |b, i| if last[i] > last[b] { i } else { b });
    let next = sample(&model, "ROMEO:", 1, 0.0, 0, &Device::Cpu).unwrap();
    assert_eq!(data.vocab().unwrap()[best].to_string(), next);
    let long = "a".repeat(33);
    let err = logits(&model, LogitsInput::Text(&long), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("1 to 32"), "{err}");
    let err = logits(&model, LogitsInput::Text("€"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Input(_)), "{err}");
    let err = logits(&model, LogitsInput::Features(&[]), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("give it text"), "{err}");
    // Exporting from a checkpoint of another spec is refused.
    let other = gpt_spec(7, 20);
    assert!(export_model(&other, &ckpt, &dir.path().join("x")).is_err());
}

#[test]
fn bad_data_is_refused() {
    let spec = gpt_spec(1, 20);
    let err = Dataset::from_bytes(&spec, b"ok\xff\xfe").unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
    let spec = mlp_spec();
    let err = Dataset::from_bytes(&spec, b"a,b\n1,2\n").unwrap_err();
    assert!(err.to_string().contains("species"), "{err}");
    let err = Dataset::from_bytes(&spec, b"a,species\nx,1\n").unwrap_err();
    assert!(err.to_string().contains("not a number"), "{err}");
}
