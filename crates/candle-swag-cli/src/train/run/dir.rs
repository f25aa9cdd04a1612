//! The run directory

use super::*;
use crate::data::{input_names, FeatureColumn, Standardizer, TaskKind};
use crate::models::Mlp;
use crate::train::TrainHistory;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use candle_swag::error::{Error, Result};
use candle_swag::layout::ParamSet;
use candle_swag::swag::SwagPosterior;
use candle_swag::tune::Tuned;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// Both noise models' cross-validated NLLs when `swag fit --noise auto` chose `noise`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_selection: Option<NoiseSelection>,
    /// The number of training rows `tuned` was chosen on (absent without tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_rows: Option<usize>,
    /// How `--weight-decay auto` chose the weight decay (the run trained with the one of lowest
    /// validation NLL, recorded in `fit`); absent with a fixed weight decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay_selection: Option<Vec<DecayTuning>>,
}

/// One weight decay compared by `swag fit --weight-decay auto`: a network trained with it on
/// the fit part of the training rows, its sample scale tuned on the validation split, and that
/// tuning's validation NLL.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecayTuning {
    /// The weight decay.
    pub weight_decay: f64,
    /// The sample scale tuned for it.
    pub scale: f64,
    /// Its validation NLL at that scale (mean per row).
    pub nll: f64,
}

/// How `swag fit --noise auto` chose the noise model: each model's cross-validated NLL (over
/// `folds` folds of the training rows, each model trained on the other folds and tuned on its
/// own; mean per row, standardised target units) and the standard error of their per-row
/// difference. Heteroscedastic noise is chosen only when it is lower by more than that standard
/// error ([`NoiseSelection::chosen`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseSelection {
    /// The homoscedastic model's validation NLL.
    pub homoscedastic_nll: f64,
    /// The heteroscedastic model's validation NLL.
    pub heteroscedastic_nll: f64,
    /// The number of folds (runs written before cross-validation chose on 1 split).
    #[serde(default = "one_fold")]
    pub folds: usize,
    /// The standard error of the mean per-row difference of the two NLLs (sample standard
    /// deviation, divisor n − 1, over √n); 0 in runs written before it was recorded, which
    /// chose the lower NLL.
    #[serde(default)]
    pub difference_standard_error: f64,
}

impl NoiseSelection {
    /// The one-standard-error rule: the simpler, homoscedastic model unless the
    /// heteroscedastic one's NLL is lower by more than [`Self::difference_standard_error`].
    /// With two models this close, a choice by the sign of their difference follows the noise of
    /// the validation rows, not which model predicts new rows better (README, "Defaults of swag
    /// fit, measured").
    pub fn chosen(&self) -> NoiseModel {
        if self.homoscedastic_nll - self.heteroscedastic_nll > self.difference_standard_error {
            NoiseModel::Heteroscedastic
        } else {
            NoiseModel::Homoscedastic
        }
    }
}

fn one_fold() -> usize {
    1
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
    /// [`crate::train::loss::VARIANCE_LINK`]), trained with the Gaussian NLL.
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
    candle_swag::crash_safe::write_dir_atomic(dir, |tmp| {
        candle_swag::crash_safe::write_file_atomic(tmp.join(files::CONFIG), &json)?;
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
