//! The owner's limits, enforced by a real agent against a real pool, on a
//! simulated device whose temperature follows the load the agent puts on it
//! and whose foreign processes the test controls. A pause hands the running
//! segment back; the job finishes elsewhere or later, and the model is bit
//! for bit the one an uninterrupted local run gives: nothing is lost.

mod common;

use common::*;
use gradpool_core::state::ProviderStatus;
use gradpool_core::wire::{JobEventKind, JobStatus, ProviderView};
use gradpool_provider::limits::{Limits, LocalClock, SetClock, SystemClock};
use gradpool_provider::{ProviderConfig, SimulatedDevice};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Follows the job's event stream until a `released` event with `reason`.
async fn wait_released(api: &gradpool_client::Api, id: &str, reason: &str) {
    let follow = first_event(
        api,
        id,
        |e| matches!(&e.kind, JobEventKind::Released { reason: r, .. } if r == reason),
    );
    tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .unwrap_or_else(|_| panic!("no pause for {reason} within a minute"));
}

/// Waits (up to 30 s) until the job is running: its first segment trains.
async fn wait_running(api: &gradpool_client::Api, id: &str) {
    let start = Instant::now();
    loop {
        let job: gradpool_core::wire::JobView = api.get(&format!("/v1/jobs/{id}")).await.unwrap();
        if job.status == JobStatus::Running {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(
    limits: Limits,
    device: Arc<SimulatedDevice>,
    during: impl AsyncFnOnce(&gradpool_client::Api, &str),
) -> Vec<gradpool_core::wire::JobEvent> {
    run_with_clock(
        limits,
        device,
        Arc::new(SystemClock),
        &tiny_spec("limits", 21, 60, 20),
        async move |api, id, _| during(api, id).await,
    )
    .await
}

async fn run_with_clock(
    limits: Limits,
    device: Arc<SimulatedDevice>,
    clock: Arc<dyn LocalClock>,
    spec: &str,
    during: impl AsyncFnOnce(&gradpool_client::Api, &str, &std::path::Path),
) -> Vec<gradpool_core::wire::JobEvent> {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let job = gradpool_cli::cmd::job::submit_text(&api, spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    let stop = CancellationToken::new();
    let agent = tokio::spawn(gradpool_provider::run(
        ProviderConfig {
            pool_url: pool.url.clone(),
            data_dir: tmp.path().join("rig"),
            program: BIN.into(),
            limits,
            clock,
            ..ProviderConfig::default()
        },
        device,
        stop.clone(),
    ));
    during(&api, &id, &tmp.path().join("rig")).await;
    let end = wait_final(&api, &id, Duration::from_secs(120)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let out = tmp.path().join("fetched");
    let model = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
        .await
        .unwrap()
        .0;
    assert!(
        std::fs::read(model).unwrap() == local_model(spec, &data, &out),
        "the model differs from an uninterrupted local run"
    );
    let log = events(&api, &id).await;
    stop.cancel();
    agent.await.unwrap().unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_device_hands_its_segment_back_and_resumes_once_cool() {
    // Under load the device heads for 95 °C: it passes 80 °C at the second
    // reading (one a second), while a segment (slowed to a 2% share) still
    // runs.
    let device = Arc::new(SimulatedDevice::new(40.0, 95.0));
    let limits = Limits {
        pause_above_c: Some(80.0),
        resume_below_c: Some(60.0),
        max_gpu_share: 2,
        ..Limits::default()
    };
    let d = device.clone();
    let log = run(limits, device, async move |api, id| {
        wait_released(api, id, "temperature").await;
        // Better cooling: under load it now stays at 70 °C.
        d.set_busy_c(70.0);
    })
    .await;
    let released = log
        .iter()
        .filter(
            |e| matches!(&e.kind, JobEventKind::Released { reason, .. } if reason == "temperature"),
        )
        .count();
    assert!(released >= 1);
    // The released segment was trained again after the device cooled down.
    let checkpoints = log
        .iter()
        .filter(|e| matches!(e.kind, JobEventKind::Checkpoint { .. }))
        .count();
    assert_eq!(checkpoints, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_process_makes_the_agent_yield_the_device() {
    let device = Arc::new(SimulatedDevice::new(40.0, 60.0));
    let limits = Limits {
        pause_when_busy: true,
        max_gpu_share: 2,
        ..Limits::default()
    };
    let d = device.clone();
    let log = run(limits, device, async move |api, id| {
        // The owner starts a game while the first segment trains.
        wait_running(api, id).await;
        d.set_foreign_processes(1);
        wait_released(api, id, "owner_busy").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        d.set_foreign_processes(0);
    })
    .await;
    assert!(log.iter().any(
        |e| matches!(&e.kind, JobEventKind::Released { reason, .. } if reason == "owner_busy")
    ));
}

/// The schedule's window closes while a segment trains: the segment is
/// finished and committed, nothing new is taken, the pool lists the rig as
/// paused for its schedule; when the window opens again the job goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_window_lets_the_segment_finish_then_pauses() {
    let device = Arc::new(SimulatedDevice::new(40.0, 60.0));
    // Weeknights from 22:00; the clock starts Monday 23:00.
    let clock = Arc::new(SetClock::new(0, 23 * 60));
    let limits = Limits {
        schedule: "mon-fri 22:00-07:00".parse().unwrap(),
        max_gpu_share: 2,
        ..Limits::default()
    };
    let c = clock.clone();
    let log = run_with_clock(
        limits,
        device,
        clock,
        &tiny_spec("limits", 21, 60, 20),
        async move |api, id, rig_dir| {
            wait_running(api, id).await;
            // Tuesday 07:00: the window closes mid-segment.
            c.set(1, 7 * 60);
            let start = Instant::now();
            let paused = loop {
                let all: Vec<ProviderView> = api.get("/v1/providers").await.unwrap();
                let job: gradpool_core::wire::JobView =
                    api.get(&format!("/v1/jobs/{id}")).await.unwrap();
                if all[0].status == ProviderStatus::Paused {
                    break job;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{all:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(
                paused.segments_done, 1,
                "the segment in flight was finished, and nothing after it: {paused:?}"
            );
            let all: Vec<ProviderView> = api.get("/v1/providers").await.unwrap();
            assert_eq!(all[0].paused_reason.as_deref(), Some("schedule"));
            // The owner sees it too, with the history of pauses.
            let out = std::process::Command::new(BIN)
                .args(["provider", "status", "--pool", api.base(), "--data-dir"])
                .arg(rig_dir)
                .env_remove("GRADPOOL_PROVIDER_CONFIG")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("status             paused: schedule"),
                "{text}"
            );
            assert!(text.contains("paused (schedule)"), "{text}");
            // Still paused a while later: no new work outside the window.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let job: gradpool_core::wire::JobView =
                api.get(&format!("/v1/jobs/{id}")).await.unwrap();
            assert_eq!(job.segments_done, 1, "{job:?}");
            // Tuesday 22:00: open again.
            c.set(1, 22 * 60);
        },
    )
    .await;
    // Nothing was handed back: the closing window let the segment finish.
    assert!(!log
        .iter()
        .any(|e| matches!(e.kind, JobEventKind::Released { .. })));
}

/// Dedication: with a 50% GPU share and a foreign process on the
/// device (the owner does not ask to yield), every segment records the share
/// it really got, within a few percent of the limit, and the foreign
/// process; the customer reads both from the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_segment_records_the_share_it_got_and_the_foreign_processes() {
    let device = Arc::new(SimulatedDevice::new(40.0, 60.0));
    device.set_foreign_processes(2);
    let limits = Limits {
        max_gpu_share: 50,
        ..Limits::default()
    };
    let segments = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = segments.clone();
    run(limits, device, async move |api, id| {
        let end = wait_final(api, id, Duration::from_secs(120)).await;
        assert_eq!(end.status, JobStatus::Succeeded);
        let s: Vec<gradpool_core::wire::SegmentView> =
            api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
        *seen.lock().unwrap() = s;
        // The pool shows the rig's last readings.
        let all: Vec<ProviderView> = api.get("/v1/providers").await.unwrap();
        let t = all[0].telemetry.clone().expect("telemetry");
        assert_eq!(t.foreign_processes, 2);
        assert!(t.temperature_c.is_some() && t.power_w.is_some(), "{t:?}");
    })
    .await;
    let segments = segments.lock().unwrap().clone();
    assert_eq!(segments.len(), 3);
    for s in &segments {
        let d = s.dedication.expect("every segment records its dedication");
        assert!(
            (d.share - 0.5).abs() < 0.05,
            "segment {}: share {} for a 50% limit",
            s.segment,
            d.share
        );
        assert_eq!(d.foreign_processes, 2, "segment {}", s.segment);
    }
}

/// A power cap the device does not let the agent set (the simulated device,
/// like a GPU without permission to change its limit): the agent holds it by
/// resting between steps against the measured draw. The device draws 50 W
/// idle and 300 W training all the time, so 150 W allows at most 40%; the
/// segments after the first run at that share, and the model is still
/// bit-identical to an uninterrupted local run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_limit_is_held_by_resting_against_the_measured_draw() {
    let device = Arc::new(SimulatedDevice::new(40.0, 60.0).with_power(50.0, 300.0));
    let limits = Limits {
        power_limit_w: Some(150),
        ..Limits::default()
    };
    let segments = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = segments.clone();
    run_with_clock(
        limits,
        device,
        Arc::new(SystemClock),
        &tiny_spec("power", 5, 480, 80),
        async move |api, id, _| {
            let end = wait_final(api, id, Duration::from_secs(180)).await;
            assert_eq!(end.status, JobStatus::Succeeded);
            let s: Vec<gradpool_core::wire::SegmentView> =
                api.get(&format!("/v1/jobs/{id}/segments")).await.unwrap();
            *seen.lock().unwrap() = s;
        },
    )
    .await;
    let segments = segments.lock().unwrap().clone();
    let shares: Vec<f64> = segments
        .iter()
        .map(|s| s.dedication.expect("dedication").share)
        .collect();
    let last = *shares.last().unwrap();
    // 40% of the time at most, within what sleeping can overshoot.
    assert!(last <= 0.45, "{shares:?}");
    assert!(last >= 0.2, "{shares:?}");
}
