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
//! The directory is written atomically ([`candle_swag::atomic::write_dir_atomic`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{train, Objective, TrainConfig, TrainHistory, TrainParams};
use crate::data::{input_names, Dataset, FeatureColumn, Standardizer, TaskKind};
use crate::models::{Mlp, MlpConfig, MlpParams};
use candle_swag::batchnorm::BatchNormRefresh;
use candle_swag::error::{Error, Result};
use candle_swag::layout::ParamSet;
use candle_swag::optim::SgdParams;
use candle_swag::predictive::{batches, BmaConfig, BmaParams, Noise, Predictive};
use candle_swag::schedule::{AnnealStrategy, SwaLr};
use candle_swag::swag::{SampleParams, SwagParams, SwagPosterior};
use candle_swag::tune::{mean_squared_residual, ObservationNoise};

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

/// Splits `0..n` into (fit rows, validation rows): a seeded shuffle, then the last
/// `round(fraction · n)` rows (at least 1, at most n − 1) are the validation rows. Both lists
/// are returned sorted.
pub fn validation_split(n: usize, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "validation_fraction",
            format!("must be in (0, 1), got {fraction}"),
        ));
    }
    if n < 2 {
        return Err(Error::invalid(
            "rows",
            "a validation split needs at least 2 rows",
        ));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n_val = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut val = idx.split_off(n - n_val);
    idx.sort_unstable();
    val.sort_unstable();
    Ok((idx, val))
}

// The grid and its points are the core's (`candle_swag::tune`), re-exported for the pipeline.
pub use candle_swag::tune::{TunePoint, Tuned, SCALE_GRID};

/// Chooses the sample scale (and, for regression, the noise variance) by validation NLL.
///
/// For each scale of [`SCALE_GRID`], a BMA with `samples` samples (the same seed at every scale,
/// `diag_only` for SWAG-diagonal) is run on `validation`. Classification scores the NLL of the
/// averaged probabilities (clamped at 1e-12). Regression picks, per scale, the noise variance of
/// [`candle_swag::tune::noise_grid`] minimising the Gaussian NLL of the mixture moments
/// ([`candle_swag::tune::best_noise_variance`]), then keeps the best scale. The grid search itself is
/// the core's [`candle_swag::tune::tune_classification`] / [`candle_swag::tune::tune_regression`], which
/// any model can use.
pub fn tune(
    fitted: &Fitted,
    train_inputs: &Tensor,
    validation: &Dataset,
    objective: Objective,
    samples: usize,
    diag_only: bool,
    seed: u64,
) -> Result<Tuned> {
    let refresh = fitted.refresh(train_inputs)?;
    let inputs = batches(&validation.features, validation.len().max(1))?;
    let at = |scale: f64| -> Result<Predictive<'_>> {
        let options = SampleParams {
            scale,
            diag_only,
            ..Default::default()
        }
        .check()?;
        Ok(with_refresh(
            swag_at_scale(
                &fitted.params,
                &fitted.posterior,
                BmaParams {
                    sample: options.into(),
                    samples,
                    seed,
                }
                .check()?,
            )?,
            &refresh,
        ))
    };
    match objective {
        Objective::CrossEntropy => {
            let labels: Vec<u32> = validation.targets.to_dtype(DType::U32)?.to_vec1()?;
            candle_swag::tune::tune_classification(at, &fitted.model, inputs, &labels)
        }
        _ => {
            let targets: Vec<f64> = validation.targets.to_dtype(DType::F64)?.to_vec1()?;
            candle_swag::tune::tune_regression(
                at,
                &fitted.model,
                inputs,
                &targets,
                observation_noise(objective),
            )
        }
    }
}

/// How a regression objective's noise is found: the network's own variance for
/// [`Objective::GaussianNll`], else one variance searched on the grid.
fn observation_noise(objective: Objective) -> ObservationNoise {
    match objective {
        Objective::GaussianNll => ObservationNoise::FromModel(super::loss::VARIANCE_LINK),
        _ => ObservationNoise::Searched,
    }
}

/// The validation NLL of a regression BMA (mean over rows, standardised units) and the noise
/// variance it used ([`candle_swag::tune::regression_nll`] with the objective's noise).
pub fn regression_validation_nll<I>(
    predictive: &Predictive,
    model: &Mlp,
    inputs: I,
    objective: Objective,
    targets: &[f64],
) -> Result<(Option<f64>, f64)>
where
    I: Iterator<Item = candle_core::Result<Tensor>> + Clone,
{
    candle_swag::tune::regression_nll(
        predictive,
        model,
        inputs,
        targets,
        observation_noise(objective),
    )
}

