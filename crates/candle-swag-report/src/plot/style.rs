//! The look shared by every plot: the bundled font, the colour palette and text sizes.
//!
//! plotters is built without its system-font (`ttf`) feature, so text is drawn with the
//! DejaVu Sans font compiled into the crate (`assets/fonts/`, Bitstream Vera licence). It is
//! registered once per process under the family name `sans-serif`; every plot function calls
//! [`ensure_font`] before drawing, so PNG text renders on a machine with no fonts installed.
//! SVG files name the same family and leave glyph rendering to the viewer.

use std::sync::OnceLock;

use plotters::style::{FontStyle, RGBColor};

use candle_swag::error::{Error, Result};

/// DejaVu Sans, embedded so that plots never depend on system fonts.
pub static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The font family name the bundled font is registered under, and that plots use.
pub const FONT_FAMILY: &str = "sans-serif";

static FONT_REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Registers the bundled font with plotters (once per process; later calls are free).
pub fn ensure_font() -> Result<()> {
    FONT_REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the bundled DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
        .map_err(|reason| Error::Plot {
            plot: "font".into(),
            reason,
        })
}

/// Colour-blind-safe palette (Okabe & Ito, 2008), in the order series are assigned colours.
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(230, 159, 0),   // orange
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(120, 120, 120), // grey (instead of yellow, which is unreadable on white)
];

/// The colour of the `i`-th series (cycling through [`PALETTE`]).
pub fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A level in `(0, 1)` as a percentage without trailing zeros (0.9 → "90", 0.975 → "97.5"),
/// for titles, captions and table headings.
pub fn percent(level: f64) -> String {
    let p = format!("{:.4}", level * 100.0);
    p.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Dark grey for reference lines (the diagonal, perfect calibration).
pub const REFERENCE: RGBColor = RGBColor(60, 60, 60);
/// Light grey for grid lines.
pub const GRID: RGBColor = RGBColor(225, 225, 225);
/// Red used for calibration gaps and miscalibration areas.
pub const GAP: RGBColor = RGBColor(214, 39, 40);

/// Pixel size of a single plot (PNG pixels, SVG user units).
pub const SIZE: (u32, u32) = (900, 650);
/// Pixel size of a plot with a second panel below (reliability diagram + histogram).
pub const SIZE_TALL: (u32, u32) = (900, 860);

/// Text sizes, in pixels.
pub mod text {
    /// Plot title.
    pub const TITLE: u32 = 28;
    /// Axis descriptions.
    pub const AXIS: u32 = 22;
    /// Tick labels and legends.
    pub const LABEL: u32 = 18;
}

/// Draws a chart's legend in the house style (translucent white box, grid-coloured border,
/// label font) at `position`: one look for every plot.
pub fn draw_legend<'a, DB, CT>(
    chart: &mut plotters::chart::ChartContext<'a, DB, CT>,
    position: plotters::chart::SeriesLabelPosition,
) -> std::result::Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    use plotters::style::{Color, WHITE};
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(GRID)
        .label_font((FONT_FAMILY, text::LABEL))
        .draw()
}

/// The axes of one chart: everything the crate's charts set up the same way, in one place.
///
/// Every chart gets the same caption font, margins, light grid, axis-description and
/// tick-label fonts from [`chart`]; an `Axes` says only what differs: title, ranges, axis
/// descriptions, tick precision and, for the two-panel reliability diagram, a tighter layout.
#[derive(Debug, Clone)]
pub(crate) struct Axes<'a> {
    /// Caption above the chart (`None`: a second panel without one).
    pub title: Option<&'a str>,
    /// Caption size in pixels.
    pub title_size: u32,
    /// x range.
    pub x: std::ops::Range<f64>,
    /// y range.
    pub y: std::ops::Range<f64>,
    /// x-axis description (`None`: the panel below describes it).
    pub x_desc: Option<&'a str>,
    /// y-axis description.
    pub y_desc: &'a str,
    /// Decimal places of the x tick labels (`None`: plotters' own format).
    pub x_digits: Option<usize>,
    /// Decimal places of the y tick labels (`None`: plotters' own format).
    pub y_digits: Option<usize>,
    /// Number of x tick labels (`None`: plotters' choice).
    pub x_labels: Option<usize>,
    /// Number of y tick labels (`None`: plotters' choice).
    pub y_labels: Option<usize>,
    /// Margin around the chart, and the top margin.
    pub margin: (u32, u32),
    /// Heights of the x and y label areas.
    pub label_areas: (u32, u32),
}

