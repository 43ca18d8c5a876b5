//! The JSON messages of the pool's HTTP API (`/v1/...`).
//!
//! | method & path                     | who      | body → reply                              |
//! |-----------------------------------|----------|-------------------------------------------|
//! | `POST /v1/accounts`               | anyone   | [`CreateAccount`] → [`AccountCreated`]    |
//! | `GET  /v1/account`                | customer | → [`AccountView`]                         |
//! | `PUT  /v1/blobs/{sha256}`         | any key  | raw bytes → [`BlobStored`]                |
//! | `GET  /v1/blobs/{sha256}`         | any key  | → raw bytes                               |
//! | `POST /v1/jobs`                   | customer | [`SubmitJob`] → [`JobView`]               |
//! | `GET  /v1/jobs`                   | customer | → `[JobView]`                             |
//! | `GET  /v1/jobs/{id}`              | customer | → [`JobView`]                             |
//! | `POST /v1/jobs/{id}/cancel`       | customer | → [`JobView`]                             |
//! | `GET  /v1/jobs/{id}/segments`     | customer | → `[SegmentView]`                         |
//! | `GET  /v1/jobs/{id}/rounds`       | customer | → `[RoundView]` (parallel jobs)           |
//! | `GET  /v1/jobs/{id}/events`       | customer | server-sent [`JobEvent`]s                 |
//! | `POST /v1/jobs/{id}/checkpoint-requests` | customer | [`CheckpointRequest`] → [`CheckpointRequestReply`] |
//! | `GET  /v1/providers`              | any key  | → `[ProviderView]`                        |
//! | `POST /v1/providers/challenge`    | anyone   | → [`RegistrationChallenge`]               |
//! | `POST /v1/providers/register`     | anyone   | [`Register`] → [`Registered`]             |
//! | `POST /v1/providers/heartbeat`    | provider | [`Heartbeat`] → [`HeartbeatReply`]        |
//! | `POST /v1/tasks/{id}/progress`    | provider | [`Progress`] → 204                        |
//! | `POST /v1/tasks/{id}/commit`      | provider | [`Commit`] → [`CommitReply`]              |
//! | `POST /v1/tasks/{id}/outer`       | provider | [`OuterCommit`] → [`CommitReply`]         |
//! | `POST /v1/tasks/{id}/fail`        | provider | [`TaskFailed`] → 204                      |
//! | `POST /v1/providers/proofs/{id}`  | provider | [`ProofAnswer`](crate::proof::ProofAnswer) → [`ProofResult`](crate::proof::ProofResult) |
//! | `POST /v1/providers/compliance`    | provider | [`SignedCompliance`](crate::compliance::SignedCompliance) → `{"passed": bool}` |
//! | `POST /v1/providers/status`       | node key | [`SignedNonce`] → [`ProviderStatusReply`] |
//! | `POST /v1/tasks/{id}/release`     | provider | [`TaskFailed`] (the pause reason) → 204   |
//! | `POST /v1/tasks/{id}/replay`      | provider | [`SignedReplay`] → 204                    |
//! | `GET  /v1/jobs/{id}/verdicts`     | customer | → `[VerdictView]`                         |
//! | `GET  /v1/account/balance`        | customer | → [`Balance`]                             |
//! | `POST /v1/account/deposit`        | customer | → [`DepositAddress`]                      |
//! | `POST /v1/account/faucet`         | customer | [`Faucet`] → [`Balance`] (dev backend)    |
//! | `POST /v1/account/withdraw`       | customer | [`Withdraw`] → [`PayoutView`]             |
//! | `POST /v1/providers/earnings`     | node key | [`SignedNonce`] → [`Earnings`]              |
//! | `POST /v1/providers/stake`        | node key | [`StakeRequest`] → [`Earnings`]           |
//! | `GET  /v1/pool`                   | anyone   | → [`PoolInfo`]                            |
//! | `GET  /v1/overview`               | anyone   | → [`PoolOverview`]                        |
//! | `GET  /v1/providers/{id}`         | any key  | → [`ProviderView`]                        |
//! | `GET  /v1/providers/{id}/telemetry` | any key | → `[TelemetrySample]`                     |
//! | `GET  /v1/jobs/{id}/model`        | customer | → the model file (safetensors)            |
//! | `POST /v1/providers/views`        | node key | [`SignedNonce`] → [`ViewOpened`]          |
//! | `GET  /v1/providers/me`           | view     | → [`RigView`]                             |
//! | `POST /v1/bookings`               | customer | [`Book`] → [`BookingView`]                |
//! | `GET  /v1/bookings`               | customer | → `[BookingView]`                         |
//! | `POST /v1/bookings/{id}/cancel`   | customer | → [`BookingView`]                         |
//! | `GET  /metrics`                   | anyone   | → Prometheus text                         |
//! | `GET  /v1/openapi.json`           | anyone   | → this API's OpenAPI 3 document           |
//!
//! Customers authenticate with `Authorization: Bearer <api key>`; providers
//! with the session token [`Registered::token`] they got by proving they
//! hold their node key; a rig's owner, on the dashboard, with the read-only
//! view token [`ViewOpened::token`] a node proof opened. Errors are [`ApiError`] bodies.

