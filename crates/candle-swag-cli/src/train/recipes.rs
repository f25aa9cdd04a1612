//! The benchmark recipes of `BENCHMARKS.md` (digits classification, its out-of-distribution
//! variant, diabetes regression), shared by `swag demo` and the examples, and scored for the
//! five methods SGD, SWA, SWAG-diag, SWAG and MultiSWAG.
//!
//! Seeds: run `r` (0-based) of seed `s` initialises its weights and shuffles with seed
//! `s + 1000·r`. The single-run methods (SGD, SWA, SWAG-diag, SWAG) use run 0; MultiSWAG uses
//! runs `0..runs`. The BMA noise of seed `s` comes from seed `s` (SWAG-diag, SWAG, MultiSWAG use
//! the same BMA seed).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::method::Method;
use super::run::{
    fit_mlp, regression_validation_nll, training_noise_variance, tune, validation_split, FitConfig,
    FitParams,
};
use super::{Collect, Objective, TrainParams};
use crate::data::{bundled, Dataset, Prepared};
use crate::models::MlpParams;
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{
    self, ClassificationConfig, ClassificationMetrics, UncertaintyDecomposition,
};
use candle_swag::optim::SgdParams;
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{batches, Noise, Predictive, RegressionPrediction};
use candle_swag::swag::MultiSwag;
use candle_swag::swag::SampleParams;

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

/// One method's classification result on one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationOutcome {
    /// The method.
    pub method: Method,
    /// The seed.
    pub seed: u64,
    /// Accuracy, NLL, ECE, Brier, ... on the (in-distribution) test rows.
    pub metrics: ClassificationMetrics,
    /// AUROC of the predictive entropy, OOD positive (OOD variant only).
    pub auroc_entropy: Option<f64>,
    /// BMA probabilities and per-row uncertainty on the test rows.
    pub prediction: UncertaintyDecomposition,
    /// Predictive entropy on the OOD rows (OOD variant only).
    pub ood_entropy: Option<Vec<f64>>,
    /// Test labels (class indices).
    pub labels: Vec<u32>,
}

/// All methods on one seed of the digits recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationSeed {
    /// One entry per method, in [`Method::ALL`] order.
    pub outcomes: Vec<ClassificationOutcome>,
    /// Wall-clock times.
    pub timings: Timings,
}

/// Runs the digits recipe for one seed; with `ood`, trains on labels 0-4 and scores the
/// entropy AUROC against test rows with labels 5-9.
pub fn run_digits(
    seed: u64,
    ood: bool,
    opts: &RecipeConfig,
    device: &Device,
) -> Result<ClassificationSeed> {
    let start = Instant::now();
    let (data, ood_rows): (Prepared, Option<Dataset>) = if ood {
        let d = bundled::digits_ood(device)?;
        (d.in_distribution, Some(d.out_of_distribution))
    } else {
        (bundled::digits(device)?, None)
    };
    let base = digits_spec(data.train.num_features(), data.output_dim(), seed, opts)?;
    let t0 = Instant::now();
    let first = fit_mlp(&data.train, Objective::CrossEntropy, &run_spec(&base, 0)?)?;
    let train_run0 = t0.elapsed().as_secs_f64();
    let mut fitted = vec![first];
    for r in 1..opts.runs.max(1) {
        fitted.push(fit_mlp(
            &data.train,
            Objective::CrossEntropy,
            &run_spec(&base, r)?,
        )?);
    }
    let labels: Vec<u32> = data.test.targets.to_dtype(DType::U32)?.to_vec1()?;
    let mut timings = Timings {
        train_run0,
        ..Timings::default()
    };
    let mut outcomes = Vec::new();
    let multi = MultiSwag::new(fitted.iter().map(|f| &f.posterior).collect())?;
    let run0 = &fitted[0];
    for method in Method::ALL {
        let t = Instant::now();
        let predictive = method.predictive(
            run0,
            &multi,
            BmaParams {
                sample: SampleParams {
                    scale: opts.scale,
                    ..Default::default()
                },
                samples: opts.samples,
                seed,
            }
            .check()?,
        )?;
        let prediction = predictive
            .classify(&run0.model, all_rows(&data.test)?)?
            .to_host()?;
        let ood_entropy = match &ood_rows {
            Some(o) => Some(
                predictive
                    .classify(&run0.model, all_rows(o)?)?
                    .to_host()?
                    .predictive_entropy,
            ),
            None => None,
        };
        let elapsed = t.elapsed().as_secs_f64();
        match method {
            Method::SwagDiag => timings.bma_swag_diag = elapsed,
            Method::Swag => timings.bma_swag = elapsed,
            _ => {}
        }
        let metrics = metrics::classification_metrics(
            &prediction.mean_probs,
            prediction.n_classes,
            &labels,
            &ClassificationConfig::default(),
        )?;
        let auroc_entropy = match &ood_entropy {
            Some(out) => {
                Some(metrics::ood_metrics_in_out(&prediction.predictive_entropy, out)?.auroc)
            }
            None => None,
        };
        outcomes.push(ClassificationOutcome {
            method,
            seed,
            metrics,
            auroc_entropy,
            prediction,
            ood_entropy,
            labels: labels.clone(),
        });
    }
    timings.total = start.elapsed().as_secs_f64();
    Ok(ClassificationSeed { outcomes, timings })
}

