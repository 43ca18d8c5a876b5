//! Container jobs under real podman, with the example's PyTorch image
//! (built from Debian's packages once per content of its build script and
//! the Python package, then kept under `target/`).
//!
//! Here: the same spec gives the same bytes twice, and a job cut into
//! segments gives the bytes of the same job in one segment, so a replay
//! from any committed checkpoint can be compared by hash. Through a pool:
//! a job whose provider is SIGKILLed mid-segment finishes on another,
//! bit-identical to the local run, and a provider that does not accept
//! containers gets none of it.

mod common;

use common::*;
use gradpool_core::wire::{JobEventKind, JobStatus};
use gradpool_core::{NodeKey, ProviderId, Sha256Hex};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The example's image, built when its inputs changed: once, however
/// many of this file's tests ask for it at the same time.
fn torch_image() -> PathBuf {
    static BUILT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let repo = repo();
    let mut key = blake3::Hasher::new();
    key.update(&std::fs::read(repo.join("examples/container-torch/build-image.sh")).unwrap());
    for f in [
        "pyproject.toml",
        "gradpool/__init__.py",
        "gradpool/segment.py",
        "gradpool/safetensors.py",
    ] {
        key.update(&std::fs::read(repo.join("python").join(f)).unwrap());
    }
    let dir = repo.join("target/container-images");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join(format!(
        "torch-{}.oci.tar.gz",
        &key.finalize().to_hex()[..16]
    ));
    if !image.exists() {
        let status = Command::new(repo.join("examples/container-torch/build-image.sh"))
            .arg(&image)
            .status()
            .expect("mmdebstrap and podman are installed");
        assert!(status.success(), "building the example's image failed");
    }
    image
}

fn spec(dir: &Path, image: &Path, checkpoint_every: u64) -> PathBuf {
    spec_of(dir, image, 24, checkpoint_every)
}

