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
//!    variance are chosen on the validation part by [`tune`]; each method keeps the grid point
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

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::loss::VARIANCE_LINK;
use super::method::Method;
use super::pipeline::{fit_dataset, CsvFitParams};
use super::run::{
    fit_mlp, regression_validation_nll, tune, validation_split, FitConfig, FitParams, Fitted,
    NoiseModel, TunePoint,
};
use super::{Collect, Objective, TrainParams};
use crate::data::{prepare, Dataset, FeatureScaling, Prepared, Split, TabularData, Targets};
use crate::models::MlpParams;
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{self, ConformalParams, ConformalRegressor};
use candle_swag::optim::SgdParams;
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{batches, Noise, Predictive, RegressionPrediction};
use candle_swag::swag::MultiSwag;
use candle_swag::swag::SampleParams;

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

/// What one method chose on validation for one noise model.
#[derive(Debug, Clone, Copy)]
struct Choice {
    point: GridPoint,
    scale: f64,
    /// Homoscedastic noise variance, standardised units.
    noise: Option<f64>,
    nll: f64,
}

/// Runs the protocol on a regression table (its split column, if any, is ignored: every row
/// is dealt into the random splits). Returns one outcome per (split, noise model, method).
pub fn run_uci(data: &TabularData, config: &UciConfig, device: &Device) -> Result<Vec<UciOutcome>> {
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
    let mut outcomes = Vec::new();
    for split in 0..config.0.splits {
        let seed = config.0.seed.wrapping_add(split as u64);
        let (_, test_rows) = validation_split(n, config.test_fraction(), seed)?;
        let mut table = data.clone();
        table.splits = vec![Split::Train; n];
        for &r in &test_rows {
            table.splits[r] = Split::Test;
        }
        let prepared = prepare(&table, FeatureScaling::Standardize, device)?;
        for noise in UciNoise::ALL {
            outcomes.extend(run_split(&prepared, noise, split, seed, config)?);
        }
    }
    Ok(outcomes)
}

/// The fit of one grid point for one noise model.
fn fit_config(
    prepared: &Prepared,
    noise: UciNoise,
    point: GridPoint,
    seed: u64,
    progress: bool,
) -> Result<FitConfig> {
    let outputs = match noise {
        UciNoise::Homoscedastic => 1,
        UciNoise::Heteroscedastic => 2,
    };
    let sgd = SgdParams {
        lr: point.lr,
        momentum: 0.9,
        weight_decay: point.weight_decay,
    }
    .check()?;
    FitParams {
        mlp: MlpParams {
            input_dim: prepared.train.num_features(),
            hidden: vec![50],
            output_dim: outputs,
            batchnorm: false,
        },
        train: TrainParams {
            epochs: point.epochs,
            batch_size: 32,
            sgd: sgd.into(),
            swa_start: Some(point.epochs / 2),
            collect: Collect::EveryEpoch,
            seed,
            progress,
            label: format!("uci {} s{seed}", noise.short()),
        },
        swa_lr: point.lr,
        rank: 20,
        init_seed: seed,
    }
    .check()
}

