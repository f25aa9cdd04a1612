//! Coverage of given prediction intervals: over a whole test set, and conditional on the
//! predicted standard deviation (does a method under-cover where it is confident and
//! over-cover where it is not?).
//!
//! The intervals come from any source (Gaussian `μ ± zσ` from [`gaussian_intervals`],
//! split-conformal [`super::ConformalRegressor::intervals`], recalibrated quantiles
//! [`super::QuantileRecalibrator::intervals`]); this module only counts.
//!
//! # Conventions
//!
//! * Intervals are **closed**: row `i` is covered when `lower_i ≤ y_i ≤ upper_i`. Infinite
//!   ends are allowed (a conformal interval is `(−∞, +∞)` when its calibration set is too
//!   small for the level); its width `upper − lower` is then `+∞`.
//! * **σ bins are equal-count**: rows are sorted by increasing σ, rows with equal σ kept in row
//!   order (a stable sort), and the sorted rows are cut into `B` consecutive groups whose sizes
//!   differ by at most one, the larger groups first (`numpy.array_split`, the same rule as the
//!   equal-mass reliability bins of [`super::binning`]). Rows with tied σ may therefore fall in
//!   two neighbouring bins. `B` must lie in `1..=N`, so that no bin is empty.
//! * Per bin: the smallest and largest σ, the mean σ, the number of rows, the fraction of rows
//!   covered and the mean width.

use serde::{Deserialize, Serialize};

use super::regression::std_normal_ppf;
use super::{bad_data, check_non_empty, check_same_len, check_std, check_values, IntervalCoverage};
use crate::{Error, Result};

/// The closed Gaussian central intervals `μ ± Φ⁻¹(½ + level/2)·σ` of every row, `level` in
/// `(0, 1)` (the intervals whose coverage PICP counts).
pub fn gaussian_intervals(mean: &[f64], std: &[f64], level: f64) -> Result<Vec<(f64, f64)>> {
    check_level(level)?;
    check_values("mean", mean)?;
    check_std(std, mean.len())?;
    let z = std_normal_ppf(0.5 + level / 2.0);
    Ok(mean
        .iter()
        .zip(std)
        .map(|(m, s)| (m - z * s, m + z * s))
        .collect())
}

fn check_level(level: f64) -> Result<()> {
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::invalid("level", format!("{level} is not in (0, 1)")));
    }
    Ok(())
}

/// Checks intervals against targets: as many, ends not NaN, `lower ≤ upper`; targets finite.
fn check_intervals(intervals: &[(f64, f64)], y: &[f64]) -> Result<()> {
    check_non_empty("intervals", intervals.len())?;
    check_values("targets", y)?;
    check_same_len("intervals", intervals.len(), "targets", y.len())?;
    for (i, &(lo, hi)) in intervals.iter().enumerate() {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(bad_data(
                "intervals",
                i,
                "interval",
                format!("({lo}, {hi}) is not an interval with lower <= upper"),
            ));
        }
    }
    Ok(())
}

/// Whether each row's target lies in its closed interval.
fn covered(intervals: &[(f64, f64)], y: &[f64]) -> Vec<bool> {
    intervals
        .iter()
        .zip(y)
        .map(|(&(lo, hi), &t)| lo <= t && t <= hi)
        .collect()
}

/// Coverage (`picp`) and mean width (`mpiw`) of given closed intervals at nominal `level`
/// (recorded, in `(0, 1)`); the width is `+∞` when any interval is infinite.
pub fn coverage_of_intervals(
    intervals: &[(f64, f64)],
    y: &[f64],
    level: f64,
) -> Result<IntervalCoverage> {
    check_level(level)?;
    check_intervals(intervals, y)?;
    let n = y.len() as f64;
    let inside = covered(intervals, y).iter().filter(|&&c| c).count();
    Ok(IntervalCoverage {
        level,
        picp: inside as f64 / n,
        mpiw: intervals.iter().map(|(lo, hi)| hi - lo).sum::<f64>() / n,
    })
}

/// One equal-count bin of predicted σ (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageBin {
    /// Smallest σ in the bin.
    pub sigma_lower: f64,
    /// Largest σ in the bin.
    pub sigma_upper: f64,
    /// Mean σ of the bin's rows.
    pub mean_sigma: f64,
    /// Rows in the bin.
    pub count: usize,
    /// Fraction of the bin's rows whose target is inside its interval.
    pub coverage: f64,
    /// Mean interval width of the bin's rows.
    pub mean_width: f64,
}

/// Coverage per equal-count bin of predicted σ, in increasing σ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionalCoverage {
    /// The bins, smallest σ first.
    pub bins: Vec<CoverageBin>,
    /// Rows binned.
    pub n: usize,
}

/// Coverage of `intervals` per equal-count bin of `std` (module docs for the bin rule):
/// `std` finite and `> 0`, one per interval and target; `n_bins` in `1..=N`.
pub fn conditional_coverage(
    std: &[f64],
    intervals: &[(f64, f64)],
    y: &[f64],
    n_bins: usize,
) -> Result<ConditionalCoverage> {
    check_intervals(intervals, y)?;
    check_std(std, y.len())?;
    let n = y.len();
    if n_bins == 0 || n_bins > n {
        return Err(Error::invalid(
            "n_bins",
            format!("{n_bins} is not in 1..={n} (one bin per row at most)"),
        ));
    }
    let inside = covered(intervals, y);
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: equal σ keep row order.
    order.sort_by(|&a, &b| std[a].total_cmp(&std[b]));
    let (base, extra) = (n / n_bins, n % n_bins);
    let mut bins = Vec::with_capacity(n_bins);
    let mut start = 0;
    for b in 0..n_bins {
        let size = base + usize::from(b < extra);
        let rows = &order[start..start + size];
        let count = rows.len() as f64;
        bins.push(CoverageBin {
            sigma_lower: std[rows[0]],
            sigma_upper: std[rows[size - 1]],
            mean_sigma: rows.iter().map(|&i| std[i]).sum::<f64>() / count,
            count: size,
            coverage: rows.iter().filter(|&&i| inside[i]).count() as f64 / count,
            mean_width: rows
                .iter()
                .map(|&i| intervals[i].1 - intervals[i].0)
                .sum::<f64>()
                / count,
        });
        start += size;
    }
    Ok(ConditionalCoverage { bins, n })
}
