//! Calibration reports: the metrics of one or several methods on one dataset, written as
//! `metrics.json`, `report.json`, `report.md`, a self-contained `report.html` and the plots.
//!
//! # Building a report from Rust
//!
//! ```no_run
//! use candle_swag::metrics::{ClassificationConfig, ClassificationParams, RegressionConfig};
//! use candle_swag_report::report::ReportBuilder;
//! # fn main() -> candle_swag::Result<()> {
//! # let (probs_sgd, probs_swag, labels): (Vec<f32>, Vec<f32>, Vec<u32>) = (vec![], vec![], vec![]);
//! # let (mean, std, y): (Vec<f64>, Vec<f64>, Vec<f64>) = (vec![], vec![], vec![]);
//! let settings = ClassificationParams::with_bins(15).check()?;
//! let files = ReportBuilder::with_config("digits", settings, RegressionConfig::default())
//!     .classification_method("SGD", &probs_sgd, 10, &labels)?
//!     .classification_method("SWAG", &probs_swag, 10, &labels)?
//!     .write("report/digits")?;
//! println!("open {}", files.html.display());
//!
//! ReportBuilder::new("diabetes")
//!     .regression_method("SWAG", &mean, &std, &y)?
//!     .write("report/diabetes")?;
//! # Ok(()) }
//! ```
//!
//! Each `*_method` call computes that method's metrics at once with [`candle_swag::metrics`]
//! (invalid predictions are refused there, with the row and column at fault), so the builder
//! only holds results. [`ReportBuilder::classification_tensor`] and
//! [`ReportBuilder::regression_tensor`] take candle tensors instead of slices;
//! [`ReportBuilder::ood_method`] adds out-of-distribution detection scores and
//! [`ReportBuilder::predictive_band`] a 1-D predictive band plot.
//!
//! [`ReportBuilder::write`] builds the whole directory in a temporary sibling and renames it
//! into place ([`candle_swag::crash_safe::write_dir_atomic`]): a failure leaves no half-written report,
//! and an existing report at that path is only replaced by a complete one.
//!
//! # Layout of `metrics.json`
//!
//! * one classification method (and nothing else): the metrics at the top level —
//!   `accuracy`, `nll`, `brier`, `ece`, `mce`, `signed_ece`, `ece_equal_mass`,
//!   `classwise_ece`, `l2_plugin`, `l2_debiased`, `aurc`, `n`, `n_classes`, `n_bins`, ... —
//!   plus `method` (its name);
//! * several classification methods: one such object per method, keyed by method name;
//! * regression only: the same two layouts with the regression metrics (`rmse`, `mae`, `nll`,
//!   `crps`, `picp_95`, `mpiw_95`, `mace`, `rmsce`, `miscalibration_area`, `sharpness`, ...);
//! * classification and regression in one report: `{"classification": ..., "regression": ...}`,
//!   each in the layout above.
//!
//! A method given calibration predictions also carries, in its object, the values of the
//! calibration tables under their column keys ([`table::regression_conformal_columns`],
//! [`table::regression_recalibration_columns`], [`table::classification_conformal_columns`],
//! [`table::classification_recalibration_columns`]: `conformal_coverage`, `conformal_width`,
//! `gaussian_coverage`, `set_coverage`, `set_size`, `ece_temperature`, ...), with
//! `n_calibration` and `target_coverage`; an infinite width is written as `null`. A report
//! without calibration data has none of these keys (see [`calibration`] for what is fitted
//! on which part).
//!
//! OOD-detection results of a method are added to its classification object as `ood_auroc`,
//! `ood_average_precision`, `ood_fpr_at_95_tpr` (a method with OOD scores only gets an object
//! of its own). `report.json` holds the whole [`Report`] (metrics, reliability bins,
//! calibration curves, conventions) and reads back with serde.

mod builder;
pub mod calibration;
mod figures;
mod html;
mod json;
mod markdown;
pub mod table;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plot::style::percent;
use crate::plot::PlotFiles;
use candle_swag::metrics::{
    self, CalibrationBins, CalibrationCurve, ClassificationConfig, ClassificationMetrics,
    OodMetrics, RegressionConfig, RegressionMetrics,
};

pub use builder::ReportBuilder;
pub use calibration::{
    CalibrationSetup, ClassificationCalibration, RegressionCalibration, DEFAULT_SIGMA_BINS,
};
pub use json::metrics_json;
pub use markdown::to_markdown;

/// A file-safe name for a report's directory or a figure: ASCII letters and digits lowercased,
/// every other character `_`, leading and trailing `_` trimmed; `fallback` when nothing is
/// left (a name without an ASCII letter or digit).
///
/// ```
/// use candle_swag_report::report::file_safe_name;
/// assert_eq!(file_safe_name("Movie reviews (shifted)", "set"), "movie_reviews__shifted");
/// assert_eq!(file_safe_name("rotated 30°", "set"), "rotated_30");
/// assert_eq!(file_safe_name("€ £", "set"), "set");
/// ```
pub fn file_safe_name(name: &str, fallback: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    match s.trim_matches('_') {
        "" => fallback.to_string(),
        t => t.to_string(),
    }
}

