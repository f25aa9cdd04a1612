//! # candle-swag
//!
//! SWA-Gaussian (SWAG, Maddox et al. 2019) posteriors over the weights of candle models,
//! Bayesian model averaging, and calibration metrics, plots and reports.

pub mod atomic;
pub mod error;
pub mod layout;
pub mod perf;
pub mod swag;

pub mod averaging;
pub mod batchnorm;
pub mod optim;
pub mod schedule;

pub mod bma;
pub mod data;
pub mod models;
pub mod train;

pub mod io;
pub mod metrics;
pub mod plot;
pub mod report;

pub use error::{Error, Result};
