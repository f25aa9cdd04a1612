//! Reliability diagrams: a single method, several methods side by side, or several overlaid.
//!
//! Each bar covers its bin's `[lower, upper]` range as stored in
//! [`CalibrationBins`](candle_swag::metrics::CalibrationBins); its height is the bin's accuracy. The
//! red gap bar spans accuracy to mean confidence (red above the bar: over-confident). Empty
//! bins draw nothing. The ECE and MCE printed in the corner are the ones stored in the bins.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::output::{check_series, check_some, write_figure, DrawResult, Figure, PlotFiles};
use super::style::{self, text, Axes, FONT_FAMILY};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::CalibrationBins;

/// Checks bins are drawable: at least one bin, one row, finite statistics.
fn check_bins(plot: &str, method: &str, bins: &CalibrationBins) -> Result<()> {
    if bins.bins.is_empty() || bins.bins.iter().all(|b| b.count == 0) {
        return Err(Error::Plot {
            plot: plot.into(),
            reason: format!("method `{method}` has no binned rows"),
        });
    }
    let values: Vec<f64> = bins
        .bins
        .iter()
        .flat_map(|b| [b.lower, b.upper, b.mean_confidence, b.accuracy])
        .chain([bins.ece, bins.mce])
        .collect();
    check_series(plot, method, &values)
}

/// Draws one reliability diagram with its confidence histogram below, filling `area`.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    bins: &CalibrationBins,
    color: RGBColor,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let height = area.dim_in_pixel().1;
    let (top, bottom) = area.split_vertically((height as f64 * 0.7) as u32);

    // The confidence axis is described under the histogram below.
    let axes = Axes {
        x_desc: None,
        margin: (14, 14),
        label_areas: (36, 70),
        ..Axes::new(
            title,
            (0f64..1f64, 0f64..1f64),
            "",
            "Accuracy (fraction correct)",
        )
    }
    .digits(Some(1), Some(1));
    let mut chart = style::chart(&top, &axes)?;

    let filled: Vec<_> = bins.bins.iter().filter(|b| b.count > 0).collect();
    chart
        .draw_series(filled.iter().map(|b| {
            Rectangle::new(
                [(b.lower, 0.0), (b.upper, b.accuracy)],
                color.mix(0.85).filled(),
            )
        }))?
        .label("Accuracy")
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.filled()));
    chart.draw_series(filled.iter().map(|b| {
        Rectangle::new(
            [(b.lower, 0.0), (b.upper, b.accuracy)],
            WHITE.stroke_width(1),
        )
    }))?;
    chart
        .draw_series(filled.iter().map(|b| {
            Rectangle::new(
                [(b.lower, b.accuracy), (b.upper, b.mean_confidence)],
                style::GAP.mix(0.3).filled(),
            )
        }))?
        .label("Gap (confidence − accuracy)")
        .legend(|(x, y)| {
            Rectangle::new([(x, y - 6), (x + 18, y + 6)], style::GAP.mix(0.3).filled())
        });
    chart.draw_series(filled.iter().map(|b| {
        Rectangle::new(
            [(b.lower, b.accuracy), (b.upper, b.mean_confidence)],
            style::GAP.stroke_width(1),
        )
    }))?;
    style::draw_diagonal(&mut chart, "Perfect calibration")?;
    style::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

    // ECE and MCE in the upper-left corner under the legend, where a diagram's bars rarely
    // reach (low-confidence bins rarely have high accuracy), on a white box.
    let plot = chart.plotting_area();
    plot.draw(&Rectangle::new(
        [(0.02, 0.62), (0.30, 0.79)],
        WHITE.mix(0.92).filled(),
    ))?;
    plot.draw(&Rectangle::new(
        [(0.02, 0.62), (0.30, 0.79)],
        style::GRID.stroke_width(1),
    ))?;
    let font = (FONT_FAMILY, text::AXIS).into_font();
    plot.draw(&Text::new(
        format!("ECE = {:.4}", bins.ece),
        (0.05, 0.77),
        font.clone(),
    ))?;
    plot.draw(&Text::new(
        format!("MCE = {:.4}", bins.mce),
        (0.05, 0.70),
        font,
    ))?;

    let max_count = bins.bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    let axes = Axes {
        title: None,
        y_labels: Some(4),
        margin: (14, 4),
        label_areas: (56, 70),
        ..Axes::new(
            "",
            (0f64..1f64, 0f64..max_count * 1.1),
            "Confidence (top-label predicted probability)",
            "Rows per bin",
        )
    }
    .digits(Some(1), Some(0));
    let mut hist = style::chart(&bottom, &axes)?;
    hist.draw_series(filled.iter().map(|b| {
        Rectangle::new(
            [(b.lower, 0.0), (b.upper, b.count as f64)],
            style::REFERENCE.mix(0.45).filled(),
        )
    }))?;
    hist.draw_series(filled.iter().map(|b| {
        Rectangle::new(
            [(b.lower, 0.0), (b.upper, b.count as f64)],
            WHITE.stroke_width(1),
        )
    }))?;
    Ok(())
}

