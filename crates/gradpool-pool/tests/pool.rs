//! End-to-end tests: a real pool (SQLite in a tempdir) on 127.0.0.1:0,
//! driven over HTTP.

mod common;

use common::*;
use gradpool_core::commitment::registration_message;
use gradpool_core::state::ProviderStatus;
use gradpool_core::wire::*;
use gradpool_core::{NodeKey, Sha256Hex, TaskId};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn accounts_and_authentication() {
    let tp = TestPool::start().await;
    let anon = tp.anon();
    let created: AccountCreated = anon
        .post(
            "/v1/accounts",
            &CreateAccount {
                name: "alice".into(),
            },
        )
        .await
        .ok();
    assert!(created.api_key.starts_with("gp_"));
    assert_eq!(created.api_key.len(), 3 + 64);
    let alice = anon.with_token(&created.api_key);
    let me: AccountView = alice.get("/v1/account").await.ok();
    assert_eq!(me.id, created.account_id);
    assert_eq!(me.name, "alice");

    let e = anon.get("/v1/account").await.err(401);
    assert_eq!(e.code, "unauthorized");
    let e = anon.with_token("gp_nope").get("/v1/account").await.err(401);
    assert_eq!(e.code, "unauthorized");
    let e = anon.with_token("gp_nope").get("/v1/jobs").await.err(401);
    assert_eq!(e.code, "unauthorized");
    // A provider token is not a customer key.
    let p = tp.provider("rig").await;
    p.client.get("/v1/jobs").await.err(401);
    // The key is stored hashed only.
    let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM accounts")
        .fetch_all(tp.pool.database())
        .await
        .unwrap();
    assert!(!stored.iter().any(|h| h.contains(&created.api_key[3..])));
    tp.shutdown().await;

    let closed = TestPool::start_with(|c| c.open_signup = false).await;
    let e = closed
        .anon()
        .post("/v1/accounts", &CreateAccount { name: "bob".into() })
        .await
        .err(403);
    assert_eq!(e.code, "forbidden");
    // The operator can still create accounts in process.
    closed
        .customer("bob")
        .await
        .get("/v1/account")
        .await
        .ok::<AccountView>();
    closed.shutdown().await;
}

#[tokio::test]
async fn blob_upload_and_download() {
    let tp = TestPool::start_with(|c| c.max_blob_bytes = 1000).await;
    let alice = tp.customer("alice").await;
    let bob = tp.customer("bob").await;

    let bytes = b"hello blob".to_vec();
    let sha = alice.upload(&bytes).await;
    assert!(tp
        .blob_dir()
        .join(&sha.as_str()[..2])
        .join(sha.as_str())
        .is_file());
    let (status, got) = alice.get_bytes(&format!("/v1/blobs/{sha}")).await;
    assert_eq!(status, 200);
    assert_eq!(got, bytes);
    // Re-uploading is fine.
    alice.upload(&bytes).await;
    // Bob neither uploaded it nor uses it.
    assert_eq!(
        bob.get(&format!("/v1/blobs/{sha}")).await.err(404).code,
        "not_found"
    );
    // Absent blob.
    let absent = Sha256Hex::of(b"absent");
    alice.get(&format!("/v1/blobs/{absent}")).await.err(404);
    // No key.
    tp.anon()
        .put_blob(sha.as_str(), bytes.clone())
        .await
        .err(401);

    let before = stored_files(&tp.blob_dir());
    // Digest mismatch: nothing stored.
    let other = Sha256Hex::of(b"something else");
    let e = alice.put_blob(other.as_str(), bytes.clone()).await.err(400);
    assert_eq!(e.code, "digest_mismatch");
    assert!(!tp
        .blob_dir()
        .join(&other.as_str()[..2])
        .join(other.as_str())
        .exists());
    // Too large, declared up front.
    let big = vec![7u8; 2000];
    let big_sha = Sha256Hex::of(&big);
    let e = alice.put_blob(big_sha.as_str(), big.clone()).await.err(413);
    assert_eq!(e.code, "too_large");
    // Too large, streamed without a length.
    let resp = alice.put_blob_streamed(big_sha.as_str(), &big, 300).await;
    assert_eq!(resp.status(), 413);
    let e: ApiError = resp.json().await.unwrap();
    assert_eq!(e.code, "too_large");
    assert_eq!(
        stored_files(&tp.blob_dir()),
        before,
        "refused uploads left files behind"
    );
    // Malformed digests.
    for bad in ["abc", "ZZ", &"A".repeat(64)] {
        let e = alice.put_blob(bad, bytes.clone()).await.err(400);
        assert_eq!(e.code, "bad_request");
    }
    alice.get("/v1/blobs/not-a-digest").await.err(400);
    tp.shutdown().await;
}

