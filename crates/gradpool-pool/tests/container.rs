//! Container jobs at the pool, over HTTP: what submit requires (the image
//! and files pinned, uploaded by the customer, the image under the cap),
//! who may claim the job and read its blobs (only providers that run
//! containers, only once leased), and what a commit must hold (the
//! container class, a canonical container checkpoint that continues the
//! one before).

mod common;

use common::*;
use gradpool_core::checkpoint::{to_bytes_typed, Values};
use gradpool_core::container::{canonical, CONTAINER_FORMAT};
use gradpool_core::wire::{Assignment, JobStatus, JobView, SubmitJob};
use gradpool_core::Sha256Hex;
use std::collections::BTreeMap;

const TEXT: &[u8] = b"To be, or not to be, that is the question.\n";

/// A container spec pinning `image` and `file` (as `train.py`).
fn spec(image: Option<&Sha256Hex>, file: Option<&Sha256Hex>) -> String {
    let mut text = String::from(
        "name = \"ct\"\n[model]\nkind = \"container\"\n[data]\nformat = \"text\"\n\
         [train]\nseed = 1\nsteps = 20\nbatch_size = 4\nlr = 0.001\ncheckpoint_every = 10\n[container]\n\
         command = [\"python3\", \"/job/train.py\"]\nfiles = [\"train.py\"]\nmemory_gib = 1\n",
    );
    if let Some(image) = image {
        text.push_str(&format!("image_sha256 = \"{image}\"\n"));
    } else {
        text.push_str("image = \"image.oci.tar\"\n");
    }
    if let Some(file) = file {
        text.push_str(&format!(
            "[container.file_sha256]\n\"train.py\" = \"{file}\"\n"
        ));
    }
    text
}

/// A container checkpoint at `step` whose weight `w` holds `w` and whose
/// tensors are those of `extra`, with `meta` beside the format and step.
fn container_checkpoint(step: u64, w: [f32; 2], extra: bool, meta: &[(&str, &str)]) -> Vec<u8> {
    let w_bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    let m_bytes: Vec<u8> = [0.5f32, 0.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let shape = [2usize];
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "model.w".to_owned(),
        (&shape[..], Values::Raw("F32", &w_bytes)),
    );
    if extra {
        tensors.insert(
            "optim.0.exp_avg".to_owned(),
            (&shape[..], Values::Raw("F32", &m_bytes)),
        );
    }
    let mut metadata = BTreeMap::from([
        ("format".to_owned(), CONTAINER_FORMAT.to_owned()),
        ("step".to_owned(), step.to_string()),
    ]);
    for (k, v) in meta {
        metadata.insert((*k).to_owned(), (*v).to_owned());
    }
    to_bytes_typed(&tensors, &metadata)
}

/// The canonical form of [`container_checkpoint`]'s file.
fn canonical_checkpoint(step: u64, w: [f32; 2], extra: bool) -> Vec<u8> {
    canonical(&container_checkpoint(step, w, extra, &[]), step, None)
        .unwrap()
        .0
}

async fn submit(c: &Client, spec: &str, data: &Sha256Hex) -> Reply {
    c.post(
        "/v1/jobs",
        &SubmitJob {
            spec_toml: spec.to_owned(),
            data_sha256: data.clone(),
            booking: None,
            sealed_keys: Vec::new(),
            data_shape: None,
        },
    )
    .await
}

