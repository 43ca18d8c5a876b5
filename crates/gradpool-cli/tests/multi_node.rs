//! A pool and three providers in this process (each segment still trains in
//! a child `gradpool` process) run three GPT jobs at once. Each fetched
//! model equals, bit for bit, a single uninterrupted local run of its spec.

mod common;

use common::*;
use gradpool_core::wire::{JobEventKind, JobStatus};
use gradpool_provider::{CpuDevice, ProviderConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_providers_train_three_jobs_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());

    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for i in 0..3 {
        let config = ProviderConfig {
            pool_url: pool.url.clone(),
            data_dir: tmp.path().join(format!("provider-{i}")),
            name: format!("p{i}"),
            program: BIN.into(),
            max_concurrent_tasks: 1,
            // Volunteers: the jobs carry no budget.
            price_per_hour: gradpool_core::Piconero::ZERO,
            ..ProviderConfig::default()
        };
        let device = Arc::new(CpuDevice::new(Some(1)));
        agents.push(tokio::spawn(gradpool_provider::run(
            config,
            device,
            stop.clone(),
        )));
    }

    let specs: Vec<String> = (0..3)
        .map(|i| tiny_spec(&format!("job{i}"), 100 + i, 30, 10))
        .collect();
    let mut jobs = Vec::new();
    for spec in &specs {
        let job = gradpool_cli::cmd::job::submit_text(&api, spec, &data, false)
            .await
            .unwrap();
        assert_eq!(job.segments_total, 3);
        jobs.push(job);
    }

    let mut workers = BTreeSet::new();
    for (job, spec) in jobs.iter().zip(&specs) {
        let id = job.id.to_string();
        let end = wait_final(&api, &id, Duration::from_secs(120)).await;
        assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
        assert_eq!(end.step, 30);
        assert_eq!(end.segments_done, 3);
        // The held-out tenth of the text is evaluated at every checkpoint.
        let segments: Vec<gradpool_core::wire::SegmentView> =
            api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
        assert!(
            segments
                .iter()
                .all(|s| s.eval_loss.is_some_and(|l| l.is_finite() && l > 0.0)),
            "{segments:?}"
        );
        assert_eq!(end.eval_loss, segments[2].eval_loss);

        let out = tmp.path().join(format!("fetched-{id}"));
        let model = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
            .await
            .unwrap()
            .0;
        let fetched = std::fs::read(model).unwrap();
        let local = local_model(spec, &data, &out);
        assert!(
            fetched == local,
            "job {id}: the fetched model differs from a local uninterrupted run"
        );

        for ev in events(&api, &id).await {
            if let JobEventKind::Checkpoint { provider, .. } = ev.kind {
                workers.insert(provider);
            }
        }
    }
    // Three jobs at once on three providers: the work was shared.
    assert!(workers.len() >= 2, "only {workers:?} did any work");

    stop.cancel();
    for a in agents {
        a.await.unwrap().unwrap();
    }
}
