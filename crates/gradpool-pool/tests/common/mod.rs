//! A small client for tests: a real pool on 127.0.0.1:0 in a tempdir, and
//! customers and providers that talk to it over HTTP.
#![allow(dead_code)]

use futures::StreamExt;
use gradpool_core::commitment::{
    chain, genesis, loss_trace_hash, registration_message, signed_nonce_message,
};
use gradpool_core::hardware::{DeviceKind, Hardware, Telemetry};
use gradpool_core::wire::*;
use gradpool_core::{
    Commitment, JobId, NodeKey, Piconero, ReplayReport, Sha256Hex, SignedCommitment, SignedReplay,
    TaskId,
};
use gradpool_pool::clock::ManualClock;
use gradpool_pool::{Pool, PoolConfig};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A spec of 30 steps in segments of 10.
pub const SPEC: &str = r#"
name = "tiny"
[model]
kind = "gpt"
n_layer = 1
n_head = 1
n_embd = 8
block_size = 8
[data]
format = "text"
[train]
seed = 7
steps = 30
batch_size = 2
checkpoint_every = 10
lr = 0.001
"#;

/// The database a test's pool uses: `None` (SQLite in its data
/// directory) unless `GRADPOOL_TEST_POSTGRES` names a PostgreSQL server
/// (`postgres://user@host:port/db`, as `.ci/run` sets it): then a new,
/// empty database on that server, for this test alone.
pub async fn test_database() -> Option<gradpool_pool::db::DatabaseUrl> {
    use sqlx::Connection;
    let server = std::env::var("GRADPOOL_TEST_POSTGRES").ok()?;
    sqlx::any::install_default_drivers();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let name = format!("gp_test_{now}_{}", gradpool_core::id::random_hex(6));
    let mut conn = sqlx::AnyConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("GRADPOOL_TEST_POSTGRES={server}: {e}"));
    drop_stale_databases(&mut conn, now).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    Some(gradpool_pool::db::DatabaseUrl::parse(url.as_str()).unwrap())
}

