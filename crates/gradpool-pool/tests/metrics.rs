//! `GET /metrics` over HTTP: Prometheus text that a Prometheus parser
//! reads, counting a job's segments as they commit, requests by route
//! pattern (never a path a client made up), and the ledger's totals.

mod common;

use common::*;
use gradpool_core::wire::JobStatus;
use prometheus_parse::{Sample, Scrape, Value};

/// Scrapes the pool: the text is checked line by line against the
/// format, then parsed.
async fn scrape(client: &Client) -> Scrape {
    let resp = client
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = resp.text().await.unwrap();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("gradpool_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{metric} {labels:?}: {found:?} among {:?}",
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| &s.labels)
            .collect::<Vec<_>>()
    );
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

fn sum(scrape: &Scrape, metric: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_a_jobs_segments() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let before = scrape(&tp.anon()).await;
    assert_eq!(sum(&before, "gradpool_segments"), 0.0);
    assert_eq!(
        value(&before, "gradpool_jobs", &[("status", "queued")]),
        0.0
    );

    let job = alice.submit(SPEC, b"To be, or not to be.\n").await;
    let p = tp.provider("rig").await;
    let queued = scrape(&tp.anon()).await;
    // A sequential job queues one segment at a time.
    assert_eq!(value(&queued, "gradpool_queue_depth", &[]), 1.0);
    assert_eq!(
        value(&queued, "gradpool_providers", &[("status", "idle")]),
        1.0
    );
    assert_eq!(
        value(
            &queued,
            "gradpool_providers_connected",
            &[("device", "cpu")]
        ),
        1.0
    );
    for seg in 0..3u32 {
        let a = p.take().await;
        p.finish(&a, format!("checkpoint {seg}").as_bytes()).await;
        let now = scrape(&tp.anon()).await;
        assert_eq!(sum(&now, "gradpool_segments"), f64::from(seg + 1));
    }
    assert_eq!(alice.job(&job.id).await.status, JobStatus::Succeeded);

    // A path nobody routes is counted as unmatched, not by its text.
    let (status, _) = tp.anon().get_bytes("/no/such/path/7f3a").await;
    assert_eq!(status, 404);
    let after = scrape(&tp.anon()).await;
    assert_eq!(
        value(&after, "gradpool_jobs", &[("status", "succeeded")]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "gradpool_tasks",
            &[("kind", "train"), ("status", "committed")]
        ),
        3.0
    );
    assert_eq!(value(&after, "gradpool_queue_depth", &[]), 0.0);
    let commits = [
        ("route", "/v1/tasks/:id/commit"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(value(&after, "gradpool_http_requests_total", &commits), 3.0);
    assert_eq!(
        value(
            &after,
            "gradpool_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(!after
        .samples
        .iter()
        .any(|s| s.labels.values().any(|v| v.contains("7f3a"))));
    let timed = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "gradpool_http_request_duration_seconds"
                && s.labels.get("route") == Some("/v1/jobs")
        })
        .expect("the submit's latency");
    let Value::Histogram(buckets) = &timed.value else {
        panic!("{timed:?}")
    };
    assert_eq!(buckets.last().unwrap().count, 1.0, "{buckets:?}");
    // Double entry: every piconero is in some account, so the kinds'
    // totals sum to zero; the escrow is empty once the job is settled.
    assert_eq!(sum(&after, "gradpool_ledger_piconero"), 0.0);
    assert_eq!(
        value(&after, "gradpool_ledger_piconero", &[("kind", "escrow")]),
        0.0
    );
    assert!(value(&after, "gradpool_blob_store_bytes", &[]) > 0.0);
}