#[tokio::test]
async fn a_container_job_needs_its_pins_its_uploads_and_an_image_under_the_cap() {
    let tp = TestPool::start_with(|c| c.max_image_bytes = 4096).await;
    let alice = tp.customer("alice").await;
    let mallory = tp.customer("mallory").await;
    let data = alice.upload(TEXT).await;
    let image = alice.upload(&[7u8; 2048]).await;
    let file = alice.upload(b"print('train')\n").await;
    // What `job submit` asks before uploading an image again.
    assert_eq!(
        alice.head(&format!("/v1/blobs/{image}")).await,
        (reqwest::StatusCode::OK, Some(2048))
    );
    assert_eq!(
        mallory.head(&format!("/v1/blobs/{image}")).await.0,
        reqwest::StatusCode::NOT_FOUND
    );

    let e = submit(&alice, &spec(None, Some(&file)), &data)
        .await
        .err(400);
    assert!(e.message.contains("container.image_sha256"), "{e:?}");
    let e = submit(&alice, &spec(Some(&image), None), &data)
        .await
        .err(400);
    assert!(
        e.message.contains("container.file_sha256.train.py"),
        "{e:?}"
    );

    let never = Sha256Hex::of(b"never uploaded");
    let e = submit(&alice, &spec(Some(&never), Some(&file)), &data)
        .await
        .err(400);
    assert!(
        e.message.contains("container.image_sha256") && e.message.contains("not found"),
        "{e:?}"
    );
    // Another customer's blobs are not there for mallory.
    let theirs = mallory.upload(TEXT).await;
    let e = submit(&mallory, &spec(Some(&image), Some(&file)), &theirs)
        .await
        .err(400);
    assert!(e.message.contains("container.image_sha256"), "{e:?}");

    let big = alice.upload(&[9u8; 8192]).await;
    let e = submit(&alice, &spec(Some(&big), Some(&file)), &data)
        .await
        .err(400);
    assert_eq!(e.code, "invalid_spec");
    assert!(
        e.message.contains("container.image") && e.message.contains("limit"),
        "{e:?}"
    );

    let job: JobView = submit(&alice, &spec(Some(&image), Some(&file)), &data)
        .await
        .ok();
    assert_eq!(job.status, JobStatus::Queued);
}

#[tokio::test]
async fn only_providers_running_containers_get_the_job_and_its_commits_are_checked() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let data = alice.upload(TEXT).await;
    let image = alice.upload(&[7u8; 2048]).await;
    let file = alice.upload(b"print('train')\n").await;
    let native = tp.provider("native").await;
    let job: JobView = submit(&alice, &spec(Some(&image), Some(&file)), &data)
        .await
        .ok();
    assert_eq!(job.parameters, None, "the script alone knows its model");

    // The only provider does not run containers: it gets nothing, and the
    // customer is told why the job waits.
    let reply = native.heartbeat(&[], 1, 0).await;
    assert!(reply.assignments.is_empty(), "{:?}", reply.assignments);
    let waiting = alice.job(&job.id).await;
    assert!(
        waiting
            .waiting
            .as_deref()
            .is_some_and(|r| r.contains("1 provider not running container jobs")),
        "{waiting:?}"
    );
    let runner = tp.provider_with("runner", |p| p.containers = true).await;
    let reply = native.heartbeat(&[], 1, 0).await;
    assert!(reply.assignments.is_empty(), "{:?}", reply.assignments);
    for sha in [&image, &file] {
        let (status, _) = runner.client.get_bytes(&format!("/v1/blobs/{sha}")).await;
        assert_eq!(status, 404, "readable before any lease");
    }
    let a: Assignment = runner.take().await;
    assert_eq!(a.job_id, job.id);
    for sha in [&image, &file] {
        let (status, bytes) = runner.client.get_bytes(&format!("/v1/blobs/{sha}")).await;
        assert_eq!(status, 200, "the leased provider reads the job's blobs");
        assert_eq!(Sha256Hex::of(&bytes), *sha);
        let (status, _) = native.client.get_bytes(&format!("/v1/blobs/{sha}")).await;
        assert_eq!(status, 404, "another provider does not");
    }

    let class = gradpool_core::container::class(&image, &runner.hardware(), false);
    let commit = |ckpt: &[u8], a: &Assignment| {
        let c = runner.commit_for(a, ckpt);
        runner.resign(&c, |cm| cm.class = class.clone())
    };
    let upload = |ckpt: Vec<u8>| {
        let client = runner.client.clone();
        async move { client.upload(&ckpt).await }
    };

    // A native checkpoint is no container checkpoint.
    let native_ckpt = checkpoint(&a, b"x");
    upload(native_ckpt.clone()).await;
    let e = runner
        .commit(&a.task_id, &commit(&native_ckpt, &a))
        .await
        .err(400);
    assert!(e.message.contains(CONTAINER_FORMAT), "{e:?}");
    // Well-formed, but not in the one encoding that is hashed.
    let loose = container_checkpoint(10, [1.0, 2.0], true, &[("writer", "torch")]);
    upload(loose.clone()).await;
    let e = runner
        .commit(&a.task_id, &commit(&loose, &a))
        .await
        .err(400);
    assert!(e.message.contains("canonical"), "{e:?}");
    // The provider's native class is not its class for this job.
    let first = canonical_checkpoint(10, [1.0, 2.0], true);
    upload(first.clone()).await;
    let e = runner
        .commit(&a.task_id, &runner.commit_for(&a, &first))
        .await
        .err(400);
    assert!(e.message.contains(&class), "{e:?}");
    runner
        .commit(&a.task_id, &commit(&first, &a))
        .await
        .ok::<serde_json::Value>();

    // The next segment continues the same tensors.
    let b: Assignment = runner.take().await;
    assert_eq!(b.start_checkpoint_sha256, Some(Sha256Hex::of(&first)));
    let fewer = canonical_checkpoint(20, [1.5, 2.5], false);
    upload(fewer.clone()).await;
    let e = runner
        .commit(&b.task_id, &commit(&fewer, &b))
        .await
        .err(400);
    assert!(e.message.contains("does not continue"), "{e:?}");
    let second = canonical_checkpoint(20, [1.5, 2.5], true);
    upload(second.clone()).await;
    runner
        .commit(&b.task_id, &commit(&second, &b))
        .await
        .ok::<serde_json::Value>();
    let end = alice.job(&job.id).await;
    assert_eq!(end.status, JobStatus::Succeeded, "{end:?}");
    assert_eq!(end.checkpoint_sha256, Some(Sha256Hex::of(&second)));
}

