//! Non-parametric recalibration maps, fitted on a calibration set: isotonic regression
//! (pool-adjacent-violators), histogram binning of classification confidence, and the isotonic
//! recalibration of regression quantiles of Kuleshov et al. (2018).
//!
//! These sit beside the one-parameter maps of [`super::recalibration`] (temperature and σ
//! scaling): more flexible, so they need more calibration rows to avoid over-fitting.
//!
//! # Conventions
//!
//! * **Isotonic regression** returns the non-decreasing sequence `f` minimising
//!   `Σ w_i (y_i − f_i)²` (weights `> 0`, all 1 when not given), computed by weighted
//!   pool-adjacent-violators in `O(n)`: the value of a pooled block is the weighted mean of its
//!   targets, in `f64`.
//! * **[`IsotonicFit`]** fits on `(x, y)` pairs: rows are sorted by `x`, rows with equal `x` are
//!   first pooled into one (weighted mean of `y`, summed weight), then PAV runs on the distinct
//!   `x`. Predictions interpolate linearly between the distinct `x` (knots) and are constant
//!   beyond the first and last knot (scikit-learn's `out_of_bounds="clip"`).
//! * **[`HistogramBinning`]** (Zadrozny & Elkan 2001): `B` equal-width bins of the top-label
//!   confidence, the same bins and edges as the reliability diagram
//!   (`equal_width_bin_index`: bin `b` is `(b/B, (b+1)/B]`, the first one closed); the
//!   calibrated confidence is the bin's accuracy on the calibration set; an empty bin keeps the
//!   identity map's value there, the bin's midpoint.
//! * **[`QuantileRecalibrator`]**: with predicted CDF levels `p_i = Φ((y_i − μ_i)/σ_i)` on the
//!   calibration set and their empirical CDF `P̂(p) = #{j : p_j ≤ p}/n`, an [`IsotonicFit`] `R`
//!   of `P̂(p_i)` on `p_i`, anchored at `R(0) = 0` and `R(1) = 1`. The recalibrated CDF is
//!   `R(F(y))`; its `τ`-quantile is `μ + σ Φ⁻¹(R⁻¹(τ))` with the generalised inverse
//!   `R⁻¹(τ) = inf{p : R(p) ≥ τ}` of the piecewise-linear `R`; the central interval at level
//!   `c` runs between the `(1 − c)/2` and `(1 + c)/2` quantiles.

use serde::{Deserialize, Serialize};

use super::binning::{check_bins, edges_in, equal_width_bin_index};
use super::regression::{std_normal_cdf, std_normal_ppf};
use super::{
    bad_data, check_confidences, check_gaussian, check_non_empty, check_same_len, check_std,
    check_values, probability_problem,
};
use crate::{Error, Result};

/// Checks optional weights: as many as `n`, finite and `> 0`.
fn check_weights(weights: Option<&[f64]>, n: usize) -> Result<()> {
    if let Some(w) = weights {
        check_same_len("targets", n, "weights", w.len())?;
        if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(bad_data(
                "weights",
                i,
                "weight",
                format!("weight {} is not a finite number > 0", w[i]),
            ));
        }
    }
    Ok(())
}

/// The non-decreasing least-squares fit of `y` in its given order (weighted PAV; module docs).
///
/// `weights`, when given, must be finite and `> 0`, one per target.
pub fn isotonic_regression(y: &[f64], weights: Option<&[f64]>) -> Result<Vec<f64>> {
    check_values("targets", y)?;
    check_weights(weights, y.len())?;
    let w = |i: usize| weights.map_or(1.0, |w| w[i]);
    Ok(pav(y.iter().enumerate().map(|(i, &v)| (v, w(i)))))
}

/// Weighted PAV over `(value, weight)` pairs; returns one fitted value per pair.
fn pav(points: impl Iterator<Item = (f64, f64)>) -> Vec<f64> {
    // Blocks of (Σ w·y, Σ w, number of points), means non-decreasing along the stack.
    let mut blocks: Vec<(f64, f64, usize)> = Vec::new();
    for (y, w) in points {
        let mut cur = (w * y, w, 1usize);
        while let Some(&(sy, sw, c)) = blocks.last() {
            // prev mean > cur mean, cross-multiplied (weights are positive).
            if sy * cur.1 > cur.0 * sw {
                blocks.pop();
                cur = (cur.0 + sy, cur.1 + sw, cur.2 + c);
            } else {
                break;
            }
        }
        blocks.push(cur);
    }
    let mut out = Vec::new();
    for (sy, sw, c) in blocks {
        out.extend(std::iter::repeat_n(sy / sw, c));
    }
    out
}

/// A fitted monotone (non-decreasing) map `x → f(x)`, piecewise linear between its knots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsotonicFit {
    /// Distinct input values, increasing.
    knots_x: Vec<f64>,
    /// Fitted value at each knot, non-decreasing.
    knots_y: Vec<f64>,
}

