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
    fn detection_probability_matches_the_closed_form() {
        // 21 fakes at p = 0.2: 1 − 0.8^21 ≈ 0.9908.
        let d = detection_probability(0.2, 21);
        assert!((d - 0.990_776).abs() < 1e-5, "{d}");
        assert_eq!(detection_probability(1.0, 1), 1.0);
        assert_eq!(detection_probability(0.5, 0), 0.0);
    }
}
