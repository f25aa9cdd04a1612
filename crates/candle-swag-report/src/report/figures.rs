//! The report's figures: what the builder keeps to draw them, and the drawing of every plot
//! into the report directory with unique file names.

use std::path::Path;

use super::*;
use crate::plot::style::percent;
use crate::plot::{self, CalibrationSeries, PlotFiles, SharpnessSeries};
use candle_swag::error::Result;
use candle_swag::metrics::{CalibrationBins, RiskCoverage, RocCurve};

/// Data kept by the builder only to draw plots (not part of [`Report`]).
pub(super) struct ClassificationPlotData {
    pub(super) risk: RiskCoverage,
}

pub(super) struct RegressionPlotData {
    pub(super) mean: Vec<f64>,
    pub(super) std: Vec<f64>,
    pub(super) y: Vec<f64>,
}

pub(super) struct OodPlotData {
    pub(super) scores_in: Vec<f64>,
    pub(super) scores_out: Vec<f64>,
    pub(super) roc: RocCurve,
}

/// Bins of the OOD score histograms.
const OOD_HISTOGRAM_BINS: usize = 30;
/// Level of the ordered prediction-interval plots.
const INTERVAL_PLOT_LEVEL: f64 = 0.95;

/// What the figures are drawn from: the builder's methods, their plot data and settings.
pub(super) struct PlotInputs<'a> {
    pub(super) classification: &'a Vec<(ClassificationEntry, ClassificationPlotData)>,
    pub(super) classification_options: &'a ClassificationConfig,
    pub(super) regression: &'a Vec<(RegressionEntry, RegressionPlotData)>,
    pub(super) ood: &'a Vec<(OodEntry, OodPlotData)>,
    pub(super) bands: &'a Vec<(String, plot::PredictiveBand)>,
    pub(super) calibration: &'a Option<CalibrationSetup>,
    pub(super) regression_calibration: &'a Vec<RegressionCalibration>,
}

impl PlotInputs<'_> {
    /// Draws every plot of the report into `dir`.
    pub(super) fn write_plots(&self, dir: &Path) -> Result<Vec<ReportPlot>> {
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
            for (e, d) in self.regression {
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

        for (method, band) in self.bands {
            let name = names.slug("band", method);
            push(
                plot::predictive_band(dir, &name, method, band)?,
                format!("{method}: predictive mean ± 2σ with the observed data."),
            );
        }

        if !self.ood.is_empty() {
            for (e, d) in self.ood {
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

/// Turns method names into unique, file-safe plot names (`intervals_swag_diag`).
#[derive(Default)]
pub(super) struct SlugSet {
    used: Vec<String>,
}

impl SlugSet {
    fn slug(&mut self, prefix: &str, method: &str) -> String {
        let s = super::file_safe_name(method, "method");
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
