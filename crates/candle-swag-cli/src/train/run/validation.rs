//! Choices made on a validation part of the training rows

use super::*;
use crate::data::Dataset;
use crate::models::Mlp;
use crate::train::Objective;
use candle_core::{DType, Tensor};
use candle_swag::error::{Error, Result};
use candle_swag::predictive::{batches, BmaParams, Noise, Predictive};
use candle_swag::swag::SampleParams;
use candle_swag::tune::Tuned;
use candle_swag::tune::{mean_squared_residual, ObservationNoise};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// `0..n` shuffled by `seed`: the one order [`validation_split`] and
/// [`cross_validation_folds`] cut, so fold 0 of the folds is the validation split.
fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    idx
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
    let mut idx = seeded_permutation(n, seed);
    let n_val = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut val = idx.split_off(n - n_val);
    idx.sort_unstable();
    val.sort_unstable();
    Ok((idx, val))
}

/// Splits `0..n` into `folds` cross-validation folds, each as (fit rows, validation rows):
/// the seeded shuffle of [`validation_split`], cut from its end into `folds` parts of
/// `round((f+1)·n/folds) − round(f·n/folds)` rows, so fold 0 is exactly
/// `validation_split(n, 1/folds, seed)` and every row is validated once. Both lists of each
/// fold are sorted. Refuses fewer than 2 folds or fewer rows than folds.
pub fn cross_validation_folds(
    n: usize,
    folds: usize,
    seed: u64,
) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
    if folds < 2 {
        return Err(Error::invalid(
            "folds",
            format!("cross-validation needs at least 2 folds, got {folds}"),
        ));
    }
    if n < folds {
        return Err(Error::invalid(
            "rows",
            format!("{folds}-fold cross-validation needs at least {folds} rows, got {n}"),
        ));
    }
    let idx = seeded_permutation(n, seed);
    let cut = |f: usize| (f as f64 * n as f64 / folds as f64).round() as usize;
    Ok((0..folds)
        .map(|f| {
            let (start, end) = (n - cut(f + 1), n - cut(f));
            let mut val = idx[start..end].to_vec();
            let mut fit: Vec<usize> = idx[..start].iter().chain(&idx[end..]).copied().collect();
            fit.sort_unstable();
            val.sort_unstable();
            (fit, val)
        })
        .collect())
}

/// The [`NoiseSelection`] of two noise models from their per-row validation NLLs over the
/// same rows (in the same order) of `folds` cross-validation folds: both means, and the
/// standard error of the mean per-row difference (divisor n − 1). Refuses lists of different
/// lengths, fewer than 2 rows, or a non-finite NLL (a diverged fit cannot be compared).
pub fn noise_selection(
    homoscedastic: &[f64],
    heteroscedastic: &[f64],
    folds: usize,
) -> Result<NoiseSelection> {
    let n = homoscedastic.len();
    if heteroscedastic.len() != n || n < 2 {
        return Err(Error::invalid(
            "validation rows",
            format!(
                "comparing noise models needs the same rows, at least 2: got {n} homoscedastic \
                 and {} heteroscedastic NLLs",
                heteroscedastic.len()
            ),
        ));
    }
    if let Some(i) = homoscedastic
        .iter()
        .chain(heteroscedastic)
        .position(|v| !v.is_finite())
    {
        let model = if i < n {
            "homoscedastic"
        } else {
            "heteroscedastic"
        };
        return Err(Error::invalid(
            "noise",
            format!(
                "the {model} model's validation NLL of row {} is not finite",
                i % n
            ),
        ));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let diff: Vec<f64> = homoscedastic
        .iter()
        .zip(heteroscedastic)
        .map(|(a, b)| a - b)
        .collect();
    let d = mean(&diff);
    let var = diff.iter().map(|x| (x - d) * (x - d)).sum::<f64>() / (n - 1) as f64;
    Ok(NoiseSelection {
        homoscedastic_nll: mean(homoscedastic),
        heteroscedastic_nll: mean(heteroscedastic),
        folds,
        difference_standard_error: (var / n as f64).sqrt(),
    })
}

/// Chooses the sample scale (and, for regression, the noise variance) by validation NLL.
///
/// For each scale of [`SCALE_GRID`](candle_swag::tune::SCALE_GRID), a BMA with `samples` samples (the same seed at every scale,
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
pub(super) fn observation_noise(objective: Objective) -> ObservationNoise {
    match objective {
        Objective::GaussianNll => ObservationNoise::FromModel(crate::train::loss::VARIANCE_LINK),
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
