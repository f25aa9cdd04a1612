//! Fitting a CSV file

use crate::data::{load_csv, prepare, CsvParams, Dataset, FeatureScaling, TaskKind};
use crate::models::MlpParams;
use crate::train::run::{
    cross_validation_folds, fit_mlp, save_run, swag_at_scale, training_noise_variance, tune,
    validation_split, with_refresh, CalibrationRows, DecayTuning, FitConfig, FitParams, Fitted,
    NoiseModel, NoiseSelection, RunConfig, RUN_FORMAT_VERSION,
};
use crate::train::{Collect, Objective, TrainParams};
use candle_core::{Device, Tensor};
use candle_swag::error::{Error, Result};
use candle_swag::metrics::{gaussian_nll, MIN_CALIBRATION_ROWS};
use candle_swag::optim::SgdParams;
use candle_swag::predictive::BmaParams;
use candle_swag::predictive::{batches, Noise, Predictive, RegressionPrediction};
use candle_swag::swag::SampleParams;
use candle_swag::tune::Tuned;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The options of [`fit_csv`] (the flags of `swag fit`), unchecked (the crate's config shape,
/// see [`candle_swag::swag::config`]); [`CsvFitParams::new`] gives the defaults for a file.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvFitParams {
    /// The training file.
    pub data: PathBuf,
    /// Target column.
    pub target: String,
    /// Classification or regression.
    pub task: TaskKind,
    /// Optional `train`/`test` column: only `train` rows are used for fitting.
    pub split_column: Option<String>,
    /// Columns to drop (identifiers, free text).
    pub ignore: Vec<String>,
    /// Text feature columns to one-hot encode (categories: those of the training file).
    pub categorical: Vec<String>,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// BatchNorm after each hidden layer.
    pub batchnorm: bool,
    /// Epochs.
    pub epochs: usize,
    /// First collection epoch; `None` means `epochs / 2`.
    pub swa_start: Option<usize>,
    /// Collect every N steps instead of every epoch.
    pub collect_every_steps: Option<usize>,
    /// K, deviation columns kept.
    pub rank: usize,
    /// Learning rate before `swa_start`.
    pub lr: f64,
    /// Learning rate from `swa_start` on.
    pub swa_lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay, or [`WeightDecay::Auto`]: chosen by cross-validation (the default for
    /// classification, see [`default_weight_decay`]; with `tune` off, use
    /// `default_weight_decay(task, false)`).
    pub weight_decay: WeightDecay,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Seed of the initial weights and of the shuffling.
    pub seed: u64,
    /// Choose the sample scale (and, for regression, the noise variance) on a validation split
    /// of [`TUNE_VALIDATION_FRACTION`] of the training rows (and with [`NoiseChoice::Auto`] the
    /// noise model by cross-validation), then train the final run on all of them. On by default: the untuned scale 0.5 and the training-residual noise variance of
    /// an over-fitting network give intervals far too narrow (README, "Calibration sections").
    pub tune: bool,
    /// Samples per BMA while tuning.
    pub samples: usize,
    /// Show progress bars.
    pub progress: bool,
    /// Hold this fraction of the training rows out of fitting, for split-conformal
    /// calibration at predict time (`None`: fit on every training row).
    pub calibrate_fraction: Option<f64>,
    /// The regression noise model, or [`NoiseChoice::Auto`] (the default): the one chosen by
    /// cross-validation. `Auto` needs `tune` (with `tune` off, use
    /// [`NoiseChoice::default_for`]`(false)`). Classification accepts `Auto` and homoscedastic
    /// (both mean nothing there) and refuses heteroscedastic.
    pub noise: NoiseChoice,
}

/// The fraction of the training rows held out to tune on (when [`CsvFitParams::tune`]).
pub const TUNE_VALIDATION_FRACTION: f64 = 0.2;

/// The folds of the cross-validation that [`NoiseChoice::Auto`] chooses the noise model by
/// (`1 / TUNE_VALIDATION_FRACTION`, so its first fold is the tuning split).
pub const NOISE_CV_FOLDS: usize = 5;

/// The noise model `swag fit` trains with (`--noise`).
///
/// `Auto` is the default when tuning ([`NoiseChoice::default_for`]): over the 10 splits of
/// `swag bench-uci --fit` it landed within 0.02 nats of test log-likelihood of the better of
/// the two fixed models on each of the README's three tables (0.005 behind on diabetes, 0.019
/// on cars, 0.005 ahead on Engel), where always-homoscedastic noise trailed by 0.08 (cars) and
/// 0.23 (Engel) (README, "Defaults of swag fit, measured"). It trains each model five times,
/// so fitting takes about five times longer than with a fixed model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseChoice {
    /// Compare both models by [`NOISE_CV_FOLDS`]-fold cross-validation of the training rows:
    /// each is trained on the other folds, and each fold is scored in halves, each half at the
    /// scale (and noise variance) tuned on the other half. Heteroscedastic noise is kept only
    /// when its NLL is lower by more than one standard error of the per-row difference
    /// ([`NoiseSelection::chosen`]). The kept model's scale (and noise variance) are its
    /// folds' tunings pooled ([`Tuned::pooled`]: every training row validated once, where a
    /// fixed model tunes on the first fold only), and it is trained on all rows. Needs tuning
    /// and at least `4 · NOISE_CV_FOLDS` training rows.
    Auto,
    /// Always this model.
    Fixed(NoiseModel),
}

