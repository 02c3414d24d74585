//! Fair-share usage: class-weighted GPU time that halves every half-life.
//!
//! Replicas on different machines must agree bit for bit, so there are no
//! floats here: usage is an integer count of class-weighted
//! GPU-milliseconds (a whole GPU for a millisecond, weighted by its job
//! class in thousandths), and the decay 2^(−t/h) is computed in fixed
//! point. Whole half-lives are shifts; the remaining fraction of a
//! half-life, taken to 48 binary digits, multiplies in one constant
//! 2^(−2^−j) per digit set, each a Q63 number derived by repeated integer
//! square roots at compile time.

use serde::{Deserialize, Serialize};

use super::{JobClass, Millis};

/// Decayed fair-share usage as of a moment. Finished work only: the
/// planner adds what running jobs have accrued when it plans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Usage {
    /// Class-weighted GPU-milliseconds as of `as_of`.
    pub weighted_gpu_ms: u64,
    pub as_of: Millis,
}

impl Usage {
    /// The value decayed to `at` (a moment before `as_of` decays nothing).
    pub fn at(&self, at: Millis, half_life_ms: u64) -> u64 {
        let elapsed = u64::try_from(at.saturating_sub(self.as_of)).unwrap_or(0);
        decay(self.weighted_gpu_ms, elapsed, half_life_ms)
    }

    /// Decays the value to `at` and adds `weighted_gpu_ms`.
    pub fn add(&mut self, at: Millis, half_life_ms: u64, weighted_gpu_ms: u64) {
        self.weighted_gpu_ms = self.at(at, half_life_ms).saturating_add(weighted_gpu_ms);
        self.as_of = self.as_of.max(at);
    }
}

/// The class-weighted GPU-milliseconds of `ms` milliseconds on `milli`
/// thousandths of a GPU, rounded to the nearest.
pub fn weighted_gpu_ms(ms: u64, milli: u64, class: JobClass) -> u64 {
    let exact = (u128::from(ms) * u128::from(milli))
        .saturating_mul(u128::from(class.usage_weight_milli()))
        .saturating_add(500_000);
    u64::try_from(exact / 1_000_000).unwrap_or(u64::MAX)
}

/// Usage as snapshots hold it. Before format 5 it was a float of
/// class-weighted GPU-seconds; that is read once, rounded to the
/// nearest GPU-millisecond (one IEEE multiplication and a rounding, both
/// exact to the bit on every platform).
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    weighted_gpu_ms: u64,
    #[serde(default)]
    gpu_seconds: Option<f64>,
    as_of: Millis,
}

impl From<Stored> for Usage {
    fn from(s: Stored) -> Usage {
        let weighted_gpu_ms = match s.gpu_seconds {
            // `as` saturates: negative and NaN read as 0.
            Some(secs) => (secs * 1000.0).round() as u64,
            None => s.weighted_gpu_ms,
        };
        Usage {
            weighted_gpu_ms,
            as_of: s.as_of,
        }
    }
}

/// Binary digits of a half-life's fraction the decay resolves: steps of
/// 2^−48 half-lives (2 ns of a seven-day one), coarse enough that each
/// step lowers the factor by far more than the Q63 products round.
const FRACTION_BITS: u32 = 48;

/// 1.0 in Q63.
const ONE: u128 = 1 << 63;

/// `ROOTS[j]` = 2^(−2^−(j+1)) in Q63: 2^−1/2, 2^−1/4, ... Each is the
/// integer square root of the one before, so the table is exact integer
/// arithmetic, the same on every machine.
const ROOTS: [u128; FRACTION_BITS as usize] = roots();

const fn roots() -> [u128; FRACTION_BITS as usize] {
    let mut table = [0; FRACTION_BITS as usize];
    // 1/2 in Q63; the square root of x in Q63 is isqrt(x · 2^63).
    let mut x: u128 = ONE >> 1;
    let mut j = 0;
    while j < table.len() {
        x = (x << 63).isqrt();
        table[j] = x;
        j += 1;
    }
    table
}

/// 2^(−fraction / 2^48) in Q63, from 1/2 (exclusive) to 1.
fn fraction_factor(fraction: u64) -> u128 {
    let mut factor = ONE;
    for (j, root) in ROOTS.iter().enumerate() {
        if fraction & (1 << (FRACTION_BITS - 1 - j as u32)) != 0 {
            factor = (factor * root) >> 63;
        }
    }
    factor
}

/// `value` × 2^(−elapsed / half_life), rounded down. Monotone: more time
/// never leaves more usage, and a whole half-life exactly halves (rounding
/// down). The fraction's factor stays far enough above 1/2 that rounding
/// inside it never crosses into the next half-life.
pub fn decay(value: u64, elapsed_ms: u64, half_life_ms: u64) -> u64 {
    let half_life = half_life_ms.max(1);
    let halvings = elapsed_ms / half_life;
    if halvings >= 64 {
        return 0;
    }
    let rest = u128::from(elapsed_ms % half_life);
    let fraction = (rest << FRACTION_BITS) / u128::from(half_life);
    // rest < half_life, so the fraction is below 2^48.
    let factor = fraction_factor(fraction as u64);
    // value < 2^64 and factor ≤ 2^63: the product fits in 127 bits.
    ((u128::from(value) * factor) >> (63 + halvings)) as u64
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
