//! Calibration curves of Gaussian predictions (expected against observed proportions of central intervals or quantiles) and the errors and area read from them.

use super::*;
use crate::metrics::check_gaussian;
use crate::{Error, Result};

/// Sorted normalised residuals `(μ − y)/σ`.
pub(super) fn sorted_residuals(mean: &[f64], std: &[f64], y: &[f64]) -> Vec<f64> {
    let mut r: Vec<f64> = mean
        .iter()
        .zip(std)
        .zip(y)
        .map(|((m, s), t)| (m - t) / s)
        .collect();
    r.sort_unstable_by(f64::total_cmp);
    r
}

pub(super) fn check_points(n_points: usize) -> Result<()> {
    if n_points < 2 {
        return Err(Error::invalid("calibration_points", "must be at least 2"));
    }
    Ok(())
}

/// Which proportion a calibration curve observes at expected level `p` (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurveKind {
    /// The fraction of rows inside the central interval `μ ± Φ⁻¹(½ + p/2)σ`.
    Interval,
    /// The fraction of rows with `y ≤ μ + Φ⁻¹(p)σ`.
    Quantile,
}

/// The calibration curve of `kind` on `linspace(0, 1, n_points)` (module docs): the observed
/// proportion at each expected level, `n_points ≥ 2`.
pub fn calibration_curve(
    mean: &[f64],
    std: &[f64],
    y: &[f64],
    n_points: usize,
    kind: CurveKind,
) -> Result<CalibrationCurve> {
    check_gaussian(mean, std, y)?;
    check_points(n_points)?;
    let r = sorted_residuals(mean, std, y);
    let inside = |p: f64| match kind {
        CurveKind::Interval => {
            let lo = std_normal_ppf(0.5 - p / 2.0);
            let hi = std_normal_ppf(0.5 + p / 2.0);
            let at_most_hi = r.partition_point(|&x| x <= hi);
            let below_lo = r.partition_point(|&x| x < lo);
            at_most_hi.saturating_sub(below_lo)
        }
        CurveKind::Quantile => {
            let q = std_normal_ppf(p);
            r.partition_point(|&x| x <= q)
        }
    };
    let n = r.len() as f64;
    let expected = linspace(0.0, 1.0, n_points);
    let observed = expected.iter().map(|&p| inside(p) as f64 / n).collect();
    Ok(CalibrationCurve { expected, observed })
}

/// Mean absolute calibration error of a curve.
pub fn mean_absolute_calibration_error(curve: &CalibrationCurve) -> f64 {
    let n = curve.expected.len().max(1) as f64;
    curve
        .expected
        .iter()
        .zip(&curve.observed)
        .map(|(e, o)| (e - o).abs())
        .sum::<f64>()
        / n
}

/// Root mean squared calibration error of a curve.
pub fn root_mean_squared_calibration_error(curve: &CalibrationCurve) -> f64 {
    let n = curve.expected.len().max(1) as f64;
    (curve
        .expected
        .iter()
        .zip(&curve.observed)
        .map(|(e, o)| (e - o).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

impl CalibrationCurve {
    /// Area between the curve and the diagonal (module docs).
    pub fn miscalibration_area(&self) -> f64 {
        let curve = self;
        let x = &curve.expected;
        let o = &curve.observed;
        (1..x.len().min(o.len()))
            .map(|i| {
                let (xl, xr) = (x[i - 1], x[i]);
                let dl = o[i - 1] - xl;
                let dr = o[i] - xr;
                if dl * dr < 0.0 {
                    // The curve crosses the diagonal inside the segment: two triangles.
                    let xi = xl + (xr - xl) * dl / (dl - dr);
                    0.5 * dl.abs() * (xi - xl) + 0.5 * dr.abs() * (xr - xi)
                } else {
                    ((xr - xl) * 0.5 * (dl + dr)).abs()
                }
            })
            .sum()
    }
}

/// Miscalibration area of the interval calibration curve with `n_points` points.
pub fn miscalibration_area(mean: &[f64], std: &[f64], y: &[f64], n_points: usize) -> Result<f64> {
    let curve = calibration_curve(mean, std, y, n_points, CurveKind::Interval)?;
    Ok(curve.miscalibration_area())
}
