//! BatchNorm with a cumulative-average mode, and the BatchNorm refresh that SWA and SWAG need.
//!
//! A weight sample (or the SWA mean) is a new network: the running statistics that the
//! BatchNorm layers accumulated during training belong to other weights and must be recomputed
//! before predicting. torch does this with `torch.optim.swa_utils.update_bn`, which switches every
//! BatchNorm to `momentum=None` (an exact equal-weight average over batches) and runs one pass
//! over the data. candle-nn's `BatchNorm` has a private, fixed momentum and no cumulative mode,
//! so this module has its own layer, [`BatchNorm`], with the **same variable names** as
//! candle-nn's (`<prefix>.weight`, `<prefix>.bias`, `<prefix>.running_mean`,
//! `<prefix>.running_var`): checkpoints written with one load into the other.
//!
//! Conventions (those of torch's `BatchNorm1d/2d`):
//! - Input `[N, C]` or `[N, C, d1, d2, ...]`; statistics are taken per channel `C` over all
//!   other dimensions, i.e. over `n = numel / C` values.
//! - Training mode normalises with the batch mean and the **biased** batch variance (divisor `n`)
//!   and updates the running statistics with the batch mean and the **unbiased** batch variance
//!   (divisor `n − 1`); it needs `n >= 2`.
//! - Momentum mode (`Some(m)`, default 0.1): `running = (1 − m) · running + m · batch`.
//! - Cumulative mode (`None`): `running = running + (batch − running) / k` at the `k`-th batch
//!   since the last reset, i.e. the equal-weight mean of the per-batch statistics.
//! - Evaluation mode normalises with the running statistics: `(x − mean) / sqrt(var + eps)`.
//! - Half-precision inputs (f16, bf16) are normalised in f32 and cast back, as candle-nn does.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, ModuleT, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::{Error, Result};

/// Settings of a [`BatchNorm`] layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root (default `1e-5`, torch's). Must be >= 0.
    pub eps: f64,
    /// Weight of the new batch in the running statistics, torch's convention:
    /// `running = (1 − momentum) · running + momentum · batch` (default 0.1). In [0, 1].
    pub momentum: f64,
    /// Whether the layer has a learnable per-channel scale (`weight`, init 1) and shift
    /// (`bias`, init 0) (default true).
    pub affine: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

/// How the running statistics are being updated, and how many batches they have seen.
#[derive(Debug)]
struct RunningState {
    /// `Some(m)`: exponential moving average with weight `m`; `None`: cumulative average.
    momentum: Option<f64>,
    /// Training-mode batches seen since the last reset (torch's `num_batches_tracked`).
    batches_seen: u64,
}

#[derive(Debug)]
struct Inner {
    prefix: String,
    num_features: usize,
    eps: f64,
    weight_and_bias: Option<(Tensor, Tensor)>,
    running_mean: Var,
    running_var: Var,
    state: Mutex<RunningState>,
}

/// A batch-normalisation layer over dimension 1, with momentum or cumulative running statistics.
///
/// A cheap, cloneable handle: clones share the same variables and running state, so a model
/// can hand its layers out through [`HasBatchNorm`] and [`refresh_batchnorm`] changes the
/// layers the model uses. See the [module docs](self) for the numeric conventions.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    inner: Arc<Inner>,
}