#[tokio::test]
async fn submit_validation_and_job_visibility() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let bob = tp.customer("bob").await;
    let data = alice.upload(b"some text data").await;

    let bad = SPEC.replace("lr = 0.001", "lr = \"fast\"");
    let e = alice
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: bad,
                data_sha256: data.clone(),
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .err(400);
    assert_eq!(e.code, "invalid_spec");
    assert!(e.message.contains("train.lr"), "{}", e.message);
    let bad = SPEC.replace("n_embd = 8", "n_embd = 9\nn_embdd = 3");
    let e = alice
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: bad,
                data_sha256: data.clone(),
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .err(400);
    assert!(e.message.contains("model.n_embdd"), "{}", e.message);
    // A parallel job's table is checked like the rest, its field named.
    for (bad, field) in [
        ("workers = 0\ninner_steps = 10", "parallel.workers"),
        ("workers = 2\ninner_steps = 0", "parallel.inner_steps"),
        (
            "workers = 2\ninner_steps = 10\nmin_workers = 3",
            "parallel.min_workers",
        ),
        (
            "workers = 2\ninner_steps = 10\nouter_lr = 0.0",
            "parallel.outer_lr",
        ),
    ] {
        let e = alice
            .post(
                "/v1/jobs",
                &SubmitJob {
                    spec_toml: format!("{SPEC}\n[parallel]\n{bad}\n"),
                    data_sha256: data.clone(),
                    booking: None,
                    sealed_keys: Vec::new(),
                    data_shape: None,
                },
            )
            .await
            .err(400);
        assert_eq!(e.code, "invalid_spec");
        assert!(e.message.contains(field), "{field}: {}", e.message);
    }

    // Data that was never uploaded, or that someone else uploaded.
    let missing = Sha256Hex::of(b"never uploaded");
    let e = alice
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: SPEC.into(),
                data_sha256: missing,
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .err(400);
    assert!(e.message.contains("data_sha256"), "{}", e.message);
    bob.post(
        "/v1/jobs",
        &SubmitJob {
            spec_toml: SPEC.into(),
            data_sha256: data.clone(),
            booking: None,
            sealed_keys: Vec::new(),
            data_shape: None,
        },
    )
    .await
    .err(400);
    // The spec pins another digest.
    let pinned = SPEC.replace(
        "format = \"text\"",
        &format!("format = \"text\"\nsha256 = \"{}\"", Sha256Hex::of(b"x")),
    );
    let e = alice
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: pinned,
                data_sha256: data.clone(),
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .err(400);
    assert!(e.message.contains("data.sha256"), "{}", e.message);

    let job: JobView = alice
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: SPEC.into(),
                data_sha256: data.clone(),
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .ok();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.segments_total, 3);
    assert_eq!(job.steps, 30);
    assert_eq!(alice.job(&job.id).await, job);
    let jobs: Vec<JobView> = alice.get("/v1/jobs").await.ok();
    assert_eq!(jobs.len(), 1);

    assert_eq!(
        alice.get("/v1/jobs/job_unknown").await.err(404).code,
        "not_found"
    );
    bob.get(&format!("/v1/jobs/{}", job.id)).await.err(404);
    bob.get(&format!("/v1/jobs/{}/segments", job.id))
        .await
        .err(404);
    bob.get(&format!("/v1/jobs/{}/events", job.id))
        .await
        .err(404);
    bob.post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .err(404);
    bob.get(&format!("/v1/blobs/{data}")).await.err(404);
    let bobs: Vec<JobView> = bob.get("/v1/jobs").await.ok();
    assert!(bobs.is_empty());
    // Malformed JSON gets an ApiError too.
    let resp = alice
        .http
        .post(format!("{}/v1/jobs", alice.base))
        .bearer_auth(alice.token.as_deref().unwrap())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<ApiError>().await.unwrap().code, "bad_request");
    tp.shutdown().await;
}

#[tokio::test]
async fn registration_is_checked() {
    let tp = TestPool::start().await;
    let p = tp.provider("rig").await;
    let mut body = p.register_body(vec![]).await;
    body.time -= 1000;
    tp.anon()
        .post("/v1/providers/register", &body)
        .await
        .err(401);
    let mut body = p.register_body(vec![]).await;
    body.signature = NodeKey::generate().sign(b"whatever");
    tp.anon()
        .post("/v1/providers/register", &body)
        .await
        .err(401);
    // A key that is not hex, or not a point of the curve, is refused with
    // its field's name.
    let mut body = serde_json::to_value(p.register_body(vec![]).await).unwrap();
    body["public_key"] = "zz".into();
    let e = tp
        .anon()
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.contains("public_key"), "{}", e.message);
    let mut body = p.register_body(vec![]).await;
    // The y coordinate 2 (little-endian) is no point of Ed25519.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    body.public_key = gradpool_core::commitment::PublicKey(not_a_point);
    let e = tp
        .anon()
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.contains("public_key"), "{}", e.message);
    // A registration is good once: replaying it, or signing a nonce the
    // pool never issued, is refused.
    let body = p.register_body(vec![]).await;
    let _: Registered = tp.anon().post("/v1/providers/register", &body).await.ok();
    tp.anon()
        .post("/v1/providers/register", &body)
        .await
        .err(401);
    let mut forged = p.register_body(vec![]).await;
    forged.nonce = "00".repeat(32);
    forged.signature = p.key.sign(&registration_message(
        &forged.public_key,
        forged.time,
        &forged.nonce,
    ));
    tp.anon()
        .post("/v1/providers/register", &forged)
        .await
        .err(401);
    // Heartbeat without a token, or with an old token.
    tp.anon()
        .post("/v1/providers/heartbeat", &serde_json::json!({}))
        .await
        .err(401);
    let old = p.client.clone();
    let mut p2 = TestProvider {
        key: p.key,
        name: "rig".into(),
        client: p.client.clone(),
        device: p.device,
        price: p.price,
        gflops: None,
        payout: Vec::new(),
        compute_ms: 0,
        validate: false,
        train: true,
        region: None,
        containers: false,
        encryption: None,
        paused: None,
        memory_bytes: 8 << 30,
        host_memory_bytes: None,
        isa: "x86-64-v3".into(),
        gpu_uuid: None,
        dedication: None,
        clock: p.clock.clone(),
    };
    p2.register(vec![]).await;
    old.post(
        "/v1/providers/heartbeat",
        &Heartbeat {
            telemetry: Default::default(),
            running: vec![],
            capacity: 0,
            wait_seconds: 0,
            paused: None,
        },
    )
    .await
    .err(401);
    let providers: Vec<ProviderView> = p2.client.get("/v1/providers").await.ok();
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0].id, p2.key.provider_id());
    assert_eq!(providers[0].status, ProviderStatus::Idle);
    assert_eq!(providers[0].class, p2.hardware().class());
    tp.shutdown().await;
}

