//! Verification through a real pool over HTTP: audits drawn after commits,
//! validators' replays, verdicts with evidence, slashing, rollback, planted
//! audits, and who may replay whose work. Trainers and validators here are
//! test clients that commit and report checkpoint bytes directly; the
//! decisions under test are the pool's. After every scenario the ledger
//! audit must be clean.

mod common;

use common::*;
use gradpool_core::state::{AuditReason, AuditStatus, CommitmentStatus};
use gradpool_core::wire::*;
use gradpool_core::{Piconero, Sha256Hex};

/// A mainnet address (the Monero general fund's).
const ADDRESS: &str =
    "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// 3.6 XMR an hour: exactly 10⁶ piconero a millisecond.
const RATE: Piconero = Piconero(3_600_000_000_000);

fn spec(level: &str, budget: Option<&str>) -> String {
    let mut s = format!("{SPEC}\n[verification]\nlevel = \"{level}\"\n");
    if let Some(total) = budget {
        s.push_str(&format!("[budget]\ntotal_xmr = \"{total}\"\n"));
    }
    s
}

/// The tag of the honest checkpoint of segment `i` (what any replay
/// produces): `checkpoint(a, &honest(i))`.
fn honest(i: u32) -> Vec<u8> {
    vec![i as u8 + 1; 64]
}

async fn assert_clean(tp: &TestPool) {
    let report = tp.pool.ledger().reconcile().await.unwrap();
    assert!(report.is_clean(), "ledger reconciliation:\n{report}");
}

async fn provider_view(tp: &TestPool, c: &Client, p: &TestProvider) -> ProviderView {
    let _ = tp;
    let all: Vec<ProviderView> = c.get("/v1/providers").await.ok();
    all.into_iter()
        .find(|v| v.id == p.key.provider_id())
        .expect("provider listed")
}

async fn verdicts(c: &Client, job: &gradpool_core::JobId) -> Vec<VerdictView> {
    c.get(&format!("/v1/jobs/{job}/verdicts")).await.ok()
}

async fn segments(c: &Client, job: &gradpool_core::JobId) -> Vec<SegmentView> {
    c.get(&format!("/v1/jobs/{job}/segments")).await.ok()
}

/// Heartbeats until it gets an assignment of `kind`.
async fn take_kind(p: &TestProvider, kind: TaskKind) -> Assignment {
    let a = p.take().await;
    assert_eq!(a.kind, kind, "expected a {kind:?} task, got {a:?}");
    a
}

/// Replays honestly: the bytes an honest trainer produces for the segment.
async fn replay_honestly(v: &TestProvider, a: &Assignment) {
    let r = v.replay_for(a, &checkpoint(a, &honest(a.segment)), None);
    let reply = v.report(a, &r).await;
    assert!(
        reply.status.is_success(),
        "{}: {}",
        reply.status,
        reply.body
    );
}

#[tokio::test]
async fn a_replayed_segment_is_verified_and_the_job_waits_for_its_audits() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let trainer = tp.provider("trainer").await;
    let validator = tp.provider_with("validator", |p| p.validate = true).await;
    let job = c
        .submit(&spec("paranoid", None), b"some text to train on")
        .await;

    for i in 0..3 {
        let a = take_kind(&trainer, TaskKind::Train).await;
        assert_eq!(a.segment, i);
        trainer.finish(&a, &honest(i)).await;
        let r = take_kind(&validator, TaskKind::Replay).await;
        let target = r.replay.clone().expect("a replay names its claim");
        assert_eq!(r.segment, i);
        assert_eq!(
            target.claimed_checkpoint_sha256,
            Sha256Hex::of(&checkpoint(&a, &honest(i)))
        );
        assert_eq!(target.claimed_class, trainer.hardware().class());
        assert_eq!(r.prev_commitment, a.prev_commitment);
        assert_eq!(r.start_checkpoint_sha256, a.start_checkpoint_sha256);
        if i == 2 {
            // Trained to the end, but an audit is still open.
            let view = c.job(&job.id).await;
            assert_eq!(view.status, JobStatus::Running);
            assert_eq!(view.step, 30);
        }
        replay_honestly(&validator, &r).await;
    }
    assert_eq!(c.job(&job.id).await.status, JobStatus::Succeeded);
    let segs = segments(&c, &job.id).await;
    assert!(
        segs.iter().all(|s| s.status == CommitmentStatus::Verified),
        "{segs:?}"
    );
    let v = verdicts(&c, &job.id).await;
    assert_eq!(v.len(), 3);
    for verdict in &v {
        assert_eq!(verdict.outcome, AuditStatus::Verified);
        assert_eq!(verdict.reason, AuditReason::Paranoid);
        assert_eq!(verdict.replays.len(), 1);
        assert!(verdict.replays[0].matches);
        assert!(verdict.replays[0].replay.verify().is_ok());
        assert!(verdict.commitment.verify().is_ok());
    }
    let t = provider_view(&tp, &c, &trainer).await;
    assert_eq!((t.streak, t.faults), (3, 0));
    assert!(
        t.reputation > 0.2 && t.reputation < 0.25,
        "{}",
        t.reputation
    );
    assert!(t.audit_probability < 0.2);
    let val = provider_view(&tp, &c, &validator).await;
    assert_eq!(val.streak, 3);
    assert!(val.validate);

    let events = c.events(&job.id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "audit").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "verdict").count(), 3);
    assert_clean(&tp).await;
}