impl BatchNorm {
    /// Creates the layer's variables through `vb` (in its `VarMap` when `vb` comes from
    /// `VarBuilder::from_varmap`; existing variables of the same names are reused, so loaded
    /// checkpoints are kept): `weight` (init 1) and `bias` (init 0) when `config.affine`,
    /// `running_mean` (init 0), `running_var` (init 1), each of shape `[num_features]`.
    ///
    /// Errors (`Error::InvalidArgument`) name `num_features` (0), `eps` (negative or not finite)
    /// or `momentum` (outside [0, 1]).
    pub fn new(num_features: usize, config: BatchNormConfig, vb: VarBuilder) -> Result<Self> {
        if num_features == 0 {
            return Err(Error::invalid("num_features", "must be > 0"));
        }
        if !config.eps.is_finite() || config.eps < 0.0 {
            return Err(Error::invalid(
                "eps",
                format!("must be finite and >= 0, got {}", config.eps),
            ));
        }
        check_momentum(config.momentum)?;
        let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?;
        let weight_and_bias = if config.affine {
            let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
            let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
            Some((weight, bias))
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                prefix: vb.prefix(),
                num_features,
                eps: config.eps,
                weight_and_bias,
                // A tensor from a VarMap-backed builder is already a variable: `from_tensor`
                // then shares its storage, so updates land in the user's VarMap.
                running_mean: Var::from_tensor(&running_mean)?,
                running_var: Var::from_tensor(&running_var)?,
                state: Mutex::new(RunningState {
                    momentum: Some(config.momentum),
                    batches_seen: 0,
                }),
            }),
        })
    }

    /// Number of channels `C`.
    pub fn num_features(&self) -> usize {
        self.inner.num_features
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.inner.eps
    }

    /// The `VarBuilder` prefix the layer was created under (e.g. `"bn0"`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The running mean `[C]` (shares storage with the VarMap's `<prefix>.running_mean`).
    pub fn running_mean(&self) -> &Var {
        &self.inner.running_mean
    }

    /// The running (unbiased) variance `[C]` (shares storage with `<prefix>.running_var`).
    pub fn running_var(&self) -> &Var {
        &self.inner.running_var
    }

    /// The learnable scale and shift, when the layer is affine.
    pub fn weight_and_bias(&self) -> Option<(&Tensor, &Tensor)> {
        self.inner.weight_and_bias.as_ref().map(|(w, b)| (w, b))
    }

    /// The full names of the layer's two statistics buffers, `<prefix>.running_mean` and
    /// `<prefix>.running_var` (no prefix dot when the prefix is empty), as in the VarMap.
    pub fn buffer_names(&self) -> [String; 2] {
        [
            qualified(&self.inner.prefix, "running_mean"),
            qualified(&self.inner.prefix, "running_var"),
        ]
    }

    /// The update rule of the running statistics: `Some(m)` for momentum `m`, `None` for the
    /// cumulative average (torch's `momentum=None`).
    pub fn momentum(&self) -> Option<f64> {
        self.state().momentum
    }

    /// Changes the update rule (see [`BatchNorm::momentum`]); a momentum outside [0, 1] is
    /// refused with `Error::InvalidArgument` naming `momentum`.
    pub fn set_momentum(&self, momentum: Option<f64>) -> Result<()> {
        if let Some(m) = momentum {
            check_momentum(m)?;
        }
        self.state().momentum = momentum;
        Ok(())
    }

    /// Training-mode batches seen since creation or the last reset (torch's
    /// `num_batches_tracked`; the divisor `k` of the cumulative mode).
    pub fn batches_seen(&self) -> u64 {
        self.state().batches_seen
    }

    /// Sets the running mean to 0, the running variance to 1 and the batch count to 0, as
    /// torch's `reset_running_stats`.
    pub fn reset_running_stats(&self) -> Result<()> {
        let mut state = self.state();
        let mean = &self.inner.running_mean;
        let var = &self.inner.running_var;
        mean.set(&mean.zeros_like()?)?;
        var.set(&var.ones_like()?)?;
        state.batches_seen = 0;
        Ok(())
    }

    /// Training-mode forward: normalises with the batch statistics and updates the running ones.
    ///
    /// Errors: input of rank < 2 or whose dimension 1 is not `C`, or fewer than 2 values per
    /// channel (`Error::InvalidArgument` naming `xs`).
    pub fn forward_train(&self, xs: &Tensor) -> Result<Tensor> {
        let (x, shape3, n) = self.prepare(xs)?;
        if n < 2 {
            return Err(Error::invalid(
                "xs",
                format!(
                    "BatchNorm `{}` in training mode needs more than one value per channel, got input shape {:?}",
                    self.inner.prefix,
                    xs.dims()
                ),
            ));
        }
        let x = x.reshape(shape3)?;
        let mean = (x.sum_keepdim((0, 2))? / n as f64)?;
        let centered = x.broadcast_sub(&mean)?;
        let biased_var = (centered.sqr()?.sum_keepdim((0, 2))? / n as f64)?;
        let normalised = centered.broadcast_div(&(&biased_var + self.inner.eps)?.sqrt()?)?;
        let y = self.scale_and_shift(normalised, &[1, self.inner.num_features, 1])?;

        let unbiased_var = (biased_var.detach() * (n as f64 / (n as f64 - 1.0)))?;
        self.update_running(&mean.detach(), &unbiased_var)?;
        Ok(y.reshape(xs.dims())?.to_dtype(xs.dtype())?)
    }

    /// Evaluation-mode forward: normalises with the running statistics; nothing is updated.
    ///
    /// Errors: input of rank < 2 or whose dimension 1 is not `C`.
    pub fn forward_eval(&self, xs: &Tensor) -> Result<Tensor> {
        let (x, shape3, _) = self.prepare(xs)?;
        let x = x.reshape(shape3)?;
        let stats_shape = [1, self.inner.num_features, 1];
        let dtype = x.dtype();
        let mean = self
            .inner
            .running_mean
            .as_detached_tensor()
            .to_dtype(dtype)?
            .reshape(&stats_shape[..])?;
        let var = self
            .inner
            .running_var
            .as_detached_tensor()
            .to_dtype(dtype)?
            .reshape(&stats_shape[..])?;
        let normalised = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.inner.eps)?.sqrt()?)?;
        let y = self.scale_and_shift(normalised, &stats_shape)?;
        Ok(y.reshape(xs.dims())?.to_dtype(xs.dtype())?)
    }

    /// Checks the input and returns it in the working dtype, its `[N, C, rest]` shape and the
    /// number of values per channel `n = N · rest`.
    fn prepare(&self, xs: &Tensor) -> Result<(Tensor, (usize, usize, usize), usize)> {
        let dims = xs.dims();
        let c = self.inner.num_features;
        if dims.len() < 2 || dims[1] != c {
            return Err(Error::invalid(
                "xs",
                format!(
                    "BatchNorm `{}` expects input [N, {c}] or [N, {c}, ...], got {dims:?}",
                    self.inner.prefix
                ),
            ));
        }
        let rest: usize = dims[2..].iter().product();
        let working = match xs.dtype() {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        Ok((xs.to_dtype(working)?, (dims[0], c, rest), dims[0] * rest))
    }

    fn scale_and_shift(&self, x: Tensor, stats_shape: &[usize]) -> Result<Tensor> {
        match &self.inner.weight_and_bias {
            None => Ok(x),
            Some((w, b)) => {
                let dtype = x.dtype();
                let w = w.to_dtype(dtype)?.reshape(stats_shape)?;
                let b = b.to_dtype(dtype)?.reshape(stats_shape)?;
                Ok(x.broadcast_mul(&w)?.broadcast_add(&b)?)
            }
        }
    }

    /// Folds one batch's mean and unbiased variance (`[1, C, 1]`) into the running statistics.
    fn update_running(&self, batch_mean: &Tensor, batch_var: &Tensor) -> Result<()> {
        let mut state = self.state();
        let seen = state.batches_seen + 1;
        let weight = match state.momentum {
            Some(m) => m,
            None => 1.0 / seen as f64,
        };
        for (running, batch) in [
            (&self.inner.running_mean, batch_mean),
            (&self.inner.running_var, batch_var),
        ] {
            let current = running.as_detached_tensor();
            let batch = batch.flatten_all()?.to_dtype(current.dtype())?;
            // running + w · (batch − running): with w = 1/k this is the exact running mean.
            let updated = (&current + ((batch - &current)? * weight)?)?;
            running.set(&updated)?;
        }
        state.batches_seen = seen;
        Ok(())
    }

    /// The running state; a panic elsewhere while it was held cannot leave it inconsistent
    /// (two plain numbers), so a poisoned lock is used as is.
    fn state(&self) -> MutexGuard<'_, RunningState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ModuleT for BatchNorm {
    /// `train = true`: [`BatchNorm::forward_train`]; `false`: [`BatchNorm::forward_eval`].
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let out = if train {
            self.forward_train(xs)
        } else {
            self.forward_eval(xs)
        };
        out.map_err(|e| match e {
            Error::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        })
    }
}