#[tokio::test]
async fn provider_takes_and_commits_a_segment() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"some text").await;
    let p = tp.provider("rig").await;

    // The provider may not read the data before it has a task of the job.
    p.client
        .get(&format!("/v1/blobs/{}", job.data_sha256))
        .await
        .err(404);
    let a = p.take().await;
    assert_eq!(a.job_id, job.id);
    assert_eq!((a.segment, a.start_step, a.end_step), (0, 0, 10));
    assert_eq!(a.start_checkpoint_sha256, None);
    assert_eq!(a.prev_commitment, genesis_of(&job.id));
    assert_eq!(a.data_sha256, job.data_sha256);
    assert_eq!(a.spec_toml, SPEC);
    let (status, data) = p
        .client
        .get_bytes(&format!("/v1/blobs/{}", job.data_sha256))
        .await;
    assert_eq!((status.as_u16(), data.as_slice()), (200, &b"some text"[..]));

    let view = alice.job(&job.id).await;
    assert_eq!(view.status, JobStatus::Running);
    assert_eq!(view.provider, Some(p.key.provider_id()));
    let providers: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    assert_eq!(providers[0].status, ProviderStatus::Sharing);

    // Progress from the lease holder only.
    let progress = Progress {
        step: 3,
        loss: 3.25,
        tokens_per_sec: 100.0,
    };
    let r = p
        .client
        .post(&format!("/v1/tasks/{}/progress", a.task_id), &progress)
        .await;
    assert_eq!(r.status, 204);
    // The job's loss is its last accepted checkpoint's: none yet (progress
    // of a segment that may yet be lost is an event, not the job's loss).
    assert_eq!(alice.job(&job.id).await.last_loss, None);
    let other = tp.provider("other").await;
    assert_eq!(
        other
            .client
            .post(&format!("/v1/tasks/{}/progress", a.task_id), &progress)
            .await
            .err(409)
            .code,
        "conflict"
    );

    let ckpt = checkpoint(&a, b"checkpoint 0");
    let commit = p.commit_for(&a, &ckpt);
    p.client.upload(&ckpt).await;
    let reply: CommitReply = p.commit(&a.task_id, &commit).await.ok();
    assert!(reply.accepted && !reply.job_done);
    // Idempotent.
    let again: CommitReply = p.commit(&a.task_id, &commit).await.ok();
    assert!(again.accepted && !again.job_done);

    let view = alice.job(&job.id).await;
    assert_eq!((view.step, view.segments_done), (10, 1));
    assert_eq!(view.checkpoint_sha256, Some(Sha256Hex::of(&ckpt)));
    assert_eq!(view.last_loss, commit.loss_trace.last().copied());
    assert_eq!(view.eval_loss, Some(4.25));
    // The owner may read the checkpoint now.
    let (status, got) = alice
        .get_bytes(&format!("/v1/blobs/{}", Sha256Hex::of(&ckpt)))
        .await;
    assert_eq!((status.as_u16(), got), (200, ckpt.clone()));

    // The next segment is queued and chains from the commitment.
    let b = p.take().await;
    assert_eq!((b.segment, b.start_step, b.end_step), (1, 10, 20));
    assert_eq!(b.start_checkpoint_sha256, Some(Sha256Hex::of(&ckpt)));
    assert_eq!(b.prev_commitment, commit.commitment.commitment.hash);
    let segments: Vec<SegmentView> = alice
        .get(&format!("/v1/jobs/{}/segments", job.id))
        .await
        .ok();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].commitment, commit.commitment);
    assert_eq!(segments[0].loss_trace, commit.loss_trace);
    assert_eq!(segments[0].eval_loss, Some(4.25));
    assert_eq!(segments[0].provider, p.key.provider_id());
    // The progress reported is among the job's events (read to the end
    // once the job ends).
    let _: JobView = alice
        .post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok();
    let events = alice.events(&job.id, None).await;
    assert!(
        events.iter().any(|(_, _, e)| matches!(
            e.kind,
            JobEventKind::Progress { step: 3, loss, .. } if loss == 3.25
        )),
        "{events:?}"
    );
    tp.shutdown().await;
}

