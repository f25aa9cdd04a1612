//! Calibration reports: the metrics of one or several methods on one dataset, written as
//! `metrics.json`, `report.json`, `report.md`, a self-contained `report.html` and the plots.
//!
//! # Building a report from Rust
//!
//! ```no_run
//! use candle_swag::metrics::{ClassificationConfig, RegressionConfig};
//! use candle_swag_report::report::ReportBuilder;
//! # fn main() -> candle_swag::Result<()> {
//! # let (probs_sgd, probs_swag, labels): (Vec<f32>, Vec<f32>, Vec<u32>) = (vec![], vec![], vec![]);
//! # let (mean, std, y): (Vec<f64>, Vec<f64>, Vec<f64>) = (vec![], vec![], vec![]);
//! let settings = ClassificationConfig::with_bins(15)?;
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
//! into place ([`candle_swag::atomic::write_dir_atomic`]): a failure leaves no half-written report,
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

pub mod calibration;
mod html;
mod json;
mod markdown;
pub mod table;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::plot::style::percent;
use crate::plot::{self, CalibrationSeries, PlotFiles, SharpnessSeries};
use candle_swag::atomic::{write_dir_atomic, write_file_atomic};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{
    self, CalibrationBins, CalibrationCurve, ClassLabel, ClassificationConfig,
    ClassificationMetrics, OodMetrics, Probability, RegressionConfig, RegressionMetrics,
    RiskCoverage, RocCurve,
};

pub use calibration::{
    CalibrationSetup, ClassificationCalibration, RegressionCalibration, DEFAULT_SIGMA_BINS,
};
pub use json::metrics_json;
pub use markdown::to_markdown;

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

/// Data kept by the builder only to draw plots (not part of [`Report`]).
struct ClassificationPlotData {
    risk: RiskCoverage,
}

struct RegressionPlotData {
    mean: Vec<f64>,
    std: Vec<f64>,
    y: Vec<f64>,
}

struct OodPlotData {
    scores_in: Vec<f64>,
    scores_out: Vec<f64>,
    roc: RocCurve,
}

/// Collects methods' predictions, computes their metrics, and writes the report.
///
/// Methods are reported in the order they are added. Names must be non-empty and unique
/// within a task (classification, regression, OOD).
pub struct ReportBuilder {
    dataset: String,
    classification_options: ClassificationConfig,
    regression_options: RegressionConfig,
    classification: Vec<(ClassificationEntry, ClassificationPlotData)>,
    regression: Vec<(RegressionEntry, RegressionPlotData)>,
    ood: Vec<(OodEntry, OodPlotData)>,
    /// (method, band).
    bands: Vec<(String, plot::PredictiveBand)>,
    calibration: Option<CalibrationSetup>,
    classification_calibration: Vec<ClassificationCalibration>,
    regression_calibration: Vec<RegressionCalibration>,
}

/// Bins of the OOD score histograms.
const OOD_HISTOGRAM_BINS: usize = 30;
/// Level of the ordered prediction-interval plots.
const INTERVAL_PLOT_LEVEL: f64 = 0.95;

fn check_method_name<'a>(
    task: &str,
    name: &str,
    mut existing: impl Iterator<Item = &'a str>,
) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("method", "name must not be empty"));
    }
    if existing.any(|m| m == name) {
        return Err(Error::invalid(
            "method",
            format!("{task} method `{name}` was already added; names must be unique"),
        ));
    }
    Ok(())
}

