//! # candle-swag-report
//!
//! Says whether a model's uncertainty is honest, in pictures and documents: reliability
//! diagrams, regression calibration and interval plots, OOD and selective-prediction curves
//! ([`plot`], plotters with a bundled font, so nothing depends on the system's fonts), the
//! calibration report as HTML, Markdown and JSON ([`report`]), and readers for prediction files
//! written by any framework (`.npy`, `.npz`, `.csv`, [`io`]).
//!
//! Every number it shows comes from `candle_swag::metrics`; nothing here recomputes a metric.
//!
//! ```
//! use candle_swag::metrics::{ClassificationParams, RegressionConfig};
//! use candle_swag_report::report::ReportBuilder;
//!
//! # fn main() -> candle_swag::Result<()> {
//! // Two methods' class probabilities (four rows, two classes) and the labels.
//! let labels: Vec<u32> = vec![0, 1, 1, 0];
//! let sgd: Vec<f32> = vec![0.99, 0.01, 0.02, 0.98, 0.40, 0.60, 0.03, 0.97];
//! let swag: Vec<f32> = vec![0.90, 0.10, 0.10, 0.90, 0.45, 0.55, 0.40, 0.60];
//! let dir = std::env::temp_dir().join(format!("report-doc-{}", std::process::id()));
//! let settings = ClassificationParams::with_bins(15).check()?;
//! let files = ReportBuilder::with_config("toy", settings, RegressionConfig::default())
//!     .classification_method("SGD", &sgd, 2, &labels)?
//!     .classification_method("SWAG", &swag, 2, &labels)?
//!     .write(&dir)?; // report.html, report.md, report.json, metrics.json, the plots
//! assert!(files.html.exists());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

pub mod io;
pub mod plot;
pub mod report;
