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

/// The arguments of `gradpool segment run` for steps `[from, to)` of the
/// spec and data in `dir`, from `start`, into `out` (names in `dir`), on
/// one thread, with `extra` flags.
fn segment_args(
    dir: &Path,
    from: u64,
    to: u64,
    start: Option<&str>,
    out: &str,
    extra: &[&str],
) -> Vec<String> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "segment".into(),
        "run".into(),
        "--spec".into(),
        path("spec.toml"),
        "--data".into(),
        path("data.txt"),
        "--from".into(),
        from.to_string(),
        "--to".into(),
        to.to_string(),
        "--out".into(),
        path(out),
        "--threads".into(),
        "1".into(),
    ];
    if let Some(s) = start {
        args.extend(["--start".into(), path(s)]);
    }
    args.extend(extra.iter().map(|e| e.to_string()));
    args
}

/// Runs `gradpool segment run`, which must fail, and returns its stderr.
fn segment_refused(
    dir: &Path,
    from: u64,
    to: u64,
    start: Option<&str>,
    out: &str,
    extra: &[&str],
) -> String {
    let args = segment_args(dir, from, to, start, out, extra);
    let out = gradpool(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "should have been refused: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `gradpool segment run` and checks its events: one per step, then
/// `done` with one loss per step.
fn segment(dir: &Path, from: u64, to: u64, start: Option<&str>, out: &str, extra: &[&str]) {
    let args = segment_args(dir, from, to, start, out, extra);
    let stdout = ok(gradpool(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
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
        let stderr = segment_refused(dir.path(), 0, 10, None, "x", &["--cheat", "sloppy"]);
        assert!(stderr.contains("skip-steps"), "{stderr}");
    }
    #[cfg(not(feature = "cheat"))]
    {
        // A normal build has no --cheat.
        let stderr = segment_refused(dir.path(), 0, 10, None, "x", &["--cheat", "lower-lr"]);
        assert!(stderr.contains("--cheat"), "{stderr}");
        assert!(!dir.path().join("x").exists());
    }
}

/// A parallel job's pieces as the agent and a checker will run them: a
/// worker's segment (`segment run --worker`) and the outer step
/// (`checkpoint outer`), each the same bytes as the library's, and each
/// refusing what is not its round.
#[test]
fn worker_segments_and_the_outer_step_from_the_command_line() {
    use gradpool_train::parallel::{self, WorkerTask};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = SPEC.replace("checkpoint_every = 10\n", "")
        + "[parallel]\nworkers = 2\ninner_steps = 10\ncompression = \"int8\"\n";
    std::fs::write(dir.join("spec.toml"), &text).unwrap();
    let corpus = &gradpool_cli::cmd::local::SHAKESPEARE[..40_000];
    std::fs::write(dir.join("data.txt"), corpus).unwrap();
    let spec = gradpool_core::JobSpec::from_toml_str(&text).unwrap();
    let data = gradpool_train::Dataset::from_bytes(&spec, corpus).unwrap();
    std::fs::write(
        dir.join("g0.safetensors"),
        parallel::initial_global(&spec, &data).unwrap(),
    )
    .unwrap();
    for w in ["0", "1"] {
        segment(
            dir,
            0,
            10,
            Some("g0.safetensors"),
            &format!("w{w}.safetensors"),
            &["--worker", w],
        );
        let mine = dir.join(format!("mine-{w}.safetensors"));
        let mine_sent = dir.join(format!("mine-{w}.pg.safetensors"));
        let task = WorkerTask {
            global: Some(&dir.join("g0.safetensors")),
            slot: None,
            worker: w.parse().unwrap(),
            steps: None,
        };
        let out = parallel::WorkerOut {
            checkpoint: &mine,
            pseudo_gradient: &mine_sent,
        };
        parallel::run_worker_segment(
            &spec,
            &data,
            &task,
            &gradpool_train::Device::Cpu,
            out,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&mine).unwrap(),
            std::fs::read(dir.join(format!("w{w}.safetensors"))).unwrap()
        );
        // Beside the checkpoint, what the worker sends.
        assert_eq!(
            std::fs::read(&mine_sent).unwrap(),
            std::fs::read(dir.join(format!("w{w}.pseudo-gradient.safetensors"))).unwrap()
        );
    }
    // Round 0's global checkpoint, as a provider computes it.
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let stdout = ok(gradpool(&[
        "checkpoint",
        "initial",
        "--spec",
        &path("spec.toml"),
        "--data",
        &path("data.txt"),
        "--out",
        &path("g0-cli.safetensors"),
    ]));
    let g0 = std::fs::read(dir.join("g0.safetensors")).unwrap();
    assert_eq!(std::fs::read(dir.join("g0-cli.safetensors")).unwrap(), g0);
    assert!(
        stdout.contains(gradpool_core::Sha256Hex::of(&g0).as_str()),
        "{stdout}"
    );
    let stdout = ok(gradpool(&[
        "checkpoint",
        "outer",
        "--spec",
        &path("spec.toml"),
        "--data",
        &path("data.txt"),
        "--global",
        &path("g0.safetensors"),
        "--worker",
        &format!("1={}", path("w1.pseudo-gradient.safetensors")),
        "--worker",
        &format!("0={}", path("w0.pseudo-gradient.safetensors")),
        "--out",
        &path("g1.safetensors"),
        "--update-out",
        &path("u0.safetensors"),
    ]));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["round"], 1);
    assert_eq!(report["step"], 10);
    assert_eq!(report["workers"], serde_json::json!([0, 1]));
    let g1 = std::fs::read(dir.join("g1.safetensors")).unwrap();
    assert_eq!(
        report["sha256"],
        gradpool_core::Sha256Hex::of(&g1).as_str(),
        "{report}"
    );
    let inputs = vec![
        (0, dir.join("w0.pseudo-gradient.safetensors")),
        (1, dir.join("w1.pseudo-gradient.safetensors")),
    ];
    let mine = dir.join("mine-g1.safetensors");
    let out = parallel::OuterOut {
        global: &mine,
        update: None,
    };
    parallel::outer_step(
        &spec,
        &data,
        Some(&dir.join("g0.safetensors")),
        &inputs,
        out,
    )
    .unwrap();
    assert_eq!(std::fs::read(mine).unwrap(), g1);
    // A worker holding round 0's weights rebuilds round 1's from the
    // update, and its segment from them is the same as from the global
    // checkpoint.
    let update = std::fs::read(dir.join("u0.safetensors")).unwrap();
    assert_eq!(
        report["update_sha256"],
        gradpool_core::Sha256Hex::of(&update).as_str()
    );
    let u = gradpool_core::delta::decode(&update, gradpool_core::delta::DeltaKind::Update).unwrap();
    let w0 = gradpool_core::outer::Weights::from_bytes(&g0).unwrap();
    let rebuilt = w0.next(&u).unwrap();
    let global1 = gradpool_core::outer::Global::from_bytes(&g1).unwrap();
    assert_eq!(rebuilt, global1.weights());
    std::fs::write(dir.join("w-g1.safetensors"), rebuilt.to_bytes()).unwrap();
    segment(
        dir,
        10,
        20,
        Some("w-g1.safetensors"),
        "r1-w0-rebuilt.safetensors",
        &["--worker", "0", "--slot", &path("w0.safetensors")],
    );
    // Round 1's worker from its slot: the steps must be round 1's.
    segment(
        dir,
        10,
        20,
        Some("g1.safetensors"),
        "r1-w0.safetensors",
        &["--worker", "0", "--slot", &path("w0.safetensors")],
    );
    for file in ["r1-w0", "r1-w0.pseudo-gradient"] {
        assert_eq!(
            std::fs::read(dir.join(format!("{file}.safetensors"))).unwrap(),
            std::fs::read(dir.join(format!(
                "{}.safetensors",
                file.replacen("r1-w0", "r1-w0-rebuilt", 1)
            )))
            .unwrap(),
            "{file}"
        );
    }
    let err = segment_refused(
        dir,
        0,
        10,
        Some("g1.safetensors"),
        "x.safetensors",
        &["--worker", "0"],
    );
    assert!(err.contains("are not round 1's, [10, 20)"), "{err}");
    let bad = gradpool(&[
        "checkpoint",
        "outer",
        "--spec",
        &path("spec.toml"),
        "--data",
        &path("data.txt"),
        "--global",
        &path("g0.safetensors"),
        "--worker",
        "zero",
        "--out",
        &path("y.safetensors"),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("expected W=FILE"), "{err}");
    assert!(!dir.join("y.safetensors").exists());
}
