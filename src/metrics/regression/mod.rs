//! Regression metrics for Gaussian predictions (mean `μ`, standard deviation `σ`) and for
//! predictive samples, following uncertainty-toolbox's conventions exactly.
//!
//! # Conventions
//!
//! * `linspace(a, b, n)` is numpy's: `a + i·((b − a)/(n − 1))`, the last point exactly `b`.
//! * Normalised residual `r = (μ − y)/σ` (the toolbox's sign: prediction minus truth).
//! * **Interval calibration curve**: expected proportions `p = linspace(0, 1, 100)`; observed =
//!   fraction of rows with `Φ⁻¹(½ − p/2) ≤ r ≤ Φ⁻¹(½ + p/2)` (bounds included).
//! * **Quantile calibration curve**: observed = fraction of rows with `r ≤ Φ⁻¹(p)`. With the
//!   toolbox's sign of `r` this is the fraction of targets at or above the predicted
//!   `(1 − p)`-quantile, which is `p` for a calibrated Gaussian, like the usual definition.
//! * MACE = mean |expected − observed|, RMSCE = sqrt(mean (expected − observed)²);
//!   miscalibration area = the area between the curve and the diagonal, trapezoid by
//!   trapezoid, with the exact area of the two triangles where the curve crosses the diagonal.
//! * Gaussian NLL = mean of `½ ln(2πσ²) + (y − μ)²/(2σ²)`.
//! * CRPS (Gaussian closed form) = mean of `σ [z(2Φ(z) − 1) + 2φ(z) − 1/√π]`, `z = (y − μ)/σ`.
//! * Sharpness = `sqrt(mean σ²)`.
//! * Check score: mean over `q = linspace(0.01, 0.99, 99)` and rows of
//!   `(1[d ≥ 0] − q)·d`, `d = μ + σΦ⁻¹(q) − y` (pinball loss).
//! * Interval score: mean over `p = linspace(0.01, 0.99, 99)` and rows of
//!   `(u − l) + (2/(1 − p))(l − y)1[y < l] + (2/(1 − p))(y − u)1[y > u]` for the central
//!   interval `[l, u] = μ + σ [Φ⁻¹(½ − p/2), Φ⁻¹(½ + p/2)]`.
//! * PICP at level `p`: fraction of rows with `|y − μ| ≤ zσ`, `z = Φ⁻¹(½ + p/2)` (closed
//!   interval); MPIW = mean `2zσ`.
//! * CRPS from `M` samples: the fair estimator `(1/M)Σ|x_i − y| − (1/(2M(M − 1)))Σ_{i,j}|x_i − x_j|`
//!   (unbiased for the CRPS of the distribution the samples come from; needs `M ≥ 2`) or the
//!   plug-in one with `1/(2M²)` (the CRPS of the empirical distribution).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::metrics::{check_gaussian, check_mean_targets, check_std};
use crate::{Error, Result};

mod calibration;
mod samples;
use calibration::check_points;
pub use calibration::{
    calibration_curve, mean_absolute_calibration_error, miscalibration_area,
    root_mean_squared_calibration_error, CurveKind,
};
pub use samples::{crps_samples, regression_metrics_from_samples, sample_moments};

/// Expected versus observed proportions (x and y of a calibration plot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationCurve {
    /// Expected (nominal) proportions, increasing from 0 to 1.
    pub expected: Vec<f64>,
    /// Observed proportions at each expected one.
    pub observed: Vec<f64>,
}

/// Coverage and width of the central prediction interval at one nominal level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalCoverage {
    /// Nominal level `p` (e.g. 0.95).
    pub level: f64,
    /// Prediction-interval coverage probability: fraction of targets inside.
    pub picp: f64,
    /// Mean prediction-interval width.
    pub mpiw: f64,
}