impl NoiseChoice {
    /// The default: [`NoiseChoice::Auto`] when tuning, homoscedastic noise without (there is
    /// no validation part to choose on; the reference recipe).
    pub fn default_for(tune: bool) -> Self {
        if tune {
            NoiseChoice::Auto
        } else {
            NoiseChoice::Fixed(NoiseModel::Homoscedastic)
        }
    }
}

impl CsvFitParams {
    /// Defaults for a file and target: hidden 128,128, no BatchNorm, 50 epochs, collection from
    /// epoch 25 each epoch, K = 20, lr = swa_lr = [`default_lr`] (0.05 classification, 0.01
    /// regression), momentum 0.9, weight decay [`default_weight_decay`] (chosen on validation
    /// for classification, 5e-4 for regression), batch 32, seed 0, tuning on (30 samples per
    /// tuning BMA), noise [`NoiseChoice::Auto`], progress bars on, no calibration rows.
    pub fn new(data: impl Into<PathBuf>, target: impl Into<String>, task: TaskKind) -> Self {
        Self {
            data: data.into(),
            target: target.into(),
            task,
            split_column: None,
            ignore: Vec::new(),
            categorical: Vec::new(),
            hidden: vec![128, 128],
            batchnorm: false,
            epochs: 50,
            swa_start: None,
            collect_every_steps: None,
            rank: 20,
            lr: default_lr(task),
            swa_lr: default_lr(task),
            momentum: 0.9,
            weight_decay: default_weight_decay(task, true),
            batch_size: 32,
            seed: 0,
            tune: true,
            samples: 30,
            progress: true,
            calibrate_fraction: None,
            noise: NoiseChoice::Auto,
        }
    }

    /// The checked options; the error names the option. The network and training settings
    /// are checked again, with the data's shape, when the run is built.
    pub fn check(&self) -> Result<CsvFitConfig> {
        check_noise_choice(self)?;
        check_weight_decay_choice(self)?;
        for (name, lr) in [("lr", self.lr), ("swa_lr", self.swa_lr)] {
            SgdParams {
                lr,
                momentum: self.momentum,
                weight_decay: match self.weight_decay {
                    WeightDecay::Fixed(w) => w,
                    WeightDecay::Auto => 0.0,
                },
            }
            .check()
            .map_err(|e| match e {
                Error::InvalidArgument { name: n, reason } if n == "lr" => {
                    Error::invalid(name, reason)
                }
                other => other,
            })?;
        }
        if self.samples == 0 {
            return Err(Error::invalid("samples", "must be at least 1"));
        }
        if let Some(f) = self.calibrate_fraction {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::invalid(
                    "calibrate-fraction",
                    format!("{f} is not in (0, 1)"),
                ));
            }
        }
        Ok(CsvFitConfig(self.clone()))
    }
}

/// Checked options of [`fit_csv`] (from [`CsvFitParams::check`]); read them through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvFitConfig(CsvFitParams);

impl std::ops::Deref for CsvFitConfig {
    type Target = CsvFitParams;
    fn deref(&self) -> &CsvFitParams {
        &self.0
    }
}

