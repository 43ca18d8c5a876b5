//! `gradpool bench pool`, short: a pool process under a thousand simulated
//! providers for a few seconds. What it measures is the benchmark's
//! business; here, that the load is real and sound: every provider
//! registered and beat, segments were claimed and committed (each checked
//! by the pool as a real one is), nothing failed, and the report holds the
//! fields other tools read.

mod common;

use common::BIN;
use std::process::{Command, Stdio};

#[test]
fn bench_pool_drives_a_pool_with_simulated_providers() {
    let out = Command::new(BIN)
        .args(["bench", "pool", "--json", "--providers", "1000"])
        .args(["--interval-seconds", "2", "--seconds", "4", "--jobs", "4"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for field in [
        "providers",
        "heartbeats_per_sec",
        "heartbeat_p50_ms",
        "heartbeat_p99_ms",
        "claims_per_sec",
        "commits_per_sec",
        "errors",
        "database",
    ] {
        assert!(r.get(field).is_some(), "{field} missing: {r}");
    }
    assert_eq!(r["providers"], 1000);
    assert_eq!(r["database"], "sqlite");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["heartbeats"].as_u64().unwrap() > 0, "{r}");
    let (claims, commits) = (
        r["claims"].as_u64().unwrap(),
        r["commits"].as_u64().unwrap(),
    );
    assert!(commits > 0, "no segment was committed: {r}");
    // A segment is committed only after it was claimed: at most one
    // segment of each of the 4 jobs was in flight when the window opened.
    assert!(commits <= claims + 4, "{r}");
    let (p50, p99) = (
        r["heartbeat_p50_ms"].as_f64().unwrap(),
        r["heartbeat_p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{r}");
}

#[test]
fn bench_pool_refuses_a_database_it_cannot_run_on() {
    let out = Command::new(BIN)
        .args(["bench", "pool", "--database", "mysql://localhost/x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--database") && stderr.contains("mysql://"),
        "{stderr}"
    );
}
