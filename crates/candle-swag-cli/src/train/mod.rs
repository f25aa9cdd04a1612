//! The training loop used by the CLI, the examples and the demo: mini-batch SGD with momentum
//! ([`SgdMomentum`]), a learning-rate schedule from [`candle_swag::schedule`], seeded shuffling, and
//! SWAG collection along the trajectory.
//!
//! Conventions:
//! - epochs count from 0; the schedule's rate for epoch `e` is set before the first step of `e`;
//! - each epoch visits every row once in an order drawn from a `StdRng` seeded with
//!   [`TrainConfig::seed`] (Fisher-Yates over the previous epoch's order, as one generator
//!   threads through all epochs); the last batch may be smaller (PyTorch's `drop_last=False`);
//! - with [`Collect::EveryEpoch`], a snapshot is collected after the last step of every epoch
//!   `e ≥ swa_start`; with [`Collect::EverySteps`]`(n)`, after every n-th step counted from the
//!   first step of epoch `swa_start`.

pub mod bench_classify;
pub mod demo;
pub mod loss;
pub mod method;
pub mod pipeline;
pub mod recipes;
pub mod run;
pub mod run_report;
pub mod uci;

use std::io::IsTerminal;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::Optimizer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::Dataset;
use candle_swag::error::{Error, Result};
use candle_swag::layout::ParamSet;
use candle_swag::optim::{SgdConfig, SgdMomentum, SgdParams};
use candle_swag::schedule::LrSchedule;
use candle_swag::swag::SwagPosterior;

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Softmax cross-entropy on logits `[n, C]` against u32 class indices `[n]` (mean over rows).
    CrossEntropy,
    /// Mean squared error of outputs `[n, 1]` against f32 targets `[n]` (mean over rows): the
    /// Gaussian log-likelihood with a homoscedastic noise, up to constants.
    MeanSquaredError,
    /// Heteroscedastic Gaussian regression: outputs `[n, 2]` (mean, raw variance) against f32
    /// targets `[n]`, trained with the β-NLL ([`loss::beta_nll`] at [`loss::BETA_NLL`]: each
    /// row's Gaussian NLL weighted by its detached predicted variance; mean over rows), so
    /// the training loss it reports is that weighted NLL.
    GaussianNll,
}

impl Objective {
    /// The mean loss of model outputs against targets.
    pub fn loss(&self, outputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Objective::CrossEntropy => loss::cross_entropy(outputs, targets)?,
            Objective::MeanSquaredError => {
                let pred = outputs.flatten_all()?;
                pred.sub(targets)?.sqr()?.mean_all()?
            }
            Objective::GaussianNll => loss::beta_nll(outputs, targets, loss::BETA_NLL)?,
        })
    }
}

/// When SWAG snapshots are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collect {
    /// At the end of every epoch from `swa_start` on.
    EveryEpoch,
    /// After every n-th optimiser step, counted from the first step of epoch `swa_start`.
    EverySteps(usize),
}

/// The settings of one training run, unchecked (the crate's config shape, see
/// [`candle_swag::swag::config`]); also how a [`TrainConfig`] is written to and read from a
/// run directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainParams {
    /// Number of epochs, at least 1 (50 by default).
    pub epochs: usize,
    /// Rows per mini-batch, at least 1 (32 by default); the last batch of an epoch may be
    /// smaller.
    pub batch_size: usize,
    /// SGD settings; the learning rate is used only before the first epoch: the schedule sets
    /// the rate of each epoch.
    pub sgd: SgdParams,
    /// First epoch (0-based) at which snapshots are collected, below `epochs` so that
    /// something is collected; `None` (the default) disables collection.
    pub swa_start: Option<usize>,
    /// How often snapshots are collected from `swa_start` on (every epoch by default).
    pub collect: Collect,
    /// Seed of the shuffling generator (0 by default).
    pub seed: u64,
    /// Shows an indicatif progress bar on stderr (on by default; hidden anyway when stderr is
    /// not a terminal).
    pub progress: bool,
    /// Prefix of the progress bar, e.g. the dataset and run (`train` by default).
    pub label: String,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 32,
            sgd: SgdParams::default(),
            swa_start: None,
            collect: Collect::EveryEpoch,
            seed: 0,
            progress: true,
            label: "train".to_string(),
        }
    }
}

impl TrainParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<TrainConfig> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        let sgd = self.sgd.check()?;
        if let Some(s) = self.swa_start {
            if s >= self.epochs {
                return Err(Error::invalid(
                    "swa_start",
                    format!(
                        "{s} must be below the number of epochs ({}) so that something is collected",
                        self.epochs
                    ),
                ));
            }
        }
        if self.collect == Collect::EverySteps(0) {
            return Err(Error::invalid("collect", "every 0 steps is not a schedule"));
        }
        Ok(TrainConfig {
            params: self.clone(),
            sgd,
        })
    }
}

/// Settings of one training run (from [`TrainParams::check`]; a config read from a run
/// directory is checked the same way), so [`train`] never checks them again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "TrainParams", into = "TrainParams")]
pub struct TrainConfig {
    params: TrainParams,
    sgd: SgdConfig,
}

impl TryFrom<TrainParams> for TrainConfig {
    type Error = Error;
    fn try_from(params: TrainParams) -> Result<Self> {
        params.check()
    }
}