/// The example's spec in `dir`, `steps` long in segments of `every`.
fn spec_of(dir: &Path, image: &Path, steps: u64, checkpoint_every: u64) -> PathBuf {
    std::fs::copy(
        repo().join("examples/container-torch/train.py"),
        dir.join("train.py"),
    )
    .unwrap();
    let text = std::fs::read_to_string(repo().join("examples/container-torch/job.toml"))
        .unwrap()
        .replace("image.oci.tar.gz", image.to_str().unwrap())
        .replace(
            "../../data/tinyshakespeare.txt",
            repo().join("data/tinyshakespeare.txt").to_str().unwrap(),
        )
        .replace("steps = 60", &format!("steps = {steps}"))
        .replace(
            "checkpoint_every = 20",
            &format!("checkpoint_every = {checkpoint_every}"),
        );
    let path = dir.join(format!("job-{steps}-{checkpoint_every}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Trains `spec` into `out`; the checkpoint's bytes.
fn train(spec: &Path, out: &Path, store: &Path) -> Vec<u8> {
    train_steps(spec, out, store, 24)
}

fn train_steps(spec: &Path, out: &Path, store: &Path, steps: u64) -> Vec<u8> {
    train_with(spec, out, store, steps, 1)
}

fn train_with(spec: &Path, out: &Path, store: &Path, steps: u64, threads: u32) -> Vec<u8> {
    let run = Command::new(env!("CARGO_BIN_EXE_gradpool"))
        .arg("train")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .args(["--threads", &threads.to_string(), "--image-store"])
        .arg(store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(&format!("trained {steps} steps")),
        "{stdout}"
    );
    std::fs::read(out.join("checkpoint.safetensors")).unwrap()
}

/// Another thread count is another reproducibility class: its replay is
/// compared by distance. The example's drift between 1 and 2 threads is
/// measured here, and must stay well inside the tolerance a skipped step
/// exceeds.
#[test]
fn another_thread_count_drifts_within_the_cross_class_tolerance() {
    use gradpool_core::verification::CROSS_CLASS_TOLERANCE;
    let image = torch_image();
    let dir = tempfile::tempdir().unwrap();
    let whole = spec(dir.path(), &image, 24);
    let one = train_with(&whole, &dir.path().join("t1"), &store(), 24, 1);
    let two = train_with(&whole, &dir.path().join("t2"), &store(), 24, 2);
    let drift = gradpool_core::container::distance(&two, &one).unwrap();
    eprintln!("1 vs 2 threads: max relative L2 distance {drift:.2e}");
    assert!(drift <= CROSS_CLASS_TOLERANCE / 10.0, "{drift:.2e}");
    let half = spec_of(dir.path(), &image, 12, 12);
    let short = train_steps(&half, &dir.path().join("half"), &store(), 12);
    assert_eq!(
        gradpool_core::container::distance(&short, &one),
        None,
        "checkpoints of other steps are not comparable"
    );
    // Half the steps, passed off as all of them (the `cheat` feature's
    // container cheat), lies far beyond the tolerance.
    #[cfg(feature = "cheat")]
    {
        let forged = dir.path().join("half/checkpoint.safetensors");
        gradpool_provider::cheat::forge_container_step(&forged, 24).unwrap();
        let gap = gradpool_core::container::distance(&std::fs::read(&forged).unwrap(), &one)
            .expect("relabelled, it is comparable");
        eprintln!("12 of 24 steps: max relative L2 distance {gap:.2e}");
        assert!(gap > CROSS_CLASS_TOLERANCE * 4.0, "{gap:.2e}");
    }
}

/// The image store every test shares: each image is loaded once.
fn store() -> PathBuf {
    repo().join("target/container-images/store")
}

#[test]
fn a_container_job_trains_the_same_bytes_however_it_is_cut() {
    let image = torch_image();
    let dir = tempfile::tempdir().unwrap();
    let store = store();
    let cut = spec(dir.path(), &image, 8);
    let whole = spec(dir.path(), &image, 24);
    let first = train(&cut, &dir.path().join("a"), &store);
    let again = train(&cut, &dir.path().join("b"), &store);
    let straight = train(&whole, &dir.path().join("c"), &store);
    assert_eq!(first, again, "a replay gives the same bytes");
    assert_eq!(first, straight, "three segments give the bytes of one");
    let (_, header) = safetensors::SafeTensors::read_metadata(&first).unwrap();
    let names: Vec<_> = header.tensors().keys().cloned().collect();
    assert!(names.iter().any(|n| n.starts_with("model.")), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("optim.")),
        "the optimizer's state is kept: {names:?}"
    );
}

/// A provider agent as its own process.
struct Provider {
    id: ProviderId,
    dir: PathBuf,
    child: Child,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_provider(url: &str, dir: &Path, containers: bool) -> Provider {
    let id = NodeKey::load_or_create(&dir.join("node.key"))
        .unwrap()
        .provider_id();
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut cmd = Command::new(BIN);
    let name = dir.file_name().unwrap().to_str().unwrap();
    cmd.args(["provider", "--pool", url, "--threads", "1", "--name", name])
        .args(["--price-xmr-per-hour", "0", "--data-dir"])
        .arg(dir);
    if containers {
        cmd.arg("--accept-containers")
            .arg("--image-store")
            .arg(store());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Provider {
        id,
        dir: dir.to_owned(),
        child,
    }
}

/// The container of the shared store named `name`, if there is one.
fn container_named(name: &str) -> String {
    let out = Command::new("podman")
        .arg("--root")
        .arg(store().join("storage"))
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("name=^{name}$"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers of the shared store labelled as `owner`'s.
fn containers_of(owner: &ProviderId) -> String {
    let out = Command::new("podman")
        .arg("--root")
        .arg(store().join("storage"))
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("label=gradpool.owner={owner}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_job_outlives_a_killed_provider_and_ends_as_the_local_run() {
    let image = torch_image();
    let tmp = tempfile::tempdir().unwrap();
    let (steps, every) = (48, 16);
    let spec = spec_of(tmp.path(), &image, steps, every);
    let local = train_steps(&spec, &tmp.path().join("local"), &store(), steps);

    let pool = start_pool(&tmp.path().join("pool"), 3).await;
    let key = pool.pool.create_account("customer").await.unwrap().api_key;
    let api = gradpool_client::Api::new(&pool.url, Some(key.clone()), &Default::default()).unwrap();
    // Registered first: were it offered the job, it would get it first.
    let native = start_provider(&pool.url, &tmp.path().join("native"), false);
    provider(&api, "native").await;
    let mut rigs = vec![
        start_provider(&pool.url, &tmp.path().join("a"), true),
        start_provider(&pool.url, &tmp.path().join("b"), true),
    ];
    let listed = provider(&api, "a").await;
    assert!(listed.containers, "{listed:?}");
    assert!(!provider(&api, "native").await.containers);

    let job = gradpool_cli::cmd::job::submit(
        &api,
        &spec,
        None,
        &gradpool_cli::cmd::job::SpecOverrides::default(),
        false,
    )
    .await
    .unwrap();
    let id = job.id.to_string();
    let pinned = gradpool_core::JobSpec::from_toml_str(&job.spec_toml).unwrap();
    assert_eq!(
        pinned.container().unwrap().image_sha256,
        Some(Sha256Hex::of_file(&image).unwrap()),
        "the job pins the uploaded image"
    );

    // Mid-way through the second segment, its trainer dies.
    let mid = first_event(&api, &id, |e| {
        matches!(e.kind, JobEventKind::Progress { step, .. } if step > every && step < 2 * every)
    })
    .await;
    let JobEventKind::Progress {
        provider: victim, ..
    } = mid.kind
    else {
        unreachable!()
    };
    let index = rigs
        .iter()
        .position(|p| p.id == victim)
        .expect("a container rig");
    let mut killed = rigs.remove(index);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();

    let end = wait_final(&api, &id, Duration::from_secs(300)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let events = events(&api, &id).await;
    assert!(
        events.iter().any(|e| matches!(&e.kind,
            JobEventKind::LeaseExpired { provider, segment: 1, .. } if *provider == victim)),
        "no lease expiry for {victim} on segment 1"
    );
    for e in &events {
        if let JobEventKind::Assigned { provider, .. } = &e.kind {
            assert_ne!(
                *provider, native.id,
                "a provider without accept_containers got container work"
            );
        }
    }
    let fetched = tmp.path().join("fetched.safetensors");
    let sha = end.checkpoint_sha256.clone().expect("a final checkpoint");
    api.get_blob(&sha, &fetched).await.unwrap();
    assert!(
        std::fs::read(&fetched).unwrap() == local,
        "the job's checkpoint differs from the local run of its spec"
    );
    let report = verify(&pool, &key, &id);
    assert_eq!(report["pass"], true, "{report:#}");
    assert_eq!(report["replayed"], 3, "{report:#}");

    // The killed agent's container ran on; restarted, the agent removes it.
    let restarted = start_provider(&pool.url, &killed.dir, true);
    let start = Instant::now();
    while !containers_of(&victim).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the killed segment's container is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(restarted);
}

/// A confidential container job: its image, script, data and checkpoints
/// reach the pool and the providers' disks only sealed (searched for byte
/// by byte); the providers run it from their tmpfs, in an image store of
/// the task's own that goes with it; the customer's fetched checkpoint is
/// the local run's, and `job verify` replays it with the kept key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_container_job_is_sealed_everywhere_but_in_memory() {
    let image = torch_image();
    let tmp = tempfile::tempdir().unwrap();
    let (steps, every) = (24, 8);
    let plain_spec = spec_of(tmp.path(), &image, steps, every);
    let local = tmp.path().join("local");
    let local_checkpoint = train_steps(&plain_spec, &local, &store(), steps);
    let spec = tmp.path().join("confidential.toml");
    let text = std::fs::read_to_string(&plain_spec).unwrap();
    std::fs::write(
        &spec,
        format!("{text}\n[privacy]\nconfidential = true\nproviders = \"any\"\n"),
    )
    .unwrap();

    let pool_dir = tmp.path().join("pool");
    let pool = start_pool(&pool_dir, 10).await;
    let key = pool.pool.create_account("customer").await.unwrap().api_key;
    let api = gradpool_client::Api::new(&pool.url, Some(key.clone()), &Default::default()).unwrap();
    let rigs = [
        start_provider(&pool.url, &tmp.path().join("a"), true),
        start_provider(&pool.url, &tmp.path().join("b"), true),
    ];
    for name in ["a", "b"] {
        let listed = provider(&api, name).await;
        assert!(listed.encryption_key.is_some(), "{listed:?}");
    }
    let keys = tmp.path().join("keys");
    let overrides = gradpool_cli::cmd::job::SpecOverrides {
        keys_dir: Some(keys.clone()),
        image_store: Some(store()),
        ..Default::default()
    };
    let job = gradpool_cli::cmd::job::submit(&api, &spec, None, &overrides, false)
        .await
        .unwrap();
    let id = job.id.to_string();
    let pinned = gradpool_core::JobSpec::from_toml_str(&job.spec_toml).unwrap();
    let sealed_image = pinned.container().unwrap().image_sha256.clone().unwrap();
    assert_ne!(
        sealed_image,
        Sha256Hex::of_file(&image).unwrap(),
        "the job pins the sealed image, not the image"
    );

    let end = wait_final(&api, &id, Duration::from_secs(400)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let fetched = tmp.path().join("fetched");
    let store_of_keys = gradpool_cli::cmd::confidential::KeyStore::at(&keys);
    gradpool_cli::cmd::job::fetch_model_with(&api, &id, &fetched, true, &store_of_keys)
        .await
        .unwrap();
    assert!(
        std::fs::read(fetched.join("checkpoint.safetensors")).unwrap() == local_checkpoint,
        "the confidential job's checkpoint differs from the local run of its spec"
    );
    // The customer's replays open the image, script and checkpoints with
    // the kept key (into an image store apart from the providers').
    let out = Command::new(BIN)
        .args(["job", "verify", &id, "--segments", "3", "--threads", "1"])
        .arg("--json")
        .arg("--image-store")
        .arg(tmp.path().join("verify-images"))
        .arg("--keys-dir")
        .arg(&keys)
        .args(["--pool", &pool.url, "--api-key", &key])
        .env("GRADPOOL_HOME", "/nonexistent")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["pass"], true, "{report:#}");
    assert_eq!(report["replayed"], 3, "{report:#}");

    let ids: Vec<ProviderId> = rigs.iter().map(|r| r.id.clone()).collect();
    drop(rigs);
    drop(pool);
    // Nothing in the clear: not the corpus, not a checkpoint's tensors,
    // not a sample of the image archive's bytes, at the pool or on the
    // providers' disks.
    let corpus = std::fs::read(repo().join("data/tinyshakespeare.txt")).unwrap();
    let tensors = tensor_bytes(&fetched.join("checkpoint.safetensors"));
    let archive = std::fs::read(&image).unwrap();
    let step = archive.len() / 4096;
    let mut runs = runs_of(&corpus);
    runs.extend(runs_of(&tensors));
    runs.extend(
        (0..4096)
            .map(|i| &archive[i * step..i * step + RUN])
            .filter(|r| telling(r)),
    );
    for dir in ["pool", "a", "b"] {
        assert_eq!(find_runs(&tmp.path().join(dir), &runs), None, "{dir}");
    }
    // The providers' shared image store never held the job's image, and
    // their tmpfs directories are gone with the tasks.
    let index = std::fs::read_to_string(store().join("index.json")).unwrap_or_default();
    assert!(!index.contains(sealed_image.as_str()), "{index}");
    for rig in &ids {
        let shm = Path::new("/dev/shm").join(format!("gradpool-{rig}"));
        let left = std::fs::read_dir(&shm).map_or(0, |d| d.count());
        assert_eq!(left, 0, "plaintext left in {}", shm.display());
    }
    // The search finds what is there.
    assert!(find_runs(&local, &runs).is_some());
}

/// Runs `gradpool job verify` of `job` (3 segments, one thread, in the
/// shared image store); its JSON report.
fn verify(pool: &TestPool, key: &str, job: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "job",
            "verify",
            job,
            "--segments",
            "3",
            "--threads",
            "1",
            "--json",
        ])
        .arg("--image-store")
        .arg(store())
        .args(["--pool", &pool.url, "--api-key", key])
        .env("GRADPOOL_HOME", "/nonexistent")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The spec at `path` with its verification level set.
#[cfg(feature = "cheat")]
fn with_level(path: &Path, level: &str) -> PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    let out = path.with_file_name(format!("{level}.toml"));
    std::fs::write(
        &out,
        format!("{text}\n[verification]\nlevel = \"{level}\"\n"),
    )
    .unwrap();
    out
}

/// A provider whose container segments train half their steps and claim
/// them all: a job nobody audits succeeds, and `job verify` finds it out;
/// a paranoid job's replays catch it, and an honest provider finishes the
/// job, bit-identical to the local run, which `job verify` passes.
#[cfg(feature = "cheat")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheating_container_is_caught_and_job_verify_tells_it_from_honest_work() {
    use gradpool_core::state::AuditStatus;
    use gradpool_core::wire::VerdictView;
    let image = torch_image();
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_of(tmp.path(), &image, 24, 8);
    let local = train_steps(&spec, &tmp.path().join("local"), &store(), 24);
    let pool = start_pool_with(&tmp.path().join("pool"), 10, |c| {
        c.verification.plant_rate = 0.0;
    })
    .await;
    let key = pool.pool.create_account("customer").await.unwrap().api_key;
    let api = gradpool_client::Api::new(&pool.url, Some(key.clone()), &Default::default()).unwrap();
    let containers = |c: &mut gradpool_provider::ProviderConfig| {
        c.accept_containers = true;
        c.image_store = Some(store());
    };
    let validators = [
        Rig::start(&pool, tmp.path(), "validator-1", 1, |c| {
            containers(c);
            validator(c);
        }),
        Rig::start(&pool, tmp.path(), "validator-2", 1, |c| {
            containers(c);
            validator(c);
        }),
    ];
    let cheater = Rig::start(&pool, tmp.path(), "cheater", 1, |c| {
        containers(c);
        c.cheat = gradpool_provider::cheat::Cheat {
            kind: Some("skip-steps".into()),
            fraction: 1.0,
            lazy_validator: false,
            forge_outer: false,
        };
    });
    let submit = |path: PathBuf| {
        let api = api.clone();
        async move {
            gradpool_cli::cmd::job::submit(
                &api,
                &path,
                None,
                &gradpool_cli::cmd::job::SpecOverrides::default(),
                false,
            )
            .await
            .unwrap()
            .id
            .to_string()
        }
    };

    // Nobody audits this one: the pool takes the claims.
    let unaudited = submit(with_level(&spec, "none")).await;
    let end = wait_final(&api, &unaudited, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let report = verify(&pool, &key, &unaudited);
    assert_eq!(report["pass"], false, "{report:#}");
    let replays: Vec<&str> = report["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["replay"].as_str().unwrap())
        .collect();
    assert!(
        replays.iter().all(|r| r.starts_with("MISMATCH")),
        "{replays:?}"
    );

    // Every segment of this one is replayed.
    let audited = submit(with_level(&spec, "paranoid")).await;
    let cheater_id = provider(&api, "cheater").await.id;
    // The verdict's event, then the verdict with its evidence.
    let fault_event = first_event(&api, &audited, |e| {
        matches!(&e.kind, JobEventKind::Verdict { outcome, .. }
            if outcome == AuditStatus::ProviderFault.as_str())
    });
    tokio::time::timeout(Duration::from_secs(240), fault_event)
        .await
        .expect("no fault found within 4 minutes");
    let verdicts: Vec<VerdictView> = api
        .get(&format!("/v1/jobs/{audited}/verdicts"))
        .await
        .unwrap();
    let fault = verdicts
        .into_iter()
        .find(|v| v.outcome == AuditStatus::ProviderFault)
        .expect("the verdict its event announced");
    assert_eq!(fault.at_fault.as_ref(), Some(&cheater_id), "{fault:#?}");
    assert!(fault.replays.iter().all(|r| !r.matches), "{fault:#?}");
    let honest = Rig::start(&pool, tmp.path(), "honest", 1, containers);
    let end = wait_final(&api, &audited, Duration::from_secs(240)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let fetched = tmp.path().join("fetched.safetensors");
    api.get_blob(&end.checkpoint_sha256.clone().unwrap(), &fetched)
        .await
        .unwrap();
    assert!(
        std::fs::read(&fetched).unwrap() == local,
        "the audited job's checkpoint differs from an honest local run"
    );
    let report = verify(&pool, &key, &audited);
    assert_eq!(report["pass"], true, "{report:#}");
    assert!(provider(&api, "cheater").await.faults >= 1);
    let ledger = pool.pool.ledger().reconcile().await.unwrap();
    assert!(ledger.is_clean(), "{ledger}");

    for rig in [cheater, honest] {
        rig.stop().await;
    }
    for rig in validators {
        rig.stop().await;
    }
}

/// The unprivileged user the rootless test runs as, and its home: this
/// one when the tests do not run as root, else `gradpool-test` (which
/// `.ci/run` creates).
fn unprivileged() -> Option<(String, PathBuf)> {
    let me = String::from_utf8(succeeded(Command::new("id").arg("-u"))).unwrap();
    if me.trim() != "0" {
        return None;
    }
    let home = String::from_utf8(succeeded(
        Command::new("sh").args(["-c", "getent passwd gradpool-test | cut -d: -f6"]),
    ))
    .unwrap();
    assert!(
        !home.trim().is_empty(),
        "running as root: the rootless test needs the user gradpool-test (useradd --create-home gradpool-test; .ci/run makes it)"
    );
    Some(("gradpool-test".into(), PathBuf::from(home.trim())))
}

/// An agent that is not root runs podman rootless: where that cannot cap
/// a container's memory (cgroups v1, or controllers not delegated) the
/// sandbox refuses to run at all; where it can, a script over its memory
/// is killed. A script that allocates past its `memory_gib` never trains.
#[test]
fn a_rootless_sandbox_holds_its_limits_or_runs_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let image = torch_image();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        tmp.path().join("greedy.py"),
        "from gradpool import segment\n\
         import torch\n\
         seg = segment.from_env()\n\
         hog = torch.ones(400 << 20)  # 1.6 GB, past memory_gib = 1\n\
         model = torch.nn.Linear(2, 2)\n\
         opt = torch.optim.SGD(model.parameters(), lr=0.1)\n\
         seg.load(model, opt)\n\
         for step in seg.steps():\n    seg.log(step, float(hog[step]))\n\
         seg.save(model, opt)\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("data.txt"), "some text\n").unwrap();
    let spec = tmp.path().join("greedy.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"greedy\"\n[model]\nkind = \"container\"\n[container]\n\
             image = \"{}\"\ncommand = [\"python3\", \"/job/greedy.py\"]\n\
             files = [\"greedy.py\"]\nmemory_gib = 1\n[data]\nformat = \"text\"\n\
             file = \"data.txt\"\n[train]\nseed = 1\nsteps = 2\nbatch_size = 1\n\
             checkpoint_every = 2\nlr = 0.001\n",
            image.display()
        ),
    )
    .unwrap();
    for f in ["greedy.py", "data.txt", "greedy.toml"] {
        std::fs::set_permissions(tmp.path().join(f), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let mut cmd = match unprivileged() {
        Some((user, home)) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", BIN]).env("HOME", home);
            c
        }
        None => Command::new(BIN),
    };
    let out = cmd
        .arg("train")
        .arg(&spec)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .args(["--threads", "1", "--image-store"])
        .arg(tmp.path().join("store"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the greedy script trained: {stderr}");
    assert!(
        stderr.contains("cannot hold a container to its limits")
            || stderr.contains("going over its memory"),
        "{stderr}"
    );
}

/// The owner's limits hold for a container segment as for a native one:
/// when the owner's own program takes the machine, the agent hands the
/// segment back and its container goes at once; once the owner is done
/// the job goes on and ends as the local run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_segment_is_handed_back_when_the_owner_needs_the_machine() {
    use gradpool_provider::limits::Limits;
    use gradpool_provider::SimulatedDevice;
    use std::sync::Arc;
    let image = torch_image();
    let tmp = tempfile::tempdir().unwrap();
    let (steps, every) = (48, 16);
    let spec = spec_of(tmp.path(), &image, steps, every);
    let local = train_steps(&spec, &tmp.path().join("local"), &store(), steps);
    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let api = customer(&pool).await;
    let rig = tmp.path().join("rig");
    let rig_dir = rig.clone();
    // One thread, as the local run.
    let device = Arc::new(SimulatedDevice::new(40.0, 60.0));
    let stop = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(gradpool_provider::run(
        gradpool_provider::ProviderConfig {
            pool_url: pool.url.clone(),
            data_dir: rig,
            name: "rig".into(),
            program: BIN.into(),
            accept_containers: true,
            image_store: Some(store()),
            limits: Limits {
                pause_when_busy: true,
                ..Limits::default()
            },
            ..gradpool_provider::ProviderConfig::default()
        },
        device.clone(),
        stop.clone(),
    ));
    let id = gradpool_cli::cmd::job::submit(
        &api,
        &spec,
        None,
        &gradpool_cli::cmd::job::SpecOverrides::default(),
        false,
    )
    .await
    .unwrap()
    .id
    .to_string();

    first_event(&api, &id, |e| {
        matches!(e.kind, JobEventKind::Progress { step, .. } if step > every && step < 2 * every)
    })
    .await;
    device.set_foreign_processes(1);
    let released = first_event(
        &api,
        &id,
        |e| matches!(&e.kind, JobEventKind::Released { reason, .. } if reason == "owner_busy"),
    )
    .await;
    let JobEventKind::Released { task_id, .. } = released.kind else {
        unreachable!()
    };
    device.set_foreign_processes(0);
    // The agent takes work again only once the handed-back segment's
    // worker ended, and that worker removes its container first.
    first_event(&api, &id, |e| {
        e.id > released.id
            && matches!(&e.kind, JobEventKind::Assigned { task_id: t, .. } if *t != task_id)
    })
    .await;
    let work = gradpool_provider::state::DataDir::open(&rig_dir)
        .unwrap()
        .task_dir(&task_id)
        .join("container");
    assert_eq!(
        container_named(&gradpool_provider::container::ContainerSegment::name_for(
            &work
        )),
        "",
        "the handed-back segment's container still runs"
    );

    let end = wait_final(&api, &id, Duration::from_secs(300)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    let fetched = tmp.path().join("fetched.safetensors");
    api.get_blob(&end.checkpoint_sha256.clone().unwrap(), &fetched)
        .await
        .unwrap();
    assert!(
        std::fs::read(&fetched).unwrap() == local,
        "the job's checkpoint differs from the local run of its spec"
    );
    stop.cancel();
    agent.await.unwrap().unwrap();
}

/// A parallel container job (DiLoCo): two workers, three rounds of 8
/// steps, on two providers. `job submit` makes the initial checkpoint by
/// running the script for no steps; each worker starts from the round's
/// global weights and its slot's own optimizer state, on its shard. The
/// job ends bit-identical to `gradpool train` of the spec here (global
/// checkpoint and model file), and `job verify` replays sampled workers
/// and recomputes every outer step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_container_job_ends_as_the_local_run() {
    let image = torch_image();
    let tmp = tempfile::tempdir().unwrap();
    let plain = spec_of(tmp.path(), &image, 24, 8);
    let spec = tmp.path().join("parallel.toml");
    std::fs::write(
        &spec,
        std::fs::read_to_string(&plain).unwrap() + "\n[parallel]\nworkers = 2\ninner_steps = 8\n",
    )
    .unwrap();
    let local = tmp.path().join("local");
    let run = Command::new(BIN)
        .arg("train")
        .arg(&spec)
        .arg("--out")
        .arg(&local)
        .args(["--threads", "1", "--image-store"])
        .arg(store())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("trained 24 steps on 2 workers in 3 rounds"),
        "{stdout}"
    );

    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let key = pool.pool.create_account("customer").await.unwrap().api_key;
    let api = gradpool_client::Api::new(&pool.url, Some(key.clone()), &Default::default()).unwrap();
    let _rigs = [
        start_provider(&pool.url, &tmp.path().join("a"), true),
        start_provider(&pool.url, &tmp.path().join("b"), true),
    ];
    provider(&api, "a").await;
    provider(&api, "b").await;
    let overrides = gradpool_cli::cmd::job::SpecOverrides {
        image_store: Some(store()),
        ..Default::default()
    };
    let job = gradpool_cli::cmd::job::submit(&api, &spec, None, &overrides, false)
        .await
        .unwrap();
    let pinned = gradpool_core::JobSpec::from_toml_str(&job.spec_toml).unwrap();
    assert_eq!(
        pinned.container().unwrap().initial_sha256,
        Some(Sha256Hex::of_file(&local.join("initial.safetensors")).unwrap()),
        "submit makes the initial checkpoint the local run starts from"
    );
    let id = job.id.to_string();
    let end = wait_final(&api, &id, Duration::from_secs(300)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    assert_eq!(end.segments_done, 6, "{end:?}");
    let sha = end
        .checkpoint_sha256
        .clone()
        .expect("a final global checkpoint");
    assert_eq!(
        sha,
        Sha256Hex::of_file(&local.join("global.safetensors")).unwrap(),
        "the job's last global checkpoint differs from the local run's"
    );
    let fetched = tmp.path().join("fetched");
    gradpool_cli::cmd::job::fetch_model(&api, &id, &fetched, false)
        .await
        .unwrap();
    assert!(
        std::fs::read(fetched.join("model.safetensors")).unwrap()
            == std::fs::read(local.join("model.safetensors")).unwrap(),
        "the fetched model is not the local run's"
    );

    let report = verify(&pool, &key, &id);
    assert_eq!(report["pass"], true, "{report:#}");
    assert_eq!(report["replayed"], 3, "{report:#}");
    let outer = report["outer_steps"].as_array().unwrap();
    assert_eq!(outer.len(), 3, "{report:#}");
    for o in outer {
        assert_eq!(o["recomputed"], "exact match", "{report:#}");
    }
}
