//! `gradpool job verify`, run as the binary against a real pool: it passes
//! on an honest job, fails on a checkpoint tampered with in the pool's blob
//! store (and names it), and, in builds with the `cheat` feature, fails on
//! a job whose faked segment no audit looked at.

mod common;

use common::*;
use gradpool_core::wire::{JobStatus, SegmentView};
use gradpool_provider::{CpuDevice, ProviderConfig};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn verify(pool: &TestPool, key: &str, job: &str, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = std::process::Command::new(BIN)
        .args(["job", "verify", job, "--segments", "3", "--threads", "1"])
        .args(extra)
        .args(["--pool", &pool.url, "--api-key", key])
        .env("GRADPOOL_HOME", "/nonexistent")
        .output()
        .unwrap();
    let json = if extra.contains(&"--json") {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    } else {
        serde_json::Value::Null
    };
    (out, json)
}

/// Runs one job of 3 segments on one provider; returns the job id.
async fn run_job(
    pool: &TestPool,
    key: &str,
    dir: &Path,
    spec: &str,
    config: impl FnOnce(&mut ProviderConfig),
) -> String {
    let api =
        gradpool_client::Api::new(&pool.url, Some(key.to_owned()), &Default::default()).unwrap();
    let data = small_corpus(dir);
    let job = gradpool_cli::cmd::job::submit_text(&api, spec, &data, false)
        .await
        .unwrap();
    let mut c = ProviderConfig {
        pool_url: pool.url.clone(),
        data_dir: dir.join("provider"),
        program: BIN.into(),
        ..ProviderConfig::default()
    };
    config(&mut c);
    let stop = CancellationToken::new();
    let agent = tokio::spawn(gradpool_provider::run(
        c,
        Arc::new(CpuDevice::new(Some(2))),
        stop.clone(),
    ));
    let id = job.id.to_string();
    let end = wait_final(&api, &id, Duration::from_secs(120)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    stop.cancel();
    agent.await.unwrap().unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_job_passes_and_a_tampered_checkpoint_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let key = pool.pool.create_account("verifier").await.unwrap().api_key;
    let spec = tiny_spec("verified", 3, 30, 10);
    let id = run_job(&pool, &key, tmp.path(), &spec, |_| {}).await;

    let (out, report) = verify(&pool, &key, &id, &["--json"]);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["pass"], true);
    assert_eq!(report["replayed"], 3);
    for s in report["segments"].as_array().unwrap() {
        assert_eq!(s["replay"], "exact match", "{s:#}");
        assert_eq!(s["checkpoint"], "ok", "{s:#}");
        assert_eq!(s["chain"], "ok", "{s:#}");
    }
    let (out, _) = verify(&pool, &key, &id, &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("PASS: every commitment checks out"),
        "{table}"
    );

    // Flip one byte of segment 1's checkpoint in the pool's blob store.
    let api = gradpool_client::Api::new(&pool.url, Some(key.clone()), &Default::default()).unwrap();
    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
    let sha = segments[1].checkpoint_sha256.as_str();
    let blob = tmp.path().join("pool/blobs").join(&sha[..2]).join(sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();

    let (out, report) = verify(&pool, &key, &id, &["--json"]);
    assert!(!out.status.success(), "{report:#}");
    assert_eq!(report["pass"], false);
    let seg1 = &report["segments"][1];
    assert_eq!(seg1["pass"], false, "{seg1:#}");
    assert!(
        seg1["checkpoint"]
            .as_str()
            .unwrap()
            .contains("does not match its digest"),
        "{seg1:#}"
    );
    // Segment 0 is untouched and still passes.
    assert_eq!(report["segments"][0]["pass"], true);
    let (out, _) = verify(&pool, &key, &id, &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(table.contains("FAIL:"), "{table}");
    assert!(table.contains("segment 1: checkpoint:"), "{table}");
}

/// A job that asked for no verification, trained by a provider that
/// perturbs its weights: the pool accepted it, the customer's own check
/// does not.
#[cfg(feature = "cheat")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faked_segment_nobody_audited_fails_the_customers_check() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let key = pool.pool.create_account("verifier").await.unwrap().api_key;
    let spec = format!(
        "{}\n[verification]\nlevel = \"none\"\n",
        tiny_spec("unaudited", 4, 30, 10)
    );
    let id = run_job(&pool, &key, tmp.path(), &spec, |c| {
        c.cheat = gradpool_provider::cheat::Cheat {
            kind: Some("perturb-weights".into()),
            fraction: 1.0,
            lazy_validator: false,
            forge_outer: false,
        };
    })
    .await;
    let (out, report) = verify(&pool, &key, &id, &["--json"]);
    assert!(!out.status.success(), "{report:#}");
    for s in report["segments"].as_array().unwrap() {
        // The commitments are well formed; the work is not.
        assert_eq!(s["chain"], "ok", "{s:#}");
        assert_eq!(s["checkpoint"], "ok", "{s:#}");
        assert!(
            s["replay"].as_str().unwrap().starts_with("MISMATCH"),
            "{s:#}"
        );
    }
}
