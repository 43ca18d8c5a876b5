//! Parallel (DiLoCo) jobs through a real pool: provider agents in this
//! process (each segment and outer step in a child `gradpool` process)
//! train a round's workers at once, one of them computes the outer step,
//! the pool computes it again, and the trained global checkpoint is byte
//! for byte the one `gradpool train` gives on this machine.

mod common;

use common::*;
use gradpool_core::outer::Global;
use gradpool_core::wire::{JobEventKind, JobStatus, RoundView, SegmentView};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_job_on_three_providers_ends_bit_identical_to_a_local_run() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 30).await;
    let account = pool.pool.create_account("diloco customer").await.unwrap();
    let api = gradpool_client::Api::new(
        &pool.url,
        Some(account.api_key.clone()),
        &Default::default(),
    )
    .unwrap();
    let data = small_corpus(tmp.path());
    let rigs: Vec<Rig> = ["rig-a", "rig-b", "rig-c"]
        .into_iter()
        .map(|name| Rig::start(&pool, tmp.path(), name, 1, |_| {}))
        .collect();
    let mut ids = BTreeSet::new();
    for name in ["rig-a", "rig-b", "rig-c"] {
        ids.insert(provider(&api, name).await.id);
    }
    let spec = parallel_spec("diloco", 3, 4, 3, "none");
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    assert_eq!((job.segments_total, job.checkpoint_every), (9, 4));
    let end = wait_final(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    assert_eq!((end.step, end.segments_done), (12, 9));

    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let global = fetched_global(&api, &id, tmp.path()).await;
    assert!(
        global == local_global(&spec, &data, &local),
        "the pool's global checkpoint differs from `gradpool train`'s"
    );
    let g = Global::from_bytes(&global).unwrap();
    assert_eq!((g.round, g.step, g.workers.clone()), (3, 12, vec![0, 1, 2]));

    // Every round: three outer-step inputs, and its segments on three
    // different providers, all of them at once.
    let events = events(&api, &id).await;
    let rounds: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            JobEventKind::OuterStep {
                round,
                workers,
                wait_seconds,
                loss,
                ..
            } => Some((*round, workers.clone(), *wait_seconds, *loss)),
            _ => None,
        })
        .collect();
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    for (i, (round, workers, wait, loss)) in rounds.iter().enumerate() {
        assert_eq!((*round, workers.clone()), (i as u64, vec![0, 1, 2]));
        assert!(*wait >= 0.0 && loss.is_finite() && *loss > 0.0);
    }
    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
    assert_eq!(segments.len(), 9);
    for round in segments.chunks(3) {
        let providers: BTreeSet<_> = round.iter().map(|s| s.provider.clone()).collect();
        assert_eq!(providers.len(), 3, "a round's workers on 3 providers");
    }
    let used: BTreeSet<_> = segments.iter().map(|s| s.provider.clone()).collect();
    assert_eq!(used, ids);

    // The rounds as `job show` shows them: each worker's provider, the
    // wait for the slowest, and the outer step the pool checked.
    let rounds: Vec<RoundView> = api.get(&format!("/v1/jobs/{id}/rounds")).await.unwrap();
    assert_eq!(rounds.len(), 3);
    for (r, view) in rounds.iter().enumerate() {
        let outer = view.outer.as_ref().expect("every round has its outer step");
        assert_eq!(outer.commitment.commitment.round, r as u64);
        assert!(outer.commitment.verify().is_ok());
        let workers: Vec<u32> = view.workers.iter().map(|w| w.worker).collect();
        assert_eq!(workers, vec![0, 1, 2]);
        for (w, input) in view.workers.iter().zip(&outer.commitment.commitment.inputs) {
            assert_eq!(w.checkpoint_sha256, input.checkpoint_sha256);
        }
    }
    let shown = succeeded(
        std::process::Command::new(BIN)
            .args([
                "job",
                "show",
                &id,
                "--pool",
                &pool.url,
                "--api-key",
                &account.api_key,
            ])
            .env("GRADPOOL_HOME", tmp.path()),
    );
    let shown = String::from_utf8_lossy(&shown);
    assert!(
        shown.contains("parallel   3 workers, all 3 rounds trained"),
        "{shown}"
    );
    assert!(
        shown.contains("ROUND") && shown.contains("OUTER STEP"),
        "{shown}"
    );
    for p in &ids {
        assert!(shown.contains(p.as_str()), "{shown}");
    }

    // The customer checks it all without trusting the pool: every
    // segment's chain from its round's global commitment, every outer step
    // computed again here, and replays of all nine segments as their
    // worker slots.
    let report = succeeded(
        std::process::Command::new(BIN)
            .args(["job", "verify", &id, "--segments", "9", "--json"])
            .args(["--pool", &pool.url, "--api-key", &account.api_key])
            .env("GRADPOOL_HOME", tmp.path()),
    );
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["pass"], true, "{report:#}");
    assert_eq!(report["replayed"], 9, "{report:#}");
    let outer = report["outer_steps"].as_array().unwrap();
    assert_eq!(outer.len(), 3, "{report:#}");
    assert!(
        outer.iter().all(|o| o["recomputed"] == "exact match"),
        "{report:#}"
    );
    for s in report["segments"].as_array().unwrap() {
        assert_eq!(s["replay"], "exact match", "{report:#}");
    }
    for rig in rigs {
        rig.stop().await;
    }
}