impl IsotonicFit {
    /// Fits `y` on `x` (finite, same length, non-empty; weights optional, module docs).
    pub fn fit(x: &[f64], y: &[f64], weights: Option<&[f64]>) -> Result<Self> {
        check_values("x", x)?;
        check_values("targets", y)?;
        check_same_len("x", x.len(), "targets", y.len())?;
        check_weights(weights, y.len())?;
        let w = |i: usize| weights.map_or(1.0, |w| w[i]);
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
        // Pool equal x: (x, Σ w·y, Σ w).
        let mut groups: Vec<(f64, f64, f64)> = Vec::new();
        for i in order {
            match groups.last_mut() {
                Some(g) if g.0 == x[i] => {
                    g.1 += w(i) * y[i];
                    g.2 += w(i);
                }
                _ => groups.push((x[i], w(i) * y[i], w(i))),
            }
        }
        let fitted = pav(groups.iter().map(|g| (g.1 / g.2, g.2)));
        Ok(IsotonicFit {
            knots_x: groups.iter().map(|g| g.0).collect(),
            knots_y: fitted,
        })
    }

    /// The knots: distinct increasing inputs and their non-decreasing fitted values.
    pub fn knots(&self) -> (&[f64], &[f64]) {
        (&self.knots_x, &self.knots_y)
    }

    /// `f(x)`: linear between knots, constant beyond the ends. NaN gives NaN (as does a map
    /// with no knots, which only a hand-edited JSON file can hold).
    pub fn predict(&self, x: f64) -> f64 {
        let (kx, ky) = (&self.knots_x, &self.knots_y);
        if kx.is_empty() || kx.len() != ky.len() {
            return f64::NAN;
        }
        let j = kx.partition_point(|&k| k < x);
        if j == 0 {
            return if x.is_nan() { f64::NAN } else { ky[0] };
        }
        if j == kx.len() {
            return ky[j - 1];
        }
        if kx[j] == x {
            return ky[j];
        }
        let t = (x - kx[j - 1]) / (kx[j] - kx[j - 1]);
        ky[j - 1] + t * (ky[j] - ky[j - 1])
    }

    /// The generalised inverse `inf{x : f(x) ≥ v}` of the piecewise-linear map: the first knot
    /// when `v ≤ f` there, the last knot when `v` exceeds every fitted value.
    pub fn inverse(&self, v: f64) -> f64 {
        let (kx, ky) = (&self.knots_x, &self.knots_y);
        if kx.is_empty() || kx.len() != ky.len() || v.is_nan() {
            return f64::NAN;
        }
        let j = ky.partition_point(|&k| k < v);
        if j == 0 {
            return kx[0];
        }
        if j == ky.len() {
            return kx[j - 1];
        }
        let t = (v - ky[j - 1]) / (ky[j] - ky[j - 1]);
        kx[j - 1] + t * (kx[j] - kx[j - 1])
    }
}

/// Isotonic recalibration of classification confidence (e.g. top-label `max_k p_k`) against
/// correctness: an [`IsotonicFit`] of `1[correct]` on the confidence.
pub fn fit_isotonic_confidence(confidence: &[f64], correct: &[bool]) -> Result<IsotonicFit> {
    check_confidences(confidence, correct)?;
    let hits: Vec<f64> = correct.iter().map(|&c| f64::from(u8::from(c))).collect();
    IsotonicFit::fit(confidence, &hits, None)
}

/// Histogram binning of classification confidence (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramBinning {
    /// Calibrated confidence of each equal-width bin.
    pub values: Vec<f64>,
    /// Calibration rows in each bin (0: the bin kept its midpoint).
    pub counts: Vec<u64>,
}

impl HistogramBinning {
    /// Fits `n_bins` equal-width bins on calibration confidences and correctness.
    pub fn fit(confidence: &[f64], correct: &[bool], n_bins: usize) -> Result<Self> {
        check_bins(n_bins)?;
        check_confidences(confidence, correct)?;
        let edges = edges_in::<f64>(n_bins);
        let mut counts = vec![0u64; n_bins];
        let mut hits = vec![0u64; n_bins];
        for (&c, &ok) in confidence.iter().zip(correct) {
            let b = equal_width_bin_index(c, &edges);
            counts[b] += 1;
            hits[b] += u64::from(ok);
        }
        let values = (0..n_bins)
            .map(|b| {
                if counts[b] == 0 {
                    (edges[b] + edges[b + 1]) / 2.0
                } else {
                    hits[b] as f64 / counts[b] as f64
                }
            })
            .collect();
        Ok(HistogramBinning { values, counts })
    }

    /// The calibrated confidence of every input confidence (each in `[0, 1]`).
    pub fn apply(&self, confidence: &[f64]) -> Result<Vec<f64>> {
        check_non_empty("confidence", confidence.len())?;
        let edges = edges_in::<f64>(self.values.len());
        confidence
            .iter()
            .enumerate()
            .map(|(i, &c)| match probability_problem(c) {
                Some(r) => Err(bad_data("confidence", i, "confidence", r)),
                None => Ok(self.values[equal_width_bin_index(c, &edges)]),
            })
            .collect()
    }
}

