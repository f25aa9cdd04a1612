//! Conditional coverage: interval coverage per equal-count bin of predicted σ, one colour per
//! method, Gaussian intervals solid and split-conformal intervals dashed, the target coverage
//! as a horizontal reference line.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::output::{
    check_series, check_some, plot_error, write_figure, DrawResult, Figure, PlotFiles,
};
use super::style::{self, Axes};
use candle_swag::error::Result;
use candle_swag::metrics::ConditionalCoverage;

/// One method's conditional coverage, as [`candle_swag::metrics::conditional_coverage`] computed it
/// for its Gaussian and its conformal intervals (the same σ bins).
#[derive(Debug, Clone, Copy)]
pub struct ConditionalCoverageSeries<'a> {
    /// Method name shown in the legend.
    pub method: &'a str,
    /// Coverage of the Gaussian intervals per σ bin.
    pub gaussian: &'a ConditionalCoverage,
    /// Coverage of the conformal intervals per σ bin.
    pub conformal: &'a ConditionalCoverage,
}

/// `(bin number, coverage)`: bins numbered 1, 2, ... from the smallest σ, so that methods whose
/// σ differ in scale (or a homoscedastic method, whose σ is one value) share one axis.
fn points(c: &ConditionalCoverage) -> Vec<(f64, f64)> {
    c.bins
        .iter()
        .enumerate()
        .map(|(i, b)| ((i + 1) as f64, b.coverage))
        .collect()
}

struct ConditionalCoverageFigure<'a> {
    target: f64,
    series: &'a [ConditionalCoverageSeries<'a>],
}

impl Figure for ConditionalCoverageFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let n_bins = self
            .series
            .iter()
            .flat_map(|s| [s.gaussian.bins.len(), s.conformal.bins.len()])
            .max()
            .unwrap_or(1);
        let (x_lo, x_hi) = (0.5, n_bins as f64 + 0.5);
        let y_lo = self
            .series
            .iter()
            .flat_map(|s| s.gaussian.bins.iter().chain(&s.conformal.bins))
            .map(|b| b.coverage)
            .fold(self.target, f64::min);
        let y_lo = ((y_lo - 0.05) * 10.0).floor() / 10.0;
        let title = format!(
            "Coverage per bin of predicted σ (target {})",
            style::percent(self.target) + "%"
        );
        let axes = Axes::new(
            &title,
            (x_lo..x_hi, y_lo.max(0.0)..1.02),
            "Bin of predicted σ (equal-count, 1 = smallest σ)",
            "Fraction of test rows inside the interval",
        )
        .digits(Some(0), Some(2));
        // One tick per bin number.
        let axes = Axes {
            x_labels: Some(n_bins),
            ..axes
        };
        let mut chart = style::chart(root, &axes)?;
        chart
            .draw_series(LineSeries::new(
                [(x_lo, self.target), (x_hi, self.target)],
                style::REFERENCE.stroke_width(2),
            ))?
            .label("Target coverage")
            .legend(|(x, y)| {
                PathElement::new([(x, y), (x + 22, y)], style::REFERENCE.stroke_width(2))
            });
        for (i, s) in self.series.iter().enumerate() {
            let color = style::series_color(i);
            let g = points(s.gaussian);
            chart
                .draw_series(LineSeries::new(g.clone(), color.stroke_width(3)))?
                .label(format!("{} Gaussian", s.method))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3))
                });
            chart.draw_series(g.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
            let c = points(s.conformal);
            chart
                .draw_series(DashedLineSeries::new(
                    c.clone(),
                    8,
                    5,
                    color.stroke_width(3),
                ))?
                .label(format!("{} conformal", s.method))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 9, y)], color.stroke_width(3))
                });
            chart.draw_series(
                c.into_iter()
                    .map(|p| TriangleMarker::new(p, 6, color.filled())),
            )?;
        }
        style::draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    }
}

/// Writes the conditional-coverage plot of one or more methods: coverage (y) in each
/// equal-count bin of predicted σ, numbered from the smallest σ (x), Gaussian intervals solid with circles, conformal intervals
/// dashed with triangles, and `target` (the nominal coverage, in `(0, 1)`) as a horizontal
/// line. Draws the bins as given; nothing is recomputed.
pub fn conditional_coverage_plot(
    dir: &Path,
    name: &str,
    target: f64,
    series: &[ConditionalCoverageSeries<'_>],
) -> Result<PlotFiles> {
    check_some(name, series)?;
    if !(target > 0.0 && target < 1.0) {
        return Err(plot_error(
            name,
            format!("target {target} is not in (0, 1)"),
        ));
    }
    for s in series {
        for (kind, c) in [("Gaussian", s.gaussian), ("conformal", s.conformal)] {
            let label = format!("{} {kind}", s.method);
            let (x, y): (Vec<f64>, Vec<f64>) = points(c).into_iter().unzip();
            check_series(name, &format!("{label} bins"), &x)?;
            check_series(name, &format!("{label} coverage"), &y)?;
        }
    }
    write_figure(dir, name, &ConditionalCoverageFigure { target, series })
}
