//! The int8 codebook of a parallel job's compressed transfers
//! (`parallel.compression = "int8"`): what a worker sends (its
//! pseudo-gradient) and what it receives (the outer update) are quantised
//! for the wire, never the state training keeps.
//!
//! The codebook is fixed: values are cut into blocks of [`BLOCK`] (the last
//! one may be shorter). A block keeps its scale `s`, the largest magnitude
//! in it (f32), and each value `x` as the integer
//! `q = round_half_even(x × (127 / s))` in `−127..=127`; it decodes to
//! `q × (s / 127)`. The 255 levels `k·s/127` are the codebook. Decoding is
//! exact for 0 and ±s, and any value comes back within half a level,
//! `s / 254`, plus the rounding of the two f32 products (a few units in
//! the last place of `s`): [`error_bound`]. A block of zeros has `s = 0`
//! and decodes to zeros.
//!
//! Every operation is one IEEE-754 f32 multiplication or division, done in
//! the same order everywhere, so encoding and decoding give the same bits
//! on every machine: both ends of a transfer, and whoever checks an outer
//! step, see the same numbers.
//!
//! The wire form ([`Quantized::to_bytes`]): the value count as u64
//! little-endian, the block scales as f32 little-endian, then the values as
//! i8: `8 + 4·⌈n/256⌉ + n` bytes, a little over a quarter of f32's.

/// Values per block, each block with its own scale.
pub const BLOCK: usize = 256;

/// The largest level, `127`: levels are `−127..=127` (−128 is unused, so
/// the codebook is symmetric).
const LEVELS: f32 = 127.0;

/// Values quantised by the codebook.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// Each block's scale: the largest magnitude in it.
    pub scales: Vec<f32>,
    /// Each value's level.
    pub levels: Vec<i8>,
}

/// Why values cannot be quantised or bytes decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Int8Error {
    #[error("value {index} is {value}: only finite values are quantised")]
    NotFinite { index: usize, value: String },
    #[error("int8 data: {0}")]
    Malformed(String),
}

/// Quantises `values` by the codebook.
pub fn quantize(values: &[f32]) -> Result<Quantized, Int8Error> {
    if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Int8Error::NotFinite {
            index,
            value: value.to_string(),
        });
    }
    let mut scales = Vec::with_capacity(values.len().div_ceil(BLOCK));
    let mut levels = Vec::with_capacity(values.len());
    for block in values.chunks(BLOCK) {
        let scale = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        scales.push(scale);
        if scale == 0.0 {
            levels.extend(std::iter::repeat_n(0i8, block.len()));
            continue;
        }
        let step = LEVELS / scale;
        levels.extend(block.iter().map(|&v| {
            // |v × step| ≤ 127 up to rounding: the clamp only catches that.
            (v * step).round_ties_even().clamp(-LEVELS, LEVELS) as i8
        }));
    }
    Ok(Quantized { scales, levels })
}

/// The values a quantisation stands for.
pub fn dequantize(q: &Quantized) -> Vec<f32> {
    let mut out = Vec::with_capacity(q.levels.len());
    for (block, &scale) in q.levels.chunks(BLOCK).zip(&q.scales) {
        let level = scale / LEVELS;
        out.extend(block.iter().map(|&l| f32::from(l) * level));
    }
    out
}

/// The values after a trip through the codebook: `dequantize(quantize(x))`.
pub fn round_trip(values: &[f32]) -> Result<Vec<f32>, Int8Error> {
    Ok(dequantize(&quantize(values)?))
}

/// How far a value of a block with scale `scale` may come back from where
/// it was: half a level, and the rounding of the two f32 products.
pub fn error_bound(scale: f32) -> f32 {
    scale / (2.0 * LEVELS) + 4.0 * f32::EPSILON * scale
}

/// Bytes of the wire form of `n` values.
pub fn encoded_len(n: usize) -> usize {
    8 + 4 * n.div_ceil(BLOCK) + n
}

impl Quantized {
    /// The wire form: count (u64 LE), scales (f32 LE), levels (i8).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(encoded_len(self.levels.len()));
        out.extend_from_slice(&(self.levels.len() as u64).to_le_bytes());
        for s in &self.scales {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend(self.levels.iter().map(|&l| l as u8));
        out
    }

