//! The look shared by every plot: the bundled font, the colour palette and text sizes.
//!
//! plotters is built without its system-font (`ttf`) feature, so text is drawn with the
//! DejaVu Sans font compiled into the crate (`assets/fonts/`, Bitstream Vera licence). It is
//! registered once per process under the family name `sans-serif`; every plot function calls
//! [`ensure_font`] before drawing, so PNG text renders on a machine with no fonts installed.
//! SVG files name the same family and leave glyph rendering to the viewer.

use std::sync::OnceLock;

use plotters::style::{FontStyle, RGBColor};

use crate::error::{Error, Result};

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
