//! Out-of-distribution detection: score histograms (in versus out) and ROC curves.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::output::{
    check_series, check_some, padded_range, write_figure, DrawResult, Figure, PlotFiles,
};
use super::style::{self, Axes};
use super::thin_points;
use candle_swag::error::{Error, Result};
use candle_swag::metrics::RocCurve;

/// Fraction of rows of `values` in each of `n_bins` equal-width bins over `[lo, hi]`
/// (right edge included in the last bin).
fn fractions(values: &[f64], lo: f64, hi: f64, n_bins: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n_bins];
    let width = (hi - lo) / n_bins as f64;
    for &v in values {
        let b = (((v - lo) / width).floor().max(0.0) as usize).min(n_bins - 1);
        counts[b] += 1;
    }
    counts
        .into_iter()
        .map(|c| c as f64 / values.len() as f64)
        .collect()
}

struct ScoreHistogram<'a> {
    score_label: &'a str,
    scores_in: &'a [f64],
    scores_out: &'a [f64],
    n_bins: usize,
}

impl Figure for ScoreHistogram<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (lo, hi) = padded_range(self.scores_in.iter().chain(self.scores_out), 0.0);
        let width = (hi - lo) / self.n_bins as f64;
        let f_in = fractions(self.scores_in, lo, hi, self.n_bins);
        let f_out = fractions(self.scores_out, lo, hi, self.n_bins);
        let top = f_in.iter().chain(&f_out).fold(0.0f64, |a, &b| a.max(b)) * 1.15;
        let title = format!("OOD scores: {}", self.score_label);
        let x_desc = format!("{} (higher = more out-of-distribution)", self.score_label);
        let axes = Axes::new(
            &title,
            (lo..hi, 0f64..top.max(1e-3)),
            &x_desc,
            "Fraction of rows per bin",
        )
        .digits(None, Some(2));
        let mut chart = style::chart(root, &axes)?;
        let series = [
            (
                "In-distribution",
                &f_in,
                style::series_color(0),
                self.scores_in.len(),
            ),
            (
                "Out-of-distribution",
                &f_out,
                style::series_color(1),
                self.scores_out.len(),
            ),
        ];
        for (label, fr, color, n) in series {
            chart
                .draw_series(
                    fr.iter()
                        .enumerate()
                        .filter(|(_, &f)| f > 0.0)
                        .map(|(b, &f)| {
                            let x0 = lo + b as f64 * width;
                            Rectangle::new([(x0, 0.0), (x0 + width, f)], color.mix(0.45).filled())
                        }),
                )?
                .label(format!("{label} (n = {n})"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.mix(0.6).filled())
                });
            chart.draw_series(
                fr.iter()
                    .enumerate()
                    .filter(|(_, &f)| f > 0.0)
                    .map(|(b, &f)| {
                        let x0 = lo + b as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width, f)], color.stroke_width(1))
                    }),
            )?;
        }
        style::draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    }
}

/// Writes overlaid histograms of an OOD score for in-distribution and out-of-distribution
/// rows, on `n_bins` shared equal-width bins, each normalised to fractions of its own rows
/// (so sets of different sizes compare). `score_label` names the score, e.g. "Predictive
/// entropy (nats)".
pub fn ood_score_histogram(
    dir: &Path,
    name: &str,
    score_label: &str,
    scores_in: &[f64],
    scores_out: &[f64],
    n_bins: usize,
) -> Result<PlotFiles> {
    check_series(name, "in-distribution scores", scores_in)?;
    check_series(name, "out-of-distribution scores", scores_out)?;
    if n_bins == 0 {
        return Err(Error::invalid("n_bins", "must be at least 1"));
    }
    write_figure(
        dir,
        name,
        &ScoreHistogram {
            score_label,
            scores_in,
            scores_out,
            n_bins,
        },
    )
}

struct RocFigure<'a> {
    curves: &'a [(&'a str, &'a RocCurve)],
}

impl Figure for RocFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (760, 700)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let axes = Axes::new(
            "ROC: detecting out-of-distribution rows",
            (0f64..1f64, 0f64..1.001f64),
            "False-positive rate (in-distribution flagged)",
            "True-positive rate (OOD flagged)",
        )
        .digits(Some(1), Some(1));
        let mut chart = style::chart(root, &axes)?;
        style::draw_diagonal(&mut chart, "Chance (AUROC 0.5)")?;
        for (i, (method, curve)) in self.curves.iter().enumerate() {
            let color = style::series_color(i);
            chart
                .draw_series(LineSeries::new(
                    thin_points(&curve.fpr, &curve.tpr),
                    color.stroke_width(3),
                ))?
                .label(format!("{method} (AUROC {:.4})", curve.auroc))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 22, y)], color.stroke_width(3))
                });
        }
        style::draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    }
}

/// Writes the ROC curves of one or more OOD detectors with their AUROC (the value stored in
/// each curve) and the chance diagonal.
pub fn roc_plot(dir: &Path, name: &str, curves: &[(&str, &RocCurve)]) -> Result<PlotFiles> {
    check_some(name, curves)?;
    for (method, c) in curves {
        check_series(name, &format!("{method} fpr"), &c.fpr)?;
        check_series(name, &format!("{method} tpr"), &c.tpr)?;
        check_series(name, &format!("{method} AUROC"), &[c.auroc])?;
    }
    write_figure(dir, name, &RocFigure { curves })
}