/// Chooses, then scores, every method of one noise model on one split.
fn run_split(
    prepared: &Prepared,
    noise: UciNoise,
    split: usize,
    seed: u64,
    config: &UciConfig,
) -> Result<Vec<UciOutcome>> {
    let objective = noise.objective();
    let train = &prepared.train;
    let (fit_rows, val_rows) = validation_split(train.len(), 0.2, seed)?;
    let (fit_part, val) = (train.select(&fit_rows)?, train.select(&val_rows)?);
    let val_y: Vec<f64> = val.targets.to_dtype(DType::F64)?.to_vec1()?;

    // Validation: every grid point, every method's best scale and noise.
    let mut best: [Option<Choice>; 4] = [None; 4];
    let mut validation_fits: Vec<(GridPoint, Fitted)> = Vec::new();
    for point in config.0.grid.points() {
        let spec = fit_config(prepared, noise, point, seed, config.0.progress)?;
        let fitted = fit_mlp(&fit_part, objective, &spec)?;
        let tuned = |diag| {
            tune(
                &fitted,
                &fit_part.features,
                &val,
                objective,
                config.0.samples,
                diag,
                seed,
            )
        };
        let (full, diag) = (tuned(false)?, tuned(true)?);
        let choice = |p: &TunePoint| Choice {
            point,
            scale: p.scale,
            noise: p.noise_variance,
            nll: p.nll,
        };
        let candidates = [
            sgd_choice(&fitted, &val, &val_y, objective, point)?,
            // SWA is the grid's point at scale 0.
            choice(
                full.grid
                    .iter()
                    .find(|p| p.scale == 0.0)
                    .ok_or_else(|| Error::invalid("scale", "the tuning grid has no scale 0"))?,
            ),
            choice(&diag.best),
            choice(&full.best),
        ];
        for (slot, c) in best.iter_mut().zip(candidates) {
            if slot.is_none_or(|b| c.nll < b.nll) {
                *slot = Some(c);
            }
        }
        validation_fits.push((point, fitted));
    }

    // Test: each method retrained on the whole training part with its choice. Conformal
    // intervals need a calibration part the model never saw: the validation-stage model of
    // the chosen grid point, calibrated on the validation part, predicts the test part.
    let scaler = prepared
        .target_scaler
        .as_ref()
        .ok_or_else(|| Error::invalid("task", "the UCI protocol is for regression targets"))?;
    let (mean_y, std_y) = (scaler.mean[0], scaler.std[0]);
    let targets = prepared.targets_in_original_units(&prepared.test)?;
    let test_z: Vec<f64> = prepared.test.targets.to_dtype(DType::F64)?.to_vec1()?;
    let conformal = ConformalParams::with_coverage(UCI_COVERAGE).check()?;
    let mut fits: Vec<(GridPoint, Fitted)> = Vec::new();
    let mut out = Vec::new();
    for (method, choice) in UCI_METHODS.into_iter().zip(best) {
        let choice = choice.ok_or_else(|| Error::invalid("grid", "no grid point was tried"))?;
        let predict = |fitted: &Fitted, data: &Dataset| {
            predict_with(fitted, method, &choice, noise, data, config, seed)
        };
        let val_fit = validation_fits
            .iter()
            .find(|(p, _)| *p == choice.point)
            .map(|(_, f)| f)
            .ok_or_else(|| Error::invalid("grid", "the chosen fit is missing"))?;
        let calibration = predict(val_fit, &val)?;
        let regressor =
            ConformalRegressor::fit(&conformal, &calibration.mean, &calibration.std(), &val_y)?;
        let held_out = predict(val_fit, &prepared.test)?;
        let held_out_std = held_out.std();
        let conformal_eval = regressor.evaluate(&held_out.mean, &held_out_std, &test_z)?;
        let gaussian = metrics::prediction_interval_coverage(
            &held_out.mean,
            &held_out_std,
            &test_z,
            UCI_COVERAGE,
        )?;

        if !fits.iter().any(|(p, _)| *p == choice.point) {
            let spec = fit_config(prepared, noise, choice.point, seed, config.0.progress)?;
            fits.push((choice.point, fit_mlp(train, objective, &spec)?));
        }
        let fitted = fits
            .iter()
            .find(|(p, _)| *p == choice.point)
            .map(|(_, f)| f)
            .ok_or_else(|| Error::invalid("grid", "the chosen fit is missing"))?;
        let pred = predict(fitted, &prepared.test)?.to_original_units(mean_y, std_y);
        let std = pred.std();
        out.push(UciOutcome {
            split,
            method,
            noise,
            test_ll: -metrics::gaussian_nll(&pred.mean, &std, &targets)?,
            rmse: metrics::rmse(&pred.mean, &targets)?,
            conformal_coverage: conformal_eval.coverage,
            gaussian_coverage: gaussian.picp,
            chosen: choice.point,
            scale: choice.scale,
            noise_variance: choice.noise.map(|v| v * std_y * std_y),
            validation_nll: choice.nll,
        });
    }
    Ok(out)
}

/// The method's prediction (standardised units) on `data` with the scale and noise of
/// `choice`.
fn predict_with(
    fitted: &Fitted,
    method: Method,
    choice: &Choice,
    noise: UciNoise,
    data: &Dataset,
    config: &UciConfig,
    seed: u64,
) -> Result<RegressionPrediction> {
    let multi = MultiSwag::new(vec![&fitted.posterior])?;
    let predictive_noise = match (noise, choice.noise) {
        (UciNoise::Heteroscedastic, _) => Noise::Heteroscedastic(VARIANCE_LINK),
        (UciNoise::Homoscedastic, Some(variance)) => Noise::Homoscedastic { variance },
        (UciNoise::Homoscedastic, None) => {
            return Err(Error::invalid("noise", "no noise variance was chosen"))
        }
    };
    let prediction = method
        .predictive(
            fitted,
            &multi,
            BmaParams {
                sample: SampleParams {
                    scale: choice.scale,
                    ..Default::default()
                },
                samples: config.0.samples,
                seed,
            }
            .check()?,
        )?
        .regress(
            &fitted.model,
            batches(&data.features, data.len().max(1))?,
            predictive_noise,
        )?
        .to_host()?;
    Ok(prediction)
}