/// A paranoid parallel job: every worker's segment is replayed by a
/// validator (from the round's global checkpoint and the slot's AdamW
/// moments) and verified. The only trainer at first forges its outer
/// step: the pool's own computation catches it, bars the forger from the
/// job and gives the step to an honest provider; the job still ends on
/// the bytes of a local run.
#[cfg(feature = "cheat")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_segments_are_replayed_and_a_forged_outer_step_is_caught() {
    use gradpool_core::state::CommitmentStatus;
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 30).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let checker = Rig::start(&pool, tmp.path(), "validator", 2, validator);
    provider(&api, "validator").await;
    let forger = Rig::start(&pool, tmp.path(), "forger", 1, |c| {
        c.cheat.forge_outer = true;
    });
    let forger_id = provider(&api, "forger").await.id;
    let spec = parallel_spec("diloco-paranoid", 2, 4, 2, "paranoid");
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    // Alone, the forger trains both workers of round 0 (one after the
    // other: never two of a job's segments at once) and computes its step.
    // Caught: the forger is at fault (its provider view counts it).
    let start = std::time::Instant::now();
    while provider(&api, "forger").await.faults == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the forged outer step was not caught"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let honest = Rig::start(&pool, tmp.path(), "honest", 1, |_| {});
    let honest_id = provider(&api, "honest").await.id;
    let end = wait_final(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");

    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    assert!(
        fetched_global(&api, &id, tmp.path()).await == local_global(&spec, &data, &local),
        "the pool's global checkpoint differs from `gradpool train`'s"
    );
    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
    assert_eq!(segments.len(), 4);
    for s in &segments {
        assert_eq!(
            s.status,
            CommitmentStatus::Verified,
            "segment {}",
            s.segment
        );
    }
    // Round 0 was the forger's; round 1 only the honest provider's, and
    // the accepted outer steps were never the forger's.
    assert!(segments[2..].iter().all(|s| s.provider == honest_id));
    let events = events(&api, &id).await;
    for e in &events {
        if let JobEventKind::OuterStep { provider, .. } = &e.kind {
            assert_eq!(*provider, honest_id);
        }
    }
    let refused: Vec<&String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            JobEventKind::OuterRefused {
                round: 0,
                provider,
                reason,
            } if *provider == forger_id => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("not the pool's"), "{}", refused[0]);
    for rig in [forger, honest, checker] {
        rig.stop().await;
    }
}

