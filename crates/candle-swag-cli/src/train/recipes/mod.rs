//! The benchmark recipes of `BENCHMARKS.md` (digits classification, its out-of-distribution
//! variant, diabetes regression), shared by `swag demo` and the examples, and scored for the
//! five methods SGD, SWA, SWAG-diag, SWAG and MultiSWAG.
//!
//! Seeds: run `r` (0-based) of seed `s` initialises its weights and shuffles with seed
//! `s + 1000·r`. The single-run methods (SGD, SWA, SWAG-diag, SWAG) use run 0; MultiSWAG uses
//! runs `0..runs`. The BMA noise of seed `s` comes from seed `s` (SWAG-diag, SWAG, MultiSWAG use
//! the same BMA seed).

use serde::{Deserialize, Serialize};

use crate::models::MlpParams;
use crate::train::run::{FitConfig, FitParams};
use crate::train::{Collect, TrainParams};
use candle_swag::error::{Error, Result};
use candle_swag::optim::SgdParams;
use candle_swag::swag::SampleParams;

mod diabetes;
mod digits;
mod tables;
pub use diabetes::{run_diabetes, RegressionOutcome, RegressionSeed};
pub use digits::{run_digits, ClassificationOutcome, ClassificationSeed};
pub use tables::{
    classification_json, classification_table, mean_std, regression_json, regression_table,
    timing_summary,
};

/// The settings shared by the recipes, unchecked (the crate's config shape, see
/// [`candle_swag::swag::config`]; the defaults are BENCHMARKS.md's).
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeParams {
    /// Overrides the number of epochs (CI's short mode); `swa_start` then becomes half of it,
    /// as in both recipes (25 of 50, 150 of 300).
    pub epochs: Option<usize>,
    /// S, the number of BMA samples (30).
    pub samples: usize,
    /// Sample scale (0.5), unless tuned.
    pub scale: f64,
    /// Number of independent runs pooled by MultiSWAG (3).
    pub runs: usize,
    /// Show progress bars (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Diabetes only: choose scale and noise variance on a validation split (20% of the training
    /// rows) instead of the reference's training-residual noise and scale 0.5.
    pub tune_scale: bool,
}

impl Default for RecipeParams {
    fn default() -> Self {
        Self {
            epochs: None,
            samples: 30,
            scale: 0.5,
            runs: 3,
            progress: true,
            tune_scale: false,
        }
    }
}

impl RecipeParams {
    /// The checked settings; the error names the setting.
    pub fn check(&self) -> Result<RecipeConfig> {
        match self.epochs {
            Some(0) => return Err(Error::invalid("epochs", "must be at least 1")),
            Some(1) => {
                return Err(Error::invalid(
                    "epochs",
                    "must be at least 2 (collection starts at half the epochs)",
                ))
            }
            _ => {}
        }
        if self.samples == 0 {
            return Err(Error::invalid("samples", "must be at least 1"));
        }
        SampleParams {
            scale: self.scale,
            ..Default::default()
        }
        .check()?;
        Ok(RecipeConfig(self.clone()))
    }
}

/// Checked settings of the recipes (from [`RecipeParams::check`]); read them through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeConfig(RecipeParams);

impl std::ops::Deref for RecipeConfig {
    type Target = RecipeParams;
    fn deref(&self) -> &RecipeParams {
        &self.0
    }
}

/// The epochs and the first collection epoch: the recipe's, or `opts.epochs` (at least 2,
/// checked) and half of it.
fn epochs_and_start(default_epochs: usize, opts: &RecipeConfig) -> (usize, usize) {
    let e = opts.epochs.unwrap_or(default_epochs);
    (e, e / 2)
}

/// The digits recipe: MLP 64-128-128-10, SGD(lr 0.05, momentum 0.9, wd 5e-4), batch 32, 50
/// epochs, swa_lr 0.05, collection at the end of each epoch from epoch 25, K = 20.
pub fn digits_spec(
    input_dim: usize,
    classes: usize,
    seed: u64,
    opts: &RecipeConfig,
) -> Result<FitConfig> {
    let (epochs, swa_start) = epochs_and_start(50, opts);
    FitParams {
        mlp: MlpParams {
            input_dim,
            hidden: vec![128, 128],
            output_dim: classes,
            batchnorm: false,
        },
        train: TrainParams {
            epochs,
            batch_size: 32,
            sgd: SgdParams {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            swa_start: Some(swa_start),
            collect: Collect::EveryEpoch,
            seed,
            progress: opts.progress,
            label: format!("digits s{seed}"),
        },
        swa_lr: 0.05,
        rank: 20,
        init_seed: seed,
    }
    .check()
}

/// The diabetes recipe: MLP 10-50-1, SGD(lr 0.01, momentum 0.9, wd 1e-3), batch 32, 300 epochs,
/// swa_lr 0.01, collection each epoch from epoch 150, K = 20.
pub fn diabetes_spec(input_dim: usize, seed: u64, opts: &RecipeConfig) -> Result<FitConfig> {
    let (epochs, swa_start) = epochs_and_start(300, opts);
    FitParams {
        mlp: MlpParams {
            input_dim,
            hidden: vec![50],
            output_dim: 1,
            batchnorm: false,
        },
        train: TrainParams {
            epochs,
            batch_size: 32,
            sgd: SgdParams {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 1e-3,
            },
            swa_start: Some(swa_start),
            collect: Collect::EveryEpoch,
            seed,
            progress: opts.progress,
            label: format!("diabetes s{seed}"),
        },
        swa_lr: 0.01,
        rank: 20,
        init_seed: seed,
    }
    .check()
}

/// The spec of run `r` of a recipe: seeds shifted by `1000·r`.
pub fn run_spec(base: &FitConfig, run: usize) -> Result<FitConfig> {
    let shift = 1000 * run as u64;
    let train = base.train();
    let label = if run > 0 {
        format!("{} r{run}", train.label())
    } else {
        train.label().to_string()
    };
    FitParams {
        init_seed: base.init_seed().wrapping_add(shift),
        train: TrainParams {
            seed: train.seed().wrapping_add(shift),
            label,
            ..train.clone().into()
        },
        ..base.clone().into()
    }
    .check()
}

/// Wall-clock seconds of the parts of one seed (for the speed target: training of run 0 plus
/// the SWAG-diag and SWAG BMAs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Training run 0 (epochs and collections).
    pub train_run0: f64,
    /// The SWAG-diag BMA.
    pub bma_swag_diag: f64,
    /// The SWAG BMA.
    pub bma_swag: f64,
    /// Everything for the seed (all runs and methods).
    pub total: f64,
}