/// Isotonic recalibration of Gaussian regression quantiles (Kuleshov et al. 2018; module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileRecalibrator {
    /// The map `R` from predicted CDF level to observed frequency, anchored at (0, 0), (1, 1).
    pub map: IsotonicFit,
    /// Calibration rows used.
    pub n_calibration: usize,
}

impl QuantileRecalibrator {
    /// Fits `R` on calibration means, standard deviations and targets.
    pub fn fit(mean: &[f64], std: &[f64], y: &[f64]) -> Result<Self> {
        check_gaussian(mean, std, y)?;
        let p: Vec<f64> = mean
            .iter()
            .zip(std)
            .zip(y)
            .map(|((m, s), t)| std_normal_cdf((t - m) / s))
            .collect();
        let mut sorted = p.clone();
        sorted.sort_by(f64::total_cmp);
        let n = p.len() as f64;
        let freq: Vec<f64> = p
            .iter()
            .map(|&v| sorted.partition_point(|&s| s <= v) as f64 / n)
            .collect();
        let mut map = IsotonicFit::fit(&p, &freq, None)?;
        // Anchor the ends so that R maps [0, 1] onto [0, 1] and every level has an inverse.
        if map.knots_x[0] > 0.0 {
            map.knots_x.insert(0, 0.0);
            map.knots_y.insert(0, 0.0);
        } else {
            map.knots_y[0] = 0.0;
        }
        let last = map.knots_x.len() - 1;
        if map.knots_x[last] < 1.0 {
            map.knots_x.push(1.0);
            map.knots_y.push(1.0);
        } else {
            map.knots_y[last] = 1.0;
        }
        Ok(QuantileRecalibrator {
            map,
            n_calibration: y.len(),
        })
    }

    /// The recalibrated CDF level `R(Φ((y − μ)/σ))` of every row.
    pub fn cdf(&self, mean: &[f64], std: &[f64], y: &[f64]) -> Result<Vec<f64>> {
        check_gaussian(mean, std, y)?;
        Ok(mean
            .iter()
            .zip(std)
            .zip(y)
            .map(|((m, s), t)| self.map.predict(std_normal_cdf((t - m) / s)))
            .collect())
    }

    /// The recalibrated `tau`-quantile `μ + σ Φ⁻¹(R⁻¹(τ))` of every row, `tau` in `(0, 1)`
    /// (`±∞` where `R⁻¹(τ)` is 0 or 1).
    pub fn quantiles(&self, mean: &[f64], std: &[f64], tau: f64) -> Result<Vec<f64>> {
        if !(tau > 0.0 && tau < 1.0) {
            return Err(Error::invalid("tau", format!("{tau} is not in (0, 1)")));
        }
        check_values("mean", mean)?;
        check_std(std, mean.len())?;
        let z = std_normal_ppf(self.map.inverse(tau));
        Ok(mean.iter().zip(std).map(|(m, s)| m + s * z).collect())
    }

    /// The interval calibration curve of the recalibrated predictions, as
    /// [`super::calibration_curve`] with [`super::CurveKind::Interval`] draws it for Gaussians:
    /// expected levels `linspace(0, 1, n_points)` (`n_points ≥ 2`) against the fraction of
    /// targets inside the recalibrated central interval at each level (closed; the level-0
    /// interval is the single point `q(½)`, the level-1 interval is `(−∞, +∞)`).
    pub fn calibration_curve(
        &self,
        mean: &[f64],
        std: &[f64],
        y: &[f64],
        n_points: usize,
    ) -> Result<super::CalibrationCurve> {
        check_gaussian(mean, std, y)?;
        if n_points < 2 {
            return Err(Error::invalid("calibration_points", "must be at least 2"));
        }
        let expected = super::linspace(0.0, 1.0, n_points);
        let n = y.len() as f64;
        let observed = expected
            .iter()
            .map(|&p| {
                if p >= 1.0 {
                    return Ok(1.0);
                }
                let lo = self.quantiles(mean, std, (1.0 - p) / 2.0)?;
                let hi = self.quantiles(mean, std, (1.0 + p) / 2.0)?;
                let inside = (0..y.len())
                    .filter(|&i| lo[i] <= y[i] && y[i] <= hi[i])
                    .count();
                Ok(inside as f64 / n)
            })
            .collect::<Result<Vec<f64>>>()?;
        Ok(super::CalibrationCurve { expected, observed })
    }

    /// The recalibrated central interval at `level` in `(0, 1)`: the `(1 − level)/2` and
    /// `(1 + level)/2` quantiles of every row.
    pub fn intervals(&self, mean: &[f64], std: &[f64], level: f64) -> Result<Vec<(f64, f64)>> {
        if !(level > 0.0 && level < 1.0) {
            return Err(Error::invalid("level", format!("{level} is not in (0, 1)")));
        }
        let lo = self.quantiles(mean, std, (1.0 - level) / 2.0)?;
        let hi = self.quantiles(mean, std, (1.0 + level) / 2.0)?;
        Ok(lo.into_iter().zip(hi).collect())
    }
}