/// Drops the test databases made more than two minutes ago that nobody
/// is connected to (their tests are over), so that a run of the suite
/// keeps a bounded number of them on the server.
async fn drop_stale_databases(conn: &mut sqlx::AnyConnection, now: u64) {
    let idle: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database d WHERE datname LIKE 'gp_test_%' \
         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for name in idle {
        let made: Option<u64> = name
            .strip_prefix("gp_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse().ok());
        if made.is_some_and(|made| now.saturating_sub(made) > 120) {
            // Another test may be dropping it too: either one does.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut *conn)
                .await;
        }
    }
}

pub struct TestPool {
    pub url: String,
    pub pool: Pool,
    /// The pool's clock: it moves only when a test moves it.
    pub clock: std::sync::Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestPool {
    pub async fn start() -> TestPool {
        TestPool::start_with(|_| {}).await
    }

    /// A pool configured by `f`. Planted audits are off unless `f` turns
    /// them on: drawn at random, they would make the replays a test expects
    /// unpredictable.
    pub async fn start_with(f: impl FnOnce(&mut PoolConfig)) -> TestPool {
        let dir = tempfile::tempdir().unwrap();
        let mut config = PoolConfig {
            data_dir: dir.path().join("pool"),
            lease_seconds: 5,
            heartbeat_seconds: 1,
            database: test_database().await,
            ..PoolConfig::default()
        };
        config.verification.plant_rate = 0.0;
        // Sampled audits only where a test asks (paranoid jobs, or its own
        // sampling): a random draw would make other tests' outcomes random.
        config.verification.sampling.p_new = 0.0;
        config.verification.sampling.floor = 0.0;
        // Test providers here answer no hardware proof; tests of it ask.
        config.hardware_proof = false;
        // Every test client comes from 127.0.0.1; the throttle's tests
        // set its limits.
        config.throttle = gradpool_pool::ThrottleConfig::unlimited();
        let clock = std::sync::Arc::new(ManualClock::now());
        config.clock = clock.clone();
        f(&mut config);
        // A test that replaces the whole config keeps the clock it can move.
        config.clock = clock.clone();
        let mut tp = TestPool::serve(config, clock).await;
        tp.dir = dir;
        tp
    }

    /// Stops the server and serves the same data directory again.
    pub async fn restart(mut self) -> TestPool {
        let config = self.pool.config().clone();
        let clock = self.clock.clone();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        let mut next = TestPool::serve(config, clock).await;
        std::mem::swap(&mut next.dir, &mut self.dir);
        next
    }

    /// A second pool process on the same data directory and database,
    /// with a listener of its own, as a pool run as several processes has.
    pub async fn another_process(&self) -> TestPool {
        TestPool::serve(self.pool.config().clone(), self.clock.clone()).await
    }

    async fn serve(config: PoolConfig, clock: std::sync::Arc<ManualClock>) -> TestPool {
        let pool = Pool::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            }
        });
        TestPool {
            url,
            pool,
            clock,
            dir: tempfile::tempdir().unwrap(),
            stop: Some(tx),
            server: Some(server),
        }
    }

    pub fn anon(&self) -> Client {
        Client::new(&self.url, None)
    }

    pub async fn customer(&self, name: &str) -> Client {
        let created = self.pool.create_account(name).await.unwrap();
        Client::new(&self.url, Some(created.api_key))
    }

    pub async fn provider(&self, name: &str) -> TestProvider {
        self.provider_with(name, |_| {}).await
    }

    /// A registered provider, set up by `f` before it registers.
    pub async fn provider_with(
        &self,
        name: &str,
        f: impl FnOnce(&mut TestProvider),
    ) -> TestProvider {
        let key = NodeKey::generate();
        let mut p = TestProvider {
            key,
            name: name.to_owned(),
            client: Client::new(&self.url, None),
            device: DeviceKind::Cpu,
            price: Piconero::ZERO,
            gflops: None,
            payout: Vec::new(),
            compute_ms: 0,
            validate: false,
            train: true,
            region: None,
            containers: false,
            encryption: Some(gradpool_core::privacy::EncryptionKey::generate()),
            paused: None,
            memory_bytes: 8 << 30,
            host_memory_bytes: None,
            isa: "x86-64-v3".into(),
            gpu_uuid: None,
            dedication: None,
            clock: self.clock.clone(),
        };
        f(&mut p);
        let reg = p.register(vec![]).await;
        assert_eq!(reg.provider_id, p.key.provider_id());
        p
    }

    /// Moves the pool's clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: u64) {
        self.clock.advance(std::time::Duration::from_millis(ms));
    }

    /// Moves the pool's clock past every lease and reaps them now (what the
    /// reaper would do on its next round).
    pub async fn expire_leases(&self) {
        self.advance(u64::from(self.pool.config().lease_seconds) * 1000 + 1);
        self.pool.reap_expired_leases().await.unwrap();
    }

    pub fn blob_dir(&self) -> std::path::PathBuf {
        self.pool.config().data_dir.join("blobs")
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

/// A status and a JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn ok<T: DeserializeOwned>(self) -> T {
        assert!(self.status.is_success(), "{}: {}", self.status, self.body);
        serde_json::from_value(self.body).unwrap()
    }

    /// Asserts an error reply and returns its ApiError.
    pub fn err(self, status: u16) -> ApiError {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        serde_json::from_value(self.body).unwrap()
    }
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            token,
        }
    }

    /// A client whose connections come from `local` (any of 127.0.0.0/8
    /// reaches a pool on 127.0.0.1): another client, to the throttle.
    pub fn from_address(base: &str, token: Option<String>, local: std::net::IpAddr) -> Client {
        Client {
            http: reqwest::Client::builder()
                .local_address(local)
                .build()
                .unwrap(),
            base: base.to_owned(),
            token,
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client::new(&self.base, Some(token.to_owned()))
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Client::send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Reply {
        Client::send(self.req(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn put_blob(&self, sha: &str, bytes: Vec<u8>) -> Reply {
        Client::send(
            self.req(reqwest::Method::PUT, &format!("/v1/blobs/{sha}"))
                .body(bytes),
        )
        .await
    }

    /// Uploads `bytes` under their own digest in `chunks` pieces, pausing
    /// `pause` before each: a slow link, as the pool measures it.
    /// `PUT`s `bytes` under `sha` in chunks of `chunk` bytes, with no
    /// length declared: the pool learns the size only as it reads.
    pub async fn put_blob_streamed(
        &self,
        sha: &str,
        bytes: &[u8],
        chunk: usize,
    ) -> reqwest::Response {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
        self.req(reqwest::Method::PUT, &format!("/v1/blobs/{sha}"))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap()
    }

    pub async fn put_blob_in_chunks(
        &self,
        bytes: &[u8],
        chunks: usize,
        pause: std::time::Duration,
    ) -> BlobStored {
        let sha = Sha256Hex::of(bytes);
        let pieces: Vec<Vec<u8>> = bytes
            .chunks(bytes.len().div_ceil(chunks).max(1))
            .map(<[u8]>::to_vec)
            .collect();
        let stream = futures::stream::iter(pieces).then(move |piece| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(piece)
        });
        Client::send(
            self.req(reqwest::Method::PUT, &format!("/v1/blobs/{sha}"))
                .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await
        .ok()
    }

    /// Uploads `bytes` under their own digest.
    pub async fn upload(&self, bytes: &[u8]) -> Sha256Hex {
        let sha = Sha256Hex::of(bytes);
        let stored: BlobStored = self.put_blob(sha.as_str(), bytes.to_vec()).await.ok();
        assert_eq!(stored.size, bytes.len() as u64);
        sha
    }

    /// `HEAD` of `path`: its status and `Content-Length`.
    pub async fn head(&self, path: &str) -> (StatusCode, Option<u64>) {
        let resp = self.req(reqwest::Method::HEAD, path).send().await.unwrap();
        let len = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        (resp.status(), len)
    }

    pub async fn get_bytes(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let resp = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let status = resp.status();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// Uploads data and submits the test spec on it.
    pub async fn submit(&self, spec: &str, data: &[u8]) -> JobView {
        let data_sha256 = self.upload(data).await;
        self.post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: spec.to_owned(),
                data_sha256,
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .ok()
    }

    pub async fn job(&self, id: &JobId) -> JobView {
        self.get(&format!("/v1/jobs/{id}")).await.ok()
    }

    /// Follows a job's events until the stream closes (or the timeout).
    pub async fn events(&self, id: &JobId, after: Option<i64>) -> Vec<(String, String, JobEvent)> {
        let path = match after {
            Some(a) => format!("/v1/jobs/{id}/events?after={a}"),
            None => format!("/v1/jobs/{id}/events"),
        };
        let resp = self.req(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = tokio::time::timeout(std::time::Duration::from_secs(20), resp.text())
            .await
            .expect("event stream did not close")
            .unwrap();
        parse_sse(&text)
    }
}

/// `(id, event, data)` of each SSE message carrying data.
pub fn parse_sse(text: &str) -> Vec<(String, String, JobEvent)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            }
        }
        if !data.is_empty() {
            out.push((id, event, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

pub struct TestProvider {
    pub key: NodeKey,
    pub name: String,
    pub client: Client,
    pub device: DeviceKind,
    /// The price floor it registers with.
    pub price: Piconero,
    pub gflops: Option<f64>,
    pub payout: Vec<PayoutSplit>,
    /// The compute time its commits report.
    pub compute_ms: u64,
    /// Whether it takes replay tasks.
    pub validate: bool,
    /// Whether it takes training tasks.
    pub train: bool,
    /// The region its owner declares.
    pub region: Option<String>,
    /// Whether it runs container jobs.
    pub containers: bool,
    /// The X25519 key it announces (`None`: an agent that announces none).
    pub encryption: Option<gradpool_core::privacy::EncryptionKey>,
    /// The pause reason its heartbeats report.
    pub paused: Option<String>,
    /// The device memory it claims.
    pub memory_bytes: u64,
    /// A GPU rig's RAM, as it claims it.
    pub host_memory_bytes: Option<u64>,
    /// Its instruction-set level: part of its reproducibility class.
    pub isa: String,
    /// The GPU UUID it claims.
    pub gpu_uuid: Option<String>,
    /// The device's dedication its commits report.
    pub dedication: Option<Dedication>,
    /// The pool's clock, to let time pass while it "trains".
    pub clock: std::sync::Arc<ManualClock>,
}

impl TestProvider {
    pub fn hardware(&self) -> Hardware {
        Hardware {
            device: self.device,
            name: "test cpu".into(),
            threads: 2,
            memory_bytes: self.memory_bytes,
            isa: self.isa.clone(),
            uuid: self.gpu_uuid.clone(),
            host_isa: None,
            host_memory_bytes: self.host_memory_bytes,
        }
    }

    /// A signed registration over a fresh challenge from the pool.
    pub async fn register_body(&self, resuming: Vec<TaskId>) -> Register {
        let challenge: RegistrationChallenge =
            self.client.post("/v1/providers/challenge", &()).await.ok();
        let time = time_now();
        let public_key = self.key.public_key();
        Register {
            signature: self
                .key
                .sign(&registration_message(&public_key, time, &challenge.nonce)),
            nonce: challenge.nonce,
            public_key,
            name: self.name.clone(),
            hardware: self.hardware(),
            time,
            resuming,
            price_per_hour: self.price,
            benchmark_gflops: self.gflops,
            payout: self.payout.clone(),
            validate: self.validate,
            train: self.train,
            region: self.region.clone(),
            containers: self.containers,
            encryption_key: self
                .encryption
                .as_ref()
                .map(|k| gradpool_core::privacy::AnnouncedKey::announce(&self.key, k)),
            compliance: None,
        }
    }

    pub async fn register(&mut self, resuming: Vec<TaskId>) -> Registered {
        let body = self.register_body(resuming).await;
        let reg: Registered = self.client.post("/v1/providers/register", &body).await.ok();
        self.client.token = Some(reg.token.clone());
        reg
    }

    pub async fn heartbeat(
        &self,
        running: &[(TaskId, u64)],
        capacity: u32,
        wait_seconds: u32,
    ) -> HeartbeatReply {
        self.heartbeat_reply(running, capacity, wait_seconds)
            .await
            .ok()
    }

    pub async fn heartbeat_reply(
        &self,
        running: &[(TaskId, u64)],
        capacity: u32,
        wait_seconds: u32,
    ) -> Reply {
        let hb = Heartbeat {
            telemetry: Telemetry::default(),
            running: running
                .iter()
                .map(|(task_id, step)| RunningTask {
                    task_id: task_id.clone(),
                    step: *step,
                })
                .collect(),
            capacity,
            wait_seconds,
            paused: self.paused.clone(),
        };
        self.client.post("/v1/providers/heartbeat", &hb).await
    }

    /// Lets `ms` milliseconds pass on the pool's clock (as if training).
    pub fn work_for(&self, ms: u64) {
        self.clock.advance(std::time::Duration::from_millis(ms));
    }

    /// Heartbeats until it gets one assignment.
    pub async fn take(&self) -> Assignment {
        let reply = self.heartbeat(&[], 1, 5).await;
        assert_eq!(reply.assignments.len(), 1, "expected one assignment");
        reply.assignments.into_iter().next().unwrap()
    }

    /// A correct commit for an assignment, with checkpoint bytes `ckpt`.
    pub fn commit_for(&self, a: &Assignment, ckpt: &[u8]) -> Commit {
        let n = (a.end_step - a.start_step) as usize;
        let loss_trace: Vec<f32> = (0..n).map(|i| 4.0 - i as f32 * 0.01).collect();
        let commitment = Commitment {
            job_id: a.job_id.clone(),
            segment: a.segment,
            start_step: a.start_step,
            end_step: a.end_step,
            checkpoint_sha256: Sha256Hex::of(ckpt),
            prev: a.prev_commitment,
            hash: chain(ckpt, &a.prev_commitment),
            loss_trace_blake3: loss_trace_hash(&loss_trace),
            runtime: gradpool_core::RUNTIME_VERSION.into(),
            class: self.hardware().class(),
            pseudo_gradient_sha256: None,
        };
        Commit {
            commitment: self.key.sign_commitment(commitment),
            loss_trace,
            // What a segment of a text held out at 10% reports.
            eval_loss: Some(4.25),
            compute_ms: self.compute_ms,
            dedication: self.dedication,
        }
    }

    /// Re-signs an edited commitment with this provider's key.
    pub fn resign(&self, c: &Commit, edit: impl FnOnce(&mut Commitment)) -> Commit {
        let mut cm = c.commitment.commitment.clone();
        edit(&mut cm);
        Commit {
            commitment: self.key.sign_commitment(cm),
            loss_trace: c.loss_trace.clone(),
            eval_loss: c.eval_loss,
            compute_ms: c.compute_ms,
            dedication: c.dedication,
        }
    }

    pub async fn commit(&self, task: &TaskId, c: &Commit) -> Reply {
        self.client
            .post(&format!("/v1/tasks/{task}/commit"), c)
            .await
    }

    /// A parallel job's segment: uploads the pseudo-gradient of checkpoint
    /// `ckpt` ([`pseudo_gradient`]), not the checkpoint, and commits both.
    /// Returns the pseudo-gradient's bytes.
    pub async fn commit_worker(&self, a: &Assignment, ckpt: &[u8]) -> (Reply, Vec<u8>) {
        let sent = pseudo_gradient(a, ckpt);
        let sha = self.client.upload(&sent).await;
        let c = self.resign(&self.commit_for(a, ckpt), |cm| {
            cm.pseudo_gradient_sha256 = Some(sha)
        });
        (self.commit(&a.task_id, &c).await, sent)
    }

    /// Uploads the checkpoint `checkpoint(a, tag)` and commits it.
    pub async fn finish(&self, a: &Assignment, tag: &[u8]) -> CommitReply {
        let ckpt = checkpoint(a, tag);
        self.client.upload(&ckpt).await;
        self.commit(&a.task_id, &self.commit_for(a, &ckpt))
            .await
            .ok()
    }
}

impl TestProvider {
    /// A signed replay report for a replay assignment: the end checkpoint
    /// bytes its replay produced, and its distance to the claim (needed
    /// across classes).
    pub fn replay_for(&self, a: &Assignment, end: &[u8], distance: Option<f64>) -> SignedReplay {
        self.key.sign_replay(ReplayReport {
            task_id: a.task_id.clone(),
            job_id: a.job_id.clone(),
            segment: a.segment,
            end_checkpoint_sha256: Sha256Hex::of(end),
            loss_trace_blake3: loss_trace_hash(&[]),
            class: self.hardware().class(),
            distance,
            compute_ms: self.compute_ms,
            pseudo_gradient_sha256: None,
        })
    }

    pub async fn report(&self, a: &Assignment, r: &SignedReplay) -> Reply {
        self.client
            .post(&format!("/v1/tasks/{}/replay", a.task_id), r)
            .await
    }
}

/// A checkpoint the pool accepts for assignment `a`: every tensor of the
/// model it names, at its end step, with values drawn from `tag` (another
/// tag, another checkpoint; the same tag, the same bytes).
pub fn checkpoint(a: &Assignment, tag: &[u8]) -> Vec<u8> {
    checkpoint_with(a, tag, |_, _| {})
}

/// A pseudo-gradient the pool accepts for a parallel job's assignment
/// `a`: the parameters of checkpoint `ckpt` taken as the delta, through
/// the job's compression, with the checkpoint's metadata.
pub fn pseudo_gradient(a: &Assignment, ckpt: &[u8]) -> Vec<u8> {
    let (params, metadata) = gradpool_core::outer::params_of("a checkpoint", ckpt).unwrap();
    let spec = gradpool_core::JobSpec::from_toml_str(&a.spec_toml).unwrap();
    let round = a.round.as_ref().unwrap().round;
    gradpool_core::delta::encode(
        gradpool_core::delta::DeltaKind::PseudoGradient,
        spec.parallel.unwrap().compression,
        (round, a.end_step),
        &params,
        &metadata,
    )
    .unwrap()
    .0
}

/// Tensors by name, with their shapes and values.
pub type Tensors = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// [`checkpoint`], with its tensors and metadata edited by `edit` before it
/// is written: a checkpoint a cheater could forge.
pub fn checkpoint_with(
    a: &Assignment,
    tag: &[u8],
    edit: impl FnOnce(&mut Tensors, &mut std::collections::BTreeMap<String, String>),
) -> Vec<u8> {
    use gradpool_core::checkpoint::{to_bytes, TensorRef, CHECKPOINT_FORMAT};
    let mut state = u64::from_le_bytes(blake3::hash(tag).as_bytes()[..8].try_into().unwrap());
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut values = Tensors::new();
    for p in a.model.params() {
        for prefix in gradpool_core::model::CHECKPOINT_PREFIXES {
            let data: Vec<f32> = (0..p.numel()).map(|_| next()).collect();
            values.insert(format!("{prefix}{}", p.name), (p.shape.clone(), data));
        }
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_owned(), CHECKPOINT_FORMAT.to_owned());
    meta.insert("step".to_owned(), a.end_step.to_string());
    meta.insert("model".to_owned(), serde_json::to_string(&a.model).unwrap());
    edit(&mut values, &mut meta);
    let tensors = values
        .iter()
        .map(|(k, (shape, data))| (k.clone(), TensorRef { shape, data }))
        .collect();
    to_bytes(&tensors, &meta)
}

pub fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn genesis_of(job: &JobId) -> gradpool_core::commitment::ChainHash {
    genesis(job)
}

pub fn signed_by(key: &NodeKey, cm: Commitment) -> SignedCommitment {
    key.sign_commitment(cm)
}

/// A proof that `p` holds its node key, for `purpose`, over a fresh nonce.
pub async fn signed_nonce(tp: &TestPool, p: &TestProvider, purpose: &str) -> SignedNonce {
    let challenge: RegistrationChallenge =
        tp.anon().post("/v1/providers/challenge", &()).await.ok();
    // The time by the pool's clock, which a test may have moved.
    let time = tp.pool.now() / 1000;
    let public_key = p.key.public_key();
    SignedNonce {
        signature: p.key.sign(&signed_nonce_message(
            purpose,
            &public_key,
            time,
            &challenge.nonce,
        )),
        public_key,
        time,
        nonce: challenge.nonce,
    }
}

pub async fn earnings(tp: &TestPool, p: &TestProvider) -> Earnings {
    let signed = signed_nonce(tp, p, "earnings").await;
    tp.anon().post("/v1/providers/earnings", &signed).await.ok()
}

/// Every file under `dir`, sorted (none if it does not exist).
pub fn stored_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