#[tokio::test]
async fn bad_commitments_are_refused_and_change_nothing() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"data").await;
    let p = tp.provider("rig").await;
    let a = p.take().await;
    let ckpt = checkpoint(&a, b"the real checkpoint");
    let good = p.commit_for(&a, &ckpt);

    // The checkpoint was not uploaded yet.
    let e = p.commit(&a.task_id, &good).await.err(400);
    assert!(e.message.contains("checkpoint"), "{}", e.message);
    p.client.upload(&ckpt).await;

    let mut bad_sig = good.clone();
    bad_sig.commitment.commitment.end_step = 11;
    let e = p.commit(&a.task_id, &bad_sig).await.err(400);
    assert!(e.message.contains("signature"), "{}", e.message);

    // Signed by someone else.
    let stranger = NodeKey::generate();
    let foreign = Commit {
        commitment: stranger.sign_commitment(good.commitment.commitment.clone()),
        loss_trace: good.loss_trace.clone(),
        eval_loss: None,
        compute_ms: 0,
        dedication: None,
    };
    let e = p.commit(&a.task_id, &foreign).await.err(400);
    assert!(e.message.contains("signed by"), "{}", e.message);

    let wrong_prev = p.resign(&good, |c| {
        c.prev = gradpool_core::commitment::genesis(&gradpool_core::JobId::from("job_other"));
        c.hash = gradpool_core::commitment::chain(&ckpt, &c.prev);
    });
    let e = p.commit(&a.task_id, &wrong_prev).await.err(409);
    assert!(e.message.contains("prev"), "{}", e.message);

    let wrong_segment = p.resign(&good, |c| c.segment = 1);
    let e = p.commit(&a.task_id, &wrong_segment).await.err(400);
    assert!(e.message.contains("segment"), "{}", e.message);

    let wrong_steps = p.resign(&good, |c| c.end_step = 9);
    p.commit(&a.task_id, &wrong_steps).await.err(400);

    let wrong_hash = p.resign(&good, |c| {
        c.hash = gradpool_core::commitment::chain(b"other", &c.prev)
    });
    let e = p.commit(&a.task_id, &wrong_hash).await.err(400);
    assert!(e.message.contains("hash"), "{}", e.message);

    let mut short_trace = good.clone();
    short_trace.loss_trace.pop();
    p.commit(&a.task_id, &short_trace).await.err(400);
    let mut other_trace = good.clone();
    other_trace.loss_trace[0] = 99.0;
    let e = p.commit(&a.task_id, &other_trace).await.err(400);
    assert!(e.message.contains("loss"), "{}", e.message);

    // Another provider may not commit this task.
    let other = tp.provider("other").await;
    other.client.upload(&ckpt).await;
    other
        .commit(&a.task_id, &other.commit_for(&a, &ckpt))
        .await
        .err(409);
    other
        .commit(&TaskId::from("task_nope"), &good)
        .await
        .err(404);

    let view = alice.job(&job.id).await;
    assert_eq!(
        (
            view.step,
            view.segments_done,
            view.checkpoint_sha256.clone()
        ),
        (0, 0, None)
    );
    let segments: Vec<SegmentView> = alice
        .get(&format!("/v1/jobs/{}/segments", job.id))
        .await
        .ok();
    assert!(segments.is_empty());

    let ok: CommitReply = p.commit(&a.task_id, &good).await.ok();
    assert!(ok.accepted);
    assert_eq!(alice.job(&job.id).await.segments_done, 1);
    tp.shutdown().await;
}

