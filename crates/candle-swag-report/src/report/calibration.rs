//! The calibration sections of a report: split-conformal intervals and prediction sets beside
//! the plain Gaussian intervals, coverage conditional on the predicted σ, and post-hoc
//! recalibration, each fitted on a method's calibration predictions only and scored on its
//! test predictions.
//!
//! A report has these sections only when it was given a [`CalibrationSetup`] and calibration
//! predictions ([`super::ReportBuilder::classification_method_calibrated`],
//! [`super::ReportBuilder::regression_method_calibrated`]); otherwise it says nothing about
//! them.
//!
//! # What is fitted on the calibration part, and how it is scored
//!
//! * **Regression**: the conformal quantile `q̂` of the normalised scores
//!   ([`ConformalRegressor`]), the σ scale ([`fit_sigma_scale`]) and the isotonic quantile map
//!   ([`QuantileRecalibrator`]). On the test part: coverage and mean width of the Gaussian
//!   `μ ± Φ⁻¹(½ + c/2)σ`, conformal `μ ± q̂σ`, σ-scaled and isotonic-recalibrated central
//!   intervals at the setup's coverage `c`; and the MACE of the interval calibration curve
//!   (the report's `calibration_points` levels) of the raw, σ-scaled and recalibrated
//!   predictions. Coverage per equal-count bin of the test σ
//!   ([`candle_swag::metrics::conditional_coverage`]) for the Gaussian and conformal intervals.
//! * **Classification**: APS or RAPS sets ([`ConformalClassifier`]), temperature scaling
//!   ([`fit_temperature`]) on the logits `ln max(p, ε)` of the probabilities (ε: the report's
//!   NLL clamp), isotonic regression of the top-label confidence on correctness
//!   ([`fit_isotonic_confidence`]) and histogram binning of the top-label confidence
//!   ([`HistogramBinning`], the report's equal-width bins). On the test part: set coverage and
//!   mean set size, and the top-label ECE (the report's equal-width bins) of the raw,
//!   temperature-scaled, isotonic and histogram-binned confidences.

use serde::{Deserialize, Serialize};

use candle_swag::error::{Error, Result};
use candle_swag::metrics::{
    self, calibration_bins, coverage_of_intervals, fit_isotonic_confidence, fit_sigma_scale,
    fit_temperature, gaussian_intervals, ClassLabel, ClassificationConfig, ConditionalCoverage,
    ConformalClassifier, ConformalEvaluation, ConformalParams, ConformalRegressor,
    HistogramBinning, IntervalCoverage, Probability, QuantileRecalibrator, RegressionConfig,
    SetScore, SigmaScaling, TemperatureScaling,
};

/// Default number of equal-count σ bins of the conditional-coverage plot.
pub const DEFAULT_SIGMA_BINS: usize = 5;

/// What the calibration sections of a report use: the target coverage, the prediction-set
/// score, the bins of conditional coverage, and which data the calibration predictions are
/// (stated in the report beside every number fitted on them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSetup {
    coverage: f64,
    part: String,
    set_score: SetScore,
    sigma_bins: usize,
}

impl CalibrationSetup {
    /// Target `coverage` in `(0, 1)` of the conformal intervals and sets (the Gaussian and
    /// recalibrated intervals are scored at the same level); `part` says in words which data
    /// the calibration predictions are, e.g. `"the 20% calibration hold-out"` (the report
    /// adds the number of rows). APS sets and [`DEFAULT_SIGMA_BINS`] σ bins by default.
    pub fn new(coverage: f64, part: impl Into<String>) -> Result<Self> {
        ConformalParams::with_coverage(coverage).check()?;
        let part = part.into();
        if part.trim().is_empty() {
            return Err(Error::invalid(
                "calibration part",
                "must say which data the calibration predictions are",
            ));
        }
        Ok(CalibrationSetup {
            coverage,
            part,
            set_score: SetScore::Aps,
            sigma_bins: DEFAULT_SIGMA_BINS,
        })
    }

    /// Prediction sets by `score` (APS or RAPS, [`SetScore::raps`]).
    pub fn with_set_score(mut self, score: SetScore) -> Result<Self> {
        if let SetScore::Raps { lambda, k_reg } = score {
            SetScore::raps(lambda, k_reg)?;
        }
        self.set_score = score;
        Ok(self)
    }