/// The default learning rate of a task (before and during collection): 0.05 for
/// classification; 0.01 for regression, where 0.05 made the 128-128 network unstable on the
/// car table (test RMSE 7.7 ± 3.0 mpg over 10 splits against 2.7 ± 0.1 at 0.01, and
/// heteroscedastic fits that diverge to NaN) and over-fit diabetes (test LL −5.62 against
/// −5.57); README, "Defaults of swag fit, measured".
pub fn default_lr(task: TaskKind) -> f64 {
    match task {
        TaskKind::Classification => 0.05,
        TaskKind::Regression => 0.01,
    }
}

/// The weight decays [`WeightDecay::Auto`] compares, weakest first: the old fixed default
/// (5e-4), and the values the small tables of `swag bench-classify` did best with (breast
/// cancer 1e-2, wine 5e-3, digits 5e-4–3e-3; 3e-2 was worse on all three small tables).
pub const WEIGHT_DECAY_GRID: [f64; 3] = [5e-4, 3e-3, 1e-2];

/// The L2 weight decay `swag fit` trains with (`--weight-decay`).
///
/// `Auto` is classification's default ([`default_weight_decay`]). With the old fixed 5e-4 the
/// 128-128 network memorised small tables (training loss 0.001) and lost to a scaled logistic
/// regression in test NLL: over 10 stratified 75/25 splits of `swag bench-classify`, breast
/// cancer 0.137 ± 0.027 against 0.078 ± 0.008; with `Auto` 0.074 ± 0.008 (wine 0.071 → 0.063
/// against 0.059, iris 0.124 → 0.108 against 0.160, digits 0.074 → 0.079 against 0.103). No
/// fixed decay did as well on every table, and choosing on the one 20% tuning split instead
/// of five folds lost 0.006–0.009 on wine and breast cancer (guide chapter 3, "Defaults on
/// small classification tables, measured").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightDecay {
    /// Each decay of [`WEIGHT_DECAY_GRID`] trained on the [`NOISE_CV_FOLDS`] cross-validation
    /// folds of the training rows, each fold's sample scale tuned on its validation part and the
    /// folds' tunings pooled ([`Tuned::pooled`]); the decay (and pooled scale) of the lowest
    /// pooled validation NLL is kept (the first on ties) and the final run trained with it on
    /// every row: 16 trainings instead of 2. With fewer than `4 · NOISE_CV_FOLDS` training rows,
    /// the weakest decay on the one tuning split. Needs tuning and one noise model (not
    /// `--noise auto`).
    Auto,
    /// Always this decay.
    Fixed(f64),
}

/// The default weight decay of a task, with or without tuning: [`WeightDecay::Auto`] for
/// classification when tuning; otherwise 5e-4 (regression: the decay the `swag bench-uci
/// --fit` figures of the guide's chapter 5 were measured with; classification without tuning:
/// there is no validation part to choose on, and 5e-4 was the default before `Auto`).
pub fn default_weight_decay(task: TaskKind, tune: bool) -> WeightDecay {
    match (task, tune) {
        (TaskKind::Classification, true) => WeightDecay::Auto,
        _ => WeightDecay::Fixed(5e-4),
    }
}

/// Refuses a weight decay that cannot be fitted: [`WeightDecay::Auto`] without tuning or with
/// two noise models to compare, and a fixed decay that is negative or not finite.
fn check_weight_decay_choice(opts: &CsvFitParams) -> Result<()> {
    match opts.weight_decay {
        WeightDecay::Auto if !opts.tune => Err(Error::invalid(
            "weight-decay",
            "auto chooses the weight decay on a validation split, which --no-tune skips; \
             pass a number with --no-tune",
        )),
        WeightDecay::Auto
            if opts.task == TaskKind::Regression && opts.noise == NoiseChoice::Auto =>
        {
            Err(Error::invalid(
                "weight-decay",
                "auto is not combined with --noise auto (both would be chosen on the same \
                 folds); pass a number, or a fixed --noise",
            ))
        }
        WeightDecay::Fixed(w) if !(w.is_finite() && w >= 0.0) => Err(Error::invalid(
            "weight-decay",
            format!("{w} is not a non-negative number"),
        )),
        _ => Ok(()),
    }
}

