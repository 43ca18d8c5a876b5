//! What a hostile client tried against the pool, each closed: numbers that
//! overflow, floods of anonymous requests, heartbeats that ask too much,
//! impossible compute times, and work for a paused provider.

mod common;

use common::*;
use gradpool_core::hardware::Telemetry;
use gradpool_core::wire::*;
use gradpool_pool::db::Dialect;
use gradpool_pool::ThrottleConfig;
use serde_json::{json, Value};

/// A commit with one loss replaced by `loss`, sent as raw JSON (a typed
/// `f32` cannot hold 1e39).
async fn commit_with_loss(p: &TestProvider, a: &Assignment, loss: Value) -> Reply {
    let ckpt = checkpoint(a, b"checkpoint 0");
    p.client.upload(&ckpt).await;
    let mut body = serde_json::to_value(p.commit_for(a, &ckpt)).unwrap();
    body["loss_trace"][3] = loss;
    p.client
        .post(&format!("/v1/tasks/{}/commit", a.task_id), &body)
        .await
}

#[tokio::test]
async fn a_loss_beyond_f32_or_below_zero_is_refused_and_the_job_reads_whole() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let p = tp.provider("liar").await;
    let job = c.submit(SPEC, b"some text to train on").await;
    let a = p.take().await;

    let err = commit_with_loss(&p, &a, json!(1e39)).await.err(400);
    assert!(err.message.contains("loss_trace"), "{}", err.message);
    assert!(err.message.contains("not a finite"), "{}", err.message);
    let err = commit_with_loss(&p, &a, json!(-0.5)).await.err(400);
    assert!(err.message.contains("loss_trace[3]"), "{}", err.message);
    // The held-out loss too.
    for (bad, says) in [(json!(1e39), "not a finite"), (json!(-2.0), "eval_loss")] {
        let ckpt = checkpoint(&a, b"checkpoint 0");
        let mut body = serde_json::to_value(p.commit_for(&a, &ckpt)).unwrap();
        body["eval_loss"] = bad;
        let err = p
            .client
            .post(&format!("/v1/tasks/{}/commit", a.task_id), &body)
            .await
            .err(400);
        assert!(err.message.contains(says), "{}", err.message);
    }

    // Progress reports are held to the same rule.
    let progress = |loss: Value| json!({"step": 1, "loss": loss, "tokens_per_sec": 10.0});
    for bad in [json!(1e39), json!(-1.0)] {
        p.client
            .post(&format!("/v1/tasks/{}/progress", a.task_id), &progress(bad))
            .await
            .err(400);
    }

    // Nothing was stored: the honest commit is accepted and every read of
    // the job answers.
    let reply: CommitReply = p.finish(&a, b"checkpoint 0").await;
    assert!(reply.accepted);
    let segments: Vec<SegmentView> = c.get(&format!("/v1/jobs/{}/segments", job.id)).await.ok();
    assert_eq!(segments.len(), 1);
    assert!(segments[0].loss_trace.iter().all(|l| l.is_finite()));
    c.post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok::<JobView>();
    let events = c.events(&job.id, None).await;
    assert!(events
        .iter()
        .any(|e| matches!(e.2.kind, JobEventKind::Checkpoint { .. })));
}