    /// Reads the wire form, refusing a length that does not match, a
    /// scale that is negative or not finite, and the unused level −128.
    pub fn from_bytes(bytes: &[u8]) -> Result<Quantized, Int8Error> {
        let count: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Int8Error::Malformed("shorter than its count".into()))?;
        let n = usize::try_from(u64::from_le_bytes(count))
            .map_err(|_| Int8Error::Malformed("count too large".into()))?;
        let blocks = n.div_ceil(BLOCK);
        let expected = blocks
            .checked_mul(4)
            .and_then(|s| s.checked_add(n))
            .and_then(|s| s.checked_add(8));
        if expected != Some(bytes.len()) {
            return Err(Int8Error::Malformed(format!(
                "{} bytes for {n} values (expected {})",
                bytes.len(),
                expected.map_or_else(|| "fewer".to_owned(), |e| e.to_string())
            )));
        }
        let scales: Vec<f32> = bytes[8..8 + 4 * blocks]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(Int8Error::Malformed(format!("block scale {s}")));
        }
        let levels: Vec<i8> = bytes[8 + 4 * blocks..].iter().map(|&b| b as i8).collect();
        if levels.contains(&i8::MIN) {
            return Err(Int8Error::Malformed(
                "level -128 is not in the codebook".into(),
            ));
        }
        Ok(Quantized { scales, levels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spread of magnitudes, signs and zeros, as pseudo-gradients have.
    fn sample(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = ((x >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
                match i % 7 {
                    0 => 0.0,
                    1 => unit * 1e-6,
                    2 => unit * 3.0e2,
                    _ => unit * 0.02,
                }
            })
            .collect()
    }

    #[test]
    fn every_value_comes_back_within_the_stated_bound() {
        for n in [0, 1, 255, 256, 257, 1000, 4096 + 3] {
            let x = sample(n, n as u64 + 1);
            let q = quantize(&x).unwrap();
            assert_eq!(q.scales.len(), n.div_ceil(BLOCK));
            let y = dequantize(&q);
            assert_eq!(y.len(), n);
            for (b, (xs, ys)) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
                let scale = q.scales[b];
                assert_eq!(scale, xs.iter().fold(0f32, |m, v| m.max(v.abs())));
                for (a, c) in xs.iter().zip(ys) {
                    assert!(
                        (a - c).abs() <= error_bound(scale),
                        "block {b}: {a} came back as {c} (scale {scale})"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_and_the_extremes_are_exact_and_zeros_stay_zero() {
        let x = [0.0, 2.5, -2.5, 1.0, -0.0];
        let y = round_trip(&x).unwrap();
        assert_eq!(y[0], 0.0);
        assert_eq!(y[1], 2.5);
        assert_eq!(y[2], -2.5);
        assert!((y[3] - 1.0).abs() <= error_bound(2.5));
        assert_eq!(round_trip(&[0.0; 300]).unwrap(), vec![0.0; 300]);
    }

    #[test]
    fn the_same_values_give_the_same_bits() {
        let x = sample(3000, 7);
        let a = quantize(&x).unwrap().to_bytes();
        let b = quantize(&x).unwrap().to_bytes();
        assert_eq!(a, b);
        let back = Quantized::from_bytes(&a).unwrap();
        assert_eq!(back.to_bytes(), a);
        assert_eq!(
            dequantize(&back)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            round_trip(&x)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_wire_form_is_a_quarter_of_f32_and_checked() {
        let x = sample(1 << 16, 3);
        let bytes = quantize(&x).unwrap().to_bytes();
        assert_eq!(bytes.len(), encoded_len(x.len()));
        assert!(bytes.len() * 39 < x.len() * 4 * 10, "{} bytes", bytes.len());
        // Truncated, padded, a bad scale, the unused level: refused.
        assert!(Quantized::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Quantized::from_bytes(&longer).is_err());
        let mut bad_scale = bytes.clone();
        bad_scale[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Quantized::from_bytes(&bad_scale).is_err());
        let mut bad_level = bytes.clone();
        let last = bad_level.len() - 1;
        bad_level[last] = 0x80;
        assert!(Quantized::from_bytes(&bad_level).is_err());
        let mut huge = bytes;
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Quantized::from_bytes(&huge).is_err());
        assert!(Quantized::from_bytes(&[1, 2]).is_err());
    }

    #[test]
    fn values_that_are_not_finite_are_refused() {
        let e = quantize(&[1.0, f32::INFINITY]).unwrap_err();
        assert_eq!(
            e,
            Int8Error::NotFinite {
                index: 1,
                value: "inf".into()
            }
        );
        assert!(quantize(&[f32::NAN]).is_err());
    }
}
