//! # candle-swag
//!
//! SWA-Gaussian (SWAG, Maddox et al. 2019) posteriors over the weights of candle models,
//! Bayesian model averaging, and calibration metrics, plots and reports.
//!
//! SWAG fits a Gaussian `N(mean, scale · (diag + D Dᵀ/(rows − 1)))` over the weights from the
//! SGD trajectory: [`swag::SwagPosterior::collect`] once per epoch after the SWA start, then
//! [`swag::SwagPosterior::sample_into`] writes weight samples straight into the model's `Var`s
//! for Bayesian model averaging (BMA). The metrics ([`metrics`]) and the report ([`report`])
//! say whether the resulting uncertainty is honest.
//!
//! ## The whole workflow
//! ```
//! use candle_core::{DType, Device, Module, Tensor, D};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//! use candle_swag::layout::ParamSet;
//! use candle_swag::metrics::{classification_metrics, ClassificationOptions};
//! use candle_swag::optim::{SgdConfig, SgdMomentum};
//! use candle_swag::swag::{SampleOptions, SwagConfig, SwagPosterior};
//! use rand::SeedableRng;
//!
//! # fn main() -> candle_swag::Result<()> {
//! // Toy data: the class is the sign of x0 + x1.
//! let x: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
//! let y: Vec<u32> = x.chunks(2).map(|p| u32::from(p[0] + p[1] > 0.0)).collect();
//! let xs = Tensor::from_vec(x, (100, 2), &Device::Cpu)?;
//! let ys = Tensor::from_vec(y.clone(), 100, &Device::Cpu)?;
//!
//! // 1. Any candle model whose weights live in a VarMap.
//! let varmap = VarMap::new();
//! let model = candle_nn::linear(2, 2, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("fc"))?;
//! let params = ParamSet::from_varmap(&varmap)?;
//! let config = SgdConfig { lr: 0.5, momentum: 0.9, weight_decay: 0.0 };
//! let mut sgd = SgdMomentum::new(params.vars().to_vec(), config)?;
//!
//! // 2. Train; collect SWAG moments once per epoch after the SWA start.
//! let mut posterior = SwagPosterior::for_params(&params, SwagConfig::with_rank(5))?;
//! for epoch in 0..30 {
//!     let loss = candle_nn::loss::cross_entropy(&model.forward(&xs)?, &ys)?;
//!     sgd.backward_step(&loss)?;
//!     if epoch >= 20 {
//!         posterior.collect(&params)?;
//!     }
//! }
//!
//! // 3. Bayesian model averaging over weight samples.
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let mut bma = vec![0f32; 200];
//! for _ in 0..10 {
//!     posterior.sample_into(&params, &SampleOptions::default(), &mut rng)?;
//!     let p = candle_nn::ops::softmax(&model.forward(&xs)?, D::Minus1)?;
//!     for (a, v) in bma.iter_mut().zip(p.flatten_all()?.to_vec1::<f32>()?) {
//!         *a += v / 10.0;
//!     }
//! }
//!
//! // 4. How honest is it?
//! let m = classification_metrics(&bma, 2, &y, &ClassificationOptions::default())?;
//! assert!(m.accuracy > 0.9 && m.nll.is_finite() && m.ece >= 0.0);
//! # Ok(()) }
//! ```
//!
//! ## Where things are
//! - [`layout`]: which weights, in which order ([`layout::ParamSet`]).
//! - [`swag`]: the posterior, its sampler, log-density, file format and MultiSWAG.
//! - [`averaging`], [`schedule`], [`batchnorm`], [`optim`]: SWA/EMA, learning-rate schedules,
//!   BatchNorm with exact statistics refresh, SGD with momentum and weight decay.
//! - [`bma`], [`train`], [`models`], [`data`]: the pipeline behind the CLI and the examples.
//! - [`metrics`], [`plot`], [`report`], [`io`]: calibration and uncertainty metrics, figures,
//!   reports, and reading prediction files from any framework.
//! - [`perf`]: the SWAG primitives measured against the memory-bandwidth floor.

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

/// The README's Rust example is compiled as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