/// Rows a writer stored (an older pool, before these checks) never make a
/// read fail: the segments list answers and the event stream goes on.
#[tokio::test]
async fn stored_non_finite_numbers_do_not_break_reads() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let p = tp.provider("old").await;
    let job = c.submit(SPEC, b"some text to train on").await;
    let a = p.take().await;
    p.finish(&a, b"checkpoint 0").await;
    let db = tp.pool.database();
    sqlx::query("UPDATE commitments SET loss_trace = '[4.0, null, 3.9]' WHERE job_id = $1")
        .bind(job.id.as_str())
        .execute(db)
        .await
        .unwrap();
    let null_loss = match tp.pool.dialect() {
        Dialect::Sqlite => "json_set(body, '$.loss', json('null'))",
        Dialect::Postgres => "CAST(jsonb_set(CAST(body AS jsonb), '{loss}', 'null') AS text)",
    };
    sqlx::query(&format!(
        "UPDATE job_events SET body = {null_loss} \
         WHERE job_id = $1 AND body LIKE '%\"checkpoint\"%'"
    ))
    .bind(job.id.as_str())
    .execute(db)
    .await
    .unwrap();

    let segments: Vec<SegmentView> = c.get(&format!("/v1/jobs/{}/segments", job.id)).await.ok();
    assert_eq!(segments.len(), 1);
    assert!(segments[0].loss_trace.is_empty());
    c.post(&format!("/v1/jobs/{}/cancel", job.id), &())
        .await
        .ok::<JobView>();
    // The stream skips the unreadable event and still ends with the
    // job's final status.
    let events = c.events(&job.id, None).await;
    assert!(!events
        .iter()
        .any(|e| matches!(e.2.kind, JobEventKind::Checkpoint { .. })));
    assert!(matches!(
        events.last().unwrap().2.kind,
        JobEventKind::Status {
            status: JobStatus::Cancelled,
            ..
        }
    ));
}

#[tokio::test]
async fn impossible_telemetry_is_refused_with_its_field() {
    let tp = TestPool::start().await;
    let p = tp.provider("sensor").await;
    let hb = |telemetry: Value| json!({"telemetry": telemetry, "running": [], "capacity": 0, "wait_seconds": 0});
    let base = serde_json::to_value(Telemetry::default()).unwrap();
    for (field, value) in [
        ("temperature_c", json!(1e39)),
        ("temperature_c", json!(5000.0)),
        ("load", json!(-1.0)),
        ("utilization_pct", json!(250.0)),
        ("power_w", json!(-3.0)),
    ] {
        let mut t = base.clone();
        t[field] = value.clone();
        let err = p
            .client
            .post("/v1/providers/heartbeat", &hb(t))
            .await
            .err(400);
        assert!(
            err.message.contains(field),
            "{field}={value}: {}",
            err.message
        );
    }
    p.client
        .post("/v1/providers/heartbeat", &hb(base))
        .await
        .ok::<HeartbeatReply>();
}

/// A heartbeat may name at most `MAX_TASKS_PER_PROVIDER` tasks: one that
/// lists 20,000 (1.2 MB, under the body limit) is refused before it
/// touches the database.
#[tokio::test]
async fn a_heartbeat_listing_thousands_of_tasks_is_refused() {
    let tp = TestPool::start().await;
    let p = tp.provider("greedy").await;
    let running: Vec<Value> = (0..20_000)
        .map(|i| json!({"task_id": format!("task_{i:024x}"), "step": 0}))
        .collect();
    let body = json!({"telemetry": Telemetry::default(), "running": running, "capacity": 0, "wait_seconds": 0});
    let err = p
        .client
        .post("/v1/providers/heartbeat", &body)
        .await
        .err(400);
    assert!(
        err.message.contains("running: 20000 tasks"),
        "{}",
        err.message
    );
    let body = json!({"telemetry": Telemetry::default(), "running": [], "capacity": 100_000, "wait_seconds": 0});
    let err = p
        .client
        .post("/v1/providers/heartbeat", &body)
        .await
        .err(400);
    assert!(err.message.contains("capacity"), "{}", err.message);
}

#[tokio::test]
async fn an_impossible_compute_time_is_refused() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let mut p = tp.provider("padder").await;
    c.submit(SPEC, b"some text to train on").await;
    let a = p.take().await;
    let ckpt = checkpoint(&a, b"checkpoint 0");
    p.client.upload(&ckpt).await;
    // An hour of compute, a moment after the lease.
    p.compute_ms = 3_600_000;
    let err = p
        .commit(&a.task_id, &p.commit_for(&a, &ckpt))
        .await
        .err(400);
    assert!(err.message.contains("compute_ms"), "{}", err.message);
    p.compute_ms = 5;
    assert!(p.finish(&a, b"checkpoint 0").await.accepted);
}