/// The settings of [`regression_metrics`], unchecked (the crate's config shape: see
/// [`crate::swag::config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionParams {
    /// Points of the calibration curves, at least 2 (the toolbox's `num_bins`; 100 by
    /// default).
    pub calibration_points: usize,
    /// First level of the check and interval scores, `linspace(score_start, score_end,
    /// score_levels)` with `0 < start ≤ end < 1` (0.01 by default).
    pub score_start: f64,
    /// Last level of the scores (0.99 by default).
    pub score_end: f64,
    /// Number of score levels, at least 1 (99 by default).
    pub score_levels: usize,
    /// Nominal levels reported as PICP/MPIW, each in `(0, 1)` (0.5, 0.8, 0.9, 0.95 and 0.99 by
    /// default).
    pub interval_levels: Vec<f64>,
}

impl Default for RegressionParams {
    /// 100 calibration points, score levels `linspace(0.01, 0.99, 99)`, PICP/MPIW at 0.5, 0.8,
    /// 0.9, 0.95 and 0.99.
    fn default() -> Self {
        Self {
            calibration_points: 100,
            score_start: 0.01,
            score_end: 0.99,
            score_levels: 99,
            interval_levels: vec![0.5, 0.8, 0.9, 0.95, 0.99],
        }
    }
}

impl RegressionParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<RegressionConfig> {
        check_points(self.calibration_points)?;
        check_levels(self.score_start, self.score_end, self.score_levels)?;
        if let Some(l) = self
            .interval_levels
            .iter()
            .find(|l| !(**l > 0.0 && **l < 1.0))
        {
            return Err(Error::invalid(
                "interval_levels",
                format!("{l} is not in (0, 1)"),
            ));
        }
        Ok(RegressionConfig(self.clone()))
    }
}

/// Settings of [`regression_metrics`] (from [`RegressionParams::check`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(into = "RegressionParams")]
pub struct RegressionConfig(RegressionParams);

impl From<RegressionConfig> for RegressionParams {
    fn from(config: RegressionConfig) -> Self {
        config.0
    }
}

impl RegressionConfig {
    /// Points of the calibration curves.
    pub fn calibration_points(&self) -> usize {
        self.0.calibration_points
    }

    /// `(start, end, levels)` of the check and interval scores.
    pub fn score_levels(&self) -> (f64, f64, usize) {
        (self.0.score_start, self.0.score_end, self.0.score_levels)
    }

    /// Nominal levels reported as PICP/MPIW.
    pub fn interval_levels(&self) -> &[f64] {
        &self.0.interval_levels
    }
}

/// All regression metrics (see the module docs for every formula).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Number of rows.
    pub n: usize,
    /// Root mean squared error of the mean.
    pub rmse: f64,
    /// Mean absolute error of the mean.
    pub mae: f64,
    /// Mean Gaussian negative log-likelihood, in nats.
    pub nll: f64,
    /// Mean CRPS of the Gaussian predictions (closed form).
    pub crps: f64,
    /// Mean CRPS of the samples (fair estimator), when computed from samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crps_samples: Option<f64>,
    /// `sqrt(mean σ²)`.
    pub sharpness: f64,
    /// Mean absolute calibration error of the interval curve.
    pub mace: f64,
    /// Root mean squared calibration error of the interval curve.
    pub rmsce: f64,
    /// Miscalibration area of the interval curve.
    pub miscalibration_area: f64,
    /// MACE of the quantile curve.
    pub mace_quantile: f64,
    /// RMSCE of the quantile curve.
    pub rmsce_quantile: f64,
    /// Miscalibration area of the quantile curve.
    pub miscalibration_area_quantile: f64,
    /// Mean check (pinball) score.
    pub check_score: f64,
    /// Mean interval score.
    pub interval_score: f64,
    /// PICP of the central 95% interval.
    pub picp_95: f64,
    /// MPIW of the central 95% interval.
    pub mpiw_95: f64,
    /// PICP and MPIW at the requested levels.
    pub intervals: Vec<IntervalCoverage>,
}

/// Which sample estimator of the CRPS to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrpsEstimator {
    /// `1/(2M(M − 1))` on the pairwise term: unbiased; needs at least two samples.
    Fair,
    /// `1/(2M²)`: the CRPS of the empirical distribution of the samples.
    PlugIn,
}