/// SGD's validation NLL: the last iterate, with the noise variance chosen on validation
/// (homoscedastic) or the network's own variance (heteroscedastic).
fn sgd_choice(
    fitted: &Fitted,
    val: &Dataset,
    val_y: &[f64],
    objective: Objective,
    point: GridPoint,
) -> Result<Choice> {
    let predictive = Predictive::point(&fitted.params, &fitted.sgd_weights)?;
    let inputs = batches(&val.features, val.len().max(1))?;
    let (noise_variance, nll) =
        regression_validation_nll(&predictive, &fitted.model, inputs, objective, val_y)?;
    Ok(Choice {
        point,
        scale: 0.0,
        noise: noise_variance,
        nll,
    })
}

/// Mean and standard error (population std / sqrt(n)) of a list of values.
pub fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let (mean, std) = super::recipes::mean_std(values);
    (mean, std / (values.len().max(1) as f64).sqrt())
}

/// Per (split, method), the outcome of the noise model with the lower validation NLL
/// (homoscedastic on a tie): what `--noise auto` would have chosen in the protocol.
pub fn auto_noise_outcomes(outcomes: &[UciOutcome]) -> Vec<UciOutcome> {
    let mut out: Vec<UciOutcome> = Vec::new();
    for o in outcomes
        .iter()
        .filter(|o| o.noise == UciNoise::Homoscedastic)
    {
        let other = outcomes.iter().find(|h| {
            h.noise == UciNoise::Heteroscedastic && h.split == o.split && h.method == o.method
        });
        out.push(match other {
            Some(h) if h.validation_nll < o.validation_nll => h.clone(),
            _ => o.clone(),
        });
    }
    out
}

/// The Markdown table: one row per (method, noise model), test LL and RMSE as mean ± standard
/// error over splits, then `auto` rows ([`auto_noise_outcomes`]; their noise column counts how
/// many splits used each model).
pub fn uci_table(outcomes: &[UciOutcome]) -> String {
    let splits = outcomes.iter().map(|o| o.split).max().map_or(0, |s| s + 1);
    let pct = UCI_COVERAGE * 100.0;
    let mut out = format!(
        "| method | noise | test LL ({splits} splits) | RMSE | {pct:.0}% coverage: conformal / Gaussian |\n|---|---|---|---|---|\n"
    );
    for noise in UciNoise::ALL {
        for method in UCI_METHODS {
            let rows: Vec<&UciOutcome> = outcomes
                .iter()
                .filter(|o| o.method == method && o.noise == noise)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let (ll, ll_se) =
                mean_and_standard_error(&rows.iter().map(|o| o.test_ll).collect::<Vec<_>>());
            let (rmse, rmse_se) =
                mean_and_standard_error(&rows.iter().map(|o| o.rmse).collect::<Vec<_>>());
            let mean = |f: fn(&UciOutcome) -> f64| {
                rows.iter().map(|o| f(o)).sum::<f64>() / rows.len() as f64
            };
            out.push_str(&format!(
                "| {} | {} | {ll:.3} ± {ll_se:.3} | {rmse:.3} ± {rmse_se:.3} | {:.3} / {:.3} |\n",
                method.display(),
                noise.short(),
                mean(|o| o.conformal_coverage),
                mean(|o| o.gaussian_coverage),
            ));
        }
    }
    // `auto` rows only when both noise models were run.
    let auto = if outcomes
        .iter()
        .any(|o| o.noise == UciNoise::Heteroscedastic)
    {
        auto_noise_outcomes(outcomes)
    } else {
        Vec::new()
    };
    for method in UCI_METHODS {
        let rows: Vec<&UciOutcome> = auto.iter().filter(|o| o.method == method).collect();
        let hetero = rows
            .iter()
            .filter(|o| o.noise == UciNoise::Heteroscedastic)
            .count();
        if rows.is_empty() {
            continue;
        }
        let (ll, ll_se) =
            mean_and_standard_error(&rows.iter().map(|o| o.test_ll).collect::<Vec<_>>());
        let (rmse, rmse_se) =
            mean_and_standard_error(&rows.iter().map(|o| o.rmse).collect::<Vec<_>>());
        let mean =
            |f: fn(&UciOutcome) -> f64| rows.iter().map(|o| f(o)).sum::<f64>() / rows.len() as f64;
        out.push_str(&format!(
            "| {} | auto ({}/{hetero}) | {ll:.3} ± {ll_se:.3} | {rmse:.3} ± {rmse_se:.3} | {:.3} / {:.3} |\n",
            method.display(),
            rows.len() - hetero,
            mean(|o| o.conformal_coverage),
            mean(|o| o.gaussian_coverage),
        ));
    }
    out
}