#[tokio::test]
async fn a_cheater_is_slashed_barred_and_its_job_rolled_back() {
    let tp = TestPool::start_with(|c| c.money.slash_validator_bps = 1000).await;
    let c = tp.customer("alice").await;
    c.post(
        "/v1/account/faucet",
        &Faucet {
            amount: "1".parse().unwrap(),
        },
    )
    .await
    .ok::<Balance>();
    let cheater = tp
        .provider_with("cheater", |p| {
            p.price = RATE;
            p.compute_ms = 2;
        })
        .await;
    let honest_rig = tp
        .provider_with("honest", |p| {
            p.price = RATE;
            p.compute_ms = 2;
        })
        .await;
    let v1 = tp.provider_with("v1", |p| p.validate = true).await;
    let v2 = tp.provider_with("v2", |p| p.validate = true).await;

    // A first job earns the cheater something to stake.
    let first = c
        .submit(&spec("none", Some("0.001")), b"first job's text")
        .await;
    for i in 0..3 {
        let a = take_kind(&cheater, TaskKind::Train).await;
        cheater.work_for(10);
        cheater.finish(&a, &honest(i)).await;
    }
    assert_eq!(c.job(&first.id).await.status, JobStatus::Succeeded);
    let staked: Earnings = tp
        .anon()
        .post(
            "/v1/providers/stake",
            &StakeRequest {
                signed_nonce: signed_nonce(&tp, &cheater, "stake").await,
                action: StakeAction::Add {
                    amount: Piconero(3_000_000),
                },
            },
        )
        .await
        .ok();
    assert_eq!(staked.stake, Piconero(3_000_000));
    // The second job: segment 0 honest and verified, segment 1 faked.
    let job = c
        .submit(&spec("paranoid", Some("0.001")), b"second job's text")
        .await;
    let before = c.get("/v1/account/balance").await.ok::<Balance>().available;
    let a0 = take_kind(&cheater, TaskKind::Train).await;
    cheater.work_for(10);
    cheater.finish(&a0, &honest(0)).await;
    let r0 = take_kind(&v1, TaskKind::Replay).await;
    replay_honestly(&v1, &r0).await;
    let a1 = take_kind(&cheater, TaskKind::Train).await;
    cheater.work_for(10);
    cheater
        .finish(&a1, b"weights that were never trained")
        .await;
    assert!(earnings(&tp, &cheater).await.pending > Piconero::ZERO);
    // An honest provider builds segment 2 on the fake before the audit ends.
    let a2 = take_kind(&honest_rig, TaskKind::Train).await;
    assert_eq!(a2.segment, 2);
    honest_rig.finish(&a2, b"honest work on a bad start").await;

    // v1 disagrees with the claim; a second validator decides.
    let r1 = take_kind(&v1, TaskKind::Replay).await;
    assert_eq!(r1.segment, 1);
    replay_honestly(&v1, &r1).await;
    let reply = v2.heartbeat(&[], 2, 5).await;
    let dispute = reply
        .assignments
        .iter()
        .find(|a| a.segment == 1)
        .expect("the dispute goes to the second validator");
    let r2 = reply.assignments.iter().find(|a| a.segment == 2).cloned();
    replay_honestly(&v2, dispute).await;

    // Verdict: the trainer is at fault, with the evidence.
    let v = verdicts(&c, &job.id).await;
    let fraud = v.iter().find(|v| v.segment == 1).unwrap();
    assert_eq!(fraud.outcome, AuditStatus::ProviderFault);
    assert_eq!(fraud.at_fault.as_ref(), Some(&cheater.key.provider_id()));
    assert_eq!(fraud.replays.len(), 2);
    assert!(fraud.replays.iter().all(|r| !r.matches));
    assert_eq!(
        fraud.commitment.commitment.checkpoint_sha256,
        Sha256Hex::of(&checkpoint(&a1, b"weights that were never trained"))
    );
    assert_eq!(
        v.iter().find(|v| v.segment == 2).unwrap().outcome,
        AuditStatus::Void
    );
    // A replay of the discarded segment 2 is no longer wanted.
    if let Some(r2) = r2 {
        v2.report(&r2, &v2.replay_for(&r2, b"x", None))
            .await
            .err(409);
    }

    // Rolled back to the end of segment 0.
    let view = c.job(&job.id).await;
    assert_eq!((view.step, view.segments_done), (10, 1));
    assert_eq!(
        view.checkpoint_sha256,
        Some(Sha256Hex::of(&checkpoint(&a0, &honest(0))))
    );
    let segs = segments(&c, &job.id).await;
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].status, CommitmentStatus::Verified);

    // Slashed: nothing pending from the job, the stake split 90/10 between
    // the customer and the validator that caught it.
    let e = earnings(&tp, &cheater).await;
    assert_eq!((e.pending, e.stake), (Piconero::ZERO, Piconero::ZERO));
    let after = c.get("/v1/account/balance").await.ok::<Balance>().available;
    assert_eq!(
        after.0 - before.0,
        2_700_000,
        "the customer gets 90% of the stake"
    );
    assert_eq!(earnings(&tp, &v1).await.available, Piconero(300_000));
    let t = provider_view(&tp, &c, &cheater).await;
    assert_eq!((t.streak, t.faults), (0, 1));

    // Barred from the job; the segment goes to someone else, from the last
    // good checkpoint.
    assert!(cheater.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let again = take_kind(&honest_rig, TaskKind::Train).await;
    assert_eq!(again.segment, 1);
    assert_eq!(
        again.start_checkpoint_sha256,
        Some(Sha256Hex::of(&checkpoint(&a0, &honest(0))))
    );
    assert_eq!(again.prev_commitment, segs[0].commitment.commitment.hash);
    honest_rig.finish(&again, &honest(1)).await;
    let r = take_kind(&v1, TaskKind::Replay).await;
    replay_honestly(&v1, &r).await;
    let a = take_kind(&honest_rig, TaskKind::Train).await;
    honest_rig.finish(&a, &honest(2)).await;
    let r = take_kind(&v2, TaskKind::Replay).await;
    replay_honestly(&v2, &r).await;
    let done = c.job(&job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(
        done.checkpoint_sha256,
        Some(Sha256Hex::of(&checkpoint(&a, &honest(2))))
    );

    let events = c.events(&job.id, None).await;
    assert!(events.iter().any(|(_, k, e)| k == "rolled_back"
        && matches!(
            &e.kind,
            JobEventKind::RolledBack {
                segment: 1,
                step: 10,
                ..
            }
        )));
    assert_clean(&tp).await;
}

#[tokio::test]
async fn an_outvoted_validator_is_punished_and_gets_no_more_replays() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let trainer = tp.provider("trainer").await;
    let liar = tp.provider_with("liar", |p| p.validate = true).await;
    let fair = tp.provider_with("fair", |p| p.validate = true).await;
    let job = c
        .submit(&spec("paranoid", None), b"some text to train on")
        .await;

    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(0)).await;
    let r = take_kind(&liar, TaskKind::Replay).await;
    let lie = liar.replay_for(&r, b"made up", None);
    assert!(liar.report(&r, &lie).await.status.is_success());
    let d = take_kind(&fair, TaskKind::Replay).await;
    replay_honestly(&fair, &d).await;

    let v = verdicts(&c, &job.id).await;
    assert_eq!(v[0].outcome, AuditStatus::ValidatorFault);
    assert_eq!(v[0].at_fault.as_ref(), Some(&liar.key.provider_id()));
    assert_eq!(
        segments(&c, &job.id).await[0].status,
        CommitmentStatus::Verified
    );
    assert_eq!(provider_view(&tp, &c, &liar).await.faults, 1);
    assert_eq!(provider_view(&tp, &c, &trainer).await.faults, 0);

    // The next audit goes to the fair validator only.
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(1)).await;
    let offered = liar.heartbeat(&[], 1, 0).await.assignments;
    assert!(
        offered.iter().all(|a| a.kind == TaskKind::Train),
        "{offered:?}"
    );
    take_kind(&fair, TaskKind::Replay).await;
    assert_clean(&tp).await;
}