struct ReliabilityFigure<'a> {
    panels: &'a [(&'a str, &'a CalibrationBins)],
    columns: usize,
}

impl Figure for ReliabilityFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns);
        let (w, h) = style::SIZE_TALL;
        let panel_w = if self.columns == 1 { w } else { 640 };
        let panel_h = if self.columns == 1 { h } else { 700 };
        (panel_w * self.columns as u32, panel_h * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let rows = self.panels.len().div_ceil(self.columns);
        let areas = root.split_evenly((rows, self.columns));
        for (i, ((method, bins), area)) in self.panels.iter().zip(areas.iter()).enumerate() {
            let title = if self.panels.len() == 1 {
                format!("Reliability diagram: {method}")
            } else {
                method.to_string()
            };
            draw_panel(area, &title, bins, style::series_color(i))?;
        }
        Ok(())
    }
}

/// Writes the reliability diagram of one method as `<dir>/<name>.png` and `.svg`: accuracy
/// bars, gap bars, the diagonal, ECE and MCE in the corner, and the number of rows per bin
/// below.
pub fn reliability_diagram(
    dir: &Path,
    name: &str,
    method: &str,
    bins: &CalibrationBins,
) -> Result<PlotFiles> {
    check_bins(name, method, bins)?;
    let panels = [(method, bins)];
    write_figure(
        dir,
        name,
        &ReliabilityFigure {
            panels: &panels,
            columns: 1,
        },
    )
}

/// Checks that there is at least one method and that every method's bins can be drawn.
fn check_methods(name: &str, methods: &[(&str, &CalibrationBins)]) -> Result<()> {
    check_some(name, methods)?;
    for (method, bins) in methods {
        check_bins(name, method, bins)?;
    }
    Ok(())
}

/// Writes the reliability diagrams of several methods side by side (up to three per row),
/// each in its own colour, for comparing e.g. SGD, SWA and SWAG on the same data.
pub fn reliability_grid(
    dir: &Path,
    name: &str,
    methods: &[(&str, &CalibrationBins)],
) -> Result<PlotFiles> {
    check_methods(name, methods)?;
    write_figure(
        dir,
        name,
        &ReliabilityFigure {
            panels: methods,
            columns: methods.len().min(3),
        },
    )
}

struct OverlayFigure<'a> {
    methods: &'a [(&'a str, &'a CalibrationBins)],
}

impl Figure for OverlayFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let axes = Axes::new(
            "Reliability: all methods",
            (0f64..1f64, 0f64..1f64),
            "Mean confidence in bin (top-label probability)",
            "Accuracy in bin (fraction correct)",
        )
        .digits(Some(1), Some(1));
        let mut chart = style::chart(root, &axes)?;
        style::draw_diagonal(&mut chart, "Perfect calibration")?;
        for (i, (method, bins)) in self.methods.iter().enumerate() {
            let color = style::series_color(i);
            let points: Vec<(f64, f64)> = bins
                .bins
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.mean_confidence, b.accuracy))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
                .label(format!("{method} (ECE {:.4})", bins.ece))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        }
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Writes the reliability curves of several methods overlaid on one chart: mean confidence
/// against accuracy of every non-empty bin, with each method's ECE in the legend.
pub fn reliability_overlay(
    dir: &Path,
    name: &str,
    methods: &[(&str, &CalibrationBins)],
) -> Result<PlotFiles> {
    check_methods(name, methods)?;
    write_figure(dir, name, &OverlayFigure { methods })
}