use crate::commitment::{SignedCommitment, SignedReplay};
use crate::hardware::{Hardware, Telemetry};
use crate::hash::Sha256Hex;
use crate::id::{AccountId, JobId, ProviderId, TaskId};
use crate::money::Piconero;
use crate::state::{
    AuditReason, AuditStatus, BookingStatus, CommitmentStatus, PayoutStatus, ProviderChange,
    ProviderStatus,
};
pub use crate::state::{JobStatus, TaskKind};
use serde::{Deserialize, Serialize};

/// The body of every error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// A stable machine-readable code: `not_found`, `unauthorized`,
    /// `forbidden`, `bad_request`, `invalid_spec`, `too_large`,
    /// `digest_mismatch`, `conflict`, `insufficient_funds`, `unavailable`,
    /// `rate_limited`, `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAccount {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountCreated {
    pub account_id: AccountId,
    /// Shown once; the pool stores only its hash.
    pub api_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountView {
    pub id: AccountId,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobStored {
    pub sha256: Sha256Hex,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitJob {
    /// The job spec, as TOML text.
    pub spec_toml: String,
    /// The dataset, uploaded before as a blob.
    pub data_sha256: Sha256Hex,
    /// Train inside this booking of the customer's (`bk_…`): only its
    /// providers take the job, inside its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<String>,
    /// A confidential job: its data key sealed to each provider the
    /// customer accepts (`data_sha256` is then the sealed dataset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_keys: Vec<JobKey>,
    /// A confidential job: what the data fixes of the model, which the
    /// pool cannot read from a sealed dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_shape: Option<crate::model::DataShape>,
}

/// A provider's certification into a tier, as anyone sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertifiedTier {
    pub tier: crate::state::ProviderTier,
    /// When it ends, RFC 3339.
    pub expires_at: String,
}

/// A confidential job's data key, sealed to one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobKey {
    pub provider: ProviderId,
    pub sealed_key: crate::privacy::SealedKey,
}

/// A job as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub status: JobStatus,
    /// The job spec as submitted (TOML).
    pub spec_toml: String,
    pub steps: u64,
    pub checkpoint_every: u64,
    /// The step of the last accepted checkpoint.
    pub step: u64,
    pub segments_done: u32,
    pub segments_total: u32,
    /// The training loss at the last accepted checkpoint (the live loss of
    /// a segment in progress is in the job's `progress` events): one batch's.
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub last_loss: Option<f32>,
    /// The loss on the job's held-out data (`data.eval_fraction`) at the
    /// last accepted checkpoint: how well the model does on data it never
    /// trained on.
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub eval_loss: Option<f32>,
    /// The provider working on the job now, if any.
    pub provider: Option<ProviderId>,
    pub data_sha256: Sha256Hex,
    /// The last accepted checkpoint; the trained model once succeeded.
    pub checkpoint_sha256: Option<Sha256Hex>,
    pub error: Option<String>,
    /// The job's budget, held in escrow from submit.
    #[serde(default)]
    pub budget: Piconero,
    /// What the job's paid segments cost so far, fees included.
    #[serde(default)]
    pub spent: Piconero,
    /// What is still held in escrow; refunded when the job ends.
    #[serde(default)]
    pub escrow: Piconero,
    /// The model's parameters, as the pool learnt them from the spec and
    /// the data (none for a container job: its script's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// The memory a training step takes, in bytes: the least a provider's
    /// device must have to get the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// For a queued job that no connected provider can take now: why
    /// (each reason with how many providers it keeps out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The booking the job trains in, if submitted into one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<String>,
    /// Drawn audits of a running job that no connected validator can serve
    /// now (none is connected that is neither the trainer nor shares its
    /// payout address): they wait, and the job with them, until one comes
    /// or their deadline passes.
    #[serde(default)]
    pub audits_waiting: u32,
    /// Drawn audits that no eligible validator served before their
    /// deadline; a job with any ends `unverified`.
    #[serde(default)]
    pub audits_unserved: u32,
    /// How many providers trained its committed segments.
    #[serde(default)]
    pub providers: u32,
    /// A parallel job's worker slots and the round it trains (its steps
    /// advance a round at a time); `None` for other jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<ParallelProgress>,
    pub created_at: String,
    pub updated_at: String,
}

/// Where a parallel job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParallelProgress {
    pub workers: u32,
    /// The round training now (the number of rounds once trained).
    pub round: u64,
    pub rounds: u64,
}

/// One committed segment of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentView {
    pub segment: u32,
    pub start_step: u64,
    pub end_step: u64,
    pub provider: ProviderId,
    pub checkpoint_sha256: Sha256Hex,
    pub commitment: SignedCommitment,
    #[serde(deserialize_with = "crate::finite::vec_f32")]
    pub loss_trace: Vec<f32>,
    /// The held-out loss at the segment's end checkpoint, if measured.
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub eval_loss: Option<f32>,
    pub committed_at: String,
    /// `accepted` (not drawn for an audit), `auditing` or `verified`.
    #[serde(default)]
    pub status: CommitmentStatus,
    /// The device's share and the foreign processes seen while it trained,
    /// as its provider reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedication: Option<Dedication>,
}

