//! Hardware proofs through a real pool over HTTP: a provider is held until
//! it answers the seeded multiplication; a right answer in time releases it
//! and records its speed; a wrong answer, or a right one slower than the
//! claimed device allows, keeps it held.

mod common;

use common::*;
use gradpool_core::proof::{self, ProofAnswer, ProofChallenge, ProofResult};
use gradpool_core::wire::*;
use std::time::{Duration, Instant};

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
    assert_eq!(view(&c, "honest rig").await.status, "held");
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());

    let r = answer(&p, &challenge, &product(&challenge)).await;
    assert_eq!(r.outcome, "passed", "{r:?}");
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
    assert_eq!(r.outcome, "wrong_answer");
    let v = view(&c, "fake rig").await;
    assert_eq!(v.status, "held");
    assert!(v.held.unwrap().contains("wrong answer"));
    assert!(p.heartbeat(&[], 1, 0).await.assignments.is_empty());
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
    let started = Instant::now();
    let challenge = p.register(vec![]).await.proof.expect("a challenge");
    assert_eq!(challenge.n, 1024, "sized by the claimed memory");
    let right = product(&challenge);
    // The claim allows a few milliseconds of work plus 5 s of overhead;
    // this "device" takes longer.
    let late = Duration::from_millis(challenge.deadline_ms + 300);
    tokio::time::sleep(late.saturating_sub(started.elapsed())).await;
    let r = answer(&p, &challenge, &right).await;
    assert_eq!(r.outcome, "too_slow", "{r:?}");
    let v = view(&c, "overclaimed rig").await;
    assert!(v.held.unwrap().contains("the claimed speed allows"));
}
