//! The UCI regression protocol of the SWAG papers, on any CSV table: `swag bench-uci`.
//!
//! Per split (seed `seed + split`):
//! 1. The rows are shuffled and 10% become the test part, the rest the training part
//!    ([`UciConfig::test_fraction`]). Inputs and target are standardised with the training
//!    part's mean and population std only.
//! 2. A seeded 20% of the training part is held out for validation. For every point of the
//!    hyper-parameter grid (epochs, learning rate, weight decay; [`UciGrid`]) a one-hidden-layer
//!    MLP of 50 units is trained on the other 80% with SGD (momentum 0.9, batch 32), collecting
//!    SWAG (K = 20) every epoch of the second half of training at a constant rate. Each
//!    method's sample scale (SWAG-diagonal, SWAG) and, for homoscedastic noise, its noise
//!    variance are chosen on the validation part by [`tune`](crate::train::run::tune); each method keeps the grid point
//!    with its lowest validation NLL. The test part is never looked at.
//! 3. Each method is then trained again on the whole training part with its chosen grid point
//!    and scored on the test part with its chosen scale and noise, `samples` samples for SWAG.
//!
//! Noise models: homoscedastic (one output, mean squared error, a noise variance chosen on
//! validation) and heteroscedastic (two outputs, mean and softplus variance, Gaussian NLL).
//! Test log-likelihood per point and RMSE are in the target's original units, as the papers
//! report them: `LL = −mean NLL of N(μ, σ²)` with `μ`, `σ` mapped back through the target
//! standardisation. The table gives mean ± standard error (`std / sqrt(splits)`, population std)
//! over splits.

use serde::{Deserialize, Serialize};

use crate::data::{prepare, FeatureScaling, Prepared, Split, TabularData, Targets};
use crate::train::method::Method;
use crate::train::run::validation_split;
use crate::train::Objective;
use candle_core::Device;
use candle_swag::error::{Error, Result};
use candle_swag::optim::SgdParams;

mod fit;
mod protocol;
mod tables;
pub use fit::{run_uci_fit, uci_fit_table, FitOutcome};
pub use protocol::run_uci;
pub use tables::{mean_and_standard_error, uci_table};

/// The nominal coverage of the intervals the protocol scores: 90%.
pub const UCI_COVERAGE: f64 = 0.9;

/// The methods of the protocol, in table order.
pub const UCI_METHODS: [Method; 4] = [Method::Sgd, Method::Swa, Method::SwagDiag, Method::Swag];

/// The hyper-parameters searched on the validation part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UciGrid {
    /// Numbers of epochs (SWAG collects during the second half).
    pub epochs: Vec<usize>,
    /// Learning rates (constant; the same rate during collection).
    pub lr: Vec<f64>,
    /// Weight decays.
    pub weight_decay: Vec<f64>,
}

impl UciGrid {
    /// The full grid: epochs {100, 300}, learning rate {0.003, 0.01}, weight decay
    /// {1e-4, 1e-3}.
    pub fn full() -> Self {
        Self {
            epochs: vec![100, 300],
            lr: vec![0.003, 0.01],
            weight_decay: vec![1e-4, 1e-3],
        }
    }

    /// One grid point (40 epochs, lr 0.01, weight decay 1e-3), for a quick smoke run.
    pub fn quick() -> Self {
        Self {
            epochs: vec![40],
            lr: vec![0.01],
            weight_decay: vec![1e-3],
        }
    }

    fn points(&self) -> Vec<GridPoint> {
        let mut out = Vec::new();
        for &epochs in &self.epochs {
            for &lr in &self.lr {
                for &weight_decay in &self.weight_decay {
                    out.push(GridPoint {
                        epochs,
                        lr,
                        weight_decay,
                    });
                }
            }
        }
        out
    }
}

/// The settings of the protocol, unchecked (the crate's config shape, see
/// [`candle_swag::swag::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UciParams {
    /// Random 90/10 splits, at least 2 for a standard error (10 by default).
    pub splits: usize,
    /// Split `i` uses seed `seed + i` (0 by default).
    pub seed: u64,
    /// SWAG samples per prediction, at least 1 (30 by default).
    pub samples: usize,
    /// The grid searched on validation (the full grid by default); every list must be
    /// non-empty, the epochs at least 2, the rates and decays valid for [`SgdParams`].
    pub grid: UciGrid,
    /// Shows training progress bars (off by default).
    pub progress: bool,
}

impl Default for UciParams {
    fn default() -> Self {
        Self {
            splits: 10,
            seed: 0,
            samples: 30,
            grid: UciGrid::full(),
            progress: false,
        }
    }
}