#[tokio::test]
async fn a_lazy_validator_is_caught_by_a_planted_audit() {
    let tp = TestPool::start_with(|c| c.verification.plant_rate = 1.0).await;
    let c = tp.customer("alice").await;
    let trainer = tp.provider("trainer").await;
    let lazy = tp.provider_with("lazy", |p| p.validate = true).await;
    c.submit(&spec("paranoid", None), b"some text to train on")
        .await;

    // A validator that answers without computing echoes the claim.
    let echo = |a: &Assignment| {
        let claimed = a.replay.as_ref().unwrap().claimed_checkpoint_sha256.clone();
        let mut r = lazy.replay_for(a, b"", None);
        r.report.end_checkpoint_sha256 = claimed;
        lazy.key.sign_replay(r.report)
    };
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(0)).await;
    let r = take_kind(&lazy, TaskKind::Replay).await;
    assert!(lazy.report(&r, &echo(&r)).await.status.is_success());
    assert_eq!(provider_view(&tp, &c, &lazy).await.faults, 0);

    // Segment 0 is verified now, so the next audit comes with a planted one.
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(1)).await;
    let replays = lazy.heartbeat(&[], 2, 5).await.assignments;
    assert_eq!(replays.len(), 2, "the real audit and the planted one");
    for r in &replays {
        assert_eq!(r.kind, TaskKind::Replay);
        assert!(lazy.report(r, &echo(r)).await.status.is_success());
    }
    let view = provider_view(&tp, &c, &lazy).await;
    assert_eq!((view.faults, view.streak), (1, 0));
    // Caught: no more replays for it.
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(2)).await;
    assert!(lazy.heartbeat(&[], 1, 0).await.assignments.is_empty());
    assert_clean(&tp).await;
}