/// A model that can list its BatchNorm layers, so that [`refresh_batchnorm`] can find them.
///
/// Return handles to the layers the model's forward uses (clones of [`BatchNorm`] share state).
/// A model without BatchNorm returns an empty list.
pub trait HasBatchNorm {
    /// The model's BatchNorm layers, in any order.
    fn batchnorms(&self) -> Vec<BatchNorm>;
}

impl HasBatchNorm for BatchNorm {
    fn batchnorms(&self) -> Vec<BatchNorm> {
        vec![self.clone()]
    }
}

/// Names of all BatchNorm statistics buffers of `model` (`<prefix>.running_mean`,
/// `<prefix>.running_var` for each layer), e.g. to keep them out of a parameter set or an
/// optimizer. [`crate::layout::is_buffer_name`] recognises the same names by suffix.
pub fn batchnorm_buffer_names<M: HasBatchNorm + ?Sized>(model: &M) -> Vec<String> {
    model
        .batchnorms()
        .iter()
        .flat_map(|bn| bn.buffer_names())
        .collect()
}

/// The BatchNorm statistics buffers of `model` as `(name, Var)` pairs, named as in
/// [`batchnorm_buffer_names`] (e.g. for averaging them alongside the weights).
pub fn batchnorm_buffers<M: HasBatchNorm + ?Sized>(model: &M) -> Vec<(String, Var)> {
    model
        .batchnorms()
        .iter()
        .flat_map(|bn| {
            let [mean_name, var_name] = bn.buffer_names();
            [
                (mean_name, bn.running_mean().clone()),
                (var_name, bn.running_var().clone()),
            ]
        })
        .collect()
}

