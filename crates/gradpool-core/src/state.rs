//! The states of the pool's records, as enums.
//!
//! Each state has one spelling, defined here once: the API carries it (JSON
//! strings), the pool stores it (`TEXT` columns whose `CHECK` constraint
//! lists exactly [`State::ALL`]'s spellings) and the command line prints it.
//! Code compares the enums, never the strings.
//!
//! ```
//! use gradpool_core::state::{JobStatus, State};
//! assert_eq!("running".parse::<JobStatus>(), Ok(JobStatus::Running));
//! assert_eq!(JobStatus::Running.to_string(), "running");
//! assert!(JobStatus::Cancelled.is_final());
//! assert_eq!(
//!     JobStatus::check_list(),
//!     "'queued', 'running', 'succeeded', 'unverified', 'failed', 'cancelled'"
//! );
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A spelling that names no state of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownState {
    /// What kind of state was expected (e.g. `job status`).
    pub kind: &'static str,
    /// What was found.
    pub value: String,
}

/// What every state enum offers.
pub trait State: Copy + Sized + 'static {
    /// What the state describes, for errors (e.g. `job status`).
    const KIND: &'static str;
    /// Every state, in the order they are documented.
    const ALL: &'static [Self];
    /// The one spelling of the state.
    fn as_str(self) -> &'static str;

    /// `'a', 'b', …`: the list a `CHECK (column IN (…))` constraint names.
    fn check_list() -> String {
        Self::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

macro_rules! states {
    ($(
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    )+) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl State for $name {
            const KIND: &'static str = $kind;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl $name {
            /// The one spelling of the state.
            pub fn as_str(self) -> &'static str {
                State::as_str(self)
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err(UnknownState { kind: $kind, value: other.to_owned() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownState;
            fn try_from(s: String) -> Result<Self, UnknownState> {
                s.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::one_of_strings(<$name as State>::ALL.iter().map(|s| s.as_str()))
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    )+};
}

states! {
    /// Where a job is in its life.
    JobStatus ("job status") {
        /// Waiting for a provider to take its first segment.
        Queued = "queued",
        /// A segment has been leased at least once.
        Running = "running",
        /// Every segment committed and every drawn audit decided; the
        /// final checkpoint is the model.
        Succeeded = "succeeded",
        /// Every segment committed, but some drawn audits found no
        /// eligible validator before their deadline: the model is there,
        /// unchecked where those audits were drawn (`job verify` checks it).
        Unverified = "unverified",
        /// A segment failed too often.
        Failed = "failed",
        /// The customer cancelled it.
        Cancelled = "cancelled",
    }

    /// Where a task (one segment to train, or one replay of it) is.
    TaskStatus ("task status") {
        /// Waiting for a provider.
        Queued = "queued",
        /// A provider holds its lease.
        Leased = "leased",
        /// Its result was accepted.
        Committed = "committed",
        /// Its lease ran out; a new task took its place.
        Expired = "expired",
        /// Its provider reported a failure.
        Failed = "failed",
        /// Its provider gave it back (it stopped or paused).
        Released = "released",
        /// Its job ended, or its audit did, before it was done.
        Cancelled = "cancelled",
    }

    /// What a task asks of a provider.
    #[derive(Default)]
    TaskKind ("task kind") {
        /// Train the segment and commit the end checkpoint.
        #[default]
        Train = "train",
        /// Re-execute a committed segment and report the end checkpoint;
        /// only providers that validate get these.
        Replay = "replay",
        /// Compute a parallel job's outer step from its round's inner
        /// segments and commit the next global checkpoint; the pool
        /// computes it again before accepting it.
        Outer = "outer",
    }

    /// How a provider stands, as anyone sees it.
    ProviderStatus ("provider status") {
        /// Connected, with no work.
        Idle = "idle",
        /// Holding at least one lease.
        Sharing = "sharing",
        /// Booked for a future window; other work goes on until then.
        Reserved = "reserved",
        /// Its owner's limits pause it (see its `paused_reason`).
        Paused = "paused",
        /// The pool gives it no work until its hardware is proven (see its
        /// `held`).
        Held = "held",
        /// Not seen for a lease period.
        Disconnected = "disconnected",
    }

    /// A change in a provider's standing, as its history records it.
    ProviderChange ("provider change") {
        /// It registered (or registered again).
        Registered = "registered",
        /// It was heard from again after a disconnection.
        Connected = "connected",
        /// Not heard from for a lease period.
        Disconnected = "disconnected",
        /// Its owner's limits paused it.
        Paused = "paused",
        /// Its owner's limits let it work again.
        Resumed = "resumed",
        /// The pool holds it: no work until its hardware is proven.
        Held = "held",
        /// The pool released a hold.
        Released = "released",
        /// A booking reserved it.
        Reserved = "reserved",
        /// A booking that reserved it ended or was cancelled.
        Unreserved = "unreserved",
    }

    /// A committed segment's standing in verification.
    #[derive(Default)]
    CommitmentStatus ("commitment status") {
        /// Not drawn for an audit.
        #[default]
        Accepted = "accepted",
        /// Drawn; validators are replaying it.
        Auditing = "auditing",
        /// An audit found the claim right.
        Verified = "verified",
    }

    /// Why a segment was audited.
    AuditReason ("audit reason") {
        /// Drawn at the trainer's sampling rate.
        Sampled = "sampled",
        /// Every segment of a `paranoid` job is audited.
        Paranoid = "paranoid",
        /// After a fault, the trainer's next segments are audited.
        FollowUp = "follow_up",
        /// A known-bad claim the pool planted to test its validators.
        Planted = "planted",
    }

    /// An audit's state, and once decided its verdict.
    AuditStatus ("audit status") {
        /// Waiting for replays.
        Open = "open",
        /// The replays agree with the claim.
        Verified = "verified",
        /// The replays agree with each other, not with the claim.
        ProviderFault = "provider_fault",
        /// A validator's replay was wrong.
        ValidatorFault = "validator_fault",
        /// A rollback discarded the segment before it was decided, or its
        /// job ended first.
        Void = "void",
        /// No eligible validator replayed it before its deadline.
        Unserved = "unserved",
    }

    /// Who a payout pays.
    PayoutKind ("payout kind") {
        /// A provider's earnings, batched.
        Provider = "provider",
        /// A customer's withdrawal.
        Withdrawal = "withdrawal",
    }

    /// Where money leaving the pool is.
    PayoutStatus ("payout status") {
        /// Its amount is reserved in the ledger; no transaction yet.
        Reserved = "reserved",
        /// The transaction is signed, not yet relayed.
        Built = "built",
        /// The transaction is on the network.
        Relayed = "relayed",
        /// Paid without Monero (the dev money backend).
        Settled = "settled",
        /// Given up; the reserved amount went back.
        Cancelled = "cancelled",
    }

    /// Which way a blob went through the pool's blob routes.
    TransferDirection ("blob transfer direction") {
        /// `PUT /v1/blobs/{sha256}`: to the pool.
        Upload = "upload",
        /// `GET /v1/blobs/{sha256}`: from the pool.
        Download = "download",
    }

    /// What runs a job's segments.
    Runtime ("job runtime") {
        /// gradpool's own trainer (`model.kind` `gpt` or `mlp`).
        Native = "native",
        /// The customer's script in its OCI image, under podman
        /// (`model.kind = "container"`).
        Container = "container",
    }

    /// A tier an operator certifies providers into.
    ProviderTier ("provider tier") {
        /// Dedicated, locked-down machines for confidential work, their
        /// host checks reviewed by the operator.
        Isolated = "isolated",
    }

    /// What a container job's blob is to it, besides its data.
    JobBlobRole ("job blob role") {
        /// The OCI archive (`container.image_sha256`).
        Image = "image",
        /// One of the job's files, mounted under `/job`.
        File = "file",
        /// A parallel job's initial checkpoint
        /// (`container.initial_sha256`): round 0's weights.
        Initial = "initial",
    }

    /// A hardware proof's state, and once answered its outcome.
    ProofStatus ("hardware proof status") {
        /// Waiting for the answer.
        Open = "open",
        /// Right, and as fast as claimed.
        Passed = "passed",
        /// The product was wrong.
        WrongAnswer = "wrong_answer",
        /// Right, but slower than the speed claimed.
        TooSlow = "too_slow",
        /// No answer before its deadline.
        NoAnswer = "no_answer",
        /// Replaced by a newer challenge before it was answered.
        Void = "void",
    }

    /// A booking's state.
    BookingStatus ("booking status") {
        /// Before or in its window.
        Reserved = "reserved",
        /// In its window (shown only: stored as `reserved`).
        Active = "active",
        /// Its window is over.
        Ended = "ended",
        /// Its customer cancelled it before its window.
        Cancelled = "cancelled",
    }
}

impl JobStatus {
    /// Whether the job can change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Unverified | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Whether it trained to the end: its final checkpoint is the model.
    pub fn is_trained(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Unverified)
    }
}

impl PayoutStatus {
    /// Whether the money has left (or, for the dev backend, is paid).
    pub fn is_paid(self) -> bool {
        matches!(self, PayoutStatus::Relayed | PayoutStatus::Settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<S>()
    where
        S: State + FromStr<Err = UnknownState> + PartialEq + fmt::Debug + Serialize,
        S: for<'de> Deserialize<'de>,
    {
        let mut seen = std::collections::HashSet::new();
        for &s in S::ALL {
            assert!(seen.insert(s.as_str()), "{} spelled twice", s.as_str());
            assert_eq!(s.as_str().parse::<S>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<S>(&json).unwrap(), s);
        }
        let err = "no such state".parse::<S>().unwrap_err();
        assert_eq!(err.kind, S::KIND);
        assert!(serde_json::from_str::<S>("\"Queued \"").is_err());
    }

    #[test]
    fn every_state_round_trips_through_its_one_spelling() {
        round_trips::<JobStatus>();
        round_trips::<TaskStatus>();
        round_trips::<TaskKind>();
        round_trips::<ProviderStatus>();
        round_trips::<ProviderChange>();
        round_trips::<CommitmentStatus>();
        round_trips::<AuditReason>();
        round_trips::<AuditStatus>();
        round_trips::<PayoutKind>();
        round_trips::<PayoutStatus>();
        round_trips::<ProofStatus>();
        round_trips::<TransferDirection>();
        round_trips::<BookingStatus>();
    }

    #[test]
    fn an_unknown_state_names_its_kind() {
        let err = "paused".parse::<JobStatus>().unwrap_err();
        assert_eq!(err.to_string(), "unknown job status \"paused\"");
    }
}
