//! `gradpool bench diloco` on a pool, as a process. In a test binary of
//! its own: it keeps both cores busy for a while, which would slow the
//! timing-sensitive process tests beside it.

mod common;

use common::BIN;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn gradpool(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("GRADPOOL_HOME", home)
        .env_remove("GRADPOOL_POOL")
        .env_remove("GRADPOOL_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
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

/// `bench diloco` puts its parallel jobs on a pool and reports what the
/// pool measured: each worker sent a pseudo-gradient every round (the
/// uncompressed one at least `rounds × parameters × 4` bytes), int8 moved
/// about a quarter of that, and the workers trained part of the time.
#[test]
fn bench_diloco_measures_a_pool() {
    let home = tempfile::tempdir().unwrap();
    let stdout = ok(gradpool(
        home.path(),
        &[
            "bench",
            "diloco",
            "--json",
            "--workers",
            "2",
            "--inner-steps",
            "3",
            "--rounds",
            "2",
            "--threads",
            "1",
        ],
    ));
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["placement"], "pool", "{r}");
    let params = r["params"].as_u64().unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r}");
    let (plain, int8) = (&runs[0], &runs[1]);
    assert_eq!(
        (&plain["compression"], &int8["compression"]),
        (&"none".into(), &"int8".into())
    );
    let plain_bytes = plain["bytes_per_worker_diloco"].as_u64().unwrap();
    let int8_bytes = int8["bytes_per_worker_diloco"].as_u64().unwrap();
    // Two pseudo-gradients up, at most one update and one global
    // checkpoint (weights and momentum) down.
    assert!(
        plain_bytes >= 2 * params * 4 && plain_bytes <= 5 * params * 4,
        "{r}"
    );
    assert!(int8_bytes * 3 < plain_bytes, "{r}");
    for run in runs {
        let u = run["utilisation"].as_f64().unwrap();
        assert!(u > 0.0 && u <= 1.0, "{r}");
        let ratio = run["loss_ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{r}");
    }
    assert_eq!(
        r["bytes_per_worker_sync"].as_u64().unwrap(),
        2 * params * 4 * 6,
        "{r}"
    );
}