/// One round of a parallel job (`GET /v1/jobs/{id}/rounds`): who trained
/// which worker slot, how long the round waited for its slowest worker,
/// and its accepted outer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoundView {
    pub round: u64,
    pub start_step: u64,
    pub end_step: u64,
    /// The round's accepted segments, in worker order.
    pub workers: Vec<RoundWorker>,
    /// Seconds between the round's first and last worker's commitment:
    /// how long the round waited for its slowest worker.
    #[serde(deserialize_with = "crate::finite::f64")]
    pub wait_seconds: f64,
    /// What the round's files moved through the pool's blob routes, up
    /// and down: its workers' pseudo-gradients and the checkpoints the
    /// pool asked for (replays for audits included), the global
    /// checkpoint it made and its outer update.
    #[serde(default)]
    pub bytes: u64,
    /// From the round's first lease to its outer step, in seconds (0
    /// until the step is accepted).
    #[serde(default)]
    pub seconds: f64,
    /// The accepted outer step; `None` while the round trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<OuterView>,
}

/// A worker slot's segment in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoundWorker {
    pub worker: u32,
    pub segment: u32,
    pub provider: ProviderId,
    pub checkpoint_sha256: Sha256Hex,
    /// The segment's last training loss.
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub loss: Option<f32>,
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub eval_loss: Option<f32>,
    /// What its provider moved for it through the pool's blob routes: its
    /// pseudo-gradient up, and the round's start down (the outer update,
    /// or the global checkpoint).
    #[serde(default)]
    pub bytes: u64,
    /// From its lease to its commitment, in seconds.
    #[serde(default)]
    pub seconds: f64,
}

/// A round's accepted outer step: who computed it, and its commitment
/// (which the pool checked by computing the step again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OuterView {
    pub provider: ProviderId,
    pub global_sha256: Sha256Hex,
    pub commitment: crate::commitment::SignedOuterCommitment,
    /// The workers' mean last training loss and held-out loss.
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub loss: Option<f32>,
    #[serde(default, deserialize_with = "crate::finite::option_f32")]
    pub eval_loss: Option<f32>,
    pub committed_at: String,
}

/// The outcome of one audit, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerdictView {
    pub audit_id: String,
    pub job_id: JobId,
    pub segment: u32,
    /// Why the segment was audited: `sampled`, `paranoid`, `follow_up`.
    pub reason: AuditReason,
    /// `open`, `verified`, `provider_fault`, `validator_fault` or `void`
    /// (the segment was discarded by a rollback before it was decided).
    pub outcome: AuditStatus,
    /// Who was found at fault, if anyone.
    pub at_fault: Option<ProviderId>,
    /// The trainer's signed commitment.
    pub commitment: SignedCommitment,
    /// Each validator's signed report and whether it matched the claim.
    pub replays: Vec<ReplayView>,
    pub opened_at: String,
    pub decided_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayView {
    pub validator: ProviderId,
    pub matches: bool,
    pub replay: SignedReplay,
}