#[tokio::test]
async fn an_honest_validator_passes_planted_audits() {
    let tp = TestPool::start_with(|c| c.verification.plant_rate = 1.0).await;
    let c = tp.customer("alice").await;
    let trainer = tp.provider("trainer").await;
    let validator = tp.provider_with("validator", |p| p.validate = true).await;
    let job = c
        .submit(&spec("paranoid", None), b"some text to train on")
        .await;
    for i in 0..3 {
        let a = take_kind(&trainer, TaskKind::Train).await;
        trainer.finish(&a, &honest(i)).await;
        // Segment 0's audit comes alone; later ones with a planted audit.
        let want = if i == 0 { 1 } else { 2 };
        let reply = validator.heartbeat(&[], want, 5).await;
        assert_eq!(reply.assignments.len(), want as usize);
        for r in &reply.assignments {
            replay_honestly(&validator, r).await;
        }
    }
    assert_eq!(c.job(&job.id).await.status, JobStatus::Succeeded);
    let view = provider_view(&tp, &c, &validator).await;
    assert_eq!(view.faults, 0);
    assert!(
        view.streak >= 4,
        "three audits and at least one planted: {view:?}"
    );
    // Planted audits are the pool's own: the customer sees its three.
    assert_eq!(verdicts(&c, &job.id).await.len(), 3);
    assert_clean(&tp).await;
}

#[tokio::test]
async fn across_classes_a_replay_is_judged_by_its_distance() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let trainer = tp.provider("trainer").await;
    let other = tp
        .provider_with("other class", |p| {
            p.validate = true;
            p.isa = "x86-64".into();
        })
        .await;
    let job = c
        .submit(&spec("paranoid", None), b"some text to train on")
        .await;
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(0)).await;
    let r = take_kind(&other, TaskKind::Replay).await;
    assert_ne!(
        r.replay.as_ref().unwrap().claimed_class,
        other.hardware().class()
    );

    let e = other
        .report(&r, &other.replay_for(&r, b"other bits", None))
        .await
        .err(400);
    assert!(e.message.starts_with("distance:"), "{}", e.message);
    // Another class's bits differ; a distance within the tolerance matches.
    let close = gradpool_core::verification::CROSS_CLASS_TOLERANCE / 2.0;
    assert!(other
        .report(&r, &other.replay_for(&r, b"other bits", Some(close)))
        .await
        .status
        .is_success());
    let v = verdicts(&c, &job.id).await;
    assert_eq!(v[0].outcome, AuditStatus::Verified);
    assert!(v[0].replays[0].matches);
    // A replay whose class is not the registered one is refused.
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(1)).await;
    let r = take_kind(&other, TaskKind::Replay).await;
    let mut report = other.replay_for(&r, b"x", Some(0.0)).report;
    report.class = trainer.hardware().class();
    let e = other
        .report(&r, &other.key.sign_replay(report))
        .await
        .err(400);
    assert!(e.message.starts_with("class:"), "{}", e.message);
    assert_clean(&tp).await;
}

