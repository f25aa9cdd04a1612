//! This crate's BatchNorm layer: momentum or cumulative running statistics, candle-nn's
//! variable names (see the [module docs](super) for the conventions).

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, ModuleT, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::*;
use crate::{Error, Result};

/// The settings of a [`BatchNorm`] layer, unchecked (the crate's config shape: see
/// [`crate::swag::config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    /// Added to the variance before the square root: finite and `>= 0` (torch's `1e-5` by
    /// default).
    pub eps: f64,
    /// The weight of the new batch in the running statistics, in torch's convention
    /// `running = (1 − momentum) · running + momentum · batch`: in `[0, 1]` (0.1 by default).
    pub momentum: f64,
    /// Whether the layer has a learnable per-channel scale (`weight`, init 1) and shift
    /// (`bias`, init 0); `true` by default.
    pub affine: bool,
}

impl Default for BatchNormParams {
    /// eps `1e-5` and momentum 0.1 (torch's), affine.
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

impl BatchNormParams {
    /// The checked config; the error names the field.
    pub fn check(&self) -> Result<BatchNormConfig> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid(
                "eps",
                format!("must be finite and >= 0, got {}", self.eps),
            ));
        }
        check_momentum(self.momentum)?;
        Ok(BatchNormConfig(*self))
    }
}

/// Settings of a [`BatchNorm`] layer (from [`BatchNormParams::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchNormConfig(BatchNormParams);

impl From<BatchNormConfig> for BatchNormParams {
    fn from(config: BatchNormConfig) -> Self {
        config.0
    }
}

impl BatchNormConfig {
    /// Added to the variance before the square root.
    pub fn eps(&self) -> f64 {
        self.0.eps
    }

    /// Weight of the new batch in the running statistics.
    pub fn momentum(&self) -> f64 {
        self.0.momentum
    }

    /// Whether the layer has `weight` and `bias`.
    pub fn affine(&self) -> bool {
        self.0.affine
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
/// can hand its layers out (see [`BatchNormStats::of_layer`]) and a [`BatchNormRefresh`] changes
/// the layers the model uses. See the [module docs](crate::batchnorm) for the numeric conventions.
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
    /// Errors (`Error::InvalidArgument`) name `num_features` (0); `config` was checked when
    /// made.
    pub fn new(num_features: usize, config: BatchNormConfig, vb: VarBuilder) -> Result<Self> {
        if num_features == 0 {
            return Err(Error::invalid("num_features", "must be > 0"));
        }
        let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?;
        let weight_and_bias = if config.affine() {
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
                eps: config.eps(),
                weight_and_bias,
                // A tensor from a VarMap-backed builder is already a variable: `from_tensor`
                // then shares its storage, so updates land in the user's VarMap.
                running_mean: Var::from_tensor(&running_mean)?,
                running_var: Var::from_tensor(&running_var)?,
                state: Mutex::new(RunningState {
                    momentum: Some(config.momentum()),
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
        let stat = |v: &Var| {
            v.as_detached_tensor()
                .to_dtype(dtype)?
                .reshape(&stats_shape[..])
        };
        let (mean, var) = (
            stat(&self.inner.running_mean)?,
            stat(&self.inner.running_var)?,
        );
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