/// One classification method's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationEntry {
    /// Method name (e.g. "SWAG").
    pub method: String,
    /// The scalar metrics.
    pub metrics: ClassificationMetrics,
    /// Area under the risk–coverage curve of the top-label confidence (mean-risk convention).
    pub aurc: f64,
    /// Top-label equal-width reliability bins.
    pub reliability: CalibrationBins,
}

/// One regression method's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionEntry {
    /// Method name.
    pub method: String,
    /// The scalar metrics.
    pub metrics: RegressionMetrics,
    /// Interval (central) calibration curve.
    pub calibration: CalibrationCurve,
}

/// One method's out-of-distribution detection results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodEntry {
    /// Method name.
    pub method: String,
    /// What the score is (e.g. "Predictive entropy (nats)"); higher = more OOD.
    pub score: String,
    /// AUROC, average precision and FPR at 95% TPR.
    pub metrics: OodMetrics,
}

/// One convention used by the numbers of a report, stated in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Convention {
    /// What it is about (e.g. "ECE bins").
    pub topic: String,
    /// The convention.
    pub text: String,
}

/// The metrics of one or several methods on one dataset, and the conventions used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Dataset name, shown in titles.
    pub dataset: String,
    /// Classification methods, in the order added.
    pub classification: Vec<ClassificationEntry>,
    /// Regression methods, in the order added.
    pub regression: Vec<RegressionEntry>,
    /// OOD-detection results, in the order added.
    pub ood: Vec<OodEntry>,
    /// The conventions behind the numbers.
    pub conventions: Vec<Convention>,
    /// The calibration setup, when the report was given calibration predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSetup>,
    /// Conformal sets and recalibration of the classification methods given calibration
    /// predictions, in the order added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classification_calibration: Vec<ClassificationCalibration>,
    /// Conformal intervals, conditional coverage and recalibration of the regression methods
    /// given calibration predictions, in the order added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regression_calibration: Vec<RegressionCalibration>,
}

/// Gaussian predictions of calibration rows that a model never trained on: means, standard
/// deviations (> 0) and targets, one per row.
#[derive(Debug, Clone, Copy)]
pub struct GaussianPredictions<'a> {
    /// Predictive means.
    pub mean: &'a [f64],
    /// Predictive standard deviations.
    pub std: &'a [f64],
    /// Targets.
    pub targets: &'a [f64],
}

/// A plot written into a report, with the caption the report shows under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPlot {
    /// The PNG and SVG files (paths inside the report directory).
    pub files: PlotFiles,
    /// Caption.
    pub caption: String,
}

/// The files of a written report (paths inside the final directory).
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// The report directory.
    pub dir: PathBuf,
    /// `metrics.json`.
    pub metrics_json: PathBuf,
    /// `report.json` (the whole [`Report`]).
    pub report_json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
    /// Every plot, PNG and SVG.
    pub plots: Vec<ReportPlot>,
}

/// `"fitted on <part>, <n> rows"`, or `"<n1>/<n2> rows"` when methods had different calibration
/// sets.
pub(crate) fn fitted_on_rows(setup: &CalibrationSetup, n: impl Iterator<Item = usize>) -> String {
    let mut counts: Vec<usize> = n.collect();
    counts.dedup();
    match counts.as_slice() {
        [one] => setup.fitted_on(*one),
        many => format!(
            "fitted on {}, {} rows",
            setup.part(),
            many.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("/")
        ),
    }
}

