//! # candle-swag
//!
//! SWA-Gaussian (SWAG, Maddox et al. 2019) posteriors over the weights of candle models,
//! Bayesian model averaging, and calibration metrics, plots and reports.
//!
//! SWAG fits a Gaussian `N(mean, scale · (diag + D Dᵀ/(rows − 1)))` over the weights from the
//! SGD trajectory: [`SwagPosterior::collect`] once per epoch after the SWA start; a
//! [`Predictive`] then writes weight samples into the model's `Var`s, refreshes BatchNorm
//! statistics ([`BatchNormRefresh`], candle-nn's own layers included) and averages the
//! predictions (Bayesian model averaging, BMA) for any candle `ModuleT`. The metrics
//! ([`metrics`]) and the report (crate `candle-swag-report`) say whether the resulting uncertainty is
//! honest.
//!
//! ## The whole workflow
//! ```
//! use candle_core::{DType, Device, Module, ModuleT, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//! use candle_swag::metrics::{classification_metrics, ClassificationConfig};
//! use candle_swag::predictive::batches;
//! use candle_swag::{
//!     BatchNormRefresh, BatchNormStats, BmaParams, ParamSet, Predictive, SampleParams,
//!     SgdMomentum, SgdParams, SwagParams, SwagPosterior,
//! };
//!
//! # fn main() -> candle_swag::Result<()> {
//! // Toy data: the class is the sign of x0 + x1.
//! let x: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
//! let y: Vec<u32> = x.chunks(2).map(|p| u32::from(p[0] + p[1] > 0.0)).collect();
//! let xs = Tensor::from_vec(x, (100, 2), &Device::Cpu)?;
//! let ys = Tensor::from_vec(y.clone(), 100, &Device::Cpu)?;
//!
//! // 1. Any candle model whose weights live in a VarMap, here with candle-nn's BatchNorm.
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let (fc1, bn, fc2) = (
//!     candle_nn::linear(2, 8, vb.pp("fc1"))?,
//!     candle_nn::batch_norm(8, 1e-5, vb.pp("bn"))?,
//!     candle_nn::linear(8, 2, vb.pp("fc2"))?,
//! );
//! let model = candle_nn::func_t(|x: &Tensor, train: bool| {
//!     fc2.forward(&bn.forward_t(&fc1.forward(x)?, train)?.relu()?)
//! });
//! let params = ParamSet::from_varmap(&varmap)?; // BatchNorm statistics are left out
//! let config = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0 }.check()?;
//! let mut sgd = SgdMomentum::new(params.vars().to_vec(), config)?;
//!
//! // 2. Train; collect SWAG moments once per epoch after the SWA start.
//! let swag_config = SwagParams { rank: 5, ..Default::default() }.check()?;
//! let mut posterior = SwagPosterior::for_params(&params, swag_config)?;
//! for epoch in 0..30 {
//!     let loss = candle_nn::loss::cross_entropy(&model.forward_t(&xs, true)?, &ys)?;
//!     sgd.backward_step(&loss)?;
//!     if epoch >= 20 {
//!         posterior.collect(&params)?;
//!     }
//! }
//!
//! // 3. Bayesian model averaging over 10 weight samples, BatchNorm refreshed after each.
//! let refresh = BatchNormRefresh::new(BatchNormStats::from_varmap(&varmap)?, batches(&xs, 25)?);
//! let bma = BmaParams {
//!     sample: SampleParams { scale: 0.5, ..Default::default() },
//!     samples: 10,
//!     seed: 0,
//! }
//! .check()?;
//! let swag = Predictive::swag(&params, &posterior, bma)?.with_refresh(refresh);
//! let out = swag.classify(&model, batches(&xs, 50)?)?; // probs [100, 2] on the device
//!
//! // 4. How honest is it?
//! let host = out.to_host()?;
//! let m = classification_metrics(&host.mean_probs, 2, &y, &ClassificationConfig::default())?;
//! assert!(m.accuracy > 0.85 && m.nll.is_finite() && m.ece >= 0.0);
//! # Ok(()) }
//! ```
//!
//! ## Three crates
//! This crate is the core, what a candle user adds to a model's crate:
//! ```toml
//! candle-swag = "0.1"
//! ```
//! - [`layout`]: which weights, in which order ([`ParamSet`]).
//! - [`swag`]: the posterior, its sampler, log-density, file format and MultiSWAG.
//! - [`predictive`]: predictions with uncertainty for any model, SGD/SWA/SWAG/MultiSWAG alike.
//! - [`averaging`], [`schedule`], [`batchnorm`], [`optim`]: SWA/EMA, learning-rate schedules,
//!   exact BatchNorm statistics refresh, SGD with momentum and weight decay.
//! - [`pool`]: max pooling with the correct gradient (candle 0.11's is 1/k² of it), for CNNs
//!   that are trained.
//! - [`metrics`]: calibration, uncertainty, OOD, selective and regression metrics, recalibration.
//!
//! - [`crash_safe`]: crash-safe file writes (temporary file, fsync, rename), used by every writer.
//!
//! Two crates build on it: `candle-swag-report` (figures with a bundled font, the
//! HTML/Markdown/JSON calibration report, prediction files from any framework) and
//! `candle-swag-cli` (the `swag` binary and the pipeline behind it and the examples: the CSV
//! pipeline, the built-in MLP, bundled data, recipes, and the primitives' speed against the
//! memory-bandwidth floor).

pub mod crash_safe;
pub mod device;
pub mod error;
pub mod layout;
pub mod swag;

pub mod averaging;
pub mod batchnorm;
pub mod optim;
pub mod pool;
pub mod predictive;
pub mod schedule;
pub mod tune;

pub mod metrics;

pub use averaging::{AveragingRule, ParameterAverage};
pub use batchnorm::{BatchNormRefresh, BatchNormStats};
pub use error::{Error, Result};
pub use layout::{ParamLayout, ParamSet};
pub use optim::{SgdConfig, SgdMomentum, SgdParams};
pub use predictive::{
    BmaConfig, BmaParams, ClassificationOutput, Noise, Predictive, RegressionOutput,
    RegressionPrediction, VarianceLink,
};
pub use swag::{
    Divisor, MultiSwag, SampleConfig, SampleParams, SwagConfig, SwagParams, SwagPosterior,
};

/// The README's Rust example is compiled as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide's Rust code blocks (`docs/guide/`, one struct per chapter) are compiled and run as
/// doctests too; its `sh` blocks are run by `scripts/check_guide.sh`. The guide is not part of
/// the published package, so these exist only in the repository's doctests.
#[cfg(doctest)]
pub mod guide {
    #[doc = include_str!("../docs/guide/01-what-swag-gives-you.md")]
    pub struct WhatSwagGivesYou;
    #[doc = include_str!("../docs/guide/02-your-own-candle-model.md")]
    pub struct YourOwnCandleModel;
    #[doc = include_str!("../docs/guide/03-the-command-line-on-a-csv.md")]
    pub struct TheCommandLineOnACsv;
    #[doc = include_str!("../docs/guide/04-reading-a-calibration-report.md")]
    pub struct ReadingACalibrationReport;
    #[doc = include_str!("../docs/guide/05-regression-and-conformal-intervals.md")]
    pub struct RegressionAndConformalIntervals;
    #[doc = include_str!("../docs/guide/06-transformers-and-lora.md")]
    pub struct TransformersAndLora;
    #[doc = include_str!("../docs/guide/07-large-models-and-the-gpu.md")]
    pub struct LargeModelsAndTheGpu;
    #[doc = include_str!("../docs/guide/08-benchmarks.md")]
    pub struct Benchmarks;
    #[doc = include_str!("../docs/guide/09-conventions.md")]
    pub struct Conventions;
}