/// Every row of `data` as one batch (the recipes' data sets are small).
fn all_rows(
    data: &Dataset,
) -> Result<impl Iterator<Item = candle_core::Result<Tensor>> + Clone + '_> {
    batches(&data.features, data.len().max(1))
}

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
struct RegressionChoice {
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
/// validation NLL ([`super::run::tune`]; SGD and SWA tune the noise only; MultiSWAG takes
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
fn tune_regression(
    train: &Dataset,
    base: &FitConfig,
    opts: &RecipeConfig,
    seed: u64,
) -> Result<Vec<RegressionChoice>> {
    let (fit_rows, val_rows) = validation_split(train.len(), 0.2, seed)?;
    let fit_data = train.select(&fit_rows)?;
    let val = train.select(&val_rows)?;
    let mut spec = run_spec(base, 0)?;
    let label = format!("{} tune", spec.train().label());
    spec = FitParams {
        train: TrainParams {
            label,
            ..spec.train().clone().into()
        },
        ..spec.clone().into()
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
    let noise = |p: &super::run::TunePoint| p.noise_variance.unwrap_or(1.0);
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

/// Mean and population standard deviation (divisor n) of a list of values.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A table column: how to read its value from an outcome, and the digits it is printed with.
type Column<'a, O> = (&'a dyn Fn(&O) -> f64, usize);

/// One Markdown row per method present in `outcomes`, in [`Method::ALL`] order: the method's
/// name, then `mean ± std` (population) over its outcomes of each `(value, digits)` column, or
/// the mean alone when there is one outcome.
fn method_rows<O>(
    outcomes: &[&O],
    method_of: impl Fn(&O) -> Method,
    columns: &[Column<'_, O>],
) -> String {
    let mut out = String::new();
    for method in Method::ALL {
        let rows: Vec<&O> = outcomes
            .iter()
            .copied()
            .filter(|o| method_of(o) == method)
            .collect();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("| {} |", method.display()));
        for (value, digits) in columns {
            let (m, s) = mean_std(&rows.iter().map(|o| value(o)).collect::<Vec<_>>());
            out.push_str(&if rows.len() > 1 {
                format!(" {m:.digits$} ± {s:.digits$} |")
            } else {
                format!(" {m:.digits$} |")
            });
        }
        out.push('\n');
    }
    out
}

/// A markdown table of mean ± std (population) over seeds for each method (the mean alone for a
/// single seed): accuracy, NLL, ECE, Brier, and the entropy AUROC when present.
pub fn classification_table(seeds: &[ClassificationSeed]) -> String {
    let outcomes: Vec<&ClassificationOutcome> = seeds.iter().flat_map(|s| &s.outcomes).collect();
    let with_auroc = outcomes.iter().any(|o| o.auroc_entropy.is_some());
    let mut columns: Vec<Column<'_, ClassificationOutcome>> = vec![
        (&|o| o.metrics.accuracy, 4),
        (&|o| o.metrics.nll, 4),
        (&|o| o.metrics.ece, 4),
        (&|o| o.metrics.brier, 4),
    ];
    let mut out = String::from("| method | accuracy | NLL | ECE | Brier |");
    if with_auroc {
        columns.push((&|o| o.auroc_entropy.unwrap_or(f64::NAN), 4));
        out.push_str(" AUROC(entropy) |\n|---|---|---|---|---|---|\n");
    } else {
        out.push_str("\n|---|---|---|---|---|\n");
    }
    out + &method_rows(&outcomes, |o| o.method, &columns)
}

/// A markdown table of mean ± std (population) over seeds for each method (the mean alone for a
/// single seed): RMSE, NLL, CRPS, PICP95, MPIW95 (original target units).
pub fn regression_table(seeds: &[RegressionSeed]) -> String {
    let outcomes: Vec<&RegressionOutcome> = seeds.iter().flat_map(|s| &s.outcomes).collect();
    let columns: [Column<'_, RegressionOutcome>; 5] = [
        (&|o| o.rmse, 2),
        (&|o| o.nll, 3),
        (&|o| o.crps, 2),
        (&|o| o.picp95, 3),
        (&|o| o.mpiw95, 1),
    ];
    String::from("| method | RMSE | NLL | CRPS | PICP95 | MPIW95 |\n|---|---|---|---|---|---|\n")
        + &method_rows(&outcomes, |o| o.method, &columns)
}

/// One JSON object (a line of `--json` output) for a classification outcome: `method`, `seed`,
/// `acc`, `nll`, `ece`, `brier`, and `auroc_entropy` when present.
pub fn classification_json(o: &ClassificationOutcome) -> serde_json::Value {
    let mut v = serde_json::json!({
        "method": o.method.key(),
        "seed": o.seed,
        "acc": o.metrics.accuracy,
        "nll": o.metrics.nll,
        "ece": o.metrics.ece,
        "brier": o.metrics.brier,
    });
    if let (Some(a), Some(map)) = (o.auroc_entropy, v.as_object_mut()) {
        map.insert("auroc_entropy".into(), serde_json::json!(a));
    }
    v
}

/// One JSON object (a line of `--json` output) for a regression outcome: `method`, `seed`,
/// `rmse`, `nll`, `crps`, `picp95`, `mpiw95`.
pub fn regression_json(o: &RegressionOutcome) -> serde_json::Value {
    serde_json::json!({
        "method": o.method.key(),
        "seed": o.seed,
        "rmse": o.rmse,
        "nll": o.nll,
        "crps": o.crps,
        "picp95": o.picp95,
        "mpiw95": o.mpiw95,
    })
}

/// Lines summarising [`Timings`] over seeds (mean ± population std and minimum, wall-clock
/// seconds; the minimum is the least disturbed by other processes).
pub fn timing_summary(timings: &[Timings]) -> String {
    let stat = |f: &dyn Fn(&Timings) -> f64| mean_std(&timings.iter().map(f).collect::<Vec<_>>());
    let (one, one_sd) = stat(&|t| t.train_run0 + t.bma_swag_diag + t.bma_swag);
    let one_min = timings
        .iter()
        .map(|t| t.train_run0 + t.bma_swag_diag + t.bma_swag)
        .fold(f64::INFINITY, f64::min);
    let (tr, tr_sd) = stat(&|t| t.train_run0);
    let (bd, _) = stat(&|t| t.bma_swag_diag);
    let (bs, _) = stat(&|t| t.bma_swag);
    let (all, _) = stat(&|t| t.total);
    format!(
        "\none seed, one run (training with collections, SWAG-diag and SWAG BMAs): {one:.3} ± {one_sd:.3} s (min {one_min:.3} s)\n\
         \x20 training {tr:.3} ± {tr_sd:.3} s, SWAG-diag BMA {bd:.3} s, SWAG BMA {bs:.3} s\n\
         all runs and methods of a seed: {all:.2} s\n"
    )
}
