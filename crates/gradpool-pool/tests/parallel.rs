//! A parallel job's rounds at the pool, on its own clock: a round waits
//! `round_grace_seconds` for a late worker once `min_workers` are in, then
//! closes without it (the reaper's path); the outer step over the workers
//! present is checked by computing it again, a forged one is refused and
//! its provider barred, and the next round starts from the accepted global
//! checkpoint with each slot's last state.

mod common;

use common::*;
use gradpool_core::commitment::{outer_chain, OuterCommitment};
use gradpool_core::delta::{self, DeltaKind};
use gradpool_core::outer::{self, Global};
use gradpool_core::wire::{Assignment, CommitReply, OuterCommit, ProviderView, TaskKind};
use gradpool_core::{JobSpec, Sha256Hex};

fn spec() -> String {
    format!("{SPEC}[parallel]\nworkers = 3\ninner_steps = 10\nmin_workers = 2\n")
}

/// The next global checkpoint for an outer step assignment, as a
/// provider computes it from the round's pseudo-gradients (`sent`, in
/// worker order), and its update file.
fn outer_bytes(a: &Assignment, sent: &[(u32, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let spec = JobSpec::from_toml_str(&a.spec_toml).unwrap();
    let decoded: Vec<_> = sent
        .iter()
        .map(|(w, bytes)| (*w, delta::decode(bytes, DeltaKind::PseudoGradient).unwrap()))
        .collect();
    let global = Global::initial_for(&a.model, spec.train.seed, &decoded[0].1.metadata);
    let workers: Vec<_> = decoded.into_iter().map(|(w, d)| (w, d.values)).collect();
    let next = outer::outer_step(&global, &workers, &spec.parallel.unwrap(), a.end_step).unwrap();
    (next.global.to_bytes(), next.update)
}

async fn commit_outer(p: &TestProvider, a: &Assignment, global: &[u8]) -> Reply {
    let inputs = a.round.as_ref().unwrap().inputs.clone();
    // Nothing to upload: the pool stores its own computation.
    let sha = Sha256Hex::of(global);
    let signed = p.key.sign_outer(OuterCommitment {
        job_id: a.job_id.clone(),
        round: 0,
        step: a.end_step,
        hash: outer_chain(global, &a.prev_commitment, &inputs),
        inputs,
        global_sha256: sha,
        prev: a.prev_commitment,
    });
    p.client
        .post(
            &format!("/v1/tasks/{}/outer", a.task_id),
            &OuterCommit {
                commitment: signed,
                compute_ms: 3,
            },
        )
        .await
}

#[tokio::test]
async fn a_late_worker_is_left_out_after_the_grace_and_the_outer_step_is_checked() {
    let tp = TestPool::start_with(|c| {
        c.round_grace_seconds = 30;
        c.lease_seconds = 600;
    })
    .await;
    let alice = tp.customer("alice").await;
    let job = alice
        .submit(&spec(), b"some text to train on, long enough")
        .await;
    let p1 = tp.provider("rig-1").await;
    let p2 = tp.provider("rig-2").await;
    let p3 = tp.provider("rig-3").await;
    let (a1, a2, a3) = (p1.take().await, p2.take().await, p3.take().await);
    let mut workers: Vec<u32> = [&a1, &a2, &a3]
        .iter()
        .map(|a| a.round.as_ref().unwrap().worker.unwrap())
        .collect();
    workers.sort();
    assert_eq!(workers, vec![0, 1, 2], "one slot each, all at once");
    // Round 0 starts from the seeded weights: no start checkpoint.
    assert!(
        a1.start_checkpoint_sha256.is_none()
            && a1.round.as_ref().unwrap().slot_checkpoint_sha256.is_none()
    );
    let (c1, c2) = (checkpoint(&a1, b"w1"), checkpoint(&a2, b"w2"));
    // A worker's segment sends its pseudo-gradient; a commitment without
    // one is refused.
    let e = p1
        .commit(&a1.task_id, &p1.commit_for(&a1, &c1))
        .await
        .err(400);
    assert!(
        e.message.contains("pseudo_gradient_sha256"),
        "{}",
        e.message
    );
    let (reply, s1) = p1.commit_worker(&a1, &c1).await;
    reply.ok::<CommitReply>();
    let (reply, s2) = p2.commit_worker(&a2, &c2).await;
    reply.ok::<CommitReply>();

    // Two of three in: the round waits out the grace for the third.
    tp.advance(29_000);
    tp.pool.close_late_rounds().await.unwrap();
    assert!(p1.heartbeat(&[], 1, 0).await.assignments.is_empty());
    tp.advance(2_000);
    tp.pool.close_late_rounds().await.unwrap();
    let outer = p1.take().await;
    assert_eq!(outer.kind, TaskKind::Outer);
    let round = outer.round.clone().unwrap();
    let mut present: Vec<(u32, Vec<u8>)> = vec![
        (a1.round.as_ref().unwrap().worker.unwrap(), s1.clone()),
        (a2.round.as_ref().unwrap().worker.unwrap(), s2.clone()),
    ];
    present.sort();
    let entered: Vec<u32> = round.inputs.iter().map(|i| i.worker).collect();
    assert_eq!(entered, present.iter().map(|(w, _)| *w).collect::<Vec<_>>());
    // The late worker's lease is gone: its commit is refused.
    let c3 = checkpoint(&a3, b"w3");
    p3.commit_worker(&a3, &c3).await.0.err(409);
    // A forged step (one weight moved) is refused and its provider barred.
    let (right, update) = outer_bytes(&outer, &present);
    let mut forged = Global::from_bytes(&right).unwrap();
    if let Some((_, v)) = forged.params.values_mut().next() {
        v[0] += 0.001;
    }
    let e = commit_outer(&p1, &outer, &forged.to_bytes()).await.err(400);
    assert!(
        e.message.contains("does not match the pool's computation"),
        "{}",
        e.message
    );
    assert!(
        p1.heartbeat(&[], 1, 0).await.assignments.is_empty(),
        "barred from the job"
    );
    // Another provider's right step is accepted: round 1 starts from it.
    let again = p2.take().await;
    assert_eq!(
        (again.kind, again.round.as_ref().unwrap().round),
        (TaskKind::Outer, 0)
    );
    let reply: CommitReply = commit_outer(&p2, &again, &right).await.ok();
    assert!(reply.accepted && !reply.job_done);
    let view = alice.job(&job.id).await;
    assert_eq!(view.step, 10);
    assert_eq!(view.parallel.map(|p| p.round), Some(1));
    assert_eq!(view.checkpoint_sha256, Some(Sha256Hex::of(&right)));
    // The round as the customer sees it: two workers, the step by p2.
    let rounds: Vec<gradpool_core::wire::RoundView> =
        alice.get(&format!("/v1/jobs/{}/rounds", job.id)).await.ok();
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0].workers.len(), 2);
    let by = rounds[0].outer.as_ref().map(|o| o.provider.clone());
    assert_eq!(by, Some(p2.key.provider_id()));
    assert!(rounds[0].wait_seconds >= 0.0);
    // The pool stored the global checkpoint and the update itself.
    let (status, stored) = p2
        .client
        .get_bytes(&format!("/v1/blobs/{}", Sha256Hex::of(&update)))
        .await;
    assert_eq!((status.as_u16(), stored), (200, update.clone()));
    // A slot's checkpoint stays with its worker: a provider that holds
    // none gets only the slot left out, which has no state yet.
    let next = p3.take().await;
    let r = next.round.clone().unwrap();
    assert_eq!((r.round, next.start_step), (1, 10));
    assert_eq!(next.start_checkpoint_sha256, Some(Sha256Hex::of(&right)));
    assert_eq!(r.worker, a3.round.as_ref().unwrap().worker);
    assert_eq!(r.slot_checkpoint_sha256, None);
    // Round 1's weights come from round 0's and the update.
    let u = r.update.clone().expect("round 1 names its update");
    assert_eq!(u.update_sha256, Sha256Hex::of(&update));
    let weights = Global::from_bytes(&right).unwrap().weights().to_bytes();
    assert_eq!(u.weights_sha256, Sha256Hex::of(&weights));
    // Its holder continues its own slot, from the state it keeps.
    let mine = p2.take().await;
    let r2 = mine.round.clone().unwrap();
    assert_eq!(r2.worker, a2.round.as_ref().unwrap().worker);
    assert_eq!(r2.slot_checkpoint_sha256, Some(Sha256Hex::of(&c2)));
    // The last slot's holder is barred from the job: once the slot has
    // waited, the pool asks it for the checkpoint, and then anyone may
    // continue the slot.
    let p4 = tp.provider("rig-4").await;
    assert!(p1.heartbeat(&[], 1, 0).await.wanted.is_empty());
    tp.advance(301_000);
    let asked = p1.heartbeat(&[], 1, 0).await;
    assert_eq!(asked.wanted, vec![Sha256Hex::of(&c1)]);
    assert!(p4.heartbeat(&[], 1, 0).await.assignments.is_empty());
    p1.client.upload(&c1).await;
    let moved = p4.take().await;
    let r4 = moved.round.clone().unwrap();
    assert_eq!(r4.worker, a1.round.as_ref().unwrap().worker);
    assert_eq!(r4.slot_checkpoint_sha256, Some(Sha256Hex::of(&c1)));
}

