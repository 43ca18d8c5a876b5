//! A small client for tests: a real pool on 127.0.0.1:0 in a tempdir, and
//! customers and providers that talk to it over HTTP.
#![allow(dead_code)]

use gradpool_core::commitment::{
    chain, genesis, loss_trace_hash, node_proof_message, registration_message,
};
use gradpool_core::hardware::{DeviceKind, Hardware, Telemetry};
use gradpool_core::wire::*;
use gradpool_core::{
    Commitment, JobId, NodeKey, Piconero, ReplayReport, Sha256Hex, SignedCommitment, SignedReplay,
    TaskId,
};
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

pub struct TestPool {
    pub url: String,
    pub pool: Pool,
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
            ..PoolConfig::default()
        };
        config.verification.plant_rate = 0.0;
        // Test providers here answer no hardware proof; tests of it ask.
        config.hardware_proof = false;
        f(&mut config);
        let mut tp = TestPool::serve(config).await;
        tp.dir = dir;
        tp
    }

    /// Stops the server and serves the same data directory again.
    pub async fn restart(mut self) -> TestPool {
        let config = self.pool.config().clone();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        let mut next = TestPool::serve(config).await;
        std::mem::swap(&mut next.dir, &mut self.dir);
        next
    }

    async fn serve(config: PoolConfig) -> TestPool {
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
            paused: None,
            memory_bytes: 8 << 30,
            isa: "x86-64-v3".into(),
            gpu_uuid: None,
            dedication: None,
        };
        f(&mut p);
        let reg = p.register(vec![]).await;
        assert_eq!(reg.provider_id, p.key.provider_id());
        p
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

    pub fn with_token(&self, token: &str) -> Client {
        Client::new(&self.base, Some(token.to_owned()))
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
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

    /// Uploads `bytes` under their own digest.
    pub async fn upload(&self, bytes: &[u8]) -> Sha256Hex {
        let sha = Sha256Hex::of(bytes);
        let stored: BlobStored = self.put_blob(sha.as_str(), bytes.to_vec()).await.ok();
        assert_eq!(stored.size, bytes.len() as u64);
        sha
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
    /// The pause reason its heartbeats report.
    pub paused: Option<String>,
    /// The device memory it claims.
    pub memory_bytes: u64,
    /// Its instruction-set level: part of its reproducibility class.
    pub isa: String,
    /// The GPU UUID it claims.
    pub gpu_uuid: Option<String>,
    /// The device's dedication its commits report.
    pub dedication: Option<Dedication>,
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
        }
    }

    /// A signed registration over a fresh challenge from the pool.
    pub async fn register_body(&self, resuming: Vec<TaskId>) -> Register {
        let challenge: RegistrationChallenge =
            self.client.post("/v1/providers/challenge", &()).await.ok();
        let time = time_now();
        let public_key = self.key.public_hex();
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
            prev: a.prev_commitment.clone(),
            hash: chain(ckpt, &a.prev_commitment).unwrap(),
            loss_trace_blake3: loss_trace_hash(&loss_trace),
            runtime: gradpool_core::RUNTIME_VERSION.into(),
            class: self.hardware().class(),
        };
        Commit {
            commitment: self.key.sign_commitment(commitment),
            loss_trace,
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
            compute_ms: c.compute_ms,
            dedication: c.dedication,
        }
    }

    pub async fn commit(&self, task: &TaskId, c: &Commit) -> Reply {
        self.client
            .post(&format!("/v1/tasks/{task}/commit"), c)
            .await
    }

    /// Uploads a checkpoint and commits it.
    pub async fn finish(&self, a: &Assignment, ckpt: &[u8]) -> CommitReply {
        self.client.upload(ckpt).await;
        self.commit(&a.task_id, &self.commit_for(a, ckpt))
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
        })
    }

    pub async fn report(&self, a: &Assignment, r: &SignedReplay) -> Reply {
        self.client
            .post(&format!("/v1/tasks/{}/replay", a.task_id), r)
            .await
    }
}

pub fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn genesis_of(job: &JobId) -> String {
    genesis(job)
}

pub fn signed_by(key: &NodeKey, cm: Commitment) -> SignedCommitment {
    key.sign_commitment(cm)
}

/// A proof that `p` holds its node key, for `purpose`, over a fresh nonce.
pub async fn proof(tp: &TestPool, p: &TestProvider, purpose: &str) -> NodeProof {
    let challenge: RegistrationChallenge =
        tp.anon().post("/v1/providers/challenge", &()).await.ok();
    let time = time_now();
    let public_key = p.key.public_hex();
    NodeProof {
        signature: p.key.sign(&node_proof_message(
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
    let proof = proof(tp, p, "earnings").await;
    tp.anon().post("/v1/providers/earnings", &proof).await.ok()
}
