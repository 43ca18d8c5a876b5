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
//! | `GET  /v1/jobs/{id}/events`       | customer | server-sent [`JobEvent`]s                 |
//! | `GET  /v1/providers`              | any key  | → `[ProviderView]`                        |
//! | `POST /v1/providers/challenge`    | anyone   | → [`RegistrationChallenge`]               |
//! | `POST /v1/providers/register`     | anyone   | [`Register`] → [`Registered`]             |
//! | `POST /v1/providers/heartbeat`    | provider | [`Heartbeat`] → [`HeartbeatReply`]        |
//! | `POST /v1/tasks/{id}/progress`    | provider | [`Progress`] → 204                        |
//! | `POST /v1/tasks/{id}/commit`      | provider | [`Commit`] → [`CommitReply`]              |
//! | `POST /v1/tasks/{id}/fail`        | provider | [`TaskFailed`] → 204                      |
//!
//! Customers authenticate with `Authorization: Bearer <api key>`; providers
//! with the session token [`Registered::token`] they got by proving they
//! hold their node key. Errors are [`ApiError`] bodies.

use crate::commitment::SignedCommitment;
use crate::hardware::{Hardware, Telemetry};
use crate::hash::Sha256Hex;
use crate::id::{AccountId, JobId, ProviderId, TaskId};
use serde::{Deserialize, Serialize};

/// The body of every error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable machine-readable code: `not_found`, `unauthorized`,
    /// `forbidden`, `bad_request`, `invalid_spec`, `too_large`,
    /// `digest_mismatch`, `conflict`, `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateAccount {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountCreated {
    pub account_id: AccountId,
    /// Shown once; the pool stores only its hash.
    pub api_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    pub id: AccountId,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobStored {
    pub sha256: Sha256Hex,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitJob {
    /// The job spec, as TOML text.
    pub spec_toml: String,
    /// The dataset, uploaded before as a blob.
    pub data_sha256: Sha256Hex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(format!("unknown job status {other:?}")),
        })
    }
}

/// A job as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub last_loss: Option<f32>,
    /// The provider working on the job now, if any.
    pub provider: Option<ProviderId>,
    pub data_sha256: Sha256Hex,
    /// The last accepted checkpoint; the trained model once succeeded.
    pub checkpoint_sha256: Option<Sha256Hex>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One committed segment of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentView {
    pub segment: u32,
    pub start_step: u64,
    pub end_step: u64,
    pub provider: ProviderId,
    pub checkpoint_sha256: Sha256Hex,
    pub commitment: SignedCommitment,
    pub loss_trace: Vec<f32>,
    pub committed_at: String,
}

/// One entry of a job's event log, streamed over server-sent events with
/// `id:` = [`JobEvent::id`] and `event:` = the kind's `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub id: i64,
    pub job_id: JobId,
    pub at: String,
    #[serde(flatten)]
    pub kind: JobEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        loss: f32,
        tokens_per_sec: f64,
    },
    /// A segment's checkpoint was committed and accepted.
    Checkpoint {
        provider: ProviderId,
        segment: u32,
        step: u64,
        checkpoint_sha256: Sha256Hex,
        commitment: String,
        loss: f32,
    },
    /// A provider stopped heart-beating; the segment goes back to the queue.
    LeaseExpired {
        task_id: TaskId,
        provider: ProviderId,
        segment: u32,
    },
    /// A provider reported that the segment failed.
    TaskFailed {
        task_id: TaskId,
        provider: ProviderId,
        segment: u32,
        reason: String,
    },
}

/// A provider as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderView {
    pub id: ProviderId,
    pub name: String,
    /// `idle`, `sharing` or `disconnected`.
    pub status: String,
    pub hardware: Hardware,
    pub class: String,
    pub last_seen: String,
    pub segments_committed: u64,
}

/// A single-use nonce a provider signs to register.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationChallenge {
    pub nonce: String,
    /// The nonce is refused after this long.
    pub expires_in_seconds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    /// Hex Ed25519 public key.
    pub public_key: String,
    pub name: String,
    pub hardware: Hardware,
    /// Seconds since the epoch; must be within a few minutes of the pool's
    /// clock.
    pub time: i64,
    /// The nonce of a [`RegistrationChallenge`], used once.
    pub nonce: String,
    /// Signature over [`crate::commitment::registration_message`].
    pub signature: String,
    /// Tasks the provider was working on before it (re)started.
    #[serde(default)]
    pub resuming: Vec<TaskId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub telemetry: Telemetry,
    /// The tasks running now, with their current step.
    pub running: Vec<RunningTask>,
    /// How many more tasks the provider would take.
    pub capacity: u32,
    /// Long-poll: with no work to hand out, the pool may hold the reply this
    /// many seconds (at most 30) waiting for work.
    pub wait_seconds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunningTask {
    pub task_id: TaskId,
    pub step: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub assignments: Vec<Assignment>,
    /// Tasks to stop now (the job was cancelled or the lease was lost).
    pub cancel: Vec<TaskId>,
}

/// A segment leased to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub prev_commitment: String,
    pub lease_seconds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub loss: f32,
    pub tokens_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    pub commitment: SignedCommitment,
    /// One loss per step of the segment.
    pub loss_trace: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitReply {
    pub accepted: bool,
    /// True when this was the job's last segment.
    pub job_done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskFailed {
    pub reason: String,
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