#[tokio::test]
async fn a_full_job_succeeds_and_streams_its_events() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let bob = tp.customer("bob").await;
    let job = alice.submit(SPEC, b"data").await;
    let p = tp.provider("rig").await;

    // Follow live from the start, while the job runs.
    let follower = {
        let alice = alice.clone();
        let id = job.id.clone();
        tokio::spawn(async move { alice.events(&id, None).await })
    };
    let mut last_ckpt = Vec::new();
    for seg in 0..3u32 {
        let a = p.take().await;
        assert_eq!(a.segment, seg);
        let tag = format!("checkpoint {seg}");
        last_ckpt = checkpoint(&a, tag.as_bytes());
        let r = p.finish(&a, tag.as_bytes()).await;
        assert!(r.accepted);
        assert_eq!(r.job_done, seg == 2);
    }
    let view = alice.job(&job.id).await;
    assert_eq!(view.status, JobStatus::Succeeded);
    assert_eq!(
        (view.step, view.segments_done, view.segments_total),
        (30, 3, 3)
    );
    assert_eq!(view.checkpoint_sha256, Some(Sha256Hex::of(&last_ckpt)));
    assert_eq!(view.provider, None);
    // Nothing more to hand out.
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());

    let live = follower.await.unwrap();
    let replayed = alice.events(&job.id, None).await;
    assert_eq!(
        live.iter().map(|e| &e.2).collect::<Vec<_>>(),
        replayed.iter().map(|e| &e.2).collect::<Vec<_>>()
    );
    let ids: Vec<i64> = replayed.iter().map(|e| e.2.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (id, name, ev) in &replayed {
        assert_eq!(id, &ev.id.to_string());
        let json = serde_json::to_value(ev).unwrap();
        assert_eq!(name, json["type"].as_str().unwrap());
    }
    let kinds: Vec<&str> = replayed.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "checkpoint").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "assigned").count(), 3);
    assert_eq!(kinds.first(), Some(&"status"));
    assert!(matches!(
        replayed.last().unwrap().2.kind,
        JobEventKind::Status {
            status: JobStatus::Succeeded,
            ..
        }
    ));
    // Resuming after an id replays only what follows, then closes.
    let after = replayed[replayed.len() - 2].2.id;
    let tail = alice.events(&job.id, Some(after)).await;
    assert_eq!(tail.len(), 1);
    let resp = alice
        .http
        .get(format!("{}/v1/jobs/{}/events", alice.base, job.id))
        .bearer_auth(alice.token.as_deref().unwrap())
        .header("Last-Event-ID", after.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(parse_sse(&resp.text().await.unwrap()).len(), 1);

    let segments: Vec<SegmentView> = alice
        .get(&format!("/v1/jobs/{}/segments", job.id))
        .await
        .ok();
    assert_eq!(
        segments.iter().map(|s| s.segment).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(segments[2].end_step, 30);
    for w in segments.windows(2) {
        assert_eq!(
            w[1].commitment.commitment.prev,
            w[0].commitment.commitment.hash
        );
    }
    let (status, model) = alice
        .get_bytes(&format!("/v1/blobs/{}", Sha256Hex::of(&last_ckpt)))
        .await;
    assert_eq!((status.as_u16(), model), (200, last_ckpt.clone()));
    bob.get(&format!("/v1/blobs/{}", Sha256Hex::of(&last_ckpt)))
        .await
        .err(404);
    let providers: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    assert_eq!(providers[0].segments_committed, 3);
    tp.shutdown().await;
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_provider() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 2).await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"data").await;
    let a_rig = tp.provider("a").await;
    let first = a_rig.take().await;
    let ckpt0 = b"ckpt 0".to_vec();
    a_rig.finish(&first, &ckpt0).await;
    let lost = a_rig.take().await;
    assert_eq!(lost.segment, 1);
    // A stops heart-beating; B long-polls and gets the same segment once the
    // lease lapses.
    let b_rig = tp.provider("b").await;
    tp.expire_leases().await;
    let reply = b_rig.heartbeat(&[], 1, 10).await;
    assert_eq!(reply.assignments.len(), 1);
    let again = &reply.assignments[0];
    assert_ne!(again.task_id, lost.task_id);
    assert_eq!(
        (again.segment, again.start_step, again.end_step),
        (1, 10, 20)
    );
    assert_eq!(
        again.start_checkpoint_sha256,
        Some(Sha256Hex::of(&checkpoint(&first, &ckpt0)))
    );
    assert_eq!(again.prev_commitment, lost.prev_commitment);

    // A comes back: its task is cancelled and its commit refused.
    let r = a_rig.heartbeat(&[(lost.task_id.clone(), 15)], 0, 0).await;
    assert_eq!(r.cancel, vec![lost.task_id.clone()]);
    a_rig.client.upload(b"late").await;
    a_rig
        .commit(&lost.task_id, &a_rig.commit_for(&lost, b"late"))
        .await
        .err(409);
    let events = alice
        .get(&format!("/v1/jobs/{}", job.id))
        .await
        .ok::<JobView>();
    assert_eq!(events.provider, Some(b_rig.key.provider_id()));
    // B keeps its lease by heart-beating, then commits.
    for step in [12, 14, 16] {
        tp.advance(800);
        assert!(b_rig
            .heartbeat(&[(again.task_id.clone(), step)], 0, 0)
            .await
            .cancel
            .is_empty());
    }
    assert!(b_rig.finish(again, b"ckpt 1").await.accepted);
    let providers: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let a_view = providers
        .iter()
        .find(|v| v.id == a_rig.key.provider_id())
        .unwrap();
    assert_eq!(a_view.status, ProviderStatus::Disconnected);

    // The log tells the story.
    let resp = alice
        .http
        .get(format!("{}/v1/jobs/{}/events", alice.base, job.id))
        .bearer_auth(alice.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    // The job is still running: read what is there, then drop the stream.
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt;
    while let Ok(Some(chunk)) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let kinds: Vec<String> = parse_sse(&text).into_iter().map(|e| e.1).collect();
    assert!(kinds.contains(&"lease_expired".to_owned()), "{kinds:?}");
    tp.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_job_cancels_its_task() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"data").await;
    let p = tp.provider("rig").await;
    let a = p.take().await;
    let view: JobView = alice
        .post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok();
    assert_eq!(view.status, JobStatus::Cancelled);
    let r = p.heartbeat(&[(a.task_id.clone(), 5)], 1, 0).await;
    assert_eq!(r.cancel, vec![a.task_id.clone()]);
    assert!(r.assignments.is_empty());
    p.client.upload(b"ckpt").await;
    p.commit(&a.task_id, &p.commit_for(&a, b"ckpt"))
        .await
        .err(409);
    // Cancelling again is harmless; the stream of a final job replays and closes.
    let again: JobView = alice
        .post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok();
    assert_eq!(again.status, JobStatus::Cancelled);
    let events = alice.events(&job.id, None).await;
    assert!(matches!(
        events.last().unwrap().2.kind,
        JobEventKind::Status {
            status: JobStatus::Cancelled,
            ..
        }
    ));
    tp.shutdown().await;
}

#[tokio::test]
async fn concurrent_providers_never_share_a_task() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let mut jobs = HashSet::new();
    for i in 0..8 {
        jobs.insert(alice.submit(SPEC, format!("data {i}").as_bytes()).await.id);
    }
    let mut rigs = Vec::new();
    for i in 0..4 {
        rigs.push(tp.provider(&format!("rig{i}")).await);
    }
    let mut handles = Vec::new();
    for rig in rigs {
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..4 {
                let r = rig.heartbeat(&[], 2, 0).await;
                got.extend(r.assignments);
            }
            got
        }));
    }
    let mut tasks = HashSet::new();
    let mut segments = HashSet::new();
    for h in handles {
        for a in h.await.unwrap() {
            assert!(
                tasks.insert(a.task_id.clone()),
                "task {} leased twice",
                a.task_id
            );
            assert!(
                segments.insert((a.job_id.clone(), a.segment)),
                "segment leased twice"
            );
        }
    }
    assert_eq!(tasks.len(), 8);
    assert_eq!(
        segments.iter().map(|s| s.0.clone()).collect::<HashSet<_>>(),
        jobs
    );
    tp.shutdown().await;
}

