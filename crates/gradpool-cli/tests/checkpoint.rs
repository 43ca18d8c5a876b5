//! `gradpool checkpoint distance` and `gradpool segment run --cheat` as the
//! provider agent runs them: child processes of the real binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gradpool");

const SPEC: &str = r#"name = "distance"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
[data]
format = "text"
[train]
seed = 4
steps = 20
batch_size = 4
checkpoint_every = 10
lr = 0.003
warmup_steps = 2
"#;

fn gradpool(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `gradpool segment run` and checks its events: one per step, then
/// `done` with one loss per step.
fn segment(dir: &Path, from: u64, to: u64, start: Option<&str>, out: &str, extra: &[&str]) {
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (spec, data, out) = (path("spec.toml"), path("data.txt"), path(out));
    let mut args = vec![
        "segment",
        "run",
        "--spec",
        &spec,
        "--data",
        &data,
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--out",
        &out,
        "--threads",
        "1",
    ];
    let start = start.map(path);
    if let Some(s) = &start {
        args.extend(["--start", s.as_str()]);
    }
    args.extend(extra);
    let stdout = ok(gradpool(&args));
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    assert_eq!(events.len() as u64, to - from + 1, "{stdout}");
    let done = events.last().expect("events");
    assert_eq!(
        done["losses"].as_array().map(Vec::len),
        Some((to - from) as usize),
        "{done}"
    );
}

fn distance(dir: &Path, a: &str, b: &str) -> serde_json::Value {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let stdout = ok(gradpool(&[
        "checkpoint",
        "distance",
        "--spec",
        &path("spec.toml"),
        "--data",
        &path("data.txt"),
        &path(a),
        &path(b),
    ]));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

#[test]
fn distance_of_replays_and_cheats() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let corpus = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/tinyshakespeare.txt"
    ))
    .expect("the corpus");
    std::fs::write(dir.path().join("data.txt"), &corpus[..60_000]).expect("written");
    std::fs::write(dir.path().join("spec.toml"), SPEC).expect("written");

    segment(dir.path(), 0, 10, None, "a10", &[]);
    segment(dir.path(), 0, 10, None, "b10", &[]);
    segment(dir.path(), 10, 20, Some("a10"), "a20", &[]);

    // A replay: identical.
    let d = distance(dir.path(), "b10", "a10");
    assert_eq!(d["comparable"], true, "{d}");
    assert_eq!(d["max_rel_l2"], 0.0, "{d}");
    assert_eq!(d["step_a"], 10, "{d}");
    assert_eq!(d["step_b"], 10, "{d}");
    assert!(d["tensor"]
        .as_str()
        .is_some_and(|t| t.starts_with("param.")));

    // Different steps: not comparable, no finite distance.
    let d = distance(dir.path(), "a10", "a20");
    assert_eq!(d["comparable"], false, "{d}");
    assert!(d["max_rel_l2"].is_null() && d["tensor"].is_null(), "{d}");
    assert_eq!(
        (d["step_a"].as_u64(), d["step_b"].as_u64()),
        (Some(10), Some(20))
    );

    // A file that is not a checkpoint of the job is an error, not a distance.
    std::fs::write(dir.path().join("junk"), b"not a checkpoint").expect("written");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let out = gradpool(&[
        "checkpoint",
        "distance",
        "--spec",
        &path("spec.toml"),
        "--data",
        &path("data.txt"),
        &path("junk"),
        &path("a10"),
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("truncated or corrupt"), "{stderr}");

    #[cfg(feature = "cheat")]
    {
        use gradpool_core::verification::CROSS_CLASS_TOLERANCE;
        segment(
            dir.path(),
            10,
            20,
            Some("a10"),
            "c20",
            &["--cheat", "lower-lr"],
        );
        let d = distance(dir.path(), "c20", "a20");
        assert_eq!(d["comparable"], true, "{d}");
        let x = d["max_rel_l2"].as_f64().expect("a finite distance");
        assert!(x > CROSS_CLASS_TOLERANCE, "{d}");
        let out = gradpool(&[
            "segment",
            "run",
            "--spec",
            &path("spec.toml"),
            "--data",
            &path("data.txt"),
            "--from",
            "0",
            "--to",
            "10",
            "--out",
            &path("x"),
            "--cheat",
            "sloppy",
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("skip-steps"), "{stderr}");
    }
    #[cfg(not(feature = "cheat"))]
    {
        let out = gradpool(&[
            "segment",
            "run",
            "--spec",
            &path("spec.toml"),
            "--data",
            &path("data.txt"),
            "--from",
            "0",
            "--to",
            "10",
            "--out",
            &path("x"),
            "--cheat",
            "lower-lr",
        ]);
        assert!(!out.status.success(), "a normal build has no --cheat");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--cheat"), "{stderr}");
        assert!(!dir.path().join("x").exists());
    }
}
