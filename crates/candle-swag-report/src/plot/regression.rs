//! Regression plots: calibration curves with the miscalibration area shaded, ordered
//! prediction intervals, the 1-D predictive band and the sharpness histogram.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use statrs::distribution::{ContinuousCDF, Normal};

use super::output::{
    check_series, check_some, padded_range, plot_error, write_figure, DrawResult, Figure, PlotFiles,
};
use super::style::{self, text, Axes};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::CalibrationCurve;

/// One method's calibration curve and the miscalibration area the metrics computed for it.
#[derive(Debug, Clone, Copy)]
pub struct CalibrationSeries<'a> {
    /// Method name shown in the legend.
    pub method: &'a str,
    /// Expected against observed proportions (from [`candle_swag::metrics::calibration_curve`]).
    pub curve: &'a CalibrationCurve,
    /// The miscalibration area reported for this curve (shown in the legend, not recomputed).
    pub miscalibration_area: f64,
}

struct CalibrationFigure<'a> {
    series: &'a [CalibrationSeries<'a>],
    kind: &'a str,
}

impl Figure for CalibrationFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (760, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let title = format!("Calibration curve ({} intervals)", self.kind);
        let axes = Axes::new(
            &title,
            (0f64..1f64, 0f64..1.001f64),
            "Expected proportion of targets inside (nominal level)",
            "Observed proportion inside",
        )
        .digits(Some(1), Some(1));
        let mut chart = style::chart(root, &axes)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = style::series_color(i);
            let curve: Vec<(f64, f64)> = s
                .curve
                .expected
                .iter()
                .copied()
                .zip(s.curve.observed.iter().copied())
                .collect();
            // The region between the curve and the diagonal: along the curve, back along
            // the diagonal.
            let mut region = curve.clone();
            region.extend(curve.iter().rev().map(|&(e, _)| (e, e)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    region,
                    color.mix(0.18).filled(),
                )))?
                .label(format!(
                    "{} miscalibration area {:.4}",
                    s.method, s.miscalibration_area
                ))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 22, y + 6)], color.mix(0.3).filled())
                });
            chart
                .draw_series(LineSeries::new(curve, color.stroke_width(3)))?
                .label(format!("{} curve", s.method))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3))
                });
        }
        style::draw_diagonal(&mut chart, "Perfect calibration")?;
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Writes calibration curves (expected against observed proportion) of one or more methods,
/// the area between each curve and the diagonal shaded in the method's colour. `kind` names
/// the curve in the title, e.g. `"central"` for the interval curve or `"quantile"`.
pub fn calibration_curve_plot(
    dir: &Path,
    name: &str,
    kind: &str,
    series: &[CalibrationSeries<'_>],
) -> Result<PlotFiles> {
    check_some(name, series)?;
    for s in series {
        check_series(name, &format!("{} expected", s.method), &s.curve.expected)?;
        check_series(name, &format!("{} observed", s.method), &s.curve.observed)?;
        check_series(
            name,
            &format!("{} area", s.method),
            &[s.miscalibration_area],
        )?;
        if s.curve.expected.len() != s.curve.observed.len() {
            return Err(Error::Plot {
                plot: name.into(),
                reason: format!(
                    "{}: {} expected but {} observed proportions",
                    s.method,
                    s.curve.expected.len(),
                    s.curve.observed.len()
                ),
            });
        }
    }
    write_figure(dir, name, &CalibrationFigure { series, kind })
}

/// The metrics' check of Gaussian predictions (equal lengths, finite, σ > 0), with the error
/// naming the plot.
fn check_gaussian(plot: &str, mean: &[f64], std: &[f64], y: &[f64]) -> Result<()> {
    candle_swag::metrics::validate::check_gaussian(mean, std, y).map_err(|e| plot_error(plot, e))
}

/// Largest number of rows drawn by [`ordered_intervals`]; more rows are thinned evenly.
pub const MAX_INTERVAL_ROWS: usize = 200;

struct IntervalsFigure<'a> {
    method: &'a str,
    level: f64,
    /// (rank by target, target, mean, lower, upper), sorted by target.
    rows: Vec<(f64, f64, f64, f64, f64)>,
    n_total: usize,
}