/// Recomputes every BatchNorm's running statistics from data, as torch's
/// `torch.optim.swa_utils.update_bn`: use it after writing a weight sample or the SWA mean into
/// the model, before predicting.
///
/// Steps: reset each layer's statistics (mean 0, variance 1, count 0); switch each layer to the
/// cumulative mode; run `model.forward_t(batch, true)` on each batch, in one pass; restore each
/// layer's previous update rule (also when an error ends the pass). Afterwards every running
/// mean is exactly the equal-weight mean over the batches of the per-batch means, and every
/// running variance the equal-weight mean of the per-batch **unbiased** variances (torch's
/// result). Batches of different sizes weigh the same, as in torch. Other train-mode behaviour
/// of the model (dropout, ...) happens as in torch, which also calls `model.train()`.
///
/// `fraction`: `None` (or `Some(1.0)`) uses every batch. `Some(f)` with `0 < f < 1` uses the
/// first `ceil(f · num_batches)` batches (at least 1), where a product within `1e-9` relative of
/// an integer counts as that integer (so `0.3 · 10` uses 3 batches, not 4). `num_batches` is
/// taken from the iterator's `size_hint` when it is exact; otherwise the iterator is first
/// collected into memory to count it. Any other value is refused with
/// `Error::InvalidArgument` naming `fraction`.
///
/// Returns the number of batches forwarded. A model whose `batchnorms()` is empty returns
/// `Ok(0)` at once without pulling from the iterator. An iterator with no batch is refused
/// (`Error::InvalidArgument` naming `batches`) before any statistic is touched. An error from
/// the iterator or the model is returned as is; the statistics then hold the average of the
/// batches forwarded so far.
pub fn refresh_batchnorm<M, I>(model: &M, batches: I, fraction: Option<f64>) -> Result<usize>
where
    M: ModuleT + HasBatchNorm + ?Sized,
    I: IntoIterator<Item = Result<Tensor>>,
{
    let fraction = match fraction {
        None => None,
        Some(f) if f.is_finite() && f > 0.0 && f < 1.0 => Some(f),
        Some(1.0) => None,
        Some(f) => {
            return Err(Error::invalid(
                "fraction",
                format!("must be in (0, 1], got {f}"),
            ))
        }
    };
    let norms = model.batchnorms();
    if norms.is_empty() {
        return Ok(0);
    }

    let mut iter = batches.into_iter();
    let (limit, buffered): (usize, Option<Vec<Result<Tensor>>>) = match fraction {
        None => (usize::MAX, None),
        Some(f) => {
            let (low, high) = iter.size_hint();
            if high == Some(low) {
                (batches_for_fraction(f, low), None)
            } else {
                let all: Vec<_> = iter.by_ref().collect();
                (batches_for_fraction(f, all.len()), Some(all))
            }
        }
    };
    let mut source: Box<dyn Iterator<Item = Result<Tensor>>> = match buffered {
        Some(all) => Box::new(all.into_iter()),
        None => Box::new(iter),
    };
    let Some(first) = source.next() else {
        return Err(Error::invalid(
            "batches",
            "the batch iterator yielded no batch; BatchNorm statistics were left unchanged",
        ));
    };

    let _restore = RestoreMomentum::switch_to_cumulative(&norms)?;
    let mut used = 0usize;
    for batch in std::iter::once(first).chain(source).take(limit) {
        let batch = batch?;
        model.forward_t(&batch, true)?;
        used += 1;
    }
    Ok(used)
}

/// `ceil(f · n)` clamped to `[1, n]`, with products within 1e-9 (relative) of an integer read
/// as that integer so that decimal fractions do not round up by one.
fn batches_for_fraction(f: f64, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let x = f * n as f64;
    let nearest = x.round();
    let k = if (x - nearest).abs() <= 1e-9 * x.max(1.0) {
        nearest
    } else {
        x.ceil()
    };
    (k as usize).clamp(1, n)
}

/// Puts every layer back to its previous update rule when dropped, so an early return or an
/// error in the middle of a refresh leaves no layer in cumulative mode.
struct RestoreMomentum {
    saved: Vec<(BatchNorm, Option<f64>)>,
}

impl RestoreMomentum {
    fn switch_to_cumulative(norms: &[BatchNorm]) -> Result<Self> {
        let mut guard = Self { saved: Vec::new() };
        for bn in norms {
            guard.saved.push((bn.clone(), bn.momentum()));
            bn.reset_running_stats()?;
            bn.state().momentum = None;
        }
        Ok(guard)
    }
}

impl Drop for RestoreMomentum {
    fn drop(&mut self) {
        // Restore in reverse so a layer listed twice ends with its original rule.
        for (bn, momentum) in self.saved.iter().rev() {
            bn.state().momentum = *momentum;
        }
    }
}

fn check_momentum(m: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&m) {
        return Err(Error::invalid(
            "momentum",
            format!("must be in [0, 1], got {m}"),
        ));
    }
    Ok(())
}

fn qualified(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
