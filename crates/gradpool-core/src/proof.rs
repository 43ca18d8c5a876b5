//! Hardware proof: a seeded matrix multiplication a provider must answer in
//! a time consistent with the speed it claims, checked by the pool with
//! Freivalds' algorithm in O(n²) instead of O(n³).
//!
//! The matrices hold small integers (−8 to 8) stored as `f32`: every product
//! and every partial sum of `C = A·B` is an integer below 2²⁴ for
//! `n ≤ MAX_N`, so any device computes `C` exactly in `f32`, whatever its
//! summation order, and the check is exact. Freivalds: for a random 0/1
//! vector `r`, `A·(B·r) = C·r` holds for the true `C`; a wrong `C` passes
//! one round with probability at most ½, so `rounds` rounds miss it with
//! probability at most 2^−rounds.

use serde::{Deserialize, Serialize};

/// The largest side: `n · 8 · 8 < 2²⁴` keeps every sum exact in `f32`.
pub const MAX_N: u32 = 8192;

/// What the pool asks a provider to multiply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProofChallenge {
    pub id: String,
    /// Seeds both matrices ([`matrices`]).
    pub seed: u64,
    /// The side of the square matrices.
    pub n: u32,
    /// The answer must arrive within this many milliseconds of the
    /// challenge.
    pub deadline_ms: u64,
}

/// The answer: `C = A·B`, row-major, uploaded as a blob of `n²`
/// little-endian `f32`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProofAnswer {
    pub answer_sha256: crate::Sha256Hex,
}

/// The pool's verdict on an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProofResult {
    /// `passed`, `wrong_answer` or `too_slow`.
    pub outcome: crate::state::ProofStatus,
    /// From the challenge to the answer, as the pool saw it.
    pub elapsed_ms: u64,
    /// `2n³ / elapsed`: the speed the device proved, all overheads included.
    pub proven_gflops: f64,
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The challenge's `A` and `B`, row-major, entries integers from −8 to 8.
pub fn matrices(seed: u64, n: u32) -> (Vec<f32>, Vec<f32>) {
    let len = (n as usize) * (n as usize);
    let mut rng = SplitMix(seed);
    let mut fill = || {
        (0..len)
            .map(|_| (rng.next() % 17) as f32 - 8.0)
            .collect::<Vec<f32>>()
    };
    let a = fill();
    let b = fill();
    (a, b)
}

/// Whether `c` is `A·B` for the challenge's matrices, by `rounds` rounds of
/// Freivalds with random vectors from `check_seed`. `c` must hold `n²`
/// values; any that is not an integer is wrong.
pub fn freivalds(a: &[f32], b: &[f32], c: &[f32], n: u32, rounds: u32, check_seed: u64) -> bool {
    let n = n as usize;
    if a.len() != n * n || b.len() != n * n || c.len() != n * n {
        return false;
    }
    if c.iter().any(|v| !v.is_finite() || v.fract() != 0.0) {
        return false;
    }
    let mut rng = SplitMix(check_seed);
    let mat_vec = |m: &[f32], v: &[i64]| -> Vec<i64> {
        m.chunks_exact(n)
            .map(|row| row.iter().zip(v).map(|(x, y)| *x as i64 * y).sum())
            .collect()
    };
    for _ in 0..rounds {
        let r: Vec<i64> = (0..n).map(|_| (rng.next() & 1) as i64).collect();
        let br = mat_vec(b, &r);
        if mat_vec(a, &br) != mat_vec(c, &r) {
            return false;
        }
    }
    true
}

/// The side of a challenge for a device that claims `gflops` and has
/// `memory_bytes`: about `target_seconds` of work at the claimed speed,
/// within what three matrices in a quarter of the memory allow, a multiple
/// of 64 from 256 to [`MAX_N`].
pub fn side_for(gflops: f64, memory_bytes: u64, target_seconds: f64) -> u32 {
    let by_time = (target_seconds * gflops.max(0.1) * 1e9 / 2.0).cbrt();
    let by_memory = ((memory_bytes as f64 / 4.0) / 12.0).sqrt();
    let n = by_time.min(by_memory).clamp(256.0, MAX_N as f64) as u32;
    (n / 64 * 64).max(256)
}

/// Encodes a matrix as little-endian `f32` bytes.
pub fn to_bytes(m: &[f32]) -> Vec<u8> {
    m.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes little-endian `f32` bytes; `None` when the length is not a
/// whole number of values.
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multiply(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
        let mut c = vec![0f32; n * n];
        for i in 0..n {
            for k in 0..n {
                let x = a[i * n + k];
                for j in 0..n {
                    c[i * n + j] += x * b[k * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn the_true_product_passes_and_any_change_fails() {
        let n = 64;
        let (a, b) = matrices(7, n);
        assert_eq!(matrices(7, n), (a.clone(), b.clone()));
        let c = multiply(&a, &b, n as usize);
        assert!(freivalds(&a, &b, &c, n, 20, 1));
        for (i, delta) in [(0usize, 1.0f32), (4095, -1.0), (2000, 0.5)] {
            let mut wrong = c.clone();
            wrong[i] += delta;
            assert!(!freivalds(&a, &b, &wrong, n, 20, 1), "entry {i}");
        }
        assert!(!freivalds(&a, &b, &c[1..], n, 20, 1));
        let mut nan = c.clone();
        nan[3] = f32::NAN;
        assert!(!freivalds(&a, &b, &nan, n, 20, 1));
        assert_eq!(from_bytes(&to_bytes(&c)).unwrap(), c);
        assert!(from_bytes(&[0, 1, 2]).is_none());
    }

    #[test]
    fn the_side_follows_the_claimed_speed_and_memory() {
        // 50 GFLOP/s for half a second: about 2,300.
        assert_eq!(side_for(50.0, 64 << 30, 0.5), 2304);
        // A faster claim gets a larger matrix, up to the memory.
        assert!(side_for(5000.0, 64 << 30, 0.5) > 2304);
        assert_eq!(side_for(1e9, 64 << 30, 0.5), MAX_N);
        assert_eq!(side_for(1e9, 48 << 20, 0.5), 1024);
        assert_eq!(side_for(0.0, 0, 0.5), 256);
    }
}