/// A provider cheating as `kind` on every segment takes a paranoid
/// parallel job's workers alone; a validator replays them. Caught at the
/// first replay: the cheater is at fault and barred, the job rolls back to
/// the start of the faulty round, and an honest provider that joins
/// trains it to the local run's bytes.
#[cfg(feature = "cheat")]
async fn worker_cheat_caught(kind: &str) {
    use gradpool_core::state::{AuditStatus, CommitmentStatus};
    use gradpool_core::wire::VerdictView;
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool_with(&tmp.path().join("pool"), 30, |c| {
        c.verification.plant_rate = 0.0;
    })
    .await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    // Two validators: a replay that disagrees with the trainer goes to a
    // second one before a verdict.
    let checkers = [
        Rig::start(&pool, tmp.path(), "validator-1", 1, validator),
        Rig::start(&pool, tmp.path(), "validator-2", 1, validator),
    ];
    provider(&api, "validator-1").await;
    provider(&api, "validator-2").await;
    let cheater = Rig::start(&pool, tmp.path(), "cheater", 1, |c| {
        c.cheat.kind = Some(kind.to_owned());
        c.cheat.fraction = 1.0;
    });
    let cheater_id = provider(&api, "cheater").await.id;
    let spec = parallel_spec(&format!("diloco-{kind}"), 2, 4, 2, "paranoid");
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    let start = std::time::Instant::now();
    let fault = loop {
        let verdicts: Vec<VerdictView> = api.get(&format!("/v1/jobs/{id}/verdicts")).await.unwrap();
        if let Some(v) = verdicts
            .into_iter()
            .find(|v| v.outcome == AuditStatus::ProviderFault)
        {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{kind} was not caught"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(fault.at_fault.as_ref(), Some(&cheater_id), "{fault:#?}");
    let honest = Rig::start(&pool, tmp.path(), "honest", 1, |_| {});
    let honest_id = provider(&api, "honest").await.id;
    let end = wait_final(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    assert!(
        fetched_global(&api, &id, tmp.path()).await == local_global(&spec, &data, &local),
        "{kind}: the pool's global checkpoint differs from `gradpool train`'s"
    );
    let segments: Vec<SegmentView> = api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
    assert_eq!(segments.len(), 4);
    for s in &segments {
        assert_eq!(s.provider, honest_id, "segment {}", s.segment);
        assert_eq!(
            s.status,
            CommitmentStatus::Verified,
            "segment {}",
            s.segment
        );
    }
    // Outer steps the cheater computed over its faked segments were
    // accepted (the arithmetic was right) and went with the rollback.
    let events = events(&api, &id).await;
    let rolled_back = events
        .iter()
        .rposition(|e| {
            matches!(
                &e.kind,
                JobEventKind::RolledBack { provider, step: 0, .. } if *provider == cheater_id
            )
        })
        .expect("a rollback to round 0");
    assert!(!events[rolled_back..].iter().any(|e| matches!(
        &e.kind,
        JobEventKind::OuterStep { provider, .. } | JobEventKind::Assigned { provider, .. }
            if *provider == cheater_id
    )));
    let rounds: Vec<RoundView> = api.get(&format!("/v1/jobs/{id}/rounds")).await.unwrap();
    assert_eq!(rounds.len(), 2);
    for r in &rounds {
        let outer = r.outer.as_ref().expect("an outer step");
        assert_eq!(outer.provider, honest_id, "round {}", r.round);
    }
    assert!(provider(&api, "cheater").await.faults >= 1);
    let report = pool.pool.ledger().reconcile().await.unwrap();
    assert!(report.is_clean(), "{report}");
    let [one, two] = checkers;
    for rig in [cheater, honest, one, two] {
        rig.stop().await;
    }
}

#[cfg(feature = "cheat")]
mod worker_cheats {
    use super::worker_cheat_caught;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn skipped_steps() {
        worker_cheat_caught("skip-steps").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_weights() {
        worker_cheat_caught("random-weights").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn perturbed_weights() {
        worker_cheat_caught("perturb-weights").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_checkpoint() {
        worker_cheat_caught("old-checkpoint").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_shard_of_data() {
        worker_cheat_caught("other-data").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lower_learning_rate() {
        worker_cheat_caught("lower-lr").await;
    }
}

/// A round closes with `min_workers` of its workers when the others are
/// late: with two providers for three workers and no grace, every round
/// closes as soon as two segments are committed, the third worker is left
/// out, and the outer steps (over the workers present, as committed) all
/// compute to the same bytes again in `job verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_closes_without_a_late_worker_down_to_min_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool_with(&tmp.path().join("pool"), 30, |c| {
        c.round_grace_seconds = 0;
    })
    .await;
    let account = pool.pool.create_account("diloco customer").await.unwrap();
    let api = gradpool_client::Api::new(
        &pool.url,
        Some(account.api_key.clone()),
        &Default::default(),
    )
    .unwrap();
    let data = small_corpus(tmp.path());
    let rigs = [
        Rig::start(&pool, tmp.path(), "rig-a", 1, |_| {}),
        Rig::start(&pool, tmp.path(), "rig-b", 1, |_| {}),
    ];
    provider(&api, "rig-a").await;
    provider(&api, "rig-b").await;
    let spec = parallel_spec("diloco-min", 3, 20, 3, "none")
        .replace("inner_steps = 20\n", "inner_steps = 20\nmin_workers = 2\n");
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    let end = wait_final(&api, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let rounds: Vec<RoundView> = api.get(&format!("/v1/jobs/{id}/rounds")).await.unwrap();
    assert_eq!(rounds.len(), 3);
    for r in &rounds {
        let outer = r.outer.as_ref().expect("an outer step");
        let present: Vec<u32> = r.workers.iter().map(|w| w.worker).collect();
        assert_eq!(present.len(), 2, "round {}: {present:?}", r.round);
        let entered: Vec<u32> = outer
            .commitment
            .commitment
            .inputs
            .iter()
            .map(|i| i.worker)
            .collect();
        assert_eq!(entered, present, "round {}", r.round);
    }
    let events = events(&api, &id).await;
    let left_out = events
        .iter()
        .filter(|e| matches!(e.kind, JobEventKind::LeftOut { .. }))
        .count();
    assert_eq!(left_out, 3, "one worker left out of each round");
    let global = fetched_global(&api, &id, tmp.path()).await;
    let g = Global::from_bytes(&global).unwrap();
    assert_eq!(g.workers.len(), 2, "{:?}", g.workers);
    let report = succeeded(
        std::process::Command::new(BIN)
            .args(["job", "verify", &id, "--segments", "6", "--json"])
            .args(["--pool", &pool.url, "--api-key", &account.api_key])
            .env("GRADPOOL_HOME", tmp.path()),
    );
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["pass"], true, "{report:#}");
    assert_eq!(report["replayed"], 6, "{report:#}");
    let outer = report["outer_steps"].as_array().unwrap();
    assert!(
        outer.iter().all(|o| o["recomputed"] == "exact match"),
        "{report:#}"
    );
    for rig in rigs {
        rig.stop().await;
    }
}
