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
use candle_swag::optim::{SgdConfig, SgdMomentum};
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
    /// Heteroscedastic Gaussian negative log-likelihood of outputs `[n, 2]` (mean, raw
    /// variance) against f32 targets `[n]` ([`loss::gaussian_nll`], mean over rows).
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
            Objective::GaussianNll => loss::gaussian_nll(outputs, targets)?,
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

/// Settings of one training run, checked when made (like [`candle_swag::SampleConfig`]): the
/// constructor and the `with_*` setters that can fail return `Result`, so [`train`] never
/// checks them again. A config read from a run directory goes through the same checks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "TrainFields")]
pub struct TrainConfig(TrainFields);

/// The settings of a [`TrainConfig`], unchecked: how it is written to and read from a file
/// (a config read back goes through the constructors).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct TrainFields {
    epochs: usize,
    batch_size: usize,
    sgd: SgdConfig,
    swa_start: Option<usize>,
    collect: Collect,
    seed: u64,
    progress: bool,
    label: String,
}

impl TryFrom<TrainFields> for TrainConfig {
    type Error = Error;
    fn try_from(f: TrainFields) -> Result<Self> {
        Ok(TrainConfig::new(f.epochs, f.batch_size, f.sgd)?
            .with_collection(f.swa_start, f.collect)?
            .with_seed(f.seed)
            .with_progress(f.progress)
            .with_label(f.label))
    }
}

impl TrainConfig {
    /// `epochs` (at least 1) of mini-batches of `batch_size` rows (at least 1; the last batch
    /// of an epoch may be smaller), with SGD settings `sgd` (its learning rate is used only
    /// before the first epoch: the schedule sets the rate of each epoch). No collection, seed
    /// 0, progress bar on, label `train`.
    pub fn new(epochs: usize, batch_size: usize, sgd: SgdConfig) -> Result<Self> {
        if epochs == 0 {
            return Err(Error::invalid("epochs", "must be at least 1"));
        }
        if batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        Ok(Self(TrainFields {
            epochs,
            batch_size,
            sgd,
            swa_start: None,
            collect: Collect::EveryEpoch,
            seed: 0,
            progress: true,
            label: "train".to_string(),
        }))
    }

    /// Collects snapshots from epoch `swa_start` (0-based, below `epochs` so that something is
    /// collected) on, as often as `collect` says; `None` disables collection.
    pub fn with_collection(mut self, swa_start: Option<usize>, collect: Collect) -> Result<Self> {
        if let Some(s) = swa_start {
            if s >= self.0.epochs {
                return Err(Error::invalid(
                    "swa_start",
                    format!(
                        "{s} must be below the number of epochs ({}) so that something is collected",
                        self.0.epochs
                    ),
                ));
            }
        }
        if collect == Collect::EverySteps(0) {
            return Err(Error::invalid("collect", "every 0 steps is not a schedule"));
        }
        (self.0.swa_start, self.0.collect) = (swa_start, collect);
        Ok(self)
    }

    /// Seed of the shuffling generator.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }

    /// Shows an indicatif progress bar on stderr (hidden anyway when stderr is not a
    /// terminal).
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.0.progress = progress;
        self
    }

    /// Prefix of the progress bar (e.g. the dataset and run).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.0.label = label.into();
        self
    }

    /// Number of epochs.
    pub fn epochs(&self) -> usize {
        self.0.epochs
    }

    /// Mini-batch size.
    pub fn batch_size(&self) -> usize {
        self.0.batch_size
    }

    /// SGD settings (initial learning rate, momentum, weight decay).
    pub fn sgd(&self) -> SgdConfig {
        self.0.sgd
    }

    /// First epoch at which snapshots are collected, if any.
    pub fn swa_start(&self) -> Option<usize> {
        self.0.swa_start
    }

    /// How often snapshots are collected from `swa_start` on.
    pub fn collect(&self) -> Collect {
        self.0.collect
    }

    /// Seed of the shuffling generator.
    pub fn seed(&self) -> u64 {
        self.0.seed
    }

    /// Whether a progress bar is shown.
    pub fn progress(&self) -> bool {
        self.0.progress
    }

    /// Prefix of the progress bar.
    pub fn label(&self) -> &str {
        &self.0.label
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
                    if steps_since_start % k == 0 {
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
