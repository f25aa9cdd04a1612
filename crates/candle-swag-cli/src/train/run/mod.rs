//! One fitted run of the built-in MLP: training with SWAG collection ([`fit_mlp`]), scale and
//! noise tuning on a validation split ([`tune`]), and the run directory written by `swag fit`
//! and read by `swag predict` ([`save_run`], [`LoadedRun`]).
//!
//! A run directory holds:
//! - `config.json`: [`RunConfig`] (task, feature names, class labels, standardisation
//!   statistics, network shape, training settings, noise variance, default sample scale,
//!   training history);
//! - `weights.safetensors`: the last SGD iterate, saved with `VarMap::save` (BatchNorm running
//!   statistics included);
//! - `posterior.safetensors`: the SWAG posterior (see [`candle_swag::swag::file`]);
//! - `train_inputs.safetensors` (only for models with BatchNorm): the standardised training
//!   inputs, needed to refresh the BatchNorm statistics after each weight sample.
//!
//! The directory is written atomically ([`candle_swag::crash_safe::write_dir_atomic`]).

use candle_core::Tensor;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, TaskKind};
use crate::models::{Mlp, MlpConfig, MlpParams};
use crate::train::{train, Objective, TrainConfig, TrainHistory, TrainParams};
use candle_swag::batchnorm::BatchNormRefresh;
use candle_swag::error::{Error, Result};
use candle_swag::layout::ParamSet;
use candle_swag::optim::SgdParams;
use candle_swag::predictive::{batches, BmaConfig, Predictive};
use candle_swag::schedule::{AnnealStrategy, SwaLr};
use candle_swag::swag::{SwagParams, SwagPosterior};

mod dir;
mod validation;
pub use dir::{
    files, save_run, CalibrationRows, DecayTuning, LoadedRun, NoiseModel, NoiseSelection, RunConfig,
};
pub use validation::{
    cross_validation_folds, noise_selection, regression_validation_nll, training_noise_variance,
    tune, validation_split,
};

/// Version of the run directory format written by [`save_run`].
pub const RUN_FORMAT_VERSION: u32 = 1;

/// Everything needed to train one run, unchecked (the crate's config shape, see
/// [`candle_swag::swag::config`]); also how a [`FitConfig`] is written to a run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitParams {
    /// The network shape.
    pub mlp: MlpParams,
    /// Epochs, batch size, SGD settings, collection start and shuffling seed.
    pub train: TrainParams,
    /// Learning rate from `train.swa_start` on (the rate before it is `train.sgd.lr`), valid
    /// as an SGD rate: a step schedule, i.e. [`SwaLr`] with 0 annealing epochs starting at
    /// `swa_start`.
    pub swa_lr: f64,
    /// K, the number of deviation columns kept.
    pub rank: usize,
    /// Seed of the initial weights (the shuffling seed is `train.seed`).
    pub init_seed: u64,
}

impl FitParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<FitConfig> {
        let train = self.train.check()?;
        SgdParams {
            lr: self.swa_lr,
            ..self.train.sgd
        }
        .check()
        .map_err(|e| match e {
            Error::InvalidArgument { name, reason } if name == "lr" => {
                Error::invalid("swa_lr", reason)
            }
            other => other,
        })?;
        Ok(FitConfig {
            mlp: self.mlp.check()?,
            train,
            swa_lr: self.swa_lr,
            rank: self.rank,
            init_seed: self.init_seed,
        })
    }
}

/// Everything needed to train one run (from [`FitParams::check`]; a config read from a run
/// directory is checked the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FitParams", into = "FitParams")]
pub struct FitConfig {
    mlp: MlpConfig,
    train: TrainConfig,
    swa_lr: f64,
    rank: usize,
    init_seed: u64,
}

impl TryFrom<FitParams> for FitConfig {
    type Error = Error;
    fn try_from(params: FitParams) -> Result<Self> {
        params.check()
    }
}

impl From<FitConfig> for FitParams {
    fn from(config: FitConfig) -> Self {
        Self {
            mlp: config.mlp.into(),
            train: config.train.into(),
            swa_lr: config.swa_lr,
            rank: config.rank,
            init_seed: config.init_seed,
        }
    }
}

impl FitConfig {
    /// The network shape.
    pub fn mlp(&self) -> &MlpConfig {
        &self.mlp
    }

    /// Epochs, batch size, SGD settings, collection start and shuffling seed.
    pub fn train(&self) -> &TrainConfig {
        &self.train
    }

    /// Learning rate from `train.swa_start` on.
    pub fn swa_lr(&self) -> f64 {
        self.swa_lr
    }

    /// K, the number of deviation columns kept.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Seed of the initial weights.
    pub fn init_seed(&self) -> u64 {
        self.init_seed
    }

    /// The objective of a task.
    pub fn objective(task: TaskKind) -> Objective {
        match task {
            TaskKind::Classification => Objective::CrossEntropy,
            TaskKind::Regression => Objective::MeanSquaredError,
        }
    }
}