/// What [`fit_csv`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// The run's saved configuration.
    pub config: RunConfig,
    /// Training rows used.
    pub train_rows: usize,
    /// Snapshots collected.
    pub collected: usize,
}

impl FitSummary {
    /// A few human-readable lines.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let last = c.history.epochs.last();
        let _ = writeln!(
            s,
            "trained MLP {} on {} rows for {} epochs; {} SWAG snapshots (K = {})",
            c.fit
                .mlp()
                .widths()
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("-"),
            self.train_rows,
            c.history.epochs.len(),
            self.collected,
            c.fit.rank()
        );
        if let Some(e) = last {
            let _ = write!(s, "final training loss {:.4}", e.loss);
            if let Some(a) = e.accuracy {
                let _ = write!(s, ", accuracy {a:.4}");
            }
            s.push('\n');
        }
        if c.task == TaskKind::Regression {
            let _ = write!(s, "noise model: {}", c.noise.name());
            match &c.noise_selection {
                Some(sel) => {
                    let _ = writeln!(
                        s,
                        " (chosen by --noise auto: {}-fold validation NLL {:.4} homoscedastic, \
                         {:.4} heteroscedastic)",
                        sel.folds, sel.homoscedastic_nll, sel.heteroscedastic_nll
                    );
                }
                None => s.push('\n'),
            }
        }
        if let Some(sel) = &c.weight_decay_selection {
            let _ = writeln!(
                s,
                "weight decay {} (chosen by --weight-decay auto, {NOISE_CV_FOLDS}-fold validation \
                 NLL: {})",
                c.fit.train().sgd().weight_decay(),
                sel.iter()
                    .map(|d| format!("{} {:.4}", d.weight_decay, d.nll))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = write!(s, "default sample scale {}", c.scale);
        if let (Some(nv), Some(ts)) = (c.noise_variance, &c.target_scaler) {
            let _ = write!(s, ", noise std {:.4} (target units)", nv.sqrt() * ts.std[0]);
        }
        match (&c.tuned, c.validation_rows) {
            (Some(t), Some(rows)) => {
                let on = match (&c.noise_selection, &c.weight_decay_selection) {
                    (Some(sel), _) => format!(
                        "{} cross-validation folds of {rows} training rows",
                        sel.folds
                    ),
                    (None, Some(_)) => {
                        format!("{NOISE_CV_FOLDS} cross-validation folds of {rows} training rows")
                    }
                    (None, None) => format!("a validation split of {rows} training rows"),
                };
                let _ = write!(
                    s,
                    " (tuned on {on}, validation NLL {:.4}; --no-tune skips this)",
                    t.best.nll
                );
            }
            (Some(_), None) => s.push_str(" (tuned on a validation split)"),
            (None, _) => s.push_str(" (not tuned: --no-tune)"),
        }
        s.push('\n');
        if let Some(cal) = &c.calibration {
            let _ = writeln!(
                s,
                "{} training rows ({}) held out for conformal calibration (swag predict --coverage)",
                cal.targets.len(),
                cal.fraction
            );
        }
        s
    }
}

/// Trains on a CSV file and writes the run directory `out` atomically.
///
/// The model is fitted by [`fit_dataset`] on the training rows (less the calibration rows);
/// what it chose on validation is saved in the run's `config.json` (`scale`, `tuned`,
/// `noise`, `noise_variance`, `noise_selection`, `validation_rows`).
pub fn fit_csv(opts: &CsvFitConfig, out: impl AsRef<Path>, device: &Device) -> Result<FitSummary> {
    let data = load_csv(
        &opts.data,
        &CsvParams {
            target: opts.target.clone(),
            split_column: opts.split_column.clone(),
            task: opts.task,
            ignore: opts.ignore.clone(),
            categorical: opts.categorical.clone(),
        }
        .check()?,
    )?;
    let prepared = prepare(&data, FeatureScaling::Standardize, device)?;
    let (train, calibration) = match opts.calibrate_fraction {
        None => (prepared.train.clone(), None),
        Some(f) => hold_out_calibration(&prepared.train, f, opts.seed)?,
    };
    let fit = fit_dataset(opts, &train, prepared.output_dim())?;
    let config = RunConfig {
        format_version: RUN_FORMAT_VERSION,
        task: opts.task,
        target: opts.target.clone(),
        feature_names: prepared.feature_names.clone(),
        feature_columns: data.columns.clone(),
        class_labels: prepared.class_labels.clone(),
        feature_scaler: prepared.feature_scaler.clone(),
        target_scaler: prepared.target_scaler.clone(),
        fit: fit.fitted.spec.clone(),
        noise_variance: fit.noise_variance,
        scale: fit.scale,
        tuned: fit.tuned,
        history: fit.fitted.history.clone(),
        calibration,
        noise: fit.noise,
        noise_selection: fit.noise_selection,
        validation_rows: fit.validation_rows,
        weight_decay_selection: fit.weight_decay_selection,
    };
    save_run(out, &config, &fit.fitted, &train.features)?;
    Ok(FitSummary {
        train_rows: train.len(),
        collected: fit.fitted.history.collected,
        config,
    })
}

/// Refuses the noise settings that cannot be fitted, before any data is read or trained:
/// heteroscedastic classification, and `Auto` without tuning (it chooses on validation).
pub(super) fn check_noise_choice(opts: &CsvFitParams) -> Result<()> {
    match (opts.task, opts.noise) {
        (TaskKind::Classification, NoiseChoice::Fixed(NoiseModel::Heteroscedastic)) => {
            Err(Error::invalid(
                "noise",
                "heteroscedastic noise is a regression model; drop --noise for classification",
            ))
        }
        (TaskKind::Regression, NoiseChoice::Auto) if !opts.tune => Err(Error::invalid(
            "noise",
            "--noise auto chooses the noise model on a validation split, which --no-tune skips; \
             pass --noise homoscedastic or --noise heteroscedastic with --no-tune",
        )),
        _ => Ok(()),
    }
}

/// A model fitted by [`fit_dataset`], with what it chose on validation.
#[derive(Debug)]
pub struct DatasetFit {
    /// The final model, trained on every row given.
    pub fitted: Fitted,
    /// Its noise model (homoscedastic for classification, where it means nothing).
    pub noise: NoiseModel,
    /// Homoscedastic noise variance, standardised units (regression, homoscedastic only).
    pub noise_variance: Option<f64>,
    /// The default sample scale: tuned, or 0.5 without tuning.
    pub scale: f64,
    /// The tuning result of the chosen noise model (`None` without tuning).
    pub tuned: Option<Tuned>,
    /// How [`NoiseChoice::Auto`] chose, on a regression.
    pub noise_selection: Option<NoiseSelection>,
    /// The number of validation rows tuned on: every training row with cross-validation
    /// (`None` without tuning).
    pub validation_rows: Option<usize>,
    /// How [`WeightDecay::Auto`] chose (`None` with a fixed decay).
    pub weight_decay_selection: Option<Vec<DecayTuning>>,
}

impl DatasetFit {
    /// The SWAG BMA of a regression fit on `data` (standardised units) at the fit's scale and
    /// noise, `samples` samples from `seed`; `train_inputs` refresh BatchNorm statistics.
    pub fn regress(
        &self,
        data: &Dataset,
        train_inputs: &Tensor,
        samples: usize,
        seed: u64,
    ) -> Result<RegressionPrediction> {
        let noise = regression_noise(self.noise, self.noise_variance)?;
        regress_at(
            &self.fitted,
            noise,
            self.scale,
            data,
            train_inputs,
            samples,
            seed,
        )
    }
}

/// The predictive noise of a regression fit with `noise` (and its tuned variance when
/// homoscedastic).
fn regression_noise(noise: NoiseModel, noise_variance: Option<f64>) -> Result<Noise> {
    match (noise, noise_variance) {
        (NoiseModel::Heteroscedastic, _) => {
            Ok(Noise::Heteroscedastic(crate::train::loss::VARIANCE_LINK))
        }
        (NoiseModel::Homoscedastic, Some(variance)) => Ok(Noise::Homoscedastic { variance }),
        (NoiseModel::Homoscedastic, None) => {
            Err(Error::invalid("noise", "a classification fit has no noise"))
        }
    }
}

/// The SWAG BMA of `fitted` on `data` at `scale` with `noise` ([`DatasetFit::regress`]).
fn regress_at(
    fitted: &Fitted,
    noise: Noise,
    scale: f64,
    data: &Dataset,
    train_inputs: &Tensor,
    samples: usize,
    seed: u64,
) -> Result<RegressionPrediction> {
    let refresh = fitted.refresh(train_inputs)?;
    let predictive = with_refresh(
        swag_at_scale(
            &fitted.params,
            &fitted.posterior,
            BmaParams {
                sample: SampleParams {
                    scale,
                    ..Default::default()
                },
                samples,
                seed,
            }
            .check()?,
        )?,
        &refresh,
    );
    predictive
        .regress(
            &fitted.model,
            batches(&data.features, data.len().max(1))?,
            noise,
        )?
        .to_host()
}

/// What tuning gathers of one candidate (noise model and weight decay): its tuning on each
/// validation fold (with the fold's row count) and, when two noise models are compared, its
/// cross-fitted NLL on every row.
struct CandidateFolds {
    noise: NoiseModel,
    weight_decay: f64,
    tunings: Vec<(Tuned, usize)>,
    row_nlls: Vec<f64>,
}

/// `rows` split in two by alternate positions (the first half takes positions 0, 2, 4, …).
fn halves(rows: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let first = rows.iter().step_by(2).copied().collect();
    let second = rows.iter().skip(1).step_by(2).copied().collect();
    (first, second)
}

/// Each row's Gaussian NLL (standardised units) of `prediction` on `data`'s targets: what
/// [`NoiseChoice::Auto`] compares the two noise models by.
fn row_nlls(prediction: &RegressionPrediction, data: &Dataset) -> Result<Vec<f64>> {
    let y: Vec<f64> = data.targets.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    let std = prediction.std();
    (0..y.len())
        .map(|i| gaussian_nll(&prediction.mean[i..i + 1], &std[i..i + 1], &y[i..i + 1]))
        .collect()
}

/// Fits the MLP of `opts` on `train` (standardised; `output_dim` classes, or 1 for a
/// regression), choosing on validation first when `opts.tune`: a seeded
/// [`TUNE_VALIDATION_FRACTION`] of the rows is held out, the noise model is trained on the rest
/// and tuned by [`tune`] (scale, and for a homoscedastic model its noise variance), then
/// trained again on every row. With [`NoiseChoice::Auto`] both noise models are compared by
/// cross-validation instead (its docs; the first fold is that same held-out part), and the
/// kept one is tuned on all folds; with [`WeightDecay::Auto`] the decays of
/// [`WEIGHT_DECAY_GRID`] are compared by the same cross-validation (each decay's folds' tunings
/// pooled, the lowest pooled NLL kept), or with fewer than `4 · NOISE_CV_FOLDS` rows the
/// weakest decay is used on the one split. Without
/// tuning the scale is 0.5 and the homoscedastic noise variance the training residual of the
/// SWA mean (the reference recipe). The file and column fields of `opts` are not read.
pub fn fit_dataset(opts: &CsvFitConfig, train: &Dataset, output_dim: usize) -> Result<DatasetFit> {
    let noises: Vec<NoiseModel> = match (opts.task, opts.noise) {
        (TaskKind::Classification, _) => vec![NoiseModel::Homoscedastic],
        (TaskKind::Regression, NoiseChoice::Fixed(m)) => vec![m],
        (TaskKind::Regression, NoiseChoice::Auto) => {
            vec![NoiseModel::Homoscedastic, NoiseModel::Heteroscedastic]
        }
    };
    // `check` refuses Auto with two noise models or without tuning; too few rows for its
    // cross-validation fall back to the weakest decay of the grid.
    let decays: Vec<f64> = match opts.weight_decay {
        WeightDecay::Fixed(w) => vec![w],
        WeightDecay::Auto if train.len() < 4 * NOISE_CV_FOLDS => vec![WEIGHT_DECAY_GRID[0]],
        WeightDecay::Auto => WEIGHT_DECAY_GRID.to_vec(),
    };
    let candidates: Vec<(NoiseModel, f64)> = noises
        .iter()
        .flat_map(|&n| decays.iter().map(move |&w| (n, w)))
        .collect();
    let objective = |noise: NoiseModel| match noise {
        NoiseModel::Heteroscedastic => Objective::GaussianNll,
        NoiseModel::Homoscedastic => FitConfig::objective(opts.task),
    };
    let spec = |noise: NoiseModel, weight_decay: f64, label: String| -> Result<FitConfig> {
        let outputs = match noise {
            NoiseModel::Heteroscedastic => 2,
            NoiseModel::Homoscedastic => output_dim,
        };
        FitParams {
            mlp: MlpParams {
                input_dim: train.num_features(),
                hidden: opts.hidden.clone(),
                output_dim: outputs,
                batchnorm: opts.batchnorm,
            },
            train: TrainParams {
                epochs: opts.epochs,
                batch_size: opts.batch_size,
                sgd: SgdParams {
                    lr: opts.lr,
                    momentum: opts.momentum,
                    weight_decay,
                },
                swa_start: Some(opts.swa_start.unwrap_or(opts.epochs / 2)),
                collect: opts
                    .collect_every_steps
                    .map_or(Collect::EveryEpoch, Collect::EverySteps),
                seed: opts.seed,
                progress: opts.progress,
                label,
            },
            swa_lr: opts.swa_lr,
            rank: opts.rank,
            init_seed: opts.seed,
        }
        .check()
    };
    let (mut noise, mut weight_decay) = candidates[0];
    let (mut tuned, mut validation_rows) = (None, None);
    let (mut noise_selection, mut weight_decay_selection) = (None, None);
    if opts.tune {
        // One candidate: the one validation split. Two noise models or several weight decays:
        // cross-validation (fold 0 is that same split), which also tunes the chosen candidate
        // on every fold.
        let folds = if candidates.len() > 1 {
            // Each fold is tuned and scored in halves of at least 2 rows.
            let min_rows = 4 * NOISE_CV_FOLDS;
            if train.len() < min_rows {
                return Err(Error::invalid(
                    "noise",
                    format!(
                        "--noise auto compares the noise models by {NOISE_CV_FOLDS}-fold \
                         cross-validation and needs at least {min_rows} training rows, got {}",
                        train.len()
                    ),
                ));
            }
            cross_validation_folds(train.len(), NOISE_CV_FOLDS, opts.seed)?
        } else {
            vec![validation_split(
                train.len(),
                TUNE_VALIDATION_FRACTION,
                opts.seed,
            )?]
        };
        // Per candidate: its tuning on each fold (on the one split, with one candidate), and
        // (comparing two) its cross-fitted NLL on every row.
        let compare = noises.len() > 1;
        let mut results: Vec<CandidateFolds> = candidates
            .iter()
            .map(|&(noise, weight_decay)| CandidateFolds {
                noise,
                weight_decay,
                tunings: Vec::new(),
                row_nlls: Vec::new(),
            })
            .collect();
        for (f, (fit_rows, val_rows)) in folds.iter().enumerate() {
            let fit_data = train.select(fit_rows)?;
            let val = train.select(val_rows)?;
            for CandidateFolds {
                noise: candidate,
                weight_decay: decay,
                tunings,
                row_nlls,
            } in results.iter_mut()
            {
                let label = match (folds.len(), decays.len()) {
                    (1, 1) => format!("tune {}", candidate.name()),
                    (1, _) => format!("tune weight decay {decay}"),
                    (k, _) => format!("tune {} fold {}/{k}", candidate.name(), f + 1),
                };
                let fitted = fit_mlp(
                    &fit_data,
                    objective(*candidate),
                    &spec(*candidate, *decay, label)?,
                )?;
                let tune_on = |rows: &Dataset| {
                    tune(
                        &fitted,
                        &fit_data.features,
                        rows,
                        objective(*candidate),
                        opts.samples,
                        false,
                        opts.seed,
                    )
                };
                if compare {
                    // Cross-fitted: each half of the fold is scored at the scale (and noise
                    // variance) tuned on the other half, as the final model is scored on rows
                    // it was not tuned on; scoring the rows tuned on would favour the
                    // homoscedastic model, whose noise variance is tuned too.
                    let (first, second) = halves(val_rows);
                    let (first, second) = (train.select(&first)?, train.select(&second)?);
                    for (tune_part, score_part) in [(&first, &second), (&second, &first)] {
                        let t = tune_on(tune_part)?;
                        let prediction = regress_at(
                            &fitted,
                            regression_noise(*candidate, t.best.noise_variance)?,
                            t.best.scale,
                            score_part,
                            &fit_data.features,
                            opts.samples,
                            opts.seed,
                        )?;
                        row_nlls.extend(self::row_nlls(&prediction, score_part)?);
                    }
                }
                if f == 0 || folds.len() > 1 {
                    tunings.push((tune_on(&val)?, val_rows.len()));
                }
            }
        }
        let kept = if compare {
            let [homo, hetero] = results.as_slice() else {
                return Err(Error::invalid("noise", "two noise models to compare"));
            };
            let selection =
                crate::train::run::noise_selection(&homo.row_nlls, &hetero.row_nlls, folds.len())?;
            noise_selection = Some(selection);
            results.into_iter().find(|r| r.noise == selection.chosen())
        } else {
            // One validation split: the candidate (weight decay) of the lowest validation NLL
            // at its tuned scale, the first on ties.
            let mut pooled = Vec::new();
            for r in &results {
                let t = Tuned::pooled(&r.tunings)?;
                pooled.push(DecayTuning {
                    weight_decay: r.weight_decay,
                    scale: t.best.scale,
                    nll: t.best.nll,
                });
            }
            let best = pooled
                .iter()
                .enumerate()
                .fold(0, |b, (i, d)| if d.nll < pooled[b].nll { i } else { b });
            if results.len() > 1 {
                weight_decay_selection = Some(pooled);
            }
            results.into_iter().nth(best)
        }
        .ok_or_else(|| Error::invalid("noise", "no noise model to fit"))?;
        // One fold: its tuning. Cross-validation: the folds' tunings pooled (every training row
        // validated once), a better-founded choice than the first fold's alone.
        noise = kept.noise;
        weight_decay = kept.weight_decay;
        tuned = Some(Tuned::pooled(&kept.tunings)?);
        validation_rows = Some(kept.tunings.iter().map(|(_, rows)| rows).sum());
    }
    let fitted = fit_mlp(
        train,
        objective(noise),
        &spec(noise, weight_decay, "fit".to_string())?,
    )?;
    let noise_variance = match (opts.task, noise, &tuned) {
        (TaskKind::Classification, ..) => None,
        (TaskKind::Regression, NoiseModel::Heteroscedastic, _) => None,
        (TaskKind::Regression, NoiseModel::Homoscedastic, Some(t)) => t.best.noise_variance,
        (TaskKind::Regression, NoiseModel::Homoscedastic, None) => Some(training_noise_variance(
            &fitted,
            train,
            Predictive::swa(&fitted.params, &fitted.posterior)?,
        )?),
    };
    Ok(DatasetFit {
        scale: tuned.as_ref().map_or(0.5, |t| t.best.scale),
        fitted,
        noise,
        noise_variance,
        tuned,
        noise_selection,
        validation_rows,
        weight_decay_selection,
    })
}

/// Splits `fraction` of the training rows off for conformal calibration (seeded shuffle, as
/// [`validation_split`]); refuses a fraction outside `(0, 1)` or one leaving fewer than
/// [`MIN_CALIBRATION_ROWS`] calibration rows (or fewer than 2 rows to fit).
pub(super) fn hold_out_calibration(
    train: &Dataset,
    fraction: f64,
    seed: u64,
) -> Result<(Dataset, Option<CalibrationRows>)> {
    let n = train.len();
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "calibrate-fraction",
            format!("{fraction} is not in (0, 1)"),
        ));
    }
    let n_cal = (fraction * n as f64).round() as usize;
    if n_cal < MIN_CALIBRATION_ROWS || n_cal + 2 > n {
        return Err(Error::invalid(
            "calibrate-fraction",
            format!(
                "{fraction} of {n} training rows leaves {n_cal} calibration rows and {} to fit; \
                 conformal calibration needs at least {MIN_CALIBRATION_ROWS} (and 2 to fit)",
                n.saturating_sub(n_cal)
            ),
        ));
    }
    // A different stream from the tuning split's, so the two hold-outs are not the same rows.
    let (fit_rows, cal_rows) = validation_split(n, fraction, seed ^ 0xC0FF_EE00)?;
    let cal = train.select(&cal_rows)?;
    let features: Vec<f32> = cal.features.flatten_all()?.to_vec1()?;
    let targets: Vec<f64> = cal.targets.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    Ok((
        train.select(&fit_rows)?,
        Some(CalibrationRows {
            fraction,
            features,
            targets,
        }),
    ))
}