/// numpy's `linspace(start, stop, n)`: `start + i·step`, `step = (stop − start)/(n − 1)`,
/// last point exactly `stop`; `[start]` for `n = 1`.
pub fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// Standard normal quantile `Φ⁻¹(p)`, `±∞` at 0 and 1.
pub(crate) fn std_normal_ppf(p: f64) -> f64 {
    if p <= 0.0 {
        f64::NEG_INFINITY
    } else if p >= 1.0 {
        f64::INFINITY
    } else {
        standard_normal().inverse_cdf(p)
    }
}

fn standard_normal() -> Normal {
    // Parameters (0, 1) are always valid; `Normal::standard` cannot fail.
    Normal::standard()
}

pub(crate) fn std_normal_cdf(z: f64) -> f64 {
    standard_normal().cdf(z)
}

fn std_normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn mean_of(it: impl Iterator<Item = f64>, n: usize) -> f64 {
    it.sum::<f64>() / n as f64
}

/// Root mean squared error of the predicted means.
pub fn rmse(mean: &[f64], y: &[f64]) -> Result<f64> {
    check_mean_targets(mean, y)?;
    Ok(mean_of(mean.iter().zip(y).map(|(m, t)| (m - t).powi(2)), y.len()).sqrt())
}

/// Mean absolute error of the predicted means.
pub fn mae(mean: &[f64], y: &[f64]) -> Result<f64> {
    check_mean_targets(mean, y)?;
    Ok(mean_of(
        mean.iter().zip(y).map(|(m, t)| (m - t).abs()),
        y.len(),
    ))
}

/// Mean Gaussian negative log-likelihood `½ ln(2πσ²) + (y − μ)²/(2σ²)`.
pub fn gaussian_nll(mean: &[f64], std: &[f64], y: &[f64]) -> Result<f64> {
    check_gaussian(mean, std, y)?;
    let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    Ok(mean_of(
        mean.iter().zip(std).zip(y).map(|((m, s), t)| {
            let z = (t - m) / s;
            half_ln_2pi + s.ln() + 0.5 * z * z
        }),
        y.len(),
    ))
}

/// Mean closed-form CRPS of Gaussian predictions.
pub fn crps_gaussian(mean: &[f64], std: &[f64], y: &[f64]) -> Result<f64> {
    check_gaussian(mean, std, y)?;
    let inv_sqrt_pi = 1.0 / std::f64::consts::PI.sqrt();
    Ok(mean_of(
        mean.iter().zip(std).zip(y).map(|((m, s), t)| {
            let z = (t - m) / s;
            s * (z * (2.0 * std_normal_cdf(z) - 1.0) + 2.0 * std_normal_pdf(z) - inv_sqrt_pi)
        }),
        y.len(),
    ))
}

/// Sharpness `sqrt(mean σ²)`.
pub fn sharpness(std: &[f64]) -> Result<f64> {
    check_std(std, std.len())?;
    Ok(mean_of(std.iter().map(|s| s * s), std.len()).sqrt())
}

fn check_levels(start: f64, end: f64, levels: usize) -> Result<()> {
    if levels == 0 || !(start > 0.0 && start <= end && end < 1.0) {
        return Err(Error::invalid(
            "score levels",
            format!(
                "need 0 < start ≤ end < 1 and at least one level (got {start}, {end}, {levels})"
            ),
        ));
    }
    Ok(())
}

/// Mean check (pinball) score over the quantile levels `linspace(start, end, levels)` of
/// [`RegressionConfig::score_levels`].
pub fn check_score(mean: &[f64], std: &[f64], y: &[f64], config: &RegressionConfig) -> Result<f64> {
    average_over_levels(mean, std, y, config.score_levels(), |q| {
        let z = std_normal_ppf(q);
        move |m: f64, s: f64, t: f64| {
            let d = m + s * z - t;
            let mask = if d >= 0.0 { 1.0 } else { 0.0 } - q;
            mask * d
        }
    })
}

