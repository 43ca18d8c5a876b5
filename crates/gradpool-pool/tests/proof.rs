//! Hardware proofs through a real pool over HTTP: a provider is held until
//! it answers the seeded multiplication; a right answer in time releases it
//! and records its speed; a wrong answer, or a right one slower than the
//! claimed device allows, keeps it held.

mod common;

use common::*;
use gradpool_core::proof::{self, ProofAnswer, ProofChallenge, ProofResult};
use gradpool_core::state::{ProofStatus, ProviderChange, ProviderStatus};
use gradpool_core::wire::*;

fn product(c: &ProofChallenge) -> Vec<f32> {
    let (a, b) = proof::matrices(c.seed, c.n);
    let n = c.n as usize;
    let mut out = vec![0f32; n * n];
    for i in 0..n {
        for k in 0..n {
            let x = a[i * n + k];
            let row = &b[k * n..(k + 1) * n];
            for (o, y) in out[i * n..(i + 1) * n].iter_mut().zip(row) {
                *o += x * y;
            }
        }
    }
    out
}

async fn answer(p: &TestProvider, c: &ProofChallenge, product: &[f32]) -> ProofResult {
    let sha = p.client.upload(&proof::to_bytes(product)).await;
    p.client
        .post(
            &format!("/v1/providers/proofs/{}", c.id),
            &ProofAnswer { answer_sha256: sha },
        )
        .await
        .ok()
}

async fn view(c: &Client, name: &str) -> ProviderView {
    let all: Vec<ProviderView> = c.get("/v1/providers").await.ok();
    all.into_iter().find(|v| v.name == name).unwrap()
}

#[tokio::test]
async fn a_right_answer_in_time_releases_the_provider_and_scores_it() {
    let tp = TestPool::start_with(|c| c.hardware_proof = true).await;
    let c = tp.customer("alice").await;
    let mut p = tp.provider("honest rig").await;
    let challenge = p.register(vec![]).await.proof.expect("a challenge");
    assert!(challenge.n >= 256 && challenge.n % 64 == 0, "{challenge:?}");
    c.submit(SPEC, b"some text to train on").await;

    // Held until it answers: no work.
    assert_eq!(view(&c, "honest rig").await.status, ProviderStatus::Held);
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());

    let r = answer(&p, &challenge, &product(&challenge)).await;
    assert_eq!(r.outcome, ProofStatus::Passed, "{r:?}");
    assert!(r.proven_gflops > 0.0);
    let v = view(&c, "honest rig").await;
    assert_eq!(v.held, None);
    assert_eq!(v.proven_gflops, Some(r.proven_gflops));
    assert_eq!(p.take().await.segment, 0);
    // One answer per challenge.
    let e = p
        .client
        .post(
            &format!("/v1/providers/proofs/{}", challenge.id),
            &ProofAnswer {
                answer_sha256: gradpool_core::Sha256Hex::of(b"again"),
            },
        )
        .await
        .err(409);
    assert!(e.message.contains("already passed"), "{}", e.message);
}

#[tokio::test]
async fn a_wrong_answer_keeps_the_provider_held() {
    let tp = TestPool::start_with(|c| c.hardware_proof = true).await;
    let c = tp.customer("alice").await;
    let mut p = tp.provider("fake rig").await;
    let challenge = p.register(vec![]).await.proof.expect("a challenge");
    c.submit(SPEC, b"some text to train on").await;
    let mut wrong = product(&challenge);
    let i = 12345 % wrong.len();
    wrong[i] += 1.0;
    let r = answer(&p, &challenge, &wrong).await;
    assert_eq!(r.outcome, ProofStatus::WrongAnswer);
    let v = view(&c, "fake rig").await;
    assert_eq!(v.status, ProviderStatus::Held);
    assert!(v.held.unwrap().contains("wrong answer"));
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
}