/// One entry of a job's event log, streamed over server-sent events with
/// `id:` = [`JobEvent::id`] and `event:` = the kind's `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    pub id: i64,
    pub job_id: JobId,
    pub at: String,
    #[serde(flatten)]
    pub kind: JobEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    /// The job changed status.
    Status {
        status: JobStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A segment was leased to a provider.
    Assigned {
        task_id: TaskId,
        provider: ProviderId,
        segment: u32,
        start_step: u64,
        end_step: u64,
    },
    /// Training progress reported by the provider.
    Progress {
        provider: ProviderId,
        step: u64,
        #[serde(deserialize_with = "crate::finite::f32")]
        loss: f32,
        #[serde(deserialize_with = "crate::finite::f64")]
        tokens_per_sec: f64,
    },
    /// A segment's checkpoint was committed and accepted.
    Checkpoint {
        provider: ProviderId,
        segment: u32,
        step: u64,
        checkpoint_sha256: Sha256Hex,
        commitment: crate::signing::ChainHash,
        #[serde(deserialize_with = "crate::finite::f32")]
        loss: f32,
        /// The held-out loss at the checkpoint, when the job holds data out.
        #[serde(
            default,
            deserialize_with = "crate::finite::option_f32",
            skip_serializing_if = "Option::is_none"
        )]
        eval_loss: Option<f32>,
    },
    /// A provider stopped heart-beating; the segment goes back to the queue.
    LeaseExpired {
        task_id: TaskId,
        provider: ProviderId,
        segment: u32,
    },
    /// A provider paused on its owner's limits and handed the segment back;
    /// it goes back to the queue (not a failure).
    Released {
        task_id: TaskId,
        provider: ProviderId,
        segment: u32,
        reason: String,
    },
    /// A provider reported that the segment failed.
    TaskFailed {
        task_id: TaskId,
        provider: ProviderId,
        segment: u32,
        reason: String,
    },
    /// A verified segment was paid from the job's escrow: `price` =
    /// `price_per_hour` × `billed_ms`, split into the provider's share, the
    /// pool's fee and the validator's fee.
    Payment {
        provider: ProviderId,
        segment: u32,
        billed_ms: u64,
        price_per_hour: Piconero,
        price: Piconero,
        provider_share: Piconero,
        pool_fee: Piconero,
        validator_fee: Piconero,
        /// The job's cost so far.
        spent: Piconero,
        /// `train` for a segment, `replay` for a validator's audit of one.
        #[serde(default)]
        kind: TaskKind,
    },
    /// A committed segment was drawn for an audit (or a dispute needs
    /// another replay).
    Audit {
        segment: u32,
        provider: ProviderId,
        /// `sampled`, `paranoid`, `follow_up` or `dispute`.
        reason: String,
    },
    /// An audit was decided. `outcome`: `verified`, `provider_fault` or
    /// `validator_fault`; the evidence is under `GET /v1/jobs/{id}/verdicts`.
    Verdict {
        segment: u32,
        provider: ProviderId,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_fault: Option<ProviderId>,
        validators: Vec<ProviderId>,
    },
    /// A parallel job's round closed: the outer step over its workers'
    /// segments was computed by `provider`, computed again by the pool,
    /// and accepted. `loss` and `eval_loss` are the workers' means;
    /// `wait_seconds` how long the round waited between its first and its
    /// last worker's commitment.
    OuterStep {
        round: u64,
        step: u64,
        provider: ProviderId,
        workers: Vec<u32>,
        global_sha256: Sha256Hex,
        commitment: crate::signing::ChainHash,
        #[serde(deserialize_with = "crate::finite::f32")]
        loss: f32,
        #[serde(
            default,
            deserialize_with = "crate::finite::option_f32",
            skip_serializing_if = "Option::is_none"
        )]
        eval_loss: Option<f32>,
        #[serde(deserialize_with = "crate::finite::f64")]
        wait_seconds: f64,
    },
    /// A parallel job's round closed without a worker: `min_workers` had
    /// committed and the others did not within the pool's grace. Its task
    /// (if leased, `provider`'s) was cancelled; the slot keeps its last
    /// committed state for the next round.
    LeftOut {
        round: u64,
        worker: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider: Option<ProviderId>,
    },
    /// A worker slot's checkpoint was never delivered and the provider that
    /// holds it is gone: the slot's segment of `round` starts from fresh
    /// AdamW moments (and the round's global weights, as always).
    SlotReset {
        round: u64,
        worker: u32,
        /// The provider that held the slot's checkpoint.
        provider: ProviderId,
    },
    /// An outer step's commitment did not match the pool's own computation:
    /// its provider is barred from the job and its stake slashed, and the
    /// step goes to another provider.
    OuterRefused {
        round: u64,
        provider: ProviderId,
        reason: String,
    },
    /// A provider was found cheating: the job went back to the checkpoint
    /// before `segment` and continues from there on other providers.
    RolledBack {
        segment: u32,
        step: u64,
        provider: ProviderId,
    },
    /// The job ended: what was left in escrow went back to the customer and
    /// the providers' pending earnings became available to pay out.
    Settled {
        refunded: Piconero,
        released: Piconero,
    },
}

/// A provider as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderView {
    pub id: ProviderId,
    pub name: String,
    /// `idle`, `sharing`, `reserved` (booked for a future window; other
    /// work goes on until then), `paused` (with `paused_reason`), `held`
    /// (with `held`: no work until its hardware is proven) or
    /// `disconnected`.
    pub status: ProviderStatus,
    /// Why a paused provider takes no work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// Why the pool gives it no work (a hardware proof pending or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The speed its last hardware proof measured, in GFLOP/s: its
    /// performance score.
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub proven_gflops: Option<f64>,
    /// The rate the pool measured on its latest sizeable blob uploads and
    /// downloads, in bytes per second. With `proven_gflops`, what places
    /// it in a parallel job's rounds.
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub transfer_rate: Option<f64>,
    pub hardware: Hardware,
    pub class: String,
    pub last_seen: String,
    pub segments_committed: u64,
    /// The provider's price floor per GPU-hour.
    #[serde(default)]
    pub price_per_hour: Piconero,
    /// Whether it replays other providers' segments.
    #[serde(default)]
    pub validate: bool,
    /// Whether it trains (a dedicated validator does not).
    #[serde(default = "yes")]
    pub train: bool,
    /// Whether it runs container jobs (its owner's `accept_containers`,
    /// and podman on the rig).
    #[serde(default)]
    pub containers: bool,
    /// Its encryption key as it announced it (see
    /// [`crate::privacy::AnnouncedKey`]): check it before sealing to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<crate::privacy::AnnouncedKey>,
    /// The latest host compliance report it sent (the isolated tier's
    /// evidence), signed by its node key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<crate::compliance::SignedCompliance>,
    /// The tier the pool's operator certified it into, while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<CertifiedTier>,
    /// Audits passed since the last fault (trained segments replayed with a
    /// match, and replays of its own that were right).
    #[serde(default)]
    pub streak: u64,
    /// Verdicts against it, ever.
    #[serde(default)]
    pub faults: u64,
    /// `streak / (streak + 10)`, in `[0, 1)`; see
    /// [`crate::verification::reputation`].
    #[serde(default, deserialize_with = "crate::finite::f64")]
    pub reputation: f64,
    /// The probability that a segment it trains for a `standard` job is
    /// audited.
    #[serde(default, deserialize_with = "crate::finite::f64")]
    pub audit_probability: f64,
    /// Its last heartbeat's readings: temperature, power, utilization,
    /// foreign processes, where its device tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::hardware::Telemetry>,
}

