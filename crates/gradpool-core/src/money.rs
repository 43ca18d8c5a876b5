//! Money: integer piconero, never floats.
//!
//! `1 XMR = 10^12 piconero`. Amounts are parsed from and printed as exact
//! decimal strings ("0.000000000001" is one piconero).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Piconero per XMR.
pub const PICONERO_PER_XMR: u64 = 1_000_000_000_000;

/// An amount of Monero in piconero.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Piconero(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("{0:?} is not an amount of XMR (expected digits with at most 12 decimals, like 0.25)")]
    Malformed(String),
    #[error("{0:?} has more than 12 decimals: the smallest unit is 0.000000000001 XMR")]
    TooPrecise(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl Piconero {
    pub const ZERO: Piconero = Piconero(0);

    pub fn checked_add(self, other: Piconero) -> Option<Piconero> {
        self.0.checked_add(other.0).map(Piconero)
    }

    pub fn checked_sub(self, other: Piconero) -> Option<Piconero> {
        self.0.checked_sub(other.0).map(Piconero)
    }

    /// Parses an XMR decimal string exactly ("1.5" → 1.5 × 10^12 piconero).
    pub fn from_xmr_str(s: &str) -> Result<Piconero, AmountError> {
        let t = s.trim();
        // "1.5 XMR" reads as "1.5": what Display prints parses back.
        let t = t
            .strip_suffix("XMR")
            .or_else(|| t.strip_suffix("xmr"))
            .map_or(t, str::trim_end);
        let (whole, frac) = match t.split_once('.') {
            Some((w, f)) => (w, f),
            None => (t, ""),
        };
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(AmountError::Malformed(s.to_owned()));
        }
        if frac.len() > 12 {
            return Err(AmountError::TooPrecise(s.to_owned()));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| AmountError::Overflow(s.to_owned()))?
        };
        let mut frac_pico: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_pico += u64::from(b - b'0') * 10u64.pow(11 - i as u32);
        }
        whole
            .checked_mul(PICONERO_PER_XMR)
            .and_then(|w| w.checked_add(frac_pico))
            .map(Piconero)
            .ok_or_else(|| AmountError::Overflow(s.to_owned()))
    }
}

impl FromStr for Piconero {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Piconero::from_xmr_str(s)
    }
}

impl Piconero {
    /// The amount as an exact XMR decimal without a unit, trailing zeros
    /// trimmed: `1.5`, `0.000000000001`. [`Piconero::from_xmr_str`] reads it
    /// back.
    pub fn xmr(&self) -> String {
        let whole = self.0 / PICONERO_PER_XMR;
        let frac = self.0 % PICONERO_PER_XMR;
        if frac == 0 {
            format!("{whole}")
        } else {
            let frac = format!("{frac:012}");
            format!("{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl fmt::Display for Piconero {
    /// Prints the amount in XMR with trailing zeros trimmed: `1.5 XMR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} XMR", self.xmr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(
            Piconero::from_xmr_str("1").unwrap(),
            Piconero(PICONERO_PER_XMR)
        );
        assert_eq!(
            Piconero::from_xmr_str("0.000000000001").unwrap(),
            Piconero(1)
        );
        assert_eq!(
            Piconero::from_xmr_str(".5").unwrap(),
            Piconero(500_000_000_000)
        );
        assert_eq!(
            Piconero::from_xmr_str("2.25").unwrap().to_string(),
            "2.25 XMR"
        );
        assert_eq!(Piconero::from_xmr_str("2.25").unwrap().xmr(), "2.25");
        assert_eq!(
            Piconero::from_xmr_str("2.25 XMR").unwrap(),
            Piconero(2_250_000_000_000)
        );
        assert_eq!(Piconero(7).xmr(), "0.000000000007");
        assert!(Piconero::from_xmr_str("XMR").is_err());
    }

    #[test]
    fn refuses_bad_amounts() {
        assert!(matches!(
            Piconero::from_xmr_str("-1"),
            Err(AmountError::Malformed(_))
        ));
        assert!(matches!(
            Piconero::from_xmr_str("1e3"),
            Err(AmountError::Malformed(_))
        ));
        assert!(matches!(
            Piconero::from_xmr_str(""),
            Err(AmountError::Malformed(_))
        ));
        assert!(matches!(
            Piconero::from_xmr_str("0.0000000000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Piconero::from_xmr_str("99999999999"),
            Err(AmountError::Overflow(_))
        ));
    }
}