#[tokio::test]
async fn re_registering_resumes_or_drops_tasks() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 2).await;
    let alice = tp.customer("alice").await;
    alice.submit(SPEC, b"data 1").await;
    alice.submit(SPEC, b"data 2").await;
    let mut p = tp.provider("rig").await;
    let r = p.heartbeat(&[], 2, 0).await;
    assert_eq!(r.assignments.len(), 2);
    let (t1, t2) = (r.assignments[0].clone(), r.assignments[1].clone());
    let bogus = TaskId::random(); // well-formed, unknown to the pool
    let reg = p.register(vec![t1.task_id.clone(), bogus.clone()]).await;
    assert_eq!(reg.resume, vec![t1.clone()]);
    assert_eq!(reg.dropped, vec![bogus]);
    // t2 was leased but not claimed (the provider died before writing it
    // down): it is released at once and its segment goes to someone else.
    let third = tp.provider("third").await;
    let got = third.take().await;
    assert_eq!((&got.job_id, got.segment), (&t2.job_id, t2.segment));
    assert_ne!(got.task_id, t2.task_id);
    // Another provider cannot claim this provider's tasks.
    let mut other = tp.provider("other").await;
    let reg = other.register(vec![t2.task_id.clone()]).await;
    assert!(reg.resume.is_empty());
    assert_eq!(reg.dropped, vec![t2.task_id.clone()]);
    // Once the lease has lapsed, the task is dropped.
    tp.advance(u64::from(tp.pool.config().lease_seconds) * 1000 + 1);
    let reg = p.register(vec![t2.task_id.clone()]).await;
    assert!(reg.resume.is_empty());
    assert_eq!(reg.dropped, vec![t2.task_id.clone()]);
    tp.shutdown().await;
}

#[tokio::test]
async fn failures_requeue_then_fail_the_job() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"data").await;
    let rigs = [
        tp.provider("rig-a").await,
        tp.provider("rig-b").await,
        tp.provider("rig-c").await,
    ];
    for (round, p) in rigs.iter().enumerate() {
        let a = p.take().await;
        assert_eq!(a.segment, 0);
        let r = p
            .client
            .post(
                &format!("/v1/tasks/{}/fail", a.task_id),
                &TaskFailed {
                    reason: format!("oom {round}"),
                },
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        // Failing it twice is a conflict.
        p.client
            .post(
                &format!("/v1/tasks/{}/fail", a.task_id),
                &TaskFailed {
                    reason: "again".into(),
                },
            )
            .await
            .err(409);
        // A provider never gets back a segment it failed.
        if round < 2 {
            assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
        }
    }
    let view = alice.job(&job.id).await;
    assert_eq!(view.status, JobStatus::Failed);
    assert!(
        view.error.as_deref().unwrap_or("").contains("oom 2"),
        "{:?}",
        view.error
    );
    for p in &rigs {
        assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
    }
    let events = alice.events(&job.id, None).await;
    assert_eq!(events.iter().filter(|e| e.1 == "task_failed").count(), 3);
    assert!(matches!(
        &events.last().unwrap().2.kind,
        JobEventKind::Status {
            status: JobStatus::Failed,
            reason: Some(_)
        }
    ));
    tp.shutdown().await;
}

#[tokio::test]
async fn long_poll_wakes_when_work_arrives_and_devices_match() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let mut gpu = tp.provider("gpu").await;
    gpu.device = gradpool_core::hardware::DeviceKind::Cuda;
    gpu.register(vec![]).await;
    let cpu = tp.provider("cpu").await;
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let r = cpu.heartbeat(&[], 1, 10).await;
        (started.elapsed(), r, cpu)
    });
    // Work arrives only once the CPU rig's heartbeat waits for it.
    while tp.pool.long_polls() == 0 {
        tokio::task::yield_now().await;
    }
    let cuda_spec = SPEC.replace(
        "[train]",
        "[resources]\ndevice = \"cuda\"\nmin_memory_gib = 0\n[train]",
    );
    let job = alice.submit(&cuda_spec, b"data").await;
    // The CPU rig keeps waiting; the GPU rig gets the job.
    let a = gpu.take().await;
    assert_eq!(a.job_id, job.id);
    let cpu_job = alice.submit(SPEC, b"data").await;
    let (elapsed, r, _cpu) = poll.await.unwrap();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(r.assignments.len(), 1);
    assert_eq!(r.assignments[0].job_id, cpu_job.id);
    tp.shutdown().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"data").await;
    let p = tp.provider("rig").await;
    let a = p.take().await;
    let tp = tp.restart().await;
    let alice = Client::new(&tp.url, alice.token.clone());
    let view = alice.job(&job.id).await;
    assert_eq!(
        (view.status, view.provider),
        (JobStatus::Running, Some(p.key.provider_id()))
    );
    // The provider's session survives too, and so does its lease.
    let p = TestProvider {
        client: Client::new(&tp.url, p.client.token.clone()),
        ..p
    };
    assert!(p
        .heartbeat(&[(a.task_id.clone(), 1)], 0, 0)
        .await
        .cancel
        .is_empty());
    assert!(p.finish(&a, b"ckpt").await.accepted);
    tp.shutdown().await;
}

#[tokio::test]
async fn blobs_larger_than_axums_default_limit_stream_through() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sha = alice.upload(&big).await;
    let (status, got) = alice.get_bytes(&format!("/v1/blobs/{sha}")).await;
    assert_eq!(status, 200);
    assert!(got == big, "downloaded bytes differ");
    tp.shutdown().await;
}

