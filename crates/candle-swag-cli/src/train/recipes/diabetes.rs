//! The diabetes recipe (regression)

use super::digits::all_rows;
use super::*;
use crate::data::{bundled, Dataset};
use crate::train::method::Method;
use crate::train::run::{
    fit_mlp, regression_validation_nll, training_noise_variance, tune, validation_split, FitConfig,
    FitParams,
};
use crate::train::{Objective, TrainParams};
use candle_core::{DType, Device};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{self};
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{Noise, Predictive, RegressionPrediction};
use candle_swag::swag::MultiSwag;
use candle_swag::swag::SampleParams;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One method's regression result on one seed, in the target's original units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionOutcome {
    /// The method.
    pub method: Method,
    /// The seed.
    pub seed: u64,
    /// Root mean squared error of the predictive mean.
    pub rmse: f64,
    /// Mean Gaussian NLL of the predictive distribution N(mean, std²).
    pub nll: f64,
    /// Mean CRPS (Gaussian closed form).
    pub crps: f64,
    /// Fraction of test targets inside the central 95% interval.
    pub picp95: f64,
    /// Mean width of the central 95% interval.
    pub mpiw95: f64,
    /// The sample scale used.
    pub scale: f64,
    /// The noise variance used (original units²).
    pub noise_variance: f64,
    /// Predictive means, stds and the test targets.
    pub prediction: RegressionPrediction,
    /// Test targets.
    pub targets: Vec<f64>,
}

impl RegressionOutcome {
    /// Total predictive standard deviation per test row.
    pub fn std(&self) -> Vec<f64> {
        self.prediction.std()
    }
}

/// All methods on one seed of the diabetes recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionSeed {
    /// One entry per method, in [`Method::ALL`] order: the reference recipe (noise = training
    /// residual, scale [`RecipeParams::scale`]).
    pub outcomes: Vec<RegressionOutcome>,
    /// With [`RecipeParams::tune_scale`]: the same runs scored with the scale and noise chosen
    /// on the validation split, one entry per method; empty otherwise.
    pub tuned: Vec<RegressionOutcome>,
    /// Wall-clock times.
    pub timings: Timings,
}

/// Per-method (scale, noise variance in standardised units) used by the regression recipe.
#[derive(Debug, Clone, Copy)]
pub(super) struct RegressionChoice {
    scale: f64,
    noise: f64,
}

