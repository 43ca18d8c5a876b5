//! The example specs shipped in `examples/` parse, and train locally with
//! the `gradpool train` command.

mod common;

use common::BIN;
use std::path::Path;
use std::process::Command;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_example_spec_is_valid_and_its_data_exists() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let spec = gradpool_core::JobSpec::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let data = spec.data.file.expect("examples name their data file");
            assert!(
                data.is_file(),
                "{} names missing data {}",
                path.display(),
                data.display()
            );
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn the_iris_mlp_learns_to_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("train")
        .arg(examples().join("iris-mlp.toml"))
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accuracy: f64 = stdout
        .split("accuracy ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout}"));
    assert!(accuracy >= 90.0, "{stdout}");
    assert!(tmp.path().join("model.safetensors").is_file());
}

/// The reference configuration (the PyTorch benchmark's: AdamW at a
/// constant 1e-3) brings the loss on Shakespeare below 2.6 in 300 steps.
#[test]
fn the_reference_gpt_learns_shakespeare_in_300_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = gradpool_train::bench::reference_spec(300);
    let data =
        gradpool_train::Dataset::from_bytes(&spec, gradpool_cli::cmd::local::SHAKESPEARE).unwrap();
    let outcome = gradpool_train::run_segment(
        &spec,
        &data,
        None,
        0,
        300,
        &gradpool_train::Device::Cpu,
        &tmp.path().join("ckpt.safetensors"),
        &mut |_| {},
    )
    .unwrap();
    let first = outcome.losses[0];
    let tail = &outcome.losses[280..];
    let last = tail.iter().sum::<f32>() / tail.len() as f32;
    assert!(first > 4.0, "initial loss {first}");
    assert!(last < 2.6, "mean loss of the last 20 steps {last}");
}

/// The GPU-sized benchmark config runs on the CPU too: one step of GPT-2
/// small's shape, reported with its size.
#[test]
fn the_gpt2_small_benchmark_runs_a_step_on_the_cpu() {
    let stdout = common::succeeded(
        Command::new(BIN)
            .args(["bench", "train", "--config", "gpt2-small"])
            .args(["--steps", "1", "--warmup", "0", "--json"]),
    );
    let r: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(r["config"], "gpt2-small");
    assert_eq!(r["steps"], 1);
    // 12 blocks of 12·768² weights, with a character vocabulary.
    let params = r["params"].as_u64().unwrap();
    assert!((80_000_000..90_000_000).contains(&params), "{params}");
    let loss = r["first_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 3.0, "{loss}");
    assert!(r["tokens_per_sec"].as_f64().unwrap() > 0.0);
}

/// `gradpool train` of a spec with `[parallel]`: every worker of every
/// round here, the outer step after each round, a model at the end, and
/// the same bytes on a second run.
#[test]
fn a_parallel_spec_trains_locally_round_after_round() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::small_corpus(tmp.path());
    let spec = tmp.path().join("parallel.toml");
    let text = common::tiny_spec("parallel", 3, 30, 10)
        + "[parallel]\nworkers = 3\ninner_steps = 10\ncompression = \"int8\"\n";
    std::fs::write(&spec, text).unwrap();
    let run = |out: &Path| {
        common::succeeded(
            Command::new(BIN)
                .arg("train")
                .arg(&spec)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(out),
        )
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let stdout = String::from_utf8(run(&a)).unwrap();
    assert!(
        stdout.contains("trained 3 rounds of 3 workers × 10 steps"),
        "{stdout}"
    );
    assert!(stdout.contains("int8"), "{stdout}");
    // Each round's losses, also when the output is not a terminal.
    assert!(stdout.contains("round 3/3: workers' last loss"), "{stdout}");
    run(&b);
    for file in ["global.safetensors", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
    // The model samples like any other.
    let text = common::succeeded(
        Command::new(BIN)
            .args(["sample", "--tokens", "20", "--model"])
            .arg(a.join("model.safetensors")),
    );
    assert!(text.len() >= 20);
}