/// A single-use nonce a provider signs to register.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistrationChallenge {
    pub nonce: String,
    /// The nonce is refused after this long.
    pub expires_in_seconds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Register {
    /// Hex Ed25519 public key.
    pub public_key: crate::signing::PublicKey,
    pub name: String,
    pub hardware: Hardware,
    /// Seconds since the epoch; must be within a few minutes of the pool's
    /// clock.
    pub time: i64,
    /// The nonce of a [`RegistrationChallenge`], used once.
    pub nonce: String,
    /// Signature over [`crate::commitment::registration_message`].
    pub signature: crate::signing::Signature,
    /// Tasks the provider was working on before it (re)started.
    #[serde(default)]
    pub resuming: Vec<TaskId>,
    /// The least the provider takes per GPU-hour (per CPU-hour on a CPU).
    #[serde(default)]
    pub price_per_hour: Piconero,
    /// What the provider's matrix-multiplication benchmark measured, in
    /// GFLOP/s: with the job's size, the cap on a segment's billed time.
    #[serde(default, deserialize_with = "crate::finite::option_f64")]
    pub benchmark_gflops: Option<f64>,
    /// Where payouts go, split by shares. Empty: earnings accumulate until
    /// an address is set.
    #[serde(default)]
    pub payout: Vec<PayoutSplit>,
    /// Accept replay tasks (audits of other providers' segments).
    #[serde(default)]
    pub validate: bool,
    /// Accept training tasks. `false` with `validate` makes a dedicated
    /// validator (such as one the pool's operator runs).
    #[serde(default = "yes")]
    pub train: bool,
    /// The region its owner declared (`region` in the provider config):
    /// jobs that name a region (`resources.region`) train only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Runs container jobs: its owner opted in (`accept_containers`) and
    /// podman works on it. A provider without it is never offered one.
    #[serde(default)]
    pub containers: bool,
    /// Its encryption key, bound to its node key: what confidential jobs'
    /// data keys are sealed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<crate::privacy::AnnouncedKey>,
    /// A provider started for the isolated tier: its host compliance
    /// report, signed by its node key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<crate::compliance::SignedCompliance>,
}

fn yes() -> bool {
    true
}

/// A provider's own view of itself at the pool (`POST
/// /v1/providers/status` with a signed nonce): its listing and its recent
/// pauses and resumes, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderStatusReply {
    pub provider: ProviderView,
    pub history: Vec<StatusChange>,
}

/// One change in a provider's standing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusChange {
    /// What changed: `registered`, `paused`, `held`, `disconnected`, …
    pub status: ProviderChange,
    /// Why (for a resume: the pause it ends; for a hold: what it waits for).
    pub reason: Option<String>,
    pub at: String,
}

/// One destination of a provider's payouts and its share of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PayoutSplit {
    /// A Monero address of the pool's network.
    pub address: String,
    /// A weight: a destination gets `share / sum of shares` of each payout.
    pub share: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    pub provider_id: ProviderId,
    /// Session token for the provider's other calls.
    pub token: String,
    pub heartbeat_seconds: u32,
    pub lease_seconds: u32,
    /// Of [`Register::resuming`], the tasks still leased to this provider:
    /// carry on with them.
    pub resume: Vec<Assignment>,
    /// Of [`Register::resuming`], the tasks no longer this provider's: drop
    /// them.
    pub dropped: Vec<TaskId>,
    /// A hardware proof to answer before any work is given
    /// (`POST /v1/providers/proofs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<crate::proof::ProofChallenge>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    pub telemetry: Telemetry,
    /// The tasks running now, with their current step.
    pub running: Vec<RunningTask>,
    /// How many more tasks the provider would take.
    pub capacity: u32,
    /// Long-poll: with no work to hand out, the pool may hold the reply this
    /// many seconds (at most 30) waiting for work.
    pub wait_seconds: u32,
    /// Why the provider takes no work now (`schedule`, `temperature`,
    /// `owner_busy`, `owner_request`); `None` while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// The most tasks one provider may run, report or ask for at once: what a
/// heartbeat or a registration may make the pool do is bounded by it, not
/// only by the body's size.
pub const MAX_TASKS_PER_PROVIDER: usize = 64;

impl Heartbeat {
    /// Checks what the heartbeat asks of the pool: at most
    /// [`MAX_TASKS_PER_PROVIDER`] running tasks and as much capacity, and
    /// possible telemetry.
    pub fn check(&self) -> Result<(), String> {
        self.telemetry.check()?;
        check_task_count("running", self.running.len())?;
        check_task_count("capacity", self.capacity as usize)
    }
}