#[tokio::test]
async fn a_slot_whose_checkpoint_died_with_its_provider_starts_from_fresh_moments() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 60).await;
    let alice = tp.customer("alice").await;
    let spec = format!("{SPEC}[parallel]\nworkers = 2\ninner_steps = 10\n");
    alice
        .submit(&spec, b"some text to train on, long enough")
        .await;
    let p1 = tp.provider("rig-1").await;
    let p2 = tp.provider("rig-2").await;
    let p3 = tp.provider("rig-3").await;
    let (a1, a2) = (p1.take().await, p2.take().await);
    let (c1, c2) = (checkpoint(&a1, b"w1"), checkpoint(&a2, b"w2"));
    let (reply, s1) = p1.commit_worker(&a1, &c1).await;
    reply.ok::<CommitReply>();
    let (reply, s2) = p2.commit_worker(&a2, &c2).await;
    reply.ok::<CommitReply>();
    let outer = p3.take().await;
    let mut sent = vec![
        (a1.round.as_ref().unwrap().worker.unwrap(), s1),
        (a2.round.as_ref().unwrap().worker.unwrap(), s2),
    ];
    sent.sort();
    let (global, _) = outer_bytes(&outer, &sent);
    commit_outer(&p3, &outer, &global).await.ok::<CommitReply>();
    // Round 1: rig-2 continues its slot; rig-1 is gone with the other
    // slot's checkpoint, which rig-3 cannot continue.
    let r2 = p2.take().await;
    assert_eq!(
        r2.round.as_ref().unwrap().slot_checkpoint_sha256,
        Some(Sha256Hex::of(&c2))
    );
    assert!(p3.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert_eq!(
        tp.pool.reset_lost_slots().await.unwrap(),
        0,
        "rig-1 was just seen"
    );
    tp.advance(61_000);
    p3.heartbeat(&[], 0, 0).await;
    assert_eq!(tp.pool.reset_lost_slots().await.unwrap(), 1);
    let r3 = p3.take().await;
    let round = r3.round.clone().unwrap();
    assert_eq!(round.worker, a1.round.as_ref().unwrap().worker);
    assert_eq!((round.round, round.slot_checkpoint_sha256), (1, None));
}