/// Two replays of a container segment that disagree with the claim and
/// with each other, in one class: the customer's script does not
/// reproduce itself. Nobody is found at fault; the job fails saying why.
#[tokio::test]
async fn an_irreproducible_script_fails_its_job_and_faults_nobody() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let data = alice.upload(TEXT).await;
    let image = alice.upload(&[7u8; 2048]).await;
    let file = alice.upload(b"print('train')\n").await;
    let trainer = tp.provider_with("trainer", |p| p.containers = true).await;
    let validator = |p: &mut TestProvider| {
        p.containers = true;
        p.validate = true;
        p.train = false;
    };
    let v1 = tp.provider_with("v1", validator).await;
    let v2 = tp.provider_with("v2", validator).await;
    let spec = format!(
        "{}[verification]\nlevel = \"paranoid\"\n",
        spec(Some(&image), Some(&file))
    );
    let job: JobView = submit(&alice, &spec, &data).await.ok();
    let class = gradpool_core::container::class(&image, &trainer.hardware(), false);

    let a = trainer.take().await;
    let first = canonical_checkpoint(10, [1.0, 2.0], true);
    trainer.client.upload(&first).await;
    let c = trainer.commit_for(&a, &first);
    let c = trainer.resign(&c, |cm| cm.class = class.clone());
    trainer
        .commit(&a.task_id, &c)
        .await
        .ok::<serde_json::Value>();

    for (v, w) in [(&v1, 3.0f32), (&v2, 4.0)] {
        let r = v.take().await;
        assert_eq!(r.kind, gradpool_core::wire::TaskKind::Replay);
        let replayed = canonical_checkpoint(10, [w, w], true);
        let report = v.replay_for(&r, &replayed, None);
        let report = v.key.sign_replay(gradpool_core::commitment::ReplayReport {
            class: class.clone(),
            ..report.report
        });
        v.report(&r, &report).await.ok::<serde_json::Value>();
    }
    let end = alice.job(&job.id).await;
    assert_eq!(end.status, JobStatus::Failed, "{end:?}");
    assert!(
        end.error
            .as_deref()
            .is_some_and(|e| e.contains("does not reproduce itself")),
        "{end:?}"
    );
    let providers: Vec<gradpool_core::wire::ProviderView> = alice.get("/v1/providers").await.ok();
    for p in providers {
        assert_eq!(p.faults, 0, "{} found at fault", p.name);
    }
}

/// A container job's `memory_gib` caps the container's RAM: a GPU rig is
/// matched on its RAM, not on its GPU's memory.
#[tokio::test]
async fn a_container_job_is_matched_on_the_rigs_ram() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let data = alice.upload(TEXT).await;
    let image = alice.upload(&[7u8; 2048]).await;
    let file = alice.upload(b"print('train')\n").await;
    let gpu = |ram: u64| {
        move |p: &mut TestProvider| {
            p.containers = true;
            p.device = gradpool_core::hardware::DeviceKind::Cuda;
            p.memory_bytes = 80 << 30;
            p.host_memory_bytes = Some(ram);
        }
    };
    let small = tp.provider_with("small-ram", gpu(512 << 20)).await;
    // No provider that runs containers has the RAM: refused at submit.
    let e = submit(&alice, &spec(Some(&image), Some(&file)), &data)
        .await
        .err(400);
    assert!(e.message.contains("the most RAM"), "{e:?}");
    let big = tp.provider_with("big-ram", gpu(16 << 30)).await;
    let job: JobView = submit(&alice, &spec(Some(&image), Some(&file)), &data)
        .await
        .ok();
    // Asking first, with 80 GiB of GPU memory, the small one gets nothing.
    assert!(small.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert_eq!(big.take().await.job_id, job.id);
}