/// Refuses a count of tasks above [`MAX_TASKS_PER_PROVIDER`].
pub fn check_task_count(field: &str, n: usize) -> Result<(), String> {
    if n > MAX_TASKS_PER_PROVIDER {
        Err(format!(
            "{field}: {n} tasks; a provider runs at most {MAX_TASKS_PER_PROVIDER} at once"
        ))
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunningTask {
    pub task_id: TaskId,
    pub step: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    pub assignments: Vec<Assignment>,
    /// Tasks to stop now (the job was cancelled or the lease was lost).
    pub cancel: Vec<TaskId>,
    /// A hardware proof the pool asks for now, at a random time after
    /// registration: answered like the one in [`Registered::proof`]; no
    /// new work is given until it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<crate::proof::ProofChallenge>,
    /// Checkpoints this provider committed (a parallel job's inner
    /// segments, which send only their pseudo-gradient) that the pool now
    /// needs: for an audit's replay, or for a worker slot moving to
    /// another provider. Uploaded from the provider's cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wanted: Vec<Sha256Hex>,
    /// The pool asks for the isolated tier's host checks now, at a random
    /// time after the last (`POST /v1/providers/compliance` within ten
    /// minutes, or the tier is lost).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compliance_due: bool,
}

/// A segment leased to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub task_id: TaskId,
    pub job_id: JobId,
    pub segment: u32,
    pub start_step: u64,
    pub end_step: u64,
    pub spec_toml: String,
    pub data_sha256: Sha256Hex,
    /// The checkpoint to start from; `None` for the first segment.
    pub start_checkpoint_sha256: Option<Sha256Hex>,
    /// `H_{i-1}`: the commitment the new one must chain from.
    pub prev_commitment: crate::signing::ChainHash,
    pub lease_seconds: u32,
    /// Train the segment and commit it, or replay it for an audit.
    #[serde(default)]
    pub kind: TaskKind,
    /// For a replay: what the trainer committed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayTarget>,
    /// The model the pool learnt from the spec and the data: the
    /// checkpoint committed for this segment must hold exactly its tensors
    /// ([`crate::checkpoint::inspect`]).
    pub model: crate::model::ModelMeta,
    /// A parallel job's task: which round, which worker slot, and (for
    /// the outer step) which inner segments enter. `start_checkpoint_sha256`
    /// is then the round's global checkpoint (`None` in round 0: the
    /// seeded initial weights) and `prev_commitment` its chain hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<RoundTask>,
    /// A confidential job: its data key sealed to this provider. Its
    /// dataset and checkpoints are sealed files ([`crate::privacy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_key: Option<crate::privacy::SealedKey>,
}

/// A parallel job's part of an [`Assignment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoundTask {
    pub round: u64,
    /// An inner segment's (or its replay's) worker slot; `None` for the
    /// outer step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    /// The slot's last committed checkpoint before this round, whose
    /// AdamW moments the segment continues; `None`: fresh moments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_checkpoint_sha256: Option<Sha256Hex>,
    /// The outer step's inputs, in worker order (empty for a segment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<crate::commitment::OuterInput>,
    /// Round `r > 0`: how round `r − 1`'s weights became this round's. A
    /// provider that holds them downloads the update (a quarter of the
    /// bytes with int8) instead of the global checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<RoundUpdate>,
}

/// `POST /v1/jobs/{id}/checkpoint-requests`: a parallel job's committed
/// checkpoints a customer needs (to replay segments in `job verify`); the
/// workers that keep them upload them when the pool asks. At most
/// [`CheckpointRequest::MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    pub checkpoint_sha256: Vec<Sha256Hex>,
}

impl CheckpointRequest {
    pub const MAX: usize = 64;
}

/// Which of the requested checkpoints the pool has now, and which it
/// asked their workers for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointRequestReply {
    pub present: Vec<Sha256Hex>,
    pub asked: Vec<Sha256Hex>,
}

/// The outer update that leads from one global checkpoint to the next
/// ([`crate::delta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoundUpdate {
    /// The global checkpoint of the round before.
    pub from_global_sha256: Sha256Hex,
    /// Its outer step's update file.
    pub update_sha256: Sha256Hex,
    /// The weights file ([`crate::outer::Weights`]) the update gives:
    /// what the provider checks its rebuilt weights against.
    pub weights_sha256: Sha256Hex,
}

/// The trainer's claim a replay is judged against. Inside one
/// reproducibility class the validator only reports its own end hash; across
/// classes it measures its distance to the claimed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayTarget {
    pub claimed_checkpoint_sha256: Sha256Hex,
    /// The trainer's reproducibility class.
    pub claimed_class: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub step: u64,
    #[serde(deserialize_with = "crate::finite::f32")]
    pub loss: f32,
    #[serde(deserialize_with = "crate::finite::f64")]
    pub tokens_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Commit {
    pub commitment: SignedCommitment,
    /// One loss per step of the segment.
    #[serde(deserialize_with = "crate::finite::vec_f32")]
    pub loss_trace: Vec<f32>,
    /// The loss on the job's held-out data at the end checkpoint, as the
    /// provider measured it (when the job holds data out).
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f32",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_loss: Option<f32>,
    /// How long the segment trained, in milliseconds of wall-clock time,
    /// less the rests the owner's `max_gpu_share` imposed (the customer
    /// does not pay for those).
    #[serde(default)]
    pub compute_ms: u64,
    /// Whether the device was really the customer's while the segment ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedication: Option<Dedication>,
}