#[tokio::test]
async fn a_customer_asks_for_the_checkpoints_its_workers_keep() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let bob = tp.customer("bob").await;
    let spec = format!("{SPEC}[parallel]\nworkers = 2\ninner_steps = 10\n");
    let job = alice
        .submit(&spec, b"some text to train on, long enough")
        .await;
    let p1 = tp.provider("rig-1").await;
    let a1 = p1.take().await;
    let c1 = checkpoint(&a1, b"w1");
    p1.commit_worker(&a1, &c1).await.0.ok::<CommitReply>();
    let path = format!("/v1/jobs/{}/checkpoint-requests", job.id);
    let kept = Sha256Hex::of(&c1);
    // Only the job's customer, only its committed checkpoints, a bounded
    // number at a time.
    bob.post(&path, &serde_json::json!({"checkpoint_sha256": [kept]}))
        .await
        .err(404);
    let e = alice
        .post(
            &path,
            &serde_json::json!({"checkpoint_sha256": [kept, Sha256Hex::of(b"x")]}),
        )
        .await
        .err(400);
    assert!(e.message.contains("checkpoint_sha256[1]"), "{}", e.message);
    let many = vec![kept.clone(); 65];
    let e = alice
        .post(&path, &serde_json::json!({"checkpoint_sha256": many}))
        .await
        .err(400);
    assert!(e.message.contains("at most 64"), "{}", e.message);
    let e = alice
        .post(&path, &serde_json::json!({"checkpoints": [kept]}))
        .await
        .err(400);
    assert!(e.message.contains("checkpoints"), "{}", e.message);
    // Asked: the worker that keeps it is asked at its next heartbeat, and
    // once it uploads, the pool has it.
    let reply: serde_json::Value = alice
        .post(&path, &serde_json::json!({"checkpoint_sha256": [kept]}))
        .await
        .ok();
    assert_eq!(reply["asked"], serde_json::json!([kept]));
    assert_eq!(p1.heartbeat(&[], 0, 0).await.wanted, vec![kept.clone()]);
    p1.client.upload(&c1).await;
    assert!(p1.heartbeat(&[], 0, 0).await.wanted.is_empty());
    let reply: serde_json::Value = alice
        .post(&path, &serde_json::json!({"checkpoint_sha256": [kept]}))
        .await
        .ok();
    assert_eq!(reply["present"], serde_json::json!([kept]));
}

fn two_workers() -> String {
    format!("{SPEC}[parallel]\nworkers = 2\ninner_steps = 10\nmin_workers = 1\n")
}

fn worker_of(a: &Assignment) -> u32 {
    a.round.as_ref().unwrap().worker.unwrap()
}

