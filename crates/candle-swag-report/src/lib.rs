//! # candle-swag-report
//!
//! Says whether a model's uncertainty is honest, in pictures and documents: reliability
//! diagrams, regression calibration and interval plots, OOD and selective-prediction curves
//! ([`plot`], plotters with a bundled font, so nothing depends on the system's fonts), the
//! calibration report as HTML, Markdown and JSON ([`report`]), and readers for prediction files
//! written by any framework (`.npy`, `.npz`, `.csv`, [`io`]).
//!
//! Every number it shows comes from `candle_swag::metrics`; nothing here recomputes a metric.

pub mod io;
pub mod plot;
pub mod report;