/// The time a segment had the device to itself (its dedication), as the
/// provider's agent measured it: recorded per segment and shown to the
/// customer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dedication {
    /// Of the time between the segment's first and last step, the share
    /// the device spent training it, from 0 to 1 (below 1 when the owner's
    /// `max_gpu_share` rests the device between steps).
    #[serde(deserialize_with = "crate::finite::f64")]
    pub share: f64,
    /// The most processes other than gradpool's seen using the device while
    /// the segment trained.
    pub foreign_processes: u32,
}

impl Progress {
    /// Checks that the numbers are possible: a loss ≥ 0, a speed ≥ 0.
    pub fn check(&self) -> Result<(), String> {
        crate::finite::check_losses("loss", &[self.loss])?;
        crate::finite::check_range("tokens_per_sec", self.tokens_per_sec, 0.0, f64::MAX)
    }
}

impl Commit {
    /// Checks that the numbers are possible: every loss ≥ 0 and the
    /// dedicated share between 0 and 1.
    pub fn check(&self) -> Result<(), String> {
        crate::finite::check_losses("loss_trace", &self.loss_trace)?;
        if let Some(l) = self.eval_loss {
            crate::finite::check_losses("eval_loss", &[l])?;
        }
        if let Some(d) = &self.dedication {
            crate::finite::check_range("dedication.share", d.share, 0.0, 1.0)?;
        }
        Ok(())
    }
}

/// `POST /v1/tasks/{id}/outer`: the outer step a provider computed, after
/// uploading the new global checkpoint as a blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OuterCommit {
    pub commitment: crate::commitment::SignedOuterCommitment,
    /// How long the step took, in milliseconds.
    #[serde(default)]
    pub compute_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitReply {
    pub accepted: bool,
    /// True when this was the job's last segment.
    pub job_done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskFailed {
    pub reason: String,
}

/// A customer's money at the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balance {
    pub account_id: AccountId,
    /// Spendable: funds new jobs, can be withdrawn.
    pub available: Piconero,
    /// Held in escrow: the budgets of running jobs and the holds of
    /// bookings.
    pub escrowed: Piconero,
    /// Withdrawals on their way out.
    pub withdrawing: Piconero,
    /// `dev` (a faucet, no Monero) or `monero`.
    pub backend: String,
}

/// Free money from the dev backend's faucet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Faucet {
    pub amount: Piconero,
}

/// A customer reserves providers for a window (`POST /v1/bookings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Book {
    /// How many providers (GPUs) to reserve.
    pub gpus: u32,
    /// When the window opens (RFC 3339).
    pub from: String,
    /// When it closes (RFC 3339).
    pub until: String,
    /// The least performance score (proven GFLOP/s) a provider needs.
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_score: Option<f64>,
}

/// A booking as its customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BookingView {
    pub id: String,
    /// `reserved` (before the window), `active` (in it), `ended` or
    /// `cancelled`.
    pub status: BookingStatus,
    pub gpus: u32,
    pub from: String,
    pub until: String,
    #[serde(
        default,
        deserialize_with = "crate::finite::option_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_score: Option<f64>,
    /// The reserved providers.
    pub providers: Vec<ProviderId>,
    /// Their prices together, per hour.
    pub price_per_hour: Piconero,
    /// The window's price, held in escrow until it ends.
    pub held: Piconero,
    pub created_at: String,
}

/// What a pool is and what it pays, for anyone (`GET /v1/pool`): a rig
/// owner deciding to join, `gradpool provider init` estimating earnings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolInfo {
    /// The pool's gradpool version.
    pub version: String,
    /// `dev` (a faucet, no Monero) or `monero`.
    pub backend: String,
    /// The Monero network payout addresses must be on: `mainnet`,
    /// `stagenet` or `testnet`.
    pub network: String,
    /// The pool's fee on each verified segment, in basis points.
    pub pool_fee_bps: u32,
    /// The validators' fee on each verified segment, in basis points.
    pub validator_fee_bps: u32,
    /// Providers heard from within a lease period.
    pub providers_connected: u32,
    /// The median price floor of those providers, per GPU-hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_provider_price_per_hour: Option<Piconero>,
    /// The median maximum price of jobs waiting or running, per GPU-hour
    /// (jobs without a maximum are not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_job_price_per_hour: Option<Piconero>,
    /// Jobs queued or running.
    pub jobs_open: u32,
    /// Whether providers must pass hardware proofs.
    pub hardware_proof: bool,
}

/// The pool at a glance, for anyone (`GET /v1/overview`): the front page
/// of its dashboard. Aggregates only, but for the latest verdicts, which
/// name the providers they judged (as their reputation does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolOverview {
    pub pool: PoolInfo,
    /// Providers by status (every status, zeros included).
    pub providers: std::collections::BTreeMap<String, u64>,
    /// Providers not disconnected, by device (`cpu`, `cuda`).
    pub devices: std::collections::BTreeMap<String, u64>,
    /// Jobs by state (every state, zeros included).
    pub jobs: std::collections::BTreeMap<String, u64>,
    /// The latest decided audits, newest first.
    pub recent_verdicts: Vec<PublicVerdict>,
}