#[tokio::test]
async fn a_slow_provider_is_held_back_while_faster_ones_can_fill_the_round() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 600).await;
    let alice = tp.customer("alice").await;
    // 0.001 GFLOP/s: a worker's round of the test GPT takes it seconds,
    // the others a millisecond.
    let slow = tp.provider_with("slow", |p| p.gflops = Some(0.001)).await;
    let fast1 = tp.provider_with("fast-1", |p| p.gflops = Some(10.0)).await;
    let fast2 = tp.provider_with("fast-2", |p| p.gflops = Some(10.0)).await;
    alice
        .submit(&two_workers(), b"some text to train on, long enough")
        .await;

    // First in line, but two faster providers can take both workers.
    assert!(slow.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let a1 = fast1.take().await;
    // One worker left, and one faster provider free for it.
    assert!(slow.heartbeat(&[], 1, 0).await.assignments.is_empty());
    // Held back only while the segment is young: after half a lease it
    // goes to whoever comes, so placement never stalls a round longer.
    tp.advance(300_001);
    let a2 = slow.take().await;
    let mut workers = vec![worker_of(&a1), worker_of(&a2)];
    workers.sort();
    assert_eq!(workers, vec![0, 1]);
    assert!(fast2.heartbeat(&[], 1, 0).await.assignments.is_empty());
}

#[tokio::test]
async fn a_slow_provider_trains_when_the_round_needs_it() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 600).await;
    let alice = tp.customer("alice").await;
    let slow = tp.provider_with("slow", |p| p.gflops = Some(0.001)).await;
    let fast = tp.provider_with("fast", |p| p.gflops = Some(10.0)).await;
    // Unknown speed: never held back, never counted as faster.
    let unknown = tp.provider("unknown").await;
    alice
        .submit(&two_workers(), b"some text to train on, long enough")
        .await;
    // Two workers, one faster provider: the round needs the slow one too.
    let a1 = slow.take().await;
    let a2 = fast.take().await;
    assert_ne!(worker_of(&a1), worker_of(&a2));
    assert!(unknown.heartbeat(&[], 1, 0).await.assignments.is_empty());
}

#[tokio::test]
async fn a_provider_on_a_slow_link_is_held_back() {
    let tp = TestPool::start_with(|c| c.lease_seconds = 600).await;
    let alice = tp.customer("alice").await;
    let slow = tp
        .provider_with("slow-link", |p| p.gflops = Some(1e4))
        .await;
    let fast = tp
        .provider_with("fast-link", |p| p.gflops = Some(1e4))
        .await;
    // The pool measures each provider's rate on its blob transfers: one
    // sends 256 KiB in a trickle, the other at once.
    let bytes = |seed: u8| {
        (0..256 << 10)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>()
    };
    let trickled = bytes(1);
    slow.client
        .put_blob_in_chunks(&trickled, 8, std::time::Duration::from_millis(80))
        .await;
    fast.client.upload(&bytes(2)).await;
    let job = alice
        .submit(
            &format!("{SPEC}[parallel]\nworkers = 1\ninner_steps = 10\n"),
            b"some text to train on, long enough",
        )
        .await;
    // What the pool measured, as anyone sees it.
    let all: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
    let rate = |name: &str| {
        let v = all.iter().find(|v| v.name == name).unwrap();
        v.transfer_rate.expect("a measured rate")
    };
    assert!(rate("slow-link") < rate("fast-link") / 10.0);
    assert!(rate("slow-link") < 256.0 * 1024.0 / 0.5);
    assert!(slow.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let a = fast.take().await;
    assert_eq!(a.job_id, job.id);
}

#[tokio::test]
async fn a_download_is_timed_once_sent() {
    let tp = TestPool::start().await;
    let alice = tp.customer("alice").await;
    let p = tp.provider("reader").await;
    let data: Vec<u8> = (0..128 << 10).map(|i| b"abcdefgh\n"[i % 9]).collect();
    let job = alice.submit(SPEC, &data).await;
    let a = p.take().await;
    assert_eq!(a.job_id, job.id);
    let rate = || async {
        let all: Vec<ProviderView> = alice.get("/v1/providers").await.ok();
        all.into_iter()
            .find(|v| v.name == "reader")
            .unwrap()
            .transfer_rate
    };
    assert_eq!(rate().await, None, "nothing sent or received yet");
    let (status, bytes) = p
        .client
        .get_bytes(&format!("/v1/blobs/{}", a.data_sha256))
        .await;
    assert_eq!((status.as_u16(), bytes.len()), (200, data.len()));
    // Recorded before the body's last bytes are handed over.
    let measured = rate().await;
    assert!(measured.is_some_and(|r| r > 0.0), "{measured:?}");
}
