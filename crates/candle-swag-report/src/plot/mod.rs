//! Plots of calibration and uncertainty, written as PNG and SVG.
//!
//! Every plot function takes the data structures of [`candle_swag::metrics`] (bins, curves) and
//! never recomputes a metric: the numbers printed on a plot (ECE, AURC, AUROC, miscalibration
//! area, sharpness) are the ones stored in those structures. Each function writes
//! `<dir>/<name>.png` and `<dir>/<name>.svg` (rendered in memory, then written atomically) and
//! returns their paths as [`PlotFiles`]. Empty or non-finite data gives [`candle_swag::Error::Plot`]
//! (or [`candle_swag::Error::InvalidArgument`] for a bad option), never a panic, and writes nothing.
//!
//! Text is drawn with the bundled DejaVu Sans font ([`style`]), so PNGs render on machines
//! without fonts. Curves with many points (risk–coverage and ROC of large sets) are thinned to
//! at most [`MAX_CURVE_POINTS`] evenly spaced points for drawing only.
//!
//! | plot | function |
//! |---|---|
//! | reliability diagram (one method) | [`reliability_diagram`] |
//! | reliability diagrams side by side | [`reliability_grid`] |
//! | reliability curves overlaid | [`reliability_overlay`] |
//! | risk–coverage | [`risk_coverage_plot`] |
//! | OOD score histograms, in versus out | [`ood_score_histogram`] |
//! | ROC of OOD detection | [`roc_plot`] |
//! | regression calibration curve, area shaded | [`calibration_curve_plot`] |
//! | ordered prediction intervals | [`ordered_intervals`] |
//! | 1-D predictive band | [`predictive_band`] |
//! | sharpness histogram | [`sharpness_histogram`] |
//! | coverage per bin of predicted σ, Gaussian and conformal | [`conditional_coverage_plot`] |

mod coverage;
mod ood;
mod output;
mod regression;
mod reliability;
mod selective;
pub mod style;

pub use coverage::{conditional_coverage_plot, ConditionalCoverageSeries};
pub use ood::{ood_score_histogram, roc_plot};
pub use output::PlotFiles;
pub use regression::{
    calibration_curve_plot, ordered_intervals, predictive_band, sharpness_histogram,
    CalibrationSeries, PredictiveBand, SharpnessSeries, MAX_INTERVAL_ROWS,
};
pub use reliability::{reliability_diagram, reliability_grid, reliability_overlay};
pub use selective::risk_coverage_plot;

/// Largest number of points drawn for one curve; longer curves are thinned evenly.
pub const MAX_CURVE_POINTS: usize = 2000;

/// At most `max` indices of `0..n`, evenly spaced, always including the first and the last.
pub(crate) fn thin_indices(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    if max < 2 {
        return (n - max..n).collect();
    }
    (0..max)
        .map(|k| ((k as f64) * (n - 1) as f64 / (max - 1) as f64).round() as usize)
        .collect()
}

/// `(x, y)` pairs of a curve, thinned to at most [`MAX_CURVE_POINTS`].
pub(crate) fn thin_points(x: &[f64], y: &[f64]) -> Vec<(f64, f64)> {
    let n = x.len().min(y.len());
    thin_indices(n, MAX_CURVE_POINTS)
        .into_iter()
        .map(|i| (x[i], y[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::thin_indices;

    #[test]
    fn thinning_keeps_ends_and_count() -> anyhow::Result<()> {
        assert_eq!(thin_indices(5, 10), vec![0, 1, 2, 3, 4]);
        assert_eq!(thin_indices(11, 3), vec![0, 5, 10]);
        let t = thin_indices(100_000, 2000);
        assert_eq!(t.len(), 2000);
        assert_eq!((t[0], t[1999]), (0, 99_999));
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        Ok(())
    }
}