/// Mean over `linspace(start, end, levels)` levels of the row mean of a per-row score; `score`
/// builds, for one level, the score of a row `(mean, std, target)`. Shared by the check and
/// interval scores, which differ only in that per-row score.
fn average_over_levels<F, R>(
    mean: &[f64],
    std: &[f64],
    y: &[f64],
    (start, end, levels): (f64, f64, usize),
    score: F,
) -> Result<f64>
where
    F: Fn(f64) -> R,
    R: Fn(f64, f64, f64) -> f64,
{
    check_gaussian(mean, std, y)?;
    let n = y.len();
    let total: f64 = linspace(start, end, levels)
        .into_iter()
        .map(|level| {
            let row = score(level);
            mean_of(
                mean.iter()
                    .zip(std)
                    .zip(y)
                    .map(|((&m, &s), &t)| row(m, s, t)),
                n,
            )
        })
        .sum();
    Ok(total / levels as f64)
}

/// Mean interval score over the central-interval levels `linspace(start, end, levels)` of
/// [`RegressionConfig::score_levels`].
pub fn interval_score(
    mean: &[f64],
    std: &[f64],
    y: &[f64],
    config: &RegressionConfig,
) -> Result<f64> {
    average_over_levels(mean, std, y, config.score_levels(), |p| {
        let z_lo = std_normal_ppf(0.5 - p / 2.0);
        let z_hi = std_normal_ppf(0.5 + p / 2.0);
        let penalty = 2.0 / (1.0 - p);
        move |m: f64, s: f64, t: f64| {
            let l = m + s * z_lo;
            let u = m + s * z_hi;
            let mut score = u - l;
            if l - t > 0.0 {
                score += penalty * (l - t);
            }
            if t - u > 0.0 {
                score += penalty * (t - u);
            }
            score
        }
    })
}

/// PICP and MPIW of the central interval at nominal `level` in `(0, 1)`.
pub fn prediction_interval_coverage(
    mean: &[f64],
    std: &[f64],
    y: &[f64],
    level: f64,
) -> Result<IntervalCoverage> {
    check_gaussian(mean, std, y)?;
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::invalid("level", format!("{level} is not in (0, 1)")));
    }
    let z = std_normal_ppf(0.5 + level / 2.0);
    let n = y.len();
    let inside = mean
        .iter()
        .zip(std)
        .zip(y)
        .filter(|((m, s), t)| (*t - *m).abs() <= z * **s)
        .count();
    Ok(IntervalCoverage {
        level,
        picp: inside as f64 / n as f64,
        mpiw: mean_of(std.iter().map(|s| 2.0 * z * s), n),
    })
}

/// All Gaussian regression metrics (module docs); `crps_samples` is `None`.
pub fn regression_metrics(
    mean: &[f64],
    std: &[f64],
    y: &[f64],
    options: &RegressionConfig,
) -> Result<RegressionMetrics> {
    check_gaussian(mean, std, y)?;
    let points = options.calibration_points();
    let interval = calibration_curve(mean, std, y, points, CurveKind::Interval)?;
    let quantile = calibration_curve(mean, std, y, points, CurveKind::Quantile)?;
    let at_95 = prediction_interval_coverage(mean, std, y, 0.95)?;
    let intervals = options
        .interval_levels()
        .iter()
        .map(|&l| prediction_interval_coverage(mean, std, y, l))
        .collect::<Result<Vec<_>>>()?;
    Ok(RegressionMetrics {
        n: y.len(),
        rmse: rmse(mean, y)?,
        mae: mae(mean, y)?,
        nll: gaussian_nll(mean, std, y)?,
        crps: crps_gaussian(mean, std, y)?,
        crps_samples: None,
        sharpness: sharpness(std)?,
        mace: mean_absolute_calibration_error(&interval),
        rmsce: root_mean_squared_calibration_error(&interval),
        miscalibration_area: interval.miscalibration_area(),
        mace_quantile: mean_absolute_calibration_error(&quantile),
        rmsce_quantile: root_mean_squared_calibration_error(&quantile),
        miscalibration_area_quantile: quantile.miscalibration_area(),
        check_score: check_score(mean, std, y, options)?,
        interval_score: interval_score(mean, std, y, options)?,
        picp_95: at_95.picp,
        mpiw_95: at_95.mpiw,
        intervals,
    })
}
