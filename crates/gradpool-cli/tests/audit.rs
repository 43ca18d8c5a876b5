//! Cheating caught end to end: a real pool, provider agents in this process
//! (each segment trains in a child `gradpool` process, cheating ones with
//! `--cheat`), dedicated validators replaying with other thread counts than
//! the trainers. Each cheat kind is caught by the replay of its first
//! segment, the cheater is found at fault and barred from the job, the job
//! rolls back and finishes on an honest provider, and the model is bit for
//! bit the one an honest local run produces. A lazy validator is caught by
//! a planted audit. Needs the `cheat` feature (CI builds it).
#![cfg(feature = "cheat")]

mod common;

use common::*;
use gradpool_client::Api;
use gradpool_core::state::{AuditStatus, CommitmentStatus};
use gradpool_core::wire::{JobEventKind, JobStatus, SegmentView, VerdictView};
use gradpool_provider::cheat::Cheat;
use std::time::{Duration, Instant};

async fn verdicts(api: &Api, job: &str) -> Vec<VerdictView> {
    api.get(&format!("/v1/jobs/{job}/verdicts")).await.unwrap()
}

/// Waits until the job has a decided verdict with `outcome`.
async fn wait_verdict(api: &Api, job: &str, outcome: AuditStatus) -> VerdictView {
    let start = Instant::now();
    loop {
        if let Some(v) = verdicts(api, job)
            .await
            .into_iter()
            .find(|v| v.outcome == outcome)
        {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {outcome} verdict on {job}: {:#?}",
            verdicts(api, job).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn paranoid(spec: String) -> String {
    format!("{spec}\n[verification]\nlevel = \"paranoid\"\n")
}

/// A provider cheating on every segment as `kind` takes a paranoid job
/// alone; then an honest one joins.
async fn caught(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool_with(&tmp.path().join("pool"), 10, |c| {
        c.verification.plant_rate = 0.0;
    })
    .await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let validators = [
        Rig::start(&pool, tmp.path(), "validator-1", 1, validator),
        Rig::start(&pool, tmp.path(), "validator-2", 2, validator),
    ];
    provider(&api, "validator-1").await;
    provider(&api, "validator-2").await;

    let spec = paranoid(tiny_spec(kind, 11, 30, 10));
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    let cheater = Rig::start(&pool, tmp.path(), "cheater", 2, |c| {
        c.cheat = Cheat {
            kind: Some(kind.to_owned()),
            fraction: 1.0,
            lazy_validator: false,
            forge_outer: false,
        }
    });
    let fault = wait_verdict(&api, &id, AuditStatus::ProviderFault).await;
    let cheater_id = provider(&api, "cheater").await.id;
    assert_eq!(fault.at_fault.as_ref(), Some(&cheater_id), "{fault:#?}");
    assert_eq!(fault.commitment.commitment.job_id, job.id);
    // The evidence: the trainer's signed commitment and two validators'
    // signed replays that agree with each other, not with it.
    assert!(fault.commitment.verify().is_ok());
    assert_eq!(fault.replays.len(), 2, "{fault:#?}");
    assert!(fault
        .replays
        .iter()
        .all(|r| !r.matches && r.replay.verify().is_ok()));
    assert_eq!(
        fault.replays[0].replay.report.end_checkpoint_sha256,
        fault.replays[1].replay.report.end_checkpoint_sha256
    );

    // Barred from the job: it keeps running, and the honest one trains.
    let honest = Rig::start(&pool, tmp.path(), "honest", 2, |_| {});
    let end = wait_final(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let honest_id = provider(&api, "honest").await.id;

    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
    assert_eq!(segments.len(), 3);
    for s in &segments {
        assert_eq!(s.provider, honest_id, "segment {}", s.segment);
        assert_eq!(
            s.status,
            CommitmentStatus::Verified,
            "segment {}",
            s.segment
        );
    }
    for v in verdicts(&api, &id).await {
        assert!(
            matches!(v.outcome.as_str(), "verified" | "provider_fault" | "void"),
            "{v:#?}"
        );
        if v.outcome == AuditStatus::ProviderFault {
            assert_eq!(v.at_fault.as_ref(), Some(&cheater_id));
        }
    }
    let events = events(&api, &id).await;
    let rolled_back = events
        .iter()
        .position(|e| matches!(&e.kind, JobEventKind::RolledBack { provider, .. } if *provider == cheater_id))
        .expect("a rollback event");
    assert!(
        !events[rolled_back..].iter().any(|e| matches!(
            &e.kind,
            JobEventKind::Assigned { provider, .. } if *provider == cheater_id
        )),
        "the cheater got work on the job after it was caught"
    );

    let view = provider(&api, "cheater").await;
    assert!(view.faults >= 1, "{view:?}");
    assert_eq!((view.streak, view.reputation), (0, 0.0));
    for name in ["honest", "validator-1", "validator-2"] {
        assert_eq!(provider(&api, name).await.faults, 0, "{name}");
    }

    let out = tmp.path().join("fetched");
    let model = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
        .await
        .unwrap()
        .0;
    assert!(
        std::fs::read(model).unwrap() == local_model(&spec, &data, &out),
        "the model differs from an honest local run"
    );
    let report = pool.pool.ledger().reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");

    for rig in [cheater, honest] {
        rig.stop().await;
    }
    for rig in validators {
        rig.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_steps_are_caught() {
    caught("skip-steps").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_weights_are_caught() {
    caught("random-weights").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perturbed_weights_are_caught() {
    caught("perturb-weights").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_checkpoint_is_caught() {
    caught("old-checkpoint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_on_other_data_is_caught() {
    caught("other-data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_learning_rate_is_caught() {
    caught("lower-lr").await;
}

/// Honest trainers and validators with other thread counts: every segment
/// matches exactly. With a planted audit beside every real one, the lazy
/// validator (answering with the claim, computing nothing) is caught; the
/// honest validator passes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_work_always_matches_and_a_lazy_validator_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool_with(&tmp.path().join("pool"), 10, |c| {
        c.verification.plant_rate = 1.0;
    })
    .await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let lazy = Rig::start(&pool, tmp.path(), "lazy", 1, |c| {
        validator(c);
        c.cheat.lazy_validator = true;
    });
    provider(&api, "lazy").await;
    let trainers = [
        Rig::start(&pool, tmp.path(), "trainer-1", 1, |_| {}),
        Rig::start(&pool, tmp.path(), "trainer-2", 2, |_| {}),
    ];
    let spec = paranoid(tiny_spec("lazy", 5, 50, 10));
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();

    // Caught by the first planted audit it answers.
    let start = Instant::now();
    while provider(&api, "lazy").await.faults == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the lazy validator was never caught"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let honest_validator = Rig::start(&pool, tmp.path(), "validator", 2, validator);
    let end = wait_final(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");

    // No honest segment was ever found at fault, whoever trained and
    // replayed it with whatever thread count.
    for v in verdicts(&api, &id).await {
        assert!(matches!(v.outcome.as_str(), "verified" | "void"), "{v:#?}");
    }
    for name in ["trainer-1", "trainer-2", "validator"] {
        let view = provider(&api, name).await;
        assert_eq!(view.faults, 0, "{view:?}");
    }
    let view = provider(&api, "lazy").await;
    assert_eq!((view.faults, view.streak), (1, 0), "{view:?}");

    let out = tmp.path().join("fetched");
    let model = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
        .await
        .unwrap()
        .0;
    assert!(std::fs::read(model).unwrap() == local_model(&spec, &data, &out));

    for rig in trainers {
        rig.stop().await;
    }
    lazy.stop().await;
    honest_validator.stop().await;
}

/// `gradpool bench verify`, small: the JSON line has its fields, honest
/// work is never found at fault, and a cheater faking every segment is
/// caught (it escapes 60 audits at 0.2 with probability 0.8^60 ≈ 1.5e-6;
/// 80 honest segments go unaudited with probability below 0.8^80 ≈ 2e-8).
#[test]
fn the_verification_benchmark_reports_its_figures() {
    let stdout = succeeded(std::process::Command::new(BIN).args([
        "bench",
        "verify",
        "--json",
        "--honest-segments",
        "80",
        "--cheat-segments",
        "60",
        "--kinds",
        "skip-steps,random-weights",
        "--fractions",
        "1.0",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(r["detection_rate"], 1.0, "{r:#}");
    assert_eq!(r["detection_rate_by_kind"]["skip-steps"]["caught"], 1);
    assert_eq!(r["detection_rate_by_kind"]["random-weights"]["caught"], 1);
    assert_eq!(r["false_positive_rate"], 0.0, "{r:#}");
    assert_eq!(r["honest_segments"], 80);
    let overhead = r["verification_overhead"].as_f64().unwrap();
    assert!(overhead > 0.0 && overhead < 1.0, "{overhead}");
    assert!(r["segments"].as_u64().unwrap() > 80);
}