/// A trained model with its SWAG posterior.
pub struct Fitted {
    /// All Vars of the model (parameters and BatchNorm buffers).
    pub varmap: VarMap,
    /// The network.
    pub model: Mlp,
    /// The trainable parameters, in layout order.
    pub params: ParamSet,
    /// The SWAG posterior collected along the trajectory.
    pub posterior: SwagPosterior,
    /// The last SGD iterate, flat `[d]` (the Vars themselves are overwritten by BMAs).
    pub sgd_weights: Tensor,
    /// Per-epoch training statistics.
    pub history: TrainHistory,
    /// How the run was trained.
    pub spec: FitConfig,
}

impl Fitted {
    /// The BatchNorm refresh to use with this model (batches of the training batch size over
    /// `train_inputs`), when it has BatchNorm layers.
    pub fn refresh<'a>(&self, train_inputs: &'a Tensor) -> Result<Option<BatchNormRefresh<'a>>> {
        mlp_refresh(&self.model, train_inputs, self.spec.train.batch_size())
    }
}

/// The exact BatchNorm refresh of `model` over `train_inputs` in batches of `batch_size`, or
/// `None` for a model without BatchNorm.
pub fn mlp_refresh<'a>(
    model: &Mlp,
    train_inputs: &'a Tensor,
    batch_size: usize,
) -> Result<Option<BatchNormRefresh<'a>>> {
    if !model.config().batchnorm() {
        return Ok(None);
    }
    Ok(Some(BatchNormRefresh::new(
        model.batchnorm_stats()?,
        batches(train_inputs, batch_size)?,
    )))
}

/// A predictive with the model's BatchNorm refresh, when it has one.
pub(crate) fn with_refresh<'a>(
    predictive: Predictive<'a>,
    refresh: &Option<BatchNormRefresh<'a>>,
) -> Predictive<'a> {
    match refresh {
        Some(r) => predictive.with_refresh(r.clone()),
        None => predictive,
    }
}

/// Builds the MLP (weights from `spec.init_seed`), trains it on `data` with the step schedule
/// `lr → swa_lr` at `swa_start`, and collects the SWAG posterior.
pub fn fit_mlp(data: &Dataset, objective: Objective, spec: &FitConfig) -> Result<Fitted> {
    let device = data.features.device().clone();
    if data.num_features() != spec.mlp.input_dim() {
        return Err(Error::invalid(
            "input_dim",
            format!(
                "the network expects {} inputs, the data has {} features",
                spec.mlp.input_dim(),
                data.num_features()
            ),
        ));
    }
    let swa_start = spec
        .train
        .swa_start()
        .ok_or_else(|| Error::invalid("swa_start", "a SWAG fit needs a collection start"))?;
    let varmap = VarMap::new();
    let model = Mlp::new(&spec.mlp, &varmap, &device, spec.init_seed)?;
    let params = ParamSet::from_varmap(&varmap)?;
    let mut posterior = SwagPosterior::for_params(
        &params,
        SwagParams {
            rank: spec.rank,
            ..Default::default()
        }
        .check()?,
    )?;
    let schedule = SwaLr::new(spec.train.sgd().lr(), spec.swa_lr, 0, AnnealStrategy::Cos)?
        .starting_at(swa_start as f64)?;
    let history = train(
        &model,
        &params,
        data,
        objective,
        &schedule,
        &spec.train,
        Some(&mut posterior),
    )?;
    let sgd_weights = params.flatten()?;
    Ok(Fitted {
        varmap,
        model,
        params,
        posterior,
        sgd_weights,
        history,
        spec: spec.clone(),
    })
}

/// The Debug fields shared by a fitted and a loaded run: model, parameters and posterior
/// (candle's `VarMap` has no Debug of its own, so neither type can derive it).
fn debug_model<'a, 'f>(
    f: &'a mut std::fmt::Formatter<'f>,
    name: &str,
    (model, params, posterior): (&Mlp, &ParamSet, &SwagPosterior),
) -> std::fmt::DebugStruct<'a, 'f> {
    let mut s = f.debug_struct(name);
    s.field("model", model)
        .field("params", params)
        .field("posterior", posterior);
    s
}

impl std::fmt::Debug for Fitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_model(f, "Fitted", (&self.model, &self.params, &self.posterior))
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LoadedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_model(f, "LoadedRun", (&self.model, &self.params, &self.posterior))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// SWAG samples as `bma` says, or the SWA mean (one forward pass instead of `S` identical
/// ones) when its scale is 0.
pub fn swag_at_scale<'a>(
    params: &ParamSet,
    posterior: &'a SwagPosterior,
    bma: BmaConfig,
) -> Result<Predictive<'a>> {
    if bma.sample().scale() == 0.0 {
        Predictive::swa(params, posterior)
    } else {
        Predictive::swag(params, posterior, bma)
    }
}