impl Figure for IntervalsFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (lo, hi) = padded_range(self.rows.iter().flat_map(|r| [&r.1, &r.3, &r.4]), 0.05);
        let n = self.n_total as f64;
        let shown = if self.rows.len() < self.n_total {
            format!(", {} of {} rows shown", self.rows.len(), self.n_total)
        } else {
            String::new()
        };
        let title = format!(
            "{}: {:.0}% prediction intervals, ordered by target{shown}",
            self.method,
            self.level * 100.0
        );
        let axes = Axes {
            title_size: text::TITLE - 4,
            ..Axes::new(
                &title,
                (-0.5f64..n - 0.5, lo..hi),
                "Rank of the row when sorted by observed target",
                "Target (data units)",
            )
        }
        .digits(Some(0), None);
        let mut chart = style::chart(root, &axes)?;
        let interval_color = style::series_color(0);
        chart
            .draw_series(self.rows.iter().map(|r| {
                PathElement::new(
                    [(r.0, r.3), (r.0, r.4)],
                    interval_color.mix(0.55).stroke_width(2),
                )
            }))?
            .label(format!("{:.0}% interval (mean ± zσ)", self.level * 100.0))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 22, y)], interval_color.stroke_width(3))
            });
        chart
            .draw_series(
                self.rows
                    .iter()
                    .map(|r| Circle::new((r.0, r.2), 3, interval_color.filled())),
            )?
            .label("Predicted mean")
            .legend(move |(x, y)| Circle::new((x + 11, y), 4, interval_color.filled()));
        let inside = style::series_color(2);
        let outside = style::GAP;
        chart
            .draw_series(
                self.rows
                    .iter()
                    .filter(|r| r.1 >= r.3 && r.1 <= r.4)
                    .map(|r| Cross::new((r.0, r.1), 4, inside.stroke_width(2))),
            )?
            .label("Observed target, inside")
            .legend(move |(x, y)| Cross::new((x + 11, y), 5, inside.stroke_width(2)));
        chart
            .draw_series(
                self.rows
                    .iter()
                    .filter(|r| r.1 < r.3 || r.1 > r.4)
                    .map(|r| Cross::new((r.0, r.1), 4, outside.stroke_width(2))),
            )?
            .label("Observed target, outside")
            .legend(move |(x, y)| Cross::new((x + 11, y), 5, outside.stroke_width(2)));
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// `z` of the central interval at `level`: `Φ⁻¹(½ + level/2)` (1.96 at 0.95).
fn central_z(level: f64) -> Result<f64> {
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::invalid("level", format!("{level} is not in (0, 1)")));
    }
    let normal = Normal::new(0.0, 1.0).map_err(|e| Error::invalid("level", e.to_string()))?;
    Ok(normal.inverse_cdf(0.5 + level / 2.0))
}

/// Writes the central prediction intervals `mean ± zσ` (`z = Φ⁻¹(½ + level/2)`) of every row,
/// rows sorted by observed target, the target marked green inside and red outside its
/// interval. Above [`MAX_INTERVAL_ROWS`] rows, evenly spaced rows of the sorted order are
/// drawn (the title says how many).
pub fn ordered_intervals(
    dir: &Path,
    name: &str,
    method: &str,
    mean: &[f64],
    std: &[f64],
    y: &[f64],
    level: f64,
) -> Result<PlotFiles> {
    check_gaussian(name, mean, std, y)?;
    let z = central_z(level)?;
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|&a, &b| y[a].total_cmp(&y[b]));
    let keep = super::thin_indices(order.len(), MAX_INTERVAL_ROWS);
    let rows = keep
        .into_iter()
        .map(|k| {
            let i = order[k];
            let rank = k as f64;
            (
                rank,
                y[i],
                mean[i],
                mean[i] - z * std[i],
                mean[i] + z * std[i],
            )
        })
        .collect();
    write_figure(
        dir,
        name,
        &IntervalsFigure {
            method,
            level,
            rows,
            n_total: y.len(),
        },
    )
}

struct BandFigure<'a> {
    method: &'a str,
    /// (x, mean, std), sorted by x.
    curve: Vec<(f64, f64, f64)>,
    data: Vec<(f64, f64)>,
}

impl Figure for BandFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (x_lo, x_hi) = padded_range(
            self.curve
                .iter()
                .map(|c| &c.0)
                .chain(self.data.iter().map(|d| &d.0)),
            0.02,
        );
        let bounds: Vec<f64> = self
            .curve
            .iter()
            .flat_map(|&(_, m, s)| [m - 2.0 * s, m + 2.0 * s])
            .chain(self.data.iter().map(|d| d.1))
            .collect();
        let (y_lo, y_hi) = padded_range(&bounds, 0.05);
        let title = format!("{}: predictive mean ± 2σ", self.method);
        let axes = Axes::new(
            &title,
            (x_lo..x_hi, y_lo..y_hi),
            "Input x (data units)",
            "Target y (data units)",
        );
        let mut chart = style::chart(root, &axes)?;
        let color = style::series_color(0);
        let mut band: Vec<(f64, f64)> = self
            .curve
            .iter()
            .map(|&(x, m, s)| (x, m + 2.0 * s))
            .collect();
        band.extend(self.curve.iter().rev().map(|&(x, m, s)| (x, m - 2.0 * s)));
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.2).filled())))?
            .label("Mean ± 2σ (≈95% for a Gaussian)")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 22, y + 6)], color.mix(0.3).filled())
            });
        chart
            .draw_series(LineSeries::new(
                self.curve.iter().map(|&(x, m, _)| (x, m)),
                color.stroke_width(3),
            ))?
            .label("Predictive mean")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3)));
        let points = style::series_color(1);
        chart
            .draw_series(
                self.data
                    .iter()
                    .map(|&p| Circle::new(p, 3, points.mix(0.8).filled())),
            )?
            .label("Observed data")
            .legend(move |(x, y)| Circle::new((x + 11, y), 4, points.filled()));
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// A 1-D predictive band: the predictive mean and standard deviation at inputs `x` (any
/// order), and the observed points `(data_x, data_y)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PredictiveBand {
    /// Inputs at which the predictive is evaluated.
    pub x: Vec<f64>,
    /// Predictive mean at each input.
    pub mean: Vec<f64>,
    /// Predictive standard deviation at each input (`> 0`).
    pub std: Vec<f64>,
    /// Inputs of the observed points.
    pub data_x: Vec<f64>,
    /// Targets of the observed points.
    pub data_y: Vec<f64>,
}