#[tokio::test]
async fn a_long_event_log_replays_whole_and_in_order() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let job = alice.submit(SPEC, b"data").await;
    let p = tp.provider("rig").await;
    let a = p.take().await;
    // More events than one replay page.
    for step in 1..=600u64 {
        let r = p
            .client
            .post(
                &format!("/v1/tasks/{}/progress", a.task_id),
                &Progress {
                    step,
                    loss: 4.0,
                    tokens_per_sec: 1.0,
                },
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let _: JobView = alice
        .post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok();
    let events = alice.events(&job.id, None).await;
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.2.kind {
            JobEventKind::Progress { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=600).collect::<Vec<_>>());
    assert!(events.windows(2).all(|w| w[0].2.id < w[1].2.id));
    assert!(matches!(
        events.last().unwrap().2.kind,
        JobEventKind::Status {
            status: JobStatus::Cancelled,
            ..
        }
    ));
    // Resuming after an id in the middle gives exactly the rest.
    let middle = events[300].2.id;
    let rest = alice.events(&job.id, Some(middle)).await;
    assert_eq!(rest.len(), events.len() - 301);
    tp.shutdown().await;
}

/// A provider that reports a pause gets no work, whatever capacity it
/// reports, and is listed as paused with the reason; resuming brings work.
#[tokio::test]
async fn a_paused_provider_gets_no_work_until_it_resumes() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let mut p = tp.provider("night rig").await;
    c.submit(SPEC, b"some text to train on").await;

    p.paused = Some("schedule".into());
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let views: Vec<ProviderView> = c.get("/v1/providers").await.ok();
    let view = views.iter().find(|v| v.name == "night rig").unwrap();
    assert_eq!(view.status, ProviderStatus::Paused);
    assert_eq!(view.paused_reason.as_deref(), Some("schedule"));

    p.paused = None;
    let a = p.take().await;
    assert_eq!(a.segment, 0);
    let views: Vec<ProviderView> = c.get("/v1/providers").await.ok();
    let view = views.iter().find(|v| v.name == "night rig").unwrap();
    assert_eq!(
        (view.status, view.paused_reason.as_deref()),
        (ProviderStatus::Sharing, None)
    );
}

/// A task handed back by a pausing provider is queued again at once and is
/// not a failure: the same provider may take it again.
#[tokio::test]
async fn a_released_task_is_requeued_and_not_a_failure() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let p = tp.provider("hot rig").await;
    let job = c.submit(SPEC, b"some text to train on").await;
    let a = p.take().await;
    let r = p
        .client
        .post(
            &format!("/v1/tasks/{}/release", a.task_id),
            &TaskFailed {
                reason: "temperature".into(),
            },
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    // Released twice: the lease is gone.
    p.client
        .post(
            &format!("/v1/tasks/{}/release", a.task_id),
            &TaskFailed {
                reason: "temperature".into(),
            },
        )
        .await
        .err(409);
    let again = p.take().await;
    assert_eq!(again.segment, a.segment);
    assert_ne!(again.task_id, a.task_id);
    assert_eq!(c.job(&job.id).await.status, JobStatus::Running);
}