/// A proof answered with someone else's blob (a customer's data, named
/// by its digest) is refused, and the blob stays; an answer whose bytes a
/// customer uploaded too is not removed with the provider's upload.
#[tokio::test]
async fn an_answer_naming_another_ones_blob_is_refused_and_removes_nothing() {
    let tp = TestPool::start_with(|c| c.hardware_proof = true).await;
    let c = tp.customer("alice").await;
    let data = c.upload(b"alice's data").await;
    let mut p = tp.provider("rig").await;
    let challenge = p.register(vec![]).await.proof.expect("a challenge");
    let e = p
        .client
        .post(
            &format!("/v1/providers/proofs/{}", challenge.id),
            &ProofAnswer {
                answer_sha256: data.clone(),
            },
        )
        .await
        .err(400);
    assert!(e.message.contains("not among your uploads"), "{e:?}");
    assert_eq!(c.get_bytes(&format!("/v1/blobs/{data}")).await.0, 200);

    // The right bytes, uploaded by a customer as well.
    let bytes = proof::to_bytes(&product(&challenge));
    let shared = c.upload(&bytes).await;
    let r = answer(&p, &challenge, &product(&challenge)).await;
    assert_eq!(r.outcome, ProofStatus::Passed, "{r:?}");
    assert_eq!(c.get_bytes(&format!("/v1/blobs/{shared}")).await.0, 200);
}

/// It claims a device a million times faster than a CPU: the pool sizes
/// the matrices to that claim and its memory, and a right answer that takes
/// as long as a CPU needs comes too late.
#[tokio::test]
async fn a_device_slower_than_claimed_is_caught() {
    let tp = TestPool::start_with(|c| c.hardware_proof = true).await;
    let c = tp.customer("alice").await;
    let mut p = tp
        .provider_with("overclaimed rig", |p| {
            p.gflops = Some(1e6);
            p.memory_bytes = 48 << 20;
        })
        .await;
    let challenge = p.register(vec![]).await.proof.expect("a challenge");
    assert_eq!(challenge.n, 1024, "sized by the claimed memory");
    let right = product(&challenge);
    // The claim allows a few milliseconds of work plus 5 s of overhead;
    // this "device" takes longer.
    tp.advance(challenge.deadline_ms + 300);
    let r = answer(&p, &challenge, &right).await;
    assert_eq!(r.outcome, ProofStatus::TooSlow, "{r:?}");
    let v = view(&c, "overclaimed rig").await;
    assert!(v.held.unwrap().contains("the claimed speed allows"));
}

/// After registration, proofs come again at random times, in a heartbeat
/// reply: the provider is held until it answers, released when it passes,
/// and held again if it lets one lapse.
#[tokio::test]
async fn proofs_come_again_at_random_times_after_registration() {
    let tp = TestPool::start_with(|c| {
        c.hardware_proof = true;
        c.proof_interval_seconds = 1;
        c.lease_seconds = 2;
    })
    .await;
    let c = tp.customer("alice").await;
    let mut p = tp.provider("rig").await;
    let first = p.register(vec![]).await.proof.expect("a challenge");
    assert_eq!(
        answer(&p, &first, &product(&first)).await.outcome,
        ProofStatus::Passed
    );
    assert_eq!(view(&c, "rig").await.status, ProviderStatus::Idle);

    // The next one arrives with a heartbeat, at an exponentially
    // distributed time of mean 1 s: within 100 s but for a chance of e^-100.
    let mut again = None;
    for _ in 0..500 {
        if let Some(challenge) = p.heartbeat(&[], 0, 0).await.proof {
            again = Some(challenge);
            break;
        }
        tp.advance(200);
    }
    let again = again.expect("a proof within 100 s after registration");
    assert_ne!(again.id, first.id);
    assert_ne!(again.seed, first.seed, "a fresh seed each time");
    let v = view(&c, "rig").await;
    assert_eq!(v.status, ProviderStatus::Held);
    assert_eq!(v.held.as_deref(), Some("hardware proof pending"));
    assert_eq!(
        answer(&p, &again, &product(&again)).await.outcome,
        ProofStatus::Passed
    );
    assert_eq!(view(&c, "rig").await.status, ProviderStatus::Idle);

    // One left unanswered past its deadline holds the provider.
    let mut ignored = None;
    for _ in 0..500 {
        if let Some(challenge) = p.heartbeat(&[], 0, 0).await.proof {
            ignored = Some(challenge);
            break;
        }
        tp.advance(200);
    }
    let ignored = ignored.expect("another proof within 100 s");
    // The pool closes an open proof a lease period past its deadline (an
    // answer in flight may still arrive).
    tp.advance(ignored.deadline_ms + 2_000 + 1);
    p.heartbeat(&[], 0, 0).await;
    tp.pool.mark_absent().await.unwrap();
    let v = view(&c, "rig").await;
    assert!(
        v.held.as_deref().is_some_and(|h| h.contains("no answer")),
        "an ignored proof must hold: {v:?}"
    );
    c.submit(SPEC, b"some text to train on").await;
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
}

