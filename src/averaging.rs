//! Weight averaging: SWA (equal-weight running mean) and EMA (exponential moving average).
//!
//! SWA (Izmailov et al. 2018) averages the weights visited late in training with equal weights;
//! EMA keeps an exponentially decaying average. Both are the first moment that SWAG also tracks,
//! offered on their own because they are cheap (one `[d]` vector) and a strong baseline.
//!
//! Conventions (torch's `torch.optim.swa_utils.AveragedModel`):
//! - The first [`ParameterAverage::update`] copies the weights (torch: parameters are copied
//!   when `n_averaged == 0`).
//! - Every later update is `avg ← avg + w · (θ − avg)` (torch's `_foreach_lerp_`), with
//!   - SWA: `w = 1 / (n + 1)`, `n` the number of updates so far, so that after `n` updates `avg`
//!     is the equal-weight mean of the `n` snapshots (torch's `get_swa_multi_avg_fn`);
//!   - EMA: `w = 1 − decay`, i.e. `avg ← decay · avg + (1 − decay) · θ` (torch's
//!     `get_ema_multi_avg_fn(decay)`, which also accepts `decay` in [0, 1]).
//! - Averages are kept in f32 on the parameters' device, in the flat order of the
//!   [`ParamSet`]'s layout (the order of [`ParamSet::flatten`]).
//! - Non-trainable buffers (BatchNorm running statistics, e.g. from
//!   [`crate::batchnorm::BatchNormStats::buffers`]) can be averaged with the same rule and count, as
//!   torch does with `use_buffers=True`. The usual alternative is to recompute them for the
//!   averaged weights with [`crate::batchnorm::BatchNormRefresh`].

use candle_core::{DType, Tensor, Var};

use crate::layout::{check_finite_named, ParamLayout, ParamSet};
use crate::{Error, Result};

/// Which running average a [`ParameterAverage`] keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AveragingRule {
    /// Equal-weight mean of all snapshots (SWA).
    Swa,
    /// Exponential moving average: `avg ← decay · avg + (1 − decay) · θ`.
    Ema {
        /// Weight of the old average, in [0, 1].
        decay: f64,
    },
}

impl AveragingRule {
    /// The weight `w` of the new snapshot in `avg + w · (θ − avg)` when `n >= 1` snapshots have
    /// already been averaged.
    fn new_snapshot_weight(self, n: usize) -> f64 {
        match self {
            AveragingRule::Swa => 1.0 / (n as f64 + 1.0),
            AveragingRule::Ema { decay } => 1.0 - decay,
        }
    }
}

/// A running SWA or EMA average of a model's parameters (and optionally of its buffers).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_swag::averaging::ParameterAverage;
/// use candle_swag::layout::ParamSet;
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let _fc = candle_nn::linear(2, 1, vb.pp("fc")).unwrap();
/// let params = ParamSet::from_varmap(&varmap).unwrap();
/// let mut swa = ParameterAverage::swa(&params).unwrap();
/// for epoch in 0..3 {
///     // ... train one epoch ...
///     swa.update(&params).unwrap();
/// }
/// assert_eq!(swa.count(), 3);
/// swa.write_into(&params).unwrap(); // the model now holds the SWA weights
/// ```
#[derive(Debug, Clone)]
pub struct ParameterAverage {
    rule: AveragingRule,
    layout: ParamLayout,
    count: usize,
    /// Flat `[d]` f32 average; `None` before the first update.
    average: Option<Tensor>,
    /// Buffers read at each update, with their averages (f32, the buffer's shape).
    buffers: Vec<(String, Var)>,
    buffer_averages: Option<Vec<Tensor>>,
}

impl ParameterAverage {
    /// An equal-weight (SWA) average over parameters laid out as `params`. Nothing is averaged
    /// until the first [`update`](Self::update).
    pub fn swa(params: &ParamSet) -> Result<Self> {
        Ok(Self::with_rule(params, AveragingRule::Swa))
    }