#[tokio::test]
async fn nobody_replays_their_own_work_or_their_owners() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let payout = vec![PayoutSplit {
        address: ADDRESS.into(),
        share: 1,
    }];
    let trainer = tp
        .provider_with("trainer", |p| {
            p.validate = true;
            p.payout = payout.clone();
        })
        .await;
    let sibling = tp
        .provider_with("same owner", |p| {
            p.validate = true;
            p.payout = payout.clone();
        })
        .await;
    let job = c
        .submit(&spec("paranoid", None), b"some text to train on")
        .await;
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(0)).await;
    // No validator outside the owner is connected: the audit is drawn all
    // the same, and waits for one, as the job shows.
    let v = verdicts(&c, &job.id).await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].outcome, AuditStatus::Open);
    assert_eq!(
        segments(&c, &job.id).await[0].status,
        CommitmentStatus::Auditing
    );
    assert_eq!(c.job(&job.id).await.audits_waiting, 1);

    let stranger = tp.provider_with("stranger", |p| p.validate = true).await;
    assert_eq!(c.job(&job.id).await.audits_waiting, 0);
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(1)).await;
    assert_eq!(verdicts(&c, &job.id).await.len(), 2);
    for p in [&trainer, &sibling] {
        let offered = p.heartbeat(&[], 1, 0).await.assignments;
        assert!(
            offered.iter().all(|a| a.kind == TaskKind::Train),
            "{}: {offered:?}",
            p.name
        );
        // Give back what it took, so the next one can see the queue.
        for a in offered {
            p.client
                .post(
                    &format!("/v1/tasks/{}/fail", a.task_id),
                    &TaskFailed {
                        reason: "test".into(),
                    },
                )
                .await;
        }
    }
    // The stranger serves both, the one that waited first.
    let r = take_kind(&stranger, TaskKind::Replay).await;
    assert_eq!(r.segment, 0);
    replay_honestly(&stranger, &r).await;
    let r = take_kind(&stranger, TaskKind::Replay).await;
    assert_eq!(r.segment, 1);
    assert_clean(&tp).await;
}

/// A standard job whose trainer shares its payout address with the only
/// validator: every drawn audit waits, visibly; the trainer's earnings stay
/// pending; past the audit deadline the audits are unserved and the job
/// ends `unverified`, telling the customer to check it.
#[tokio::test]
async fn audits_no_eligible_validator_serves_leave_the_job_unverified() {
    let tp = TestPool::start_with(|c| {
        // Every segment drawn: a provider with no record, p_new = 1.
        c.verification.sampling.p_new = 1.0;
        c.verification.audit_deadline_seconds = 600;
    })
    .await;
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
    let payout = vec![PayoutSplit {
        address: ADDRESS.into(),
        share: 1,
    }];
    let trainer = tp
        .provider_with("trainer", |p| {
            p.payout = payout.clone();
            p.price = RATE;
            p.compute_ms = 2;
        })
        .await;
    let validator = tp
        .provider_with("validator, same owner", |p| {
            p.validate = true;
            p.train = false;
            p.payout = payout.clone();
        })
        .await;
    let job = c
        .submit(&spec("standard", Some("0.001")), b"some text to train on")
        .await;
    for i in 0..3 {
        let a = take_kind(&trainer, TaskKind::Train).await;
        trainer.work_for(30);
        trainer.finish(&a, &honest(i)).await;
        let view = c.job(&job.id).await;
        assert_eq!(view.audits_waiting, i + 1, "{view:?}");
        // The validator that shares the address is offered none of them.
        assert!(validator.heartbeat(&[], 1, 0).await.assignments.is_empty());
    }
    let view = c.job(&job.id).await;
    assert_eq!((view.status, view.step), (JobStatus::Running, 30));
    let e = earnings(&tp, &trainer).await;
    assert!(e.pending > Piconero::ZERO, "{e:?}");
    assert_eq!(e.available, Piconero::ZERO);

    // Before the deadline nothing changes.
    tp.advance(599_000);
    tp.pool.expire_unserved_audits().await.unwrap();
    assert_eq!(c.job(&job.id).await.status, JobStatus::Running);
    tp.advance(2_000);
    tp.pool.expire_unserved_audits().await.unwrap();
    let view = c.job(&job.id).await;
    assert_eq!(view.status, JobStatus::Unverified, "{view:?}");
    assert_eq!((view.audits_unserved, view.audits_waiting), (3, 0));
    let note = view.error.unwrap_or_default();
    assert!(
        note.contains("3 drawn audits") && note.contains("job verify"),
        "{note}"
    );
    let v = verdicts(&c, &job.id).await;
    assert_eq!(v.len(), 3);
    assert!(
        v.iter().all(|v| v.outcome == AuditStatus::Unserved),
        "{v:?}"
    );
    assert!(segments(&c, &job.id)
        .await
        .iter()
        .all(|s| s.status == CommitmentStatus::Accepted));
    // The work was done: at the deadline the earnings are released.
    let e = earnings(&tp, &trainer).await;
    assert_eq!(e.pending, Piconero::ZERO);
    assert!(e.available > Piconero::ZERO, "{e:?}");
    let events = c.events(&job.id, None).await;
    assert!(events.iter().any(|(_, _, e)| matches!(
        &e.kind,
        JobEventKind::Status {
            status: JobStatus::Unverified,
            ..
        }
    )));
    assert_clean(&tp).await;
}