/// A decided audit as anyone sees it: whose segment, why it was audited
/// and what was found; not whose job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicVerdict {
    /// The provider that trained the segment.
    pub provider: ProviderId,
    pub reason: AuditReason,
    /// `verified`, `provider_fault`, `validator_fault` or `void`.
    pub outcome: AuditStatus,
    pub at_fault: Option<ProviderId>,
    pub decided_at: String,
}

/// A read-only view of one provider, opened by its owner with a node proof
/// (`POST /v1/providers/views`, purpose `view`): what the dashboard's rig
/// page reads `GET /v1/providers/me` with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ViewOpened {
    /// `gpv_…`: shows this provider's page and nothing else, and does
    /// nothing; shown once, the pool keeps its sha256.
    pub token: String,
    pub provider_id: ProviderId,
    /// When it stops working, RFC 3339.
    pub expires_at: String,
}

/// Everything a rig's owner sees of it (`GET /v1/providers/me`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RigView {
    pub provider: ProviderView,
    /// Its changes of standing, newest first.
    pub history: Vec<StatusChange>,
    pub earnings: Earnings,
    /// Its hardware proofs, newest first.
    pub proofs: Vec<ProofRecord>,
    /// Decided audits of segments it trained, newest first.
    pub verdicts: Vec<PublicVerdict>,
    /// Its telemetry over the last hour, oldest first.
    pub telemetry: Vec<TelemetrySample>,
}

/// A provider's telemetry as the pool sampled it (once a minute, kept for
/// an hour): what the dashboard charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TelemetrySample {
    /// The minute it was taken in, RFC 3339.
    pub at: String,
    pub telemetry: Telemetry,
}

/// One hardware proof of a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProofRecord {
    /// `open`, `passed`, `wrong_answer`, `too_slow`, `no_answer` or `void`.
    pub outcome: crate::state::ProofStatus,
    pub issued_at: String,
    /// The speed the owner's agent claimed, GFLOP/s.
    #[serde(default, deserialize_with = "crate::finite::option_f64")]
    pub claimed_gflops: Option<f64>,
    /// The speed it proved, GFLOP/s.
    #[serde(default, deserialize_with = "crate::finite::option_f64")]
    pub proven_gflops: Option<f64>,
    pub elapsed_ms: Option<u64>,
}

/// Where to send Monero to fund an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DepositAddress {
    /// A subaddress of the pool's wallet, this account's alone.
    pub address: String,
    /// Confirmations before a deposit is credited.
    pub confirmations: u64,
}

/// Money out of a customer's balance to a Monero address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Withdraw {
    pub to: String,
    pub amount: Piconero,
    /// The same key twice withdraws once.
    pub idempotency_key: String,
}

/// A payout or withdrawal as its recipient sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PayoutView {
    pub id: String,
    /// `reserved`, `built`, `relayed`, `settled` (the dev money backend)
    /// or `cancelled`.
    pub status: PayoutStatus,
    pub address: String,
    pub amount: Piconero,
    pub txid: Option<String>,
    pub created_at: String,
}

/// A provider proving it holds its node key, outside a session: a
/// signature of [`crate::commitment::signed_nonce_message`] over a fresh
/// nonce from `POST /v1/providers/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedNonce {
    pub public_key: crate::signing::PublicKey,
    pub time: i64,
    pub nonce: String,
    pub signature: crate::signing::Signature,
}

/// What to do with a provider's stake.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StakeAction {
    /// Move available earnings into the stake.
    Add { amount: Piconero },
    /// Start the cool-down after which the stake becomes available.
    Withdraw,
    /// Ask for the subaddress that funds the stake from outside the pool
    /// (Monero pools only): a transfer to it is credited to the stake after
    /// the pool's confirmations.
    Deposit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StakeRequest {
    pub signed_nonce: SignedNonce,
    #[serde(flatten)]
    pub action: StakeAction,
}

/// A provider's money at the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Earnings {
    pub provider_id: ProviderId,
    /// Earned for verified segments of jobs still running.
    pub pending: Piconero,
    /// Ready to be paid out.
    pub available: Piconero,
    /// At stake: slashed if the provider cheats.
    pub stake: Piconero,
    /// When a requested stake withdrawal completes (RFC 3339), if one is
    /// under way.
    pub unstake_at: Option<String>,
    /// Paid out so far (relayed transactions).
    pub paid: Piconero,
    /// The payout addresses and their shares.
    pub payout: Vec<PayoutSplit>,
    /// Payouts, newest first.
    pub payouts: Vec<PayoutView>,
    /// The subaddress that funds the stake, once asked for
    /// ([`StakeAction::Deposit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stake_deposit_address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_events_are_tagged_and_flat() {
        let ev = JobEvent {
            id: 3,
            job_id: JobId::from("job_00000001"),
            at: "2026-01-01T00:00:00Z".into(),
            kind: JobEventKind::Progress {
                provider: ProviderId::from("prov_00000001"),
                step: 10,
                loss: 3.5,
                tokens_per_sec: 100.0,
            },
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], "progress");
        assert_eq!(json["step"], 10);
        let back: JobEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }
}
