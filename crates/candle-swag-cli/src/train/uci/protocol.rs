//! The protocol's run

use super::*;
use crate::data::{Dataset, Prepared, TabularData};
use crate::models::MlpParams;
use crate::train::loss::VARIANCE_LINK;
use crate::train::method::Method;
use crate::train::run::{
    fit_mlp, regression_validation_nll, tune, validation_split, FitConfig, FitParams, Fitted,
};
use crate::train::{Collect, Objective, TrainParams};
use candle_core::{DType, Device};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{self, ConformalParams, ConformalRegressor};
use candle_swag::optim::SgdParams;
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{batches, Noise, Predictive, RegressionPrediction};
use candle_swag::swag::MultiSwag;
use candle_swag::swag::SampleParams;
use candle_swag::tune::TunePoint;

/// What one method chose on validation for one noise model.
#[derive(Debug, Clone, Copy)]
pub(super) struct Choice {
    point: GridPoint,
    scale: f64,
    /// Homoscedastic noise variance, standardised units.
    noise: Option<f64>,
    nll: f64,
}

/// Runs the protocol on a regression table (its split column, if any, is ignored: every row
/// is dealt into the random splits). Returns one outcome per (split, noise model, method).
pub fn run_uci(data: &TabularData, config: &UciConfig, device: &Device) -> Result<Vec<UciOutcome>> {
    let mut outcomes = Vec::new();
    for (split, seed, prepared) in prepared_splits(data, config, device)? {
        for noise in UciNoise::ALL {
            outcomes.extend(run_split(&prepared, noise, split, seed, config)?);
        }
    }
    Ok(outcomes)
}

/// The fit of one grid point for one noise model.
pub(super) fn fit_config(
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
pub(super) fn run_split(
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
pub(super) fn predict_with(
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
pub(super) fn sgd_choice(
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