/// Tensor values as `f64`, with the shape checked against `dims`.
fn tensor_values(name: &str, t: &Tensor, rank: usize) -> Result<Vec<f64>> {
    if t.rank() != rank {
        return Err(Error::invalid(
            name,
            format!("expected a rank-{rank} tensor, got shape {:?}", t.dims()),
        ));
    }
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

impl ReportBuilder {
    /// A report on `dataset`, with the metrics' default settings (15 bins, default epsilons
    /// and levels).
    pub fn new(dataset: impl Into<String>) -> Self {
        Self::with_config(
            dataset,
            ClassificationConfig::default(),
            RegressionConfig::default(),
        )
    }

    /// A report on `dataset` whose every method is scored with these settings. They are fixed
    /// here, before any method is added, so no result depends on the order of calls.
    pub fn with_config(
        dataset: impl Into<String>,
        classification: ClassificationConfig,
        regression: RegressionConfig,
    ) -> Self {
        ReportBuilder {
            dataset: dataset.into(),
            classification_options: classification,
            regression_options: regression,
            classification: Vec::new(),
            regression: Vec::new(),
            ood: Vec::new(),
            bands: Vec::new(),
            calibration: None,
            classification_calibration: Vec::new(),
            regression_calibration: Vec::new(),
        }
    }

    /// Enables the calibration sections: the target coverage, set score and σ bins, and which
    /// data the calibration predictions of
    /// [`ReportBuilder::classification_method_calibrated`] and
    /// [`ReportBuilder::regression_method_calibrated`] are. Fixed before any method is added,
    /// like the metric settings.
    pub fn with_calibration(mut self, setup: CalibrationSetup) -> Result<Self> {
        if !(self.classification.is_empty() && self.regression.is_empty() && self.ood.is_empty()) {
            return Err(Error::invalid(
                "calibration",
                "set the calibration setup before adding any method",
            ));
        }
        self.calibration = Some(setup);
        Ok(self)
    }

    fn calibration_setup(&self) -> Result<&CalibrationSetup> {
        self.calibration.as_ref().ok_or_else(|| {
            Error::invalid(
                "calibration",
                "calibration predictions need ReportBuilder::with_calibration first (coverage level and which data they are)",
            )
        })
    }

    /// Adds a classification method: `probs` row-major `[N, n_classes]` (rows summing to 1),
    /// `labels` `N` class indices. Computes every classification metric, the reliability bins
    /// and the risk–coverage curve now.
    pub fn classification_method<T: Probability, L: ClassLabel>(
        mut self,
        name: &str,
        probs: &[T],
        n_classes: usize,
        labels: &[L],
    ) -> Result<Self> {
        check_method_name(
            "classification",
            name,
            self.classification.iter().map(|(e, _)| e.method.as_str()),
        )?;
        let eval = metrics::evaluate_classification(
            probs,
            n_classes,
            labels,
            &self.classification_options,
        )?;
        let (confidence, correct) = metrics::top_label(probs, n_classes, labels)?;
        let errors: Vec<bool> = correct.iter().map(|c| !c).collect();
        let risk = metrics::risk_coverage(&confidence, &errors)?;
        let entry = ClassificationEntry {
            method: name.to_string(),
            metrics: eval.metrics,
            aurc: risk.aurc,
            reliability: eval.reliability,
        };
        self.classification
            .push((entry, ClassificationPlotData { risk }));
        Ok(self)
    }

    /// [`ReportBuilder::classification_method`], plus the method's predictions on calibration
    /// rows it never trained on (`calibration_probs` `[M, n_classes]`, `calibration_labels`
    /// `M`): APS/RAPS sets, temperature scaling, isotonic and histogram-binning recalibration
    /// are fitted on them only and scored on the test rows (see [`CalibrationSetup`]; needs
    /// [`ReportBuilder::with_calibration`]).
    pub fn classification_method_calibrated<T: Probability, L: ClassLabel>(
        self,
        name: &str,
        probs: &[T],
        n_classes: usize,
        labels: &[L],
        calibration_probs: &[T],
        calibration_labels: &[L],
    ) -> Result<Self> {
        let setup = self.calibration_setup()?.clone();
        let mut added = self.classification_method(name, probs, n_classes, labels)?;
        let raw_ece = added
            .classification
            .last()
            .map_or(f64::NAN, |(e, _)| e.metrics.ece);
        let c = calibration::classification(
            &setup,
            &added.classification_options,
            name,
            n_classes,
            (probs, labels),
            (calibration_probs, calibration_labels),
            raw_ece,
        )?;
        added.classification_calibration.push(c);
        Ok(added)
    }

    /// [`ReportBuilder::classification_method`] from candle tensors: `probs` `[N, C]` of any
    /// float dtype, `labels` `[N]` of any dtype holding non-negative integers.
    pub fn classification_tensor(
        self,
        name: &str,
        probs: &Tensor,
        labels: &Tensor,
    ) -> Result<Self> {
        let n_classes = probs.dims().get(1).copied().unwrap_or(0);
        let p = tensor_values("probs", probs, 2)?;
        let l = tensor_values("labels", labels, 1)?;
        let classes = l
            .iter()
            .enumerate()
            .map(
                |(i, &v)| match candle_swag::metrics::validate::label_problem(v, n_classes) {
                    None => Ok(v as u32),
                    Some(reason) => Err(Error::BadData {
                        file: "labels".into(),
                        row: i + 1,
                        column: "label".into(),
                        reason,
                    }),
                },
            )
            .collect::<Result<Vec<u32>>>()?;
        self.classification_method(name, &p, n_classes, &classes)
    }

    /// Adds a regression method with Gaussian predictions `mean ± std` for targets `y`.
    pub fn regression_method(
        mut self,
        name: &str,
        mean: &[f64],
        std: &[f64],
        y: &[f64],
    ) -> Result<Self> {
        check_method_name(
            "regression",
            name,
            self.regression.iter().map(|(e, _)| e.method.as_str()),
        )?;
        let m = metrics::regression_metrics(mean, std, y, &self.regression_options)?;
        let calibration = metrics::calibration_curve(
            mean,
            std,
            y,
            self.regression_options.calibration_points(),
            metrics::CurveKind::Interval,
        )?;
        let entry = RegressionEntry {
            method: name.to_string(),
            metrics: m,
            calibration,
        };
        let data = RegressionPlotData {
            mean: mean.to_vec(),
            std: std.to_vec(),
            y: y.to_vec(),
        };
        self.regression.push((entry, data));
        Ok(self)
    }

    /// [`ReportBuilder::regression_method`], plus the method's predictions on calibration rows
    /// it never trained on: split-conformal intervals, σ scaling and isotonic quantile
    /// recalibration are fitted on them only and scored on the test rows, beside the Gaussian
    /// intervals (see [`CalibrationSetup`]; needs [`ReportBuilder::with_calibration`]).
    pub fn regression_method_calibrated(
        self,
        name: &str,
        mean: &[f64],
        std: &[f64],
        y: &[f64],
        calibration: GaussianPredictions<'_>,
    ) -> Result<Self> {
        let setup = self.calibration_setup()?.clone();
        let mut added = self.regression_method(name, mean, std, y)?;
        let c = calibration::regression(
            &setup,
            &added.regression_options,
            name,
            (mean, std, y),
            (calibration.mean, calibration.std, calibration.targets),
        )?;
        added.regression_calibration.push(c);
        Ok(added)
    }

    /// [`ReportBuilder::regression_method`] from rank-1 candle tensors.
    pub fn regression_tensor(
        self,
        name: &str,
        mean: &Tensor,
        std: &Tensor,
        y: &Tensor,
    ) -> Result<Self> {
        let m = tensor_values("mean", mean, 1)?;
        let s = tensor_values("std", std, 1)?;
        let t = tensor_values("targets", y, 1)?;
        self.regression_method(name, &m, &s, &t)
    }

    /// Adds out-of-distribution detection by `score` (higher = more OOD, e.g. predictive
    /// entropy) for in-distribution rows `scores_in` and OOD rows `scores_out`.
    pub fn ood_method(
        mut self,
        name: &str,
        score: &str,
        scores_in: &[f64],
        scores_out: &[f64],
    ) -> Result<Self> {
        check_method_name("OOD", name, self.ood.iter().map(|(e, _)| e.method.as_str()))?;
        let m = metrics::ood_metrics_in_out(scores_in, scores_out)?;
        let all: Vec<f64> = scores_in.iter().chain(scores_out).copied().collect();
        let is_ood: Vec<bool> = (0..all.len()).map(|i| i >= scores_in.len()).collect();
        let roc = metrics::roc_curve(&all, &is_ood)?;
        let entry = OodEntry {
            method: name.to_string(),
            score: score.to_string(),
            metrics: m,
        };
        let data = OodPlotData {
            scores_in: scores_in.to_vec(),
            scores_out: scores_out.to_vec(),
            roc,
        };
        self.ood.push((entry, data));
        Ok(self)
    }

    /// Adds a 1-D predictive band plot (`mean ± 2σ` over inputs `x`, with the observed
    /// points) for `method`; the band needs no regression entry of the same name. The band is
    /// checked now ([`plot::PredictiveBand::check`]).
    pub fn predictive_band(mut self, method: &str, band: plot::PredictiveBand) -> Result<Self> {
        check_method_name("band", method, self.bands.iter().map(|(m, _)| m.as_str()))?;
        band.check("predictive_band")?;
        self.bands.push((method.to_string(), band));
        Ok(self)
    }

    /// The [`Report`] so far (metrics and conventions; no files written).
    pub fn report(&self) -> Report {
        Report {
            dataset: self.dataset.clone(),
            classification: self.classification.iter().map(|(e, _)| e.clone()).collect(),
            regression: self.regression.iter().map(|(e, _)| e.clone()).collect(),
            ood: self.ood.iter().map(|(e, _)| e.clone()).collect(),
            conventions: conventions(
                &self.classification_options,
                &self.regression_options,
                !self.classification.is_empty(),
                !self.regression.is_empty(),
                !self.ood.is_empty(),
                self.calibration.as_ref().filter(|_| {
                    !(self.classification_calibration.is_empty()
                        && self.regression_calibration.is_empty())
                }),
            ),
            calibration: self.calibration.clone().filter(|_| {
                !(self.classification_calibration.is_empty()
                    && self.regression_calibration.is_empty())
            }),
            classification_calibration: self.classification_calibration.clone(),
            regression_calibration: self.regression_calibration.clone(),
        }
    }

    /// Writes the report directory `dir` atomically: `metrics.json`, `report.json`,
    /// `report.md`, `report.html` and every plot as PNG and SVG. Fails (writing nothing)
    /// when no method was added.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<ReportFiles> {
        let dir = dir.as_ref();
        if self.classification.is_empty() && self.regression.is_empty() && self.ood.is_empty() {
            return Err(Error::invalid(
                "report",
                "no methods were added: nothing to report",
            ));
        }
        let report = self.report();
        let mut plots = Vec::new();
        write_dir_atomic(dir, |tmp| {
            let tmp_plots = self.write_plots(tmp)?;
            let json = serde_json::to_string_pretty(&metrics_json(&report))?;
            write_file_atomic(tmp.join("metrics.json"), json.as_bytes())?;
            let full = serde_json::to_string_pretty(&report)?;
            write_file_atomic(tmp.join("report.json"), full.as_bytes())?;
            write_file_atomic(
                tmp.join("report.md"),
                to_markdown(&report, &tmp_plots).as_bytes(),
            )?;
            let html = html::to_html(&report, &tmp_plots)?;
            write_file_atomic(tmp.join("report.html"), html.as_bytes())?;
            plots = tmp_plots;
            Ok(())
        })?;
        // Paths inside the final directory.
        let plots = plots
            .into_iter()
            .map(|p| ReportPlot {
                files: PlotFiles {
                    png: dir.join(format!("{}.png", p.files.name)),
                    svg: dir.join(format!("{}.svg", p.files.name)),
                    name: p.files.name,
                },
                caption: p.caption,
            })
            .collect();
        Ok(ReportFiles {
            dir: dir.to_path_buf(),
            metrics_json: dir.join("metrics.json"),
            report_json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            html: dir.join("report.html"),
            plots,
        })
    }

    /// Draws every plot of the report into `dir`.
    fn write_plots(&self, dir: &Path) -> Result<Vec<ReportPlot>> {
        let mut out = Vec::new();
        let mut push = |files: PlotFiles, caption: String| {
            out.push(ReportPlot { files, caption });
        };
        let mut names = SlugSet::default();

        if !self.classification.is_empty() {
            let bins: Vec<(&str, &CalibrationBins)> = self
                .classification
                .iter()
                .map(|(e, _)| (e.method.as_str(), &e.reliability))
                .collect();
            let n_bins = self.classification_options.n_bins();
            if bins.len() == 1 {
                push(
                    plot::reliability_diagram(dir, "reliability", bins[0].0, bins[0].1)?,
                    format!("Reliability diagram ({n_bins} equal-width bins, top-label confidence) with the number of rows per bin below."),
                );
            } else {
                push(
                    plot::reliability_grid(dir, "reliability", &bins)?,
                    format!("Reliability diagrams side by side ({n_bins} equal-width bins, top-label confidence)."),
                );
                push(
                    plot::reliability_overlay(dir, "reliability_overlay", &bins)?,
                    "Reliability curves overlaid: mean confidence against accuracy of every non-empty bin.".into(),
                );
            }
            let curves: Vec<(&str, &RiskCoverage)> = self
                .classification
                .iter()
                .map(|(e, d)| (e.method.as_str(), &d.risk))
                .collect();
            push(
                plot::risk_coverage_plot(dir, "risk_coverage", &curves)?,
                "Risk–coverage: error rate among the most confident rows as coverage grows (lower is better).".into(),
            );
        }

        if !self.regression.is_empty() {
            let series: Vec<CalibrationSeries> = self
                .regression
                .iter()
                .map(|(e, _)| CalibrationSeries {
                    method: &e.method,
                    curve: &e.calibration,
                    miscalibration_area: e.metrics.miscalibration_area,
                })
                .collect();
            push(
                plot::calibration_curve_plot(dir, "calibration_curve", "central", &series)?,
                "Regression calibration: observed against expected proportion of targets inside central Gaussian intervals; shaded: miscalibration area.".into(),
            );
            for (e, d) in &self.regression {
                let name = names.slug("intervals", &e.method);
                push(
                    plot::ordered_intervals(
                        dir,
                        &name,
                        &e.method,
                        &d.mean,
                        &d.std,
                        &d.y,
                        INTERVAL_PLOT_LEVEL,
                    )?,
                    format!(
                        "{}: 95% prediction intervals, rows ordered by target.",
                        e.method
                    ),
                );
            }
            let sharp: Vec<SharpnessSeries> = self
                .regression
                .iter()
                .map(|(e, d)| SharpnessSeries {
                    method: &e.method,
                    std: &d.std,
                    sharpness: e.metrics.sharpness,
                })
                .collect();
            push(
                plot::sharpness_histogram(dir, "sharpness", &sharp)?,
                "Sharpness: distribution of predictive standard deviations (vertical line: sqrt(mean σ²)).".into(),
            );
        }

        if let (Some(setup), false) = (&self.calibration, self.regression_calibration.is_empty()) {
            let series: Vec<plot::ConditionalCoverageSeries> = self
                .regression_calibration
                .iter()
                .map(|c| plot::ConditionalCoverageSeries {
                    method: &c.method,
                    gaussian: &c.conditional_gaussian,
                    conformal: &c.conditional_conformal,
                })
                .collect();
            push(
                plot::conditional_coverage_plot(dir, "conditional_coverage", setup.coverage(), &series)?,
                format!(
                    "Conditional coverage: fraction of test rows inside the {}% intervals per equal-count bin of predicted σ (up to {} bins, numbered from the smallest σ; the σ range of each bin is in report.json), Gaussian (solid) and split-conformal (dashed); the line is the target. Conformal quantiles {}.",
                    percent(setup.coverage()),
                    setup.sigma_bins(),
                    fitted_on_rows(setup, self.regression_calibration.iter().map(|c| c.n_calibration)),
                ),
            );
        }

        for (method, band) in &self.bands {
            let name = names.slug("band", method);
            push(
                plot::predictive_band(dir, &name, method, band)?,
                format!("{method}: predictive mean ± 2σ with the observed data."),
            );
        }

        if !self.ood.is_empty() {
            for (e, d) in &self.ood {
                let name = names.slug("ood_scores", &e.method);
                push(
                    plot::ood_score_histogram(
                        dir,
                        &name,
                        &e.score,
                        &d.scores_in,
                        &d.scores_out,
                        OOD_HISTOGRAM_BINS,
                    )?,
                    format!(
                        "{}: {} of in-distribution and out-of-distribution rows.",
                        e.method, e.score
                    ),
                );
            }
            let rocs: Vec<(&str, &RocCurve)> = self
                .ood
                .iter()
                .map(|(e, d)| (e.method.as_str(), &d.roc))
                .collect();
            push(
                plot::roc_plot(dir, "roc", &rocs)?,
                "ROC of out-of-distribution detection (OOD rows are the positive class).".into(),
            );
        }
        Ok(out)
    }
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

/// Turns method names into unique, file-safe plot names (`intervals_swag_diag`).
#[derive(Default)]
struct SlugSet {
    used: Vec<String>,
}

impl SlugSet {
    fn slug(&mut self, prefix: &str, method: &str) -> String {
        let mut s: String = method
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        s = s.trim_matches('_').to_string();
        if s.is_empty() {
            s = "method".into();
        }
        let base = format!("{prefix}_{s}");
        let mut name = base.clone();
        let mut k = 2;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.push(name.clone());
        name
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
