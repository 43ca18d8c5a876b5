//! Confidential jobs end to end, with real agents over TLS: the pool's
//! directory holds no plaintext of the job (its dataset, its
//! checkpoints, searched for byte by byte), a provider without the key
//! never trains it, and the customer's fetched model is the model the
//! same job gives in the clear.

mod common;

use common::*;
use gradpool_cli::cmd::confidential::KeyStore;
use gradpool_cli::cmd::job::Submission;
use gradpool_core::wire::{JobEventKind, JobStatus};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Provider(Child);

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(url: &str, dir: &Path) -> Provider {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    Provider(
        Command::new(BIN)
            .args(["provider", "--pool", url, "--threads", "1", "--name"])
            .arg(dir.file_name().unwrap())
            .args(["--price-xmr-per-hour", "0", "--data-dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_job_leaves_no_plaintext_at_the_pool_and_trains_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_corpus(tmp.path());
    let plain = tiny_spec("secret", 11, 30, 10);
    // The same job in the clear, here: the model the pool's run must give.
    let spec_path = tmp.path().join("plain.toml");
    std::fs::write(&spec_path, &plain).unwrap();
    let local = tmp.path().join("local");
    let run = Command::new(BIN)
        .arg("train")
        .arg(&spec_path)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&local)
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let pool_dir = tmp.path().join("pool");
    let pool = start_pool(&pool_dir, 10).await;
    let api = customer(&pool).await;
    let _a = start_agent(&pool.url, &tmp.path().join("holder-a"));
    let _b = start_agent(&pool.url, &tmp.path().join("holder-b"));
    let a = provider(&api, "holder-a").await;
    let b = provider(&api, "holder-b").await;
    let _outsider = start_agent(&pool.url, &tmp.path().join("outsider"));
    let outsider = provider(&api, "outsider").await;
    let spec = format!(
        "{plain}\n[privacy]\nconfidential = true\nproviders = [\"{}\", \"{}\"]\n",
        a.id,
        b.encryption_key.as_ref().unwrap().key
    );
    let keys = KeyStore::at(&tmp.path().join("keys"));
    let job = gradpool_cli::cmd::job::submit_into(
        &api,
        &spec,
        &data,
        Submission::keeping_keys_in(&keys),
        false,
    )
    .await
    .unwrap();
    let id = job.id.to_string();
    let end = wait_final(&api, &id, Duration::from_secs(180)).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    for e in events(&api, &id).await {
        if let JobEventKind::Assigned { provider, .. } = &e.kind {
            assert_ne!(
                *provider, outsider.id,
                "a provider without the key got the job"
            );
        }
    }

    let fetched = tmp.path().join("fetched");
    gradpool_cli::cmd::job::fetch_model_with(&api, &id, &fetched, true, &keys)
        .await
        .unwrap();
    assert!(
        std::fs::read(fetched.join("model.safetensors")).unwrap()
            == std::fs::read(local.join("model.safetensors")).unwrap(),
        "the confidential job's model is not the one the job gives in the clear"
    );
    let checkpoint = std::fs::read(fetched.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        checkpoint,
        std::fs::read(local.join("checkpoint.safetensors")).unwrap()
    );
    // job verify opens the sealed checkpoints with the kept key: every
    // segment's H over the plaintext, three replays matching exactly.
    let work = tmp.path().join("verify");
    let opts = gradpool_cli::cmd::verify::VerifyOptions {
        segments: 3,
        threads: Some(1),
        program: BIN.into(),
        work_dir: work,
        image_store: tmp.path().join("images"),
        keys: keys.clone(),
    };
    let report = gradpool_cli::cmd::verify::verify_job(&api, &id, &opts)
        .await
        .unwrap();
    assert!(report.pass, "{report:#?}");
    assert_eq!(report.replayed, 3);
    for s in &report.segments {
        assert_eq!(
            (s.chain.as_str(), s.replay.as_str()),
            ("ok", "exact match"),
            "{s:?}"
        );
    }
    // Without its key, nothing opens.
    let e = gradpool_cli::cmd::job::fetch_model_with(
        &api,
        &id,
        &tmp.path().join("keyless"),
        false,
        &KeyStore::at(&tmp.path().join("no-keys")),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("data key is not here"), "{e:#}");

    drop(pool);
    let corpus = std::fs::read(&data).unwrap();
    assert_eq!(
        find_run(&pool_dir, &corpus),
        None,
        "the dataset in the clear"
    );
    assert_eq!(
        find_run(
            &pool_dir,
            &tensor_bytes(&local.join("checkpoint.safetensors"))
        ),
        None,
        "a checkpoint in the clear"
    );
    // Nor do the key holders keep any on disk: their plaintext lived on
    // a tmpfs, removed with each task.
    for (rig, id) in [("holder-a", &a.id), ("holder-b", &b.id)] {
        assert_eq!(find_run(&tmp.path().join(rig), &corpus), None, "{rig}");
        let shm = Path::new("/dev/shm").join(format!("gradpool-{id}"));
        let left = std::fs::read_dir(&shm).map_or(0, |d| d.count());
        assert_eq!(left, 0, "{rig} left plaintext in {}", shm.display());
    }
    // The search finds what is there.
    assert!(find_run(&tmp.path().join("local"), &corpus[..4096]).is_none());
    assert!(find_run(tmp.path(), &corpus[1000..2000]).is_some());
}

/// `devnet --confidential --keep DIR`: the Shakespeare job, sealed; the
/// pool's kept data directory holds no 64-byte run of the corpus or of the
/// trained weights.
#[test]
fn devnet_keeps_no_plaintext_of_its_confidential_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (keep, out) = (tmp.path().join("keep"), tmp.path().join("out"));
    let run = Command::new(BIN)
        .args([
            "devnet",
            "--confidential",
            "--providers",
            "2",
            "--threads",
            "1",
        ])
        .args(["--steps", "20", "--sample-tokens", "20", "--keep"])
        .arg(&keep)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("privacy       confidential"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["confidential"], true);
    let pool_dir = PathBuf::from(summary["pool_data_dir"].as_str().unwrap());
    assert_eq!(pool_dir, keep.join("pool"));
    assert!(pool_dir.join("blobs").is_dir(), "the kept pool directory");
    let corpus = gradpool_cli::cmd::local::SHAKESPEARE;
    assert_eq!(find_run(&pool_dir, corpus), None, "the corpus in the clear");
    let weights = tensor_bytes(&out.join("model.safetensors"));
    assert_eq!(
        find_run(&pool_dir, &weights),
        None,
        "the weights in the clear"
    );
}

/// A sealed key for another provider, one copied from another job, and a
/// truncated sealed dataset: the key holder's agent refuses each with the
/// reason, decrypts nothing, and nothing is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misdirected_key_or_a_truncated_dataset_is_refused_and_unpaid() {
    use gradpool_core::privacy::{seal_bytes, DataKey, SealedKey};
    use gradpool_core::wire::{JobKey, JobView, SubmitJob};
    use gradpool_core::Sha256Hex;
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(&tmp.path().join("pool"), 10).await;
    let api = customer(&pool).await;
    let _a = start_agent(&pool.url, &tmp.path().join("holder"));
    let holder = provider(&api, "holder").await;
    // An agent whose plaintext would land on disk announces no key: no
    // customer can seal a job's key to it.
    let disk = tmp.path().join("disk");
    let _disk = Provider(
        Command::new(BIN)
            .args([
                "provider",
                "--pool",
                &pool.url,
                "--threads",
                "1",
                "--name",
                "disk",
            ])
            .args(["--price-xmr-per-hour", "0", "--plaintext-dir"])
            .arg(tmp.path())
            .arg("--data-dir")
            .arg(&disk)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(provider(&api, "disk").await.encryption_key, None);
    let other = gradpool_core::NodeKey::generate().provider_id();
    let to = holder.encryption_key.as_ref().unwrap().key.clone();
    let corpus = std::fs::read(small_corpus(tmp.path())).unwrap();
    let spec = format!(
        "{}\n[privacy]\nconfidential = true\nproviders = [\"{}\"]\n",
        tiny_spec("refused", 3, 20, 10),
        holder.id
    );
    let shape = gradpool_core::data::data_shape(
        &gradpool_core::JobSpec::from_toml_str(&spec).unwrap(),
        &corpus[..],
    )
    .unwrap();
    let key = DataKey::generate();
    let sealed = seal_bytes(&key, &corpus);
    let data = Sha256Hex::of(&sealed);
    let upload = |bytes: Vec<u8>| {
        let (api, dir) = (api.clone(), tmp.path().to_owned());
        async move {
            let sha = Sha256Hex::of(&bytes);
            let path = dir.join(sha.as_str());
            std::fs::write(&path, &bytes).unwrap();
            api.put_blob(&path, &sha, |_| {}).await.unwrap();
            sha
        }
    };
    upload(sealed.clone()).await;
    let truncated = upload(sealed[..sealed.len() - 100].to_vec()).await;
    let another_job = Sha256Hex::of(b"another job's sealed dataset");
    let submit = |data: Sha256Hex, sealed_key: SealedKey| {
        let (api, spec, provider) = (api.clone(), spec.clone(), holder.id.clone());
        async move {
            let job: JobView = api
                .post(
                    "/v1/jobs",
                    &SubmitJob {
                        spec_toml: spec,
                        data_sha256: data,
                        booking: None,
                        sealed_keys: vec![JobKey {
                            provider,
                            sealed_key,
                        }],
                        data_shape: Some(shape),
                    },
                )
                .await
                .unwrap();
            job.id.to_string()
        }
    };
    let cases = [
        (
            submit(data.clone(), SealedKey::seal(&key, &other, &to, &data)).await,
            "for another provider",
        ),
        (
            submit(
                data.clone(),
                SealedKey::seal(&key, &holder.id, &to, &another_job),
            )
            .await,
            "for another job",
        ),
        (
            submit(
                truncated.clone(),
                SealedKey::seal(&key, &holder.id, &to, &truncated),
            )
            .await,
            "truncated or altered",
        ),
    ];
    for (id, reason) in &cases {
        let failed = first_event(&api, id, |e| {
            matches!(e.kind, JobEventKind::TaskFailed { .. })
        })
        .await;
        let JobEventKind::TaskFailed { reason: said, .. } = failed.kind else {
            unreachable!()
        };
        assert!(said.contains(reason), "{id}: {said}");
        // It would wait for another key holder: cancelled, its events end.
        let job: JobView = api
            .post(&format!("/v1/jobs/{id}/cancel"), &())
            .await
            .unwrap();
        assert_eq!(job.segments_done, 0, "{job:?}");
        assert_eq!(job.spent.0, 0, "{job:?}");
        assert!(
            !events(&api, id)
                .await
                .iter()
                .any(|e| matches!(e.kind, JobEventKind::Payment { .. })),
            "{id}: paid"
        );
    }
    let shm = Path::new("/dev/shm").join(format!("gradpool-{}", holder.id));
    let left = std::fs::read_dir(&shm).map_or(0, |d| d.count());
    assert_eq!(left, 0, "plaintext left in {}", shm.display());
}
