//! `job fetch` of a job that did not train to the end: its last accepted
//! checkpoint, with the step it is from.

mod common;

use common::*;
use gradpool_core::wire::{JobStatus, JobView};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Provider(Child);

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_a_cancelled_job_gives_its_last_accepted_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 5).await;
    let api = customer(&pool).await;
    let data = small_corpus(tmp.path());
    let _provider = Provider(
        Command::new(BIN)
            .args(["provider", "--pool", &pool.url, "--threads", "1"])
            .args(["--price-xmr-per-hour", "0", "--data-dir"])
            .arg(tmp.path().join("rig"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let spec = tiny_spec("cancelled", 7, 400, 100);
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();

    // Nothing to fetch before the first checkpoint.
    let early = tmp.path().join("early");
    let e = gradpool_cli::cmd::job::fetch_model(&api, &id, &early, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no accepted checkpoint yet"), "{e}");

    wait_job(
        &api,
        &id,
        Duration::from_secs(120),
        "commit a segment",
        |j| j.segments_done >= 1,
    )
    .await;
    let cancelled: JobView = api
        .post(&format!("/v1/jobs/{id}/cancel"), &())
        .await
        .unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(
        cancelled.step >= 100 && cancelled.step < 400,
        "{cancelled:?}"
    );

    let out = tmp.path().join("out");
    let (model, summary) = gradpool_cli::cmd::job::fetch_model(&api, &id, &out, false)
        .await
        .unwrap();
    assert_eq!(summary.status, JobStatus::Cancelled);
    assert_eq!(summary.step, cancelled.step);
    assert_eq!(
        Some(summary.checkpoint_sha256.as_str()),
        cancelled.checkpoint_sha256.as_ref().map(|s| s.as_str())
    );
    assert!(std::fs::metadata(&model).unwrap().len() > 0);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(written["status"], "cancelled");
    assert_eq!(written["step"], cancelled.step);
}