/// A job that names a region trains only on providers whose owners
/// declared it; a queued job says why the others do not take it, and a
/// malformed region is refused at registration, by name.
#[tokio::test]
async fn a_job_keeps_to_its_region() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let spec = format!("{SPEC}[resources]\nregion = \"eu-west\"\n");
    let job = alice.submit(&spec, b"some text to train on").await;
    let elsewhere = tp
        .provider_with("us-rig", |p| p.region = Some("us-east".into()))
        .await;
    let unsaid = tp.provider("rig").await;
    assert!(elsewhere.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert!(unsaid.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let waiting = alice.job(&job.id).await.waiting.unwrap_or_default();
    assert!(
        waiting.contains("outside the job's region `eu-west`"),
        "{waiting}"
    );
    let here = tp
        .provider_with("eu-rig", |p| p.region = Some("eu-west".into()))
        .await;
    let a = here.take().await;
    assert_eq!(a.job_id, job.id);
    // A job without a region goes anywhere.
    let anywhere = alice.submit(SPEC, b"more text to train on").await;
    assert_eq!(elsewhere.take().await.job_id, anywhere.id);

    let mut bad = tp.provider("bad").await;
    bad.region = Some("EU West".into());
    let body = bad.register_body(vec![]).await;
    let e = bad
        .client
        .post("/v1/providers/register", &body)
        .await
        .err(400);
    assert!(e.message.starts_with("region:"), "{}", e.message);
}

/// A registration challenge one process of a pool issued registers at
/// another (the key is the pool's, kept in its database), once: on
/// PostgreSQL, where several processes serve one pool, a nonce used at one
/// is refused at every other.
#[tokio::test]
async fn a_challenge_from_one_process_registers_at_another_once() {
    let tp = TestPool::start().await;
    let other = tp.another_process().await;
    let p = tp.provider("rig").await;
    let body = p.register_body(vec![]).await;
    let reg: Registered = other
        .anon()
        .post("/v1/providers/register", &body)
        .await
        .ok();
    assert_eq!(reg.provider_id, p.key.provider_id());
    other
        .anon()
        .post("/v1/providers/register", &body)
        .await
        .err(401);
    if tp.pool.dialect() == gradpool_pool::db::Dialect::Postgres {
        tp.anon()
            .post("/v1/providers/register", &body)
            .await
            .err(401);
    }
}

#[tokio::test]
async fn the_dashboards_routes_show_what_each_caller_may_see() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let mallory = tp.customer("mallory").await;
    let job = alice.submit(SPEC, b"some text").await;
    let p = tp.provider("rig").await;

    // The overview is anyone's: aggregates, and no job of anyone.
    let o: PoolOverview = tp.anon().get("/v1/overview").await.ok();
    assert_eq!(o.jobs["queued"], 1);
    assert_eq!(o.providers["idle"], 1);
    assert_eq!(o.devices["cpu"], 1);
    assert_eq!(o.pool.providers_connected, 1);
    assert!(o.recent_verdicts.is_empty());
    let text = tp
        .anon()
        .req(reqwest::Method::GET, "/v1/overview")
        .send()
        .await
        .unwrap();
    assert!(!text.text().await.unwrap().contains(job.id.as_str()));

    // One provider, for anyone with a key; an unknown one is not found.
    let id = p.key.provider_id();
    let one: ProviderView = mallory.get(&format!("/v1/providers/{id}")).await.ok();
    assert_eq!((one.id, one.name.as_str()), (id.clone(), "rig"));
    tp.anon().get(&format!("/v1/providers/{id}")).await.err(401);
    let missing = mallory
        .get("/v1/providers/prov_0000000000000000")
        .await
        .err(404);
    assert_eq!(missing.code, "not_found");

    // The model: none before a checkpoint; the owner's only.
    let path = format!("/v1/jobs/{}/model", job.id);
    assert_eq!(alice.get(&path).await.err(409).code, "conflict");
    let a = p.take().await;
    let ckpt = checkpoint(&a, b"checkpoint 0");
    p.client.upload(&ckpt).await;
    let _: CommitReply = p.commit(&a.task_id, &p.commit_for(&a, &ckpt)).await.ok();
    mallory.get(&path).await.err(404);
    let (status, model) = alice.get_bytes(&path).await;
    assert_eq!(status, 200);
    assert_eq!(model, gradpool_core::checkpoint::model_file(&ckpt).unwrap());
    // The weights without AdamW's two moments: a third of the checkpoint.
    assert!(
        model.len() < ckpt.len() / 2,
        "{} of {}",
        model.len(),
        ckpt.len()
    );
    let view = alice.job(&job.id).await;
    assert_eq!(view.providers, 1);

    // The page and its files, under a policy that allows this origin only.
    let page = tp
        .anon()
        .req(reqwest::Method::GET, "/")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let etag = page.headers()["etag"].clone();
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let again = tp
        .anon()
        .req(reqwest::Method::GET, "/")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    for file in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
        let r = tp
            .anon()
            .req(reqwest::Method::GET, &format!("/assets/{file}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
    }
    let r = tp
        .anon()
        .req(reqwest::Method::GET, "/assets/..%2Fsrc%2Flib.rs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_node_proof_opens_a_read_only_view_of_its_own_provider() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let p = tp.provider("rig").await;
    let other = tp.provider("other").await;

    let signed = signed_nonce(&tp, &p, "view").await;
    let opened: ViewOpened = tp.anon().post("/v1/providers/views", &signed).await.ok();
    assert!(opened.token.starts_with("gpv_"));
    assert_eq!(opened.provider_id, p.key.provider_id());
    // The nonce is spent.
    tp.anon()
        .post("/v1/providers/views", &signed)
        .await
        .err(401);
    // A proof made for another purpose opens nothing.
    let earnings = signed_nonce(&tp, &p, "earnings").await;
    tp.anon()
        .post("/v1/providers/views", &earnings)
        .await
        .err(401);

    let owner = tp.anon().with_token(&opened.token);
    let view: RigView = owner.get("/v1/providers/me").await.ok();
    assert_eq!(view.provider.id, p.key.provider_id());
    assert_eq!(view.provider.name, "rig");
    assert!(view
        .history
        .iter()
        .any(|c| c.status == gradpool_core::state::ProviderChange::Registered));
    assert_eq!(view.earnings.provider_id, p.key.provider_id());
    assert!(view.verdicts.is_empty());

    // It reads that page and does nothing else; nobody else's key reads it.
    assert_eq!(owner.get("/v1/jobs").await.err(401).code, "unauthorized");
    owner.get("/v1/providers").await.err(401);
    alice.get("/v1/providers/me").await.err(401);
    other.client.get("/v1/providers/me").await.err(401);
    tp.anon()
        .with_token("gpv_0000000000000000000000000000000000000000000000000000000000000000")
        .get("/v1/providers/me")
        .await
        .err(401);

    // It expires.
    tp.advance(13 * 3600 * 1000);
    let expired = owner.get("/v1/providers/me").await.err(401);
    assert!(expired.message.contains("expired"), "{}", expired.message);
}

#[tokio::test]
async fn telemetry_is_sampled_once_a_minute_kept_an_hour_and_shown_as_configured() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let p = tp.provider("rig").await;
    let id = p.key.provider_id();
    let path = format!("/v1/providers/{id}/telemetry");
    p.heartbeat(&[], 0, 0).await;

    assert_eq!(tp.pool.sample_telemetry().await.unwrap(), 1);
    // The same minute again keeps nothing more.
    assert_eq!(tp.pool.sample_telemetry().await.unwrap(), 0);
    tp.advance(60_000);
    p.heartbeat(&[], 0, 0).await;
    assert_eq!(tp.pool.sample_telemetry().await.unwrap(), 1);
    let samples: Vec<TelemetrySample> = alice.get(&path).await.ok();
    assert_eq!(samples.len(), 2);
    assert!(samples[0].at < samples[1].at);
    // Not for anyone without a key, here; an unknown provider is not found.
    tp.anon().get(&path).await.err(401);
    alice
        .get("/v1/providers/prov_0000000000000000/telemetry")
        .await
        .err(404);

    // A provider gone quiet is not sampled; an hour later the old samples go.
    tp.advance(2 * 3_600_000);
    assert_eq!(tp.pool.sample_telemetry().await.unwrap(), 0);
    let samples: Vec<TelemetrySample> = alice.get(&path).await.ok();
    assert!(samples.is_empty(), "{samples:?}");

    // A pool that makes provider pages public shows them to anyone.
    let public = TestPool::start_with(|c| c.public_providers = true).await;
    let q = public.provider("open-rig").await;
    let one: ProviderView = public
        .anon()
        .get(&format!("/v1/providers/{}", q.key.provider_id()))
        .await
        .ok();
    assert_eq!(one.name, "open-rig");
    let none: Vec<TelemetrySample> = public
        .anon()
        .get(&format!("/v1/providers/{}/telemetry", q.key.provider_id()))
        .await
        .ok();
    assert!(none.is_empty());
}
