//! How the pool decides which segments to audit and how a replay is judged.
//!
//! A committed segment is *audited* with a probability that depends on the
//! job's [`VerificationLevel`] and on the provider's record:
//!
//! ```text
//! reputation(s) = s / (s + REPUTATION_HALF)        s = audits passed since the last fault
//! p_audit       = max(floor, p_new · (1 − reputation(s)))     (standard)
//!               = 1                                            (paranoid)
//!               = 0                                            (none)
//! ```
//!
//! A new provider (or one just caught) is audited at `p_new` (0.2 by
//! default); after `REPUTATION_HALF` passed audits at half that; never below
//! `floor` (0.02). The pool draws the audit from the operating system's
//! random source *after* it has accepted the commitment, so a provider
//! cannot know beforehand which of its segments will be replayed.
//!
//! A cheater that fakes `c` segments, each audited independently with
//! probability at least `p`, escapes every audit with probability at most
//! `(1 − p)^c`; one caught fake triggers a replay of every other unverified
//! segment it trained for the job, so all its fakes are then found.
//!
//! A replay inside the provider's reproducibility class must reproduce the
//! end checkpoint bit for bit. Across classes each tensor is compared by
//! relative L2 distance, `‖a − b‖ / ‖b‖`, and the largest must stay within
//! [`CROSS_CLASS_TOLERANCE`].

use crate::spec::VerificationLevel;
use serde::{Deserialize, Serialize};

/// The largest relative L2 distance, over all tensors of a checkpoint
/// (parameters and AdamW moments), that a replay in another
/// reproducibility class may show and still match.
///
/// Calibrated by `gradpool-train`'s `tolerance` tests, GPTs on Shakespeare
/// with the reference schedule (AdamW, lr 3e-3 cosine to 3e-4, weight
/// decay 0.1):
///
/// - Replays at 1, 2 and 4 threads are bit identical: distance 0.
/// - A replay through another implementation of the same arithmetic
///   (candle's autograd, the path of non-CPU devices, instead of the
///   hand-written CPU step) drifts by rounding. Reference model (4 layers,
///   width 128, segments of 100 steps): 9.6e-3 after the first segment,
///   6.0e-4 after the last; small test model (segments of 20): 7.5e-4 and
///   6.1e-4. Most of it is in `attn.qkv.bias`, whose key third has no
///   gradient in exact arithmetic, so AdamW turns rounding noise into
///   full-size steps there; elsewhere the drift is below 1.7e-3.
/// - Skipping one step of the last reference segment leaves at least
///   6.4e-2 (small model: 2.5e-1), mostly in the moments: the parameters
///   alone by 5.3e-3 to 1.6e-2. The last step alone moves the state
///   by 0.78 (small model: 0.81). Every cheat of `gradpool-train`'s `cheat`
///   feature in the last small segment lands at 0.11 or more.
///
/// The tolerance sits between the honest drift and one skipped step, a
/// factor of about 2.6 from each. Cross-class drift grows with segment
/// length: segments much longer than 100 steps may need more.
pub const CROSS_CLASS_TOLERANCE: f64 = 2.5e-2;

/// Passed audits at which a provider's reputation is one half.
pub const REPUTATION_HALF: f64 = 10.0;

/// How often segments are audited.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sampling {
    /// The audit probability of a provider with no record.
    pub p_new: f64,
    /// The audit probability never falls below this.
    pub floor: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            p_new: 0.2,
            floor: 0.02,
        }
    }
}

/// A provider's reputation in `[0, 1)` from its passed audits since its
/// last fault.
pub fn reputation(streak: u64) -> f64 {
    let s = streak as f64;
    s / (s + REPUTATION_HALF)
}

/// The probability that a segment of a job at `level`, trained by a
/// provider with `streak` passed audits since its last fault, is audited.
pub fn audit_probability(level: VerificationLevel, streak: u64, sampling: Sampling) -> f64 {
    match level {
        VerificationLevel::None => 0.0,
        VerificationLevel::Paranoid => 1.0,
        VerificationLevel::Standard => {
            (sampling.p_new * (1.0 - reputation(streak))).max(sampling.floor)
        }
    }
}