#[tokio::test]
async fn a_dedicated_validator_replays_but_never_trains() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let validator = tp
        .provider_with("pool's own validator", |p| {
            p.validate = true;
            p.train = false;
        })
        .await;
    let trainer = tp.provider("trainer").await;
    let job = c
        .submit(&spec("paranoid", None), b"some text to train on")
        .await;
    // The queue holds a training task, but not for this one.
    assert!(validator.heartbeat(&[], 1, 0).await.assignments.is_empty());
    let a = take_kind(&trainer, TaskKind::Train).await;
    trainer.finish(&a, &honest(0)).await;
    let r = take_kind(&validator, TaskKind::Replay).await;
    assert_eq!(r.segment, 0);
    replay_honestly(&validator, &r).await;
    assert_eq!(
        segments(&c, &job.id).await[0].status,
        CommitmentStatus::Verified
    );
    let view = provider_view(&tp, &c, &validator).await;
    assert!(view.validate && !view.train, "{view:?}");
    assert_clean(&tp).await;
}

#[tokio::test]
async fn an_old_checkpoint_submitted_again_is_refused() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let p = tp.provider("rig").await;
    c.submit(&spec("none", None), b"some text to train on")
        .await;
    let a0 = p.take().await;
    p.finish(&a0, &honest(0)).await;
    let a = p.take().await;
    let e = p
        .commit(&a.task_id, &p.commit_for(&a, &checkpoint(&a0, &honest(0))))
        .await
        .err(400);
    assert!(
        e.message.contains("committed for segment 0"),
        "{}",
        e.message
    );
    // A commitment claiming another class than the registered one.
    let c1 = p.commit_for(&a, &checkpoint(&a, &honest(1)));
    p.client.upload(&checkpoint(&a, &honest(1))).await;
    let forged = p.resign(&c1, |cm| cm.class = "native-0.0.0/cuda/sm_90".into());
    let e = p.commit(&a.task_id, &forged).await.err(400);
    assert!(e.message.starts_with("commitment.class"), "{}", e.message);
    assert_eq!(p.commit(&a.task_id, &c1).await.status.as_u16(), 200);
}

#[tokio::test]
async fn verification_none_draws_no_audits() {
    let tp = TestPool::start().await;
    let c = tp.customer("alice").await;
    let trainer = tp.provider("trainer").await;
    let _validator = tp.provider_with("validator", |p| p.validate = true).await;
    let job = c
        .submit(&spec("none", None), b"some text to train on")
        .await;
    for i in 0..3 {
        let a = take_kind(&trainer, TaskKind::Train).await;
        trainer.finish(&a, &honest(i)).await;
    }
    assert_eq!(c.job(&job.id).await.status, JobStatus::Succeeded);
    assert!(verdicts(&c, &job.id).await.is_empty());
}
