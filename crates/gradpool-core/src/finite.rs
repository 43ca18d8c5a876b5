//! Numbers from the network, refused unless they are finite.
//!
//! JSON can carry numbers no float should hold: `1e39` is a finite JSON
//! number that becomes `+inf` as an `f32`, and an infinity or NaN stored by
//! the pool would be written back as `null`, which no reader accepts. Every
//! float a provider, validator or customer sends is therefore read through
//! one of these functions (`#[serde(deserialize_with = "…")]`): the message
//! is refused at the door, with the field's path, rather than stored.
//!
//! What a number may mean (a loss is never negative, a share is at most 1)
//! is checked by the `check` methods of the messages that carry it.

use serde::de::Error;
use serde::{Deserialize, Deserializer};

/// `x` as an `f32`, if it is finite and fits.
pub fn to_f32(x: f64) -> Result<f32, String> {
    if x.is_finite() && x.abs() <= f64::from(f32::MAX) {
        Ok(x as f32)
    } else {
        Err(format!("{x} is not a finite 32-bit number"))
    }
}

/// `x`, if it is finite.
pub fn to_f64(x: f64) -> Result<f64, String> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{x} is not a finite number"))
    }
}

/// A finite `f32`.
pub fn f32<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    to_f32(f64::deserialize(d)?).map_err(D::Error::custom)
}

/// A finite `f64`.
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    to_f64(f64::deserialize(d)?).map_err(D::Error::custom)
}

/// An optional finite `f32`.
pub fn option_f32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    Option::<f64>::deserialize(d)?
        .map(to_f32)
        .transpose()
        .map_err(D::Error::custom)
}

/// An optional finite `f64`.
pub fn option_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Option::<f64>::deserialize(d)?
        .map(to_f64)
        .transpose()
        .map_err(D::Error::custom)
}

/// A list of finite `f32`s; the error names the first one that is not.
pub fn vec_f32<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    Vec::<f64>::deserialize(d)?
        .into_iter()
        .enumerate()
        .map(|(i, x)| to_f32(x).map_err(|e| D::Error::custom(format!("entry {i}: {e}"))))
        .collect()
}

/// Checks that every loss of a trace is a possible loss: the models gradpool
/// trains minimise a cross-entropy, which is never negative.
pub fn check_losses(field: &str, losses: &[f32]) -> Result<(), String> {
    match losses.iter().position(|l| !l.is_finite() || *l < 0.0) {
        Some(i) => Err(format!(
            "{field}[{i}]: {} is not a possible loss (a cross-entropy is a finite number ≥ 0)",
            losses[i]
        )),
        None => Ok(()),
    }
}

/// Checks that `x` lies in `lo..=hi`, naming `field` if not.
pub fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    x: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if x >= lo && x <= hi {
        Ok(())
    } else {
        Err(format!("{field}: {x} is outside {lo}..={hi}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    struct Trace {
        #[serde(deserialize_with = "vec_f32")]
        losses: Vec<f32>,
        #[serde(default, deserialize_with = "option_f32")]
        temperature: Option<f32>,
    }

    #[test]
    fn a_number_beyond_f32_is_refused_with_its_position() {
        let err = serde_json::from_str::<Trace>(r#"{"losses": [1.0, 1e39]}"#).unwrap_err();
        assert!(err.to_string().contains("entry 1"), "{err}");
        let err =
            serde_json::from_str::<Trace>(r#"{"losses": [], "temperature": -1e39}"#).unwrap_err();
        assert!(err.to_string().contains("not a finite"), "{err}");
    }

    #[test]
    fn finite_numbers_pass() {
        let t: Trace = serde_json::from_str(r#"{"losses": [3.4e38, 0, 2.5]}"#).unwrap();
        assert_eq!(t.losses, vec![3.4e38, 0.0, 2.5]);
        assert_eq!(t.temperature, None);
        let t: Trace = serde_json::from_str(r#"{"losses": [], "temperature": null}"#).unwrap();
        assert_eq!(t.temperature, None);
    }

    #[test]
    fn negative_losses_are_impossible() {
        assert!(check_losses("loss_trace", &[1.0, 0.0]).is_ok());
        let err = check_losses("loss_trace", &[1.0, -0.5]).unwrap_err();
        assert!(err.starts_with("loss_trace[1]"), "{err}");
    }
}
