//! Confidence binning: the data behind reliability diagrams, ECE, MCE and L2 calibration error.
//!
//! # Equal-width bins (the default, Guo et al. 2017)
//!
//! `B` bins, right-closed: bin `i` (0-based) holds confidences in `(e_i, e_{i+1}]`, where the
//! edge `e_i` is the correctly rounded value of `i / B` in the input's precision (one division,
//! never an accumulated step). A confidence of exactly 0 goes in the first bin and 1.0 in the
//! last bin; there is no extra bin. So a confidence written as an edge (0.3 with B = 10) lands in
//! the bin it closes, `(0.2, 0.3]`.
//!
//! # Equal-mass bins (adaptive ECE)
//!
//! The `N` (confidence, correct) pairs are sorted by confidence (ties broken by correctness,
//! incorrect first, so the result does not depend on the row order) and cut into `B`
//! consecutive groups whose sizes differ by at most one, the larger groups first
//! (`numpy.array_split`). Tied confidences may therefore fall in two neighbouring bins.
//!
//! # Errors from bins
//!
//! With weights `w_b = n_b / N` and per-bin mean confidence `c_b` and accuracy `a_b`:
//! ECE = Σ w_b |a_b − c_b|, MCE = max over non-empty bins of |a_b − c_b|, signed ECE =
//! Σ w_b (c_b − a_b) (positive: over-confident). Empty bins contribute 0.

use serde::{Deserialize, Serialize};

use super::{check_confidences, Probability};
use crate::Result;

/// Default number of bins (15, as in Guo et al. 2017).
pub const DEFAULT_BINS: usize = 15;

/// How the bins of a [`CalibrationBins`] were formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinningScheme {
    /// `B` right-closed bins of width `1/B` (see the module docs).
    EqualWidth,
    /// `B` bins holding (almost) the same number of rows (see the module docs).
    EqualMass,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinStats {
    /// Lower edge (exclusive, except 0 for the first equal-width bin). For equal-mass bins:
    /// the smallest confidence in the bin (0 when empty).
    pub lower: f64,
    /// Upper edge (inclusive). For equal-mass bins: the largest confidence in the bin.
    pub upper: f64,
    /// Number of rows in the bin.
    pub count: usize,
    /// Mean confidence of the rows in the bin (0 when `count == 0`).
    pub mean_confidence: f64,
    /// Fraction of correct rows in the bin (0 when `count == 0`).
    pub accuracy: f64,
}

impl BinStats {
    /// `accuracy − mean_confidence` (negative: over-confident); 0 for an empty bin.
    pub fn gap(&self) -> f64 {
        self.accuracy - self.mean_confidence
    }
}

/// Reliability-diagram data and the calibration errors computed from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBins {
    /// How the bins were formed.
    pub scheme: BinningScheme,
    /// The bins, in increasing confidence.
    pub bins: Vec<BinStats>,
    /// Expected calibration error Σ (n_b/N) |a_b − c_b|.
    pub ece: f64,
    /// Maximum calibration error over non-empty bins.
    pub mce: f64,
    /// Signed ECE Σ (n_b/N) (c_b − a_b): positive when over-confident on average.
    pub signed_ece: f64,
    /// Number of rows binned.
    pub n: usize,
}

impl CalibrationBins {
    /// Builds the bins and their errors from per-bin sums (count, Σ confidence, Σ correct).
    pub(crate) fn from_sums(
        scheme: BinningScheme,
        edges: Vec<(f64, f64)>,
        counts: &[u64],
        conf_sums: &[f64],
        correct_sums: &[f64],
    ) -> Self {
        let n: u64 = counts.iter().sum();
        let mut bins = Vec::with_capacity(counts.len());
        let (mut ece, mut mce, mut signed) = (0.0f64, 0.0f64, 0.0f64);
        for (b, (lower, upper)) in edges.into_iter().enumerate() {
            let count = counts[b];
            let (mean_confidence, accuracy) = if count > 0 {
                (conf_sums[b] / count as f64, correct_sums[b] / count as f64)
            } else {
                (0.0, 0.0)
            };
            if count > 0 {
                let w = count as f64 / n as f64;
                let gap = mean_confidence - accuracy;
                ece += w * gap.abs();
                signed += w * gap;
                mce = mce.max(gap.abs());
            }
            bins.push(BinStats {
                lower,
                upper,
                count: count as usize,
                mean_confidence,
                accuracy,
            });
        }
        CalibrationBins {
            scheme,
            bins,
            ece,
            mce,
            signed_ece: signed,
            n: n as usize,
        }
    }

    /// L2 calibration error over these bins (Kumar et al. 2019).
    ///
    /// Plug-in: `sqrt(Σ (n_b/N)(c_b − a_b)²)`. Debiased: every bin's squared gap is reduced by
    /// the variance of its accuracy estimate, `a_b(1 − a_b)/(n_b − 1)`, bins with fewer than
    /// two rows contribute 0, and the square root is taken of `max(sum, 0)` (as in Kumar et
    /// al.'s `unbiased_l2_ce`).
    pub fn l2_calibration_error(&self, debiased: bool) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let n = self.n as f64;
        let mut sq = 0.0;
        for b in &self.bins {
            let gap2 = (b.mean_confidence - b.accuracy).powi(2);
            let w = b.count as f64 / n;
            if debiased {
                if b.count >= 2 {
                    let var = b.accuracy * (1.0 - b.accuracy) / (b.count as f64 - 1.0);
                    sq += w * (gap2 - var);
                }
            } else {
                sq += w * gap2;
            }
        }
        sq.max(0.0).sqrt()
    }
}