/// A container job may widen the distance a replay in another class may
/// show (`container.cross_class_tolerance`): the pool judges replays by
/// the job's own tolerance.
#[tokio::test]
async fn a_container_job_judges_cross_class_replays_by_its_own_tolerance() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let data = alice.upload(TEXT).await;
    let image = alice.upload(&[7u8; 2048]).await;
    let file = alice.upload(b"print('train')\n").await;
    let trainer = tp.provider_with("trainer", |p| p.containers = true).await;
    // Another instruction set: another class, judged by distance.
    let validator = tp
        .provider_with("validator", |p| {
            p.containers = true;
            p.validate = true;
            p.train = false;
            p.isa = "x86-64-v2".into();
        })
        .await;
    let verdict = |tolerance: &str| {
        // One segment, its replay judged across classes.
        let spec = format!(
            "{}[verification]\nlevel = \"paranoid\"\n",
            spec(Some(&image), Some(&file))
                .replace("steps = 20", "steps = 10")
                .replace(
                    "memory_gib = 1\n",
                    &format!("memory_gib = 1\ncross_class_tolerance = {tolerance}\n")
                )
        );
        let (alice, trainer, validator, data, image) =
            (&alice, &trainer, &validator, &data, &image);
        async move {
            let job: JobView = submit(alice, &spec, data).await.ok();
            let a = trainer.take().await;
            let ckpt = canonical_checkpoint(10, [1.0, 2.0], true);
            trainer.client.upload(&ckpt).await;
            let class = gradpool_core::container::class(image, &trainer.hardware(), false);
            let c = trainer.resign(&trainer.commit_for(&a, &ckpt), |cm| cm.class = class);
            trainer
                .commit(&a.task_id, &c)
                .await
                .ok::<serde_json::Value>();
            let r = validator.take().await;
            let report = validator.replay_for(&r, &ckpt, Some(0.04));
            let report = validator
                .key
                .sign_replay(gradpool_core::commitment::ReplayReport {
                    class: gradpool_core::container::class(image, &validator.hardware(), false),
                    ..report.report
                });
            validator
                .report(&r, &report)
                .await
                .ok::<serde_json::Value>();
            let verdicts: Vec<gradpool_core::wire::VerdictView> = alice
                .get(&format!("/v1/jobs/{}/verdicts", job.id))
                .await
                .ok();
            verdicts.into_iter().map(|v| v.outcome).collect::<Vec<_>>()
        }
    };
    use gradpool_core::state::AuditStatus;
    // 0.04 apart: within a tolerance of 0.05, verified at once.
    assert_eq!(verdict("0.05").await, [AuditStatus::Verified]);
    // Beyond the default 0.025: a dispute, a second validator asked.
    assert_eq!(verdict("0.025").await, [AuditStatus::Open]);
}