/// The probability that a cheater faking `faked` segments, each audited
/// with probability `p`, is caught at least once.
pub fn detection_probability(p: f64, faked: u64) -> f64 {
    1.0 - (1.0 - p).powf(faked as f64)
}

/// What adaptive sampling predicts for a provider that starts with no
/// record, trains `segments` segments of standard jobs and fakes each one
/// independently with probability `fraction`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The probability that at least one fake is audited (and so caught)
    /// within the segments.
    pub detection: f64,
    /// The expected number of audits of its segments, while not caught.
    pub audits: f64,
}

/// The exact prediction for adaptive sampling: the provider's streak grows
/// by one with every audit of an honest segment, so its audit probability
/// falls, while every audit of a faked segment catches it. Computed over the
/// distribution of the streak, segment by segment.
///
/// Each audit lands on a fake with probability `fraction` whatever the
/// audit probability, so a cheater escapes `a` audits with probability
/// `(1 − fraction)^a`: against a falling audit probability it is the number
/// of audits, not of segments, that catches it. With `fraction = 0` the
/// expected audits give the verification overhead of an honest provider.
pub fn predict(fraction: f64, segments: u64, sampling: Sampling) -> Prediction {
    // dist[s]: probability of streak s and not caught yet.
    let mut dist = vec![1.0f64];
    let mut audits = 0.0;
    for _ in 0..segments {
        let mut next = vec![0.0; dist.len() + 1];
        for (s, &q) in dist.iter().enumerate() {
            if q == 0.0 {
                continue;
            }
            let p = audit_probability(VerificationLevel::Standard, s as u64, sampling);
            audits += q * p;
            next[s] += q * (1.0 - p);
            next[s + 1] += q * p * (1.0 - fraction);
        }
        dist = next;
    }
    Prediction {
        detection: 1.0 - dist.iter().sum::<f64>(),
        audits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_probability_falls_with_the_streak_down_to_the_floor() {
        let s = Sampling::default();
        let level = VerificationLevel::Standard;
        assert_eq!(audit_probability(level, 0, s), 0.2);
        assert!((audit_probability(level, 10, s) - 0.1).abs() < 1e-12);
        assert!(audit_probability(level, 20, s) < audit_probability(level, 10, s));
        assert_eq!(audit_probability(level, 1_000_000, s), 0.02);
        assert_eq!(audit_probability(VerificationLevel::Paranoid, 1000, s), 1.0);
        assert_eq!(audit_probability(VerificationLevel::None, 0, s), 0.0);
    }

    #[test]
    fn the_prediction_agrees_with_the_closed_form_without_adaptation() {
        // A floor equal to p_new makes the audit probability constant.
        let flat = Sampling {
            p_new: 0.2,
            floor: 0.2,
        };
        let pr = predict(1.0, 21, flat);
        assert!((pr.detection - detection_probability(0.2, 21)).abs() < 1e-12);
        // Faking a tenth: each segment is caught with probability 0.02.
        let pr = predict(0.1, 100, flat);
        assert!((pr.detection - detection_probability(0.02, 100)).abs() < 1e-12);
        // An honest provider is never caught, and audited p·n times.
        let pr = predict(0.0, 50, flat);
        assert!(pr.detection.abs() < 1e-12, "{}", pr.detection);
        assert!((pr.audits - 10.0).abs() < 1e-9);
    }

    #[test]
    fn adaptive_sampling_audits_honest_providers_less_over_time() {
        let s = Sampling::default();
        let short = predict(0.0, 100, s).audits / 100.0;
        let long = predict(0.0, 2000, s).audits / 2000.0;
        assert!(short > long && long > s.floor, "{short} {long}");
        // A cheater faking a tenth is still caught, later.
        let d = predict(0.1, 1000, s).detection;
        assert!(d > 0.99, "{d}");
    }

    #[test]
    fn detection_probability_matches_the_closed_form() {
        // 21 fakes at p = 0.2: 1 − 0.8^21 ≈ 0.9908.
        let d = detection_probability(0.2, 21);
        assert!((d - 0.990_776).abs() < 1e-5, "{d}");
        assert_eq!(detection_probability(1.0, 1), 1.0);
        assert_eq!(detection_probability(0.5, 0), 0.0);
    }
}
