//! A parallel job's rounds at the pool, on its own clock: a round waits
//! `round_grace_seconds` for a late worker once `min_workers` are in, then
//! closes without it (the reaper's path); the outer step over the workers
//! present is checked by computing it again, a forged one is refused and
//! its provider barred, and the next round starts from the accepted global
//! checkpoint with each slot's last state.

mod common;

use common::*;
use gradpool_core::commitment::{outer_chain, OuterCommitment};
use gradpool_core::outer::{self, Global};
use gradpool_core::wire::{Assignment, CommitReply, OuterCommit, TaskKind};
use gradpool_core::{JobSpec, Sha256Hex};

fn spec() -> String {
    format!("{SPEC}[parallel]\nworkers = 3\ninner_steps = 10\nmin_workers = 2\n")
}

/// The next global checkpoint for an outer step assignment, as a
/// provider computes it from the round's committed checkpoints (`ckpts`,
/// in worker order).
fn outer_bytes(a: &Assignment, ckpts: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let spec = JobSpec::from_toml_str(&a.spec_toml).unwrap();
    let global = Global::initial_for(&a.model, spec.train.seed, &ckpts[0].1).unwrap();
    let workers: Vec<_> = ckpts
        .iter()
        .map(|(w, bytes)| (*w, outer::worker_params(*w, bytes).unwrap()))
        .collect();
    outer::outer_step(&global, &workers, &spec.parallel.unwrap(), a.end_step)
        .unwrap()
        .to_bytes()
}

async fn commit_outer(p: &TestProvider, a: &Assignment, global: &[u8]) -> Reply {
    let inputs = a.round.as_ref().unwrap().inputs.clone();
    let sha = p.client.upload(global).await;
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
    p1.client.upload(&c1).await;
    p1.commit(&a1.task_id, &p1.commit_for(&a1, &c1))
        .await
        .ok::<CommitReply>();
    p2.client.upload(&c2).await;
    p2.commit(&a2.task_id, &p2.commit_for(&a2, &c2))
        .await
        .ok::<CommitReply>();

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
        (a1.round.as_ref().unwrap().worker.unwrap(), c1.clone()),
        (a2.round.as_ref().unwrap().worker.unwrap(), c2.clone()),
    ];
    present.sort();
    let entered: Vec<u32> = round.inputs.iter().map(|i| i.worker).collect();
    assert_eq!(entered, present.iter().map(|(w, _)| *w).collect::<Vec<_>>());
    // The late worker's lease is gone: its commit is refused.
    let c3 = checkpoint(&a3, b"w3");
    p3.client.upload(&c3).await;
    p3.commit(&a3.task_id, &p3.commit_for(&a3, &c3))
        .await
        .err(409);
    // A forged step (one weight moved) is refused and its provider barred.
    let right = outer_bytes(&outer, &present);
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
    let next = p3.take().await;
    let r = next.round.clone().unwrap();
    assert_eq!((r.round, next.start_step), (1, 10));
    assert_eq!(next.start_checkpoint_sha256, Some(Sha256Hex::of(&right)));
    // Each slot continues its own last committed state; the left-out one
    // has none yet.
    let mine = present.iter().find(|(w, _)| Some(*w) == r.worker);
    assert_eq!(
        r.slot_checkpoint_sha256,
        mine.map(|(_, bytes)| Sha256Hex::of(bytes))
    );
}