/// Runs the diabetes recipe for one seed (see [`RecipeParams::tune_scale`]).
///
/// The reference recipe (always scored, [`RegressionSeed::outcomes`]): the noise variance is the mean squared training
/// residual of the model being scored: the SGD iterate for SGD, the SWA mean for SWA, SWAG-diag
/// and SWAG, and for MultiSWAG the mean of the runs' SWA-mean residuals; the scale is
/// `opts.scale`.
///
/// With tuning ([`RegressionSeed::tuned`]), run 0 is also trained on 80% of the training rows
/// (a seeded split) and each method's scale and noise variance are chosen on the other 20% by
/// validation NLL ([`crate::train::run::tune`]; SGD and SWA tune the noise only; MultiSWAG takes
/// SWAG's choice); the runs trained on all training rows are then scored with those choices.
pub fn run_diabetes(seed: u64, opts: &RecipeConfig, device: &Device) -> Result<RegressionSeed> {
    let start = Instant::now();
    let data = bundled::diabetes(device)?;
    let scaler = data
        .target_scaler
        .clone()
        .ok_or_else(|| Error::invalid("task", "diabetes is a regression task"))?;
    let base = diabetes_spec(data.train.num_features(), seed, opts)?;
    let objective = Objective::MeanSquaredError;
    let tuned = if opts.tune_scale {
        Some(tune_regression(&data.train, &base, opts, seed)?)
    } else {
        None
    };
    let t0 = Instant::now();
    let first = fit_mlp(&data.train, objective, &run_spec(&base, 0)?)?;
    let train_run0 = t0.elapsed().as_secs_f64();
    let mut fitted = vec![first];
    for r in 1..opts.runs.max(1) {
        fitted.push(fit_mlp(&data.train, objective, &run_spec(&base, r)?)?);
    }
    let multi = MultiSwag::new(fitted.iter().map(|f| &f.posterior).collect())?;
    let run0 = &fitted[0];
    let reference: Vec<RegressionChoice> = {
        let sgd = training_noise_variance(
            run0,
            &data.train,
            Predictive::point(&run0.params, &run0.sgd_weights)?,
        )?;
        let swa = training_noise_variance(
            run0,
            &data.train,
            Predictive::swa(&run0.params, &run0.posterior)?,
        )?;
        let mut multi_noise = 0.0;
        for f in &fitted {
            multi_noise +=
                training_noise_variance(f, &data.train, Predictive::swa(&f.params, &f.posterior)?)?;
        }
        let multi_noise = multi_noise / fitted.len() as f64;
        [sgd, swa, swa, swa, multi_noise]
            .into_iter()
            .map(|noise| RegressionChoice {
                scale: opts.scale,
                noise,
            })
            .collect()
    };
    let targets = data.targets_in_original_units(&data.test)?;
    let mut timings = Timings {
        train_run0,
        ..Timings::default()
    };
    let mut score = |choices: &[RegressionChoice], timed: bool| -> Result<Vec<RegressionOutcome>> {
        let mut outcomes = Vec::new();
        for (method, choice) in Method::ALL.into_iter().zip(choices) {
            let t = Instant::now();
            let pred = method
                .predictive(
                    run0,
                    &multi,
                    BmaParams {
                        sample: SampleParams {
                            scale: choice.scale,
                            ..Default::default()
                        },
                        samples: opts.samples,
                        seed,
                    }
                    .check()?,
                )?
                .regress(
                    &run0.model,
                    all_rows(&data.test)?,
                    Noise::Homoscedastic {
                        variance: choice.noise,
                    },
                )?
                .to_host()?;
            let elapsed = t.elapsed().as_secs_f64();
            match (timed, method) {
                (true, Method::SwagDiag) => timings.bma_swag_diag = elapsed,
                (true, Method::Swag) => timings.bma_swag = elapsed,
                _ => {}
            }
            let pred = pred.to_original_units(scaler.mean[0], scaler.std[0]);
            let std = pred.std();
            let coverage = metrics::prediction_interval_coverage(&pred.mean, &std, &targets, 0.95)?;
            outcomes.push(RegressionOutcome {
                method,
                seed,
                rmse: metrics::rmse(&pred.mean, &targets)?,
                nll: metrics::gaussian_nll(&pred.mean, &std, &targets)?,
                crps: metrics::crps_gaussian(&pred.mean, &std, &targets)?,
                picp95: coverage.picp,
                mpiw95: coverage.mpiw,
                scale: choice.scale,
                noise_variance: choice.noise * scaler.std[0] * scaler.std[0],
                prediction: pred,
                targets: targets.clone(),
            });
        }
        Ok(outcomes)
    };
    let outcomes = score(&reference, true)?;
    let tuned = match tuned {
        Some(choices) => score(&choices, false)?,
        None => Vec::new(),
    };
    timings.total = start.elapsed().as_secs_f64();
    Ok(RegressionSeed {
        outcomes,
        tuned,
        timings,
    })
}

/// Trains run 0 on 80% of `train` and chooses each method's scale and noise on the other 20%.
pub(super) fn tune_regression(
    train: &Dataset,
    base: &FitConfig,
    opts: &RecipeConfig,
    seed: u64,
) -> Result<Vec<RegressionChoice>> {
    let (fit_rows, val_rows) = validation_split(train.len(), 0.2, seed)?;
    let fit_data = train.select(&fit_rows)?;
    let val = train.select(&val_rows)?;
    let run0 = run_spec(base, 0)?;
    let spec = FitParams {
        train: TrainParams {
            label: format!("{} tune", run0.train().label()),
            ..run0.train().clone().into()
        },
        ..run0.into()
    }
    .check()?;
    let fitted = fit_mlp(&fit_data, Objective::MeanSquaredError, &spec)?;
    let y: Vec<f64> = val.targets.to_dtype(DType::F64)?.to_vec1()?;
    let sgd = Predictive::point(&fitted.params, &fitted.sgd_weights)?;
    let (sgd_noise, _) = regression_validation_nll(
        &sgd,
        &fitted.model,
        all_rows(&val)?,
        Objective::MeanSquaredError,
        &y,
    )?;
    let full = tune(
        &fitted,
        &fit_data.features,
        &val,
        Objective::MeanSquaredError,
        opts.samples,
        false,
        seed,
    )?;
    let diag = tune(
        &fitted,
        &fit_data.features,
        &val,
        Objective::MeanSquaredError,
        opts.samples,
        true,
        seed,
    )?;
    let noise = |p: &candle_swag::tune::TunePoint| p.noise_variance.unwrap_or(1.0);
    let swa = &full.grid[0];
    debug_assert_eq!(swa.scale, 0.0);
    let swag = RegressionChoice {
        scale: full.best.scale,
        noise: noise(&full.best),
    };
    Ok(vec![
        RegressionChoice {
            scale: 0.0,
            noise: sgd_noise.unwrap_or(1.0),
        },
        RegressionChoice {
            scale: 0.0,
            noise: noise(swa),
        },
        RegressionChoice {
            scale: diag.best.scale,
            noise: noise(&diag.best),
        },
        swag,
        swag,
    ])
}
