//! Calibration and uncertainty metrics.
//!
//! Every function takes plain slices (row-major matrices with an explicit number of columns) and
//! returns a serde-serialisable result, so that `plot/` draws from the same numbers that
//! `report/` prints and nothing is computed twice. Natural logarithms everywhere.
//!
//! # Conventions shared by all submodules
//!
//! * **Probabilities** are row-major `[N, C]` slices of `f32` or `f64` (any [`Probability`]);
//!   every accumulation is done in `f64`. Binning compares a value with the bin edges *in the
//!   input's own precision*, so an `f32` confidence written as `0.3` lands in the bin that `0.3`
//!   closes, exactly as the same `f64` value does.
//! * **Labels** are class indices `0..C` of any [`ClassLabel`] type (`u32`, `usize`, `i64`, ...).
//! * **Validation** is part of the single pass over the data (no unchecked variant is needed:
//!   the checks are branch-predicted compares inside the loop that is run anyway). A bad value
//!   gives [`Error::BadData`] whose `file` is the *input name* (`"probabilities"`, `"labels"`,
//!   `"mean"`, ...), `row` is 1-based, and `column` names the class (`"class 3"`, 0-based
//!   class index) or the quantity. A caller that read the data from a file replaces the input
//!   name by the file's path with [`attribute_to_file`]. The first bad value in row order is
//!   reported.
//! * Checks: equal lengths, non-empty input, finite values, probabilities in `[0, 1]`, rows
//!   summing to 1 within [`ROW_SUM_TOLERANCE`], labels inside `0..C`.

pub mod binning;
pub mod classification;
pub mod conformal;
pub mod coverage;
pub mod isotonic;
pub mod ood;
pub mod recalibration;
pub mod regression;
pub mod selective;
pub mod uncertainty;
pub mod validate;

pub(crate) use validate::*;

pub use binning::{
    calibration_bins, calibration_bins_equal_mass, BinStats, BinningScheme, CalibrationBins,
    DEFAULT_BINS,
};
pub use classification::{
    calibration_bins_positive_class, calibration_bins_top_label_binary, classification_metrics,
    evaluate_classification, top_label, ClassificationConfig, ClassificationEvaluation,
    ClassificationMetrics, ClassificationParams, DEFAULT_NLL_EPS,
};
pub use conformal::{
    conformal_quantile, conformal_rank, normalized_scores, ConformalClassifier, ConformalConfig,
    ConformalEvaluation, ConformalParams, ConformalRegressor, SetScore, MIN_CALIBRATION_ROWS,
};
pub use coverage::{
    conditional_coverage, coverage_of_intervals, gaussian_intervals, ConditionalCoverage,
    CoverageBin,
};
pub use isotonic::{
    fit_isotonic_confidence, isotonic_regression, HistogramBinning, IsotonicFit,
    QuantileRecalibrator,
};
pub use ood::{
    auroc, average_precision, fpr_at_tpr, ood_metrics, ood_metrics_in_out, roc_curve, OodMetrics,
    RocCurve,
};
pub use recalibration::{
    apply_temperature, fit_sigma_scale, fit_temperature, softmax_rows, SigmaScaling,
    TemperatureScaling,
};
pub use regression::{
    calibration_curve, check_score, crps_gaussian, crps_samples, gaussian_nll, interval_score,
    linspace, mae, mean_absolute_calibration_error, miscalibration_area,
    prediction_interval_coverage, regression_metrics, regression_metrics_from_samples, rmse,
    root_mean_squared_calibration_error, sample_moments, sharpness, CalibrationCurve,
    CrpsEstimator, CurveKind, IntervalCoverage, RegressionConfig, RegressionMetrics,
    RegressionParams,
};
pub use selective::{risk_coverage, RiskCoverage};
pub use uncertainty::{
    decompose_uncertainty, decompose_uncertainty_tensor, UncertaintyDecomposition,
    UncertaintySummary,
};

use crate::Error;

/// Largest accepted |Σ_k p_k − 1| for a probability row: 1e-4, loose enough for probabilities
/// written in f32 and re-read, tight enough to catch unnormalised scores.
pub const ROW_SUM_TOLERANCE: f64 = 1e-4;

/// A floating-point element type accepted as probability or score input (`f32` or `f64`).
///
/// Comparisons with bin edges happen in this type (see [`Probability::bin_edge`]), sums in `f64`.
pub trait Probability: Copy + PartialOrd + Send + Sync + 'static {
    /// The value widened to `f64` (exact for `f32`).
    fn to_f64(self) -> f64;
    /// The correctly rounded value of `i / n` in this type: one division, never an
    /// accumulated step, so `bin_edge(3, 10)` is exactly the literal `0.3` of this type.
    fn bin_edge(i: usize, n: usize) -> Self;
    /// `n` in this type.
    fn from_count(n: usize) -> Self;
    /// `ceil(self * n)` computed in this type, saturating into `i32` (a first guess of the
    /// 1-based bin number that `equal_width_bin_index` then corrects by at most one).
    /// Truncation plus a compare: `ceil` is a libm call on baseline x86-64.
    fn ceil_scaled(self, n: Self) -> i32;
}

macro_rules! impl_probability {
    ($($t:ty),*) => {$(
        impl Probability for $t {
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn bin_edge(i: usize, n: usize) -> Self {
                i as $t / n as $t
            }
            #[inline(always)]
            fn from_count(n: usize) -> Self {
                n as $t
            }
            #[inline(always)]
            fn ceil_scaled(self, n: Self) -> i32 {
                let x = self * n;
                let t = x as i32;
                t + i32::from((t as $t) < x)
            }
        }
    )*};
}
impl_probability!(f32, f64);

/// An integer class label type. Negative or out-of-range labels are reported as errors.
pub trait ClassLabel: Copy + Send + Sync + 'static {
    /// The label as a class index, or `None` when it cannot be one (negative).
    fn class_index(self) -> Option<usize>;
}

macro_rules! impl_label_unsigned {
    ($($t:ty),*) => {$(
        impl ClassLabel for $t {
            #[inline(always)]
            fn class_index(self) -> Option<usize> {
                usize::try_from(self).ok()
            }
        }
    )*};
}
impl_label_unsigned!(u8, u16, u32, u64, usize, i32, i64);

/// Replaces the input name in a [`Error::BadData`] (for example `"probabilities"`) by the path
/// of the file the caller read that input from; other errors are returned unchanged.
pub fn attribute_to_file(err: Error, input_name: &str, file: &str) -> Error {
    err.map_bad_data(|f, _, _| {
        if f == input_name {
            *f = file.to_string();
        }
    })
}