/// 0-based equal-width bin of a confidence in `[0, 1]` (see the module docs).
///
/// `edges` must hold the `B + 1` edges `T::bin_edge(i, B)`, `1 ≤ B ≤` [`MAX_BINS`]; values
/// outside `[0, 1]` (and NaN) are clamped into the first or last bin (callers validate
/// beforehand).
#[inline(always)]
pub(crate) fn equal_width_bin_index<T: Probability>(c: T, edges: &[T]) -> usize {
    let nb = edges.len() - 1;
    // `nb ≤ MAX_BINS` (checked by every caller), so it fits an `i32`.
    let k = (c.ceil_scaled(T::from_count(nb)).clamp(1, nb as i32) as usize).min(nb);
    // `ceil(c·B)` is off by at most one near an edge because of the rounding of `c·B`:
    // correct it without branches (this runs once per probability in the one-pass metrics).
    let up = (k < nb) & (c > edges[k]);
    let down = (k > 1) & (c <= edges[k - 1]);
    k + usize::from(up) - usize::from(down) - 1
}

/// The `B + 1` equal-width edges `i / B` in precision `T`.
pub(crate) fn edges_in<T: Probability>(n_bins: usize) -> Vec<T> {
    (0..=n_bins).map(|i| T::bin_edge(i, n_bins)).collect()
}

/// The `(lower, upper)` pairs of the equal-width bins, as `f64` values `i / B`.
pub(crate) fn equal_width_bounds(n_bins: usize) -> Vec<(f64, f64)> {
    (0..n_bins)
        .map(|i| (i as f64 / n_bins as f64, (i + 1) as f64 / n_bins as f64))
        .collect()
}

/// Largest number of bins accepted (finer bins than `f32` resolution mean nothing).
pub(crate) const MAX_BINS: usize = 1 << 20;

pub(crate) fn check_bins(n_bins: usize) -> Result<()> {
    if n_bins == 0 || n_bins > MAX_BINS {
        return Err(crate::Error::invalid(
            "n_bins",
            format!("{n_bins} is not in 1..={MAX_BINS}"),
        ));
    }
    Ok(())
}

/// The checks of both reliability binnings: bin count, then the (confidence, correct) pairs.
fn check_reliability_input<T: Probability>(
    confidence: &[T],
    correct: &[bool],
    n_bins: usize,
) -> Result<()> {
    check_bins(n_bins)?;
    check_confidences(confidence, correct)
}

/// Equal-width reliability bins of (confidence, correct) pairs, e.g. top-label confidences.
pub fn calibration_bins<T: Probability>(
    confidence: &[T],
    correct: &[bool],
    n_bins: usize,
) -> Result<CalibrationBins> {
    check_reliability_input(confidence, correct, n_bins)?;
    let edges = edges_in::<T>(n_bins);
    let mut counts = vec![0u64; n_bins];
    let mut conf = vec![0.0f64; n_bins];
    let mut hits = vec![0.0f64; n_bins];
    for (&c, &ok) in confidence.iter().zip(correct) {
        let b = equal_width_bin_index(c, &edges);
        counts[b] += 1;
        conf[b] += c.to_f64();
        hits[b] += ok as u8 as f64;
    }
    Ok(CalibrationBins::from_sums(
        BinningScheme::EqualWidth,
        equal_width_bounds(n_bins),
        &counts,
        &conf,
        &hits,
    ))
}

/// Equal-mass (adaptive) reliability bins of (confidence, correct) pairs.
///
/// When `n_bins > N` the trailing bins are empty.
pub fn calibration_bins_equal_mass<T: Probability>(
    confidence: &[T],
    correct: &[bool],
    n_bins: usize,
) -> Result<CalibrationBins> {
    check_reliability_input(confidence, correct, n_bins)?;
    let mut keys: Vec<u64> = confidence
        .iter()
        .zip(correct)
        .map(|(c, &ok)| sort_key(c.to_f64(), ok))
        .collect();
    Ok(equal_mass_from_keys(&mut keys, n_bins))
}

/// Sort key of a (confidence, correct) pair with confidence in `[0, 1]`: the bits of a
/// non-negative `f64` order like the value and their top bit is 0, so shifting left by one
/// leaves room for the correctness bit.
#[inline(always)]
pub(crate) fn sort_key(c: f64, correct: bool) -> u64 {
    // `+ 0.0` turns −0.0 into +0.0 so the sign bit is clear.
    ((c + 0.0).to_bits() << 1) | correct as u64
}

/// Equal-mass bins from unsorted sort keys (sorted here, in parallel for large inputs).
pub(crate) fn equal_mass_from_keys(keys: &mut [u64], n_bins: usize) -> CalibrationBins {
    use rayon::slice::ParallelSliceMut;
    if keys.len() > 1 << 16 {
        keys.par_sort_unstable();
    } else {
        keys.sort_unstable();
    }
    let n = keys.len();
    let base = n / n_bins;
    let extra = n % n_bins;
    let mut counts = Vec::with_capacity(n_bins);
    let mut conf = Vec::with_capacity(n_bins);
    let mut hits = Vec::with_capacity(n_bins);
    let mut bounds = Vec::with_capacity(n_bins);
    let mut start = 0;
    for b in 0..n_bins {
        let size = base + usize::from(b < extra);
        let group = &keys[start..start + size];
        let mut s = 0.0;
        let mut h = 0.0;
        for &k in group {
            s += f64::from_bits(k >> 1);
            h += (k & 1) as f64;
        }
        let lower = group.first().map_or(0.0, |&k| f64::from_bits(k >> 1));
        let upper = group.last().map_or(0.0, |&k| f64::from_bits(k >> 1));
        counts.push(size as u64);
        conf.push(s);
        hits.push(h);
        bounds.push((lower, upper));
        start += size;
    }
    CalibrationBins::from_sums(BinningScheme::EqualMass, bounds, &counts, &conf, &hits)
}