    /// `n` equal-count σ bins (at least 1) for conditional coverage; a test set with fewer
    /// rows gets one bin per row.
    pub fn with_sigma_bins(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid("sigma_bins", "must be at least 1"));
        }
        self.sigma_bins = n;
        Ok(self)
    }

    /// The target coverage.
    pub fn coverage(&self) -> f64 {
        self.coverage
    }

    /// Which data the calibration predictions are, in words.
    pub fn part(&self) -> &str {
        &self.part
    }

    /// The prediction-set score.
    pub fn set_score(&self) -> SetScore {
        self.set_score
    }

    /// Equal-count σ bins of conditional coverage.
    pub fn sigma_bins(&self) -> usize {
        self.sigma_bins
    }

    /// `"fitted on <part>, <n> rows"`.
    pub fn fitted_on(&self, n: usize) -> String {
        format!("fitted on {}, {n} rows", self.part)
    }
}

/// A regression method's calibration results (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionCalibration {
    /// Method name.
    pub method: String,
    /// Calibration rows everything below was fitted on.
    pub n_calibration: usize,
    /// Coverage and mean width of the Gaussian central intervals at the target coverage.
    pub gaussian: IntervalCoverage,
    /// The fitted split-conformal intervals (`q̂`).
    pub conformal: ConformalRegressor,
    /// Coverage and mean width of the conformal intervals on the test rows.
    pub conformal_evaluation: ConformalEvaluation,
    /// Gaussian-interval coverage per equal-count bin of the test σ.
    pub conditional_gaussian: ConditionalCoverage,
    /// Conformal-interval coverage per equal-count bin of the test σ.
    pub conditional_conformal: ConditionalCoverage,
    /// The fitted σ scale.
    pub sigma_scaling: SigmaScaling,
    /// Coverage and mean width of the σ-scaled Gaussian intervals.
    pub sigma_scaled: IntervalCoverage,
    /// Coverage and mean width of the isotonic-recalibrated central intervals.
    pub isotonic: IntervalCoverage,
    /// MACE (interval curve) of the raw predictions on the test rows.
    pub mace: f64,
    /// MACE (interval curve) of the σ-scaled predictions.
    pub mace_sigma_scaled: f64,
    /// MACE (interval curve) of the isotonic-recalibrated predictions.
    pub mace_isotonic: f64,
}

/// A classification method's calibration results (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationCalibration {
    /// Method name.
    pub method: String,
    /// Calibration rows everything below was fitted on.
    pub n_calibration: usize,
    /// The fitted prediction sets (`q̂`, score).
    pub sets: ConformalClassifier,
    /// Coverage and mean set size on the test rows.
    pub set_evaluation: ConformalEvaluation,
    /// The fitted temperature.
    pub temperature: TemperatureScaling,
    /// Top-label ECE of the raw probabilities on the test rows.
    pub ece: f64,
    /// Top-label ECE after temperature scaling.
    pub ece_temperature: f64,
    /// Top-label ECE of the isotonic-recalibrated confidences.
    pub ece_isotonic: f64,
    /// Top-label ECE of the histogram-binned confidences.
    pub ece_histogram: f64,
}

/// Renames the inputs of a calibration fit's errors (`mean` → `calibration mean`), so that a
/// bad calibration array is never mistaken for the test array of the same name.
fn calibration_input(e: Error) -> Error {
    e.map_bad_data(|file, _, _| {
        if !file.starts_with("calibration ") {
            *file = format!("calibration {file}");
        }
    })
}