impl PredictiveBand {
    /// Checks the band: finite values, `std > 0`, one length for `x`, `mean` and `std`, and
    /// one for `data_x` and `data_y`. Errors name the plot `name`.
    pub fn check(&self, name: &str) -> Result<()> {
        check_gaussian(name, &self.mean, &self.std, &self.x)?;
        check_series(name, "data x", &self.data_x)?;
        check_series(name, "data y", &self.data_y)?;
        if self.data_x.len() != self.data_y.len() {
            return Err(Error::Plot {
                plot: name.into(),
                reason: format!(
                    "{} data x values but {} data y values",
                    self.data_x.len(),
                    self.data_y.len()
                ),
            });
        }
        Ok(())
    }
}

/// Writes the 1-D predictive band: the mean at inputs `x` (sorted for drawing) with the band
/// `mean ± 2σ`, and the observed points.
pub fn predictive_band(
    dir: &Path,
    name: &str,
    method: &str,
    band: &PredictiveBand,
) -> Result<PlotFiles> {
    band.check(name)?;
    let PredictiveBand {
        x,
        mean,
        std,
        data_x,
        data_y,
    } = band;
    let mut curve: Vec<(f64, f64, f64)> = x
        .iter()
        .zip(mean)
        .zip(std)
        .map(|((&x, &m), &s)| (x, m, s))
        .collect();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    let data = data_x.iter().copied().zip(data_y.iter().copied()).collect();
    write_figure(
        dir,
        name,
        &BandFigure {
            method,
            curve,
            data,
        },
    )
}

/// One method's predictive standard deviations and the sharpness the metrics reported.
#[derive(Debug, Clone, Copy)]
pub struct SharpnessSeries<'a> {
    /// Method name shown in the legend.
    pub method: &'a str,
    /// Predictive standard deviations, one per row.
    pub std: &'a [f64],
    /// The reported sharpness `sqrt(mean σ²)` (drawn as a vertical line, not recomputed).
    pub sharpness: f64,
}

/// Bins of the sharpness histogram.
const SHARPNESS_BINS: usize = 30;

struct SharpnessFigure<'a> {
    series: &'a [SharpnessSeries<'a>],
}

impl Figure for SharpnessFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let all = self.series.iter().flat_map(|s| s.std.iter());
        let (mut lo, hi) = padded_range(all, 0.0);
        lo = lo.max(0.0);
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let width = (hi - lo) / SHARPNESS_BINS as f64;
        let hists: Vec<Vec<f64>> = self
            .series
            .iter()
            .map(|s| {
                let mut counts = vec![0.0; SHARPNESS_BINS];
                for &v in s.std {
                    let b = (((v - lo) / width).floor().max(0.0) as usize).min(SHARPNESS_BINS - 1);
                    counts[b] += 1.0 / s.std.len() as f64;
                }
                counts
            })
            .collect();
        let top = hists.iter().flatten().fold(0.0f64, |a, &b| a.max(b)) * 1.15;
        let axes = Axes::new(
            "Sharpness: predictive standard deviations",
            (lo..hi, 0f64..top.max(1e-3)),
            "Predictive std σ (target units)",
            "Fraction of rows per bin",
        )
        .digits(None, Some(2));
        let mut chart = style::chart(root, &axes)?;
        for (i, (s, h)) in self.series.iter().zip(&hists).enumerate() {
            let color = style::series_color(i);
            let bars = h.iter().enumerate().filter(|(_, &f)| f > 0.0);
            chart
                .draw_series(bars.clone().map(|(b, &f)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, f)], color.mix(0.4).filled())
                }))?
                .label(format!("{} (sharpness {:.4})", s.method, s.sharpness))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.mix(0.6).filled())
                });
            chart.draw_series(bars.map(|(b, &f)| {
                let x0 = lo + b as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, f)], color.stroke_width(1))
            }))?;
            chart.draw_series(std::iter::once(PathElement::new(
                [(s.sharpness, 0.0), (s.sharpness, top)],
                color.stroke_width(3),
            )))?;
        }
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    }
}

/// Writes the histogram of predictive standard deviations of one or more methods (each as
/// fractions of its rows, on 30 shared equal-width bins), with each method's reported
/// sharpness as a vertical line.
pub fn sharpness_histogram(
    dir: &Path,
    name: &str,
    series: &[SharpnessSeries<'_>],
) -> Result<PlotFiles> {
    check_some(name, series)?;
    for s in series {
        check_series(name, &format!("{} std", s.method), s.std)?;
        check_series(name, &format!("{} sharpness", s.method), &[s.sharpness])?;
    }
    write_figure(dir, name, &SharpnessFigure { series })
}
