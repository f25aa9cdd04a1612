//! The risk–coverage curve of selective prediction, one line per method.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::output::{check_series, check_some, write_figure, DrawResult, Figure, PlotFiles};
use super::style::{self, Axes};
use super::thin_points;
use candle_swag::error::Result;
use candle_swag::metrics::RiskCoverage;

struct RiskCoverageFigure<'a> {
    curves: &'a [(&'a str, &'a RiskCoverage)],
}

impl Figure for RiskCoverageFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let max_risk = self
            .curves
            .iter()
            .flat_map(|(_, c)| c.risk.iter().copied())
            .fold(0.0f64, f64::max);
        let y_top = (max_risk * 1.15).clamp(0.01, 1.0);
        let axes = Axes::new(
            "Risk–coverage (selective prediction)",
            (0f64..1f64, 0f64..y_top),
            "Coverage (fraction of most confident rows kept)",
            "Risk (error rate among kept rows)",
        )
        .digits(Some(1), Some(3));
        let mut chart = style::chart(root, &axes)?;
        for (i, (method, curve)) in self.curves.iter().enumerate() {
            let color = style::series_color(i);
            let points = thin_points(&curve.coverage, &curve.risk);
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(3)))?
                .label(format!("{method} (AURC {:.4})", curve.aurc))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3))
                });
        }
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Writes the risk–coverage curves of one or more methods, each labelled with its AURC
/// (the value stored in the curve, mean-risk convention).
pub fn risk_coverage_plot(
    dir: &Path,
    name: &str,
    curves: &[(&str, &RiskCoverage)],
) -> Result<PlotFiles> {
    check_some(name, curves)?;
    for (method, c) in curves {
        check_series(name, &format!("{method} coverage"), &c.coverage)?;
        check_series(name, &format!("{method} risk"), &c.risk)?;
        check_series(name, &format!("{method} AURC"), &[c.aurc])?;
    }
    write_figure(dir, name, &RiskCoverageFigure { curves })
}