/// Two providers claiming one GPU UUID are both held; when one of them
/// goes away, the other is released at its next heartbeat.
#[tokio::test]
async fn a_gpu_claimed_by_two_providers_holds_both() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 2).await;
    let c = tp.customer("alice").await;
    let uuid = "GPU-5c4d3a2b-1111-2222-3333-444455556666";
    let real = tp
        .provider_with("real rig", |p| p.gpu_uuid = Some(uuid.into()))
        .await;
    assert_eq!(view(&c, "real rig").await.status, ProviderStatus::Idle);
    let copy = tp
        .provider_with("copied rig", |p| p.gpu_uuid = Some(uuid.into()))
        .await;
    // Another GPU is no one's business.
    tp.provider_with("other rig", |p| {
        p.gpu_uuid = Some("GPU-00000000-aaaa-bbbb-cccc-dddddddddddd".into())
    })
    .await;
    for (name, other) in [("real rig", &copy), ("copied rig", &real)] {
        let v = view(&c, name).await;
        assert_eq!(v.status, ProviderStatus::Held, "{name}");
        let held = v.held.unwrap();
        assert!(held.contains(uuid), "{held}");
        assert!(held.contains(other.key.provider_id().as_str()), "{held}");
    }
    assert_eq!(view(&c, "other rig").await.status, ProviderStatus::Idle);
    c.submit(SPEC, b"some text to train on").await;
    assert!(real.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert!(copy.heartbeat(&[], 1, 0).await.assignments.is_empty());

    // The copy stops; once it is gone a lease period, the real rig works.
    tp.advance(u64::from(tp.pool.config().lease_seconds) * 1000 + 300);
    let a = real.take().await;
    assert_eq!(a.segment, 0);
    assert_eq!(view(&c, "real rig").await.status, ProviderStatus::Sharing);
    let history = status_history(&tp, &real).await;
    let changes: Vec<ProviderChange> = history.iter().map(|h| h.status).collect();
    assert!(changes.contains(&ProviderChange::Released), "{changes:?}");
    assert!(changes.contains(&ProviderChange::Held), "{changes:?}");
}

async fn status_history(tp: &TestPool, p: &TestProvider) -> Vec<StatusChange> {
    let signed = signed_nonce(tp, p, "status").await;
    let s: ProviderStatusReply = tp.anon().post("/v1/providers/status", &signed).await.ok();
    s.history
}

/// The billing cap uses the proven speed: a provider that claims to be a
/// million times slower than it is (to widen the time it may bill) is
/// capped by what its hardware proof measured.
#[tokio::test]
async fn the_billing_cap_uses_the_proven_speed_not_a_low_claim() {
    let tp = TestPool::start_with(|c| c.hardware_proof = true).await;
    let c = tp.customer("alice").await;
    let _: Balance = c
        .post(
            "/v1/account/faucet",
            &Faucet {
                amount: "1".parse().unwrap(),
            },
        )
        .await
        .ok();
    let sha = c.upload(b"some text to train on, long enough").await;
    let job: JobView = c
        .post(
            "/v1/jobs",
            &SubmitJob {
                spec_toml: format!("{SPEC}\n[budget]\ntotal_xmr = \"0.01\"\n"),
                data_sha256: sha,
                booking: None,
                sealed_keys: Vec::new(),
                data_shape: None,
            },
        )
        .await
        .ok();
    let mut p = tp
        .provider_with("sandbagger", |p| {
            // 1 MFLOP/s claimed; 3.6 XMR/h = 10⁶ piconero a millisecond.
            p.gflops = Some(0.001);
            p.price = "3.6".parse().unwrap();
            p.compute_ms = 50_000;
        })
        .await;
    let challenge = p.register(vec![]).await.proof.expect("a challenge");
    let r = answer(&p, &challenge, &product(&challenge)).await;
    assert_eq!(r.outcome, ProofStatus::Passed);
    assert!(r.proven_gflops > 0.01, "{r:?}");
    let a = p.take().await;
    // The pool sees a second pass; the claimed speed (a cap of minutes)
    // would let it bill all of it, the proven one a few milliseconds.
    p.work_for(1_000);
    p.finish(&a, &[9, 9, 9]).await;
    let spent = c.job(&job.id).await.spent;
    assert!(
        spent.0 < 300_000_000,
        "{spent}: far less than the 1000 ms seen"
    );
}