impl From<TrainConfig> for TrainParams {
    fn from(config: TrainConfig) -> Self {
        config.params
    }
}

impl TrainConfig {
    /// Number of epochs.
    pub fn epochs(&self) -> usize {
        self.params.epochs
    }

    /// Mini-batch size.
    pub fn batch_size(&self) -> usize {
        self.params.batch_size
    }

    /// SGD settings (initial learning rate, momentum, weight decay).
    pub fn sgd(&self) -> SgdConfig {
        self.sgd
    }

    /// First epoch at which snapshots are collected, if any.
    pub fn swa_start(&self) -> Option<usize> {
        self.params.swa_start
    }

    /// How often snapshots are collected from `swa_start` on.
    pub fn collect(&self) -> Collect {
        self.params.collect
    }

    /// Seed of the shuffling generator.
    pub fn seed(&self) -> u64 {
        self.params.seed
    }

    /// Whether a progress bar is shown.
    pub fn progress(&self) -> bool {
        self.params.progress
    }

    /// Prefix of the progress bar.
    pub fn label(&self) -> &str {
        &self.params.label
    }
}

/// Statistics of one epoch, averaged over its mini-batches weighted by batch size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Learning rate used during the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch's rows (computed before each step's update).
    pub loss: f64,
    /// Training accuracy over the epoch's rows (classification only).
    pub accuracy: Option<f64>,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainHistory {
    /// One entry per epoch.
    pub epochs: Vec<EpochStats>,
    /// Snapshots collected into the posterior during this run.
    pub collected: usize,
    /// Optimiser steps taken.
    pub steps: usize,
}

/// A progress bar on stderr showing epoch, loss and accuracy; hidden when `visible` is false or
/// stderr is not a terminal.
pub fn progress_bar(len: u64, label: &str, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} epochs {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

/// Trains `model` on `data`, updating the Vars of `params` with [`SgdMomentum`] and the rate of
/// `schedule`, and collects snapshots of `params` into `posterior` when one is given (see the
/// module docs for the conventions).
///
/// BatchNorm running statistics (not in `params`) are updated by the model's own train-mode
/// forward pass.
pub fn train<M, S>(
    model: &M,
    params: &ParamSet,
    data: &Dataset,
    objective: Objective,
    schedule: &S,
    config: &TrainConfig,
    mut posterior: Option<&mut SwagPosterior>,
) -> Result<TrainHistory>
where
    M: ModuleT + ?Sized,
    S: LrSchedule + ?Sized,
{
    let n = data.len();
    if n == 0 {
        return Err(Error::invalid("data", "no training rows"));
    }
    if posterior.is_some() && config.swa_start().is_none() {
        return Err(Error::invalid(
            "swa_start",
            "a posterior was given but collection is disabled",
        ));
    }
    let device = data.features.device().clone();
    let mut optimizer = SgdMomentum::new(params.vars().to_vec(), config.sgd())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed());
    let mut order: Vec<u32> = (0..n as u32).collect();
    let classify = objective == Objective::CrossEntropy;
    let host_targets: Option<Vec<u32>> = if classify {
        Some(data.targets.to_dtype(DType::U32)?.to_vec1()?)
    } else {
        None
    };
    let bar = progress_bar(config.epochs() as u64, config.label(), config.progress());
    let mut history = TrainHistory {
        epochs: Vec::with_capacity(config.epochs()),
        collected: 0,
        steps: 0,
    };
    let mut steps_since_start = 0usize;
    for epoch in 0..config.epochs() {
        let lr = candle_swag::schedule::apply_lr(&mut optimizer, schedule, epoch as f64);
        order.shuffle(&mut rng);
        let collecting = config.swa_start().is_some_and(|s| epoch >= s);
        let mut loss_sum = 0.0f64;
        let mut correct = 0usize;
        for chunk in order.chunks(config.batch_size()) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let xs = data.features.index_select(&idx, 0)?;
            let ys = data.targets.index_select(&idx, 0)?;
            let out = model.forward_t(&xs, true)?;
            let loss = objective.loss(&out, &ys)?;
            optimizer.backward_step(&loss)?;
            history.steps += 1;
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            if let Some(t) = &host_targets {
                let pred: Vec<u32> = out.argmax(1)?.to_vec1()?;
                correct += pred
                    .iter()
                    .zip(chunk)
                    .filter(|(p, &i)| **p == t[i as usize])
                    .count();
            }
            if collecting {
                steps_since_start += 1;
                if let (Collect::EverySteps(k), Some(p)) = (config.collect(), posterior.as_mut()) {
                    if steps_since_start.is_multiple_of(k) {
                        p.collect(params)?;
                        history.collected += 1;
                    }
                }
            }
        }
        if collecting && config.collect() == Collect::EveryEpoch {
            if let Some(p) = posterior.as_mut() {
                p.collect(params)?;
                history.collected += 1;
            }
        }
        let loss = loss_sum / n as f64;
        if !loss.is_finite() {
            return Err(Error::Diverged { epoch, loss });
        }
        let accuracy = host_targets.as_ref().map(|_| correct as f64 / n as f64);
        history.epochs.push(EpochStats {
            epoch,
            lr,
            loss,
            accuracy,
        });
        bar.set_message(match accuracy {
            Some(a) => format!("loss {loss:.4}  acc {a:.3}  lr {lr:.4}"),
            None => format!("loss {loss:.4}  lr {lr:.4}"),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(history)
}