/// The homoscedastic noise variance of the reference recipe: the mean squared residual on the
/// training rows of the model run by `predictive` (standardised units).
pub fn training_noise_variance<'a>(
    fitted: &Fitted,
    train: &'a Dataset,
    predictive: Predictive<'a>,
) -> Result<f64> {
    let refresh = fitted.refresh(&train.features)?;
    let m = with_refresh(predictive, &refresh)
        .regress(
            &fitted.model,
            batches(&train.features, train.len().max(1))?,
            Noise::Homoscedastic { variance: 0.0 },
        )?
        .to_host()?;
    let y: Vec<f32> = train.targets.to_vec1()?;
    let y: Vec<f64> = y.into_iter().map(f64::from).collect();
    mean_squared_residual(&m.mean, &y)
}

/// The contents of a run directory's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// [`RUN_FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// Classification or regression.
    pub task: TaskKind,
    /// Name of the target column in the training file.
    pub target: String,
    /// Model input names, in the order the model reads them.
    pub feature_names: Vec<String>,
    /// The feature columns of the training file and their encoding (runs written before
    /// categorical columns existed have none: every input is then the numeric column of its
    /// name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_columns: Vec<FeatureColumn>,
    /// Class label per class index (classification).
    pub class_labels: Option<Vec<String>>,
    /// Feature standardisation fitted on the training rows.
    pub feature_scaler: Standardizer,
    /// Target standardisation fitted on the training rows (regression).
    pub target_scaler: Option<Standardizer>,
    /// How the run was trained.
    pub fit: FitConfig,
    /// Homoscedastic noise variance in standardised target units (regression).
    pub noise_variance: Option<f64>,
    /// Default sample scale for `swag predict` (0.5, or the tuned value).
    pub scale: f64,
    /// The tuning result (absent for runs fitted with `--no-tune`).
    pub tuned: Option<Tuned>,
    /// Training statistics per epoch.
    pub history: TrainHistory,
    /// The rows held out for split-conformal calibration (`swag fit --calibrate-fraction`);
    /// absent in runs fitted without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRows>,
    /// The regression noise model (runs written before it existed are homoscedastic).
    #[serde(default)]
    pub noise: NoiseModel,
    /// Both noise models' validation NLLs when `swag fit --noise auto` chose `noise`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_selection: Option<NoiseSelection>,
    /// The number of training rows `tuned` was chosen on (absent without tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_rows: Option<usize>,
}

/// How `swag fit --noise auto` chose the noise model: each model's best tuned validation NLL
/// (mean per row, standardised target units); the lower one is the run's `noise`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseSelection {
    /// The homoscedastic model's validation NLL.
    pub homoscedastic_nll: f64,
    /// The heteroscedastic model's validation NLL.
    pub heteroscedastic_nll: f64,
}

impl RunConfig {
    /// The feature columns `swag predict` reads, checked to give the run's model inputs.
    pub fn feature_columns(&self) -> Result<Vec<FeatureColumn>> {
        if self.feature_columns.is_empty() {
            return Ok(self
                .feature_names
                .iter()
                .map(|name| FeatureColumn::Numeric { name: name.clone() })
                .collect());
        }
        if input_names(&self.feature_columns) != self.feature_names {
            return Err(Error::invalid(
                "feature_columns",
                "the run's feature columns do not give its input names (config.json edited?)",
            ));
        }
        Ok(self.feature_columns.clone())
    }
}

/// The noise model of a regression run (`swag fit --noise`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseModel {
    /// One noise variance for every input (`RunConfig::noise_variance`), one network output.
    #[default]
    Homoscedastic,
    /// Two outputs per row, a mean and a raw variance (softplus link with a floor,
    /// [`super::loss::VARIANCE_LINK`]), trained with the Gaussian NLL.
    Heteroscedastic,
}

impl NoiseModel {
    /// As spelled on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            NoiseModel::Homoscedastic => "homoscedastic",
            NoiseModel::Heteroscedastic => "heteroscedastic",
        }
    }
}

/// Training rows held out from fitting for split-conformal calibration. `swag predict
/// --coverage` runs the same BMA (samples, scale, seed) on them as on the rows it predicts, so
/// the calibration scores come from the very predictor they calibrate. The feature and target
/// standardisations were fitted on all training rows, these included (a function of the
/// inputs and targets symmetric in the rows, which leaves calibration and test rows
/// exchangeable only approximately; the network itself never saw these rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRows {
    /// The fraction of the training rows held out.
    pub fraction: f64,
    /// Standardised features, row-major `[n, d]`.
    pub features: Vec<f32>,
    /// Class indices (classification) or standardised targets (regression), one per row.
    pub targets: Vec<f64>,
}