impl<'a> Axes<'a> {
    /// A full-size chart titled `title` over `x` × `y`, described by `x_desc` and `y_desc`.
    pub fn new(
        title: &'a str,
        (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
        x_desc: &'a str,
        y_desc: &'a str,
    ) -> Self {
        Axes {
            title: Some(title),
            title_size: text::TITLE,
            x,
            y,
            x_desc: Some(x_desc),
            y_desc,
            x_digits: None,
            y_digits: None,
            x_labels: None,
            y_labels: None,
            margin: (16, 16),
            label_areas: (60, 84),
        }
    }

    /// Tick labels with `x` and `y` decimal places.
    pub fn digits(mut self, x: Option<usize>, y: Option<usize>) -> Self {
        (self.x_digits, self.y_digits) = (x, y);
        self
    }
}

/// A chart in the crate's one style, its axes and grid drawn, ready for series.
pub(crate) type Chart<'a, DB> = plotters::chart::ChartContext<
    'a,
    DB,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// Sets up a chart on `area` from `axes`: caption, margins, label areas, the light grid
/// without minor lines, axis descriptions and tick labels in the bundled font.
pub(crate) fn chart<'a, DB>(
    area: &'a plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    axes: &Axes<'_>,
) -> std::result::Result<Chart<'a, DB>, plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: plotters::prelude::DrawingBackend,
{
    use plotters::style::TRANSPARENT;
    let mut builder = plotters::chart::ChartBuilder::on(area);
    if let Some(title) = axes.title {
        builder.caption(title, (FONT_FAMILY, axes.title_size));
    }
    builder
        .margin(axes.margin.0)
        .margin_top(axes.margin.1)
        .x_label_area_size(axes.label_areas.0)
        .y_label_area_size(axes.label_areas.1);
    let mut chart = builder.build_cartesian_2d(axes.x.clone(), axes.y.clone())?;
    let tick = |digits: usize| move |v: &f64| format!("{v:.digits$}");
    let (x_tick, y_tick) = (
        tick(axes.x_digits.unwrap_or(0)),
        tick(axes.y_digits.unwrap_or(0)),
    );
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .y_desc(axes.y_desc)
        .axis_desc_style((FONT_FAMILY, text::AXIS))
        .label_style((FONT_FAMILY, text::LABEL));
    if let Some(x_desc) = axes.x_desc {
        mesh.x_desc(x_desc);
    }
    if axes.x_digits.is_some() {
        mesh.x_label_formatter(&x_tick);
    }
    if axes.y_digits.is_some() {
        mesh.y_label_formatter(&y_tick);
    }
    if let Some(n) = axes.x_labels {
        mesh.x_labels(n);
    }
    if let Some(n) = axes.y_labels {
        mesh.y_labels(n);
    }
    mesh.draw()?;
    Ok(chart)
}

/// Draws the reference diagonal `y = x` over `[0, 1]` (chance, perfect calibration) with its
/// legend entry `label`.
pub(crate) fn draw_diagonal<DB>(
    chart: &mut Chart<'_, DB>,
    label: &str,
) -> std::result::Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: plotters::prelude::DrawingBackend,
{
    use plotters::element::PathElement;
    use plotters::series::LineSeries;
    use plotters::style::Color;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            REFERENCE.stroke_width(2),
        ))?
        .label(label)
        .legend(|(x, y)| PathElement::new([(x, y), (x + 22, y)], REFERENCE.stroke_width(2)));
    Ok(())
}