/// One split of [`run_uci_fit`]: the `swag fit` model scored on the test part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOutcome {
    /// Split index.
    pub split: usize,
    /// The noise model the fit trained with (chosen on validation with `--noise auto`).
    pub noise: NoiseModel,
    /// Test log-likelihood per point, original units.
    pub test_ll: f64,
    /// Test RMSE, original units.
    pub rmse: f64,
    /// Fraction of test rows inside the Gaussian central interval at [`UCI_COVERAGE`].
    pub gaussian_coverage: f64,
    /// The sample scale the fit chose (0.5 without tuning).
    pub scale: f64,
    /// Its homoscedastic noise variance (original units²).
    pub noise_variance: Option<f64>,
}

/// The splits of [`run_uci`] (same seeds, same test parts), each fitted by `swag fit`'s
/// [`fit_dataset`] with the settings of `fit` (its file and column fields are not read; its
/// seed is replaced by the split's) on the whole training part, then the SWAG BMA at the
/// fit's own scale and noise (`config`'s samples) scored on the test part. This measures what
/// `swag fit` gives with its defaults, where [`run_uci`] measures the papers' protocol.
pub fn run_uci_fit(
    data: &TabularData,
    config: &UciConfig,
    fit: &CsvFitParams,
    device: &Device,
) -> Result<Vec<FitOutcome>> {
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
    let mut out = Vec::new();
    for split in 0..config.0.splits {
        let seed = config.0.seed.wrapping_add(split as u64);
        let (_, test_rows) = validation_split(n, config.test_fraction(), seed)?;
        let mut table = data.clone();
        table.splits = vec![Split::Train; n];
        for &r in &test_rows {
            table.splits[r] = Split::Test;
        }
        let prepared = prepare(&table, FeatureScaling::Standardize, device)?;
        let opts = CsvFitParams {
            seed,
            progress: config.0.progress,
            ..fit.clone()
        }
        .check()?;
        let fitted = fit_dataset(&opts, &prepared.train, 1)?;
        let scaler = prepared
            .target_scaler
            .as_ref()
            .ok_or_else(|| Error::invalid("task", "the UCI protocol is for regression targets"))?;
        let (mean_y, std_y) = (scaler.mean[0], scaler.std[0]);
        let pred = fitted
            .regress(
                &prepared.test,
                &prepared.train.features,
                config.0.samples,
                seed,
            )?
            .to_original_units(mean_y, std_y);
        let targets = prepared.targets_in_original_units(&prepared.test)?;
        let std = pred.std();
        let coverage =
            metrics::prediction_interval_coverage(&pred.mean, &std, &targets, UCI_COVERAGE)?;
        out.push(FitOutcome {
            split,
            noise: fitted.noise,
            test_ll: -metrics::gaussian_nll(&pred.mean, &std, &targets)?,
            rmse: metrics::rmse(&pred.mean, &targets)?,
            gaussian_coverage: coverage.picp,
            scale: fitted.scale,
            noise_variance: fitted.noise_variance.map(|v| v * std_y * std_y),
        });
    }
    Ok(out)
}

/// The Markdown table of [`run_uci_fit`]: one row, test LL and RMSE as mean ± standard error
/// over splits, the mean Gaussian coverage, and how often each noise model was used.
pub fn uci_fit_table(label: &str, outcomes: &[FitOutcome]) -> String {
    let pct = UCI_COVERAGE * 100.0;
    let n = outcomes.len();
    let (ll, ll_se) =
        mean_and_standard_error(&outcomes.iter().map(|o| o.test_ll).collect::<Vec<_>>());
    let (rmse, rmse_se) =
        mean_and_standard_error(&outcomes.iter().map(|o| o.rmse).collect::<Vec<_>>());
    let (cov, cov_se) = mean_and_standard_error(
        &outcomes
            .iter()
            .map(|o| o.gaussian_coverage)
            .collect::<Vec<_>>(),
    );
    let homo = outcomes
        .iter()
        .filter(|o| o.noise == NoiseModel::Homoscedastic)
        .count();
    let (scale, _) = mean_and_standard_error(&outcomes.iter().map(|o| o.scale).collect::<Vec<_>>());
    format!(
        "| swag fit | noise used (homo/hetero) | test LL ({n} splits) | RMSE | Gaussian {pct:.0}% coverage | mean scale |\n\
         |---|---|---|---|---|---|\n\
         | {label} | {homo}/{} | {ll:.3} ± {ll_se:.3} | {rmse:.3} ± {rmse_se:.3} | {cov:.3} ± {cov_se:.3} | {scale:.2} |\n",
        n - homo
    )
}