    /// An exponential moving average with `decay` in [0, 1] (`Error::InvalidArgument` naming
    /// `decay` otherwise): `avg ← decay · avg + (1 − decay) · θ` after a first copy.
    pub fn ema(params: &ParamSet, decay: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::invalid(
                "decay",
                format!("must be in [0, 1], got {decay}"),
            ));
        }
        Ok(Self::with_rule(params, AveragingRule::Ema { decay }))
    }

    fn with_rule(params: &ParamSet, rule: AveragingRule) -> Self {
        Self {
            rule,
            layout: params.layout().clone(),
            count: 0,
            average: None,
            buffers: Vec::new(),
            buffer_averages: None,
        }
    }

    /// Also averages these non-trainable buffers (e.g. BatchNorm running statistics from
    /// [`crate::batchnorm::BatchNormStats::buffers`]): each [`update`](Self::update) reads their
    /// current values and folds them in with the same rule and count as the parameters.
    ///
    /// Must be called before the first update. Names must be unique and non-empty and buffers
    /// floating point (`Error::InvalidArgument` naming `buffers` or the buffer).
    pub fn with_buffers(mut self, buffers: Vec<(String, Var)>) -> Result<Self> {
        if self.count > 0 {
            return Err(Error::invalid(
                "buffers",
                "buffers must be registered before the first update",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, var) in &buffers {
            if name.is_empty() {
                return Err(Error::invalid("buffers", "a buffer has an empty name"));
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::invalid(
                    "buffers",
                    format!("buffer `{name}` appears twice"),
                ));
            }
            if !var.dtype().is_float() {
                return Err(Error::invalid(
                    name.as_str(),
                    format!(
                        "buffer has dtype {:?}; only floats are averaged",
                        var.dtype()
                    ),
                ));
            }
        }
        self.buffers = buffers;
        Ok(self)
    }

    /// The averaging rule.
    pub fn rule(&self) -> AveragingRule {
        self.rule
    }

    /// The parameter layout the average covers.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Number of snapshots folded in so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Folds the current weights of `params` (and the registered buffers) into the average.
    ///
    /// `params` must have the layout the average was created with (`Error::LayoutMismatch`
    /// naming the first difference). A parameter or buffer holding NaN or infinity is refused
    /// (`Error::NonFinite` naming it, with the index inside it, as the posterior does) and the
    /// average is left untouched.
    pub fn update(&mut self, params: &ParamSet) -> Result<()> {
        self.layout.check_same_as(params.layout(), "average")?;
        let theta = params.flatten()?;
        self.layout.check_finite(&theta)?;
        let buffer_values = self
            .buffers
            .iter()
            .map(|(name, var)| {
                let value = var.as_detached_tensor().to_dtype(DType::F32)?;
                check_finite_named(&value, name)?;
                Ok(value)
            })
            .collect::<Result<Vec<_>>>()?;

        let (average, buffer_averages) = match (&self.average, &self.buffer_averages) {
            (Some(avg), Some(bufs)) => {
                let w = self.rule.new_snapshot_weight(self.count);
                let avg = lerp(avg, &theta, w)?;
                let bufs = bufs
                    .iter()
                    .zip(&buffer_values)
                    .map(|(a, v)| lerp(a, v, w))
                    .collect::<Result<Vec<_>>>()?;
                (avg, bufs)
            }
            _ => {
                // First snapshot: a copy, never a view of the model's storage (flattening a
                // single contiguous parameter returns a view that training would overwrite).
                let bufs = buffer_values
                    .iter()
                    .map(|v| Ok(v.copy()?))
                    .collect::<Result<Vec<_>>>()?;
                (theta.copy()?, bufs)
            }
        };
        self.average = Some(average);
        self.buffer_averages = Some(buffer_averages);
        self.count += 1;
        Ok(())
    }

    /// The averaged weights as one flat `[d]` f32 tensor in layout order
    /// (`Error::NotEnoughSnapshots` before the first update).
    pub fn average(&self) -> Result<Tensor> {
        self.average
            .clone()
            .ok_or_else(|| Error::NotEnoughSnapshots("the average has no snapshot yet".into()))
    }

    /// The average of the registered buffer `name` (f32, the buffer's shape), if it is
    /// registered and at least one update was made.
    pub fn buffer_average(&self, name: &str) -> Option<Tensor> {
        let index = self.buffers.iter().position(|(n, _)| n == name)?;
        self.buffer_averages.as_ref()?.get(index).cloned()
    }

    /// Writes the averaged weights into the variables of `params` (same layout required,
    /// `Error::LayoutMismatch` otherwise; `Error::NotEnoughSnapshots` before the first update).
    /// Buffers are not written: see [`write_buffers_into`](Self::write_buffers_into).
    pub fn write_into(&self, params: &ParamSet) -> Result<()> {
        self.layout.check_same_as(params.layout(), "average")?;
        params.write_flat(&self.average()?)
    }

    /// Writes each registered buffer's average into the variable of the same name in
    /// `buffers` (e.g. [`crate::batchnorm::BatchNormStats::buffers`] of the model to evaluate),
    /// converted to its dtype. Every registered name must be present with the same shape
    /// (`Error::LayoutMismatch` naming the buffer); nothing is written unless all match.
    pub fn write_buffers_into(&self, buffers: &[(String, Var)]) -> Result<()> {
        let averages = match &self.buffer_averages {
            Some(a) => a,
            None => {
                return Err(Error::NotEnoughSnapshots(
                    "the average has no snapshot yet".into(),
                ))
            }
        };
        let mut targets = Vec::with_capacity(self.buffers.len());
        for ((name, _), avg) in self.buffers.iter().zip(averages) {
            let target = buffers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    Error::LayoutMismatch(format!("buffer `{name}` is missing from the target"))
                })?;
            if target.dims() != avg.dims() {
                return Err(Error::LayoutMismatch(format!(
                    "buffer `{name}` has shape {:?} in the average but {:?} in the target",
                    avg.dims(),
                    target.dims()
                )));
            }
            targets.push((target, avg));
        }
        for (target, avg) in targets {
            target.set(&avg.to_dtype(target.dtype())?.to_device(target.device())?)?;
        }
        Ok(())
    }
}

/// `avg + w · (θ − avg)`.
fn lerp(avg: &Tensor, theta: &Tensor, w: f64) -> Result<Tensor> {
    Ok((avg + ((theta - avg)? * w)?)?)
}
