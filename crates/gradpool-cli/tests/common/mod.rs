//! What the integration tests share: a pool on a temporary SQLite database
//! and a real socket, small GPT specs, a local reference run, and waiting
//! for jobs.
#![allow(dead_code)]

use gradpool_client::Api;
use gradpool_core::wire::{JobEvent, JobView, ProviderView};
use gradpool_core::JobSpec;
use gradpool_pool::{Pool, PoolConfig};
use gradpool_provider::{CpuDevice, ProviderConfig, ProviderError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_gradpool");

/// A small GPT: 2 layers, width 48, context 32.
pub fn tiny_spec(name: &str, seed: u64, steps: u64, every: u64) -> String {
    format!(
        r#"name = "{name}"
[model]
kind = "gpt"
n_layer = 2
n_head = 2
n_embd = 48
block_size = 32
[data]
format = "text"
[train]
seed = {seed}
steps = {steps}
batch_size = 8
checkpoint_every = {every}
lr = 0.003
warmup_steps = 5
"#
    )
}

/// The first 60 kB of the reference corpus, written into `dir`.
pub fn small_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &gradpool_cli::cmd::local::SHAKESPEARE[..60_000]).unwrap();
    path
}

pub struct TestPool {
    pub pool: Pool,
    pub url: String,
    pub stop: CancellationToken,
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A pool serving on 127.0.0.1 with a free port.
pub async fn start_pool(dir: &Path, lease_seconds: u32) -> TestPool {
    start_pool_with(dir, lease_seconds, |_| {}).await
}

/// A pool serving on 127.0.0.1 with a free port, configured by `f`.
pub async fn start_pool_with(
    dir: &Path,
    lease_seconds: u32,
    f: impl FnOnce(&mut PoolConfig),
) -> TestPool {
    let mut config = PoolConfig {
        data_dir: dir.to_owned(),
        lease_seconds,
        heartbeat_seconds: 1,
        ..PoolConfig::default()
    };
    // Sampled audits only where a test asks (paranoid jobs, or its own
    // sampling): a random draw would make other tests' outcomes random.
    config.verification.sampling.p_new = 0.0;
    config.verification.sampling.floor = 0.0;
    f(&mut config);
    let pool = Pool::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(
        pool.clone()
            .serve(listener, async move { s.cancelled().await }),
    );
    TestPool { pool, url, stop }
}

/// A customer client with a new account.
pub async fn customer(p: &TestPool) -> Api {
    let account = p.pool.create_account("test customer").await.unwrap();
    Api::new(&p.url, Some(account.api_key), &Default::default()).unwrap()
}

/// Waits until the job reaches a final status.
pub async fn wait_final(api: &Api, id: &str, limit: Duration) -> JobView {
    wait_job(api, id, limit, "finish", |j| j.status.is_final()).await
}

/// Waits until the job (as the pool shows it) satisfies `done`, which
/// `what` names in the failure after `limit`.
pub async fn wait_job(
    api: &Api,
    id: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&JobView) -> bool,
) -> JobView {
    let start = Instant::now();
    loop {
        let job: JobView = api.get(&format!("/v1/jobs/{id}")).await.unwrap();
        if done(&job) {
            return job;
        }
        assert!(
            start.elapsed() < limit,
            "job {id} did not {what} in {limit:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `cmd`, which must succeed (its stderr shown if not); its stdout.
pub fn succeeded(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// All events of a job so far (the stream closes once the job is final).
pub async fn events(api: &Api, id: &str) -> Vec<JobEvent> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let resp = api
        .send(
            "events",
            api.request(reqwest::Method::GET, &format!("/v1/jobs/{id}/events")),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream().eventsource();
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap();
        if !ev.data.is_empty() {
            out.push(serde_json::from_str(&ev.data).unwrap());
        }
    }
    out
}

/// Follows the job's events until one satisfies `hit`.
pub async fn first_event(
    api: &gradpool_client::Api,
    id: &str,
    hit: impl Fn(&JobEvent) -> bool,
) -> JobEvent {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let resp = api
        .send(
            "events",
            api.request(reqwest::Method::GET, &format!("/v1/jobs/{id}/events")),
        )
        .await
        .unwrap();
    let mut stream = resp.bytes_stream().eventsource();
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap();
        if ev.data.is_empty() {
            continue;
        }
        let event: JobEvent = serde_json::from_str(&ev.data).unwrap();
        if hit(&event) {
            return event;
        }
    }
    panic!("the job's events ended before the one awaited");
}

/// The model file a single uninterrupted local run of the spec produces.
pub fn local_model(spec_text: &str, data: &Path, dir: &Path) -> Vec<u8> {
    let spec = JobSpec::from_toml_str(spec_text).unwrap();
    let bytes = std::fs::read(data).unwrap();
    let dataset = gradpool_train::Dataset::from_bytes(&spec, &bytes).unwrap();
    let ckpt = dir.join("local.ckpt.safetensors");
    gradpool_train::run_segment(
        &spec,
        &dataset,
        None,
        0,
        spec.train.steps,
        &gradpool_train::Device::Cpu,
        &ckpt,
        &mut |_| {},
    )
    .unwrap();
    let model = dir.join("local.model.safetensors");
    gradpool_train::export_model(&spec, &ckpt, &model).unwrap();
    std::fs::read(model).unwrap()
}

/// A provider agent running in this process.
pub struct Rig {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), ProviderError>>,
}

impl Rig {
    pub fn start(
        pool: &TestPool,
        dir: &Path,
        name: &str,
        threads: u32,
        f: impl FnOnce(&mut ProviderConfig),
    ) -> Rig {
        let mut config = ProviderConfig {
            pool_url: pool.url.clone(),
            data_dir: dir.join(name),
            name: name.to_owned(),
            program: BIN.into(),
            ..ProviderConfig::default()
        };
        f(&mut config);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(gradpool_provider::run(
            config,
            Arc::new(CpuDevice::new(Some(threads))),
            stop.clone(),
        ));
        Rig { stop, handle }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// A dedicated validator: replays, never trains.
pub fn validator(config: &mut ProviderConfig) {
    config.validate = true;
    config.train = false;
}

/// The provider registered under `name`, once it is.
pub async fn provider(api: &Api, name: &str) -> ProviderView {
    let start = Instant::now();
    loop {
        let all: Vec<ProviderView> = api.get("/v1/providers").await.unwrap();
        if let Some(p) = all.into_iter().find(|p| p.name == name) {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small GPT as a parallel job: `workers` workers, `inner` steps a
/// round, `rounds` rounds.
pub fn parallel_spec(name: &str, workers: u32, inner: u64, rounds: u64, level: &str) -> String {
    format!(
        "{}[parallel]\nworkers = {workers}\ninner_steps = {inner}\n[verification]\nlevel = \"{level}\"\n",
        tiny_spec(name, 5, inner * rounds, inner)
    )
}

/// The global checkpoint `gradpool train` writes for the spec, here.
pub fn local_global(spec_text: &str, data: &Path, dir: &Path) -> Vec<u8> {
    local_global_resetting(spec_text, data, dir, &[])
}

/// [`local_global`], with the slots `(round, worker)` in `reset` starting
/// from fresh optimizer state, as a pool's `slot_reset` events say.
pub fn local_global_resetting(
    spec_text: &str,
    data: &Path,
    dir: &Path,
    reset: &[(u64, u32)],
) -> Vec<u8> {
    let spec = JobSpec::from_toml_str(spec_text).unwrap();
    let bytes = std::fs::read(data).unwrap();
    let dataset = gradpool_train::Dataset::from_bytes(&spec, &bytes).unwrap();
    let global = gradpool_train::parallel::train_parallel_resetting(
        &spec,
        &dataset,
        dir,
        &gradpool_train::Device::Cpu,
        &|r, w| reset.contains(&(r, w)),
        &mut |_, _| {},
        &mut |_| {},
    )
    .unwrap();
    std::fs::read(global).unwrap()
}

/// The job's trained global checkpoint, downloaded.
pub async fn fetched_global(api: &gradpool_client::Api, id: &str, dir: &Path) -> Vec<u8> {
    let job: gradpool_core::wire::JobView = api.get(&format!("/v1/jobs/{id}")).await.unwrap();
    let sha = job
        .checkpoint_sha256
        .expect("a trained job has a checkpoint");
    let path = dir.join("global.safetensors");
    api.get_blob(&sha, &path).await.unwrap();
    std::fs::read(path).unwrap()
}

/// The length of the runs of plaintext searched for ([`find_run`]).
pub const RUN: usize = 64;

/// The `RUN`-byte runs of `secret` that could tell something: those of at
/// least 8 distinct bytes (zeros in a database page, a tar header's
/// padding, a tensor of ones are no secret).
pub fn runs_of(secret: &[u8]) -> std::collections::HashSet<&[u8]> {
    secret.windows(RUN).filter(|w| telling(w)).collect()
}

/// Whether `run` holds at least 8 distinct bytes.
pub fn telling(run: &[u8]) -> bool {
    let mut seen = [false; 256];
    run.iter()
        .filter(|b| !std::mem::replace(&mut seen[usize::from(**b)], true))
        .count()
        >= 8
}

/// Where under `dir` some `RUN`-byte run of `secret` lies, if anywhere:
/// every file, every offset.
pub fn find_run(dir: &Path, secret: &[u8]) -> Option<(PathBuf, usize)> {
    find_runs(dir, &runs_of(secret))
}

/// Where under `dir` one of `runs` lies, if anywhere: every file, every
/// offset.
pub fn find_runs(dir: &Path, runs: &std::collections::HashSet<&[u8]>) -> Option<(PathBuf, usize)> {
    // Most offsets are ruled out by their first 8 bytes alone.
    let prefixes: std::collections::HashSet<[u8; 8]> = runs
        .iter()
        .filter_map(|r| r.get(..8)?.try_into().ok())
        .collect();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // A database's -wal or -shm file may go as it closes: what it
            // held is in the database then.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let found = bytes.windows(RUN).position(|w| {
                let head: [u8; 8] = w[..8].try_into().unwrap_or_default();
                prefixes.contains(&head) && runs.contains(w)
            });
            if let Some(at) = found {
                eprintln!("{}+{at}: {:02x?}", path.display(), &bytes[at..at + RUN]);
                return Some((path, at));
            }
        }
    }
    None
}

/// The tensor bytes of a safetensors file (after its header).
pub fn tensor_bytes(file: &Path) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}