/// A parallel container job starts round 0 from its initial checkpoint:
/// submit requires it, uploaded by the customer, canonical, at step 0,
/// with F32 weights; a worker's pseudo-gradient must hold exactly those
/// weights; and the pool's outer step of round 0 starts from them.
#[tokio::test]
async fn a_parallel_container_job_starts_from_its_initial_checkpoint() {
    use gradpool_core::spec::{Compression, ParallelConfig};
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let data = alice.upload(TEXT).await;
    let image = alice.upload(&[7u8; 2048]).await;
    let file = alice.upload(b"print('train')\n").await;
    let parallel = |initial: Option<&Sha256Hex>| {
        let mut text = spec(Some(&image), Some(&file)).replace("checkpoint_every = 10\n", "");
        if let Some(i) = initial {
            text = text.replace(
                "memory_gib = 1\n",
                &format!("memory_gib = 1\ninitial_sha256 = \"{i}\"\n"),
            );
        }
        text + "[parallel]\nworkers = 1\ninner_steps = 10\n"
    };
    let e = submit(&alice, &parallel(None), &data).await.err(400);
    assert!(e.message.contains("container.initial_sha256"), "{e:?}");
    let loose = alice
        .upload(&container_checkpoint(
            0,
            [1.0, 2.0],
            false,
            &[("writer", "torch")],
        ))
        .await;
    let e = submit(&alice, &parallel(Some(&loose)), &data)
        .await
        .err(400);
    assert!(
        e.message.contains("container.initial") && e.message.contains("canonical"),
        "{e:?}"
    );
    let late = alice
        .upload(&canonical_checkpoint(10, [1.0, 2.0], false))
        .await;
    let e = submit(&alice, &parallel(Some(&late)), &data).await.err(400);
    assert!(e.message.contains("expected 0"), "{e:?}");
    let initial_bytes = canonical_checkpoint(0, [1.0, 2.0], false);
    let initial = alice.upload(&initial_bytes).await;
    let job: JobView = submit(&alice, &parallel(Some(&initial)), &data).await.ok();

    let runner = tp.provider_with("runner", |p| p.containers = true).await;
    let a: Assignment = runner.take().await;
    assert_eq!(a.job_id, job.id);
    assert_eq!(a.round.as_ref().and_then(|r| r.worker), Some(0));
    let (status, bytes) = runner
        .client
        .get_bytes(&format!("/v1/blobs/{initial}"))
        .await;
    assert_eq!(status, 200, "the worker reads the initial checkpoint");
    assert_eq!(bytes, initial_bytes);

    let class = gradpool_core::container::class(&image, &runner.hardware(), false);
    let end = canonical_checkpoint(10, [0.5, 1.0], true);
    let p = ParallelConfig {
        workers: 1,
        inner_steps: 10,
        outer_lr: 0.7,
        outer_momentum: 0.9,
        compression: Compression::None,
        min_workers: 1,
    };
    let commit_sending = |sent: Vec<u8>| {
        let (runner, a, end, class) = (&runner, &a, &end, &class);
        async move {
            let sha = runner.client.upload(&sent).await;
            let c = runner.resign(&runner.commit_for(a, end), |cm| {
                cm.class = class.clone();
                cm.pseudo_gradient_sha256 = Some(sha);
            });
            runner.commit(&a.task_id, &c).await
        }
    };
    // Weights of another shape are not this job's.
    let other = gradpool_core::outer::Tensors::from([("w".to_owned(), (vec![3], vec![0.0; 3]))]);
    let wrong = gradpool_core::delta::encode(
        gradpool_core::delta::DeltaKind::PseudoGradient,
        Compression::None,
        (0, 10),
        &other,
        &BTreeMap::new(),
    )
    .unwrap()
    .0;
    let e = commit_sending(wrong).await.err(400);
    assert!(e.message.contains("not the model's parameters"), "{e:?}");
    let weights = gradpool_core::container::parallel_weights(&initial_bytes).unwrap();
    let sent = gradpool_core::container::pseudo_gradient(&weights, &end, (0, &p), (0, 10)).unwrap();
    commit_sending(sent.clone()).await.ok::<serde_json::Value>();

    // The outer step of round 0 starts from the initial weights: a
    // provider's step computed from them is accepted.
    let outer: Assignment = runner.take().await;
    assert_eq!(outer.kind, gradpool_core::wire::TaskKind::Outer);
    let g0 = gradpool_core::container::initial_global(&initial_bytes).unwrap();
    let next = gradpool_core::outer::step_files(&g0, &[(0, sent)], &p, 20).unwrap();
    let round = outer.round.clone().unwrap();
    let bytes = next.global.to_bytes();
    let commit = gradpool_core::wire::OuterCommit {
        commitment: runner
            .key
            .sign_outer(gradpool_core::commitment::OuterCommitment {
                job_id: outer.job_id.clone(),
                round: round.round,
                step: outer.end_step,
                prev: outer.prev_commitment,
                inputs: round.inputs.clone(),
                global_sha256: Sha256Hex::of(&bytes),
                hash: gradpool_core::commitment::outer_chain(
                    &bytes,
                    &outer.prev_commitment,
                    &round.inputs,
                ),
            }),
        compute_ms: 1,
    };
    runner
        .client
        .post(&format!("/v1/tasks/{}/outer", outer.task_id), &commit)
        .await
        .ok::<serde_json::Value>();
    let end = alice.job(&job.id).await;
    assert_eq!(
        end.checkpoint_sha256,
        Some(Sha256Hex::of(&bytes)),
        "{end:?}"
    );
}