/// The conventions that apply to a report, in words.
fn conventions(
    c: &ClassificationConfig,
    r: &RegressionConfig,
    has_classification: bool,
    has_regression: bool,
    has_ood: bool,
    calibration: Option<&CalibrationSetup>,
) -> Vec<Convention> {
    let mut out = vec![Convention {
        topic: "Logarithms".into(),
        text: "Natural logarithms throughout: NLL and entropies are in nats.".into(),
    }];
    let mut add = |topic: &str, text: String| {
        out.push(Convention {
            topic: topic.into(),
            text,
        })
    };
    if has_classification {
        add("Input checks", format!(
            "Probabilities must lie in [0, 1] and each row must sum to 1 within ±{:e}; labels are class indices 0..C.",
            metrics::ROW_SUM_TOLERANCE
        ));
        add(
            "Accuracy",
            "Arg-max class (the first one on ties) equals the label.".into(),
        );
        add(
            "NLL",
            format!("Mean of −ln(max(p_y, ε)) with ε = {:e}.", c.nll_eps()),
        );
        add(
            "Brier",
            "Mean over rows of Σ_k (p_k − onehot_k)², in [0, 2].".into(),
        );
        add("ECE / MCE", format!(
            "Top-label confidence max_k p_k on {} equal-width bins; bin i covers (i/B, (i+1)/B], right-closed, edges computed as i/B; confidence 0 falls in the first bin and 1.0 in the last. ECE = Σ_b (n_b/N)|acc_b − conf_b|; MCE = max over non-empty bins. Signed ECE = Σ_b (n_b/N)(conf_b − acc_b), positive when over-confident.",
            c.n_bins()
        ));
        add("Equal-mass ECE and L2", format!(
            "{} bins of (almost) equal counts over the sorted confidences; the L2 calibration error (plug-in and Kumar et al.'s debiased estimator) uses these bins.",
            c.n_bins_equal_mass()
        ));
        add(
            "Classwise ECE",
            "Mean over classes k of the equal-width ECE of p_k against 1[y = k].".into(),
        );
        add("AURC", "Area under the risk–coverage curve of the top-label confidence, mean-risk convention: (1/N) Σ_k risk_k, ties in confidence entering with their average error.".into());
    }
    if has_regression {
        add(
            "Regression predictions",
            "Gaussian mean μ and standard deviation σ > 0 per row; residual r = (μ − y)/σ.".into(),
        );
        add(
            "Regression NLL and CRPS",
            "NLL = mean ½ ln(2πσ²) + (y − μ)²/(2σ²); CRPS in closed form for the Gaussian.".into(),
        );
        add("PICP / MPIW", format!(
            "Coverage and mean width of the central intervals μ ± Φ⁻¹(½ + p/2)σ (closed), at levels {:?}; PICP 95% is best closest to 0.95.",
            r.interval_levels()
        ));
        add("Calibration curve", format!(
            "Expected proportions linspace(0, 1, {}) against observed proportions inside the central intervals; MACE, RMSCE and the miscalibration area (area between curve and diagonal) are computed from it.",
            r.calibration_points()
        ));
        add("Sharpness", "sqrt(mean σ²), in target units. Sharpness and MPIW are not ranked: narrower is better only when coverage holds.".into());
        add(
            "Check and interval scores",
            format!(
                "Averaged over levels linspace({}, {}, {}).",
                r.score_levels().0,
                r.score_levels().1,
                r.score_levels().2
            ),
        );
    }
    if has_ood {
        add("OOD detection", "Out-of-distribution rows are the positive class; higher scores mean more OOD. AUROC is exact with ties averaged; average precision is scikit-learn's step-wise definition; FPR at 95% TPR takes the first ROC point reaching the target, without interpolation.".into());
    }
    if let Some(setup) = calibration {
        let level = percent(setup.coverage());
        add("Calibration part", format!(
            "Split-conformal quantiles and every recalibration map are fitted on the calibration predictions only ({}; the row count is given per table), never on the test rows they are scored on.",
            setup.part()
        ));
        add("Split-conformal", format!(
            "Target coverage {level}%: the conformal quantile is the ⌈(n + 1)(1 − α)⌉-th smallest of the n calibration scores (no interpolation; +∞ when that rank exceeds n). Regression scores |y − μ|/σ give the closed intervals μ ± q̂σ; classification scores are non-randomised {} on the probabilities, sets never empty. Coverage = fraction of test rows inside (intervals closed); width = mean upper − lower; set size = mean number of classes.",
            match setup.set_score() {
                metrics::SetScore::Aps => "APS".to_string(),
                metrics::SetScore::Raps { lambda, k_reg } => format!("RAPS (λ = {lambda}, k_reg = {k_reg})"),
            }
        ));
        add("Gaussian intervals", format!(
            "The plain intervals beside the conformal ones are the central μ ± Φ⁻¹(½ + c/2)σ at c = {level}%."
        ));
        add("Conditional coverage", format!(
            "Test rows sorted by predicted σ (ties in row order) and cut into {} equal-count bins, sizes differing by at most one, larger bins first (numpy.array_split; one bin per row when there are fewer rows); coverage per bin.",
            setup.sigma_bins()
        ));
        add("Recalibration", format!(
            "Regression: σ scaling s = sqrt(mean r²) (closed-form NLL optimum) and isotonic quantile recalibration (Kuleshov et al. 2018), scored by coverage and mean width at {level}% and by the MACE of the interval calibration curve ({} levels). Classification: temperature scaling on the logits ln max(p, ε) (ε = {:e}), isotonic regression of the top-label confidence on correctness (linear between knots), and histogram binning on the {} equal-width ECE bins; each scored by the top-label ECE on the same bins.",
            r.calibration_points(),
            c.nll_eps(),
            c.n_bins()
        ));
    }
    add("Best values", "In the tables, the best value of each column among several methods is marked: ↑ higher is better, ↓ lower is better, →t closest to t is best.".into());
    out
}
