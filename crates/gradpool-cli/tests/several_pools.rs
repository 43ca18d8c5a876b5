//! Two `gradpool pool` processes serve one pool on one PostgreSQL database
//! (and one data directory, for the blobs): providers and the customer
//! spread across both, one process is SIGKILLed mid-job, and the other
//! carries the job to the end. The background loops run in one process at
//! a time: the second never takes the lead (by its own log) while the
//! first lives, and takes it over once the first is gone.
//!
//! The database is on a throwaway cluster this test starts (Debian's
//! `postgresql`, which `.ci/run` installs).

mod common;

use common::*;
use gradpool_client::Api;
use gradpool_core::wire::{AccountCreated, CreateAccount, JobEvent, JobEventKind, JobStatus};
use gradpool_provider::{CpuDevice, ProviderConfig};
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A `gradpool pool` child process, killed when dropped.
struct PoolProcess {
    child: std::process::Child,
    url: String,
    /// Whether it has logged that it leads the background loops.
    led: tokio::sync::watch::Receiver<bool>,
}

impl PoolProcess {
    fn start(data_dir: &Path, database: &str) -> PoolProcess {
        let mut child = std::process::Command::new(BIN)
            .args(["pool", "--listen", "127.0.0.1:0", "--no-hardware-proof"])
            .args(["--lease-seconds", "4", "--heartbeat-seconds", "1"])
            .args([
                "--audit-p-new",
                "0",
                "--audit-floor",
                "0",
                "--plant-rate",
                "0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env("GRADPOOL_DATABASE", database)
            .env("RUST_LOG", "warn,gradpool_pool::db=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (lead, led) = tokio::sync::watch::channel(false);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("leading the background loops") {
                    lead.send_replace(true);
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the pool exited before it listened")
                .unwrap();
            if let Some(rest) = line.strip_prefix("pool listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep reading so that the pool never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        PoolProcess { child, url, led }
    }

    /// Waits until it logs that it leads the background loops.
    async fn took_the_lead(&mut self, limit: Duration) {
        tokio::time::timeout(limit, self.led.wait_for(|led| *led))
            .await
            .expect("it never took the lead")
            .unwrap();
    }

    /// Whether this process runs the background loops now, by its
    /// `/metrics` (`None` once it no longer answers).
    async fn leads(&self) -> Option<bool> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("gradpool_leader "))?;
        Some(value.trim() == "1")
    }
}

impl Drop for PoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provider agent in this process, heart-beating to `pool_url`.
fn rig(pool_url: &str, dir: &Path, name: &str, stop: &CancellationToken) {
    let config = ProviderConfig {
        pool_url: pool_url.to_owned(),
        data_dir: dir.join(name),
        name: name.to_owned(),
        program: BIN.into(),
        max_concurrent_tasks: 1,
        price_per_hour: gradpool_core::Piconero::ZERO,
        ..ProviderConfig::default()
    };
    tokio::spawn(gradpool_provider::run(
        config,
        Arc::new(CpuDevice::new(Some(1))),
        stop.clone(),
    ));
}

/// Follows the job's events on one pool process until the final one.
async fn follow(api: Api, id: String) -> Vec<JobEvent> {
    events(&api, &id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pool_processes_serve_one_job_and_one_survives_a_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = gradpool_cli::postgres::Cluster::start()
        .expect("a PostgreSQL cluster (apt-get install postgresql)");
    let db = cluster.url.clone();
    let data_dir = tmp.path().join("pool");
    // a first, until it leads; then b, which cannot.
    let mut a = PoolProcess::start(&data_dir, &db);
    a.took_the_lead(Duration::from_secs(30)).await;
    let mut b = PoolProcess::start(&data_dir, &db);

    // One customer account, made through one process, used through both.
    let anon = Api::new(&a.url, None, &Default::default()).unwrap();
    let created: AccountCreated = anon
        .post(
            "/v1/accounts",
            &CreateAccount {
                name: "alice".into(),
            },
        )
        .await
        .unwrap();
    let on_a = Api::new(&a.url, Some(created.api_key.clone()), &Default::default()).unwrap();
    let on_b = Api::new(&b.url, Some(created.api_key), &Default::default()).unwrap();

    let stop = CancellationToken::new();
    for (i, url) in [&a.url, &a.url, &b.url, &b.url].into_iter().enumerate() {
        rig(url, tmp.path(), &format!("rig{i}"), &stop);
    }
    let data = small_corpus(tmp.path());
    let spec = tiny_spec("spread", 11, 80, 10);
    let job = gradpool_cli::cmd::job::submit_text(&on_a, &spec, &data, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    // Followed live on b, which survives: the events a writes reach it
    // through the table.
    let followed = tokio::spawn(follow(on_b.clone(), id.clone()));

    // Until a few segments are in: a leads, and b never took the lead.
    tokio::time::timeout(
        Duration::from_secs(120),
        first_event(&on_a, &id, |e| {
            matches!(e.kind, JobEventKind::Checkpoint { segment: 2, .. })
        }),
    )
    .await
    .expect("three segments did not commit");
    assert_eq!(
        (a.leads().await, b.leads().await),
        (Some(true), Some(false)),
        "a leads the background loops and b does not while both live"
    );
    assert!(!*b.led.borrow(), "b took the lead while a lived");

    // SIGKILL the leader, with its providers' requests in flight: b takes
    // the loops over (its reaper hands a's leases on) and the job ends.
    drop(a);
    b.took_the_lead(Duration::from_secs(30)).await;
    let end = wait_final(&on_b, &id, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    assert_eq!(end.step, 80);
    assert_eq!(end.segments_done, 8);
    assert_eq!(b.leads().await, Some(true), "b did not take the loops over");

    // Every segment's checkpoint reached the follower on the survivor, in
    // order, whichever process accepted its commit.
    let seen = tokio::time::timeout(Duration::from_secs(30), followed)
        .await
        .expect("the event stream did not end with the job")
        .unwrap();
    let segments: Vec<u32> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            JobEventKind::Checkpoint { segment, .. } => Some(*segment),
            _ => None,
        })
        .collect();
    let distinct: BTreeSet<u32> = segments.iter().copied().collect();
    assert_eq!(distinct, (0..8).collect(), "{segments:?}");
    assert!(
        seen.windows(2).all(|w| w[0].id < w[1].id),
        "events out of order"
    );

    // Nothing lost or paid twice: the ledger balances (reconcile fails
    // otherwise).
    succeeded(
        std::process::Command::new(BIN)
            .args(["pool", "reconcile", "--data-dir"])
            .arg(&data_dir)
            .env("GRADPOOL_DATABASE", &db),
    );
    stop.cancel();
}
