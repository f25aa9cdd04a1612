//! Rendering one figure to both PNG and SVG, in memory, then writing both files atomically.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::style;
use candle_swag::crash_safe::write_file_atomic;
use candle_swag::error::{Error, Result};

/// The two files written for one plot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    /// The plot's name: the file stem of both files.
    pub name: String,
    /// `<dir>/<name>.png`.
    pub png: PathBuf,
    /// `<dir>/<name>.svg`.
    pub svg: PathBuf,
}

/// What a drawing routine returns: plotters' backend errors, boxed.
pub(crate) type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A figure that can draw itself on any plotters backend (so PNG and SVG share one routine).
pub(crate) trait Figure {
    /// Canvas size in pixels.
    fn size(&self) -> (u32, u32) {
        style::SIZE
    }
    /// Draws the figure on a white canvas of [`Figure::size`].
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

pub(crate) fn plot_error(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Plot {
        plot: name.to_string(),
        reason: e.to_string(),
    }
}

/// Checks a plot name is a plain file stem (no path separators, not empty).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(Error::invalid(
            "plot name",
            format!("`{name}` must be a non-empty file stem of letters, digits, '_', '-', '.'"),
        ));
    }
    Ok(())
}

/// Renders `figure` as an SVG document string.
pub(crate) fn render_svg(name: &str, figure: &impl Figure) -> Result<String> {
    style::ensure_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(name, e))?;
        figure.draw(&root).map_err(|e| plot_error(name, e))?;
        root.present().map_err(|e| plot_error(name, e))?;
    }
    Ok(svg)
}

/// Renders `figure` as PNG-encoded bytes (8-bit RGB).
pub(crate) fn render_png(name: &str, figure: &impl Figure) -> Result<Vec<u8>> {
    style::ensure_font()?;
    let (w, h) = figure.size();
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(name, e))?;
        figure.draw(&root).map_err(|e| plot_error(name, e))?;
        root.present().map_err(|e| plot_error(name, e))?;
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| plot_error(name, format!("PNG encoding: {e}")))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| plot_error(name, format!("PNG encoding: {e}")))?;
    }
    Ok(bytes)
}

/// Renders `figure` to `<dir>/<name>.png` and `<dir>/<name>.svg`. Both are rendered in memory
/// first, so a drawing error writes nothing; each file is then written atomically.
pub(crate) fn write_figure(dir: &Path, name: &str, figure: &impl Figure) -> Result<PlotFiles> {
    check_name(name)?;
    let svg = render_svg(name, figure)?;
    let png = render_png(name, figure)?;
    let files = PlotFiles {
        name: name.to_string(),
        png: dir.join(format!("{name}.png")),
        svg: dir.join(format!("{name}.svg")),
    };
    write_file_atomic(&files.png, &png)?;
    write_file_atomic(&files.svg, svg.as_bytes())?;
    Ok(files)
}

/// Refuses empty or non-finite plot data with an error naming the plot and the series.
pub(crate) fn check_series(plot: &str, series: &str, values: &[f64]) -> Result<()> {
    if values.is_empty() {
        return Err(plot_error(plot, format!("series `{series}` is empty")));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(plot_error(
            plot,
            format!(
                "series `{series}` holds a non-finite value ({}) at index {i}",
                values[i]
            ),
        ));
    }
    Ok(())
}

/// Refuses a figure without any series.
pub(crate) fn check_some<T>(plot: &str, items: &[T]) -> Result<()> {
    if items.is_empty() {
        return Err(plot_error(plot, "nothing to draw: no series given"));
    }
    Ok(())
}

/// Padded `[lo, hi]` range of some values, never degenerate (so a constant series still
/// gets a visible axis).
pub(crate) fn padded_range<'a>(values: impl IntoIterator<Item = &'a f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let margin = if span > 0.0 {
        span * pad
    } else {
        lo.abs().max(1.0) * 0.5
    };
    (lo - margin, hi + margin)
}