/// One client flooding the anonymous routes is throttled; another client
/// registers and proves its node key as usual, and issuing nonces stores
/// nothing another client needs.
#[tokio::test]
async fn a_flood_of_challenges_locks_out_nobody_else() {
    let tp = TestPool::start_with(|c| {
        c.throttle = ThrottleConfig {
            anonymous_per_minute: 50,
            ..ThrottleConfig::unlimited()
        }
    })
    .await;
    let flooder = Client::from_address(&tp.url, None, "127.0.0.1".parse().unwrap());
    let mut refused = 0;
    for _ in 0..200 {
        let r = flooder.post("/v1/providers/challenge", &()).await;
        match r.status.as_u16() {
            200 => {}
            429 => refused += 1,
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!(refused, 150);
    let err = flooder.post("/v1/providers/challenge", &()).await.err(429);
    assert_eq!(err.code, "rate_limited");
    assert!(err.message.contains("retry in"), "{}", err.message);

    // Another address is not affected: it registers (a challenge and a
    // registration) and reads its earnings with a signed nonce.
    let mut p = tp
        .provider_with("honest", |p| {
            p.client = Client::from_address(&tp.url, None, "127.0.0.2".parse().unwrap())
        })
        .await;
    p.register(vec![]).await;
    let challenge: RegistrationChallenge = p.client.post("/v1/providers/challenge", &()).await.ok();
    let time = time_now();
    let public_key = p.key.public_key();
    let signed = SignedNonce {
        signature: p.key.sign(&gradpool_core::commitment::signed_nonce_message(
            "earnings",
            &public_key,
            time,
            &challenge.nonce,
        )),
        public_key,
        time,
        nonce: challenge.nonce.clone(),
    };
    p.client
        .post("/v1/providers/earnings", &signed)
        .await
        .ok::<Earnings>();
    // A nonce is single-use.
    p.client
        .post("/v1/providers/earnings", &signed)
        .await
        .err(401);
}

#[tokio::test]
async fn sign_ups_and_the_faucet_are_throttled_per_client() {
    let tp = TestPool::start_with(|c| {
        c.throttle = ThrottleConfig {
            signups_per_hour: 5,
            faucet_per_hour: 3,
            ..ThrottleConfig::unlimited()
        }
    })
    .await;
    let a = Client::from_address(&tp.url, None, "127.0.0.3".parse().unwrap());
    let mut keys = Vec::new();
    for i in 0..5 {
        let created: AccountCreated = a
            .post(
                "/v1/accounts",
                &CreateAccount {
                    name: format!("a{i}"),
                },
            )
            .await
            .ok();
        keys.push(created.api_key);
    }
    let err = a
        .post("/v1/accounts", &CreateAccount { name: "a5".into() })
        .await
        .err(429);
    assert_eq!(err.code, "rate_limited");
    let b = Client::from_address(&tp.url, None, "127.0.0.4".parse().unwrap());
    b.post("/v1/accounts", &CreateAccount { name: "b".into() })
        .await
        .ok::<AccountCreated>();

    // Three faucet calls from one address, whatever the account.
    let faucet = |key: &str| {
        Client::from_address(&tp.url, Some(key.to_owned()), "127.0.0.3".parse().unwrap())
    };
    for key in &keys[..3] {
        faucet(key)
            .post("/v1/account/faucet", &json!({"amount": 1000}))
            .await
            .ok::<Balance>();
    }
    faucet(&keys[3])
        .post("/v1/account/faucet", &json!({"amount": 1000}))
        .await
        .err(429);
}

/// The rule "a paused provider is never given work" holds in the claim
/// itself: a long-poll opened while paused gets nothing, even when work
/// is queued during the wait.
#[tokio::test]
async fn a_paused_provider_whose_long_poll_is_open_gets_no_work() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let mut p = tp.provider("paused rig").await;
    p.paused = Some("schedule".into());
    let poll = tokio::spawn(async move { p.heartbeat_reply(&[], 1, 2).await });
    // Work arrives while the heartbeat waits; the wait re-claims.
    let job = c.submit(SPEC, b"some text to train on").await;
    let reply: HeartbeatReply = poll.await.unwrap().ok();
    assert!(reply.assignments.is_empty(), "{:?}", reply.assignments);
    assert_eq!(c.job(&job.id).await.status, JobStatus::Queued);
}

/// A one-segment job, paid: every kind of garbage checkpoint is refused
/// before anything is stored or paid, and the job never ends on one.
#[tokio::test]
async fn garbage_checkpoints_are_neither_accepted_nor_paid() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    c.post(
        "/v1/account/faucet",
        &json!({"amount": 1_000_000_000_000u64}),
    )
    .await
    .ok::<Balance>();
    let spec = SPEC.replace("steps = 30", "steps = 10")
        + "[budget]\ntotal_xmr = \"0.5\"\nmax_price_xmr_per_hour = \"3.6\"\n";
    let job = c.submit(&spec, b"some text to train on").await;
    let mut p = tp
        .provider_with("forger", |p| p.price = "3.6".parse().unwrap())
        .await;
    p.compute_ms = 5;
    let a = p.take().await;

    let good = checkpoint(&a, b"honest");
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let forgeries: Vec<(&str, Vec<u8>)> = vec![
        ("header length 2^60", huge_header),
        ("truncated", good[..good.len() - 8].to_vec()),
        (
            "mis-shaped",
            checkpoint_with(&a, b"x", |t, _| {
                let (shape, _) = t.get_mut("param.head.weight").unwrap();
                shape.reverse();
            }),
        ),
        (
            "all NaN",
            checkpoint_with(&a, b"x", |t, _| {
                for (_, data) in t.values_mut() {
                    data.iter_mut().for_each(|x| *x = f32::NAN);
                }
            }),
        ),
        (
            "a tensor missing",
            checkpoint_with(&a, b"x", |t, _| {
                t.remove("adam_v.ln_f.bias");
            }),
        ),
        (
            "another step",
            checkpoint_with(&a, b"x", |_, m| {
                m.insert("step".into(), "20".into());
            }),
        ),
        (
            "another model",
            checkpoint_with(&a, b"x", |_, m| {
                m.insert(
                    "model".into(),
                    json!({"kind": "mlp", "inputs": 1, "hidden": [], "classes": 2}).to_string(),
                );
            }),
        ),
    ];
    for (what, bytes) in &forgeries {
        p.client.upload(bytes).await;
        let r = p.commit(&a.task_id, &p.commit_for(&a, bytes)).await;
        let err = r.err(400);
        assert!(
            err.message.contains("checkpoint refused"),
            "{what}: {}",
            err.message
        );
    }
    // The wrong dtype and a 10¹²×10¹² shape: the header rewritten by hand.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + n])
        .unwrap()
        .trim_end()
        .to_owned();
    let with_header = |h: String| {
        let mut h = h;
        while !h.len().is_multiple_of(8) {
            h.push(' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&good[8 + n..]);
        out
    };
    let c_width = match &a.model {
        gradpool_core::model::ModelMeta::Gpt { n_embd, .. } => *n_embd,
        other => panic!("{other:?}"),
    };
    for (what, bytes) in [
        (
            "wrong dtype",
            with_header(header.replacen("\"F32\"", "\"I32\"", 1)),
        ),
        (
            "10^12 x 10^12",
            with_header(header.replacen(
                &format!("\"shape\":[{c_width}]"),
                "\"shape\":[1000000000000,1000000000000]",
                1,
            )),
        ),
    ] {
        p.client.upload(&bytes).await;
        let err = p
            .commit(&a.task_id, &p.commit_for(&a, &bytes))
            .await
            .err(400);
        assert!(
            err.message.contains("checkpoint refused"),
            "{what}: {}",
            err.message
        );
    }

    // Nothing accepted, nothing paid.
    let view = c.job(&job.id).await;
    assert_eq!((view.status, view.segments_done), (JobStatus::Running, 0));
    assert_eq!(view.spent, gradpool_core::Piconero::ZERO);
    assert!(earnings(&tp, &p).await.pending == gradpool_core::Piconero::ZERO);
    // The honest checkpoint still goes through.
    assert!(p.finish(&a, b"honest").await.job_done);
    assert_eq!(c.job(&job.id).await.status, JobStatus::Succeeded);
}

/// A spec with every field at its maximum is refused at submit with the
/// memory it would take; one larger than the largest device of the pool's
/// providers too; one that fits says how big it is.
#[tokio::test]
async fn a_job_no_device_can_hold_is_refused_at_submit() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let data = c.upload(b"some text to train on").await;
    let submit = |spec: String| {
        let c = c.clone();
        let data = data.clone();
        async move {
            c.post(
                "/v1/jobs",
                &SubmitJob {
                    spec_toml: spec,
                    data_sha256: data,
                    booking: None,
                    sealed_keys: Vec::new(),
                    data_shape: None,
                },
            )
            .await
        }
    };
    let maxed = r#"
name = "everything at its maximum"
[model]
kind = "gpt"
n_layer = 256
n_head = 16
n_embd = 16384
block_size = 65536
[data]
format = "text"
[train]
seed = 1
steps = 10
batch_size = 65536
checkpoint_every = 10
lr = 0.001
"#;
    let err = submit(maxed.into()).await.err(400);
    assert_eq!(err.code, "invalid_spec");
    assert!(err.message.contains("needs about"), "{}", err.message);
    assert!(
        err.message.contains("PiB") || err.message.contains("TiB"),
        "{}",
        err.message
    );

    // A model of a few GiB, more than the only provider's 1 GiB device.
    tp.provider_with("small", |p| p.memory_bytes = 1 << 30)
        .await;
    let big = SPEC
        .replace("n_layer = 1", "n_layer = 8")
        .replace("n_embd = 8", "n_embd = 1024");
    let err = submit(big).await.err(400);
    assert!(err.message.contains("largest device"), "{}", err.message);

    let fits: JobView = submit(SPEC.into()).await.ok();
    assert!(fits.parameters.unwrap() > 0);
    assert!(fits.memory_bytes.unwrap() < 1 << 30);
}

/// A signed time at the ends of `i64` (found by schemathesis against
/// `/v1/openapi.json`: the skew check overflowed and the connection
/// dropped) is refused as too far from the pool's clock, on every route
/// that takes one, and the pool carries on.
#[tokio::test]
async fn a_signed_time_at_the_ends_of_i64_is_refused() {
    let tp = TestPool::start().await;
    let p = tp.provider("far").await;
    for time in [i64::MIN, i64::MIN + 1, i64::MAX] {
        let mut body = serde_json::to_value(p.register_body(Vec::new()).await).unwrap();
        body["time"] = json!(time);
        let err = p
            .client
            .post("/v1/providers/register", &body)
            .await
            .err(401);
        assert!(err.message.contains("more than 300 s"), "{}", err.message);
        let signed = json!({"public_key": p.key.public_key(), "time": time, "nonce": "00",
                            "signature": "00".repeat(64)});
        for path in ["/v1/providers/earnings", "/v1/providers/status"] {
            let err = p.client.post(path, &signed).await.err(401);
            assert!(err.message.contains("too far"), "{path}: {}", err.message);
        }
        let err = p
            .client
            .post(
                "/v1/providers/stake",
                &json!({"action": "deposit", "signed_nonce": signed}),
            )
            .await;
        assert_ne!(err.status.as_u16(), 500);
    }
    // Still serving.
    let info: PoolInfo = tp.anon().get("/v1/pool").await.ok();
    assert_eq!(info.backend, "dev");
}
