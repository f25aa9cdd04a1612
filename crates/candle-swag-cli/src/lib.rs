//! # candle-swag-cli
//!
//! The library behind the `swag` binary and the examples: the CSV pipeline ([`train`]), the
//! built-in MLP ([`models`]), the CSV and IDX readers and the bundled data ([`data`]), and the
//! SWAG primitives timed against the memory-bandwidth floor ([`perf`]). A candle user fitting a
//! posterior on their own model needs only the core crate, `candle-swag`.
//!
//! `swag fit` and `swag predict` on a CSV table, from Rust:
//! ```
//! use candle_core::Device;
//! use candle_swag::metrics::SetScore;
//! use candle_swag_cli::data::TaskKind;
//! use candle_swag_cli::train::pipeline::{
//!     fit_csv, predict_csv, CsvFitParams, CsvPredictParams, NoiseChoice,
//! };
//! use candle_swag_cli::train::run::NoiseModel;
//!
//! # fn main() -> anyhow::Result<()> {
//! let dir = std::env::temp_dir().join(format!("cli-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! // A table of 80 rows: y = 2x + 1 plus a little noise.
//! let mut csv = String::from("x,y\n");
//! for i in 0..80 {
//!     let x = f64::from(i) / 40.0 - 1.0;
//!     let noise = 0.05 * (f64::from(i * 7 % 11) / 5.0 - 1.0);
//!     csv += &format!("{x},{}\n", 2.0 * x + 1.0 + noise);
//! }
//! std::fs::write(dir.join("table.csv"), csv)?;
//!
//! // Train the built-in MLP, collect SWAG moments, hold a quarter of the rows out for
//! // conformal calibration, and write the run directory.
//! let fit = CsvFitParams {
//!     hidden: vec![16],
//!     epochs: 10,
//!     swa_start: Some(5),
//!     tune: false, // scale 0.5 and the training residual as noise variance
//!     noise: NoiseChoice::Fixed(NoiseModel::Homoscedastic),
//!     progress: false,
//!     calibrate_fraction: Some(0.25),
//!     ..CsvFitParams::new(dir.join("table.csv"), "y", TaskKind::Regression)
//! }
//! .check()?;
//! fit_csv(&fit, dir.join("run"), &Device::Cpu)?;
//!
//! // BMA over 10 weight samples, with 90% split-conformal intervals.
//! let predict = CsvPredictParams {
//!     run: dir.join("run"),
//!     data: dir.join("table.csv"),
//!     samples: 10,
//!     scale: None,
//!     seed: 0,
//!     coverage: Some(0.9),
//!     set_score: SetScore::Aps,
//!     noise: None,
//! }
//! .check()?;
//! let table = predict_csv(&predict, &Device::Cpu)?;
//! assert_eq!(table.rows.len(), 80);
//! assert!(table.columns.iter().any(|c| c == "lower"));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

pub mod data;
pub mod models;
pub mod perf;
pub mod train;