impl UciParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<UciConfig> {
        let (splits, grid) = (self.splits, &self.grid);
        if splits < 2 {
            return Err(Error::invalid(
                "splits",
                format!("{splits}: at least 2 splits are needed for a standard error"),
            ));
        }
        if self.samples == 0 {
            return Err(Error::invalid("samples", "must be at least 1"));
        }
        if grid.epochs.is_empty() || grid.lr.is_empty() || grid.weight_decay.is_empty() {
            return Err(Error::invalid(
                "grid",
                "every list of the grid needs a value",
            ));
        }
        if let Some(e) = grid.epochs.iter().find(|&&e| e < 2) {
            return Err(Error::invalid(
                "grid",
                format!("{e} epochs: at least 2, so that the second half collects"),
            ));
        }
        for &lr in &grid.lr {
            for &wd in &grid.weight_decay {
                SgdParams {
                    lr,
                    momentum: 0.9,
                    weight_decay: wd,
                }
                .check()?;
            }
        }
        Ok(UciConfig(self.clone()))
    }
}

/// Settings of the protocol (from [`UciParams::check`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UciConfig(UciParams);

impl UciConfig {
    /// The fraction of rows in each test part: 10%.
    pub fn test_fraction(&self) -> f64 {
        0.1
    }
}

/// One point of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// Epochs.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

/// Homoscedastic or heteroscedastic noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UciNoise {
    /// One output; a noise variance chosen on validation.
    Homoscedastic,
    /// Two outputs (mean, softplus variance), trained with the Gaussian NLL.
    Heteroscedastic,
}

impl UciNoise {
    /// Both noise models, in table order.
    pub const ALL: [UciNoise; 2] = [UciNoise::Homoscedastic, UciNoise::Heteroscedastic];

    fn objective(self) -> Objective {
        match self {
            UciNoise::Homoscedastic => Objective::MeanSquaredError,
            UciNoise::Heteroscedastic => Objective::GaussianNll,
        }
    }

    /// `homo` or `hetero`.
    pub fn short(self) -> &'static str {
        match self {
            UciNoise::Homoscedastic => "homo",
            UciNoise::Heteroscedastic => "hetero",
        }
    }
}

/// One method's result on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UciOutcome {
    /// Split index.
    pub split: usize,
    /// The method.
    pub method: Method,
    /// The noise model.
    pub noise: UciNoise,
    /// Test log-likelihood per point, original units.
    pub test_ll: f64,
    /// Test RMSE, original units.
    pub rmse: f64,
    /// Fraction of test rows inside the split-conformal interval at [`UCI_COVERAGE`]
    /// (normalised scores `|y − μ|/σ`, calibrated on the validation part with the
    /// validation-stage model, which also predicts the test rows).
    pub conformal_coverage: f64,
    /// Fraction of test rows inside the Gaussian central interval at [`UCI_COVERAGE`] of that
    /// same validation-stage model (the plain intervals the conformal ones correct).
    pub gaussian_coverage: f64,
    /// The grid point chosen on validation.
    pub chosen: GridPoint,
    /// The sample scale chosen on validation (0 for SGD and SWA).
    pub scale: f64,
    /// The homoscedastic noise variance chosen on validation (original units²).
    pub noise_variance: Option<f64>,
    /// The validation NLL of the choice (standardised units), which the table's `auto` rows
    /// compare across noise models.
    #[serde(default)]
    pub validation_nll: f64,
}

/// The protocol's splits of `data`: per split its index, its seed (`config`'s seed plus the
/// index) and the table prepared with that split's random 10% as test rows (inputs and target
/// standardised on the others). Refuses a classification target and a table too small for 90/10
/// splits with a validation part.
fn prepared_splits(
    data: &TabularData,
    config: &UciConfig,
    device: &Device,
) -> Result<Vec<(usize, u64, Prepared)>> {
    if !matches!(data.targets, Targets::Values(_)) {
        return Err(Error::invalid(
            "task",
            "the UCI protocol is for regression targets",
        ));
    }
    let n = data.num_rows();
    let n_test = (n as f64 * config.test_fraction()).round() as usize;
    if n_test < 2 || n - n_test < 20 {
        return Err(Error::invalid(
            "data",
            format!("{n} rows are too few for 90/10 splits with a validation part"),
        ));
    }
    (0..config.0.splits)
        .map(|split| {
            let seed = config.0.seed.wrapping_add(split as u64);
            let (_, test_rows) = validation_split(n, config.test_fraction(), seed)?;
            let mut table = data.clone();
            table.splits = vec![Split::Train; n];
            for &r in &test_rows {
                table.splits[r] = Split::Test;
            }
            Ok((
                split,
                seed,
                prepare(&table, FeatureScaling::Standardize, device)?,
            ))
        })
        .collect()
}