/// Calibration results of a regression method whose test predictions were already checked.
pub(crate) fn regression(
    setup: &CalibrationSetup,
    options: &RegressionConfig,
    method: &str,
    (mean, std, y): (&[f64], &[f64], &[f64]),
    (cal_mean, cal_std, cal_y): (&[f64], &[f64], &[f64]),
) -> Result<RegressionCalibration> {
    let level = setup.coverage;
    let config = ConformalParams::with_coverage(level).check()?;
    let (conformal, sigma_scaling, recalibrator) = (|| {
        Ok((
            ConformalRegressor::fit(&config, cal_mean, cal_std, cal_y)?,
            fit_sigma_scale(cal_mean, cal_std, cal_y)?,
            QuantileRecalibrator::fit(cal_mean, cal_std, cal_y)?,
        ))
    })()
    .map_err(calibration_input)?;
    let n_bins = setup.sigma_bins.min(y.len());
    let gaussian_iv = gaussian_intervals(mean, std, level)?;
    let conformal_iv = conformal.intervals(mean, std)?;
    let scaled = sigma_scaling.apply(std);
    let points = options.calibration_points();
    let curve = |s: &[f64]| {
        metrics::calibration_curve(mean, s, y, points, metrics::CurveKind::Interval)
            .map(|c| metrics::mean_absolute_calibration_error(&c))
    };
    Ok(RegressionCalibration {
        method: method.to_string(),
        n_calibration: cal_y.len(),
        gaussian: coverage_of_intervals(&gaussian_iv, y, level)?,
        conformal_evaluation: conformal.evaluate(mean, std, y)?,
        conditional_gaussian: metrics::conditional_coverage(std, &gaussian_iv, y, n_bins)?,
        conditional_conformal: metrics::conditional_coverage(std, &conformal_iv, y, n_bins)?,
        sigma_scaled: coverage_of_intervals(&gaussian_intervals(mean, &scaled, level)?, y, level)?,
        isotonic: coverage_of_intervals(&recalibrator.intervals(mean, std, level)?, y, level)?,
        mace: curve(std)?,
        mace_sigma_scaled: curve(&scaled)?,
        mace_isotonic: metrics::mean_absolute_calibration_error(
            &recalibrator.calibration_curve(mean, std, y, points)?,
        ),
        conformal,
        sigma_scaling,
    })
}

/// The logits `ln max(p, eps)` of probabilities (temperature scaling of a BMA's output).
fn log_probabilities<T: Probability>(probs: &[T], eps: f64) -> Vec<f64> {
    probs.iter().map(|p| p.to_f64().max(eps).ln()).collect()
}

/// Calibration results of a classification method whose test predictions were already
/// checked; `raw_ece` is the ECE the report computed for them (in the input's precision).
pub(crate) fn classification<T: Probability, L: ClassLabel>(
    setup: &CalibrationSetup,
    options: &ClassificationConfig,
    method: &str,
    n_classes: usize,
    (probs, labels): (&[T], &[L]),
    (cal_probs, cal_labels): (&[T], &[L]),
    raw_ece: f64,
) -> Result<ClassificationCalibration> {
    let config = ConformalParams::with_coverage(setup.coverage).check()?;
    let n_bins = options.n_bins();
    let eps = options.nll_eps();
    let (sets, temperature, isotonic, histogram, n_calibration) = (|| {
        let sets =
            ConformalClassifier::fit(&config, setup.set_score, cal_probs, n_classes, cal_labels)?;
        let temperature =
            fit_temperature(&log_probabilities(cal_probs, eps), n_classes, cal_labels)?;
        let (conf, correct) = metrics::top_label(cal_probs, n_classes, cal_labels)?;
        Ok((
            sets,
            temperature,
            fit_isotonic_confidence(&conf, &correct)?,
            HistogramBinning::fit(&conf, &correct, n_bins)?,
            conf.len(),
        ))
    })()
    .map_err(calibration_input)?;
    let (conf, correct) = metrics::top_label(probs, n_classes, labels)?;
    let ece = |c: &[f64], ok: &[bool]| calibration_bins(c, ok, n_bins).map(|b| b.ece);
    let scaled = metrics::apply_temperature(
        &log_probabilities(probs, eps),
        n_classes,
        temperature.temperature,
    )?;
    let (scaled_conf, scaled_correct) = metrics::top_label(&scaled, n_classes, labels)?;
    let iso: Vec<f64> = conf.iter().map(|&c| isotonic.predict(c)).collect();
    Ok(ClassificationCalibration {
        method: method.to_string(),
        n_calibration,
        set_evaluation: sets.evaluate(probs, labels)?,
        sets,
        ece: raw_ece,
        ece_temperature: ece(&scaled_conf, &scaled_correct)?,
        ece_isotonic: ece(&iso, &correct)?,
        ece_histogram: ece(&histogram.apply(&conf)?, &correct)?,
        temperature,
    })
}
