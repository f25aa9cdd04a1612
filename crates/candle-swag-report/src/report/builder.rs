//! [`ReportBuilder`]: collects each method's predictions, computes its metrics and writes the
//! report directory.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::figures::{ClassificationPlotData, OodPlotData, PlotInputs, RegressionPlotData};
use super::*;
use crate::plot::{self, PlotFiles};
use candle_swag::crash_safe::{write_dir_atomic, write_file_atomic};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{self, ClassLabel, ClassificationConfig, Probability, RegressionConfig};

/// Collects methods' predictions, computes their metrics, and writes the report.
///
/// Methods are reported in the order they are added. Names must be non-empty and unique
/// within a task (classification, regression, OOD).
pub struct ReportBuilder {
    pub(super) dataset: String,
    pub(super) classification_options: ClassificationConfig,
    pub(super) regression_options: RegressionConfig,
    pub(super) classification: Vec<(ClassificationEntry, ClassificationPlotData)>,
    pub(super) regression: Vec<(RegressionEntry, RegressionPlotData)>,
    pub(super) ood: Vec<(OodEntry, OodPlotData)>,
    /// (method, band).
    pub(super) bands: Vec<(String, plot::PredictiveBand)>,
    pub(super) calibration: Option<CalibrationSetup>,
    pub(super) classification_calibration: Vec<ClassificationCalibration>,
    pub(super) regression_calibration: Vec<RegressionCalibration>,
}

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
            let tmp_plots = PlotInputs {
                classification: &self.classification,
                classification_options: &self.classification_options,
                regression: &self.regression,
                ood: &self.ood,
                bands: &self.bands,
                calibration: &self.calibration,
                regression_calibration: &self.regression_calibration,
            }
            .write_plots(tmp)?;
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
}
