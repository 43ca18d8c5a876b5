//! Providers as separate processes, killed with SIGKILL mid-job.

mod common;

use common::*;
use gradpool_client::Api;
use gradpool_core::wire::{JobEventKind, JobStatus, JobView};
use gradpool_core::{NodeKey, ProviderId};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Provider {
    id: ProviderId,
    child: Child,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(url: &str, dir: &Path) -> Provider {
    // The key is made here so the test knows the provider's id up front.
    let id = NodeKey::load_or_create(&dir.join("node.key"))
        .unwrap()
        .provider_id();
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let child = Command::new(BIN)
        .args(["provider", "--pool", url, "--threads", "1"])
        // Volunteers: the test jobs carry no budget.
        .args(["--price-xmr-per-hour", "0", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Provider { id, child }
}

/// Waits until a provider holds a lease on a segment after the first one.
async fn wait_for_lease_after_first_segment(api: &Api, id: &str) -> (JobView, ProviderId) {
    let start = Instant::now();
    loop {
        let job: JobView = api.get(&format!("/v1/jobs/{id}")).await.unwrap();
        if let (true, Some(p)) = (job.segments_done >= 1, job.provider.clone()) {
            return (job, p);
        }
        assert!(!job.status.is_final(), "job ended before the kill: {job:?}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no lease after the first segment: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_provider_loses_its_lease_and_another_finishes_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 2).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let mut providers = vec![
        start_provider(&pool.url, &tmp.path().join("a")),
        start_provider(&pool.url, &tmp.path().join("b")),
    ];

    let spec = tiny_spec("fault", 7, 400, 100);
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();

    let (at_kill, victim) = wait_for_lease_after_first_segment(&api, &id).await;
    let index = providers
        .iter()
        .position(|p| p.id == victim)
        .expect("a known provider");
    let mut killed = providers.remove(index);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();

    let end = wait_final(&api, &id, Duration::from_secs(120)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");

    let events = events(&api, &id).await;
    let expired: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            JobEventKind::LeaseExpired {
                provider, segment, ..
            } => Some((provider.clone(), *segment)),
            _ => None,
        })
        .collect();
    assert!(
        expired
            .iter()
            .any(|(p, s)| *p == victim && *s == at_kill.segments_done),
        "no lease expiry for {victim} on segment {}: {expired:?}",
        at_kill.segments_done
    );
    // Everything from the interrupted segment on was committed by the survivor.
    for e in &events {
        if let JobEventKind::Checkpoint {
            provider, segment, ..
        } = &e.kind
        {
            if *segment >= at_kill.segments_done {
                assert_eq!(*provider, providers[0].id, "segment {segment}");
            }
        }
    }

    let out = tmp.path().join("fetched");
    let model = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
        .await
        .unwrap()
        .0;
    assert!(
        std::fs::read(model).unwrap() == local_model(&spec, &data, &out),
        "the resumed job's model differs from an uninterrupted run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_provider_resumes_its_segment() {
    let tmp = tempfile::tempdir().unwrap();
    // A long lease: the restarted provider must get its own task back.
    let pool = start_pool(&tmp.path().join("pool"), 60).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let dir = tmp.path().join("only");
    let mut provider = start_provider(&pool.url, &dir);

    let spec = tiny_spec("restart", 9, 300, 100);
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    let (at_kill, _) = wait_for_lease_after_first_segment(&api, &id).await;
    // Kill it once it has written the task down (a lease it never recorded
    // cannot be resumed; the pool releases those at registration).
    let recorded = dir.join("tasks");
    let start = Instant::now();
    while !std::fs::read_dir(&recorded)
        .map(|d| {
            d.flatten()
                .any(|e| e.path().join("assignment.json").is_file())
        })
        .unwrap_or(false)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the provider never recorded its task"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    provider.child.kill().unwrap();
    provider.child.wait().unwrap();
    drop(provider);

    let _provider = start_provider(&pool.url, &dir);
    let end = wait_final(&api, &id, Duration::from_secs(60)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");

    let events = events(&api, &id).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, JobEventKind::LeaseExpired { .. })),
        "the restart should resume the lease, not lose it"
    );
    let leases_of_interrupted = events
        .iter()
        .filter(|e| matches!(e.kind, JobEventKind::Assigned { segment, .. } if segment == at_kill.segments_done))
        .count();
    assert_eq!(
        leases_of_interrupted, 1,
        "the interrupted segment was leased again instead of resumed"
    );

    let out = tmp.path().join("fetched");
    let model = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
        .await
        .unwrap()
        .0;
    assert!(std::fs::read(model).unwrap() == local_model(&spec, &data, &out));
}

/// A worker of a parallel job SIGKILLed mid-round: its lease expires and
/// its segment is leased again, from the same global checkpoint, to
/// another provider; the round waits for it. The slot continues its
/// committed state when the pool has it or a live provider holds it; a
/// slot state that died with the victim (never asked for) starts again
/// from fresh moments, with a `slot_reset` event. The job ends
/// bit-identical to a local run with every worker in every round and
/// those slots reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_worker_killed_mid_round_is_leased_again() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 2).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let mut providers = vec![
        start_provider(&pool.url, &tmp.path().join("a")),
        start_provider(&pool.url, &tmp.path().join("b")),
        start_provider(&pool.url, &tmp.path().join("c")),
    ];
    // Long enough rounds to kill one in the middle.
    let spec = parallel_spec("fault-diloco", 2, 60, 3, "none");
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    // Round 1 under way, one of its workers leased.
    let start = Instant::now();
    let (at_kill, victim) = loop {
        let job: JobView = api.get(&format!("/v1/jobs/{id}")).await.unwrap();
        let round = job.parallel.map_or(0, |p| p.round);
        if let (1, Some(p)) = (round, job.provider.clone()) {
            break (job, p);
        }
        assert!(!job.status.is_final(), "job ended before the kill: {job:?}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "round 1 never started: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let index = providers
        .iter()
        .position(|p| p.id == victim)
        .expect("a known provider");
    let mut killed = providers.remove(index);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();

    let end = wait_final(&api, &id, Duration::from_secs(180)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let events = events(&api, &id).await;
    let lost: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            JobEventKind::LeaseExpired {
                provider, segment, ..
            } if *provider == victim => Some(*segment),
            _ => None,
        })
        .collect();
    assert!(
        !lost.is_empty(),
        "no lease of {victim} expired: {at_kill:?}"
    );
    // Each lost segment is a round-1 worker's, committed by a survivor.
    for segment in &lost {
        assert!((2..4).contains(segment), "segment {segment}");
        let committed_by = events.iter().rev().find_map(|e| match &e.kind {
            JobEventKind::Checkpoint {
                provider,
                segment: s,
                ..
            } if s == segment => Some(provider.clone()),
            _ => None,
        });
        let by = committed_by.expect("the lost segment was committed");
        assert_ne!(by, victim);
    }
    // The slot whose checkpoint died with the victim (it keeps them until
    // the pool asks) started again from fresh optimizer state; one a
    // survivor held went on as it was.
    let reset: Vec<(u64, u32)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            JobEventKind::SlotReset {
                round,
                worker,
                provider,
            } => {
                assert_eq!(*provider, victim, "only the victim's slots are lost");
                Some((*round, *worker))
            }
            _ => None,
        })
        .collect();
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    assert!(
        fetched_global(&api, &id, tmp.path()).await
            == local_global_resetting(&spec, &data, &local, &reset),
        "the parallel job's global checkpoint differs from a local run with the slots {reset:?} reset"
    );
}
