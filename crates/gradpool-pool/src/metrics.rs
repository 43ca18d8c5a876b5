//! `GET /metrics`: the pool for Prometheus, in its text format (0.0.4).
//!
//! The API's requests are counted and timed as they are served, by route
//! (the route's pattern, e.g. `/v1/jobs/{id}`, never the path a client
//! sent), method and status; each pool process counts its own. The pool's
//! state ([`Overview`]) is read from the database at each scrape, so
//! every process of one pool reports the same figures for it.

use crate::overview::Overview;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request, as counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    route: String,
    method: String,
    status: u16,
}

/// A route, as timed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
    method: String,
}

type Latency = Family<Route, Histogram, fn() -> Histogram>;

/// What this process measured of the API since it started.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<Request, Counter>,
    latency: Latency,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Family::default(),
            // 1 ms to about 16 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
        }
    }
}

impl Metrics {
    /// Counts a request to `route` (its pattern; `None`: no route matched)
    /// answered with `status` after `took`.
    pub fn observe(&self, route: Option<&str>, method: &str, status: u16, took: Duration) {
        // `/v1/jobs/{id}` is labelled `/v1/jobs/:id`: braces inside a
        // label value trip some readers of the format.
        let route = route.map_or_else(
            || "unmatched".to_owned(),
            |r| r.replace('{', ":").replace('}', ""),
        );
        // A client may send any method: only the ones routes take are
        // told apart, so a label never holds what a client made up.
        let method = match method {
            "GET" | "POST" | "PUT" | "HEAD" | "DELETE" => method,
            _ => "other",
        }
        .to_owned();
        self.requests
            .get_or_create(&Request {
                route: route.clone(),
                method: method.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route { route, method })
            .observe(took.as_secs_f64());
    }

    /// The text exposition of these metrics and of `overview`; `leading`
    /// says whether this process runs the background loops.
    pub fn render(&self, overview: &Overview, leading: bool) -> Result<String, std::fmt::Error> {
        let mut r = Registry::with_prefix("gradpool");
        r.register(
            "http_requests",
            "API requests served by this process, by route, method and status",
            self.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an API request, by route and method",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register(
            "leader",
            "1 when this process runs the pool's background loops (the lease reaper, deposits, \
             payouts, audit deadlines): one process of those serving a pool does",
            Gauge::<i64>::from_value(i64::from(leading)),
        );
        register_state(&mut r, overview);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r)?;
        Ok(out)
    }
}

/// Registers the pool's state as gauges (counters where it only grows).
fn register_state(r: &mut Registry, o: &Overview) {
    let by = |name: &str, values: &std::collections::BTreeMap<String, u64>| {
        let family = Family::<Vec<(String, String)>, Gauge>::default();
        for (value, n) in values {
            family
                .get_or_create(&vec![(name.to_owned(), value.clone())])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        family
    };
    r.register(
        "providers",
        "Providers by status",
        by("status", &o.providers),
    );
    r.register(
        "providers_connected",
        "Connected providers by device",
        by("device", &o.devices),
    );
    r.register("jobs", "Jobs by state", by("status", &o.jobs));
    let tasks = Family::<Vec<(String, String)>, Gauge>::default();
    for (kind, states) in &o.tasks {
        for (status, n) in states {
            tasks
                .get_or_create(&vec![
                    ("kind".to_owned(), kind.clone()),
                    ("status".to_owned(), status.clone()),
                ])
                .set(gauge(*n));
        }
    }
    r.register("tasks", "Tasks by kind and state", tasks);
    r.register(
        "queue_depth",
        "Training segments waiting for a provider",
        Gauge::<i64>::from_value(gauge(o.queue_depth)),
    );
    r.register(
        "lease_expiries",
        "Leases that ran out before their task was done",
        counter(o.lease_expiries),
    );
    r.register(
        "segments",
        "Committed segments on their jobs' chains, by commitment status",
        by("status", &o.segments),
    );
    r.register("audits", "Audits by outcome", by("status", &o.audits));
    r.register(
        "replays",
        "Validators' replays, by whether they matched the claim",
        by("result", &o.replays),
    );
    let ledger = Family::<Vec<(String, String)>, Gauge>::default();
    for (kind, total) in &o.ledger {
        ledger
            .get_or_create(&vec![("kind".to_owned(), kind.clone())])
            .set(*total);
    }
    r.register(
        "ledger_piconero",
        "The sum of the balances of each kind of ledger account, in piconero",
        ledger,
    );
    r.register("payouts", "Payouts by state", by("status", &o.payouts));
    r.register(
        "blobs",
        "Blobs stored",
        Gauge::<i64>::from_value(gauge(o.blobs)),
    );
    r.register_with_unit(
        "blob_store",
        "The blob store's size",
        Unit::Bytes,
        Gauge::<i64>::from_value(gauge(o.blob_bytes)),
    );
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

/// A gauge holding `value`.
trait FromValue {
    fn from_value(value: i64) -> Self;
}

impl FromValue for Gauge<i64> {
    fn from_value(value: i64) -> Self {
        let g = Gauge::<i64>::default();
        g.set(value);
        g
    }
}