/// File names inside a run directory.
pub mod files {
    /// The run's [`super::RunConfig`].
    pub const CONFIG: &str = "config.json";
    /// The last SGD iterate (VarMap safetensors).
    pub const WEIGHTS: &str = "weights.safetensors";
    /// The SWAG posterior.
    pub const POSTERIOR: &str = "posterior.safetensors";
    /// Standardised training inputs (models with BatchNorm only).
    pub const TRAIN_INPUTS: &str = "train_inputs.safetensors";
}

/// Writes a run directory atomically (see the module docs for its files). The Vars of
/// `fitted` are reset to the last SGD iterate before saving.
pub fn save_run(
    dir: impl AsRef<Path>,
    config: &RunConfig,
    fitted: &Fitted,
    train_inputs: &Tensor,
) -> Result<()> {
    fitted.params.write_flat(&fitted.sgd_weights)?;
    let json = serde_json::to_vec_pretty(config)?;
    candle_swag::atomic::write_dir_atomic(dir, |tmp| {
        candle_swag::atomic::write_file_atomic(tmp.join(files::CONFIG), &json)?;
        let weights = tmp.join(files::WEIGHTS);
        fitted
            .varmap
            .save(&weights)
            .map_err(|e| Error::bad_file(&weights, e.to_string()))?;
        fitted.posterior.save(tmp.join(files::POSTERIOR))?;
        if fitted.model.config().batchnorm() {
            let path = tmp.join(files::TRAIN_INPUTS);
            candle_core::safetensors::save(
                &std::collections::HashMap::from([("inputs".to_string(), train_inputs.clone())]),
                &path,
            )
            .map_err(|e| Error::bad_file(&path, e.to_string()))?;
        }
        Ok(())
    })
}

/// A run directory loaded back: the model with its SGD weights, the posterior, the config.
pub struct LoadedRun {
    /// The run's configuration.
    pub config: RunConfig,
    /// The model's Vars.
    pub varmap: VarMap,
    /// The network, holding the last SGD iterate.
    pub model: Mlp,
    /// Its trainable parameters.
    pub params: ParamSet,
    /// The SWAG posterior (layout checked against `params`).
    pub posterior: SwagPosterior,
    /// The standardised training inputs (models with BatchNorm only).
    pub train_inputs: Option<Tensor>,
}

impl LoadedRun {
    /// Loads and checks a run directory written by [`save_run`].
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join(files::CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: RunConfig = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&config_path, format!("not a run config: {e}")))?;
        if config.format_version != RUN_FORMAT_VERSION {
            return Err(Error::bad_file(
                &config_path,
                format!(
                    "run format version {} is not supported (expected {RUN_FORMAT_VERSION})",
                    config.format_version
                ),
            ));
        }
        let weights = dir.join(files::WEIGHTS);
        if !weights.exists() {
            return Err(Error::bad_file(&weights, "missing from the run directory"));
        }
        // The network is allocated from the config's widths before its weights are read:
        // widths the weights file cannot hold (one byte per weight at the very least) are
        // refused first, so that an edited config cannot claim any amount of memory.
        let weights_len = std::fs::metadata(&weights)
            .map_err(|e| Error::io(&weights, e))?
            .len();
        let widths = config.fit.mlp.widths();
        let claimed = widths
            .windows(2)
            .try_fold(0u64, |n, w| {
                (w[0] as u64)
                    .checked_mul(w[1] as u64)
                    .and_then(|m| n.checked_add(m))
            })
            .unwrap_or(u64::MAX);
        if claimed > weights_len {
            return Err(Error::bad_file(
                &config_path,
                format!(
                    "the network it describes (widths {widths:?}) has {} weights, but {} holds only {weights_len} bytes",
                    if claimed == u64::MAX { "too many".to_string() } else { claimed.to_string() },
                    weights.display()
                ),
            ));
        }
        let mut varmap = VarMap::new();
        let model = Mlp::new(&config.fit.mlp, &varmap, device, 0)?;
        varmap
            .load(&weights)
            .map_err(|e| Error::bad_file(&weights, e.to_string()))?;
        let params = ParamSet::from_varmap(&varmap)?;
        let posterior = SwagPosterior::load_for(dir.join(files::POSTERIOR), &params)?;
        let train_inputs = if config.fit.mlp.batchnorm() {
            let path = dir.join(files::TRAIN_INPUTS);
            let mut t = candle_core::safetensors::load(&path, device)
                .map_err(|e| Error::bad_file(&path, e.to_string()))?;
            Some(
                t.remove("inputs")
                    .ok_or_else(|| Error::bad_file(&path, "no tensor named `inputs`"))?,
            )
        } else {
            None
        };
        Ok(Self {
            config,
            varmap,
            model,
            params,
            posterior,
            train_inputs,
        })
    }
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
